// C API of sparse-row attention and the row gather/scatter helpers.
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <string>

#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "kvfuse/kvfuse.h"

namespace {

using kvfuse::detail::fail;

std::size_t element_size(kvfuse_dtype dtype) { return dtype == KVFUSE_DTYPE_F32 ? 4 : 2; }

bool valid_dtype(kvfuse_dtype dtype) { return dtype == KVFUSE_DTYPE_F32 || dtype == KVFUSE_DTYPE_BF16; }

bool multiplies_without_overflow(std::size_t a, std::size_t b) {
    return a == 0 || b <= std::numeric_limits<std::size_t>::max() / a;
}

kvfuse_status check_attention(const kvfuse_attention_args* a) {
    if (a == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "args is required");
    if (a->head_dim == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "head_dim must be > 0");
    if (a->kv_heads == 0 || a->query_heads == 0 || a->query_heads % a->kv_heads != 0)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "query_heads (" + std::to_string(a->query_heads) +
                                                       ") must be a positive multiple of kv_heads (" +
                                                       std::to_string(a->kv_heads) + ")");
    if (!valid_dtype(a->kv_dtype)) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "kv_dtype must be f32 or bf16");
    if (!multiplies_without_overflow(a->query_heads, a->head_dim) || !multiplies_without_overflow(a->kv_heads, a->head_dim))
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "heads * head_dim overflows");
    const std::size_t q_row = a->query_heads * a->head_dim, kv_row = a->kv_heads * a->head_dim;
    if (a->query_row_stride < q_row || a->out_row_stride < q_row)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "query and out row strides must be >= query_heads * head_dim (" +
                                                       std::to_string(q_row) + ")");
    if (a->kv_token_stride < kv_row)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "kv_token_stride must be >= kv_heads * head_dim (" +
                                                       std::to_string(kv_row) + ")");
    if (!(a->scale == a->scale)) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "scale is NaN");
    if (a->rows == 0) return KVFUSE_OK;
    if (a->queries == nullptr || a->positions == nullptr || a->keys == nullptr || a->values == nullptr || a->out == nullptr)
        return fail(KVFUSE_ERROR_NULL_POINTER, "queries, positions, keys, values and out are required");
    if (a->kv_tokens == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "kv_tokens must be > 0 when rows > 0");
    if (!multiplies_without_overflow(a->kv_tokens, a->kv_token_stride) ||
        !multiplies_without_overflow(a->rows, a->query_row_stride) || !multiplies_without_overflow(a->rows, a->out_row_stride) ||
        // and in bytes (found by fuzz_c_api: element counts that fit, byte offsets that wrapped)
        !multiplies_without_overflow(a->kv_tokens * a->kv_token_stride, element_size(a->kv_dtype)) ||
        !multiplies_without_overflow(a->rows * a->query_row_stride, sizeof(float)) ||
        !multiplies_without_overflow(a->rows * a->out_row_stride, sizeof(float)) ||
        !multiplies_without_overflow(a->rows, sizeof(std::int64_t)))
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "a tensor's size overflows");
    for (std::size_t r = 0; r < a->rows; ++r)
        if (a->positions[r] < 0 || static_cast<std::uint64_t>(a->positions[r]) >= a->kv_tokens)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "positions[" + std::to_string(r) + "] = " +
                                                           std::to_string(a->positions[r]) + " is outside [0, kv_tokens = " +
                                                           std::to_string(a->kv_tokens) + ")");
    return KVFUSE_OK;
}

// True when n rows of `row` elements of `elem` bytes, `stride` elements apart, span a byte count
// that fits in size_t: a wrapped product would address the wrong memory.
bool span_fits(std::size_t n, std::size_t stride, std::size_t row, std::size_t elem) {
    const std::size_t max_elements = std::numeric_limits<std::size_t>::max() / elem;
    if (n == 0) return true;
    if (row > max_elements) return false;
    return n == 1 || stride <= (max_elements - row) / (n - 1);
}

// table_is_src: gather (src has table_rows rows, dst count rows); else scatter.
kvfuse_status check_rows(kvfuse_dtype dtype, const void* src, const void* dst, const int64_t* rows, std::size_t count,
                         std::size_t table_rows, std::size_t src_stride, std::size_t dst_stride, std::size_t row_elements,
                         bool table_is_src) {
    if (!valid_dtype(dtype)) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "dtype must be f32 or bf16");
    if (src_stride < row_elements || dst_stride < row_elements)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "row strides must be >= row_elements");
    if (count == 0 || row_elements == 0) return KVFUSE_OK;
    if (src == nullptr || dst == nullptr || rows == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "src, dst and rows are required");
    const std::size_t elem = element_size(dtype);
    if (count > std::numeric_limits<std::size_t>::max() / sizeof(std::int64_t) ||
        !span_fits(table_is_src ? table_rows : count, src_stride, row_elements, elem) ||
        !span_fits(table_is_src ? count : table_rows, dst_stride, row_elements, elem))
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "a row span overflows (rows * stride * element size too large)");
    for (std::size_t i = 0; i < count; ++i)
        if (rows[i] < 0 || static_cast<std::uint64_t>(rows[i]) >= table_rows)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                                                           " is outside [0, " + std::to_string(table_rows) + ")");
    return KVFUSE_OK;
}

}  // namespace

extern "C" {

kvfuse_status kvfuse_sparse_attention(const kvfuse_attention_args* args) {
    if (const kvfuse_status status = check_attention(args); status != KVFUSE_OK || args->rows == 0) return status;
    const kvfuse::detail::KernelTable* kernels = nullptr;
    if (const kvfuse_status status = kvfuse::detail::active_kernels(kernels); status != KVFUSE_OK) return status;
    try {
        kernels->sparse_attention(*args);
    } catch (const std::bad_alloc&) {
        return fail(KVFUSE_ERROR_OUT_OF_MEMORY, "attention scratch");
    }
    return KVFUSE_OK;
}

kvfuse_status kvfuse_gather_rows(kvfuse_dtype dtype, const void* src, size_t src_rows, size_t src_row_stride,
                                 const int64_t* rows, size_t count, void* dst, size_t dst_row_stride, size_t row_elements) {
    if (const kvfuse_status s = check_rows(dtype, src, dst, rows, count, src_rows, src_row_stride, dst_row_stride, row_elements, true);
        s != KVFUSE_OK)
        return s;
    const std::size_t elem = element_size(dtype);
    for (std::size_t i = 0; i < count && row_elements > 0; ++i)
        std::memmove(static_cast<char*>(dst) + i * dst_row_stride * elem,
                     static_cast<const char*>(src) + static_cast<std::size_t>(rows[i]) * src_row_stride * elem, row_elements * elem);
    return KVFUSE_OK;
}

kvfuse_status kvfuse_scatter_rows(kvfuse_dtype dtype, const void* src, size_t src_row_stride, const int64_t* rows,
                                  size_t count, void* dst, size_t dst_rows, size_t dst_row_stride, size_t row_elements) {
    if (const kvfuse_status s = check_rows(dtype, src, dst, rows, count, dst_rows, src_row_stride, dst_row_stride, row_elements, false);
        s != KVFUSE_OK)
        return s;
    const std::size_t elem = element_size(dtype);
    for (std::size_t i = 0; i < count && row_elements > 0; ++i)
        std::memmove(static_cast<char*>(dst) + static_cast<std::size_t>(rows[i]) * dst_row_stride * elem,
                     static_cast<const char*>(src) + i * src_row_stride * elem, row_elements * elem);
    return KVFUSE_OK;
}

}  // extern "C"
