#include "fusion/pipeline.h"

#include "fusion/selector.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstring>
#include <numeric>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace kvfuse::fusion {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::vector<std::int64_t> sorted_union(std::vector<std::int64_t> a, const std::vector<std::int64_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    std::sort(a.begin(), a.end());
    a.erase(std::unique(a.begin(), a.end()), a.end());
    return a;
}

// Stored chunks into the fused cache, layer by layer: V copied, K re-rotated to its new
// offset. Layers before `first_layer` are skipped: every row is recomputed there, so their
// stored rows would only be overwritten. Pipelined, a thread of its own loads the layers in
// order while the caller computes (on the loading context: one worker, so the caller's keep
// the cores); wait(l) returns once layer l is in (and rethrows a failure). Otherwise every
// layer is loaded up front on the request's context.
class ChunkLoader {
   public:
    ChunkLoader(const ModelShape& s, std::span<const ChunkKvView> chunks, std::vector<std::size_t> offsets, KvCache& cache,
                int first_layer, bool pipelined, KernelContexts& kernels, StageTimes& times)
        : s_(s), chunks_(chunks), offsets_(std::move(offsets)), cache_(cache), first_(first_layer),
          context_(pipelined ? kernels.loader() : kernels.request()), times_(times) {
        if (!pipelined) {
            for (int l = first_; l < s_.layers; ++l) load(l, times_.kv_load, times_.rerotate);
            loaded_ = s_.layers - 1;
            return;
        }
        loaded_ = first_ - 1;
        worker_ = std::thread([this] { work(); });
    }
    ChunkLoader(const ChunkLoader&) = delete;
    ChunkLoader& operator=(const ChunkLoader&) = delete;
    ~ChunkLoader() { finish(); }
    // Stops the loading thread (it has finished if every layer was waited for) and joins it,
    // so that nothing writes to the cache or the times afterwards.
    void finish() {
        if (!worker_.joinable()) return;
        stop_ = true;
        worker_.join();
    }

    void wait(int layer) {
        if (!worker_.joinable() || layer < first_) return;
        const auto start = Clock::now();
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [&] { return loaded_ >= layer || error_ != nullptr; });
        if (error_ != nullptr) std::rethrow_exception(error_);
        times_.kv_load += ms_since(start);
    }

   private:
    void load(int l, double& load_ms, double& rotate_ms) {
        const std::size_t kv_bytes = s_.kv_row() * sizeof(float), L = static_cast<std::size_t>(l);
        for (std::size_t c = 0; c < chunks_.size(); ++c) {
            const ChunkKvView& chunk = chunks_[c];
            auto t0 = Clock::now();
            if (chunk.arrival != nullptr && !chunk.arrival->wait(l)) throw ChunkLayerUnavailable(c, l);
            std::memcpy(cache_.v_row(l, offsets_[c]), chunk.v[L], chunk.tokens * kv_bytes);
            load_ms += ms_since(t0);
            t0 = Clock::now();
            const std::int64_t delta = static_cast<std::int64_t>(offsets_[c]) - chunk.start_position;
            throw_if_failed(kvfuse::rope_rotate_span_copy(context_, s_.rope, chunk.k[L], s_.kv_row(), cache_.k_row(l, offsets_[c]), s_.kv_row(),
                                                chunk.tokens, static_cast<std::size_t>(s_.kv_heads), delta),
                  "re-rotation");
            rotate_ms += ms_since(t0);
        }
    }
    void work() {
        double busy = 0.0;
        try {
            for (int l = first_; l < s_.layers && !stop_; ++l) {
                load(l, busy, busy);
                std::lock_guard lock(mutex_);
                loaded_ = l;
                ready_.notify_all();
            }
        } catch (...) {
            std::lock_guard lock(mutex_);
            error_ = std::current_exception();
            ready_.notify_all();
        }
        std::lock_guard lock(mutex_);
        times_.background_load = busy;
    }

    const ModelShape& s_;
    std::span<const ChunkKvView> chunks_;
    std::vector<std::size_t> offsets_;
    KvCache& cache_;
    const int first_;
    kvfuse::Context& context_;
    StageTimes& times_;
    std::thread worker_;
    std::mutex mutex_;
    std::condition_variable ready_;
    int loaded_ = -1;
    std::exception_ptr error_;
    std::atomic<bool> stop_{false};
};

}  // namespace

void KernelContexts::prepare(int threads) {
    if (threads == threads_) return;
    kvfuse_context_options options;
    kvfuse_context_options_init(&options);
    options.threads = threads;
    options.use_process_tuning = 1;
    throw_if_failed(kvfuse::Context::create(request_, &options), "kernel context");
    options.threads = 1;
    throw_if_failed(kvfuse::Context::create(loader_, &options), "loading thread's kernel context");
    threads_ = threads;
}

std::vector<std::int64_t> top_rows(kvfuse::Context& context, std::span<const float> scores, std::size_t k,
                                   std::size_t prefix_rows) {
    k = std::min(k, scores.size());
    if (k == 0) return {};
    std::vector<std::int64_t> out(k);
    std::size_t count = 0;
    throw_if_failed(kvfuse::topk(context, scores.data(), scores.size(), k, kvfuse::TopkOrder::by_position, out.data(), count),
                    "top-k");
    out.resize(count);
    for (std::int64_t& row : out) row += static_cast<std::int64_t>(prefix_rows);
    return out;
}

void gather_rows(const float* src, std::size_t width, std::span<const std::int64_t> rows, float* dst) {
    for (std::size_t i = 0; i < rows.size(); ++i)
        std::memcpy(dst + i * width, src + static_cast<std::size_t>(rows[i]) * width, width * sizeof(float));
}

void scatter_fresh_rows(KvCache& cache, int layer, std::span<const std::int64_t> rows, const float* k, const float* v) {
    const std::size_t L = static_cast<std::size_t>(layer);
    throw_if_failed(
        kvfuse::scatter_rows(k, cache.row, rows.data(), rows.size(), cache.k[L].data(), cache.tokens, cache.row, cache.row),
        "scatter of fresh keys");
    throw_if_failed(
        kvfuse::scatter_rows(v, cache.row, rows.data(), rows.size(), cache.v[L].data(), cache.tokens, cache.row, cache.row),
        "scatter of fresh values");
}

void attend_cache(kvfuse::Context& context, const ModelShape& s, const float* q, std::span<const std::int64_t> rows,
                  KvCache& cache, int layer, float* out) {
    attend_rows(context, s, q, rows, cache.k[static_cast<std::size_t>(layer)].data(), cache.v[static_cast<std::size_t>(layer)].data(),
                cache.tokens, cache.row, out);
}

void attend_rows(kvfuse::Context& context, const ModelShape& s, const float* q, std::span<const std::int64_t> positions,
                 const float* keys, const float* values, std::size_t kv_tokens, std::size_t kv_stride, float* out) {
    kvfuse_attention_args args;
    kvfuse_attention_args_init(&args);
    args.queries = q;
    args.rows = positions.size();
    args.query_heads = static_cast<std::size_t>(s.heads);
    args.head_dim = static_cast<std::size_t>(s.head_dim);
    args.query_row_stride = s.q_row();
    args.positions = positions.data();
    args.keys = keys;
    args.values = values;
    args.kv_dtype = KVFUSE_DTYPE_F32;
    args.kv_tokens = kv_tokens;
    args.kv_heads = static_cast<std::size_t>(s.kv_heads);
    args.kv_token_stride = kv_stride;
    args.scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    args.out = out;
    args.out_row_stride = s.q_row();
    throw_if_failed(kvfuse::sparse_attention(context, args), "sparse attention");
}

namespace {

// Sizes a buffer for `n` elements without writing them; one too small is replaced, not grown,
// so its stale contents are not copied.
void resize_uninitialized(Floats& buffer, std::size_t n) {
    if (buffer.capacity() < n) {
        Floats().swap(buffer);
        buffer.reserve(n);
    }
    buffer.resize(n);
}

// Keeps rows from[0], from[1], ... (ascending, from[i] >= i) of a buffer of `width`-float rows
// as its first rows, in place: row from[i] moves down to i, never over a row still to be read.
void compact_rows(Floats& buffer, std::size_t width, const std::vector<std::size_t>& from) {
    for (std::size_t i = 0; i < from.size(); ++i)
        if (from[i] != i) std::memmove(buffer.data() + i * width, buffer.data() + from[i] * width, width * sizeof(float));
    buffer.resize(from.size() * width);
}

}  // namespace

void KvCache::reset(int layers, std::size_t token_count, std::size_t row_width) {
    tokens = token_count;
    row = row_width;
    k.resize(static_cast<std::size_t>(layers));
    v.resize(static_cast<std::size_t>(layers));
    for (auto* side : {&k, &v})
        for (Rows& rows : *side) resize_uninitialized(rows, token_count * row_width);
}

QuantizedKeysView QuantizedKeys::view() const {
    return {i8.data(), i8_scales.data(), i8_means.data(), i4.data(), i4_scales.data(), i4_means.data()};
}

QuantizedKeys quantize_chunk_keys(kvfuse::Context& context, const ModelShape& s, const float* keys, std::size_t tokens) {
    const std::size_t Hkv = static_cast<std::size_t>(s.kv_heads), D = static_cast<std::size_t>(s.head_dim);
    QuantizedKeys out;
    out.i8.resize(tokens * s.kv_row());
    out.i8_scales.resize(tokens * Hkv);
    out.i8_means.resize(s.kv_row());
    out.i4.resize(tokens * Hkv * ((D + 1) / 2));
    out.i4_scales.resize(tokens * Hkv);
    out.i4_means.resize(s.kv_row());
    throw_if_failed(kvfuse::quantize_keys_i8(context, keys, tokens, Hkv, D, s.kv_row(), out.i8.data(), out.i8_scales.data(), out.i8_means.data()),
          "key quantization");
    throw_if_failed(kvfuse::quantize_keys_i4(context, keys, tokens, Hkv, D, s.kv_row(), out.i4.data(), out.i4_scales.data(), out.i4_means.data()),
          "key quantization");
    return out;
}

ChunkKvView ChunkKv::view() const {
    ChunkKvView out;
    out.start_position = start_position;
    out.tokens = cache.tokens;
    for (std::size_t l = 0; l < cache.k.size(); ++l) {
        out.k.push_back(cache.k[l].data());
        out.v.push_back(cache.v[l].data());
    }
    for (const QuantizedKeys& layer : quantized) out.quantized.push_back(layer.view());
    return out;
}

ChunkKv compute_chunk_kv(const FusionModel& model, std::span<const std::int32_t> chunk_tokens) {
    KernelContexts own;
    return compute_chunk_kv(model, chunk_tokens, own, 0);
}

ChunkKv compute_chunk_kv(const FusionModel& model, std::span<const std::int32_t> chunk_tokens, KernelContexts& kernels,
                         int threads) {
    if (chunk_tokens.empty()) throw std::invalid_argument("a chunk must hold at least one token");
    Request alone;
    alone.prefix = {model.bos()};
    alone.question.assign(chunk_tokens.begin(), chunk_tokens.end());
    FusionOptions full;
    full.method = Method::full;
    full.logits = false;
    full.threads = threads;
    FusionRun run;
    run.kernels = std::move(kernels);
    // Handed back however the run ends (moved from, `kernels` holds none: a throw would
    // otherwise leave the caller to make them again).
    struct GiveBack {
        KernelContexts& to;
        FusionRun& from;
        ~GiveBack() { to = std::move(from.kernels); }
    } give_back{kernels, run};
    run_request(model, alone, {}, full, run);
    ChunkKv out;
    out.start_position = 1;
    const ModelShape& s = model.shape();
    out.cache.reset(s.layers, chunk_tokens.size(), s.kv_row());
    for (int l = 0; l < s.layers; ++l) {
        const std::size_t bytes = chunk_tokens.size() * s.kv_row() * sizeof(float);
        std::memcpy(out.cache.k_row(l, 0), run.cache.k[static_cast<std::size_t>(l)].data() + s.kv_row(), bytes);
        std::memcpy(out.cache.v_row(l, 0), run.cache.v[static_cast<std::size_t>(l)].data() + s.kv_row(), bytes);
        out.quantized.push_back(quantize_chunk_keys(run.kernels.request(), s, out.cache.k_row(l, 0), chunk_tokens.size()));
    }
    return out;
}

namespace {

// The shape and question fields of a scores-only selection call (k = 0 at ratio 0: no rows,
// the relevance in `out`), A3 at this model's shape.
kvfuse::SelectArgs a3_select_args(const ModelShape& s, const float* q_question, std::size_t m_rows, std::size_t documents,
                                  bool smoothing, ScoreKeys key_precision, const kvfuse_rope_config* rope, float* out) {
    kvfuse::SelectArgs args{};
    args.method = KVFUSE_SELECT_A3;
    args.documents = documents;
    args.question_rows = m_rows;
    args.query_heads = static_cast<std::size_t>(s.heads);
    args.kv_heads = static_cast<std::size_t>(s.kv_heads);
    args.head_dim = static_cast<std::size_t>(s.head_dim);
    args.queries = q_question;
    args.key_precision = key_precision == ScoreKeys::int8   ? KVFUSE_KEYS_INT8
                         : key_precision == ScoreKeys::int4 ? KVFUSE_KEYS_INT4
                                                            : KVFUSE_KEYS_F32;
    args.smoothing = smoothing ? 1 : 0;
    args.rope = rope;
    args.scores = out;
    return args;
}

}  // namespace

std::vector<float> a3_relevance(kvfuse::Context& context, const ModelShape& s, const float* q_question, std::size_t m_rows,
                                const float* keys, std::size_t prefix_rows, std::size_t total_rows,
                                bool smoothing, ScoreKeys key_precision) {
    const std::size_t candidates = total_rows - prefix_rows;
    std::vector<float> out(candidates - m_rows);
    kvfuse::SelectSegment fused;  // struct_size set
    fused.tokens = candidates;
    fused.keys_f32 = keys + prefix_rows * s.kv_row();
    kvfuse::SelectArgs args = a3_select_args(s, q_question, m_rows, out.size(), smoothing, key_precision, nullptr, out.data());
    args.segment_count = 1;
    args.segments = &fused;
    std::size_t no_rows = 0;  // k = 0 at ratio 0: the scores only
    args.row_count = &no_rows;
    throw_if_failed(kvfuse::select_rows(context, args), "A3 relevance");
    return out;
}

std::vector<float> a3_relevance_stored(kvfuse::Context& context, const ModelShape& s, const float* q_question, std::size_t m_rows,
                                       const float* question_keys, std::span<const ChunkKvView> chunks,
                                       std::span<const std::size_t> chunk_offsets, int layer, bool smoothing,
                                       ScoreKeys key_precision) {
    const std::size_t L = static_cast<std::size_t>(layer);
    if (chunk_offsets.size() != chunks.size()) throw std::invalid_argument("one offset is needed per chunk");
    const bool quantized = key_precision != ScoreKeys::f32;
    // One segment per chunk, in its own frame, then the question's own keys (fresh).
    std::vector<kvfuse::SelectSegment> segments(chunks.size() + 1);  // struct_size set
    std::size_t docs = 0;
    for (std::size_t c = 0; c < chunks.size(); ++c) {
        const ChunkKvView& chunk = chunks[c];
        if (chunk.k.size() <= L || (quantized && chunk.quantized.size() <= L))
            throw std::invalid_argument("a stored chunk lacks the keys of layer " + std::to_string(layer));
        kvfuse_select_segment& seg = segments[c];
        seg.tokens = chunk.tokens;
        seg.position_shift = static_cast<std::int64_t>(chunk_offsets[c]) - chunk.start_position;
        seg.keys_f32 = chunk.k[L];
        if (quantized) {
            const QuantizedKeysView& q = chunk.quantized[L];
            const bool int4 = key_precision == ScoreKeys::int4;
            seg.keys_i8 = int4 ? nullptr : q.i8;
            seg.keys_i4 = int4 ? q.i4 : nullptr;
            seg.key_scales = int4 ? q.i4_scales : q.i8_scales;
            seg.key_means = int4 ? q.i4_means : q.i8_means;
        }
        docs += chunk.tokens;
    }
    segments.back().tokens = m_rows;
    segments.back().keys_f32 = question_keys;
    std::vector<float> out(docs);
    const kvfuse_rope_config rope = s.rope.to_c();
    kvfuse::SelectArgs args = a3_select_args(s, q_question, m_rows, docs, smoothing, key_precision, &rope, out.data());
    args.segment_count = segments.size();
    args.segments = segments.data();
    std::size_t no_rows = 0;  // k = 0 at ratio 0: the scores only
    args.row_count = &no_rows;
    throw_if_failed(kvfuse::select_rows(context, args), "A3 relevance");
    return out;
}

FusionRun run_request(const FusionModel& model, const Request& request, std::span<const ChunkKvView> chunks,
                      const FusionOptions& options) {
    FusionRun run;
    run_request(model, request, chunks, options, run);
    return run;
}

void run_request(const FusionModel& model, const Request& request, std::span<const ChunkKvView> chunks,
                 const FusionOptions& o, FusionRun& run) {
    const ModelShape& s = model.shape();
    const std::vector<std::int32_t> tokens = request.full_prompt();
    const std::size_t T = tokens.size(), P = request.prefix.size(), M = request.question.size();
    const int L = s.layers;
    if (T == 0) throw std::invalid_argument("empty request");
    if (M == 0) throw std::invalid_argument("the question must hold at least one token");
    if (s.context > 0 && T > static_cast<std::size_t>(s.context))
        throw std::invalid_argument("the prompt has " + std::to_string(T) + " tokens, more than the model's context of " +
                                    std::to_string(s.context));
    if (!(o.ratio > 0.0 && o.ratio <= 1.0)) throw std::invalid_argument("ratio must be in (0, 1]");
    if (o.check_layer < 1 || o.check_layer >= L)
        throw std::invalid_argument("check layer must be in [1, " + std::to_string(L - 1) + "]");
    const MethodInfo& method = method_info(o.method);
    const bool full = method.where == SelectAt::nowhere;
    if (!full && chunks.size() != request.chunks.size())
        throw std::invalid_argument("one stored cache is needed per chunk");

    run.kernels.prepare(o.threads);
    // Every kernel call of the request's own thread (the model's layers included) runs on it.
    kvfuse::Context& kernels = run.kernels.request();
    run.cache.reset(L, T, s.kv_row());
    run.selected.clear();
    run.rows_per_layer.clear();
    run.recompute_fraction = 0;
    run.times = StageTimes{};

    // Where each stored chunk goes.
    std::vector<std::size_t> chunk_offsets;
    if (!full) {
        std::size_t offset = P;
        for (std::size_t c = 0; c < chunks.size(); ++c) {
            const ChunkKvView& chunk = chunks[c];
            if (chunk.tokens != request.chunks[c].size() || chunk.k.size() != static_cast<std::size_t>(L) ||
                chunk.v.size() != static_cast<std::size_t>(L))
                throw std::invalid_argument("stored cache " + std::to_string(c) + " does not match its chunk");
            chunk_offsets.push_back(offset);
            offset += chunk.tokens;
        }
    }

    // Rows recomputed in every layer: the prefix (only attends to itself, so it is exact) and
    // the question.
    std::vector<std::int64_t> always;
    for (std::size_t r = 0; r < P; ++r) always.push_back(static_cast<std::int64_t>(r));
    for (std::size_t r = T - M; r < T; ++r) always.push_back(static_cast<std::int64_t>(r));
    std::vector<std::int64_t> all_rows(T);
    std::iota(all_rows.begin(), all_rows.end(), 0);

    const bool per_layer = method.where == SelectAt::every_later_layer;
    const bool dynamic = method.where == SelectAt::check_layer || per_layer;
    // Layers that every row goes through: all for full prefill, up to the check layer for the
    // methods that select there, layer 0 for the static ones (unless told not to).
    const int full_layers = full ? L : dynamic ? o.check_layer : (o.recompute_layer0 ? 1 : 0);
    const std::size_t k_select = static_cast<std::size_t>(std::floor(o.ratio * static_cast<double>(T - M)));
    // 1. The stored chunks into the request's cache, from the first layer that keeps stored rows.
    const bool streamed = !full && std::any_of(chunks.begin(), chunks.end(), [](const ChunkKvView& c) { return c.arrival != nullptr; });
    ChunkLoader loader(s, full ? std::span<const ChunkKvView>() : chunks, chunk_offsets, run.cache, full_layers,
                       o.pipelined_loading || streamed, run.kernels, run.times);

    Floats& hidden = run.buffers.hidden;
    resize_uninitialized(hidden, T * static_cast<std::size_t>(s.dim));
    model.embed(tokens, hidden.data());
    std::vector<std::int64_t> rows = all_rows;
    Floats &q = run.buffers.q, &k = run.buffers.k, &v = run.buffers.v, &attention = run.buffers.attention;
    Floats check_hidden;        // SelectAt::every_later_layer: every row's input of the check layer
    std::size_t selector_rows = 0;  // rows the selector itself pushed through layers (a probe's)
    SelectionContext context{.model = model,
                             .request = request,
                             .options = o,
                             .chunks = chunks,
                             .chunk_offsets = chunk_offsets,
                             .prefix_rows = P,
                             .question_rows = M,
                             .total_rows = T,
                             .budget = k_select,
                             .always = always,
                             .cache = run.cache,
                             .kernels = kernels,
                             .wait_for_layer = [&loader](int layer) { loader.wait(layer); }};

    for (int l = 0; l < L; ++l) {
        loader.wait(l);  // before anything reads this layer's stored rows or overwrites them
        auto t_layer = Clock::now();
        bool projected = false;
        if (l == full_layers && !full) {
            if (dynamic) {
                // Fresh Q/K/V of every row at the check layer: the selector's signal.
                resize_uninitialized(q, T * s.q_row());
                resize_uninitialized(k, T * s.kv_row());
                resize_uninitialized(v, T * s.kv_row());
                model.project_qkv(kernels, l, hidden.data(), T, all_rows.data(), q.data(), k.data(), v.data());
                run.times.full_layers += ms_since(t_layer);
                context.layer = l;
                context.hidden = hidden.data();
                context.q = q.data();
                context.k = k.data();
                context.v = v.data();
            }
            const auto t_select = Clock::now();
            if (per_layer) check_hidden = hidden;  // exact inputs of the check layer, for late joiners
            Selection selection = method.select(context);
            run.times.selection += ms_since(t_select);
            // The buffers behind them are compacted below.
            context.hidden = context.q = context.k = context.v = nullptr;
            selector_rows = selection.extra_rows;
            std::vector<std::int64_t>& chosen = selection.rows;
            std::sort(chosen.begin(), chosen.end());
            run.selected = chosen;
            const std::vector<std::int64_t> next = sorted_union(chosen, always);
            // Keep only the hidden states (and fresh projections) of the rows that go on.
            std::vector<std::size_t> where(next.size());
            for (std::size_t i = 0; i < next.size(); ++i)
                where[i] = static_cast<std::size_t>(std::lower_bound(rows.begin(), rows.end(), next[i]) - rows.begin());
            compact_rows(hidden, static_cast<std::size_t>(s.dim), where);
            if (dynamic) {
                compact_rows(q, s.q_row(), where);
                compact_rows(k, s.kv_row(), where);
                compact_rows(v, s.kv_row(), where);
                projected = true;
            }
            rows = next;
            t_layer = Clock::now();
        }
        const std::size_t n = rows.size();
        run.rows_per_layer.push_back(n);
        if (!projected) {
            resize_uninitialized(q, n * s.q_row());
            resize_uninitialized(k, n * s.kv_row());
            resize_uninitialized(v, n * s.kv_row());
            model.project_qkv(kernels, l, hidden.data(), n, rows.data(), q.data(), k.data(), v.data());
        }
        // Fresh rows replace the stored ones in this layer's cache.
        scatter_fresh_rows(run.cache, l, rows, k.data(), v.data());
        if (per_layer && l > full_layers) {
            const auto t_select = Clock::now();
            std::vector<std::int64_t> joining;
            for (std::int64_t row : method.join(context, l, q.data(), k.data(), n))
                if (!std::binary_search(rows.begin(), rows.end(), row)) joining.push_back(row);
            run.times.selection += ms_since(t_select);
            if (!joining.empty()) {
                // Late joiners run from the check layer's exact input through the layers they
                // missed; their fresh K/V also replace the stored rows of those layers.
                const std::size_t j = joining.size();
                std::vector<float> h(j * static_cast<std::size_t>(s.dim)), jq(j * s.q_row()), jk(j * s.kv_row()),
                    jv(j * s.kv_row()), ja(j * s.q_row());
                gather_rows(check_hidden.data(), static_cast<std::size_t>(s.dim), joining, h.data());
                for (int m = full_layers; m <= l; ++m) {
                    model.project_qkv(kernels, m, h.data(), j, joining.data(), jq.data(), jk.data(), jv.data());
                    scatter_fresh_rows(run.cache, m, joining, jk.data(), jv.data());
                    if (m == l) break;  // at this layer they join the others below
                    attend_cache(kernels, s, jq.data(), joining, run.cache, m, ja.data());
                    model.finish_layer(kernels, m, ja.data(), j, h.data());
                    run.rows_per_layer[static_cast<std::size_t>(m)] += j;
                }
                // Merge the joiners (hidden, q) into the sorted row set.
                std::vector<std::int64_t> merged = sorted_union(rows, joining);
                Floats mh(merged.size() * static_cast<std::size_t>(s.dim)), mq(merged.size() * s.q_row());
                for (std::size_t i = 0, a = 0, b = 0; i < merged.size(); ++i) {
                    const bool from_rows = a < rows.size() && rows[a] == merged[i];
                    const float* hs = from_rows ? hidden.data() + a * s.dim : h.data() + b * s.dim;
                    const float* qs = from_rows ? q.data() + a * s.q_row() : jq.data() + b * s.q_row();
                    std::memcpy(mh.data() + i * s.dim, hs, s.dim * sizeof(float));
                    std::memcpy(mq.data() + i * s.q_row(), qs, s.q_row() * sizeof(float));
                    (from_rows ? a : b) += 1;
                }
                rows.swap(merged);
                hidden.assign(mh.begin(), mh.end());  // into the kept buffers, not swapped with them
                q.assign(mq.begin(), mq.end());
                run.selected = sorted_union(run.selected, joining);
                run.rows_per_layer.back() = rows.size();
            }
        }
        const std::size_t n_now = rows.size();
        resize_uninitialized(attention, n_now * s.q_row());
        attend_cache(kernels, s, q.data(), rows, run.cache, l, attention.data());
        model.finish_layer(kernels, l, attention.data(), n_now, hidden.data());
        (l < full_layers ? run.times.full_layers : run.times.recompute) += ms_since(t_layer);
    }

    loader.finish();
    // The question rows are the last M rows still flowing.
    const auto t_logits = Clock::now();
    run.logits.resize(o.logits ? M * static_cast<std::size_t>(s.vocab) : 0);
    if (o.logits) {
        model.logits(kernels, hidden.data() + (rows.size() - M) * s.dim, M, run.logits.data());
        require_finite_logits(run.logits.data(), M, static_cast<std::size_t>(s.vocab));
    }
    run.times.logits = ms_since(t_logits);
    std::size_t pushed = 0;
    for (std::size_t n : run.rows_per_layer) pushed += n;
    pushed += selector_rows;
    run.recompute_fraction = static_cast<double>(pushed) / (static_cast<double>(L) * T);
}

void require_finite_logits(const float* logits, std::size_t rows, std::size_t vocab) {
    // A float is NaN or infinite exactly when its bits without the sign are >= those of +inf.
    // The largest of them over a row is an integer max: associative, so the compiler vectorises
    // it (a float sum would stay one add at a time). Only a bad row is searched for the culprit.
    for (std::size_t r = 0; r < rows; ++r) {
        const float* row = logits + r * vocab;
        std::uint32_t largest = 0;
        for (std::size_t v = 0; v < vocab; ++v) {
            std::uint32_t bits;
            std::memcpy(&bits, row + v, sizeof bits);
            largest = std::max(largest, bits & 0x7fffffffu);
        }
        if (largest < 0x7f800000u) continue;
        std::size_t bad = 0;
        while (std::isfinite(row[bad])) ++bad;
        throw std::runtime_error("the model produced non-finite logits (" +
                                 std::string(std::isnan(row[bad]) ? "NaN" : "infinity") + " for token " + std::to_string(bad) +
                                 " in row " + std::to_string(r) +
                                 "): its weights or metadata are broken (NaN or huge values), no answer can be given");
    }
}

std::vector<std::int32_t> greedy_decode(const FusionModel& model, KvCache& cache, std::int32_t first, std::size_t n,
                                        kvfuse::Context& context) {
    const ModelShape& s = model.shape();
    std::vector<std::int32_t> out;
    if (n == 0) return out;
    std::int32_t token = first;
    std::vector<float> hidden(static_cast<std::size_t>(s.dim)), q(s.q_row()), k(s.kv_row()), v(s.kv_row()),
        attention(s.q_row()), logits(static_cast<std::size_t>(s.vocab));
    for (std::size_t step = 0; step < n; ++step) {
        out.push_back(token);
        if (step + 1 == n) break;
        if (s.context > 0 && cache.tokens >= static_cast<std::size_t>(s.context)) break;
        const std::int64_t position = static_cast<std::int64_t>(cache.tokens);
        for (int l = 0; l < s.layers; ++l) {
            cache.k[static_cast<std::size_t>(l)].resize((cache.tokens + 1) * cache.row);
            cache.v[static_cast<std::size_t>(l)].resize((cache.tokens + 1) * cache.row);
        }
        ++cache.tokens;
        model.embed(std::span<const std::int32_t>(&token, 1), hidden.data());
        const std::vector<std::int64_t> rows = {position};
        for (int l = 0; l < s.layers; ++l) {
            model.project_qkv(context, l, hidden.data(), 1, rows.data(), q.data(), k.data(), v.data());
            std::memcpy(cache.k_row(l, static_cast<std::size_t>(position)), k.data(), cache.row * sizeof(float));
            std::memcpy(cache.v_row(l, static_cast<std::size_t>(position)), v.data(), cache.row * sizeof(float));
            attend_cache(context, s, q.data(), rows, cache, l, attention.data());
            model.finish_layer(context, l, attention.data(), 1, hidden.data());
        }
        model.logits(context, hidden.data(), 1, logits.data());
        require_finite_logits(logits.data(), 1, logits.size());
        token = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }
    return out;
}

}  // namespace kvfuse::fusion
