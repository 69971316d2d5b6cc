// The next narrower xsimd architecture of the same ISA family, for the tail of a loop whose
// length is not a multiple of the full vector width (a head dimension of 8 or 40 on AVX-512):
// half-width vectors there instead of a scalar loop. Compiled inside each ISA's translation
// unit; names only types, so nothing here can carry code from one ISA into another.
#pragma once

#include <xsimd/xsimd.hpp>

namespace kvfuse::detail {

// `void` when there is no narrower vector worth having.
template <class Arch>
struct narrower_arch {
    using type = void;
};
#if defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
template <>
struct narrower_arch<xsimd::avx512bw> {
    using type = xsimd::fma3<xsimd::avx2>;
};
#endif
#if defined(__AVX2__) && defined(__FMA__)
// xsimd 8.1 has no fma3<sse4_2> once AVX is on: its sse4_2 fma is a multiply and an add, so a
// quarter-width tail rounds twice (within every test's tolerance; only head dims of 4 + 8k).
template <>
struct narrower_arch<xsimd::fma3<xsimd::avx2>> {
    using type = xsimd::sse4_2;
};
#endif

template <class Arch>
using narrower_arch_t = typename narrower_arch<Arch>::type;

// The same, but only where the narrower vector still has a fused multiply-add: for kernels whose
// tails must round exactly like their full-width body (RoPE: every element rotated by the same
// FMA sequence, whatever its position).
template <class Arch>
struct narrower_fused_arch {
    using type = void;
};
#if defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
template <>
struct narrower_fused_arch<xsimd::avx512bw> {
    using type = xsimd::fma3<xsimd::avx2>;
};
#endif

template <class Arch>
using narrower_fused_arch_t = typename narrower_fused_arch<Arch>::type;

}  // namespace kvfuse::detail
