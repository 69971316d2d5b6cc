// Vector operations xsimd 8.1 lacks, for the ISA being compiled: a comparison's lanes as bits,
// compress (the selected lanes moved to the front, in lane order) into memory, the same widened
// to int64 or over a group of 64 lanes with their positions, and a multiply-add rounded once on
// every ISA. Included by a kernel's -inl.h inside its ISA translation unit; everything lands in
// that unit's kvfuse::<isa> anonymous namespace (see kernels/README.md), so no copy leaks into
// another ISA. Each operation is a template on the batch, dispatched on its lane count: 16 is
// AVX-512, 8 is AVX2; any other width (NEON, or a batch wider than the ISA) takes the portable
// lane loop, so a kernel reads the same on every ISA.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

// One bit per lane of a comparison of float batches (lane j -> bit j).
template <class A>
inline unsigned lane_bits(xsimd::batch_bool<float, A> b) {
    constexpr std::size_t lanes = xsimd::batch<float, A>::size;
#if defined(__AVX512F__)
    if constexpr (lanes == 16) return static_cast<unsigned>(static_cast<__mmask16>(b));
#endif
#if defined(__AVX2__)
    if constexpr (lanes == 8) return static_cast<unsigned>(_mm256_movemask_ps(static_cast<__m256>(b)));
#endif
    using F = xsimd::batch<float, A>;
    alignas(64) std::array<float, lanes> values;
    xsimd::select(b, F(1.0f), F(0.0f)).store_aligned(values.data());
    unsigned bits = 0;
    for (std::size_t j = 0; j < lanes; ++j) bits |= static_cast<unsigned>(values[j] != 0.0f) << j;
    return bits;
}

// One bit per lane of a group of comparisons (lane j of batch g -> bit g * lanes + j). On
// AVX-512 the four 16-bit masks are joined in mask registers (kunpck), one transfer for the
// group instead of one per batch plus shifts and ORs.
template <class A, std::size_t G>
inline std::uint64_t group_lane_bits(const std::array<xsimd::batch_bool<float, A>, G>& b) {
    constexpr std::size_t lanes = xsimd::batch<float, A>::size;
    static_assert(lanes * G <= 64, "at most 64 lanes");
#if defined(__AVX512BW__)
    if constexpr (lanes == 16 && G == 4) {
        const __mmask32 low = _mm512_kunpackw(static_cast<__mmask16>(b[1]), static_cast<__mmask16>(b[0]));
        const __mmask32 high = _mm512_kunpackw(static_cast<__mmask16>(b[3]), static_cast<__mmask16>(b[2]));
        return _cvtmask64_u64(_mm512_kunpackd(high, low));
    }
#endif
    std::uint64_t bits = 0;
    for (std::size_t g = 0; g < G; ++g) bits |= static_cast<std::uint64_t>(lane_bits(b[g])) << (g * lanes);
    return bits;
}

#if defined(__AVX2__)
// For each 8-bit mask, the lane order that moves the kept lanes to the front: AVX2 has no
// compress instruction, a permute through this 8 KiB table (L1-resident) stands in for it.
struct CompressTable {
    alignas(32) std::array<std::array<std::uint32_t, 8>, 256> order{};
    constexpr CompressTable() {
        for (unsigned mask = 0; mask < 256; ++mask) {
            unsigned out = 0;
            for (unsigned lane = 0; lane < 8; ++lane)
                if (mask & (1u << lane)) order[mask][out++] = lane;
            for (; out < 8; ++out) order[mask][out] = 0;
        }
    }
};
constexpr CompressTable kCompress8{};

inline __m256i compress_order8(unsigned bits) {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress8.order[bits].data()));
}
#endif

// The lanes of v selected by `bits`, moved to the front in lane order (the rest unspecified),
// stored as a whole vector at dst; returns how many were selected. Callers leave a whole
// vector of room at dst.
template <class T, class A>
inline std::size_t compress_store(xsimd::batch<T, A> v, unsigned bits, T* dst) {
    static_assert(sizeof(T) == 4, "32-bit lanes");
    constexpr std::size_t lanes = xsimd::batch<T, A>::size;
#if defined(__AVX512F__)
    // Compressed in a register, then one plain store of the whole vector: the memory form of
    // vpcompress is microcoded on Zen 4 and, on Zen 5, still slower than the two instructions.
    if constexpr (lanes == 16) {
        if constexpr (std::is_same_v<T, float>)
            _mm512_storeu_ps(dst, _mm512_maskz_compress_ps(static_cast<__mmask16>(bits), v));
        else
            _mm512_storeu_si512(dst, _mm512_maskz_compress_epi32(static_cast<__mmask16>(bits), v));
        return static_cast<std::size_t>(std::popcount(bits));
    }
#endif
#if defined(__AVX2__)
    if constexpr (lanes == 8) {
        const __m256i order = compress_order8(bits);
        if constexpr (std::is_same_v<T, float>)
            _mm256_storeu_ps(dst, _mm256_permutevar8x32_ps(v, order));
        else
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permutevar8x32_epi32(v, order));
        return static_cast<std::size_t>(std::popcount(bits));
    }
#endif
    alignas(64) std::array<T, lanes> values;
    v.store_aligned(values.data());
    std::size_t count = 0;
    for (std::size_t j = 0; j < lanes; ++j) {  // branch-free: selected lanes are unpredictable
        dst[count] = values[j];
        count += (bits >> j) & 1u;
    }
    return count;
}

// The positions of a vector's lanes (first + j for lane j), stepped a vector at a time, in the
// form compress_store_positions wants: on AVX2 `first` in every lane (the compress table's row
// is the kept lanes' j, so one add replaces the permute of a position vector: vpermd is two
// uops on Zen 3), elsewhere the position vector itself (compressed as it is: an add there
// would be one more uop per vector, llvm-mca znver4 2.9 -> 3.4 cycles a filter vector).
template <class A>
class LanePositions {
    using U = xsimd::batch<std::uint32_t, A>;
    static constexpr std::size_t kLanes = U::size;

public:
#if defined(__AVX2__)
    static constexpr bool kFromTable = kLanes == 8;
#else
    static constexpr bool kFromTable = false;
#endif
    explicit LanePositions(std::uint32_t first) : lanes_(U(first)) {
        if constexpr (!kFromTable) {
            alignas(64) std::array<std::uint32_t, kLanes> j;
            for (std::size_t l = 0; l < kLanes; ++l) j[l] = static_cast<std::uint32_t>(l);
            lanes_ += U::load_aligned(j.data());
        }
    }
    void next() { lanes_ += U(static_cast<std::uint32_t>(kLanes)); }
    U lanes() const { return lanes_; }

private:
    U lanes_;
};

// The positions of the lanes selected by `bits`, in lane order, stored as a whole vector at dst
// (compress_store of the positions); returns how many.
template <class A>
inline std::size_t compress_store_positions(unsigned bits, const LanePositions<A>& positions, std::uint32_t* dst) {
#if defined(__AVX2__)
    if constexpr (LanePositions<A>::kFromTable) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_add_epi32(compress_order8(bits), positions.lanes()));
        return static_cast<std::size_t>(std::popcount(bits));
    }
#endif
    return compress_store(positions.lanes(), bits, dst);
}

// compress_store of unsigned 32-bit lanes widened to int64 on the way (no separate widening
// pass for a caller that wants int64), writing at most `room` elements: whole vectors while
// there is room for them, masked stores or single values near the end. Returns the count
// selected (which may exceed room).
template <class A>
inline std::size_t compress_store_widened(xsimd::batch<std::uint32_t, A> v, unsigned bits, std::int64_t* dst,
                                          std::size_t room) {
    constexpr std::size_t lanes = xsimd::batch<std::uint32_t, A>::size;
#if defined(__AVX512F__)
    if constexpr (lanes == 16) {
        const __m512i packed = _mm512_maskz_compress_epi32(static_cast<__mmask16>(bits), v);
        const unsigned count = static_cast<unsigned>(std::popcount(bits));
        const __m512i low = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(packed));
        const __m512i high = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(packed, 1));
        if (room >= 16) {  // plain stores where there is room: masked ones cost more
            _mm512_storeu_si512(dst, low);
            _mm512_storeu_si512(dst + 8, high);
        } else {  // never beyond the count
            const unsigned written = (1u << count) - 1u;
            _mm512_mask_storeu_epi64(dst, static_cast<__mmask8>(written), low);
            _mm512_mask_storeu_epi64(dst + 8, static_cast<__mmask8>(written >> 8), high);
        }
        return count;
    }
#endif
#if defined(__AVX2__)
    if constexpr (lanes == 8) {
        if (room >= 8) {
            const __m256i packed = _mm256_permutevar8x32_epi32(v, compress_order8(bits));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_cvtepu32_epi64(_mm256_castsi256_si128(packed)));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 4),
                                _mm256_cvtepu32_epi64(_mm256_extracti128_si256(packed, 1)));
            return static_cast<std::size_t>(std::popcount(bits));
        }
    }
#endif
    alignas(64) std::array<std::uint32_t, lanes> values;
    const std::size_t count = compress_store(v, bits, values.data());
    for (std::size_t j = 0; j < count && j < room; ++j) dst[j] = values[j];
    return count;
}

// Groups of 64 lanes (64 / lanes batches; lane j of the group is lane j % lanes of batch
// j / lanes), selected by a 64-bit mask (bit j = lane j). With AVX512-VBMI2 (the avx512_vbmi2
// variant) a group's selection costs one byte compress of its 64 positions (vpcompressb)
// instead of one 32-bit compress per batch and output: each 16 selected positions are then
// widened, and become indices by an add or pick their values by two two-register permutes and
// a blend. vpcompressd costs about as much as three plain vector operations on Zen 4, so the
// top-k kernel takes a different route where this is cheap (kGroupCompressIsCheap).
#if defined(__AVX512VBMI2__)
template <class A>
constexpr bool kGroupCompressIsCheap = xsimd::batch<float, A>::size == 16;

// The positions (0..63) of the set bits of `bits`, in order, as the bytes of a vector.
inline __m512i group_positions(std::uint64_t bits) {
    struct Positions {
        alignas(64) std::array<std::uint8_t, 64> byte{};
        constexpr Positions() {
            for (unsigned j = 0; j < 64; ++j) byte[j] = static_cast<std::uint8_t>(j);
        }
    };
    static constexpr Positions kPositions{};
    return _mm512_maskz_compress_epi8(static_cast<__mmask64>(bits), _mm512_load_si512(kPositions.byte.data()));
}

// The 16 lanes of a group of four batches at the positions p (32-bit lanes, each 0..63).
inline __m512 group_lanes(const __m512 v0, const __m512 v1, const __m512 v2, const __m512 v3, __m512i p) {
    const __m512 low = _mm512_permutex2var_ps(v0, p, v1);
    const __m512 high = _mm512_permutex2var_ps(v2, p, v3);
    return _mm512_mask_blend_ps(_mm512_test_epi32_mask(p, _mm512_set1_epi32(32)), low, high);
}

// Calls at(j, p) for each 16 selected positions p of the group (32-bit lanes, in order; the
// last call's lanes past the count are zero), j being the output slot of the first of them;
// returns the count selected.
template <class At>
inline std::size_t for_each_16_selected(std::uint64_t bits, At&& at) {
    __m512i rest = group_positions(bits);
    const auto count = static_cast<std::size_t>(std::popcount(bits));
    for (std::size_t j = 0; j < count; j += 16) {
        at(j, _mm512_cvtepu8_epi32(_mm512_castsi512_si128(rest)));
        rest = _mm512_alignr_epi32(_mm512_setzero_si512(), rest, 4);  // the next 16 positions
    }
    return count;
}
#else
template <class A>
constexpr bool kGroupCompressIsCheap = false;
#endif

template <class A>
inline constexpr std::uint64_t kBatchBits = (std::uint64_t{1} << xsimd::batch<float, A>::size) - 1;

// compress_store over a group: the selected lanes stored in lane order at `values` and their
// positions in the group plus `first` at `indices`; returns how many. Callers leave a whole
// vector of room past the count at both.
template <class A, std::size_t G>
inline std::size_t compress_store_group(const std::array<xsimd::batch<float, A>, G>& v, std::uint64_t bits,
                                        std::uint32_t first, float* values, std::uint32_t* indices) {
    constexpr std::size_t lanes = xsimd::batch<float, A>::size;
    static_assert(lanes * G == 64, "a group is 64 lanes");
#if defined(__AVX512VBMI2__)
    if constexpr (lanes == 16) {
        const __m512i base = _mm512_set1_epi32(static_cast<int>(first));
        return for_each_16_selected(bits, [&](std::size_t j, __m512i p) {
            _mm512_storeu_ps(values + j, group_lanes(v[0], v[1], v[2], v[3], p));
            _mm512_storeu_si512(indices + j, _mm512_add_epi32(p, base));
        });
    }
#endif
    using U = xsimd::batch<std::uint32_t, A>;
    alignas(64) std::array<std::uint32_t, lanes> lane_numbers;
    for (std::size_t j = 0; j < lanes; ++j) lane_numbers[j] = static_cast<std::uint32_t>(j);
    U index = U::load_aligned(lane_numbers.data()) + U(first);
    std::size_t count = 0;
    for (std::size_t g = 0; g < G; ++g) {
        const auto b = static_cast<unsigned>((bits >> (g * lanes)) & kBatchBits<A>);
        compress_store(v[g], b, values + count);
        count += compress_store(index, b, indices + count);
        index += U(static_cast<std::uint32_t>(lanes));
    }
    return count;
}

// The positions of a group's selected lanes plus `first`, as int64 in order, at most `room` of
// them written at dst (whole vectors while there is room, masked stores near the end); returns
// the count selected (which may exceed room).
template <class A>
inline std::size_t compress_positions_widened(std::uint64_t bits, std::uint64_t first, std::int64_t* dst,
                                              std::size_t room) {
    const auto count = static_cast<std::size_t>(std::popcount(bits));
#if defined(__AVX512VBMI2__)
    if constexpr (xsimd::batch<float, A>::size == 16) {
        __m512i rest = group_positions(bits);
        const __m512i base = _mm512_set1_epi64(static_cast<long long>(first));
        for (std::size_t j = 0; j < count && j < room; j += 16) {
            const __m128i p = _mm512_castsi512_si128(rest);
            rest = _mm512_alignr_epi32(_mm512_setzero_si512(), rest, 4);
            const __m512i low = _mm512_add_epi64(_mm512_cvtepu8_epi64(p), base);
            const __m512i high = _mm512_add_epi64(_mm512_cvtepu8_epi64(_mm_srli_si128(p, 8)), base);
            if (room - j >= 16) {
                _mm512_storeu_si512(dst + j, low);
                _mm512_storeu_si512(dst + j + 8, high);
            } else {  // never beyond room nor the count
                const std::size_t left = std::min(count - j, room - j);
                const unsigned written = (1u << left) - 1u;
                _mm512_mask_storeu_epi64(dst + j, static_cast<__mmask8>(written), low);
                _mm512_mask_storeu_epi64(dst + j + 8, static_cast<__mmask8>(written >> 8), high);
            }
        }
        return count;
    }
#endif
    std::size_t written = 0;
    for (std::uint64_t rest = bits; rest != 0 && written < room; rest &= rest - 1)
        dst[written++] = static_cast<std::int64_t>(first + static_cast<std::uint64_t>(std::countr_zero(rest)));
    return count;
}

// x * y + z and x * y - z of f32 batches, rounded once. xsimd 8.1 has no AVX-512 fma: its
// xsimd::fma there is `x * y + z`, which GCC contracts into an FMA of its own choosing, and for
// `a * b + (c * d)` it may fuse either product (it fused c * d in RoPE's in-vector path: 1 ulp
// from the per-head path's fma(a, b, c * d)). Kernels whose vector lanes must round exactly like
// their scalar or narrower tails (RoPE) call these.
template <class B>
inline B fused_multiply_add(const B& x, const B& y, const B& z) {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, typename B::arch_type>) return B(_mm512_fmadd_ps(x, y, z));
#endif
    return xsimd::fma(x, y, z);  // vfmadd on fma3 (avx2), fmla on NEON
}
template <class B>
inline B fused_multiply_sub(const B& x, const B& y, const B& z) {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, typename B::arch_type>) return B(_mm512_fmsub_ps(x, y, z));
#endif
    return xsimd::fms(x, y, z);
}

// bf16 round to nearest even of every lane, left in the top 16 bits. No NaN special case is
// needed in RoPE: every NaN it can produce comes from a bf16 input (its payload has a bit set in
// the top 7 mantissa bits, which arithmetic keeps) or from arithmetic (the default quiet NaN),
// and adding 0x7fff to either cannot carry into the exponent, so NaN stays NaN.
template <class A>
inline xsimd::batch<std::uint32_t, A> round_to_bf16_high(xsimd::batch<float, A> v) {
    using U = xsimd::batch<std::uint32_t, A>;
    const U bits = xsimd::bitwise_cast<U>(v);
    return bits + U(0x7fffu) + ((bits >> 16) & U(1u));
}

// Two f32 batches rounded to bf16 (to nearest even, as round_to_bf16_high) and interleaved: lane
// j holds even[j] in its low 16 bits and odd[j] in its high 16 bits. With AVX512-BF16 one
// vcvtne2ps2bf16 rounds both and one vpermw interleaves them, in place of eleven integer
// operations; that instruction treats subnormal inputs as zero, so a batch holding one takes
// the integer route (a normal f32 never rounds to a subnormal bf16: same exponent range). Its
// NaN is the input's top half with the quiet bit set, the integer route's for the NaNs RoPE
// produces (see round_to_bf16_high).
template <class A>
inline xsimd::batch<std::uint32_t, A> bf16_pairs(xsimd::batch<float, A> even, xsimd::batch<float, A> odd) {
    using U = xsimd::batch<std::uint32_t, A>;
#if defined(__AVX512BF16__)
    if constexpr (xsimd::batch<float, A>::size == 16) {
        constexpr int kSubnormal = 0x20;  // vfpclassps category: denormal, either sign
        if ((_mm512_fpclass_ps_mask(even, kSubnormal) | _mm512_fpclass_ps_mask(odd, kSubnormal)) == 0) {
            // Words 0-15: even's, 16-31: odd's; word 2j of the result is word j, 2j + 1 is 16 + j.
            const __m512i rounded = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(odd, even));
            const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                                         22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
            return _mm512_permutexvar_epi16(interleave, rounded);
        }
    }
#endif
    return (round_to_bf16_high(even) >> 16) | (round_to_bf16_high(odd) & U(0xffff0000u));
}

}  // namespace
}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
