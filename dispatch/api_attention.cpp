// C API of sparse-row attention and the row gather/scatter helpers.
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>

#include "dispatch/api_checks.h"
#include "dispatch/context.h"
#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "dispatch/struct_versions.h"
#include "kvfuse/kvfuse.h"

namespace {

using kvfuse::detail::check_aligned;
using kvfuse::detail::check_size;
using kvfuse::detail::check_span;
using kvfuse::detail::CheckedSize;
using kvfuse::detail::fail;

kvfuse_status check_attention(const kvfuse_attention_args* a) {
    if (a == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "args is required");
    if (auto s = kvfuse::detail::check_dtype("kv_dtype", kvfuse::detail::enum_value(a->kv_dtype)); s != KVFUSE_OK) return s;
    if (a->head_dim == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "head_dim must be > 0");
    if (a->kv_heads == 0 || a->query_heads == 0 || a->query_heads % a->kv_heads != 0)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "query_heads (" + std::to_string(a->query_heads) +
                                                       ") must be a positive multiple of kv_heads (" +
                                                       std::to_string(a->kv_heads) + ")");
    const std::size_t elem = kvfuse::detail::dtype_bytes(a->kv_dtype);
    if (auto s = check_size("query_heads * head_dim", CheckedSize(a->query_heads) * a->head_dim * sizeof(float)); s != KVFUSE_OK)
        return s;
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
    if (auto s = check_span("queries (rows x query_row_stride)", a->rows, a->query_row_stride, q_row, sizeof(float));
        s != KVFUSE_OK)
        return s;
    if (auto s = check_span("out (rows x out_row_stride)", a->rows, a->out_row_stride, q_row, sizeof(float)); s != KVFUSE_OK)
        return s;
    if (auto s = check_span("positions (rows)", a->rows, 1, 1, sizeof(std::int64_t)); s != KVFUSE_OK) return s;
    if (auto s = check_span("keys and values (kv_tokens x kv_token_stride)", a->kv_tokens, a->kv_token_stride, kv_row, elem);
        s != KVFUSE_OK)
        return s;
    for (const auto& [what, pointer, alignment] :
         {std::tuple<const char*, const void*, std::size_t>{"queries", a->queries, sizeof(float)},
          {"out", a->out, sizeof(float)},
          {"positions", a->positions, sizeof(std::int64_t)},
          {"keys", a->keys, elem},
          {"values", a->values, elem}})
        if (auto s = check_aligned(what, pointer, alignment); s != KVFUSE_OK) return s;
    for (std::size_t r = 0; r < a->rows; ++r)
        if (a->positions[r] < 0 || static_cast<std::uint64_t>(a->positions[r]) >= a->kv_tokens)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "positions[" + std::to_string(r) + "] = " +
                                                           std::to_string(a->positions[r]) + " is outside [0, kv_tokens = " +
                                                           std::to_string(a->kv_tokens) + ")");
    return KVFUSE_OK;
}

// Shared by gather and scatter: `table_rows` rows on the indexed side (src for gather, dst for
// scatter), `count` rows on the packed side.
kvfuse_status check_rows(int dtype, const void* src, const void* dst, const int64_t* rows, std::size_t count,
                         std::size_t table_rows, bool table_is_src, std::size_t src_stride, std::size_t dst_stride,
                         std::size_t row_elements) {
    if (auto s = kvfuse::detail::check_dtype("dtype", dtype); s != KVFUSE_OK) return s;
    if (src_stride < row_elements || dst_stride < row_elements)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "row strides must be >= row_elements");
    if (count == 0 || row_elements == 0) return KVFUSE_OK;
    if (src == nullptr || dst == nullptr || rows == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "src, dst and rows are required");
    const std::size_t elem = dtype == KVFUSE_DTYPE_F32 ? 4 : 2;
    const std::size_t src_rows = table_is_src ? table_rows : count, dst_rows = table_is_src ? count : table_rows;
    if (auto s = check_span("src (rows x src_row_stride)", src_rows, src_stride, row_elements, elem); s != KVFUSE_OK) return s;
    if (auto s = check_span("dst (rows x dst_row_stride)", dst_rows, dst_stride, row_elements, elem); s != KVFUSE_OK) return s;
    if (auto s = check_span("rows (count)", count, 1, 1, sizeof(std::int64_t)); s != KVFUSE_OK) return s;
    if (auto s = check_aligned("src", src, elem); s != KVFUSE_OK) return s;
    if (auto s = check_aligned("dst", dst, elem); s != KVFUSE_OK) return s;
    if (auto s = check_aligned("rows", rows, sizeof(std::int64_t)); s != KVFUSE_OK) return s;
    for (std::size_t i = 0; i < count; ++i)
        if (rows[i] < 0 || static_cast<std::uint64_t>(rows[i]) >= table_rows)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                                                           " is outside [0, " + std::to_string(table_rows) + ")");
    return KVFUSE_OK;
}

}  // namespace

extern "C" {

kvfuse_status kvfuse_ctx_sparse_attention(kvfuse_context* context, const kvfuse_attention_args* caller_args) {
    return kvfuse::detail::guarded("kvfuse_sparse_attention", [&] {
        kvfuse_attention_args args;  // the defaults, then as many fields as the caller's version has
        kvfuse_attention_args_init(&args);
        if (auto s = kvfuse::detail::read_struct("args", caller_args, args); s != KVFUSE_OK) return s;
        if (const kvfuse_status status = check_attention(&args); status != KVFUSE_OK || args.rows == 0) return status;
        kvfuse::detail::ContextCall call(context);
        if (call.status() != KVFUSE_OK) return call.status();
        const kvfuse::detail::KernelTable* kernels = nullptr;
        if (const kvfuse_status status = call.kernels(kernels); status != KVFUSE_OK) return status;
        kernels->sparse_attention(call.context(), args);
        return KVFUSE_OK;
    });
}

kvfuse_status kvfuse_sparse_attention(const kvfuse_attention_args* args) {
    return kvfuse_ctx_sparse_attention(nullptr, args);
}

kvfuse_status kvfuse_gather_rows(kvfuse_dtype dtype, const void* src, size_t src_rows, size_t src_row_stride,
                                 const int64_t* rows, size_t count, void* dst, size_t dst_row_stride, size_t row_elements) {
    const int dtype_value = kvfuse::detail::enum_value(dtype);
    return kvfuse::detail::guarded("kvfuse_gather_rows", [&] {
        if (const kvfuse_status s = check_rows(dtype_value, src, dst, rows, count, src_rows, true, src_row_stride,
                                               dst_row_stride, row_elements);
            s != KVFUSE_OK)
            return s;
        const std::size_t elem = dtype_value == KVFUSE_DTYPE_F32 ? 4 : 2;
        for (std::size_t i = 0; i < count && row_elements > 0; ++i)
            std::memmove(static_cast<char*>(dst) + i * dst_row_stride * elem,
                         static_cast<const char*>(src) + static_cast<std::size_t>(rows[i]) * src_row_stride * elem,
                         row_elements * elem);
        return KVFUSE_OK;
    });
}

kvfuse_status kvfuse_scatter_rows(kvfuse_dtype dtype, const void* src, size_t src_row_stride, const int64_t* rows,
                                  size_t count, void* dst, size_t dst_rows, size_t dst_row_stride, size_t row_elements) {
    const int dtype_value = kvfuse::detail::enum_value(dtype);
    return kvfuse::detail::guarded("kvfuse_scatter_rows", [&] {
        if (const kvfuse_status s = check_rows(dtype_value, src, dst, rows, count, dst_rows, false, src_row_stride,
                                               dst_row_stride, row_elements);
            s != KVFUSE_OK)
            return s;
        const std::size_t elem = dtype_value == KVFUSE_DTYPE_F32 ? 4 : 2;
        for (std::size_t i = 0; i < count && row_elements > 0; ++i)
            std::memmove(static_cast<char*>(dst) + static_cast<std::size_t>(rows[i]) * dst_row_stride * elem,
                         static_cast<const char*>(src) + i * src_row_stride * elem, row_elements * elem);
        return KVFUSE_OK;
    });
}

}  // extern "C"
