// C API of the RoPE kernel: argument checks, then one call through the kernel table.
#include <cstdint>
#include <limits>
#include <new>
#include <string>

#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "kernels/rope/rope_plan.h"
#include "kvfuse/kvfuse.h"

namespace {

using kvfuse::detail::fail;

std::size_t element_size(kvfuse_dtype dtype) { return dtype == KVFUSE_DTYPE_F32 ? 4 : 2; }

// Bytes spanned by `tokens` rows, or 0 on overflow.
std::size_t span_bytes(std::size_t tokens, std::size_t stride, std::size_t row, std::size_t elem) {
    const std::size_t max = std::numeric_limits<std::size_t>::max();
    if (tokens > 1 && stride > (max / elem - row) / (tokens - 1)) return 0;
    return ((tokens - 1) * stride + row) * elem;
}

kvfuse_status rotate(const kvfuse_rope_config* config, kvfuse_dtype dtype, const void* src,
                     std::size_t src_stride, void* dst, std::size_t dst_stride, std::size_t tokens,
                     std::size_t heads, const std::int64_t* deltas, std::int64_t delta,
                     bool per_token) {
    if (config == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "config is required");
    std::string why;
    if (!kvfuse::detail::validate_rope_config(*config, why))
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, why);
    if (dtype != KVFUSE_DTYPE_F32 && dtype != KVFUSE_DTYPE_BF16)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "dtype " + std::to_string(static_cast<int>(dtype)) + " is not f32 or bf16");
    if (heads == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "heads must be > 0");
    const std::size_t row = heads * static_cast<std::size_t>(config->head_dim);
    if (row / heads != static_cast<std::size_t>(config->head_dim))
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "heads * head_dim overflows");
    if (src_stride < row || dst_stride < row)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                    "token_stride (" + std::to_string(src_stride < row ? src_stride : dst_stride) +
                        ") must be >= heads * head_dim (" + std::to_string(row) + ")");
    if (tokens == 0) return KVFUSE_OK;
    if (src == nullptr || dst == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "keys are required");
    if (per_token && deltas == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "deltas are required");
    const std::size_t elem = element_size(dtype);
    const std::size_t src_bytes = span_bytes(tokens, src_stride, row, elem);
    const std::size_t dst_bytes = span_bytes(tokens, dst_stride, row, elem);
    if (src_bytes == 0 || dst_bytes == 0)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "tokens * token_stride overflows");
    if (reinterpret_cast<std::uintptr_t>(src) % elem != 0 || reinterpret_cast<std::uintptr_t>(dst) % elem != 0)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "keys must be aligned to their element size");
    const auto* s = static_cast<const char*>(src);
    const auto* d = static_cast<const char*>(dst);
    if (s == d) {
        if (src_stride != dst_stride)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "in-place rotation needs equal strides");
    } else if (s < d + dst_bytes && d < s + src_bytes) {
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "src and dst overlap");
    }
    const kvfuse::detail::KernelTable* kernels = nullptr;
    if (const kvfuse_status status = kvfuse::detail::active_kernels(kernels); status != KVFUSE_OK)
        return status;
    try {
        const kvfuse::detail::RopePlan& plan = kvfuse::detail::rope_plan_for(*config);
        kernels->rope_rotate(plan, dtype, src, src_stride, dst, dst_stride, tokens, heads,
                             per_token ? deltas : nullptr, delta);
    } catch (const std::bad_alloc&) {
        return fail(KVFUSE_ERROR_OUT_OF_MEMORY, "rope tables");
    }
    return KVFUSE_OK;
}

}  // namespace

extern "C" {

void kvfuse_rope_config_init(kvfuse_rope_config* config, int32_t head_dim) {
    if (config == nullptr) return;
    config->head_dim = head_dim;
    config->rotary_dims = 0;
    config->base = 10000.0;
    config->pairing = KVFUSE_ROPE_NEOX;
    config->scaling = KVFUSE_ROPE_SCALING_NONE;
    config->scaling_factor = 1.0;
    config->llama3_low_freq_factor = 1.0;
    config->llama3_high_freq_factor = 4.0;
    config->llama3_original_context = 8192;
}

kvfuse_status kvfuse_rope_rotate(const kvfuse_rope_config* config, kvfuse_dtype dtype, void* keys,
                                 size_t tokens, size_t heads, size_t token_stride,
                                 const int64_t* deltas) {
    return rotate(config, dtype, keys, token_stride, keys, token_stride, tokens, heads, deltas, 0, true);
}

kvfuse_status kvfuse_rope_rotate_span(const kvfuse_rope_config* config, kvfuse_dtype dtype,
                                      void* keys, size_t tokens, size_t heads,
                                      size_t token_stride, int64_t delta) {
    return rotate(config, dtype, keys, token_stride, keys, token_stride, tokens, heads, nullptr, delta, false);
}

kvfuse_status kvfuse_rope_rotate_copy(const kvfuse_rope_config* config, kvfuse_dtype dtype,
                                      const void* src, size_t src_token_stride, void* dst,
                                      size_t dst_token_stride, size_t tokens, size_t heads,
                                      const int64_t* deltas) {
    return rotate(config, dtype, src, src_token_stride, dst, dst_token_stride, tokens, heads, deltas, 0, true);
}

kvfuse_status kvfuse_rope_rotate_span_copy(const kvfuse_rope_config* config, kvfuse_dtype dtype,
                                           const void* src, size_t src_token_stride, void* dst,
                                           size_t dst_token_stride, size_t tokens, size_t heads,
                                           int64_t delta) {
    return rotate(config, dtype, src, src_token_stride, dst, dst_token_stride, tokens, heads, nullptr, delta, false);
}

}  // extern "C"
