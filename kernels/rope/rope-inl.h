// RoPE rotation written once on the xsimd architecture. Included once per ISA by a translation
// unit that CMake generates, which defines KVFUSE_ISA_NAMESPACE (avx2, avx512, neon) and
// KVFUSE_XSIMD_ARCH first and is compiled with that ISA's flags. No include guard on purpose:
// everything here lives in kvfuse::<isa>, and helpers in an anonymous namespace, so no inline
// function compiled for one ISA can be picked by the linker for another.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#include "kernels/common/bf16.h"
#include "kernels/common/isa_ops-inl.h"
#include "kernels/common/half-inl.h"
#include "kernels/common/key_layout.h"
#include "kernels/common/narrower_batch.h"
#include "kernels/kernel_table.h"
#include "kernels/call_context.h"
#include "kernels/common/workers.h"
#include "kernels/rope/rope_plan.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
using U32s = xsimd::batch<std::uint32_t, Arch>;
using U64s = xsimd::batch<std::uint64_t, Arch>;
constexpr std::size_t kLanes = F32s::size;

using detail::RopePlan;
using detail::RopeTable;

// (x1, x2) -> (x1*c - x2*s, x1*s + x2*c), the same f32 FMA sequence as the vector body.
inline void rotate_pair(float x1, float x2, float c, float s, float& o1, float& o2) {
    o1 = std::fma(x1, c, -(x2 * s));
    o2 = std::fma(x1, s, x2 * c);
}

// Swaps the two floats of every 64-bit lane: a rotate of the lane by 32 bits needs no shuffle
// (and xsimd 8.1's generic swizzle is a full cross-lane permute on every ISA).
inline F32s swap_pairs(F32s v) {
    const U64s wide = xsimd::bitwise_cast<U64s>(v);
    return xsimd::bitwise_cast<F32s>((wide << 32) | (wide >> 32));
}

inline void rotate_bf16_pair(std::uint16_t* a, std::uint16_t* b, const std::uint16_t* sa,
                             const std::uint16_t* sb, float c, float s) {
    float o1, o2;
    rotate_pair(detail::bf16_bits_to_f32(*sa), detail::bf16_bits_to_f32(*sb), c, s, o1, o2);
    *a = detail::f32_to_bf16_bits(o1);
    *b = detail::f32_to_bf16_bits(o2);
}

// --- f32 --------------------------------------------------------------------------------------

// Pairs [i, i + B::size) of a NeoX head with B the full or a narrower batch.
// The tables come as plain pointers, read once by the caller: a store through dst may alias a
// std::vector's own pointer as far as the compiler knows, so `t.cos.data()` inside the loop was
// reloaded from memory after every store.
template <class B>
inline void neox_f32_step(const float* src, float* dst, std::size_t half, const float* cos, const float* sin,
                          std::size_t i) {
    const B x1 = B::load_unaligned(src + i);
    const B x2 = B::load_unaligned(src + half + i);
    const B c = B::load_unaligned(cos + i);
    const B s = B::load_unaligned(sin + i);
    fused_multiply_sub(x1, c, x2 * s).store_unaligned(dst + i);
    fused_multiply_add(x1, s, x2 * c).store_unaligned(dst + half + i);
}

// A half head that is not a whole number of vectors (D = 80 on AVX-512: 40 pairs) ends on a
// narrower vector with the same fused operations, not on the scalar loop. Returns where it
// stopped.
template <class Narrow>
std::size_t neox_f32_tail(const float* src, float* dst, std::size_t half, const float* cos, const float* sin,
                          std::size_t i) {
    if constexpr (!std::is_void_v<Narrow>) {
        using B = xsimd::batch<float, Narrow>;
        for (; i + B::size <= half; i += B::size) neox_f32_step<B>(src, dst, half, cos, sin, i);
    }
    return i;
}

void neox_f32(const float* src, float* dst, std::size_t half, const RopeTable& t) {
    const float *cos = t.cos.data(), *sin = t.sin.data();
    std::size_t i = 0;
    for (; i + kLanes <= half; i += kLanes) neox_f32_step<F32s>(src, dst, half, cos, sin, i);
    i = neox_f32_tail<detail::narrower_fused_arch_t<Arch>>(src, dst, half, cos, sin, i);
    for (; i < half; ++i) rotate_pair(src[i], src[half + i], t.cos[i], t.sin[i], dst[i], dst[half + i]);
}

// `heads` NeoX heads of kVectors vectors B per half (every dim rotating), head h at
// src + h * src_stride: the row's tables are loaded into registers once and kept across its heads.
// The per-head path (a call per head, its tables read again for every vector) ran the L2 shape at
// 58-85 % of copy on one thread; this loop at 170-195 % (bench_rope, Zen 4, D = 64, 80, 128).
// The FMA sequence of neox_f32_step, so the bits are the per-head path's (test_rope
// NeoxF32RowsMatchTheFmaFormulaBitForBit).
template <class B, std::size_t kVectors>
void neox_f32_heads_fixed(const float* src, std::size_t src_stride, float* dst, std::size_t dst_stride,
                          std::size_t heads, const RopeTable& t) {
    constexpr std::size_t half = kVectors * B::size;
    B c[kVectors], s[kVectors];
    for (std::size_t v = 0; v < kVectors; ++v) {
        c[v] = B::load_unaligned(t.cos.data() + v * B::size);
        s[v] = B::load_unaligned(t.sin.data() + v * B::size);
    }
    for (std::size_t h = 0; h < heads; ++h) {
        const float* x = src + h * src_stride;
        float* y = dst + h * dst_stride;
        for (std::size_t v = 0; v < kVectors; ++v) {
            const B x1 = B::load_unaligned(x + v * B::size);
            const B x2 = B::load_unaligned(x + half + v * B::size);
            fused_multiply_sub(x1, c[v], x2 * s[v]).store_unaligned(y + v * B::size);
            fused_multiply_add(x1, s[v], x2 * c[v]).store_unaligned(y + half + v * B::size);
        }
    }
}

// The full vector first, else a narrower one with a fused multiply-add (AVX-512's ymm: D = 80 is
// five of them); kVectors up to 8 (AVX2 at D = 128: the compiler keeps what registers allow).
template <class B>
bool neox_f32_heads_with(const float* src, std::size_t src_stride, float* dst, std::size_t dst_stride,
                         std::size_t heads, std::size_t half, const RopeTable& t) {
    if (half % B::size != 0) return false;
    switch (half / B::size) {
        case 1: neox_f32_heads_fixed<B, 1>(src, src_stride, dst, dst_stride, heads, t); return true;
        case 2: neox_f32_heads_fixed<B, 2>(src, src_stride, dst, dst_stride, heads, t); return true;
        case 3: neox_f32_heads_fixed<B, 3>(src, src_stride, dst, dst_stride, heads, t); return true;
        case 4: neox_f32_heads_fixed<B, 4>(src, src_stride, dst, dst_stride, heads, t); return true;
        case 5: neox_f32_heads_fixed<B, 5>(src, src_stride, dst, dst_stride, heads, t); return true;
        case 6: neox_f32_heads_fixed<B, 6>(src, src_stride, dst, dst_stride, heads, t); return true;
        case 8: neox_f32_heads_fixed<B, 8>(src, src_stride, dst, dst_stride, heads, t); return true;
        default: return false;
    }
}

// `heads` NeoX f32 heads of `half` pairs through neox_f32_heads_fixed; false where the half head
// is no such number of vectors (the caller goes head by head).
bool neox_f32_heads(const float* src, std::size_t src_stride, float* dst, std::size_t dst_stride, std::size_t heads,
                    std::size_t half, const RopeTable& t) {
    using Narrow = detail::narrower_fused_arch_t<Arch>;
    if (neox_f32_heads_with<F32s>(src, src_stride, dst, dst_stride, heads, half, t)) return true;
    if constexpr (!std::is_void_v<Narrow>)
        return neox_f32_heads_with<xsimd::batch<float, Narrow>>(src, src_stride, dst, dst_stride, heads, half, t);
    return false;
}

// `count` interleaved elements (even) with per-element tables cos2/sin2, from element `first` of
// the tables (a chunk of a flattened row).
void interleaved_f32(const float* src, float* dst, std::size_t count, const RopeTable& t, std::size_t first = 0) {
    const float *cos2 = t.cos2.data() + first, *sin2 = t.sin2.data() + first;  // see neox_f32_step
    std::size_t i = 0;
    for (; i + kLanes <= count; i += kLanes) {
        const F32s x = F32s::load_unaligned(src + i);
        const F32s c = F32s::load_unaligned(cos2 + i);
        const F32s s = F32s::load_unaligned(sin2 + i);
        fused_multiply_add(x, c, swap_pairs(x) * s).store_unaligned(dst + i);
    }
    for (; i < count; i += 2)
        rotate_pair(src[i], src[i + 1], t.cos[(first + i) / 2], t.sin[(first + i) / 2], dst[i], dst[i + 1]);
}

// --- bf16 -------------------------------------------------------------------------------------
// A 32-bit lane holds two neighbouring bf16 values; shifting it left by 16 or masking its top
// half widens each to f32 exactly, so no cross-lane shuffle is needed in either pairing.

void interleaved_bf16(const std::uint16_t* src, std::uint16_t* dst, std::size_t pairs,
                      const RopeTable& t, std::size_t first_pair = 0) {
    const float *cos = t.cos.data() + first_pair, *sin = t.sin.data() + first_pair;  // see neox_f32_step
    std::size_t i = 0;
    for (; i + kLanes <= pairs; i += kLanes) {
        const U32s v = U32s::load_unaligned(reinterpret_cast<const std::uint32_t*>(src + 2 * i));
        const F32s even = xsimd::bitwise_cast<F32s>(v << 16);
        const F32s odd = xsimd::bitwise_cast<F32s>(v & U32s(0xffff0000u));
        const F32s c = F32s::load_unaligned(cos + i);
        const F32s s = F32s::load_unaligned(sin + i);
        bf16_pairs(fused_multiply_sub(even, c, odd * s), fused_multiply_add(even, s, odd * c))
            .store_unaligned(reinterpret_cast<std::uint32_t*>(dst + 2 * i));
    }
    for (; i < pairs; ++i)
        rotate_bf16_pair(dst + 2 * i, dst + 2 * i + 1, src + 2 * i, src + 2 * i + 1, t.cos[first_pair + i],
                         t.sin[first_pair + i]);
}

void neox_bf16(const std::uint16_t* src, std::uint16_t* dst, std::size_t half,
               const RopeTable& t) {
    // Lane j holds elements (2j, 2j+1) of the first half and (half+2j, half+2j+1) of the
    // second: even with even (pair 2j), odd with odd (pair 2j+1).
    const std::size_t lanes_total = half / 2;
    const float *cos_even = t.cos_even.data(), *sin_even = t.sin_even.data();  // see neox_f32_step
    const float *cos_odd = t.cos_odd.data(), *sin_odd = t.sin_odd.data();
    std::size_t j = 0;
    for (; j + kLanes <= lanes_total; j += kLanes) {
        const U32s a = U32s::load_unaligned(reinterpret_cast<const std::uint32_t*>(src + 2 * j));
        const U32s b =
            U32s::load_unaligned(reinterpret_cast<const std::uint32_t*>(src + half + 2 * j));
        const F32s a_even = xsimd::bitwise_cast<F32s>(a << 16);
        const F32s a_odd = xsimd::bitwise_cast<F32s>(a & U32s(0xffff0000u));
        const F32s b_even = xsimd::bitwise_cast<F32s>(b << 16);
        const F32s b_odd = xsimd::bitwise_cast<F32s>(b & U32s(0xffff0000u));
        const F32s ce = F32s::load_unaligned(cos_even + j);
        const F32s se = F32s::load_unaligned(sin_even + j);
        const F32s co = F32s::load_unaligned(cos_odd + j);
        const F32s so = F32s::load_unaligned(sin_odd + j);
        bf16_pairs(fused_multiply_sub(a_even, ce, b_even * se), fused_multiply_sub(a_odd, co, b_odd * so))
            .store_unaligned(reinterpret_cast<std::uint32_t*>(dst + 2 * j));
        bf16_pairs(fused_multiply_add(a_even, se, b_even * ce), fused_multiply_add(a_odd, so, b_odd * co))
            .store_unaligned(reinterpret_cast<std::uint32_t*>(dst + half + 2 * j));
    }
    for (std::size_t i = 2 * j; i < half; ++i)
        rotate_bf16_pair(dst + i, dst + half + i, src + i, src + half + i, t.cos[i], t.sin[i]);
}

// --- f16 -------------------------------------------------------------------------------------
// Widened to f32 vectors (F16C's vcvtph2ps, NEON's fcvtl), rotated by exactly the f32 sequence
// with the f32 tables (cos/sin per pair for NeoX, cos2/sin2 for interleaved pairs), and rounded
// back once to nearest even (vcvtps2ph / fcvtn). The scalar tails convert through the same
// instructions one value at a time.

inline void rotate_f16_pair(std::uint16_t* a, std::uint16_t* b, const std::uint16_t* sa, const std::uint16_t* sb,
                            float c, float s) {
    float o1, o2;
    rotate_pair(f16_one(*sa), f16_one(*sb), c, s, o1, o2);
    *a = f16_from_one(o1);
    *b = f16_from_one(o2);
}

template <class B>
inline void neox_f16_step(const std::uint16_t* src, std::uint16_t* dst, std::size_t half, const float* cos,
                          const float* sin, std::size_t i) {
    const B x1 = load_f16<B>(src + i);
    const B x2 = load_f16<B>(src + half + i);
    const B c = B::load_unaligned(cos + i);
    const B s = B::load_unaligned(sin + i);
    store_f16(dst + i, fused_multiply_sub(x1, c, x2 * s));
    store_f16(dst + half + i, fused_multiply_add(x1, s, x2 * c));
}

template <class Narrow>
std::size_t neox_f16_tail(const std::uint16_t* src, std::uint16_t* dst, std::size_t half, const float* cos,
                          const float* sin, std::size_t i) {
    if constexpr (!std::is_void_v<Narrow>) {
        using B = xsimd::batch<float, Narrow>;
        for (; i + B::size <= half; i += B::size) neox_f16_step<B>(src, dst, half, cos, sin, i);
    }
    return i;
}

void neox_f16(const std::uint16_t* src, std::uint16_t* dst, std::size_t half, const RopeTable& t) {
    const float *cos = t.cos.data(), *sin = t.sin.data();  // see neox_f32_step
    std::size_t i = 0;
    for (; i + kLanes <= half; i += kLanes) neox_f16_step<F32s>(src, dst, half, cos, sin, i);
    i = neox_f16_tail<detail::narrower_fused_arch_t<Arch>>(src, dst, half, cos, sin, i);
    for (; i < half; ++i) rotate_f16_pair(dst + i, dst + half + i, src + i, src + half + i, t.cos[i], t.sin[i]);
}

void interleaved_f16(const std::uint16_t* src, std::uint16_t* dst, std::size_t count, const RopeTable& t,
                     std::size_t first = 0) {
    const float *cos2 = t.cos2.data() + first, *sin2 = t.sin2.data() + first;  // see neox_f32_step
    std::size_t i = 0;
    for (; i + kLanes <= count; i += kLanes) {
        const F32s x = load_f16<F32s>(src + i);
        const F32s c = F32s::load_unaligned(cos2 + i);
        const F32s s = F32s::load_unaligned(sin2 + i);
        store_f16(dst + i, fused_multiply_add(x, c, swap_pairs(x) * s));
    }
    for (; i < count; i += 2)
        rotate_f16_pair(dst + i, dst + i + 1, src + i, src + i + 1, t.cos[(first + i) / 2], t.sin[(first + i) / 2]);
}

// --- NeoX heads narrower than a vector (RopePlan::neox_small_heads) --------------------------
// A vector holds whole heads of D = 4, 8 or 16 dims. Two constant in-vector permutes give every
// lane the first and the second element of its pair (each head's first half repeated, then its
// second half repeated), and one table pair per row (period D) finishes the rotation:
// out = fma(firsts, small_first, seconds * small_second), the FMA sequence of the per-head
// paths, so both give the same bits (tests/test_layouts.cpp compares them). The heads left
// over after the last whole vector take the per-head path. x86 only: NEON's 4 lanes hold at
// most one such head, which its per-head path already handles in one vector.

// Lane i of a permute over runs of kUnits lanes per head: the lane of the same offset in the
// head's first (kSecond = false) or second half.
template <std::size_t kUnits, bool kSecond>
struct HalfRepeat {
    static constexpr std::uint32_t get(std::size_t i, std::size_t) {
        return static_cast<std::uint32_t>((i & ~(kUnits - 1)) | (kSecond ? kUnits / 2 : 0) | (i & (kUnits / 2 - 1)));
    }
};

template <std::size_t kHeadDim>
constexpr bool kSmallHeadsInVector = kLanes >= 8 && kHeadDim <= kLanes;

// f32 and f16 (widened to f32 lanes): `count` elements of packed heads of kHeadDim dims.
template <std::size_t kHeadDim, class T>
void neox_small_heads(const T* src, T* dst, std::size_t count, const RopeTable& t) {
    constexpr auto firsts = xsimd::make_batch_constant<U32s, HalfRepeat<kHeadDim, false>>();
    constexpr auto seconds = xsimd::make_batch_constant<U32s, HalfRepeat<kHeadDim, true>>();
    const F32s first_table = F32s::load_unaligned(t.small_first), second_table = F32s::load_unaligned(t.small_second);
    std::size_t i = 0;
    for (; i + kLanes <= count; i += kLanes) {
        F32s x;
        if constexpr (std::is_same_v<T, float>)
            x = F32s::load_unaligned(src + i);
        else
            x = load_f16<F32s>(src + i);
        const F32s out =
            fused_multiply_add(xsimd::swizzle(x, firsts), first_table, xsimd::swizzle(x, seconds) * second_table);
        if constexpr (std::is_same_v<T, float>)
            out.store_unaligned(dst + i);
        else
            store_f16(dst + i, out);
    }
    for (; i < count; i += kHeadDim) {
        if constexpr (std::is_same_v<T, float>)
            neox_f32(src + i, dst + i, kHeadDim / 2, t);
        else
            neox_f16(src + i, dst + i, kHeadDim / 2, t);
    }
}

// bf16: a 32-bit lane holds elements (2l, 2l + 1), a head kHeadDim / 2 lanes; the even and odd
// elements are widened and rotated apart, as in neox_bf16.
template <std::size_t kHeadDim>
void neox_small_heads_bf16(const std::uint16_t* src, std::uint16_t* dst, std::size_t count, const RopeTable& t) {
    constexpr auto firsts = xsimd::make_batch_constant<U32s, HalfRepeat<kHeadDim / 2, false>>();
    constexpr auto seconds = xsimd::make_batch_constant<U32s, HalfRepeat<kHeadDim / 2, true>>();
    const F32s first_even = F32s::load_unaligned(t.small_first_even), second_even = F32s::load_unaligned(t.small_second_even);
    const F32s first_odd = F32s::load_unaligned(t.small_first_odd), second_odd = F32s::load_unaligned(t.small_second_odd);
    const U32s high(0xffff0000u);
    std::size_t i = 0;
    for (; i + 2 * kLanes <= count; i += 2 * kLanes) {
        const U32s v = U32s::load_unaligned(reinterpret_cast<const std::uint32_t*>(src + i));
        const U32s a = xsimd::swizzle(v, firsts), b = xsimd::swizzle(v, seconds);
        bf16_pairs(fused_multiply_add(xsimd::bitwise_cast<F32s>(a << 16), first_even,
                                      xsimd::bitwise_cast<F32s>(b << 16) * second_even),
                   fused_multiply_add(xsimd::bitwise_cast<F32s>(a & high), first_odd,
                                      xsimd::bitwise_cast<F32s>(b & high) * second_odd))
            .store_unaligned(reinterpret_cast<std::uint32_t*>(dst + i));
    }
    for (; i < count; i += kHeadDim) neox_bf16(src + i, dst + i, kHeadDim / 2, t);
}

template <std::size_t kHeadDim, class T>
bool neox_small_heads_sized(const T* src, T* dst, std::size_t count, const RopeTable& t, bool bf16) {
    if constexpr (!kSmallHeadsInVector<kHeadDim>) {
        return false;
    } else {
        if constexpr (std::is_same_v<T, std::uint16_t>)
            if (bf16) {
                neox_small_heads_bf16<kHeadDim>(src, dst, count, t);
                return true;
            }
        neox_small_heads<kHeadDim>(src, dst, count, t);
        return true;
    }
}

// The row of `heads` packed NeoX heads through the in-vector path; false where it does not
// apply (head dim wider than this ISA's vector), and the caller goes head by head.
template <class T>
bool neox_small_heads_row(const RopePlan& plan, const T* src, T* dst, std::size_t heads, const RopeTable& t, bool bf16) {
    const std::size_t head_dim = static_cast<std::size_t>(plan.config.head_dim), count = heads * head_dim;
    switch (head_dim) {
        case 4: return neox_small_heads_sized<4>(src, dst, count, t, bf16);
        case 8: return neox_small_heads_sized<8>(src, dst, count, t, bf16);
        case 16: return neox_small_heads_sized<16>(src, dst, count, t, bf16);
        default: return false;
    }
}

template <kvfuse_dtype kType>
using Element = std::conditional_t<kType == KVFUSE_DTYPE_F32, float, std::uint16_t>;

// Elements [first, first + count) of a flattened row (interleaved pairs, every dim rotating).
template <kvfuse_dtype kType>
void sweep_flattened(const Element<kType>* src, Element<kType>* dst, std::size_t count, const RopeTable& table,
                     std::size_t first) {
    if constexpr (kType == KVFUSE_DTYPE_F32)
        interleaved_f32(src, dst, count, table, first);
    else if constexpr (kType == KVFUSE_DTYPE_F16)
        interleaved_f16(src, dst, count, table, first);
    else
        interleaved_bf16(src, dst, count / 2, table, first / 2);
}

// Elements of a flattened row gathered per chunk when its heads are apart: a multiple of every
// ISA's vector (in pairs for bf16), small enough for the stack.
constexpr std::size_t kRowChunk = 2048;

// One token: its heads at src + h * src_head_stride, written to dst + h * dst_head_stride.
template <kvfuse_dtype kType>
void rotate_row(const RopePlan& plan, const Element<kType>* src, std::size_t src_head_stride, Element<kType>* dst,
                std::size_t dst_head_stride, std::size_t heads, const RopeTable& table) {
    using T = Element<kType>;
    const std::size_t head_dim = static_cast<std::size_t>(plan.config.head_dim);
    const std::size_t rotary = static_cast<std::size_t>(plan.rotary_dims);
    const bool interleaved = plan.config.pairing == KVFUSE_ROPE_INTERLEAVED;
    if (plan.row_flattened(heads)) {
        const std::size_t n = heads * head_dim;
        if (src_head_stride == head_dim && dst_head_stride == head_dim) {
            sweep_flattened<kType>(src, dst, n, table, 0);
            return;
        }
        // Heads apart: the row is gathered into a buffer and swept there as the packed row is,
        // chunk by chunk (whole vectors: the same vector / tail split at the same elements), so
        // that the bits are the packed call's. Rotating head by head would split it elsewhere,
        // and a tail's result can differ from a vector lane's in the last bit.
        alignas(64) T buffer[kRowChunk];
        for (std::size_t first = 0; first < n; first += kRowChunk) {
            const std::size_t count = std::min(kRowChunk, n - first);
            for (std::size_t e = first; e < first + count;) {
                const std::size_t h = e / head_dim, d = e % head_dim, run = std::min(head_dim - d, first + count - e);
                std::memcpy(buffer + (e - first), src + h * src_head_stride + d, run * sizeof(T));
                e += run;
            }
            sweep_flattened<kType>(buffer, buffer, count, table, first);
            for (std::size_t e = first; e < first + count;) {
                const std::size_t h = e / head_dim, d = e % head_dim, run = std::min(head_dim - d, first + count - e);
                std::memcpy(dst + h * dst_head_stride + d, buffer + (e - first), run * sizeof(T));
                e += run;
            }
        }
        return;
    }
    if (plan.neox_small_heads() && src_head_stride == head_dim && dst_head_stride == head_dim &&
        neox_small_heads_row(plan, src, dst, heads, table, kType == KVFUSE_DTYPE_BF16))
        return;
    if constexpr (kType == KVFUSE_DTYPE_F32)
        if (!interleaved && rotary == head_dim &&
            neox_f32_heads(src, src_head_stride, dst, dst_head_stride, heads, rotary / 2, table))
            return;
    for (std::size_t h = 0; h < heads; ++h) {
        const T* s = src + h * src_head_stride;
        T* d = dst + h * dst_head_stride;
        if constexpr (kType == KVFUSE_DTYPE_F32) {
            if (interleaved)
                interleaved_f32(s, d, rotary, table);
            else
                neox_f32(s, d, rotary / 2, table);
        } else if constexpr (kType == KVFUSE_DTYPE_F16) {
            if (interleaved)
                interleaved_f16(s, d, rotary, table);
            else
                neox_f16(s, d, rotary / 2, table);
        } else {
            if (interleaved)
                interleaved_bf16(s, d, rotary / 2, table);
            else
                neox_bf16(s, d, rotary / 2, table);
        }
        if (s != d && rotary < head_dim) std::memcpy(d + rotary, s + rotary, (head_dim - rotary) * sizeof(T));
    }
}

// Every token of the call through the two layouts (packed, strided or paged: the same row
// rotation, so any layout gives the packed call's bits).
template <kvfuse_dtype kType>
void rotate_rows(kvfuse_context& context, const RopePlan& plan, kvfuse_dtype dtype, const Element<kType>* src,
                 const detail::KeyLayout& src_layout, Element<kType>* dst, const detail::KeyLayout& dst_layout,
                 std::size_t tokens, std::size_t heads, const std::int64_t* deltas, std::int64_t delta) {
    const std::size_t work = tokens * heads * static_cast<std::size_t>(plan.config.head_dim);
    // Below a few hundred KiB the fork/join costs more than the second core gives back; and
    // even an `if(false)` parallel region costs microseconds, so small calls run on one worker.
    const std::size_t workers = work < detail::context_tuning(context).rope_parallel_work
                                    ? 1
                                    : std::min(detail::context_workers(context), tokens);
    // Per worker and kept across calls by the context: a table is built only for a plan, shape
    // and delta none of the recent ones had (RopeTableCache), so chunks moved by their deltas
    // layer after layer, or one decode step after another, cost no sin/cos. Reserved here, so
    // that a worker building one never allocates.
    detail::reserve_rope_tables(context, workers, plan, dtype, heads);
    const detail::RopePositionSlot* positions =
        detail::context_rope_positions(context).prepare(plan, dtype, heads, deltas, tokens, delta);
    const auto table_for = [&](detail::RopeTableCache& tables, std::int64_t d) -> const RopeTable& {
        if (positions != nullptr)
            if (const RopeTable* table = positions->find(d)) return *table;
        return tables.get(plan, dtype, heads, d);
    };
    const std::size_t row_elements = heads * static_cast<std::size_t>(plan.config.head_dim);
    const std::size_t head_dim = static_cast<std::size_t>(plan.config.head_dim);
    // NeoX with every dim rotating: a head's rotation does not depend on its token, so packed
    // rows of one delta can be swept as one row of more heads.
    const bool merge_rows = plan.config.pairing == KVFUSE_ROPE_NEOX && static_cast<std::size_t>(plan.rotary_dims) == head_dim &&
                            src_layout.head_stride == head_dim && dst_layout.head_stride == head_dim;
    auto rotate_range = [&](std::size_t worker) {
        detail::RopeTableCache& tables = detail::context_rope_tables(context, worker);
        const std::size_t end = tokens * (worker + 1) / workers;
        if (merge_rows) {
            // Heads this small make a row a few vectors (D = 8: per-row work, finding the table and
            // the addresses, cost more than the rotation), and at D = 64 a per-row call still
            // showed. Runs of tokens with one delta whose rows
            // follow each other on both sides are swept as one row of heads.
            for (std::size_t t = tokens * worker / workers; t < end;) {
                const std::int64_t d = deltas ? deltas[t] : delta;
                const std::size_t src_row = src_layout.row(t), dst_row = dst_layout.row(t);
                std::size_t run = 1;
                while (t + run < end && (deltas == nullptr || deltas[t + run] == d) &&
                       src_layout.row(t + run) == src_row + run * row_elements &&
                       dst_layout.row(t + run) == dst_row + run * row_elements)
                    ++run;
                rotate_row<kType>(plan, src + src_row, src_layout.head_stride, dst + dst_row, dst_layout.head_stride,
                                  heads * run, table_for(tables, d));
                t += run;
            }
            return;
        }
        for (std::size_t t = tokens * worker / workers; t < end; ++t) {
            const std::int64_t d = deltas ? deltas[t] : delta;
            rotate_row<kType>(plan, src + src_layout.row(t), src_layout.head_stride, dst + dst_layout.row(t),
                              dst_layout.head_stride, heads, table_for(tables, d));
        }
    };
    detail::run_workers(context, workers, rotate_range);
}

void f32_to_f16(const float* src, std::uint16_t* dst, std::size_t count);
void f16_to_f32(const std::uint16_t* src, float* dst, std::size_t count);

// One head of `type` widened exactly to f32, and an f32 head rounded to `type` (nearest even).
void widen_head(kvfuse_dtype type, const void* base, std::size_t offset, float* out, std::size_t n) {
    if (type == KVFUSE_DTYPE_F32) {
        std::memcpy(out, static_cast<const float*>(base) + offset, n * sizeof(float));
    } else if (type == KVFUSE_DTYPE_F16) {
        f16_to_f32(static_cast<const std::uint16_t*>(base) + offset, out, n);
    } else {
        const auto* in = static_cast<const std::uint16_t*>(base) + offset;
        for (std::size_t i = 0; i < n; ++i) out[i] = detail::bf16_bits_to_f32(in[i]);
    }
}
void narrow_head(kvfuse_dtype type, const float* in, void* base, std::size_t offset, std::size_t n) {
    if (type == KVFUSE_DTYPE_F32) {
        std::memcpy(static_cast<float*>(base) + offset, in, n * sizeof(float));
    } else if (type == KVFUSE_DTYPE_F16) {
        f32_to_f16(in, static_cast<std::uint16_t*>(base) + offset, n);
    } else {
        auto* out = static_cast<std::uint16_t*>(base) + offset;
        for (std::size_t i = 0; i < n; ++i) out[i] = detail::f32_to_bf16_bits(in[i]);
    }
}

// The converting copy (kvfuse_rope_args V2): each token's row widened into the worker's f32
// scratch (its heads packed), rotated there by the f32 row rotation (the same vector / tail split
// as the f32 call: an interleaved tail element can differ from a vector lane in the last bit) and
// rounded once into dst's type, so the result is the f32 rotation converted, bit for bit.
void rotate_rows_converting(kvfuse_context& context, const RopePlan& plan, kvfuse_dtype dtype, kvfuse_dtype src_dtype,
                            const void* src, const detail::KeyLayout& src_layout, void* dst,
                            const detail::KeyLayout& dst_layout, std::size_t tokens, std::size_t heads,
                            const std::int64_t* deltas, std::int64_t delta) {
    const std::size_t head_dim = static_cast<std::size_t>(plan.config.head_dim);
    const std::size_t work = tokens * heads * head_dim;
    const std::size_t workers = work < detail::context_tuning(context).rope_parallel_work
                                    ? 1
                                    : std::min(detail::context_workers(context), tokens);
    // The tables are f32's (the rotation runs in f32 whatever the two types are).
    detail::reserve_rope_tables(context, workers, plan, KVFUSE_DTYPE_F32, heads);
    const detail::RopePositionSlot* positions =
        detail::context_rope_positions(context).prepare(plan, KVFUSE_DTYPE_F32, heads, deltas, tokens, delta);
    // Two rows of f32 a worker (in and out), each worker's on its own cache lines.
    const std::size_t row = heads * head_dim;
    const std::size_t worker_stride = (2 * row * sizeof(float) + 63) / 64 * 64;
    auto* base = static_cast<char*>(detail::context_scratch(context, workers * worker_stride));
    auto rotate_range = [&](std::size_t worker) {
        detail::RopeTableCache& tables = detail::context_rope_tables(context, worker);
        float* in = reinterpret_cast<float*>(base + worker * worker_stride);
        float* out = in + row;
        for (std::size_t t = tokens * worker / workers; t < tokens * (worker + 1) / workers; ++t) {
            const std::int64_t d = deltas ? deltas[t] : delta;
            const RopeTable* table = positions != nullptr ? positions->find(d) : nullptr;
            if (table == nullptr) table = &tables.get(plan, KVFUSE_DTYPE_F32, heads, d);
            for (std::size_t h = 0; h < heads; ++h) widen_head(src_dtype, src, src_layout.at(t, h), in + h * head_dim, head_dim);
            rotate_row<KVFUSE_DTYPE_F32>(plan, in, head_dim, out, head_dim, heads, *table);
            for (std::size_t h = 0; h < heads; ++h) narrow_head(dtype, out + h * head_dim, dst, dst_layout.at(t, h), head_dim);
        }
    };
    detail::run_workers(context, workers, rotate_range);
}

void rope_rotate(kvfuse_context& context, const RopePlan& plan, kvfuse_dtype dtype, kvfuse_dtype src_dtype,
                 const void* src, const detail::KeyLayout& src_layout, void* dst, const detail::KeyLayout& dst_layout,
                 std::size_t tokens, std::size_t heads, const std::int64_t* deltas, std::int64_t delta) {
    if (src_dtype != dtype)
        rotate_rows_converting(context, plan, dtype, src_dtype, src, src_layout, dst, dst_layout, tokens, heads, deltas,
                               delta);
    else if (dtype == KVFUSE_DTYPE_F32)
        rotate_rows<KVFUSE_DTYPE_F32>(context, plan, dtype, static_cast<const float*>(src), src_layout,
                                      static_cast<float*>(dst), dst_layout, tokens, heads, deltas, delta);
    else if (dtype == KVFUSE_DTYPE_F16)
        rotate_rows<KVFUSE_DTYPE_F16>(context, plan, dtype, static_cast<const std::uint16_t*>(src), src_layout,
                                      static_cast<std::uint16_t*>(dst), dst_layout, tokens, heads, deltas, delta);
    else
        rotate_rows<KVFUSE_DTYPE_BF16>(context, plan, dtype, static_cast<const std::uint16_t*>(src), src_layout,
                                       static_cast<std::uint16_t*>(dst), dst_layout, tokens, heads, deltas, delta);
}

void f32_to_f16(const float* src, std::uint16_t* dst, std::size_t count) {
    std::size_t i = 0;
    for (; i + kLanes <= count; i += kLanes) store_f16(dst + i, F32s::load_unaligned(src + i));
    for (; i < count; ++i) dst[i] = f16_from_one(src[i]);
}

void f16_to_f32(const std::uint16_t* src, float* dst, std::size_t count) {
    std::size_t i = 0;
    for (; i + kLanes <= count; i += kLanes) load_f16<F32s>(src + i).store_unaligned(dst + i);
    for (; i < count; ++i) dst[i] = f16_one(src[i]);
}

}  // namespace

void register_rope(detail::KernelTable& table) {
    table.rope_rotate = &rope_rotate;
    KVFUSE_REGISTER_STORE_BARRIER();
    table.f32_to_f16 = &f32_to_f16;
    KVFUSE_REGISTER_STORE_BARRIER();
    table.f16_to_f32 = &f16_to_f32;
}

}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
