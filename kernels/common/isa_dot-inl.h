// The integer dot products and register transposes of the A3 relevance kernel
// (kernels/score/score-inl.h) for the ISA being compiled: the one place where that kernel meets
// intrinsics and asm. `pmaddwd` pairs, `pmaddubsw` quads with s16 sums, `vpdpbusd` (AVX512-VNNI
// zmm, AVX-VNNI ymm), NEON `sdot`, each with the exact emulation a test runs where this ISA lacks
// the instruction (score_dot.h); 8 x 8 (x86) or 4 x 4 (NEON) transposes of 32-bit lanes and the
// loads that widen a key's bytes into them. Included inside the ISA's translation unit, so
// everything lands in its kvfuse::<isa> anonymous namespace (kernels/README.md).
//
// Templates on the vector type V (an xsimd batch of 32-bit lanes): only this ISA's branch is
// instantiated, the others are not even compiled.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#if defined(__AVX2__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#else
#error "isa_dot-inl.h: the score kernel is compiled for AVX2, AVX-512 or AArch64 only"
#endif

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

// 32-bit lanes of this ISA's full vector.
constexpr std::size_t kIsaLanes = xsimd::batch<std::int32_t, KVFUSE_XSIMD_ARCH>::size;

// The byte and word multiply-adds this copy has as instructions (the rest is emulated).
constexpr bool kHasMadd =  // pmaddwd, pmaddubsw
#if defined(__AVX512BW__)
    kIsaLanes == 16 ||
#endif
#if defined(__AVX2__)
    kIsaLanes == 8 ||
#endif
    false;
constexpr bool kHasDpbusd =
#if defined(__AVX512VNNI__)
    kIsaLanes == 16 ||
#endif
#if defined(__AVXVNNI__)
    kIsaLanes == 8 ||
#endif
    false;
constexpr bool kHasSdot =
#if defined(__ARM_FEATURE_DOTPROD)
    true ||
#endif
    false;

// ---- pairs: two s16 per 32-bit lane ----

// The x86 word multiply-adds of one register width (zmm with AVX512BW, ymm with AVX2), for
// the functions below where V is such a register: each instruction named once per width here,
// the choice between it and the emulation made once per function (has_word_madd<V>).
template <std::size_t kLanes>
struct WordMadd;
#if defined(__AVX512BW__)
template <>
struct WordMadd<16> {
    static __m512i pairs(__m512i a, __m512i b) { return _mm512_madd_epi16(a, b); }        // pmaddwd
    static __m512i quads(__m512i u8, __m512i s8) { return _mm512_maddubs_epi16(u8, s8); }  // pmaddubsw
    static __m512i ones() { return _mm512_set1_epi16(1); }
};
#endif
#if defined(__AVX2__)
template <>
struct WordMadd<8> {
    static __m256i pairs(__m256i a, __m256i b) { return _mm256_madd_epi16(a, b); }
    static __m256i quads(__m256i u8, __m256i s8) { return _mm256_maddubs_epi16(u8, s8); }
    static __m256i ones() { return _mm256_set1_epi16(1); }
};
#endif

// Whether WordMadd has V's width on this ISA (else the functions below emulate it).
template <class V>
constexpr bool has_word_madd() {
#if defined(__AVX512BW__)
    if (V::size == 16) return true;
#endif
#if defined(__AVX2__)
    if (V::size == 8) return true;
#endif
    return false;
}

// Per 32-bit lane: lo(k) * lo(q) + hi(k) * hi(q) with lo/hi the signed 16-bit halves. A
// template so that only this ISA's branch is instantiated.
template <class V>
inline V madd_pairs(V k, V q) {
    if constexpr (has_word_madd<V>())
        return WordMadd<V::size>::pairs(k, q);
    else
        return ((k << 16) >> 16) * ((q << 16) >> 16) + (k >> 16) * (q >> 16);
}

// acc += x for 32-bit (add_to) or 16-bit (add_to_s16) lanes, accumulating in acc's register.
// In the register blocks below (8 sums, 2 keys, the broadcasts and the products in 16 ymm
// registers) GCC 12 writes each sum into the product's register and copies it back: a vmovdqa
// per multiply-add, which made the AVX2 pairs loop about a quarter slower on Zen 3 than the
// same loop without them. The asm pins the destination; elsewhere (32 registers, or NEON) the
// plain add.
template <class V>
inline void add_to(V& acc, V x) {
#if defined(__AVX2__)
    if constexpr (V::size == 8 && sizeof(typename V::value_type) == 4) {
        __m256i a = acc;
        asm("vpaddd %1, %0, %0" : "+x"(a) : "x"(static_cast<__m256i>(x)));
        acc = a;
        return;
    }
#endif
    acc += x;
}

// ---- quads: four bytes per 32-bit lane ----

template <class V>
inline V unsigned_byte(V x, int b) {
    return (x >> (8 * b)) & V(0xFF);
}
template <class V>
inline V signed_byte(V x, int b) {
    return (x << (24 - 8 * b)) >> 24;
}
// 16-bit lanes of a ymm / zmm register in GCC's vector extension (a vector_size that depends on a
// template parameter is not one: hence both, chosen by size).
typedef std::int16_t S16x16 __attribute__((vector_size(32)));
typedef std::int16_t S16x32 __attribute__((vector_size(64)));
typedef std::uint16_t U16x16 __attribute__((vector_size(32)));
typedef std::uint16_t U16x32 __attribute__((vector_size(64)));

// Per lane, the sum of the four byte products, u8 x s8 or s8 x s8 (x unsigned or not, y
// signed): the exact result of the byte dot instructions where this ISA lacks them. With
// pmaddwd (x86) the bytes are widened to s16 (even bytes in place, odd bytes shifted down) and
// summed by two madd_pairs, exact since |255 * 128 * 2| fits s32. The 16-bit shifts are written
// once for ymm and zmm in GCC's vector extension (vpsllw / vpsraw / vpsrlw); 16-bit shifts also
// keep GCC 12 quiet, whose 32-bit AVX-512 shift intrinsics warn about an uninitialised register.
// Elsewhere, 32-bit shifts and multiplies.
template <bool kUnsignedX, class V>
inline V emulated_dot_bytes(V x, V y) {
    if constexpr (has_word_madd<V>()) {
        using Register = typename V::register_type;
        using S16 = std::conditional_t<sizeof(Register) == 64, S16x32, S16x16>;
        using U16 = std::conditional_t<sizeof(Register) == 64, U16x32, U16x16>;
        const U16 xu = (U16)(Register)x, yu = (U16)(Register)y;
        // Even bytes: the low byte of each 16-bit half, sign- or zero-extended; odd: the high byte.
        S16 x_even, x_odd;
        if constexpr (kUnsignedX) {
            x_even = (S16)(xu & 0xff);
            x_odd = (S16)(xu >> 8);
        } else {
            x_even = (S16)(xu << 8) >> 8;
            x_odd = (S16)xu >> 8;
        }
        const S16 y_even = (S16)(yu << 8) >> 8, y_odd = (S16)yu >> 8;
        return madd_pairs(V((Register)x_even), V((Register)y_even)) + madd_pairs(V((Register)x_odd), V((Register)y_odd));
    } else {
        auto x_byte = [&](int b) { return kUnsignedX ? unsigned_byte(x, b) : signed_byte(x, b); };
        V sum = x_byte(0) * signed_byte(y, 0);
        for (int b = 1; b < 4; ++b) sum += x_byte(b) * signed_byte(y, b);
        return sum;
    }
}
template <class V>
inline V emulated_dot_u8s8(V u, V s) {
    return emulated_dot_bytes<true>(u, s);
}
template <class V>
inline V emulated_dot_s8s8(V x, V y) {
    return emulated_dot_bytes<false>(x, y);
}

// acc + per lane the four products u8(keys) x s8(queries); `vpdpbusd` never saturates.
// The zmm form is written as asm with the accumulator tied to its register: with the intrinsic,
// GCC 12 copied each of the 12 accumulators of a 6-row block into a fresh register before its
// vpdpbusd and back after it (24 vmovdqa per 12 multiply-adds in the inner loop).
template <class V>
inline V dot_quads_u8s8(V acc, V keys, V queries) {
#if defined(__AVX512VNNI__)
    if constexpr (V::size == 16) {
        __m512i a = acc;
        asm("vpdpbusd %2, %1, %0" : "+v"(a) : "v"(static_cast<__m512i>(keys)), "v"(static_cast<__m512i>(queries)));
        return a;
    } else
#endif
#if defined(__AVXVNNI__)
    if constexpr (V::size == 8) return _mm256_dpbusd_avx_epi32(acc, keys, queries);
    else
#endif
        return acc + emulated_dot_u8s8(keys, queries);
}

// Keeps x in a register up to this point (an empty asm that reads it). The score kernel's
// register block reads its key vectors once per row; after the last row GCC 12 reused their
// registers for that row's sums and copied the sums back and forth (six register moves per
// 16 vpdpbusd on AVX-512). Read here at the end of each step, the keys keep their registers.
template <class V>
inline void keep_in_register(V x) {
    auto r = static_cast<typename V::register_type>(x);
#if defined(__AVX2__)
    asm volatile("" : : "v"(r));
#else
    asm volatile("" : : "w"(r));
#endif
}

// acc + per lane the four products s8 x s8 (`sdot`).
template <class V>
inline V dot_quads_s8s8(V acc, V keys, V queries) {
#if defined(__ARM_FEATURE_DOTPROD)
    if constexpr (V::size == 4) return vdotq_s32(acc, vreinterpretq_s8_s32(keys), vreinterpretq_s8_s32(queries));
    else
#endif
        return acc + emulated_dot_s8s8(keys, queries);
}

// `pmaddubsw`: per lane two s16, k0 q0 + k1 q1 and k2 q2 + k3 q3 (u8 keys, s8 queries), which
// the caller keeps within s16 so that nothing saturates. The emulation keeps the lane's whole
// sum instead of two halves; add_to_s16 and widen_s16_pairs follow it, so the totals agree.
template <class V>
inline V madd_quads_s16(V keys, V queries) {
    if constexpr (has_word_madd<V>())
        return WordMadd<V::size>::quads(keys, queries);
    else
        return emulated_dot_u8s8(keys, queries);
}
// acc += y per 16-bit half (the emulation keeps whole lanes: see madd_quads_s16); on AVX2 in
// acc's register, as add_to.
template <class V>
inline void add_to_s16(V& acc, V y) {
#if defined(__AVX512BW__)
    if constexpr (V::size == 16) acc = _mm512_add_epi16(acc, y);
    else
#endif
#if defined(__AVX2__)
    if constexpr (V::size == 8) {
        __m256i a = acc;
        asm("vpaddw %1, %0, %0" : "+x"(a) : "x"(static_cast<__m256i>(y)));
        acc = a;
    } else
#endif
        acc += y;
}
// The two s16 of each lane summed into one s32.
template <class V>
inline V widen_s16_pairs(V x) {
    if constexpr (has_word_madd<V>())
        return WordMadd<V::size>::pairs(x, WordMadd<V::size>::ones());
    else
        return x;
}

// Vector registers of this ISA: bounds a register block's rows (score-inl.h, kMaxS16SumRows).
constexpr std::size_t kVectorRegisters =
#if defined(__x86_64__)
    kIsaLanes == 16 ? 32 : 16;
#else
    32;
#endif

// int32 -> f32 lanes. The AVX-512 form is the zero-masked conversion: GCC 12 warns that the plain
// one (xsimd's batch_cast) reads an uninitialised register, which it never does.
template <class V>
inline xsimd::batch<float, typename V::arch_type> int32_to_f32(V x) {
#if defined(__AVX512F__)
    if constexpr (V::size == 16) return _mm512_maskz_cvtepi32_ps(static_cast<__mmask16>(0xffff), x);
    else
#endif
        return xsimd::batch_cast<float>(x);
}

// ---- register transposes of 32-bit lanes ----
//
// Laying out a key tile one element at a time costs a scalar load, shifts and a store per lane:
// instead square blocks of kBlock keys x kBlock lanes, each key's lanes loaded (and widened) as
// one vector, the block transposed in registers and stored as kBlock rows of the tile. x86
// uses 8 x 8 blocks on ymm, in the AVX-512 copy too; NEON 4 x 4.
#if defined(__AVX2__)
using BlockArch = xsimd::avx2;
#else
using BlockArch = xsimd::neon64;
#endif
using Block = xsimd::batch<std::int32_t, BlockArch>;
constexpr std::size_t kBlock = Block::size;

// Each load below reads a fixed number of bytes at p, or, given `avail` (the bytes of the key
// left from p) below that number, only those bytes and zeros after them: the last, partial block
// of a key whose lanes are not a whole number of blocks (head_dim 8, 40, 80, ...), without
// reading past the key. AVX-512 (BW, VL) loads it masked; AVX2 whole 16- or 8-byte pieces, the
// last < 8 bytes by scalar loads into a word; NEON through a zeroed copy.
constexpr std::size_t kWhole = ~std::size_t{0};
template <std::size_t N>
struct Prefix {  // N bytes: p's first min(avail, N), then zeros
    alignas(16) unsigned char bytes[N] = {};
    Prefix(const void* p, std::size_t avail) { std::memcpy(bytes, p, avail < N ? avail : N); }
};
#if defined(__AVX2__)
#if !(defined(__AVX512BW__) && defined(__AVX512VL__))
// The first n < 8 bytes at p as the low bytes of a word, zeros above: at most three scalar
// loads (4, 2, 1 bytes). A copy through the stack instead (memcpy into a zeroed buffer, then a
// vector load of it) stalls on store forwarding: at head dim 8 (int8 pairs, one 8-byte load
// per key) that stall alone took about a third of the tile layout.
inline std::uint64_t load_below8(const unsigned char* p, std::size_t n) {
    std::uint64_t word = 0;
    std::size_t at = 0;
    if (n & 4) {
        std::uint32_t part;
        std::memcpy(&part, p, 4);
        word = part;
        at = 4;
    }
    if (n & 2) {
        std::uint16_t part;
        std::memcpy(&part, p + at, 2);
        word |= static_cast<std::uint64_t>(part) << (8 * at);
        at += 2;
    }
    if (n & 1) word |= static_cast<std::uint64_t>(p[at]) << (8 * at);
    return word;
}
// Out of line: inlined into every load of the tile layout it made the whole-block loads of the
// large head dims (128) about 5 % slower.
[[gnu::noinline]] inline __m128i load_below16(const unsigned char* bytes, std::size_t avail) {
    if (avail >= 8) {
        std::uint64_t low;
        std::memcpy(&low, bytes, 8);
        return _mm_set_epi64x(static_cast<long long>(load_below8(bytes + 8, avail - 8)), static_cast<long long>(low));
    }
    return _mm_cvtsi64_si128(static_cast<long long>(load_below8(bytes, avail)));
}
#endif
inline __m128i load16(const void* p, std::size_t avail) {
    if (avail >= 16) return _mm_loadu_si128(static_cast<const __m128i*>(p));
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << avail) - 1u), p);
#else
    return load_below16(static_cast<const unsigned char*>(p), avail);
#endif
}
inline __m128i load8(const void* p, std::size_t avail) {
    if (avail >= 8) return _mm_loadl_epi64(static_cast<const __m128i*>(p));
    return load16(p, avail);
}
inline __m256i load32(const void* p, std::size_t avail) {
    if (avail >= 32) return _mm256_loadu_si256(static_cast<const __m256i*>(p));
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm256_maskz_loadu_epi8(static_cast<__mmask32>((1u << avail) - 1u), p);
#else
    if (avail <= 16) return _mm256_zextsi128_si256(load16(p, avail));
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(static_cast<const __m128i*>(p))),
                                   load16(static_cast<const unsigned char*>(p) + 16, avail - 16), 1);
#endif
}
#else
// NEON: the first min(avail, n) bytes at p (n <= 16), zero-padded (the short case only: the
// loads below read whole blocks directly).
inline uint8x16_t load_prefix16(const void* p, std::size_t n, std::size_t avail) {
    const Prefix<16> copy(p, avail < n ? avail : n);
    return vld1q_u8(copy.bytes);
}
#endif

// kBlock consecutive 32-bit lanes from memory of any type (f32 keys, int8 quads).
inline Block load_lanes(const void* p, std::size_t avail = kWhole) {
#if defined(__AVX2__)
    return load32(p, avail);
#else
    if (avail >= 16) return vreinterpretq_s32_u8(vld1q_u8(static_cast<const std::uint8_t*>(p)));
    return vreinterpretq_s32_u8(load_prefix16(p, 16, avail));
#endif
}
// 2 * kBlock int8 sign-extended to s16: the pairs lanes of an int8 key.
inline Block load_s8_as_pairs(const std::int8_t* p, std::size_t avail = kWhole) {
#if defined(__AVX2__)
    return _mm256_cvtepi8_epi16(load16(p, avail));
#else
    const int8x8_t bytes = avail >= 8 ? vld1_s8(p) : vget_low_s8(vreinterpretq_s8_u8(load_prefix16(p, 8, avail)));
    return vreinterpretq_s32_s16(vmovl_s8(bytes));
#endif
}
// kBlock bytes, each zero-extended into its own lane.
inline Block load_u8_as_lanes(const std::uint8_t* p, std::size_t avail = kWhole) {
#if defined(__AVX2__)
    return _mm256_cvtepu8_epi32(load8(p, avail));
#else
    std::uint32_t word = 0;
    std::memcpy(&word, p, avail < 4 ? avail : 4);
    return vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vcreate_u8(word)))));
#endif
}
// kBlock little-endian 16-bit words, each zero-extended into its own lane.
inline Block load_u16_as_lanes(const std::uint8_t* p, std::size_t avail = kWhole) {
#if defined(__AVX2__)
    return _mm256_cvtepu16_epi32(load16(p, avail));
#else
    const uint8x8_t bytes = avail >= 8 ? vld1_u8(p) : vget_low_u8(load_prefix16(p, 8, avail));
    return vreinterpretq_s32_u32(vmovl_u16(vreinterpret_u16_u8(bytes)));
#endif
}
// kBlock f16 / bf16 values widened exactly, as the bits of f32 lanes.
inline Block load_f16_as_lanes(const std::uint16_t* p, std::size_t avail = kWhole) {
#if defined(__AVX2__)
    return _mm256_castps_si256(_mm256_cvtph_ps(load16(p, avail)));
#else
    const uint8x8_t bytes = avail >= 8 ? vld1_u8(reinterpret_cast<const std::uint8_t*>(p)) : vget_low_u8(load_prefix16(p, 8, avail));
    return vreinterpretq_s32_f32(vcvt_f32_f16(vreinterpret_f16_u8(bytes)));
#endif
}
inline Block load_bf16_as_lanes(const std::uint16_t* p, std::size_t avail = kWhole) {
#if defined(__AVX2__)
    return _mm256_slli_epi32(_mm256_cvtepu16_epi32(load16(p, avail)), 16);
#else
    const uint8x8_t bytes = avail >= 8 ? vld1_u8(reinterpret_cast<const std::uint8_t*>(p)) : vget_low_u8(load_prefix16(p, 8, avail));
    return vreinterpretq_s32_u32(vshll_n_u16(vreinterpret_u16_u8(bytes), 16));
#endif
}
// rows[r] lane c -> out[c * stride + r] for c < count: the block transposed into its first
// `count` tile rows (32-byte aligned on x86: stride and the block's first key are multiples of
// 8 lanes).
inline void store_transposed(const Block (&rows)[kBlock], void* out, std::size_t stride, std::size_t count = kBlock) {
    auto* base = static_cast<std::int32_t*>(out);
#if defined(__AVX2__)
    __m256i t[8], u[8];
    for (int r = 0; r < 8; r += 2) {
        t[r] = _mm256_unpacklo_epi32(rows[r], rows[r + 1]);      // r0c0 r1c0 r0c1 r1c1 | c4 c5
        t[r + 1] = _mm256_unpackhi_epi32(rows[r], rows[r + 1]);  // r0c2 r1c2 r0c3 r1c3 | c6 c7
    }
    for (int h = 0; h < 8; h += 4) {
        u[h] = _mm256_unpacklo_epi64(t[h], t[h + 2]);          // rows h..h+3 of c0 | c4
        u[h + 1] = _mm256_unpackhi_epi64(t[h], t[h + 2]);      // c1 | c5
        u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]);  // c2 | c6
        u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]);  // c3 | c7
    }
    for (std::size_t c = 0; c < 4; ++c) {
        if (c < count) _mm256_store_si256(reinterpret_cast<__m256i*>(base + c * stride), _mm256_permute2x128_si256(u[c], u[c + 4], 0x20));
        if (c + 4 < count)
            _mm256_store_si256(reinterpret_cast<__m256i*>(base + (c + 4) * stride), _mm256_permute2x128_si256(u[c], u[c + 4], 0x31));
    }
#else
    const int32x4x2_t a = vtrnq_s32(rows[0], rows[1]), b = vtrnq_s32(rows[2], rows[3]);  // r0c0 r1c0 r0c2 r1c2, ...
    const int32x4_t c[4] = {vcombine_s32(vget_low_s32(a.val[0]), vget_low_s32(b.val[0])),
                            vcombine_s32(vget_low_s32(a.val[1]), vget_low_s32(b.val[1])),
                            vcombine_s32(vget_high_s32(a.val[0]), vget_high_s32(b.val[0])),
                            vcombine_s32(vget_high_s32(a.val[1]), vget_high_s32(b.val[1]))};
    for (std::size_t i = 0; i < 4 && i < count; ++i)
        vst1q_u8(reinterpret_cast<std::uint8_t*>(base + i * stride), vreinterpretq_u8_s32(c[i]));
#endif
}

}  // namespace
}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
