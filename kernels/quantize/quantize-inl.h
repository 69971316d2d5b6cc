// The int8 / int4 quantizers (kvfuse_quantize_keys_i8, _i4, kvfuse_quantize_rows_i8) written
// once on the xsimd architecture, with intrinsics where xsimd 8.1 has no operation or not the
// right one: int32 lanes narrowed to bytes, a max / min whose NaN rule is
// std::fmax's, a horizontal max, and on NEON a correctly rounded division. Included once per ISA by a CMake-generated unit that
// defines KVFUSE_ISA_NAMESPACE and KVFUSE_XSIMD_ARCH; no include guard on purpose (see rope-inl.h).
//
// Bit for bit the reference (reference::quantize_keys / quantize_rows_i8):
// * the mean of each (head, dim) column is summed in f32 in token order (each lane adds its
//   column's values in the reference's order) and divided by the f32 token count; workers split
//   the columns, never the tokens, so the order holds; a column whose f32 sum is not finite is
//   summed again in double, as the reference does (f32 sums: no f32 -> f64 widening, which
//   took half the time of a whole call on Zen 4, where vcvtps2pd zmm issues every 2 cycles);
// * max|x| ignores NaN (as std::fmax does) and a max is exact in any order;
// * the integer is lrint(clamp(x * recip)), recip = RN(1 / scale) rounded once (llama.cpp's
//   quantizers also multiply by the reciprocal), or lrint(clamp(x / scale)) of a true IEEE
//   division (`divide` below: never xsimd's NEON `/`, a reciprocal estimate) when recip would not
//   be a normal f32; NaN becomes +limit (std::fmin(limit, NaN) is limit), the clamp is exact and
//   left out where it cannot act (`rounded_vectors`), and the rounding is cvtps2dq / fcvtns: round
//   half to even, as std::lrint in the default rounding mode. (Until session 18 the contract was
//   the division itself, reproduced through a per-value distance test and a fallback: six of
//   the rounding loop's twelve instructions.);
// * a head's last values short of a whole vector (head dims below or not a multiple of the
//   vector width, or of the 16-value chunk) run the same vector code on zero-padded lanes, whose
//   results are not stored: no scalar loop at any head dim;
// * bf16 and f16 input is widened exactly as it is loaded (half-inl.h: shift, vcvtph2ps, fcvtl),
//   so every value is the f32 the reference widens it to.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#include "kernels/call_context.h"
#include "kernels/common/half-inl.h"
#include "kernels/common/workers.h"
#include "kernels/kernel_table.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
using I32s = xsimd::batch<std::int32_t, Arch>;
constexpr std::size_t kLanes = F32s::size;
// Values quantized together: 16 bytes of int8 (one 128-bit store), 8 bytes of packed int4.
constexpr std::size_t kChunk = 16;
constexpr std::size_t kPerChunk = kChunk / kLanes;
static_assert(kChunk % kLanes == 0, "a chunk is a whole number of vectors");

// Columns of the mean are given to workers in blocks of 64 floats (a 256-byte stretch of every
// row: whole cache lines of the keys and of the f32 sums).
constexpr std::size_t kColumnBlock = 64;

// --- the ISA-specific pieces ----------------------------------------------------------------

#if defined(__AVX512F__)
using Bytes16 = __m128i;
// kPerChunk int32 vectors of values in [-127, 127] -> their 16 int8 values in order.
inline Bytes16 narrow_to_bytes(const I32s* q) { return _mm512_cvtepi32_epi8(q[0]); }
inline void store_bytes(void* dst, Bytes16 b) { _mm_storeu_si128(static_cast<__m128i*>(dst), b); }
// 16 int8 values in [-7, 7] -> 8 bytes, value 2i in the low nibble of byte i, 2i + 1 in the high.
inline void store_nibbles(void* dst, Bytes16 b) {
    const __m128i low = _mm_and_si128(b, _mm_set1_epi16(0x000f));
    const __m128i high = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi16(0x00f0));
    _mm_storel_epi64(static_cast<__m128i*>(dst), _mm_packus_epi16(_mm_or_si128(low, high), _mm_setzero_si128()));
}
// 4 int32 vectors of values in [-127, 127] -> their 64 int8 values in order, by two packs and a
// dword permutation (the packs interleave the four vectors' quarters in each 128-bit lane):
// 4 operations where four vpmovdb are 8 (Zen 4: vpmovdb zmm is 2 uops).
constexpr std::size_t kWideVectors = 4;
inline __m512i narrow_wide(const I32s* q) {
    const __m512i packed = _mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_epi32(order, packed);
}
inline void store_wide_bytes(void* dst, const I32s* q) { _mm512_storeu_si512(dst, narrow_wide(q)); }
// The same 64 values in [-7, 7] as 32 bytes of nibbles (store_nibbles' layout): value 2i in the
// low nibble of byte i, 2i + 1 in the high, each 16-bit pair merged in place and then narrowed.
inline void store_wide_nibbles(void* dst, const I32s* q) {
    const __m512i b = narrow_wide(q);
    const __m512i merged = _mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi16(0x000f)),
                                           _mm512_and_si512(_mm512_srli_epi16(b, 4), _mm512_set1_epi16(0x00f0)));
    _mm256_storeu_si256(static_cast<__m256i*>(dst), _mm512_cvtepi16_epi8(merged));
}
// IEEE division, rounded once (divps).
inline F32s divide(F32s a, F32s b) { return a / b; }
// max(best, a) lane by lane, keeping best where a is NaN (best is never NaN), as std::fmax:
// maxps returns its second operand when either is NaN.
inline F32s max_skipping_nan(F32s best, F32s a) { return _mm512_max_ps(a, best); }
// v clamped to [-limit, limit], NaN to +limit, as std::fmax(-limit, std::fmin(limit, v)):
// minps returns its second operand, limit, for a NaN v.
inline F32s clamp_nan_high(F32s v, F32s limit) { return _mm512_max_ps(_mm512_min_ps(v, limit), -limit); }
// The largest lane of non-negative, non-NaN lanes.
inline float reduce_max(F32s v) { return _mm512_reduce_max_ps(v); }
// The largest lane of non-negative int32 lanes.
inline std::int32_t reduce_max_int(I32s v) { return _mm512_reduce_max_epi32(v); }
// Lane i of the result is lane i ^ kDistance of v (kDistance 1, 2 or 4).
template <std::size_t kDistance>
inline I32s lanes_swapped(I32s v) {
    if constexpr (kDistance == 1) return _mm512_shuffle_epi32(v, _MM_PERM_CDAB);
    else if constexpr (kDistance == 2) return _mm512_shuffle_epi32(v, _MM_PERM_BADC);
    else return _mm512_shuffle_i32x4(v, v, 0xb1);  // 128-bit quarters 1 0 3 2
}
#elif defined(__AVX2__)
using Bytes16 = __m128i;
inline Bytes16 narrow_to_bytes(const I32s* q) {
    // packs works within 128-bit lanes: [a0-3 b0-3 | a4-7 b4-7] -> 64-bit quarters 0, 2, 1, 3.
    const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xd8);
    return _mm_packs_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
}
inline void store_bytes(void* dst, Bytes16 b) { _mm_storeu_si128(static_cast<__m128i*>(dst), b); }
inline void store_nibbles(void* dst, Bytes16 b) {
    const __m128i low = _mm_and_si128(b, _mm_set1_epi16(0x000f));
    const __m128i high = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi16(0x00f0));
    _mm_storel_epi64(static_cast<__m128i*>(dst), _mm_packus_epi16(_mm_or_si128(low, high), _mm_setzero_si128()));
}
// 32 values at once (scaled_chunks on AVX2): two packs and one permute per 32, not per 16.
using Bytes32 = __m256i;
// 4 int32 vectors -> 32 int8 in order: the packs leave 4-byte groups q0a q1a q2a q3a | q0b ...
inline Bytes32 narrow_wide(const I32s* q) {
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
inline void store_wide_bytes(void* dst, Bytes32 b) { _mm256_storeu_si256(static_cast<__m256i*>(dst), b); }
inline void store_wide_nibbles(void* dst, Bytes32 b) {
    const __m256i low = _mm256_and_si256(b, _mm256_set1_epi16(0x000f));
    const __m256i high = _mm256_and_si256(_mm256_srli_epi16(b, 4), _mm256_set1_epi16(0x00f0));
    const __m256i packed = _mm256_packus_epi16(_mm256_or_si256(low, high), _mm256_setzero_si256());
    _mm_storeu_si128(static_cast<__m128i*>(dst), _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0xd8)));
}
inline F32s divide(F32s a, F32s b) { return a / b; }
inline F32s max_skipping_nan(F32s best, F32s a) { return _mm256_max_ps(a, best); }
inline F32s clamp_nan_high(F32s v, F32s limit) { return _mm256_max_ps(_mm256_min_ps(v, limit), -limit); }
inline float reduce_max(F32s v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}
inline std::int32_t reduce_max_int(I32s v) {
    __m128i m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4e));
    return _mm_cvtsi128_si32(_mm_max_epi32(m, _mm_shuffle_epi32(m, 0xb1)));
}
template <std::size_t kDistance>
inline I32s lanes_swapped(I32s v) {
    if constexpr (kDistance == 1) return _mm256_shuffle_epi32(v, 0xb1);
    else if constexpr (kDistance == 2) return _mm256_shuffle_epi32(v, 0x4e);
    else return _mm256_permute2x128_si256(v, v, 1);
}
#elif defined(__ARM_NEON)
using Bytes16 = int8x16_t;
inline Bytes16 narrow_to_bytes(const I32s* q) {
    const int16x8_t a = vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1]));
    const int16x8_t b = vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3]));
    return vcombine_s8(vmovn_s16(a), vmovn_s16(b));
}
inline void store_bytes(void* dst, Bytes16 b) { vst1q_s8(static_cast<std::int8_t*>(dst), b); }
inline void store_nibbles(void* dst, Bytes16 b) {
    const uint16x8_t w = vreinterpretq_u16_s8(b);
    const uint16x8_t packed = vorrq_u16(vandq_u16(w, vdupq_n_u16(0x000f)), vandq_u16(vshrq_n_u16(w, 4), vdupq_n_u16(0x00f0)));
    vst1_u8(static_cast<std::uint8_t*>(dst), vmovn_u16(packed));
}
// fdiv: xsimd 8.1's float `/` on NEON is a reciprocal estimate and two Newton steps (not
// correctly rounded, and a subnormal divisor's estimate overflows), so it is not the
// reference's x / scale.
inline F32s divide(F32s a, F32s b) { return vdivq_f32(a, b); }
// fmaxnm / fminnm are IEEE maxNum / minNum: a NaN operand gives the other, as std::fmax/fmin.
inline F32s max_skipping_nan(F32s best, F32s a) { return vmaxnmq_f32(best, a); }
inline F32s clamp_nan_high(F32s v, F32s limit) { return vmaxnmq_f32(vminnmq_f32(v, limit), -limit); }
inline float reduce_max(F32s v) { return vmaxvq_f32(v); }
inline std::int32_t reduce_max_int(I32s v) { return vmaxvq_s32(v); }
template <std::size_t kDistance>
inline I32s lanes_swapped(I32s v) {
    if constexpr (kDistance == 1) return vrev64q_s32(v);
    else return vextq_s32(v, v, 2);
}
#else
#error "quantize-inl.h: no byte narrowing for this ISA"
#endif

// --- one (token, head) ----------------------------------------------------------------------

template <kvfuse_dtype kType>
using Element = std::conditional_t<kType == KVFUSE_DTYPE_F32, float, std::uint16_t>;

// x[i] - mean[i] in f32 (the reference's `centred`), or x[i] when there is no mean.
template <kvfuse_dtype kType, bool kCentred>
inline F32s centred(const Element<kType>* x, const float* mean, std::size_t i) {
    if constexpr (kCentred)
        return load_as_f32<kType, F32s>(x, i) - F32s::load_unaligned(mean + i);
    else
        return load_as_f32<kType, F32s>(x, i);
}
// The same for the `count` (< kLanes) values from i, the lanes after them zero: a head's last,
// partial vector (a head dim below or not a multiple of the vector width). The values are copied
// into a zeroed vector-sized buffer and loaded from there through the same conversion as whole
// vectors, so every lane is the f32 the reference widens; a zero lane is zero after centring
// too (0 - 0), which neither raises a maximum nor rounds to anything but 0.
template <kvfuse_dtype kType, bool kCentred>
inline F32s centred_partial(const Element<kType>* x, const float* mean, std::size_t i, std::size_t count) {
    alignas(64) Element<kType> values[kLanes] = {};
    for (std::size_t j = 0; j < count; ++j) values[j] = x[i + j];
    const F32s v = load_as_f32<kType, F32s>(values, 0);
    if constexpr (kCentred) {
        alignas(64) float means[kLanes] = {};
        for (std::size_t j = 0; j < count; ++j) means[j] = mean[i + j];
        return v - F32s::load_aligned(means);
    } else {
        return v;
    }
}

template <kvfuse_dtype kType, bool kCentred>
float max_abs(const Element<kType>* x, const float* mean, std::size_t n) {
    // Two chains, so that compare + blend latency does not bound a head of 8 vectors.
    F32s best0(0.0f), best1(0.0f);
    std::size_t i = 0;
    for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
        const F32s a0 = xsimd::abs(centred<kType, kCentred>(x, mean, i));
        const F32s a1 = xsimd::abs(centred<kType, kCentred>(x, mean, i + kLanes));
        best0 = max_skipping_nan(best0, a0);
        best1 = max_skipping_nan(best1, a1);
    }
    if (i + kLanes <= n) {
        const F32s a = xsimd::abs(centred<kType, kCentred>(x, mean, i));
        best0 = max_skipping_nan(best0, a);
        i += kLanes;
    }
    if (i < n) best1 = max_skipping_nan(best1, xsimd::abs(centred_partial<kType, kCentred>(x, mean, i, n - i)));
    return reduce_max(max_skipping_nan(best0, best1));
}

// Whether a head's values may be multiplied by the rounded reciprocal of its scale (a normal
// scale up to 2^126, whose reciprocal is normal too) instead of divided by the scale. NaN: no.
inline bool scale_multiplies(float scale) { return scale >= std::numeric_limits<float>::min() && scale <= 0x1p126f; }
// How a head's values are divided by its scale (the reference's Divider): x * recip, recip =
// RN(1 / scale), when recip is a normal f32; a true division otherwise.
enum class Scaling { multiply, divide };

// kPerChunk vectors of a chunk scaled and rounded to int32. kClamp false: no clamp, which is
// exact when the head holds no NaN and is multiplied: |c| <= max|c| and scale = RN(max / limit),
// recip = RN(1 / scale), so |c * recip| <= limit (1 + 2^-22) < limit + 1/2, which rounds to at
// most limit, as the clamp would.
template <Scaling kScaling, bool kClamp>
inline I32s rounded(F32s c, F32s factor, F32s limit) {
    F32s v = kScaling == Scaling::multiply ? c * factor : divide(c, factor);
    if constexpr (kClamp) v = clamp_nan_high(v, limit);
    return xsimd::nearbyint_as_int(v);
}
template <kvfuse_dtype kType, bool kCentred, Scaling kScaling, bool kClamp>
inline void rounded_vectors(const Element<kType>* x, const float* mean, std::size_t i, F32s factor, F32s limit,
                            I32s* q, std::size_t count) {
    for (std::size_t k = 0; k < count; ++k)
        q[k] = rounded<kScaling, kClamp>(centred<kType, kCentred>(x, mean, i + k * kLanes), factor, limit);
}

// The last, partial chunk of a head: the `count` (< kChunk) values from i in kPerChunk vectors,
// whole vectors where there are kLanes values left, a partial one (zero lanes after the values)
// and zero vectors after that; zero lanes round to 0 (for int4 the high nibble of an odd head's
// last byte, which the contract sets to 0).
template <kvfuse_dtype kType, bool kCentred, Scaling kScaling, bool kClamp>
inline void rounded_partial_chunk(const Element<kType>* x, const float* mean, std::size_t i, std::size_t count,
                                  F32s factor, F32s limit, I32s* q) {
    for (std::size_t k = 0; k < kPerChunk; ++k) {
        const std::size_t first = k * kLanes;
        if (first >= count) {
            q[k] = I32s(0);
            continue;
        }
        const F32s c = count - first >= kLanes ? centred<kType, kCentred>(x, mean, i + first)
                                               : centred_partial<kType, kCentred>(x, mean, i + first, count - first);
        q[k] = rounded<kScaling, kClamp>(c, factor, limit);
    }
}

// Writes the values [i, n) of a head, fewer than a chunk, through a 16-byte buffer of which only
// their bytes are copied out.
template <int kBits, kvfuse_dtype kType, bool kCentred, Scaling kScaling, bool kClamp>
inline void scaled_partial_chunk(const Element<kType>* x, const float* mean, std::size_t i, std::size_t n,
                                 F32s factor, F32s limit, std::uint8_t* bytes) {
    I32s q[kPerChunk];
    rounded_partial_chunk<kType, kCentred, kScaling, kClamp>(x, mean, i, n - i, factor, limit, q);
    alignas(16) std::uint8_t last[kChunk];
    if constexpr (kBits == 8) {
        store_bytes(last, narrow_to_bytes(q));
        std::memcpy(bytes + i, last, n - i);
    } else {
        store_nibbles(last, narrow_to_bytes(q));
        std::memcpy(bytes + i / 2, last, (n - i + 1) / 2);
    }
}

// Writes one head's n values (factor: recip to multiply, scale to divide): whole chunks, then
// (kTail: heads that are not a whole number of chunks) the partial last one.
template <int kBits, kvfuse_dtype kType, bool kCentred, bool kTail, Scaling kScaling, bool kClamp>
void scaled_chunks(const Element<kType>* x, const float* mean, std::size_t n, float factor, std::uint8_t* bytes) {
    const F32s vfactor(factor), vlimit(kBits == 8 ? 127.0f : 7.0f);
    std::size_t i = 0;
#if defined(__AVX2__) && !defined(__AVX512F__)
    for (; i + 2 * kChunk <= n; i += 2 * kChunk) {
        I32s q[2 * kPerChunk];
        rounded_vectors<kType, kCentred, kScaling, kClamp>(x, mean, i, vfactor, vlimit, q, 2 * kPerChunk);
        if constexpr (kBits == 8)
            store_wide_bytes(bytes + i, narrow_wide(q));
        else
            store_wide_nibbles(bytes + i / 2, narrow_wide(q));
    }
#endif
    for (; i + kChunk <= n; i += kChunk) {
        I32s q[kPerChunk];
        rounded_vectors<kType, kCentred, kScaling, kClamp>(x, mean, i, vfactor, vlimit, q, kPerChunk);
        const Bytes16 b = narrow_to_bytes(q);
        if constexpr (kBits == 8)
            store_bytes(bytes + i, b);
        else
            store_nibbles(bytes + i / 2, b);
    }
    if constexpr (kTail)
        if (i < n) scaled_partial_chunk<kBits, kType, kCentred, kScaling, kClamp>(x, mean, i, n, vfactor, vlimit, bytes);
}

// max|c| of a head as the bits of |c| (ordered as integers; a NaN's bits exceed +inf's), so
// that one integer max finds both the scale and whether the head holds a NaN.
template <kvfuse_dtype kType, bool kCentred, bool kTail>
std::uint32_t max_abs_bits(const Element<kType>* x, const float* mean, std::size_t n) {
    const I32s magnitude(0x7fffffff);
    I32s best0(0), best1(0);
    std::size_t i = 0;
    for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
        best0 = xsimd::max(best0, xsimd::bitwise_cast<I32s>(centred<kType, kCentred>(x, mean, i)) & magnitude);
        best1 = xsimd::max(best1, xsimd::bitwise_cast<I32s>(centred<kType, kCentred>(x, mean, i + kLanes)) & magnitude);
    }
    if (i + kLanes <= n) {
        best0 = xsimd::max(best0, xsimd::bitwise_cast<I32s>(centred<kType, kCentred>(x, mean, i)) & magnitude);
        i += kLanes;
    }
    if constexpr (kTail)
        if (i < n)
            best1 = xsimd::max(best1, xsimd::bitwise_cast<I32s>(centred_partial<kType, kCentred>(x, mean, i, n - i)) & magnitude);
    // Every lane is a magnitude's bits, non-negative as an int32: a signed max is the unsigned one.
    return static_cast<std::uint32_t>(reduce_max_int(xsimd::max(best0, best1)));
}

// Quantizes one head whose max_abs_bits is `bits_of_max`; returns the scale; writes n int8
// values (bits 8) or (n + 1) / 2 packed bytes (bits 4). `scale` and `recip` are max|c| / limit
// and 1 / that, computed for a group of heads at once (scales_of_group); a head holding NaN
// recomputes them from std::fmax's max (NaN skipped), and its NaN values go to +limit by the
// clamp, as std::fmin(limit, NaN) = limit in the reference.
template <int kBits, kvfuse_dtype kType, bool kCentred, bool kTail>
float quantize_head(const Element<kType>* x, const float* mean, std::size_t n, void* out, std::uint32_t bits_of_max,
                    float scale, float recip) {
    constexpr float kLimit = kBits == 8 ? 127.0f : 7.0f;
    constexpr std::uint32_t kInfBits = 0x7f800000u;
    const bool has_nan = bits_of_max > kInfBits;
    if (has_nan) {
        scale = max_abs<kType, kCentred>(x, mean, n) / kLimit;
        recip = 1.0f / scale;
    }
    auto* bytes = static_cast<std::uint8_t*>(out);
    if (!(scale > 0.0f)) {
        std::memset(bytes, 0, kBits == 8 ? n : (n + 1) / 2);
        return scale;
    }
    const Scaling scaling = scale_multiplies(scale) ? Scaling::multiply : Scaling::divide;
    if (scaling == Scaling::divide)
        scaled_chunks<kBits, kType, kCentred, kTail, Scaling::divide, true>(x, mean, n, scale, bytes);
    else if (has_nan)
        scaled_chunks<kBits, kType, kCentred, kTail, Scaling::multiply, true>(x, mean, n, recip, bytes);
    else
        scaled_chunks<kBits, kType, kCentred, kTail, Scaling::multiply, false>(x, mean, n, recip, bytes);
    return scale;
}

// Heads whose maxima are found first, then rounded (quantize_tokens); a whole number of vectors.
constexpr std::size_t kHeadGroup = 16;
static_assert(kHeadGroup % kLanes == 0, "a head group is a whole number of vectors");

// scale = max|c| / limit and recip = 1 / scale for a group of heads, from the bits of their
// maxima, kLanes heads per IEEE vector division (each lane rounded as the scalar division is):
// two scalar divisions per head were a chain of ~25 cycles in front of every head's rounding.
// Lanes of heads holding NaN come out NaN; quantize_head recomputes those.
template <int kBits>
void scales_of_group(const std::uint32_t* bits_of_max, float* scale, float* recip) {
    const F32s limit(kBits == 8 ? 127.0f : 7.0f), one(1.0f);
    for (std::size_t h = 0; h < kHeadGroup; h += kLanes) {
        const F32s max_abs = xsimd::bitwise_cast<F32s>(I32s::load_aligned(reinterpret_cast<const std::int32_t*>(bits_of_max + h)));
        const F32s s = divide(max_abs, limit);
        s.store_aligned(scale + h);
        divide(one, s).store_aligned(recip + h);
    }
}

// --- heads held in registers ------------------------------------------------------------------
//
// A head of kVectors whole vectors (head dims 64, 80, 96, 128 on AVX-512) is loaded and centred once:
// its values stay in registers from the maximum to the rounding. The grouped path
// (max_abs_bits, scales_of_group, quantize_head) loads every value and its mean twice and
// subtracts twice; here the head's two divisions are scalar, their latency hidden behind the
// neighbouring heads' loads. The same operations on every value, so the same bits: max of the
// magnitude bits, scale = max / limit and recip = 1 / scale each rounded once, unclamped
// multiply-round. A head that needs more (NaN, zero maximum, scale outside the multiplying
// range) goes to quantize_head, which loads it again.
template <int kBits, kvfuse_dtype kType, bool kCentred, std::size_t kVectors>
[[gnu::always_inline]] inline float quantize_head_in_registers(const Element<kType>* x, const float* mean, void* out) {
    static_assert((kVectors * kLanes) % kChunk == 0, "a whole number of chunks");
    constexpr float kLimit = kBits == 8 ? 127.0f : 7.0f;
    const I32s magnitude(0x7fffffff);
    F32s c[kVectors];
    I32s most[kVectors];
    for (std::size_t j = 0; j < kVectors; ++j) {
        c[j] = centred<kType, kCentred>(x, mean, j * kLanes);
        most[j] = xsimd::bitwise_cast<I32s>(c[j]) & magnitude;
    }
    for (std::size_t n = kVectors; n > 1; n = (n + 1) / 2)
        for (std::size_t j = 0; j < n / 2; ++j) most[j] = xsimd::max(most[j], most[j + (n + 1) / 2]);
    const auto bits_of_max = static_cast<std::uint32_t>(reduce_max_int(most[0]));
    float max_abs;
    std::memcpy(&max_abs, &bits_of_max, sizeof max_abs);
    const float scale = max_abs / kLimit;
    const float recip = 1.0f / scale;
    // NaN's bits exceed every number's: a NaN head's scale is NaN, which fails both tests.
    if (!scale_multiplies(scale))
        return quantize_head<kBits, kType, kCentred, false>(x, mean, kVectors * kLanes, out, bits_of_max, scale, recip);
    const F32s factor(recip);
    auto* bytes = static_cast<std::uint8_t*>(out);
    std::size_t k = 0;
#if defined(__AVX512F__)
    for (; k + kWideVectors <= kVectors; k += kWideVectors) {
        I32s q[kWideVectors];
        for (std::size_t j = 0; j < kWideVectors; ++j) q[j] = xsimd::nearbyint_as_int(c[k + j] * factor);
        if constexpr (kBits == 8)
            store_wide_bytes(bytes + k * kLanes, q);
        else
            store_wide_nibbles(bytes + k * kLanes / 2, q);
    }
#endif
    for (; k < kVectors; k += kPerChunk) {
        I32s q[kPerChunk];
        for (std::size_t j = 0; j < kPerChunk; ++j) q[j] = xsimd::nearbyint_as_int(c[k + j] * factor);
        if constexpr (kBits == 8)
            store_bytes(bytes + k * kLanes, narrow_to_bytes(q));
        else
            store_nibbles(bytes + k * kLanes / 2, narrow_to_bytes(q));
    }
    return scale;
}

// --- heads shorter than a chunk, several to a chunk ------------------------------------------
//
// Head dims 4 and 8 (the bundled model's) with the heads packed in the row: one chunk holds
// kChunk / kHeadDim whole heads, quantized in registers with no per-head work. Per head, the
// general path ran a reduction to one scalar, two divisions' worth of group bookkeeping, and a
// partial vector (AVX-512: head dim 8 is half a vector) through a stack copy whose vector load
// waited for the scalar stores: 2-3 % of the copy bandwidth on Zen 4 at head dim 8.

// Every lane's maximum over its aligned segment of kSegment lanes (a power of two, at most
// kLanes): maxima with the lanes 1, 2, ... kSegment / 2 positions away (index xor distance).
template <std::size_t kSegment>
inline I32s segment_max(I32s v) {
    if constexpr (kSegment == 1) {
        return v;
    } else {
        v = segment_max<kSegment / 2>(v);
        return xsimd::max(v, lanes_swapped<kSegment / 2>(v));
    }
}

// Quantizes the kChunk / kHeadDim heads of one chunk: x and mean at the first head's first value,
// `bytes` at its output, `scales` at its scale. The same operations per lane as max_abs_bits,
// scales_of_group and the multiplying, unclamped rounding of quantize_head, so the same bits.
// Returns false, having written nothing, when a head needs more than those (a NaN, a zero
// maximum, a scale outside the multiplying range): the caller runs the general path for them.
template <int kBits, std::size_t kHeadDim, kvfuse_dtype kType, bool kCentred>
inline bool quantize_small_heads_chunk(const Element<kType>* x, const float* mean, std::uint8_t* bytes, float* scales) {
    static_assert(kChunk % kHeadDim == 0 && (kHeadDim & (kHeadDim - 1)) == 0, "whole heads in a chunk");
    constexpr std::size_t kSegment = kHeadDim < kLanes ? kHeadDim : kLanes;
    constexpr std::size_t kVectorsPerHead = kHeadDim / kSegment;
    const I32s magnitude(0x7fffffff);
    const F32s limit(kBits == 8 ? 127.0f : 7.0f), one(1.0f);
    const F32s smallest(std::numeric_limits<float>::min()), largest(0x1p126f);
    F32s c[kPerChunk], recip[kPerChunk];
    alignas(64) float chunk_scales[kChunk];
    bool multipliable = true;
    for (std::size_t k = 0; k < kPerChunk; k += kVectorsPerHead) {
        I32s most(0);
        for (std::size_t j = k; j < k + kVectorsPerHead; ++j) {
            c[j] = centred<kType, kCentred>(x, mean, j * kLanes);
            most = xsimd::max(most, xsimd::bitwise_cast<I32s>(c[j]) & magnitude);
        }
        // NaN's bits exceed every number's: a NaN head's scale is NaN, which fails both tests.
        const F32s scale = divide(xsimd::bitwise_cast<F32s>(segment_max<kSegment>(most)), limit);
        multipliable = multipliable && xsimd::all((scale >= smallest) & (scale <= largest));
        const F32s inverse = divide(one, scale);
        for (std::size_t j = k; j < k + kVectorsPerHead; ++j) {
            recip[j] = inverse;
            scale.store_aligned(chunk_scales + j * kLanes);
        }
    }
    if (!multipliable) return false;
    I32s q[kPerChunk];
    for (std::size_t k = 0; k < kPerChunk; ++k) q[k] = xsimd::nearbyint_as_int(c[k] * recip[k]);
    if constexpr (kBits == 8)
        store_bytes(bytes, narrow_to_bytes(q));
    else
        store_nibbles(bytes, narrow_to_bytes(q));
    for (std::size_t h = 0; h < kChunk / kHeadDim; ++h) scales[h] = chunk_scales[h * kHeadDim];
    return true;
}

// --- whole calls ----------------------------------------------------------------------------

// Below the tuning's quantize_parallel_work input values a call runs on the caller's thread
// (starting workers costs microseconds; dispatch/tuning.cpp says why the default is 64 K).
std::size_t workers_for(const kvfuse_context& context, std::size_t values, std::size_t parts) {
    if (values < detail::context_tuning(context).quantize_parallel_work) return 1;
    const std::size_t workers = detail::context_workers(context);
    return workers < parts ? workers : parts;
}

// Columns [begin, end) of the run of columns starting at element `run` of every token's row (a
// packed row: all heads; else one head): f32 sums in token order, then one f32 division. Tokens
// go in tiles of kTokenTile rows read side by side, so that each vector of sums is loaded and
// stored once per tile, not once per token.
constexpr std::size_t kTokenTile = 8;
// kPaged: the rows of a tile may sit in different blocks, addressed one by one; otherwise they
// are token_stride apart from the tile's first (the addressing the compiler keeps in registers).
template <kvfuse_dtype kType, bool kPaged>
void column_means(const Element<kType>* keys, const detail::KeyLayout& layout, std::size_t tokens, std::size_t run,
                  std::size_t begin, std::size_t end, float* sums, float* means) {
    for (std::size_t c = begin; c < end; ++c) sums[c] = 0.0f;
    const std::size_t stride = layout.token_stride;
    for (std::size_t t0 = 0; t0 < tokens; t0 += kTokenTile) {
        const std::size_t rows = std::min(tokens - t0, kTokenTile);
        const Element<kType>* tile = keys + layout.row(t0) + run;
        const Element<kType>* row[kTokenTile];
        if constexpr (kPaged)
            for (std::size_t t = 0; t < rows; ++t) row[t] = keys + layout.row(t0 + t) + run;
        auto at = [&](std::size_t t, std::size_t c) {
            if constexpr (kPaged)
                return row[t] + c;
            else
                return tile + t * stride + c;
        };
        // One vector of columns summed over `count` rows (in row order, as the reference): a
        // whole tile passes its count as a constant, so that loop is unrolled fully.
        auto add_columns = [&](std::size_t c, auto count) {
            F32s sum = F32s::load_unaligned(sums + c);
            for (std::size_t t = 0; t < static_cast<std::size_t>(count); ++t) sum += load_as_f32<kType, F32s>(at(t, c), 0);
            sum.store_unaligned(sums + c);
        };
        std::size_t c = begin;
        if (rows == kTokenTile)
            for (; c + kLanes <= end; c += kLanes) add_columns(c, std::integral_constant<std::size_t, kTokenTile>{});
        for (; c + kLanes <= end; c += kLanes) add_columns(c, rows);
        for (; c < end; ++c)
            for (std::size_t t = 0; t < rows; ++t) sums[c] += one_as_f32<kType>(at(t, c), 0);
    }
    const float count = static_cast<float>(tokens);
    std::size_t c = begin;
    for (; c + kLanes <= end; c += kLanes) divide(F32s::load_unaligned(sums + c), F32s(count)).store_unaligned(means + c);
    for (; c < end; ++c) means[c] = sums[c] / count;
    for (c = begin; c < end; ++c) {
        if (std::isfinite(sums[c])) continue;
        // Rare (non-finite keys, or an f32 overflow): the reference's double sum of the column.
        double wide = 0.0;
        for (std::size_t t = 0; t < tokens; ++t) wide += one_as_f32<kType>(keys + layout.row(t) + run + c, 0);
        means[c] = static_cast<float>(wide / static_cast<double>(tokens));
    }
}

// Every token of `heads` heads at `layout`, workers splitting the tokens (rows: no mean; keys:
// the means already known).
// run(workers, body) runs body(w) for w in [0, workers) (keys: after their means pass); body
// does nothing for w >= workers.
template <int kBits, kvfuse_dtype kType, bool kCentred, class Run>
void quantize_tokens(const kvfuse_context& context, const Element<kType>* x, const detail::KeyLayout& layout,
                     std::size_t tokens, std::size_t heads, std::size_t head_dim, void* out, float* scales,
                     const float* means, Run&& run) {
    const std::size_t workers = workers_for(context, tokens * heads * head_dim, tokens);
    const std::size_t head_bytes = kBits == 8 ? head_dim : (head_dim + 1) / 2;
    // The maxima of up to kHeadGroup heads first, then their rounding: the scale of a head is a
    // chain of max, reduce and divide, which the rounding of the same head would wait for.
    // Heads that are a whole number of chunks (head dims 64, 128, ...) run code without the
    // partial chunk's branches and calls: with them, head dim 64 took 2-7 % longer (AVX2, Zen 3).
    // kSmallHead: the head dim (4 or 8) whose heads, packed in the row, go a chunk at a time
    // (quantize_small_heads_chunk); 0 for the general path only.
    auto quantize_range = [&](std::size_t worker, auto tail, auto small_head, auto register_vectors) {
        constexpr bool kTail = decltype(tail)::value;
        constexpr std::size_t kSmallHead = decltype(small_head)::value;
        constexpr std::size_t kRegisterVectors = decltype(register_vectors)::value;
        alignas(64) std::uint32_t bits_of_max[kHeadGroup] = {};
        alignas(64) float group_scale[kHeadGroup], group_recip[kHeadGroup];
        const std::size_t head_stride = layout.head_stride;
        if (worker >= workers) return;
        for (std::size_t t = tokens * worker / workers; t < tokens * (worker + 1) / workers; ++t) {
            const Element<kType>* row = x + layout.row(t);
            auto* row_out = static_cast<std::uint8_t*>(out) + t * heads * head_bytes;
            float* row_scales = scales + t * heads;
            // Heads [first, last) on the general path.
            auto general_heads = [&](std::size_t first, std::size_t last) {
                for (std::size_t h0 = first; h0 < last; h0 += kHeadGroup) {
                    const std::size_t group = std::min(kHeadGroup, last - h0);
                    for (std::size_t h = h0; h < h0 + group; ++h)
                        bits_of_max[h - h0] = max_abs_bits<kType, kCentred, kTail>(
                            row + h * head_stride, kCentred ? means + h * head_dim : nullptr, head_dim);
                    scales_of_group<kBits>(bits_of_max, group_scale, group_recip);
                    for (std::size_t h = h0; h < h0 + group; ++h)
                        row_scales[h] = quantize_head<kBits, kType, kCentred, kTail>(
                            row + h * head_stride, kCentred ? means + h * head_dim : nullptr, head_dim,
                            row_out + h * head_bytes, bits_of_max[h - h0], group_scale[h - h0], group_recip[h - h0]);
                }
            };
            if constexpr (kRegisterVectors != 0) {
                for (std::size_t h = 0; h < heads; ++h)
                    row_scales[h] = quantize_head_in_registers<kBits, kType, kCentred, kRegisterVectors>(
                        row + h * head_stride, kCentred ? means + h * head_dim : nullptr, row_out + h * head_bytes);
                continue;
            }
            std::size_t h = 0;
            if constexpr (kSmallHead != 0) {
                constexpr std::size_t kHeadsPerChunk = kChunk / kSmallHead;
                for (; h + kHeadsPerChunk <= heads; h += kHeadsPerChunk)
                    if (!quantize_small_heads_chunk<kBits, kSmallHead, kType, kCentred>(
                            row + h * kSmallHead, kCentred ? means + h * kSmallHead : nullptr, row_out + h * head_bytes,
                            row_scales + h))
                        general_heads(h, h + kHeadsPerChunk);
            }
            general_heads(h, heads);
        }
    };
    using General = std::integral_constant<std::size_t, 0>;
    const bool packed_heads = heads == 1 || layout.head_stride == head_dim;
    auto whole_chunks = [&](std::size_t worker) { quantize_range(worker, std::false_type{}, General{}, General{}); };
    auto with_tail = [&](std::size_t worker) { quantize_range(worker, std::true_type{}, General{}, General{}); };
    auto heads_of_8 = [&](std::size_t worker) { quantize_range(worker, std::true_type{}, std::integral_constant<std::size_t, 8>{}, General{}); };
    auto heads_of_4 = [&](std::size_t worker) { quantize_range(worker, std::true_type{}, std::integral_constant<std::size_t, 4>{}, General{}); };
    // Heads of kVectors whole vectors, whole chunks too (head dims 64, 80, 96, 128), held in
    // registers (at most 8 of the 32), on AVX-512 only, whose rounding also narrows four
    // vectors at once (store_wide_bytes / store_wide_nibbles; keys_i4 128x8x128 took 1.12x the
    // grouped path's time before the latter, 0.89x after). On AVX2 (16 registers) the int4
    // rounding of more than 5 vectors waits behind the head's reduction and divisions and fills
    // the scheduler, rows (no mean: the grouped path loads each value only twice) 256x8x64 took
    // 1.07-1.10x as long, and keys_i8 256x8x64 at 1 thread 1.05x (in-process, both orders,
    // Zen 4 running AVX2): the grouped path stays there.
    bool ran = false;
    auto in_registers = [&](auto vectors) {
        constexpr std::size_t kVectors = decltype(vectors)::value;
        constexpr bool kWorthIt = kLanes == 16;
        if constexpr ((kVectors * kLanes) % kChunk == 0 && kWorthIt) {
            if (ran || head_dim != kVectors * kLanes) return;
            auto body = [&](std::size_t worker) { quantize_range(worker, std::false_type{}, General{}, vectors); };
            run(workers, body);
            ran = true;
        }
    };
    in_registers(std::integral_constant<std::size_t, 4>{});
    in_registers(std::integral_constant<std::size_t, 5>{});
    in_registers(std::integral_constant<std::size_t, 6>{});
    in_registers(std::integral_constant<std::size_t, 8>{});
    if (ran)
        return;
    else if (head_dim % kChunk == 0)
        run(workers, whole_chunks);
    else if (head_dim == 8 && packed_heads)
        run(workers, heads_of_8);
    else if (head_dim == 4 && packed_heads)
        run(workers, heads_of_4);
    else
        run(workers, with_tail);
}

template <int kBits, kvfuse_dtype kType>
void quantize_keys_of(kvfuse_context& context, const Element<kType>* keys, std::size_t tokens, std::size_t heads,
                      std::size_t head_dim, const detail::KeyLayout& layout, void* out, float* scales, float* means) {
    const std::size_t columns = heads * head_dim;
    // The only memory: the f32 column sums, in the context's scratch (kept across calls).
    auto* sums = static_cast<float*>(detail::context_scratch(context, columns * sizeof(float)));
    // The columns are read in runs contiguous in every token's row: the whole row when the heads
    // are packed in it (one sweep over each row), else one run per head (head strides, paged).
    const bool packed = heads == 1 || layout.head_stride == head_dim;
    const std::size_t runs = packed ? 1 : heads, run_length = packed ? columns : head_dim;
    const std::size_t blocks_per_run = (run_length + kColumnBlock - 1) / kColumnBlock, blocks = runs * blocks_per_run;
    const std::size_t mean_workers = workers_for(context, tokens * columns, blocks);
    auto mean_range = [&](std::size_t worker) {
        if (worker >= mean_workers) return;
        const std::size_t first = blocks * worker / mean_workers, last = blocks * (worker + 1) / mean_workers;
        for (std::size_t r = first / blocks_per_run; r * blocks_per_run < last; ++r) {
            const std::size_t begin = (std::max(first, r * blocks_per_run) - r * blocks_per_run) * kColumnBlock;
            const std::size_t end = std::min(run_length, (std::min(last, (r + 1) * blocks_per_run) - r * blocks_per_run) * kColumnBlock);
            if (layout.block_table != nullptr)
                column_means<kType, true>(keys, layout, tokens, r * layout.head_stride, begin, end, sums + r * run_length,
                                          means + r * run_length);
            else
                column_means<kType, false>(keys, layout, tokens, r * layout.head_stride, begin, end, sums + r * run_length,
                                           means + r * run_length);
        }
    };
    // Both passes in one run of workers (one OpenMP region): the means, then every token.
    quantize_tokens<kBits, kType, true>(context, keys, layout, tokens, heads, head_dim, out, scales, means,
                                        [&](std::size_t workers, auto& body) {
                                            detail::run_workers_in_two_phases(context, std::max(mean_workers, workers),
                                                                              mean_range, body);
                                        });
}

template <kvfuse_dtype kType>
void quantize_keys_typed(kvfuse_context& context, const void* keys, std::size_t tokens, std::size_t heads,
                         std::size_t head_dim, const detail::KeyLayout& layout, int bits, void* out, float* scales,
                         float* means) {
    const auto* typed = static_cast<const Element<kType>*>(keys);
    if (bits == 8)
        quantize_keys_of<8, kType>(context, typed, tokens, heads, head_dim, layout, out, scales, means);
    else
        quantize_keys_of<4, kType>(context, typed, tokens, heads, head_dim, layout, out, scales, means);
}

void quantize_keys(kvfuse_context& context, kvfuse_dtype dtype, const void* keys, std::size_t tokens, std::size_t heads,
                   std::size_t head_dim, const detail::KeyLayout& layout, int bits, void* out, float* scales,
                   float* means) {
    if (dtype == KVFUSE_DTYPE_F32)
        quantize_keys_typed<KVFUSE_DTYPE_F32>(context, keys, tokens, heads, head_dim, layout, bits, out, scales, means);
    else if (dtype == KVFUSE_DTYPE_F16)
        quantize_keys_typed<KVFUSE_DTYPE_F16>(context, keys, tokens, heads, head_dim, layout, bits, out, scales, means);
    else
        quantize_keys_typed<KVFUSE_DTYPE_BF16>(context, keys, tokens, heads, head_dim, layout, bits, out, scales, means);
}

void quantize_rows(kvfuse_context& context, kvfuse_dtype dtype, const void* x, std::size_t rows, std::size_t heads,
                   std::size_t head_dim, std::size_t row_stride, std::int8_t* out, float* scales) {
    const detail::KeyLayout layout = detail::KeyLayout::packed(row_stride, head_dim);
    auto run = [&](std::size_t workers, auto& body) { detail::run_workers(context, workers, body); };
    if (dtype == KVFUSE_DTYPE_F32)
        quantize_tokens<8, KVFUSE_DTYPE_F32, false>(context, static_cast<const float*>(x), layout, rows, heads, head_dim,
                                                    out, scales, nullptr, run);
    else if (dtype == KVFUSE_DTYPE_F16)
        quantize_tokens<8, KVFUSE_DTYPE_F16, false>(context, static_cast<const std::uint16_t*>(x), layout, rows, heads,
                                                    head_dim, out, scales, nullptr, run);
    else
        quantize_tokens<8, KVFUSE_DTYPE_BF16, false>(context, static_cast<const std::uint16_t*>(x), layout, rows, heads,
                                                     head_dim, out, scales, nullptr, run);
}

}  // namespace

void register_quantize(detail::KernelTable& table) {
    table.quantize_keys = &quantize_keys;
    KVFUSE_REGISTER_STORE_BARRIER();
    table.quantize_rows = &quantize_rows;
}

}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
