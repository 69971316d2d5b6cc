// 16-bit floats (f16, bf16) widened to and narrowed from f32 vectors of the ISA being compiled:
// F16C (vcvtph2ps / vcvtps2ph, round to nearest even) on x86, fcvtl / fcvtn on AArch64. Included
// by a kernel's -inl.h inside its ISA translation unit; everything lands in that unit's
// kvfuse::<isa> anonymous namespace (see kernels/README.md), so no copy leaks into another ISA.
// Single values go through the same instructions (never a software conversion), so that a
// kernel's scalar tail rounds, and treats NaN, exactly as its vector body.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <xsimd/xsimd.hpp>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#include "kernels/common/bf16.h"
#include "kvfuse/kvfuse.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

#if !defined(__F16C__) && !defined(__aarch64__)
#error "half-inl.h: f16 conversions need F16C (x86) or AArch64"
#endif

// B::size f16 values from p (unaligned) widened exactly; B a float batch of 4, 8 or 16 lanes.
template <class B>
inline B load_f16(const std::uint16_t* p) {
#if defined(__aarch64__)
    static_assert(B::size == 4, "NEON has 4 float lanes");
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
#else
    if constexpr (B::size == 4) {
        return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    } else if constexpr (B::size == 8) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    } else {
#if defined(__AVX512F__)
        static_assert(B::size == 16, "a float batch of 4, 8 or 16 lanes");
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#endif
    }
#endif
}

// B::size f32 lanes rounded to f16 (nearest even; NaN kept, quieted) and stored to p.
template <class B>
inline void store_f16(std::uint16_t* p, B v) {
#if defined(__aarch64__)
    static_assert(B::size == 4, "NEON has 4 float lanes");
    vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(v)));
#else
    if constexpr (B::size == 4) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    } else if constexpr (B::size == 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    } else {
#if defined(__AVX512F__)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
#endif
    }
#endif
}

// B::size bf16 values widened exactly (each zero-extended into its lane, shifted to the top).
template <class B>
inline B load_bf16(const std::uint16_t* p) {
#if defined(__aarch64__)
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
#else
    if constexpr (B::size == 4) {
        return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), 16));
    } else if constexpr (B::size == 8) {
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
    } else {
#if defined(__AVX512F__)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
#endif
    }
#endif
}

// One f16 value, by the vector instruction (a scalar tail matches the body bit for bit).
inline float f16_one(std::uint16_t bits) {
#if defined(__aarch64__)
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(bits))), 0);
#else
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)));
#endif
}
inline std::uint16_t f16_from_one(float value) {
#if defined(__aarch64__)
    return vget_lane_u16(vreinterpret_u16_f16(vcvt_f16_f32(vdupq_n_f32(value))), 0);
#else
    return static_cast<std::uint16_t>(_mm_cvtsi128_si32(_mm_cvtps_ph(_mm_set_ss(value), _MM_FROUND_TO_NEAREST_INT)));
#endif
}

// Element i of a tensor of kType (f32, bf16 or f16) as f32, one vector or one value at a time:
// what the kernels that read any KV type (quantizers, scoring) load through.
template <kvfuse_dtype kType, class B>
inline B load_as_f32(const void* base, std::size_t i) {
    if constexpr (kType == KVFUSE_DTYPE_F32)
        return B::load_unaligned(static_cast<const float*>(base) + i);
    else if constexpr (kType == KVFUSE_DTYPE_BF16)
        return load_bf16<B>(static_cast<const std::uint16_t*>(base) + i);
    else
        return load_f16<B>(static_cast<const std::uint16_t*>(base) + i);
}
template <kvfuse_dtype kType>
inline float one_as_f32(const void* base, std::size_t i) {
    if constexpr (kType == KVFUSE_DTYPE_F32)
        return static_cast<const float*>(base)[i];
    else if constexpr (kType == KVFUSE_DTYPE_BF16)
        return detail::bf16_bits_to_f32(static_cast<const std::uint16_t*>(base)[i]);
    else
        return f16_one(static_cast<const std::uint16_t*>(base)[i]);
}

// Bytes of one element of a KV type.
constexpr std::size_t element_bytes(kvfuse_dtype type) { return type == KVFUSE_DTYPE_F32 ? 4 : 2; }

}  // namespace
}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
