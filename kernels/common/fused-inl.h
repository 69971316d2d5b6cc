// Fused multiply-add of f32 vectors with one rounding, whatever the ISA being compiled. xsimd 8.1
// has no AVX-512 fma: its xsimd::fma there is `x * y + z`, which GCC contracts into an FMA of its
// own choosing, and for `a * b + (c * d)` it may fuse either product (it fused c * d in RoPE's
// in-vector path: 1 ulp from the per-head path's fma(a, b, c * d)). Kernels whose vector lanes
// must round exactly like their scalar or narrower tails (RoPE) call these instead. Included by a
// kernel's -inl.h inside its ISA translation unit (kvfuse::<isa> anonymous namespace, see
// kernels/README.md), so no copy leaks into another ISA.
#pragma once

#include <type_traits>
#include <xsimd/xsimd.hpp>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

template <class B>
constexpr bool kAvx512Batch = std::is_base_of_v<xsimd::avx512f, typename B::arch_type>;

// x * y + z, rounded once.
template <class B>
inline B fused_multiply_add(const B& x, const B& y, const B& z) {
#if defined(__AVX512F__)
    if constexpr (kAvx512Batch<B>) return B(_mm512_fmadd_ps(x, y, z));
#endif
    return xsimd::fma(x, y, z);  // vfmadd on fma3 (avx2), fmla on NEON
}

// x * y - z, rounded once.
template <class B>
inline B fused_multiply_sub(const B& x, const B& y, const B& z) {
#if defined(__AVX512F__)
    if constexpr (kAvx512Batch<B>) return B(_mm512_fmsub_ps(x, y, z));
#endif
    return xsimd::fms(x, y, z);
}

}  // namespace
}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
