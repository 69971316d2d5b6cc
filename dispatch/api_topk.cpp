// C API of top-k selection.
#include <cstdint>
#include <limits>
#include <new>
#include <numeric>
#include <string>

#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "kvfuse/kvfuse.h"
#include "reference/topk_reference.h"

namespace {

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

// True when `rows` rows of `row` elements of `element_bytes`, `stride` elements apart, span a
// byte count that fits in size_t (a caller's buffer can exist); a wrapped product would make
// the call read or write the wrong memory.
bool span_fits(std::size_t rows, std::size_t stride, std::size_t row, std::size_t element_bytes) {
    const std::size_t max_elements = std::numeric_limits<std::size_t>::max() / element_bytes;
    if (rows == 0) return true;
    if (row > max_elements) return false;
    return rows == 1 || stride <= (max_elements - row) / (rows - 1);
}

kvfuse_status check_order(kvfuse_topk_order order) {
    if (order != KVFUSE_TOPK_BY_POSITION && order != KVFUSE_TOPK_BY_SCORE)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "order must be KVFUSE_TOPK_BY_POSITION or KVFUSE_TOPK_BY_SCORE");
    return KVFUSE_OK;
}

}  // namespace

extern "C" {

kvfuse_status kvfuse_topk(const float* scores, size_t n, size_t k, kvfuse_topk_order order, int64_t* indices,
                          size_t* count) {
    if (count == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "count is required");
    *count = 0;
    if (const kvfuse_status s = check_order(order); s != KVFUSE_OK) return s;
    if (k == 0 || n == 0) return KVFUSE_OK;
    if (scores == nullptr || indices == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "scores and indices are required");
    if (!span_fits(1, n, n, sizeof(float)) || !span_fits(1, k, k < n ? k : n, sizeof(std::int64_t)))
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "n or k is larger than any buffer (n * 4 or k * 8 bytes overflow)");
    const kvfuse::detail::KernelTable* kernels = nullptr;
    if (const kvfuse_status s = kvfuse::detail::active_kernels(kernels); s != KVFUSE_OK) return s;
    try {
        select(*kernels, scores, n, k, order, indices);
    } catch (const std::bad_alloc&) {
        return fail(KVFUSE_ERROR_OUT_OF_MEMORY, "top-k candidates");
    }
    *count = k < n ? k : n;
    return KVFUSE_OK;
}

kvfuse_status kvfuse_topk_batched(const float* scores, size_t rows, size_t n, size_t row_stride, size_t k,
                                  kvfuse_topk_order order, int64_t* indices, size_t indices_stride) {
    if (const kvfuse_status s = check_order(order); s != KVFUSE_OK) return s;
    const std::size_t per_row = k < n ? k : n;
    if (row_stride < n) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "row_stride must be >= n");
    if (indices_stride < per_row) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "indices_stride must be >= min(k, n)");
    if (rows == 0 || per_row == 0) return KVFUSE_OK;
    if (scores == nullptr || indices == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "scores and indices are required");
    if (!span_fits(rows, row_stride, n, sizeof(float)) || !span_fits(rows, indices_stride, per_row, sizeof(std::int64_t)))
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "the scores or indices span overflows (rows * stride too large)");
    const kvfuse::detail::KernelTable* kernels = nullptr;
    if (const kvfuse_status s = kvfuse::detail::active_kernels(kernels); s != KVFUSE_OK) return s;
    bool out_of_memory = false;
#pragma omp parallel for schedule(dynamic) if (rows > 1 && n >= 4096)
    for (std::ptrdiff_t r = 0; r < static_cast<std::ptrdiff_t>(rows); ++r) {
        try {
            select(*kernels, scores + static_cast<std::size_t>(r) * row_stride, n, k, order,
                   indices + static_cast<std::size_t>(r) * indices_stride);
        } catch (const std::bad_alloc&) {
#pragma omp atomic write
            out_of_memory = true;
        }
    }
    if (out_of_memory) return fail(KVFUSE_ERROR_OUT_OF_MEMORY, "top-k candidates");
    return KVFUSE_OK;
}

}  // extern "C"
