// C API of top-k selection.
#include <cstdint>
#include <limits>
#include <exception>
#include <numeric>
#include <string>

#include "dispatch/api_checks.h"
#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "kvfuse/kvfuse.h"
#include "reference/topk_reference.h"

namespace {

using kvfuse::detail::check_aligned;
using kvfuse::detail::check_span;
using kvfuse::detail::fail;

// Selects into `indices`; the kernels handle 0 < k < n with n < 2^32, the rest is trivial or
// (n >= 2^32) left to the reference.
void select(const kvfuse::detail::KernelTable& kernels, const float* scores, std::size_t n, std::size_t k,
            kvfuse_topk_order order, std::int64_t* indices) {
    if (k >= n) {
        if (order == KVFUSE_TOPK_BY_POSITION)
            std::iota(indices, indices + n, std::int64_t{0});
        else
            kvfuse::reference::topk(scores, n, n, order, indices);
    } else if (n > std::numeric_limits<std::uint32_t>::max()) {
        kvfuse::reference::topk(scores, n, k, order, indices);
    } else {
        kernels.topk(scores, n, k, order, indices);
    }
}

kvfuse_status check_order(int order) {
    return kvfuse::detail::check_enum("order", order, 2, "KVFUSE_TOPK_BY_POSITION (0) or KVFUSE_TOPK_BY_SCORE (1)");
}

}  // namespace

extern "C" {

kvfuse_status kvfuse_topk(const float* scores, size_t n, size_t k, kvfuse_topk_order order, int64_t* indices,
                          size_t* count) {
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
        const kvfuse::detail::KernelTable* kernels = nullptr;
        if (const kvfuse_status s = kvfuse::detail::active_kernels(kernels); s != KVFUSE_OK) return s;
        select(*kernels, scores, n, k, static_cast<kvfuse_topk_order>(order_value), indices);
        *count = written;
        return KVFUSE_OK;
    });
}

kvfuse_status kvfuse_topk_batched(const float* scores, size_t rows, size_t n, size_t row_stride, size_t k,
                                  kvfuse_topk_order order, int64_t* indices, size_t indices_stride) {
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
        const kvfuse::detail::KernelTable* kernels = nullptr;
        if (const kvfuse_status s = kvfuse::detail::active_kernels(kernels); s != KVFUSE_OK) return s;
        const auto checked_order = static_cast<kvfuse_topk_order>(order_value);
        // An exception must not leave an OpenMP region: each row's is kept and reported after it.
        std::exception_ptr row_error;
#pragma omp parallel for schedule(dynamic) if (rows > 1 && n >= 4096)
        for (std::ptrdiff_t r = 0; r < static_cast<std::ptrdiff_t>(rows); ++r) {
            try {
                select(*kernels, scores + static_cast<std::size_t>(r) * row_stride, n, k, checked_order,
                       indices + static_cast<std::size_t>(r) * indices_stride);
            } catch (...) {
#pragma omp critical(kvfuse_topk_batched_error)
                row_error = std::current_exception();
            }
        }
        if (row_error) std::rethrow_exception(row_error);
        return KVFUSE_OK;
    });
}

}  // extern "C"
