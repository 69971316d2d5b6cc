// A small fusion engine of its own on kvfuse's public C API: a paged f16 KV cache, its own
// thread pool plugged into kvfuse's execution context, and a fused request the way a RAG engine
// runs one:
//   1. the request's blocks taken from the pool (shuffled, 16 tokens each);
//   2. each stored chunk placed at its offset in the request: keys re-rotated from the chunk's
//      frame into the paged cache in one call (kvfuse_ctx_rope_rotate_layout), values copied;
//   3. prefix and question rows computed fresh ("the model": deterministic f32 numbers) and
//      written into the cache, the keys rotated to their positions and rounded to f16 in one
//      call (kvfuse_ctx_rope_rotate_layout's converting copy, a per-token table of cells);
//   4. A3 row selection at the check layer (kvfuse_ctx_select_rows: the question's queries against
//      the stored chunks' int8 keys in their own frame and the question's own f16 keys read from
//      the paged cache, 15 %);
//   5. per layer, the selected rows recomputed (fresh K/V written into the cache) and sparse-row
//      attention for them, then attention for the question rows, on the paged cache
//      (kvfuse_ctx_sparse_attention with the block table).
// Every buffer is sized when the engine is made: a request allocates nothing of its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <kvfuse/kvfuse.h>

#include "chunk_store.h"
#include "paged_kv_cache.h"

// Where one request's K/V live: the engine's paged cache, or (for the checks) a contiguous copy.
class CacheTarget {
public:
    virtual ~CacheTarget() = default;
    virtual KvView keys(std::size_t layer) = 0;
    virtual KvView values(std::size_t layer) = 0;
};

struct RequestPlan {
    std::size_t id = 0;
    std::size_t prefix_rows = 0, question_rows = 0;
    std::vector<std::size_t> chunk_order;  // store indices, in prompt order
    std::vector<std::size_t> offsets;      // each chunk's first token in the request
    std::size_t documents = 0;             // the chunks' tokens
    std::size_t tokens() const { return prefix_rows + documents + question_rows; }
};

RequestPlan make_plan(std::size_t id, const std::vector<StoredChunk>& store, std::vector<std::size_t> order,
                      std::size_t prefix_rows, std::size_t question_rows);

// Told after each step of a request (outside the allocation count), e.g. to count threads.
class StepObserver {
public:
    virtual ~StepObserver() = default;
    virtual void after(const char* step) = 0;
};

class Engine {
public:
    Engine(const ModelShape& model, const kvfuse_rope_config& rope, const std::vector<StoredChunk>& store,
           const std::vector<float>& topic, kvfuse_context* context, std::size_t pool_blocks, std::size_t block_size,
           std::size_t max_tokens, std::size_t max_question_rows, double ratio);

    // The whole request on the paged cache, its blocks kept until end_request. Allocations are
    // counted (allocation_counter.h) in slot 1 during kvfuse_ctx_select_rows, in slot 2 during the
    // RoPE calls, in slot 0 otherwise (the engine's own code, attention, conversions).
    void run(const RequestPlan& plan, StepObserver& observer);
    void end_request(const RequestPlan& plan);

    // The steps, for the checks to replay on another target.
    void place_chunks(const RequestPlan& plan, CacheTarget& target);
    void write_prompt_rows(const RequestPlan& plan, CacheTarget& target);
    std::size_t select(const RequestPlan& plan, kvfuse_key_precision precision, std::int64_t* rows, float* scores);
    void recompute_and_attend(const RequestPlan& plan, CacheTarget& target, const std::int64_t* rows, std::size_t count,
                              float* out_selected, float* out_question);
    // Queries of `count` rows at `positions` of `layer`, after RoPE: [count][query_heads][head_dim].
    void make_queries(const RequestPlan& plan, std::size_t layer, const std::int64_t* positions, std::size_t count,
                      float* queries);
    void attend(CacheTarget& target, std::size_t layer, std::size_t kv_tokens, const float* queries,
                const std::int64_t* positions, std::size_t rows, float* out);

    // The last run's results.
    const std::int64_t* selected() const { return selected_.data(); }
    std::size_t selected_count() const { return selected_count_; }
    const float* scores() const { return scores_.data(); }  // the documents' A3 scores (int8)
    const float* out_selected(std::size_t layer) const { return out_selected_.data() + layer * selected_stride(); }
    const float* out_question(std::size_t layer) const { return out_question_.data() + layer * question_stride(); }
    // The question's queries at the check layer (after RoPE, f32), from write_prompt_rows; its
    // keys are in the cache.
    const float* question_queries() const { return question_queries_.data(); }
    const std::int32_t* block_table() const { return table_.data(); }
    PagedKvCache& cache() { return cache_; }
    kvfuse_context* context() const { return context_; }
    const ModelShape& model() const { return model_; }
    const kvfuse_rope_config& rope() const { return rope_; }
    const std::vector<StoredChunk>& store() const { return store_; }
    double ratio() const { return ratio_; }

    // Floats per layer in the output arrays of recompute_and_attend.
    std::size_t selected_stride() const { return max_tokens_ * model_.query_elements(); }
    std::size_t question_stride() const { return max_question_rows_ * model_.query_elements(); }

private:
    // Fresh K/V of `count` rows at `positions` of `layer` written into the target (keys rotated
    // on the way); fresh_keys_ keeps their f32 keys before RoPE.
    void write_fresh_rows(const RequestPlan& plan, CacheTarget& target, std::size_t layer,
                          const std::int64_t* positions, std::size_t count);

    ModelShape model_;
    kvfuse_rope_config rope_;
    const std::vector<StoredChunk>& store_;
    const std::vector<float>& topic_;
    kvfuse_context* context_;
    PagedKvCache cache_;
    std::size_t max_tokens_, max_question_rows_;
    double ratio_;
    std::vector<std::int32_t> table_;
    std::vector<std::int64_t> prompt_positions_, selected_;
    std::size_t selected_count_ = 0;
    std::vector<float> fresh_keys_, fresh_values_, queries_, scores_;
    std::vector<std::int32_t> fresh_cells_;  // the cache row of each fresh row
    std::vector<float> question_queries_;
    std::vector<float> out_selected_, out_question_;
    std::vector<kvfuse_select_segment> segments_;
};
