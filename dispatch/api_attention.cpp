// C API of sparse-row attention and the row gather/scatter helpers.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>

#include "dispatch/api_checks.h"
#include "dispatch/context.h"
#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "dispatch/kernel_call.h"
#include "dispatch/struct_versions.h"
#include "kvfuse/kvfuse.h"

namespace {

using kvfuse::detail::check_aligned;
using kvfuse::detail::check_size;
using kvfuse::detail::check_span;
using kvfuse::detail::CheckedSize;
using kvfuse::detail::fail;

std::size_t or_default(std::size_t value, std::size_t fallback) { return value != 0 ? value : fallback; }

// A tensor of `count` items (rows, or the tokens of one K/V block) `item_stride` elements apart,
// each of `heads` heads `head_stride` apart holding head_dim contiguous elements, must not overlap
// itself: the smaller stride must hold what it steps over (one head, or one item) and the larger
// the whole extent of the smaller. Sets `extent` to the elements it spans (its overflow is
// checked by the caller, with the element size, once there are rows to run). The item stride of
// a single item is checked too (V1 did so for one row), except in K/V blocks of one token
// (`lone_item_free`), where it is never used.
kvfuse_status check_layout(const char* item_field, const char* item_count, const char* head_field, std::size_t count,
                           std::size_t item_stride, std::size_t heads, std::size_t head_stride, std::size_t head_dim,
                           bool lone_item_free, CheckedSize& extent) {
    count = count > 0 ? count : 1;
    if (heads > 1 && head_stride > item_stride) {  // head major: [heads, items, head_dim]
        const CheckedSize items_extent = CheckedSize(count - 1) * item_stride + head_dim;
        if (auto s = check_size(item_field, items_extent); s != KVFUSE_OK) return s;
        if (item_stride < head_dim)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, std::string(item_field) + " (" + std::to_string(item_stride) +
                                                           ") must be >= head_dim (" + std::to_string(head_dim) + ")");
        if (head_stride < items_extent.value())
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        std::string(head_field) + " (" + std::to_string(head_stride) + ") must be >= (" + item_count +
                            " - 1) * " + item_field + " + head_dim (" + std::to_string(items_extent.value()) +
                            ") when larger than " + item_field + " (heads must not overlap)");
    } else {  // token major: [items, heads, head_dim]
        const CheckedSize heads_extent = CheckedSize(heads - 1) * head_stride + head_dim;
        if (auto s = check_size(head_field, heads_extent); s != KVFUSE_OK) return s;
        if (heads > 1 && head_stride < head_dim)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, std::string(head_field) + " (" + std::to_string(head_stride) +
                                                           ") must be >= head_dim (" + std::to_string(head_dim) + ")");
        if (item_stride < heads_extent.value() && !(lone_item_free && count == 1))
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        std::string(item_field) + " (" + std::to_string(item_stride) + ") must be >= (heads - 1) * " +
                            head_field + " + head_dim (" + std::to_string(heads_extent.value()) + ")");
    }
    extent = CheckedSize(count - 1) * item_stride + CheckedSize(heads - 1) * head_stride + head_dim;
    return KVFUSE_OK;
}

// cu (sequences + 1 entries) starts at 0, never decreases and ends at `total`.
kvfuse_status check_cumulative(const char* what, const char* total_name, const std::int64_t* cu, std::size_t sequences,
                               std::size_t total) {
    if (cu[0] != 0)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, std::string(what) + "[0] = " + std::to_string(cu[0]) + " must be 0");
    for (std::size_t s = 0; s < sequences; ++s)
        if (cu[s + 1] < cu[s])
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        std::string(what) + "[" + std::to_string(s + 1) + "] = " + std::to_string(cu[s + 1]) + " < " +
                            what + "[" + std::to_string(s) + "] = " + std::to_string(cu[s]) + ": entries must not decrease");
    if (static_cast<std::uint64_t>(cu[sequences]) != total)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, std::string(what) + "[sequences] = " + std::to_string(cu[sequences]) +
                                                       " must equal " + total_name + " (" + std::to_string(total) + ")");
    return KVFUSE_OK;
}

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
    const bool paged = a->kv_block_table != nullptr;
    if (!paged && (a->kv_block_size != 0 || a->kv_block_stride != 0 || a->kv_blocks_total != 0 || a->kv_block_table_stride != 0))
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                    "kv_block_size, kv_block_stride, kv_blocks_total and kv_block_table_stride must be 0 without kv_block_table");
    if (paged && (a->kv_block_size == 0 || a->kv_blocks_total == 0))
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "kv_block_size and kv_blocks_total must be > 0 with kv_block_table");
    if (a->sequences == 0 && (a->cu_rows != nullptr || a->cu_kv_tokens != nullptr))
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "cu_rows and cu_kv_tokens must be NULL when sequences is 0");
    const std::size_t q_head = or_default(a->query_head_stride, a->head_dim);
    const std::size_t out_head = or_default(a->out_head_stride, a->head_dim);
    const std::size_t kv_head = or_default(a->kv_head_stride, a->head_dim);
    CheckedSize q_extent(0), out_extent(0), kv_extent(0);
    if (auto s = check_layout("query_row_stride", "rows", "query_head_stride", a->rows, a->query_row_stride, a->query_heads,
                              q_head, a->head_dim, false, q_extent);
        s != KVFUSE_OK)
        return s;
    if (auto s = check_layout("out_row_stride", "rows", "out_head_stride", a->rows, a->out_row_stride, a->query_heads,
                              out_head, a->head_dim, false, out_extent);
        s != KVFUSE_OK)
        return s;
    if (auto s = check_layout("kv_token_stride", paged ? "kv_block_size" : "kv_tokens", "kv_head_stride",
                              paged ? a->kv_block_size : a->kv_tokens, a->kv_token_stride, a->kv_heads, kv_head,
                              a->head_dim, paged, kv_extent);
        s != KVFUSE_OK)
        return s;
    const std::size_t lse_row = or_default(a->lse_row_stride, a->query_heads);
    if (lse_row < a->query_heads)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "lse_row_stride (" + std::to_string(lse_row) +
                                                       ") must be >= query_heads (" + std::to_string(a->query_heads) + ")");
    if (!(a->scale == a->scale)) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "scale is NaN");
    if (a->rows == 0) return KVFUSE_OK;
    if (a->queries == nullptr || a->positions == nullptr || a->keys == nullptr || a->values == nullptr || a->out == nullptr)
        return fail(KVFUSE_ERROR_NULL_POINTER, "queries, positions, keys, values and out are required");
    if (a->kv_tokens == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "kv_tokens must be > 0 when rows > 0");
    if (auto s = check_size("queries (rows x query_row_stride)", q_extent * sizeof(float)); s != KVFUSE_OK) return s;
    if (auto s = check_size("out (rows x out_row_stride)", out_extent * sizeof(float)); s != KVFUSE_OK) return s;
    if (auto s = check_span("positions (rows)", a->rows, 1, 1, sizeof(std::int64_t)); s != KVFUSE_OK) return s;
    if (a->lse != nullptr)
        if (auto s = check_span("lse (rows x lse_row_stride)", a->rows, lse_row, a->query_heads, sizeof(float)); s != KVFUSE_OK)
            return s;
    if (paged) {
        if (auto s = check_size("kv_block_size * kv_token_stride", CheckedSize(a->kv_block_size) * a->kv_token_stride * elem);
            s != KVFUSE_OK)
            return s;
        if (auto s = check_size("one K/V block", kv_extent * elem); s != KVFUSE_OK) return s;
        const std::size_t block_stride = or_default(a->kv_block_stride, a->kv_block_size * a->kv_token_stride);
        if (block_stride < kv_extent.value())
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "kv_block_stride (" + std::to_string(block_stride) +
                                                           ") must be >= the elements one block spans (" +
                                                           std::to_string(kv_extent.value()) + "): blocks must not overlap");
        kv_extent = CheckedSize(a->kv_blocks_total - 1) * block_stride + kv_extent;
    }
    if (auto s = check_size(paged ? "keys and values (kv_blocks_total x kv_block_stride)"
                                  : "keys and values (kv_tokens x kv_token_stride)",
                            kv_extent * elem);
        s != KVFUSE_OK)
        return s;
    const std::size_t sequences = a->sequences > 0 ? a->sequences : 1;
    if (a->sequences > 0) {
        if (a->cu_rows == nullptr || a->cu_kv_tokens == nullptr)
            return fail(KVFUSE_ERROR_NULL_POINTER, "cu_rows and cu_kv_tokens are required when sequences > 0");
        if (auto s = check_size("cu_rows and cu_kv_tokens (sequences + 1)", (CheckedSize(a->sequences) + 1) * sizeof(std::int64_t));
            s != KVFUSE_OK)
            return s;
    }
    for (const auto& [what, pointer, alignment] :
         {std::tuple<const char*, const void*, std::size_t>{"queries", a->queries, sizeof(float)},
          {"out", a->out, sizeof(float)},
          {"positions", a->positions, sizeof(std::int64_t)},
          {"keys", a->keys, elem},
          {"values", a->values, elem},
          {"lse", a->lse, sizeof(float)},
          {"kv_block_table", a->kv_block_table, sizeof(std::int32_t)},
          {"cu_rows", a->cu_rows, sizeof(std::int64_t)},
          {"cu_kv_tokens", a->cu_kv_tokens, sizeof(std::int64_t)}})
        if (auto s = check_aligned(what, pointer, alignment); s != KVFUSE_OK) return s;
    if (a->sequences > 0) {
        if (auto s = check_cumulative("cu_rows", "rows", a->cu_rows, a->sequences, a->rows); s != KVFUSE_OK) return s;
        if (auto s = check_cumulative("cu_kv_tokens", "kv_tokens", a->cu_kv_tokens, a->sequences, a->kv_tokens); s != KVFUSE_OK)
            return s;
    }
    // Each sequence's rows see keys [0, L) of that sequence.
    for (std::size_t seq = 0; seq < sequences; ++seq) {
        const std::size_t first = a->sequences > 0 ? static_cast<std::size_t>(a->cu_rows[seq]) : 0;
        const std::size_t end = a->sequences > 0 ? static_cast<std::size_t>(a->cu_rows[seq + 1]) : a->rows;
        const std::size_t keys = a->sequences > 0 ? static_cast<std::size_t>(a->cu_kv_tokens[seq + 1] - a->cu_kv_tokens[seq])
                                                  : a->kv_tokens;
        for (std::size_t r = first; r < end; ++r)
            if (a->positions[r] < 0 || static_cast<std::uint64_t>(a->positions[r]) >= keys)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                            "positions[" + std::to_string(r) + "] = " + std::to_string(a->positions[r]) + " is outside [0, " +
                                (a->sequences > 0 ? "the keys of its sequence " + std::to_string(seq) + " = " : "kv_tokens = ") +
                                std::to_string(keys) + ")");
    }
    if (paged) {
        // Every table entry the call may read: the first ceil(L / kv_block_size) of each sequence.
        std::size_t most_blocks = 0;
        for (std::size_t seq = 0; seq < sequences; ++seq) {
            const std::size_t keys = a->sequences > 0 ? static_cast<std::size_t>(a->cu_kv_tokens[seq + 1] - a->cu_kv_tokens[seq])
                                                      : a->kv_tokens;
            most_blocks = std::max(most_blocks, keys / a->kv_block_size + (keys % a->kv_block_size != 0));
        }
        if (sequences > 1 && a->kv_block_table_stride < most_blocks)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "kv_block_table_stride (" + std::to_string(a->kv_block_table_stride) +
                                                           ") must be >= the blocks of the longest sequence (" +
                                                           std::to_string(most_blocks) + ")");
        if (auto s = check_span("kv_block_table (sequences x kv_block_table_stride)", sequences, a->kv_block_table_stride,
                                most_blocks, sizeof(std::int32_t));
            s != KVFUSE_OK)
            return s;
        for (std::size_t seq = 0; seq < sequences; ++seq) {
            const std::size_t keys = a->sequences > 0 ? static_cast<std::size_t>(a->cu_kv_tokens[seq + 1] - a->cu_kv_tokens[seq])
                                                      : a->kv_tokens;
            const std::size_t blocks = keys / a->kv_block_size + (keys % a->kv_block_size != 0);
            for (std::size_t b = 0; b < blocks; ++b) {
                const std::int32_t block = a->kv_block_table[seq * a->kv_block_table_stride + b];
                if (block < 0 || static_cast<std::uint64_t>(block) >= a->kv_blocks_total)
                    return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                                "kv_block_table[" + std::to_string(seq * a->kv_block_table_stride + b) + "] (sequence " +
                                    std::to_string(seq) + ", block " + std::to_string(b) + ") = " + std::to_string(block) +
                                    " is outside [0, kv_blocks_total = " + std::to_string(a->kv_blocks_total) + ")");
            }
        }
    }
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
        return kvfuse::detail::with_kernels(context, [&](auto& call, const auto& kernels) {
            kernels.sparse_attention(call.context(), args);
            return KVFUSE_OK;
        });
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
