// C API of the RoPE kernel: argument checks, then one call through the kernel table.
#include <cstdint>
#include <string>

#include "dispatch/api_checks.h"
#include "dispatch/context.h"
#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "dispatch/kernel_call.h"
#include "dispatch/layout_checks.h"
#include "dispatch/struct_versions.h"
#include "kernels/rope/rope_plan.h"
#include "kvfuse/kvfuse.h"

namespace {

using kvfuse::detail::check_aligned;
using kvfuse::detail::check_span;
using kvfuse::detail::CheckedSize;
using kvfuse::detail::enum_value;
using kvfuse::detail::fail;
using kvfuse::detail::KeyLayout;

// The caller's configuration read with its version's defaults, checked. `what` names it in errors.
kvfuse_status read_config(const char* what, const kvfuse_rope_config* caller_config, kvfuse_rope_config& config) {
    kvfuse_rope_config_init(&config, 0);
    if (auto s = kvfuse::detail::read_struct(what, caller_config, config); s != KVFUSE_OK) return s;
    // The enums first, as ints: validate_rope_config compares them as enums.
    if (auto s = kvfuse::detail::check_enum("config->pairing", enum_value(config.pairing), 2,
                                            "KVFUSE_ROPE_NEOX (0) or KVFUSE_ROPE_INTERLEAVED (1)");
        s != KVFUSE_OK)
        return s;
    if (auto s = kvfuse::detail::check_enum("config->scaling", enum_value(config.scaling), 3,
                                            "KVFUSE_ROPE_SCALING_NONE (0), _LINEAR (1) or _LLAMA3 (2)");
        s != KVFUSE_OK)
        return s;
    std::string why;
    if (!kvfuse::detail::validate_rope_config(config, why)) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, why);
    return KVFUSE_OK;
}

// The kernel call, once everything is checked.
kvfuse_status run_rotation(kvfuse_context* context, const kvfuse_rope_config& config, kvfuse_dtype dtype,
                           kvfuse_dtype src_dtype, const void* src, const KeyLayout& src_layout, void* dst,
                           const KeyLayout& dst_layout, std::size_t tokens, std::size_t heads,
                           const std::int64_t* deltas, std::int64_t delta) {
    return kvfuse::detail::with_kernels(context, [&](auto& call, const auto& kernels) {
        const kvfuse::detail::RopePlan& plan = kvfuse::detail::rope_plan_for(config);
        kernels.rope_rotate(call.context(), plan, dtype, src_dtype, src, src_layout, dst, dst_layout, tokens, heads, deltas,
                            delta);
        return KVFUSE_OK;
    });
}

kvfuse_status rotate(kvfuse_context* context, const kvfuse_rope_config* caller_config, int dtype, const void* src, std::size_t src_stride, void* dst,
                     std::size_t dst_stride, std::size_t tokens, std::size_t heads, const std::int64_t* deltas,
                     std::int64_t delta, bool per_token) {
    kvfuse_rope_config defaults_then_caller;
    if (auto s = read_config("config", caller_config, defaults_then_caller); s != KVFUSE_OK) return s;
    const kvfuse_rope_config* config = &defaults_then_caller;
    if (auto s = kvfuse::detail::check_dtype("dtype", dtype); s != KVFUSE_OK) return s;
    if (heads == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "heads must be > 0");
    const std::size_t elem = dtype == KVFUSE_DTYPE_F32 ? 4 : 2;
    // One row's bytes must fit before the row size is used at all (heads = 2^61 + 1 once wrapped
    // to a small row here and passed every later check).
    const std::size_t head_dim = static_cast<std::size_t>(config->head_dim);
    if (auto s = kvfuse::detail::check_size("heads * head_dim", CheckedSize(heads) * head_dim * elem); s != KVFUSE_OK)
        return s;
    const std::size_t row = heads * head_dim;
    if (src_stride < row || dst_stride < row)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                    "token_stride (" + std::to_string(src_stride < row ? src_stride : dst_stride) +
                        ") must be >= heads * head_dim (" + std::to_string(row) + ")");
    if (tokens == 0) return KVFUSE_OK;
    if (src == nullptr || dst == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "keys are required");
    if (per_token && deltas == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "deltas are required");
    if (auto s = check_span("src keys (tokens x token_stride)", tokens, src_stride, row, elem); s != KVFUSE_OK) return s;
    if (auto s = check_span("dst keys (tokens x token_stride)", tokens, dst_stride, row, elem); s != KVFUSE_OK) return s;
    if (per_token)
        if (auto s = check_span("deltas (tokens)", tokens, 1, 1, sizeof(std::int64_t)); s != KVFUSE_OK) return s;
    const std::size_t src_bytes = kvfuse::detail::span_bytes(tokens, src_stride, row, elem).value();
    const std::size_t dst_bytes = kvfuse::detail::span_bytes(tokens, dst_stride, row, elem).value();
    if (auto s = check_aligned("keys", src, elem); s != KVFUSE_OK) return s;
    if (auto s = check_aligned("keys", dst, elem); s != KVFUSE_OK) return s;
    if (per_token)
        if (auto s = check_aligned("deltas", deltas, sizeof(std::int64_t)); s != KVFUSE_OK) return s;
    const auto* s = static_cast<const char*>(src);
    const auto* d = static_cast<const char*>(dst);
    if (s == d) {
        if (src_stride != dst_stride)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "in-place rotation needs equal strides");
    } else if (s < d + dst_bytes && d < s + src_bytes) {
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "src and dst overlap");
    }
    return run_rotation(context, *config, static_cast<kvfuse_dtype>(dtype), static_cast<kvfuse_dtype>(dtype), src, KeyLayout::packed(src_stride, head_dim),
                        dst, KeyLayout::packed(dst_stride, head_dim), tokens, heads, per_token ? deltas : nullptr, delta);
}

kvfuse::detail::LayoutFields dst_fields(const kvfuse_rope_args& a) {
    return {a.dst, a.dst_token_stride, a.dst_head_stride, a.dst_block_table, a.dst_block_size, a.dst_block_stride,
            a.dst_blocks_total, a.dst_token_offset};
}
kvfuse::detail::LayoutFields src_fields(const kvfuse_rope_args& a) {
    return {a.src, a.src_token_stride, a.src_head_stride, a.src_block_table, a.src_block_size, a.src_block_stride,
            a.src_blocks_total, a.src_token_offset};
}

// kvfuse_rope_rotate_layout: both sides resolved and checked (every block table entry the call
// reads), then the kernel.
kvfuse_status rotate_layout(kvfuse_context* context, const kvfuse_rope_args* caller_args) {
    kvfuse_rope_args a;
    kvfuse_rope_args_init(&a);
    if (auto s = kvfuse::detail::read_struct("args", caller_args, a); s != KVFUSE_OK) return s;
    kvfuse_rope_config config;
    if (auto s = read_config("args->config", a.config, config); s != KVFUSE_OK) return s;
    const int dtype = enum_value(a.dtype);
    if (auto s = kvfuse::detail::check_dtype("args->dtype", dtype); s != KVFUSE_OK) return s;
    if (a.heads == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "args->heads must be > 0");
    const std::size_t elem = kvfuse::detail::dtype_bytes(static_cast<kvfuse_dtype>(dtype));
    int src_dtype = dtype;
    if (a.convert != 0) {
        src_dtype = enum_value(a.src_dtype);
        if (auto s = kvfuse::detail::check_dtype("args->src_dtype", src_dtype); s != KVFUSE_OK) return s;
        if (a.src == nullptr && a.tokens != 0)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        "args->convert needs the copying form (src set): a rotation in place keeps its type");
    }
    const std::size_t src_elem = kvfuse::detail::dtype_bytes(static_cast<kvfuse_dtype>(src_dtype));
    const std::size_t head_dim = static_cast<std::size_t>(config.head_dim);
    if (a.tokens == 0) return KVFUSE_OK;
    if (a.dst == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "args->dst is required");
    KeyLayout dst_layout, src_layout;
    kvfuse::detail::LayoutExtent dst_extent, src_extent;
    if (auto s = kvfuse::detail::resolve_layout("dst_", SIZE_MAX, dst_fields(a), a.tokens, a.heads, head_dim, elem,
                                                dst_layout, dst_extent);
        s != KVFUSE_OK)
        return s;
    const void* src = a.src != nullptr ? a.src : a.dst;
    if (a.src == nullptr) {
        src_layout = dst_layout;
    } else {
        if (auto s = kvfuse::detail::resolve_layout("src_", SIZE_MAX, src_fields(a), a.tokens, a.heads, head_dim, src_elem,
                                                    src_layout, src_extent);
            s != KVFUSE_OK)
            return s;
        const auto* s = static_cast<const char*>(a.src);
        const auto* d = static_cast<const char*>(a.dst);
        const bool in_place = s == d && kvfuse::detail::same_layout(src_layout, dst_layout) && src_dtype == dtype;
        if (!in_place && s + src_extent.begin < d + dst_extent.end && d + dst_extent.begin < s + src_extent.end)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        "src and dst overlap (and are not the same keys in the same layout): copy between separate "
                        "memory, or rotate in place with src NULL");
    }
    if (a.deltas != nullptr) {
        if (auto s = check_span("args->deltas (tokens)", a.tokens, 1, 1, sizeof(std::int64_t)); s != KVFUSE_OK) return s;
        if (auto s = check_aligned("args->deltas", a.deltas, sizeof(std::int64_t)); s != KVFUSE_OK) return s;
    }
    return run_rotation(context, config, static_cast<kvfuse_dtype>(dtype), static_cast<kvfuse_dtype>(src_dtype), src,
                        src_layout, a.dst, dst_layout, a.tokens, a.heads, a.deltas, a.delta);
}

}  // namespace

extern "C" {

kvfuse_status kvfuse_ctx_rope_rotate(kvfuse_context* context, const kvfuse_rope_config* config, kvfuse_dtype dtype,
                                     void* keys, size_t tokens, size_t heads, size_t token_stride,
                                     const int64_t* deltas) {
    const int dtype_value = enum_value(dtype);
    return kvfuse::detail::guarded("kvfuse_rope_rotate", [&] {
        return rotate(context, config, dtype_value, keys, token_stride, keys, token_stride, tokens, heads, deltas, 0,
                      true);
    });
}

kvfuse_status kvfuse_ctx_rope_rotate_span(kvfuse_context* context, const kvfuse_rope_config* config,
                                          kvfuse_dtype dtype, void* keys, size_t tokens, size_t heads,
                                          size_t token_stride, int64_t delta) {
    const int dtype_value = enum_value(dtype);
    return kvfuse::detail::guarded("kvfuse_rope_rotate_span", [&] {
        return rotate(context, config, dtype_value, keys, token_stride, keys, token_stride, tokens, heads, nullptr,
                      delta, false);
    });
}

kvfuse_status kvfuse_ctx_rope_rotate_copy(kvfuse_context* context, const kvfuse_rope_config* config,
                                          kvfuse_dtype dtype, const void* src, size_t src_token_stride, void* dst,
                                          size_t dst_token_stride, size_t tokens, size_t heads,
                                          const int64_t* deltas) {
    const int dtype_value = enum_value(dtype);
    return kvfuse::detail::guarded("kvfuse_rope_rotate_copy", [&] {
        return rotate(context, config, dtype_value, src, src_token_stride, dst, dst_token_stride, tokens, heads,
                      deltas, 0, true);
    });
}

kvfuse_status kvfuse_ctx_rope_rotate_span_copy(kvfuse_context* context, const kvfuse_rope_config* config,
                                               kvfuse_dtype dtype, const void* src, size_t src_token_stride,
                                               void* dst, size_t dst_token_stride, size_t tokens, size_t heads,
                                               int64_t delta) {
    const int dtype_value = enum_value(dtype);
    return kvfuse::detail::guarded("kvfuse_rope_rotate_span_copy", [&] {
        return rotate(context, config, dtype_value, src, src_token_stride, dst, dst_token_stride, tokens, heads,
                      nullptr, delta, false);
    });
}

kvfuse_status kvfuse_ctx_rope_rotate_layout(kvfuse_context* context, const kvfuse_rope_args* args) {
    return kvfuse::detail::guarded("kvfuse_rope_rotate_layout", [&] { return rotate_layout(context, args); });
}

kvfuse_status kvfuse_rope_rotate_layout(const kvfuse_rope_args* args) {
    return kvfuse_ctx_rope_rotate_layout(nullptr, args);
}

kvfuse_status kvfuse_rope_rotate(const kvfuse_rope_config* config, kvfuse_dtype dtype, void* keys,
                                 size_t tokens, size_t heads, size_t token_stride,
                                 const int64_t* deltas) {
    return kvfuse_ctx_rope_rotate(nullptr, config, dtype, keys, tokens, heads, token_stride, deltas);
}

kvfuse_status kvfuse_rope_rotate_span(const kvfuse_rope_config* config, kvfuse_dtype dtype,
                                      void* keys, size_t tokens, size_t heads,
                                      size_t token_stride, int64_t delta) {
    return kvfuse_ctx_rope_rotate_span(nullptr, config, dtype, keys, tokens, heads, token_stride, delta);
}

kvfuse_status kvfuse_rope_rotate_copy(const kvfuse_rope_config* config, kvfuse_dtype dtype,
                                      const void* src, size_t src_token_stride, void* dst,
                                      size_t dst_token_stride, size_t tokens, size_t heads,
                                      const int64_t* deltas) {
    return kvfuse_ctx_rope_rotate_copy(nullptr, config, dtype, src, src_token_stride, dst, dst_token_stride, tokens,
                                       heads, deltas);
}

kvfuse_status kvfuse_rope_rotate_span_copy(const kvfuse_rope_config* config, kvfuse_dtype dtype,
                                           const void* src, size_t src_token_stride, void* dst,
                                           size_t dst_token_stride, size_t tokens, size_t heads,
                                           int64_t delta) {
    return kvfuse_ctx_rope_rotate_span_copy(nullptr, config, dtype, src, src_token_stride, dst, dst_token_stride,
                                            tokens, heads, delta);
}

}  // extern "C"
