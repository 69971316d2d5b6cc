// What a fusion method is to the pipeline: a selector, the function that chooses which
// document rows a request recomputes. The pipeline (pipeline.cpp) owns the layers, the cache
// and the row bookkeeping; a selector only says which rows, and the method table
// (method_table.cpp) says when it is asked (SelectAt). Adding a method: driver/README.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "driver_errors.h"
#include "fusion/pipeline.h"

namespace kvfuse::fusion {

// What a selector sees of the request it selects for. Rows are numbered in the request:
// prefix [0, P), the chunks from P on (chunk c from chunk_offsets[c]), question [T − M, T).
struct SelectionContext {
    const FusionModel& model;
    const Request& request;
    const FusionOptions& options;
    std::span<const ChunkKvView> chunks;         // one stored cache per request chunk
    std::span<const std::size_t> chunk_offsets;  // the row where each chunk starts
    std::size_t prefix_rows = 0;                 // P
    std::size_t question_rows = 0;               // M
    std::size_t total_rows = 0;                  // T
    // ⌊ratio·(T − M)⌋: how many document rows a method that takes a ratio selects.
    std::size_t budget = 0;
    // Prefix and question rows, ascending: the pipeline recomputes them in every layer.
    std::span<const std::int64_t> always;
    // The request's fused cache. From `layer` on it holds the stored rows (re-rotated) once
    // wait_for_layer has returned for that layer; a selector may overwrite the `always` rows
    // there (the pipeline writes them again before it reads them), nothing else.
    KvCache& cache;
    // The request's kernel context (KernelContexts::request): a selector's kvfuse calls run on
    // it, with the request's thread count and warm scratch.
    kvfuse::Context& kernels;
    std::function<void(int layer)> wait_for_layer;

    // Selectors that select at the check layer (SelectAt::check_layer, every_later_layer):
    // that layer, every row's input of it (T rows of dim floats) and every row's fresh Q, K, V
    // there (T rows each, RoPE at the absolute positions). Null for the others, and in join().
    int layer = -1;
    const float* hidden = nullptr;
    const float* q = nullptr;
    const float* k = nullptr;
    const float* v = nullptr;

    std::size_t documents() const { return total_rows - prefix_rows - question_rows; }
};

struct Selection {
    // Document rows to recompute from the selection layer on (in [P, T − M), no repeats, any
    // order); the pipeline adds the prefix and question rows.
    std::vector<std::int64_t> rows;
    // Rows the selector itself pushed through layers (a probe's): counted in the recompute
    // fraction.
    std::size_t extra_rows = 0;
};

// Called once per request: SelectAt::request before the first layer that keeps stored rows,
// check_layer and every_later_layer at the check layer. Throws on failure.
using SelectRows = Selection (*)(const SelectionContext& context);
// SelectAt::every_later_layer only, at each layer after the check layer: the rows to recompute
// from this layer on, ascending, from the fresh Q and K of the n rows flowing through `layer`
// (the question's are the last M). Rows already flowing may be among them; the pipeline runs
// the others from the check layer's input through the layers they missed, then adds them.
using JoinRows = std::vector<std::int64_t> (*)(const SelectionContext& context, int layer, const float* q,
                                               const float* k, std::size_t n);

// Helpers for selectors (the pipeline uses them too).

// kvfuse::Status to an exception (std::runtime_error "what: message") when it is an error: the
// driver's one error style (driver_errors.h).
using driver::throw_if_failed;
// The k best of `document_scores` (one per document row, from row P on) as rows, ascending;
// ties go to the lower row, NaN ranks last.
std::vector<std::int64_t> top_rows(kvfuse::Context& context, std::span<const float> document_scores, std::size_t k,
                                   std::size_t prefix_rows);
// dst row i = src row rows[i] (rows of `width` floats).
void gather_rows(const float* src, std::size_t width, std::span<const std::int64_t> rows, float* dst);
// Fresh K/V of `rows` (k, v: one row each, in order) replace those rows in a layer's cache.
void scatter_fresh_rows(KvCache& cache, int layer, std::span<const std::int64_t> rows, const float* k, const float* v);
// Q of `rows` (at their positions) against every key of a layer's cache, exact causal mask.
void attend_cache(kvfuse::Context& context, const ModelShape& shape, const float* q, std::span<const std::int64_t> rows,
                  KvCache& cache, int layer, float* out);

}  // namespace kvfuse::fusion
