// C API of the dense-layer product: packed-weight handles and kvfuse_gemm.
#include <cstdint>
#include <limits>
#include <new>
#include <string>

#include "dispatch/api_checks.h"
#include "dispatch/context.h"
#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "dispatch/kernel_call.h"
#include "dispatch/struct_versions.h"
#include "kernels/call_context.h"
#include "kernels/gemm/gemm_packed.h"
#include "kvfuse/kvfuse.h"

namespace {

using kvfuse::detail::check_aligned;
using kvfuse::detail::check_weight_dtype;
using kvfuse::detail::enum_value;
using kvfuse::detail::fail;
using kvfuse::detail::guarded;

// The kernels index with size_t and OpenMP loops with ptrdiff_t: keep every extent well inside.
constexpr std::size_t kMaxExtent = std::size_t{1} << 40;

// kvfuse_gemm and kvfuse_ctx_gemm: `threads` > 0 asks for that many workers (kvfuse_gemm's
// argument), 0 takes the context's count.
kvfuse_status gemm_on_context(const char* name, kvfuse_context* context, const kvfuse_packed_weights* weights,
                              const float* a, size_t n, size_t lda, float beta, float* c, size_t ldc, int threads) {
    return guarded(name, [&]() -> kvfuse_status {
        if (weights == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "weights (a packed handle) is required");
        const kvfuse::detail::PackedWeightsData& w = weights->weights;
        if (threads < 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "threads must be >= 0 (0: the OpenMP default)");
        if (lda < w.in)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        "lda (" + std::to_string(lda) + ") must be >= in (" + std::to_string(w.in) + ")");
        if (ldc < w.out)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        "ldc (" + std::to_string(ldc) + ") must be >= out (" + std::to_string(w.out) + ")");
        if (n == 0) return KVFUSE_OK;
        if (a == nullptr || c == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "a and c are required");
        if (auto s = check_aligned("a", a, alignof(float)); s != KVFUSE_OK) return s;
        if (auto s = check_aligned("c", c, alignof(float)); s != KVFUSE_OK) return s;
        if (n > kMaxExtent || lda > kMaxExtent || ldc > kMaxExtent || n - 1 > kMaxExtent / lda || n - 1 > kMaxExtent / ldc)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "n * lda or n * ldc is too large");
        // Overlap would make the result depend on the blocking order.
        const auto a_begin = reinterpret_cast<std::uintptr_t>(a), c_begin = reinterpret_cast<std::uintptr_t>(c);
        const std::uintptr_t a_end = a_begin + ((n - 1) * lda + w.in) * sizeof(float);
        const std::uintptr_t c_end = c_begin + ((n - 1) * ldc + w.out) * sizeof(float);
        if (a_begin < c_end && c_begin < a_end) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "c must not overlap a");
        return kvfuse::detail::with_kernels(context, [&](auto& call, const auto& kernels) {
            const std::size_t workers =
                kvfuse::detail::gemm_workers(n, w.out, w.in, threads, kvfuse::detail::context_workers(call.context()));
            try {
                (w.quantized() ? kernels.qgemm : kernels.gemm)(call.context(), *weights, a, n, lda, beta, c, ldc, workers);
            } catch (const std::bad_alloc&) {
                return fail(KVFUSE_ERROR_OUT_OF_MEMORY, "gemm's packed activations");
            }
            return KVFUSE_OK;
        });
    });
}

}  // namespace

extern "C" {

kvfuse_status kvfuse_pack_weights(kvfuse_dtype src_dtype, const void* weights, size_t out, size_t in,
                                  size_t row_stride, kvfuse_dtype packed_dtype, kvfuse_packed_weights** packed) {
    return guarded("kvfuse_pack_weights", [&]() -> kvfuse_status {
        if (packed == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "packed (the handle's destination) is required");
        *packed = nullptr;
        if (auto s = check_weight_dtype("src_dtype", enum_value(src_dtype)); s != KVFUSE_OK) return s;
        if (auto s = check_weight_dtype("packed_dtype", enum_value(packed_dtype)); s != KVFUSE_OK) return s;
        if (out == 0 || in == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "out and in must be > 0");
        if (row_stride < in)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        "row_stride (" + std::to_string(row_stride) + ") must be >= in (" + std::to_string(in) + ")");
        if (out > kMaxExtent || row_stride > kMaxExtent || out - 1 > kMaxExtent / row_stride)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "out * row_stride is too large");
        if (weights == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "weights is required");
        if (auto s = check_aligned("weights", weights, src_dtype == KVFUSE_DTYPE_F32 ? 4 : 2); s != KVFUSE_OK) return s;
        try {
            auto* handle = new kvfuse_packed_weights{kvfuse::detail::pack_weights(src_dtype, weights, out, in, row_stride,
                                                                                packed_dtype)};
            *packed = handle;
        } catch (const std::bad_alloc&) {
            return fail(KVFUSE_ERROR_OUT_OF_MEMORY, "packed weights of " + std::to_string(out) + " x " + std::to_string(in));
        }
        return KVFUSE_OK;
    });
}

kvfuse_status kvfuse_pack_quantized_weights(const kvfuse_quantized_weights* weights, kvfuse_packed_weights** packed) {
    return guarded("kvfuse_pack_quantized_weights", [&]() -> kvfuse_status {
        if (packed == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "packed (the handle's destination) is required");
        *packed = nullptr;
        kvfuse_quantized_weights q;
        kvfuse_quantized_weights_init(&q);
        if (auto s = kvfuse::detail::read_struct("weights", weights, q); s != KVFUSE_OK) return s;
        if (q.code_bits != 4 && q.code_bits != 6 && q.code_bits != 8)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "code_bits (" + std::to_string(q.code_bits) + ") must be 4, 6 or 8");
        if (q.signed_sub_scales != nullptr && q.code_bits != 6)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        "signed_sub_scales (Q6_K's form) needs code_bits = 6, not " + std::to_string(q.code_bits));
        if (q.out == 0 || q.in == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "out and in must be > 0");
        if (q.in % kvfuse::detail::kQuantBlock != 0)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                        "in (" + std::to_string(q.in) + ") must be a multiple of 32 (the quantization block)");
        const std::size_t blocks = q.in / kvfuse::detail::kQuantBlock;
        if (q.codes_stride < q.in)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "codes_stride (" + std::to_string(q.codes_stride) +
                                                           ") must be >= in (" + std::to_string(q.in) + ")");
        if (q.code_bits != 6 && q.block_stride < blocks)  // Q6_K's form has no per-32 values
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "block_stride (" + std::to_string(q.block_stride) +
                                                           ") must be >= in / 32 (" + std::to_string(blocks) + ")");
        if (q.out > kMaxExtent || q.codes_stride > kMaxExtent || q.block_stride > kMaxExtent ||
            q.out - 1 > kMaxExtent / q.codes_stride || (q.block_stride != 0 && q.out - 1 > kMaxExtent / q.block_stride))
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "out * codes_stride is too large");
        if (q.code_bits == 6) {  // Q6_K's form (V3)
            const std::size_t supers = (blocks + kvfuse::detail::kSuperBlocks - 1) / kvfuse::detail::kSuperBlocks;
            if (q.scales != nullptr || q.offsets != nullptr || q.sub_scales != nullptr || q.sub_offsets != nullptr ||
                q.super_offsets != nullptr)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "scales, offsets, sub_scales, sub_offsets and super_offsets "
                                                           "must be NULL with code_bits = 6 (Q6_K's form)");
            if (q.codes == nullptr || q.signed_sub_scales == nullptr || q.super_scales == nullptr)
                return fail(KVFUSE_ERROR_NULL_POINTER,
                            "codes, signed_sub_scales and super_scales are required with code_bits = 6 (a V3 struct)");
            if (q.signed_sub_stride < 2 * blocks)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "signed_sub_stride (" + std::to_string(q.signed_sub_stride) +
                                                               ") must be >= in / 16 (" + std::to_string(2 * blocks) + ")");
            if (q.super_stride < supers)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "super_stride (" + std::to_string(q.super_stride) +
                                                               ") must be >= ceil(in / 256) (" + std::to_string(supers) + ")");
            if (q.super_stride > kMaxExtent || q.signed_sub_stride > kMaxExtent || q.out - 1 > kMaxExtent / q.super_stride ||
                q.out - 1 > kMaxExtent / q.signed_sub_stride)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "out * super_stride or out * signed_sub_stride is too large");
            if (auto s = check_aligned("super_scales", q.super_scales, alignof(float)); s != KVFUSE_OK) return s;
        } else if (q.sub_scales != nullptr) {  // the two-level form (V2)
            const std::size_t supers = (blocks + kvfuse::detail::kSuperBlocks - 1) / kvfuse::detail::kSuperBlocks;
            if (q.code_bits != 4)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "the two-level form (sub_scales set) needs code_bits = 4, not " +
                                                               std::to_string(q.code_bits));
            if (q.scales != nullptr || q.offsets != nullptr)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                            "scales and offsets must be NULL when sub_scales is set (the two-level form)");
            if (q.codes == nullptr || q.sub_offsets == nullptr || q.super_scales == nullptr || q.super_offsets == nullptr)
                return fail(KVFUSE_ERROR_NULL_POINTER,
                            "codes, sub_offsets, super_scales and super_offsets are required with sub_scales");
            if (q.super_stride < supers)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "super_stride (" + std::to_string(q.super_stride) +
                                                               ") must be >= ceil(in / 256) (" + std::to_string(supers) + ")");
            if (q.super_stride > kMaxExtent || q.out - 1 > kMaxExtent / q.super_stride)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "out * super_stride is too large");
            if (auto s = check_aligned("super_scales", q.super_scales, alignof(float)); s != KVFUSE_OK) return s;
            if (auto s = check_aligned("super_offsets", q.super_offsets, alignof(float)); s != KVFUSE_OK) return s;
        } else {
            if (q.codes == nullptr || q.scales == nullptr || q.offsets == nullptr)
                return fail(KVFUSE_ERROR_NULL_POINTER, "codes, scales and offsets are required");
            if (auto s = check_aligned("scales", q.scales, alignof(float)); s != KVFUSE_OK) return s;
            if (auto s = check_aligned("offsets", q.offsets, alignof(float)); s != KVFUSE_OK) return s;
        }
        const unsigned limit = 1u << q.code_bits;
        for (std::size_t j = 0; j < q.out; ++j)
            for (std::size_t k = 0; k < q.in; ++k)
                if (q.codes[j * q.codes_stride + k] >= limit)
                    return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "codes[" + std::to_string(j) + "][" + std::to_string(k) +
                                                                   "] = " + std::to_string(q.codes[j * q.codes_stride + k]) +
                                                                   " does not fit code_bits = " + std::to_string(q.code_bits));
        try {
            *packed = new kvfuse_packed_weights{kvfuse::detail::pack_quantized_weights(q)};
        } catch (const std::bad_alloc&) {
            return fail(KVFUSE_ERROR_OUT_OF_MEMORY,
                        "packed quantized weights of " + std::to_string(q.out) + " x " + std::to_string(q.in));
        }
        return KVFUSE_OK;
    });
}

void kvfuse_packed_weights_free(kvfuse_packed_weights* packed) { delete packed; }

kvfuse_status kvfuse_packed_weights_info(const kvfuse_packed_weights* packed, size_t* out, size_t* in,
                                         kvfuse_dtype* packed_dtype) {
    if (packed == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "packed weights are required");
    if (out != nullptr) *out = packed->weights.out;
    if (in != nullptr) *in = packed->weights.in;
    if (packed_dtype != nullptr) *packed_dtype = packed->weights.dtype;
    return KVFUSE_OK;
}

kvfuse_status kvfuse_gemm(const kvfuse_packed_weights* weights, const float* a, size_t n, size_t lda, float beta,
                          float* c, size_t ldc, int threads) {
    return gemm_on_context("kvfuse_gemm", nullptr, weights, a, n, lda, beta, c, ldc, threads);
}

kvfuse_status kvfuse_ctx_gemm(kvfuse_context* context, const kvfuse_packed_weights* weights, const float* a, size_t n,
                              size_t lda, float beta, float* c, size_t ldc) {
    return gemm_on_context("kvfuse_ctx_gemm", context, weights, a, n, lda, beta, c, ldc, 0);
}

kvfuse_status kvfuse_gemm_bf16_scheme(const char** scheme) {
    if (scheme == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "scheme is required");
    const kvfuse::detail::KernelTable* kernels = nullptr;
    if (const kvfuse_status s = kvfuse::detail::active_kernels(kernels); s != KVFUSE_OK) return s;
    *scheme = kernels->gemm_bf16_scheme;
    return KVFUSE_OK;
}

kvfuse_status kvfuse_gemm_int8_scheme(const char** scheme) {
    if (scheme == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "scheme is required");
    const kvfuse::detail::KernelTable* kernels = nullptr;
    if (const kvfuse_status s = kvfuse::detail::active_kernels(kernels); s != KVFUSE_OK) return s;
    *scheme = kernels->gemm_int8_scheme;
    return KVFUSE_OK;
}

}  // extern "C"
