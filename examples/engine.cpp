// engine.h: the fused request, step by step, on kvfuse's C API.
#include "engine.h"

#include <cmath>
#include <cstring>
#include <utility>

#include "allocation_counter.h"
#include "status.h"

namespace {

// RoPE calls count their allocations apart: the library builds a per-position RoPE table on a
// position's first use (on the calling thread), so a request at new positions allocates there.
constexpr int kRopeSlot = 2;

class PagedTarget : public CacheTarget {
public:
    PagedTarget(PagedKvCache& cache, const std::int32_t* table) : cache_(cache), table_(table) {}
    KvView keys(std::size_t layer) override { return cache_.keys(layer, table_); }
    KvView values(std::size_t layer) override { return cache_.values(layer, table_); }

private:
    PagedKvCache& cache_;
    const std::int32_t* table_;
};

}  // namespace

RequestPlan make_plan(std::size_t id, const std::vector<StoredChunk>& store, std::vector<std::size_t> order,
                      std::size_t prefix_rows, std::size_t question_rows) {
    RequestPlan plan;
    plan.id = id;
    plan.prefix_rows = prefix_rows;
    plan.question_rows = question_rows;
    plan.chunk_order = std::move(order);
    std::size_t at = prefix_rows;
    for (const std::size_t c : plan.chunk_order) {
        plan.offsets.push_back(at);
        at += store[c].tokens;
    }
    plan.documents = at - prefix_rows;
    return plan;
}

Engine::Engine(const ModelShape& model, const kvfuse_rope_config& rope, const std::vector<StoredChunk>& store,
               const std::vector<float>& topic, kvfuse_context* context, std::size_t pool_blocks,
               std::size_t block_size, std::size_t max_tokens, std::size_t max_question_rows, double ratio)
    : model_(model), rope_(rope), store_(store), topic_(topic), context_(context),
      cache_(model.layers, pool_blocks, block_size, model.token_elements(), 0x5eed),
      max_tokens_(max_tokens), max_question_rows_(max_question_rows), ratio_(ratio),
      table_(cache_.blocks_for(max_tokens)), prompt_positions_(max_tokens), selected_(max_tokens),
      fresh_keys_(max_tokens * model.token_elements()), fresh_values_(fresh_keys_.size()),
      queries_(max_tokens * model.query_elements()), scores_(max_tokens),
      fresh_cells_(max_tokens), question_queries_(max_question_rows * model.query_elements()),
      out_selected_(model.layers * selected_stride()), out_question_(model.layers * question_stride()),
      segments_(store.size() + 1) {}

void Engine::run(const RequestPlan& plan, StepObserver& observer) {
    auto step_done = [&](const char* step, int next_slot) {
        allocation_counter::stop();
        observer.after(step);
        allocation_counter::start(next_slot);
    };
    allocation_counter::start(0);
    if (!cache_.allocate(cache_.blocks_for(plan.tokens()), table_.data())) fail("the KV block pool is exhausted");
    PagedTarget target(cache_, table_.data());
    place_chunks(plan, target);
    write_prompt_rows(plan, target);
    step_done("placement", 1);
    selected_count_ = select(plan, KVFUSE_KEYS_INT8, selected_.data(), scores_.data());
    step_done("selection", 0);
    recompute_and_attend(plan, target, selected_.data(), selected_count_, out_selected_.data(), out_question_.data());
    allocation_counter::stop();
    observer.after("attention");
}

void Engine::end_request(const RequestPlan& plan) { cache_.release(table_.data(), cache_.blocks_for(plan.tokens())); }

void Engine::place_chunks(const RequestPlan& plan, CacheTarget& target) {
    const std::size_t row = model_.token_elements();
    for (std::size_t layer = 0; layer < model_.layers; ++layer) {
        const KvView keys = target.keys(layer), values = target.values(layer);
        for (std::size_t c = 0; c < plan.chunk_order.size(); ++c) {
            const StoredChunk& chunk = store_[plan.chunk_order[c]];
            const std::size_t offset = plan.offsets[c];
            // One call: read the chunk's keys (its frame, contiguous), turn them by the chunk's
            // new offset, write them into the cache's blocks at the same logical tokens.
            kvfuse_rope_args args;
            kvfuse_rope_args_init(&args);
            args.config = &rope_;
            args.dtype = KVFUSE_DTYPE_F16;
            args.tokens = chunk.tokens;
            args.heads = model_.kv_heads;
            args.delta = static_cast<std::int64_t>(offset);
            keys.describe_rope_dst(args);
            args.dst_token_offset = offset;
            args.src = chunk.layer_keys(model_, layer);
            args.src_token_stride = row;
            {
                allocation_counter::CountApart rope_calls(kRopeSlot);
                require(kvfuse_ctx_rope_rotate_layout(context_, &args), "kvfuse_ctx_rope_rotate_layout");
            }
            // RoPE does not touch values: copied as they are.
            const std::uint16_t* stored = chunk.layer_values(model_, layer);
            for (std::size_t t = 0; t < chunk.tokens; ++t)
                std::memcpy(values.row(offset + t), stored + t * row, row * sizeof(std::uint16_t));
        }
    }
}

void Engine::write_fresh_rows(const RequestPlan& plan, CacheTarget& target, std::size_t layer,
                              const std::int64_t* positions, std::size_t count) {
    const std::size_t row = model_.token_elements();
    const KvView keys = target.keys(layer), values = target.values(layer);
    for (std::size_t i = 0; i < count; ++i) {
        Random random(seed_of(2, plan.id, layer, static_cast<std::uint64_t>(positions[i])));
        for (std::size_t e = 0; e < row; ++e) {
            fresh_keys_[i * row + e] = 0.5f * topic_[(e * 7) % row] + 0.5f * random.uniform();
            fresh_values_[i * row + e] = random.uniform();
        }
        fresh_cells_[i] = static_cast<std::int32_t>(keys.cell(static_cast<std::size_t>(positions[i])));
    }
    {
        // The f32 keys rotated to their positions and rounded to f16 in one pass, straight into
        // their rows of the cache (the converting copy; a per-token table names the rows).
        kvfuse_rope_args args;
        kvfuse_rope_args_init(&args);
        args.config = &rope_;
        args.dtype = KVFUSE_DTYPE_F16;
        args.convert = 1;
        args.src_dtype = KVFUSE_DTYPE_F32;
        args.tokens = count;
        args.heads = model_.kv_heads;
        args.deltas = positions;
        args.src = fresh_keys_.data();
        args.src_token_stride = row;
        keys.describe_rope_dst_cells(args, fresh_cells_.data());
        allocation_counter::CountApart rope_calls(kRopeSlot);
        require(kvfuse_ctx_rope_rotate_layout(context_, &args), "kvfuse_ctx_rope_rotate_layout (f32 to f16)");
    }
    // Values take no RoPE: f32 activations into the f16 cache.
    for (std::size_t i = 0; i < count; ++i)
        require(kvfuse_f32_to_f16(fresh_values_.data() + i * row, values.row(static_cast<std::size_t>(positions[i])), row),
                "kvfuse_f32_to_f16");
}

void Engine::make_queries(const RequestPlan& plan, std::size_t layer, const std::int64_t* positions, std::size_t count,
                          float* queries) {
    const std::size_t width = model_.query_elements(), group = model_.query_heads / model_.kv_heads;
    for (std::size_t i = 0; i < count; ++i) {
        Random random(seed_of(3, plan.id, layer, static_cast<std::uint64_t>(positions[i])));
        for (std::size_t e = 0; e < width; ++e) {
            const std::size_t head = e / model_.head_dim, d = e % model_.head_dim;
            queries[i * width + e] = 1.5f * topic_[(head / group) * model_.head_dim + d] + random.uniform();
        }
    }
    allocation_counter::CountApart rope_calls(kRopeSlot);
    require(kvfuse_ctx_rope_rotate(context_, &rope_, KVFUSE_DTYPE_F32, queries, count, model_.query_heads, width,
                                   positions),
            "kvfuse_ctx_rope_rotate");
}

void Engine::write_prompt_rows(const RequestPlan& plan, CacheTarget& target) {
    const std::size_t prefix = plan.prefix_rows, question = plan.question_rows;
    for (std::size_t i = 0; i < prefix; ++i) prompt_positions_[i] = static_cast<std::int64_t>(i);
    for (std::size_t m = 0; m < question; ++m)
        prompt_positions_[prefix + m] = static_cast<std::int64_t>(prefix + plan.documents + m);
    for (std::size_t layer = 0; layer < model_.layers; ++layer) {
        write_fresh_rows(plan, target, layer, prompt_positions_.data(), prefix + question);
        if (layer == model_.check_layer)
            make_queries(plan, layer, prompt_positions_.data() + prefix, question, question_queries_.data());
    }
}

std::size_t Engine::select(const RequestPlan& plan, kvfuse_key_precision precision, std::int64_t* rows, float* scores) {
    const std::size_t chunks = plan.chunk_order.size();
    for (std::size_t c = 0; c < chunks; ++c) {
        const StoredChunk& chunk = store_[plan.chunk_order[c]];
        kvfuse_select_segment& segment = segments_[c];
        kvfuse_select_segment_init(&segment);
        segment.tokens = chunk.tokens;
        segment.position_shift = static_cast<std::int64_t>(plan.offsets[c]);  // stored at 0
        segment.keys_dtype = KVFUSE_DTYPE_F16;  // the f32 path reads these in place
        segment.keys = chunk.layer_keys(model_, model_.check_layer);
        segment.keys_i8 = chunk.check_keys_i8.data();  // the int8 path reads the stored int8 form
        segment.key_scales = chunk.check_key_scales.data();
        segment.key_means = chunk.check_key_means.data();
    }
    // The question's keys where write_prompt_rows put them: f16 in the paged cache, in the
    // request's frame already (scored in place; quantized by the call on the int8 path).
    kvfuse_select_segment& question = segments_[chunks];
    kvfuse_select_segment_init(&question);
    question.tokens = plan.question_rows;
    cache_.keys(model_.check_layer, table_.data()).describe_select_keys(question, plan.prefix_rows + plan.documents);

    std::size_t count = 0;
    kvfuse_select_args args;
    kvfuse_select_args_init(&args);
    args.method = KVFUSE_SELECT_A3;
    args.prefix_rows = plan.prefix_rows;
    args.documents = plan.documents;
    args.question_rows = plan.question_rows;
    args.ratio = ratio_;
    args.query_heads = model_.query_heads;
    args.kv_heads = model_.kv_heads;
    args.head_dim = model_.head_dim;
    args.queries = question_queries_.data();
    args.key_precision = precision;
    args.smoothing = 1;
    args.rope = &rope_;
    args.segment_count = chunks + 1;
    args.segments = segments_.data();
    args.rows = rows;
    args.rows_capacity = plan.documents;
    args.row_count = &count;
    args.scores = scores;
    require(kvfuse_ctx_select_rows(context_, &args), "kvfuse_ctx_select_rows");
    return count;
}

void Engine::attend(CacheTarget& target, std::size_t layer, std::size_t kv_tokens, const float* queries,
                    const std::int64_t* positions, std::size_t rows, float* out) {
    kvfuse_attention_args args;
    kvfuse_attention_args_init(&args);
    args.queries = queries;
    args.rows = rows;
    args.query_heads = model_.query_heads;
    args.head_dim = model_.head_dim;
    args.query_row_stride = model_.query_elements();
    args.positions = positions;
    describe_attention_kv(args, target.keys(layer), target.values(layer));
    args.kv_tokens = kv_tokens;
    args.kv_heads = model_.kv_heads;
    args.scale = 1.0f / std::sqrt(static_cast<float>(model_.head_dim));
    args.out = out;
    args.out_row_stride = model_.query_elements();
    require(kvfuse_ctx_sparse_attention(context_, &args), "kvfuse_ctx_sparse_attention");
}

void Engine::recompute_and_attend(const RequestPlan& plan, CacheTarget& target, const std::int64_t* rows,
                                  std::size_t count, float* out_selected, float* out_question) {
    const std::int64_t* question_positions = prompt_positions_.data() + plan.prefix_rows;
    for (std::size_t layer = 0; layer < model_.layers; ++layer) {
        // The selected rows' K/V recomputed at this layer replace the reused ones.
        write_fresh_rows(plan, target, layer, rows, count);
        make_queries(plan, layer, rows, count, queries_.data());
        attend(target, layer, plan.tokens(), queries_.data(), rows, count, out_selected + layer * selected_stride());
        make_queries(plan, layer, question_positions, plan.question_rows, queries_.data());
        attend(target, layer, plan.tokens(), queries_.data(), question_positions, plan.question_rows,
               out_question + layer * question_stride());
    }
}
