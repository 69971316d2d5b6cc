// C API of top-k selection.
#include <cstdint>
#include <limits>
#include <atomic>
#include <exception>
#include <mutex>
#include <numeric>
#include <string>

#include "dispatch/api_checks.h"
#include "dispatch/context.h"
#include "kernels/call_context.h"
#include "kernels/common/workers.h"
#include "kernels/topk/topk_scratch.h"
#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "dispatch/kernel_call.h"
#include "kvfuse/kvfuse.h"
#include "reference/topk_reference.h"

namespace {

using kvfuse::detail::check_aligned;
using kvfuse::detail::check_span;
using kvfuse::detail::fail;

// Selects into `indices`; the kernels handle 0 < k < n with n < 2^32, the rest is trivial or
// (n >= 2^32) left to the reference.
void select(const kvfuse::detail::KernelTable& kernels, const float* scores, std::size_t n, std::size_t k,
            kvfuse_topk_order order, std::int64_t* indices, kvfuse::detail::TopkScratch& scratch, std::size_t sample) {
    if (k >= n) {
        if (order == KVFUSE_TOPK_BY_POSITION)
            std::iota(indices, indices + n, std::int64_t{0});
        else
            kvfuse::reference::topk(scores, n, n, order, indices);
    } else if (n > std::numeric_limits<std::uint32_t>::max()) {
        kvfuse::reference::topk(scores, n, k, order, indices);
    } else {
        kernels.topk(scores, n, k, order, indices, scratch, sample);
    }
}

// Rows [0, rows) of a batch on the context's workers: each worker's top-k buffers are reserved
// before any starts. Rows of fewer than tuning.topk_parallel_work scores run on one worker.
kvfuse_status select_rows(kvfuse::detail::ContextCall& call, const kvfuse::detail::KernelTable& kernels,
                          const float* scores, std::size_t rows, std::size_t n, std::size_t row_stride, std::size_t k,
                          kvfuse_topk_order order, std::int64_t* indices, std::size_t indices_stride) {
    kvfuse_context& context = call.context();
    const kvfuse_tuning& tuning = kvfuse::detail::context_tuning(context);
    const std::size_t workers =
        rows > 1 && n >= tuning.topk_parallel_work ? std::min(kvfuse::detail::context_workers(context), rows) : 1;
    const std::size_t sample = tuning.topk_sample;
    kvfuse::detail::reserve_topk_scratch(context, workers, n, k < n ? k : n, sample);
    // The reference (k >= n by score, n >= 2^32) allocates: what it throws is kept and reported
    // after the workers, never left to escape a worker.
    std::atomic<bool> failed{false};
    std::exception_ptr row_error;
    std::mutex error_mutex;
    auto worker = [&](std::size_t w) {
        kvfuse::detail::TopkScratch& scratch = kvfuse::detail::context_topk_scratch(context, w);
        for (std::size_t r = rows * w / workers; r < rows * (w + 1) / workers && !failed.load(std::memory_order_relaxed);
             ++r) {
            try {
                select(kernels, scores + r * row_stride, n, k, order, indices + r * indices_stride, scratch, sample);
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!row_error) row_error = std::current_exception();
                failed.store(true, std::memory_order_relaxed);
            }
        }
    };
    kvfuse::detail::run_workers(context, workers, worker);
    if (row_error) std::rethrow_exception(row_error);
    return KVFUSE_OK;
}

kvfuse_status check_order(int order) {
    return kvfuse::detail::check_enum("order", order, 2, "KVFUSE_TOPK_BY_POSITION (0) or KVFUSE_TOPK_BY_SCORE (1)");
}

}  // namespace

extern "C" {

kvfuse_status kvfuse_ctx_topk(kvfuse_context* context, const float* scores, size_t n, size_t k,
                              kvfuse_topk_order order, int64_t* indices, size_t* count) {
    const int order_value = kvfuse::detail::enum_value(order);
    return kvfuse::detail::guarded("kvfuse_topk", [&] {
        if (count == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "count is required");
        if (auto s = check_aligned("count", count, alignof(std::size_t)); s != KVFUSE_OK) return s;
        *count = 0;
        if (const kvfuse_status s = check_order(order_value); s != KVFUSE_OK) return s;
        if (k == 0 || n == 0) return KVFUSE_OK;
        if (scores == nullptr || indices == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "scores and indices are required");
        const std::size_t written = k < n ? k : n;
        if (auto s = check_span("scores (n)", n, 1, 1, sizeof(float)); s != KVFUSE_OK) return s;
        if (auto s = check_span("indices (min(k, n))", written, 1, 1, sizeof(std::int64_t)); s != KVFUSE_OK) return s;
        if (auto s = check_aligned("scores", scores, sizeof(float)); s != KVFUSE_OK) return s;
        if (auto s = check_aligned("indices", indices, sizeof(std::int64_t)); s != KVFUSE_OK) return s;
        return kvfuse::detail::with_kernels(context, [&](auto& call, const auto& kernels) {
            if (const kvfuse_status s = select_rows(call, kernels, scores, 1, n, n, k,
                                                    static_cast<kvfuse_topk_order>(order_value), indices, written);
                s != KVFUSE_OK)
                return s;
            *count = written;
            return KVFUSE_OK;
        });
    });
}

kvfuse_status kvfuse_ctx_topk_batched(kvfuse_context* context, const float* scores, size_t rows, size_t n,
                                      size_t row_stride, size_t k, kvfuse_topk_order order, int64_t* indices,
                                      size_t indices_stride) {
    const int order_value = kvfuse::detail::enum_value(order);
    return kvfuse::detail::guarded("kvfuse_topk_batched", [&] {
        if (const kvfuse_status s = check_order(order_value); s != KVFUSE_OK) return s;
        const std::size_t per_row = k < n ? k : n;
        if (row_stride < n) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "row_stride must be >= n");
        if (indices_stride < per_row) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "indices_stride must be >= min(k, n)");
        if (rows == 0 || per_row == 0) return KVFUSE_OK;
        if (scores == nullptr || indices == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "scores and indices are required");
        if (auto s = check_span("scores (rows x row_stride)", rows, row_stride, n, sizeof(float)); s != KVFUSE_OK) return s;
        if (auto s = check_span("indices (rows x indices_stride)", rows, indices_stride, per_row, sizeof(std::int64_t));
            s != KVFUSE_OK)
            return s;
        if (auto s = check_aligned("scores", scores, sizeof(float)); s != KVFUSE_OK) return s;
        if (auto s = check_aligned("indices", indices, sizeof(std::int64_t)); s != KVFUSE_OK) return s;
        return kvfuse::detail::with_kernels(context, [&](auto& call, const auto& kernels) {
            return select_rows(call, kernels, scores, rows, n, row_stride, k, static_cast<kvfuse_topk_order>(order_value),
                               indices, indices_stride);
        });
    });
}

kvfuse_status kvfuse_topk(const float* scores, size_t n, size_t k, kvfuse_topk_order order, int64_t* indices,
                          size_t* count) {
    return kvfuse_ctx_topk(nullptr, scores, n, k, order, indices, count);
}

kvfuse_status kvfuse_topk_batched(const float* scores, size_t rows, size_t n, size_t row_stride, size_t k,
                                  kvfuse_topk_order order, int64_t* indices, size_t indices_stride) {
    return kvfuse_ctx_topk_batched(nullptr, scores, rows, n, row_stride, k, order, indices, indices_stride);
}

}  // extern "C"
