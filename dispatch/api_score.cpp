// C API of quantized scoring: the int8/int4 quantizers and the A3 relevance, each through the
// kernel table.
#include <cstring>
#include <limits>
#include <new>
#include <string>

#include "dispatch/api_checks.h"
#include "dispatch/api_internal.h"
#include "dispatch/context.h"
#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "dispatch/kernel_call.h"
#include "dispatch/layout_checks.h"
#include "dispatch/struct_versions.h"
#include "kernels/common/relevance_segments.h"
#include "kvfuse/kvfuse.h"

namespace {

using kvfuse::detail::fail;

using kvfuse::detail::check_aligned;
using kvfuse::detail::check_size;
using kvfuse::detail::check_span;
using kvfuse::detail::CheckedSize;

// Input rows x stride elements of elem_bytes with heads x head_dim used per row, `out_head_bytes`
// bytes of output per head and `heads` scales per row.
kvfuse_status check_shape(std::size_t rows, std::size_t heads, std::size_t head_dim, std::size_t stride,
                          std::size_t out_head_bytes, std::size_t elem_bytes = sizeof(float)) {
    if (heads == 0 || head_dim == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "heads and head_dim must be > 0");
    if (auto s = check_size("heads * head_dim", CheckedSize(heads) * head_dim * sizeof(float)); s != KVFUSE_OK) return s;
    if (stride < heads * head_dim) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "stride must be >= heads * head_dim");
    if (auto s = check_span("the input (rows x stride)", rows, stride, heads * head_dim, elem_bytes); s != KVFUSE_OK) return s;
    if (auto s = check_size("the output (rows x heads x head_dim)", CheckedSize(rows) * heads * out_head_bytes); s != KVFUSE_OK)
        return s;
    return check_size("the scales (rows x heads)", CheckedSize(rows) * heads * sizeof(float));
}

kvfuse_status check_float_pointers(std::initializer_list<std::pair<const char*, const void*>> pointers) {
    for (const auto& [what, pointer] : pointers)
        if (auto s = check_aligned(what, pointer, sizeof(float)); s != KVFUSE_OK) return s;
    return KVFUSE_OK;
}

// The kernel of both key quantizers on keys where `layout` puts them, arguments checked.
kvfuse_status run_quantize_keys(kvfuse_context* context, kvfuse_dtype dtype, const void* keys, std::size_t tokens,
                                std::size_t kv_heads, std::size_t head_dim, const kvfuse::detail::KeyLayout& layout,
                                int bits, void* out, float* scales, float* means) {
    return kvfuse::detail::with_kernels(context, [&](auto& call, const auto& kernels) {
        kernels.quantize_keys(call.context(), dtype, keys, tokens, kv_heads, head_dim, layout, bits, out, scales, means);
        return KVFUSE_OK;
    });
}

// Both key quantizers, any input type, through the kernel table on `context` (NULL: the calling
// thread's default context). `name` is the entry point's, for errors.
kvfuse_status quantize_keys(const char* name, kvfuse_context* context, int dtype, const void* keys, std::size_t tokens, std::size_t kv_heads,
                            std::size_t head_dim, std::size_t token_stride, int bits, void* out, float* scales,
                            float* means) {
    return kvfuse::detail::guarded(name, [&] {
        if (auto s = kvfuse::detail::check_dtype("dtype", dtype); s != KVFUSE_OK) return s;
        const std::size_t elem = kvfuse::detail::dtype_bytes(static_cast<kvfuse_dtype>(dtype));
        if (const kvfuse_status s =
                check_shape(tokens, kv_heads, head_dim, token_stride, bits == 8 ? head_dim : (head_dim + 1) / 2, elem);
            s != KVFUSE_OK)
            return s;
        if (tokens == 0) return KVFUSE_OK;
        if (keys == nullptr || out == nullptr || scales == nullptr || means == nullptr)
            return fail(KVFUSE_ERROR_NULL_POINTER, "keys, out, scales and means are required");
        if (auto s = check_aligned("keys", keys, elem); s != KVFUSE_OK) return s;
        if (auto s = check_float_pointers({{"scales", scales}, {"means", means}}); s != KVFUSE_OK) return s;
        return run_quantize_keys(context, static_cast<kvfuse_dtype>(dtype), keys, tokens, kv_heads, head_dim,
                                 kvfuse::detail::KeyLayout::packed(token_stride, head_dim), bits, out, scales, means);
    });
}

kvfuse_status quantize_rows(const char* name, kvfuse_context* context, int dtype, const void* x, std::size_t rows, std::size_t heads,
                            std::size_t head_dim, std::size_t row_stride, std::int8_t* out, float* scales) {
    return kvfuse::detail::guarded(name, [&] {
        if (auto s = kvfuse::detail::check_dtype("dtype", dtype); s != KVFUSE_OK) return s;
        const std::size_t elem = kvfuse::detail::dtype_bytes(static_cast<kvfuse_dtype>(dtype));
        if (const kvfuse_status s = check_shape(rows, heads, head_dim, row_stride, head_dim, elem); s != KVFUSE_OK) return s;
        if (rows == 0) return KVFUSE_OK;
        if (x == nullptr || out == nullptr || scales == nullptr)
            return fail(KVFUSE_ERROR_NULL_POINTER, "x, out and scales are required");
        if (auto s = check_aligned("x", x, elem); s != KVFUSE_OK) return s;
        if (auto s = check_float_pointers({{"scales", scales}}); s != KVFUSE_OK) return s;
        return kvfuse::detail::with_kernels(context, [&](auto& call, const auto& kernels) {
            kernels.quantize_rows(call.context(), static_cast<kvfuse_dtype>(dtype), x, rows, heads, head_dim, row_stride,
                                  out, scales);
            return KVFUSE_OK;
        });
    });
}

}  // namespace

namespace kvfuse::detail {

kvfuse_status quantize_keys_in_layout(kvfuse_context& context, kvfuse_dtype dtype, const void* keys, std::size_t tokens,
                                      std::size_t kv_heads, std::size_t head_dim, const KeyLayout& layout, int bits,
                                      void* out, float* scales, float* means) {
    return guarded(bits == 8 ? "kvfuse_quantize_keys_i8" : "kvfuse_quantize_keys_i4", [&] {
        if (tokens == 0) return KVFUSE_OK;
        return run_quantize_keys(&context, dtype, keys, tokens, kv_heads, head_dim, layout, bits, out, scales, means);
    });
}

}  // namespace kvfuse::detail

extern "C" {

kvfuse_status kvfuse_ctx_quantize_keys_i8(kvfuse_context* context, const float* keys, size_t tokens, size_t kv_heads,
                                          size_t head_dim, size_t token_stride, int8_t* out, float* scales, float* means) {
    return quantize_keys("kvfuse_quantize_keys_i8", context, KVFUSE_DTYPE_F32, keys, tokens, kv_heads, head_dim,
                         token_stride, 8, out, scales, means);
}

kvfuse_status kvfuse_ctx_quantize_keys_i4(kvfuse_context* context, const float* keys, size_t tokens, size_t kv_heads,
                                          size_t head_dim, size_t token_stride, uint8_t* out, float* scales, float* means) {
    return quantize_keys("kvfuse_quantize_keys_i4", context, KVFUSE_DTYPE_F32, keys, tokens, kv_heads, head_dim,
                         token_stride, 4, out, scales, means);
}

kvfuse_status kvfuse_ctx_quantize_rows_i8(kvfuse_context* context, const float* x, size_t rows, size_t heads,
                                          size_t head_dim, size_t row_stride, int8_t* out, float* scales) {
    return quantize_rows("kvfuse_quantize_rows_i8", context, KVFUSE_DTYPE_F32, x, rows, heads, head_dim, row_stride, out,
                         scales);
}

kvfuse_status kvfuse_ctx_quantize_keys_i8_typed(kvfuse_context* context, kvfuse_dtype dtype, const void* keys,
                                                size_t tokens, size_t kv_heads, size_t head_dim, size_t token_stride,
                                                int8_t* out, float* scales, float* means) {
    return quantize_keys("kvfuse_quantize_keys_i8_typed", context, kvfuse::detail::enum_value(dtype), keys, tokens,
                         kv_heads, head_dim, token_stride, 8, out, scales, means);
}

kvfuse_status kvfuse_ctx_quantize_keys_i4_typed(kvfuse_context* context, kvfuse_dtype dtype, const void* keys,
                                                size_t tokens, size_t kv_heads, size_t head_dim, size_t token_stride,
                                                uint8_t* out, float* scales, float* means) {
    return quantize_keys("kvfuse_quantize_keys_i4_typed", context, kvfuse::detail::enum_value(dtype), keys, tokens,
                         kv_heads, head_dim, token_stride, 4, out, scales, means);
}

kvfuse_status kvfuse_ctx_quantize_rows_i8_typed(kvfuse_context* context, kvfuse_dtype dtype, const void* x, size_t rows,
                                                size_t heads, size_t head_dim, size_t row_stride, int8_t* out,
                                                float* scales) {
    return quantize_rows("kvfuse_quantize_rows_i8_typed", context, kvfuse::detail::enum_value(dtype), x, rows, heads,
                         head_dim, row_stride, out, scales);
}

kvfuse_status kvfuse_quantize_keys_i8(const float* keys, size_t tokens, size_t kv_heads, size_t head_dim, size_t token_stride,
                                      int8_t* out, float* scales, float* means) {
    return kvfuse_ctx_quantize_keys_i8(nullptr, keys, tokens, kv_heads, head_dim, token_stride, out, scales, means);
}

kvfuse_status kvfuse_quantize_keys_i4(const float* keys, size_t tokens, size_t kv_heads, size_t head_dim, size_t token_stride,
                                      uint8_t* out, float* scales, float* means) {
    return kvfuse_ctx_quantize_keys_i4(nullptr, keys, tokens, kv_heads, head_dim, token_stride, out, scales, means);
}

kvfuse_status kvfuse_quantize_rows_i8(const float* x, size_t rows, size_t heads, size_t head_dim, size_t row_stride,
                                      int8_t* out, float* scales) {
    return kvfuse_ctx_quantize_rows_i8(nullptr, x, rows, heads, head_dim, row_stride, out, scales);
}

kvfuse_status kvfuse_quantize_keys_i8_typed(kvfuse_dtype dtype, const void* keys, size_t tokens, size_t kv_heads,
                                            size_t head_dim, size_t token_stride, int8_t* out, float* scales,
                                            float* means) {
    return kvfuse_ctx_quantize_keys_i8_typed(nullptr, dtype, keys, tokens, kv_heads, head_dim, token_stride, out, scales,
                                             means);
}

kvfuse_status kvfuse_quantize_keys_i4_typed(kvfuse_dtype dtype, const void* keys, size_t tokens, size_t kv_heads,
                                            size_t head_dim, size_t token_stride, uint8_t* out, float* scales,
                                            float* means) {
    return kvfuse_ctx_quantize_keys_i4_typed(nullptr, dtype, keys, tokens, kv_heads, head_dim, token_stride, out, scales,
                                             means);
}

kvfuse_status kvfuse_quantize_rows_i8_typed(kvfuse_dtype dtype, const void* x, size_t rows, size_t heads, size_t head_dim,
                                            size_t row_stride, int8_t* out, float* scales) {
    return kvfuse_ctx_quantize_rows_i8_typed(nullptr, dtype, x, rows, heads, head_dim, row_stride, out, scales);
}

kvfuse_status kvfuse_relevance_dot_schemes(const char** int8_keys, const char** int4_keys) {
    return kvfuse::detail::guarded("kvfuse_relevance_dot_schemes", [&] {
        const kvfuse::detail::KernelTable* kernels = nullptr;
        if (const kvfuse_status s = kvfuse::detail::active_kernels(kernels); s != KVFUSE_OK) return s;
        if (int8_keys != nullptr) *int8_keys = kernels->int8_dot;
        if (int4_keys != nullptr) *int4_keys = kernels->int4_dot;
        return KVFUSE_OK;
    });
}

}  // extern "C"

namespace {

kvfuse_status check_relevance(const kvfuse_relevance_args* a) {
    if (a == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "args is required");
    if (a->question_rows == 0 || a->candidates < a->question_rows)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "need 0 < question_rows <= candidates");
    if (a->kv_heads == 0 || a->query_heads == 0 || a->query_heads % a->kv_heads != 0 || a->head_dim == 0)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "query_heads must be a positive multiple of kv_heads, head_dim > 0");
    if (auto s = check_size("the keys (candidates x kv_heads x head_dim)",
                            CheckedSize(a->candidates) * a->kv_heads * a->head_dim * sizeof(float));
        s != KVFUSE_OK)
        return s;
    if (auto s = check_size("the queries (question_rows x query_heads x head_dim)",
                            CheckedSize(a->question_rows) * a->query_heads * a->head_dim * sizeof(float));
        s != KVFUSE_OK)
        return s;
    // The kernels keep one logit per (question row, candidate), the candidates padded to a tile.
    if (auto s = check_size("the logits (question_rows x candidates)",
                            CheckedSize(a->question_rows) * (CheckedSize(a->candidates) + 256) * sizeof(float));
        s != KVFUSE_OK)
        return s;
    if (a->candidates == a->question_rows) return KVFUSE_OK;  // no document key: nothing to score
    if (a->out == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "out is required");
    const bool top_layout = a->key_token_stride != 0 || a->key_head_stride != 0 || a->key_block_table != nullptr ||
                            a->key_block_size != 0 || a->key_block_stride != 0 || a->key_blocks_total != 0 ||
                            a->key_token_offset != 0;
    if (a->segment_count > 0) {
        if (a->keys != nullptr)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        "keys (with keys_dtype) cannot be combined with segments: give each segment its typed_keys");
        if (top_layout)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        "the key_* layout fields describe the top-level keys: with segments, set each segment's own");
        if (a->segments == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "segment_count > 0 needs segments");
        if (auto s = check_aligned("segments", a->segments, alignof(kvfuse_relevance_segment)); s != KVFUSE_OK) return s;
        // The array is stepped through by its elements' struct_size: the first's, a known version,
        // and every other the same.
        if (auto s = kvfuse::detail::check_struct_size("segments[0]", &a->segments[0]); s != KVFUSE_OK) return s;
        const std::size_t element = kvfuse::detail::struct_size_of(&a->segments[0]);
        if (auto s = check_span("segments (segment_count)", a->segment_count, element, element, 1); s != KVFUSE_OK) return s;
        std::size_t total = 0;
        for (std::size_t i = 0; i < a->segment_count; ++i) {
            std::size_t size;
            std::memcpy(&size, reinterpret_cast<const char*>(a->segments) + i * element, sizeof size);
            if (size != element)
                return fail(KVFUSE_ERROR_STRUCT_SIZE, "segments[" + std::to_string(i) + "]->struct_size (" + std::to_string(size) +
                                                          ") differs from segments[0]'s (" + std::to_string(element) +
                                                          "): every element of the array must be the same version");
            const std::size_t keys = kvfuse::detail::relevance_segment_at(a->segments, i).keys;
            if (keys > a->candidates - total)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "the segments hold more keys than there are candidates");
            total += keys;
        }
        if (total != a->candidates) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "the segments' keys must add up to candidates");
    } else if (a->keys != nullptr) {  // keys of keys_dtype, the f32 path
        if (a->keys_f32 != nullptr || a->keys_i8 != nullptr || a->keys_i4 != nullptr)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "give keys (with keys_dtype) or keys_f32, keys_i8, keys_i4: one of them");
        if (a->queries_f32 == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "keys (with keys_dtype) need queries_f32");
    }
    // Every segment (or the top-level fields as one) on one path, with what that path reads, in
    // its layout. Read in place (no copy: a call with a context allocates nothing); empty
    // segments are skipped as the kernels skip them.
    const std::size_t listed = a->segment_count == 0 ? 1 : a->segment_count;
    auto segment = [&](std::size_t i) {
        return a->segment_count == 0 ? kvfuse::detail::top_level_segment(*a) : kvfuse::detail::relevance_segment_at(a->segments, i);
    };
    std::size_t first_index = 0;
    while (segment(first_index).keys == 0) ++first_index;  // the keys add up to candidates > 0
    const kvfuse_relevance_segment first = segment(first_index);
    const bool int4 = first.keys_i4 != nullptr, int8 = first.keys_i8 != nullptr;
    const std::size_t index_in_errors = a->segment_count == 0 ? SIZE_MAX : 0;
    for (std::size_t i = first_index; i < listed; ++i) {
        const kvfuse_relevance_segment g = segment(i);
        if (g.keys == 0) continue;
        if (g.keys_i8 != nullptr && g.keys_i4 != nullptr)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "give keys_i8 or keys_i4, not both");
        if ((g.keys_i4 != nullptr) != int4 || (g.keys_i8 != nullptr) != int8)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "every segment must use the same path (f32, int8 or int4)");
        std::size_t element = 1;
        const void* keys = int4 ? static_cast<const void*>(g.keys_i4) : static_cast<const void*>(g.keys_i8);
        if (int4 || int8) {
            if (g.queries_i8 == nullptr || g.query_scales == nullptr || g.key_scales == nullptr)
                return fail(KVFUSE_ERROR_NULL_POINTER, "the int8 and int4 paths need queries_i8, query_scales and key_scales");
        } else {
            if (g.keys_f32 != nullptr && g.typed_keys != nullptr)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "segments[" + std::to_string(i) + "]: give keys_f32 or typed_keys, not both");
            if ((g.keys_f32 == nullptr && g.typed_keys == nullptr) || g.queries_f32 == nullptr)
                return fail(KVFUSE_ERROR_NULL_POINTER,
                            "give keys_i8 (int8 path), keys_i4 (int4 path) or keys_f32 / keys (typed) and queries_f32 (f32 path)");
            if (g.typed_keys != nullptr) {
                if (auto s = kvfuse::detail::check_dtype(a->segment_count == 0 ? "keys_dtype" : "segments[].keys_dtype",
                                                         kvfuse::detail::enum_value(g.keys_dtype));
                    s != KVFUSE_OK)
                    return s;
                element = kvfuse::detail::dtype_bytes(g.keys_dtype);
                keys = g.typed_keys;
            } else {
                element = sizeof(float);
                keys = g.keys_f32;
            }
        }
        if (auto s = check_float_pointers({{"queries_f32", g.queries_f32},
                                           {"query_scales", g.query_scales},
                                           {"key_scales", g.key_scales},
                                           {"bias", g.bias}});
            s != KVFUSE_OK)
            return s;
        const kvfuse::detail::LayoutFields fields{keys,
                                                  g.key_token_stride,
                                                  g.key_head_stride,
                                                  g.key_block_table,
                                                  g.key_block_size,
                                                  g.key_block_stride,
                                                  g.key_blocks_total,
                                                  g.key_token_offset};
        kvfuse::detail::KeyLayout layout;
        kvfuse::detail::LayoutExtent extent;
        if (auto s = kvfuse::detail::resolve_layout("key_", index_in_errors == SIZE_MAX ? SIZE_MAX : i, fields, g.keys,
                                                    a->kv_heads, int4 ? (a->head_dim + 1) / 2 : a->head_dim, element,
                                                    layout, extent);
            s != KVFUSE_OK)
            return s;
    }
    return check_float_pointers({{"out", a->out}});
}

}  // namespace

extern "C" {

kvfuse_status kvfuse_ctx_a3_relevance(kvfuse_context* context, const kvfuse_relevance_args* caller_args) {
    return kvfuse::detail::guarded("kvfuse_a3_relevance", [&] {
        kvfuse_relevance_args args;  // the defaults, then as many fields as the caller's version has
        kvfuse_relevance_args_init(&args);
        if (auto s = kvfuse::detail::read_struct("args", caller_args, args); s != KVFUSE_OK) return s;
        const kvfuse_relevance_args* a = &args;
        if (const kvfuse_status s = check_relevance(a); s != KVFUSE_OK || a->candidates == a->question_rows) return s;
        return kvfuse::detail::with_kernels(context, [&](auto& call, const auto& kernels) {
            kernels.relevance(call.context(), *a);
            return KVFUSE_OK;
        });
    });
}

kvfuse_status kvfuse_a3_relevance(const kvfuse_relevance_args* a) { return kvfuse_ctx_a3_relevance(nullptr, a); }

}  // extern "C"
