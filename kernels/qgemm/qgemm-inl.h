// Dense-layer product with block-quantized weights (gemm_packed.h: per 32 k of a row, 8- or
// 4-bit codes u, a scale s and an offset m, w = s u - m; or the two-level 4-bit form, whose s and
// m are f32 products of a per-256 super value and a per-32 u8 sub value; or Q6_K's form, 6-bit
// codes with a signed sub-scale per 16 k: tile_q6) on the CPU's integer dot, written once on the
// xsimd architecture (compiled per ISA; no include guard).
//
// Each row of A is quantized per block of 32 k to int8 with one scale d (q = round(a / d),
// d = max|a| / 127; reference::quantize_activation_block is the definition), so that a block of
// the product is exact integer arithmetic:
//   sum_k w_k d q_k = s d (sum_k u_k q_k) - m d (sum_k q_k).
// The integer dot (four k's per 32-bit lane, one column per lane) runs on vpdpbusd (u8 x s8,
// AVX512-VNNI zmm / AVX-VNNI ymm), NEON sdot (s8 x s8: 8-bit codes enter as u - 128, and
// 128 sum q is added back), pmaddubsw (4-bit codes: s16 sums over the whole block, which fit)
// or the exact emulations of common/isa_dot-inl.h (8-bit codes without VNNI: pmaddwd pairs);
// then per block, in f32: acc += float(dot) * (s d) - m * (d sum q).
//
// Blocking: a block of kRowBlock rows of A is quantized and packed (k-major groups of four k
// per row, kRows rows interleaved, so one 32-bit broadcast feeds a row's lane products); for
// each column tile (2 vectors: columns c0.. and c0 + 16.. of a packed panel, which is what one
// load of 4-bit codes gives) and each depth chunk of kDepthBlocks blocks, every row tile of the
// block runs the microkernel (kRows x 2 integer sums for the current block and kRows x 2 f32
// accumulators in registers, parked in a scratch between chunks), so the tile's slice of W for
// the chunk stays in L1 while the block's row tiles pass, and C is written once, after the last
// chunk.
// Tasks (the context's workers): whole row ranges when each gets four row tiles or more, else column ranges, as the
// f32 GEMM. The summation order of an element of C depends on neither n, the worker count nor
// the tile it falls in.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <xsimd/xsimd.hpp>

#include "kernels/call_context.h"
#include "kernels/common/isa_dot-inl.h"
#include "kernels/gemm/gemm_packed.h"
#include "kernels/kernel_table.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
using I32s = xsimd::batch<std::int32_t, Arch>;
constexpr std::size_t kLanes = I32s::size;
constexpr std::size_t kPanel = detail::kGemmPanel;
constexpr std::size_t kCodeBlock = detail::kQuantBlock;
constexpr std::size_t kGroups = kCodeBlock / 4;  // groups of four k: one 32-bit lane of bytes
static_assert(kPanel == 32 && kCodeBlock == 32, "the packed record layout is written for 32 x 32");
// A column tile: vectors of columns [c0, c0 + kLanes) and [c0 + 16, c0 + 16 + kLanes) of a panel.
constexpr std::size_t kTilesPerPanel = (kPanel / 2) / kLanes;

// Rows of the register block: 2 kRows integer sums + 2 kRows f32 accumulators + the weights and
// a broadcast within the register file: 32 zmm / 32 q (6 rows), 16 ymm (2 rows).
constexpr std::size_t kRows = kVectorRegisters == 16 ? 2 : 6;
constexpr std::size_t kRowTiles = 8;  // row tiles per packed block of A
constexpr std::size_t kRowBlock = kRows * kRowTiles;
// Blocks of 32 k per depth chunk: a column tile's slice of W for one chunk (12 KiB of 4-bit,
// 20 KiB of 8-bit records) stays in L1 while the row tiles of the block pass over it; between
// chunks the f32 accumulators wait in a small scratch (stored and reloaded exactly, so the
// summation order is the one of a single pass). Without chunks a 2816-deep layer ran at ~40 %
// of the int8 peak against ~60 % for a 1024-deep one (W's slice no longer fitting L1).
constexpr std::size_t kDepthBlocks = 16;

// Which integer dot this copy runs.
constexpr bool kSdot = kHasSdot && !kHasDpbusd;
constexpr bool kMaddS16 = kHasMadd && !kHasDpbusd;  // 4-bit codes: pmaddubsw with s16 block sums
constexpr const char* kScheme = kHasDpbusd ? "vpdpbusd" : kSdot ? "sdot" : kHasMadd ? "pmaddubsw" : "emulated";

// One row tile of A, quantized: for block b, group g, row i the int8 quad (four k's) at
// codes[(b * kGroups + g) * kRows + i]; per (b, i) the scale d, d * sum q and sum q.
struct ATile {
    const std::int32_t* codes;
    const float* scales;
    const float* sums;
    const std::int32_t* qsums;
};

std::size_t tile_words(std::size_t blocks) { return blocks * kRows * (kGroups + 3); }

ATile tile_view(const std::int32_t* base, std::size_t blocks) {
    const std::size_t codes = blocks * kGroups * kRows, per = blocks * kRows;
    return {base, reinterpret_cast<const float*>(base + codes), reinterpret_cast<const float*>(base + codes + per),
            base + codes + 2 * per};
}

// One block of 32 activations quantized exactly as reference::quantize_activation_block, in
// vectors: |x|, the max, x * (1 / d), round-half-even (the reference's nearbyint) and the clamp
// are the same IEEE operations lane by lane.
constexpr std::size_t kF32Lanes = F32s::size;
float quantize_block(const float* x, std::int8_t* q) {
    F32s amax(0.0f);
    auto finite = xsimd::isfinite(F32s(0.0f));
    for (std::size_t k = 0; k < kCodeBlock; k += kF32Lanes) {
        const F32s v = F32s::load_unaligned(x + k);
        finite = finite && xsimd::isfinite(v);
        amax = xsimd::max(amax, xsimd::abs(v));
    }
    if (!xsimd::all(finite)) {
        for (std::size_t k = 0; k < kCodeBlock; ++k) q[k] = 0;
        return std::numeric_limits<float>::quiet_NaN();
    }
    alignas(64) float lanes[kF32Lanes];
    amax.store_aligned(lanes);
    float m = 0.0f;
    for (float l : lanes) m = std::max(m, l);
    const float d = m / 127.0f;
    const F32s inverse(d != 0.0f ? 1.0f / d : 0.0f), limit(127.0f);
    alignas(64) std::int32_t codes[kCodeBlock];
    for (std::size_t k = 0; k < kCodeBlock; k += kF32Lanes) {
        // Clamping before the rounding gives the reference's clamp after it (127 is an integer).
        const F32s scaled = xsimd::max(-limit, xsimd::min(limit, F32s::load_unaligned(x + k) * inverse));
        xsimd::nearbyint_as_int(scaled).store_aligned(codes + k);
    }
    for (std::size_t k = 0; k < kCodeBlock; ++k) q[k] = static_cast<std::int8_t>(codes[k]);
    return d;
}

// Q6_K's form: the pmaddubsw copy keeps each 16-value sub-block's sums in s16 (its codes u <= 63
// give pairs of at most 2 * 63 * 127, but four groups of them overflow s16); the bias of the
// codes, 32 sum q, is where those s16 sums start, which brings each half to sum (u - 32) q over
// eight k's, at most 8 * 32 * 127 = 32512, once the products are added: exact, since s16 adds
// wrap (what they held in between does not matter). The other copies sum in s32, from -32 sum q.
constexpr bool kQ6S16 = kMaddS16;
// A row tile of A for Q6 weights is the same tile with, in place of the sums, per block and row
// the correction of each sub-block, where its integer sums start: pmaddubsw copy, two s16 per
// word, -32 times the sum of q over the k's of each half of a lane (bytes 0-1 and 2-3 of the four
// groups); else -32 sum q.
struct Q6Tile {
    const std::int32_t* codes;
    const float* scales;
    const std::int32_t* corrections[2];
};

Q6Tile q6_tile_view(const std::int32_t* base, std::size_t blocks) {
    const std::size_t codes = blocks * kGroups * kRows, per = blocks * kRows;
    return {base, reinterpret_cast<const float*>(base + codes), {base + codes + per, base + codes + 2 * per}};
}

// The corrections of one block of a row: word h for the sub-block h (k 16 h .. 16 h + 15).
void q6_corrections(const std::int8_t (&q)[kCodeBlock], std::int32_t (&words)[2]) {
    for (std::size_t h = 0; h < 2; ++h) {
        std::int32_t half_sums[2] = {0, 0};  // k's 0-1 and 2-3 of the sub-block's four groups
        for (std::size_t g = 4 * h; g < 4 * h + 4; ++g) {
            half_sums[0] += q[4 * g] + q[4 * g + 1];
            half_sums[1] += q[4 * g + 2] + q[4 * g + 3];
        }
        if constexpr (kQ6S16) {
            const auto low = static_cast<std::uint16_t>(-detail::kQ6CodeBias * half_sums[0]);
            const auto high = static_cast<std::uint16_t>(-detail::kQ6CodeBias * half_sums[1]);
            words[h] = static_cast<std::int32_t>(static_cast<std::uint32_t>(low) | static_cast<std::uint32_t>(high) << 16);
        } else {
            words[h] = -detail::kQ6CodeBias * (half_sums[0] + half_sums[1]);
        }
    }
}

// Rows [0, rows) of A (rows <= kRows) quantized into the tile at `base` (padding rows zero):
// the codes and scales, then the sums of ATile, or with Q6 the corrections of Q6Tile, in one pass.
template <bool Q6>
void pack_rows(const float* a, std::size_t lda, std::size_t rows, std::size_t blocks, std::int32_t* base) {
    const std::size_t codes = blocks * kGroups * kRows, per = blocks * kRows;
    float* scales = reinterpret_cast<float*>(base + codes);
    std::int32_t* sums = base + codes + per;  // f32 d sum q then sum q, or the two Q6 corrections
    for (std::size_t i = 0; i < kRows; ++i)
        for (std::size_t b = 0; b < blocks; ++b) {
            std::int8_t q[kCodeBlock] = {};
            float d = 0.0f;
            if (i < rows) d = quantize_block(a + i * lda + b * kCodeBlock, q);
            for (std::size_t g = 0; g < kGroups; ++g)
                std::memcpy(base + (b * kGroups + g) * kRows + i, q + 4 * g, 4);
            scales[b * kRows + i] = d;
            if constexpr (Q6) {
                std::int32_t words[2];
                q6_corrections(q, words);
                sums[b * kRows + i] = words[0];
                sums[per + b * kRows + i] = words[1];
            } else {
                std::int32_t sum = 0;
                for (std::size_t k = 0; k < kCodeBlock; ++k) sum += q[k];
                const float dsum = d * static_cast<float>(sum);
                std::memcpy(sums + b * kRows + i, &dsum, sizeof dsum);
                sums[per + b * kRows + i] = sum;
            }
        }
}

void pack_tile(const float* a, std::size_t lda, std::size_t rows, std::size_t blocks, std::int32_t* base) {
    pack_rows<false>(a, lda, rows, blocks, base);
}
void pack_tile_q6(const float* a, std::size_t lda, std::size_t rows, std::size_t blocks, std::int32_t* base) {
    pack_rows<true>(a, lda, rows, blocks, base);
}

// acc + the four u x q products of each lane (u the weights' codes as this copy holds them).
inline I32s dot_quads(I32s acc, I32s w, I32s x) {
    if constexpr (kHasDpbusd)
        return dot_quads_u8s8(acc, w, x);
    else if constexpr (kSdot)
        return dot_quads_s8s8(acc, w, x);
    else
        return acc + emulated_dot_u8s8(w, x);
}

// How a tile reaches C: columns c0.. and c0 + 16.. of the panel starting at column `col0`.
struct TileStore {
    float* c;  // row 0, column col0 + c0
    std::size_t ldc;
    std::size_t cols[2];  // valid columns of each vector, <= kLanes
    float beta;
};

template <std::size_t M>
void store_tile(F32s (&acc)[M][2], const TileStore& s) {
    for (std::size_t v = 0; v < 2; ++v) {
        const std::size_t offset = v * (kPanel / 2);
        if (s.cols[v] == kLanes) {
            for (std::size_t i = 0; i < M; ++i) {
                float* p = s.c + i * s.ldc + offset;
                const F32s result = s.beta == 0.0f ? acc[i][v] : xsimd::fma(F32s(s.beta), F32s::load_unaligned(p), acc[i][v]);
                result.store_unaligned(p);
            }
        } else if (s.cols[v] > 0) {
            alignas(64) float row[kLanes];
            for (std::size_t i = 0; i < M; ++i) {
                acc[i][v].store_aligned(row);
                float* p = s.c + i * s.ldc + offset;
                for (std::size_t j = 0; j < s.cols[v]; ++j) p[j] = s.beta == 0.0f ? row[j] : std::fma(s.beta, p[j], row[j]);
            }
        }
    }
}

// Where a tile's f32 accumulators come from and go: zero or `partial` (a previous depth chunk's),
// then `partial` again or C (the last chunk).
struct Depth {
    std::size_t first_block, blocks;
    bool first, last;
    float* partial;  // kRows x 2 vectors
};

// M rows of the tile `a` times the column tile at lane offset c0 of a panel (`records` its
// first byte), over the depth chunk `depth`. TwoLevel: 4-bit codes with u8 sub-scales/offsets and
// f32 super-scales/offsets per 8 blocks (gemm_packed.h); each block's scale and offset are then
// the f32 products the one-level form would store, so the sums are bit-identical to it.
template <int Bits, bool TwoLevel, std::size_t M>
void tile_q(const ATile& a, const std::uint8_t* records, const Depth& depth, std::size_t c0, const TileStore& s) {
    static_assert(!TwoLevel || Bits == 4, "two-level weights have 4-bit codes");
    constexpr std::size_t code_bytes = static_cast<std::size_t>(Bits) * kPanel * kCodeBlock / 8;
    constexpr std::size_t record_bytes = code_bytes + 2 * kPanel * (TwoLevel ? 1 : sizeof(float));
    constexpr std::size_t super_span = detail::kSuperHeaderBytes + detail::kSuperBlocks * record_bytes;
    const I32s low_nibbles(0x0F0F0F0F), sign_bits(static_cast<std::int32_t>(0x80808080u));
    F32s acc[M][2];
    for (std::size_t i = 0; i < M; ++i)
        for (std::size_t v = 0; v < 2; ++v)
            acc[i][v] = depth.first ? F32s(0.0f) : F32s::load_aligned(depth.partial + (2 * i + v) * kLanes);
    for (std::size_t b = depth.first_block; b < depth.first_block + depth.blocks; ++b) {
        const std::uint8_t* record =
            TwoLevel ? records + b / detail::kSuperBlocks * super_span + detail::kSuperHeaderBytes +
                           b % detail::kSuperBlocks * record_bytes
                     : records + b * record_bytes;
        const std::int32_t* x = a.codes + b * kGroups * kRows;
        I32s dot[M][2];
        for (std::size_t i = 0; i < M; ++i) dot[i][0] = dot[i][1] = I32s(0);
        if constexpr (Bits == 4 && kMaddS16) {
            // u <= 15: a pmaddubsw half is at most 2 * 15 * 127, eight groups 30480: s16 holds the block.
            I32s half[M][2];
            for (std::size_t i = 0; i < M; ++i) half[i][0] = half[i][1] = I32s(0);
            for (std::size_t g = 0; g < kGroups; ++g) {
                const I32s raw = I32s::load_aligned(reinterpret_cast<const std::int32_t*>(record + g * 64 + 4 * c0));
                const I32s w[2] = {raw & low_nibbles, (raw >> 4) & low_nibbles};
                for (std::size_t i = 0; i < M; ++i) {
                    const I32s xi(x[g * kRows + i]);
                    add_to_s16(half[i][0], madd_quads_s16(w[0], xi));
                    add_to_s16(half[i][1], madd_quads_s16(w[1], xi));
                }
            }
            for (std::size_t i = 0; i < M; ++i) {
                dot[i][0] = widen_s16_pairs(half[i][0]);
                dot[i][1] = widen_s16_pairs(half[i][1]);
            }
        } else {
            for (std::size_t g = 0; g < kGroups; ++g) {
                I32s w[2];
                if constexpr (Bits == 4) {
                    const I32s raw = I32s::load_aligned(reinterpret_cast<const std::int32_t*>(record + g * 64 + 4 * c0));
                    w[0] = raw & low_nibbles;
                    w[1] = (raw >> 4) & low_nibbles;
                } else {
                    const auto* row = reinterpret_cast<const std::int32_t*>(record + g * 128);
                    w[0] = I32s::load_aligned(row + c0);
                    w[1] = I32s::load_aligned(row + c0 + kPanel / 2);
                    if constexpr (kSdot) {  // u - 128 as s8
                        w[0] ^= sign_bits;
                        w[1] ^= sign_bits;
                    }
                }
                for (std::size_t i = 0; i < M; ++i) {
                    const I32s xi(x[g * kRows + i]);
                    dot[i][0] = dot_quads(dot[i][0], w[0], xi);
                    dot[i][1] = dot_quads(dot[i][1], w[1], xi);
                }
            }
            if constexpr (Bits == 8 && kSdot)
                for (std::size_t i = 0; i < M; ++i) {
                    const I32s back(128 * a.qsums[b * kRows + i]);
                    dot[i][0] += back;
                    dot[i][1] += back;
                }
        }
        F32s sw[2], mw[2];
        if constexpr (TwoLevel) {
            // Word l: (sub-scale, sub-offset) of column l, then of column l + 16.
            const auto* header = reinterpret_cast<const float*>(records + b / detail::kSuperBlocks * super_span);
            const I32s subs = I32s::load_aligned(reinterpret_cast<const std::int32_t*>(record + code_bytes) + c0);
            const I32s byte(0xFF);
            for (std::size_t v = 0; v < 2; ++v) {
                const std::size_t j = c0 + v * (kPanel / 2);
                const I32s sub_scale = (subs >> static_cast<int>(16 * v)) & byte;
                const I32s sub_offset = (subs >> static_cast<int>(16 * v + 8)) & byte;
                sw[v] = F32s::load_aligned(header + j) * int32_to_f32(sub_scale);
                mw[v] = F32s::load_aligned(header + kPanel + j) * int32_to_f32(sub_offset);
            }
        } else {
            const auto* scales = reinterpret_cast<const float*>(record + code_bytes);
            for (std::size_t v = 0; v < 2; ++v) {
                const std::size_t j = c0 + v * (kPanel / 2);
                sw[v] = F32s::load_aligned(scales + j);
                mw[v] = F32s::load_aligned(scales + kPanel + j);
            }
        }
        for (std::size_t i = 0; i < M; ++i) {
            const F32s d(a.scales[b * kRows + i]), dsum(a.sums[b * kRows + i]);
            for (std::size_t v = 0; v < 2; ++v) {
                acc[i][v] = xsimd::fma(int32_to_f32(dot[i][v]), sw[v] * d, acc[i][v]);
                acc[i][v] = xsimd::fnma(mw[v], dsum, acc[i][v]);
            }
        }
    }
    if (depth.last) {
        store_tile<M>(acc, s);
    } else {
        for (std::size_t i = 0; i < M; ++i)
            for (std::size_t v = 0; v < 2; ++v) acc[i][v].store_aligned(depth.partial + (2 * i + v) * kLanes);
    }
}

// Rows of a Q6 register block: M rows need M x 2 f32 accumulators, block sums and sub-block
// sums. Two fit 16 registers; on 32 the whole 6-row tile runs at once, GCC keeping the f32
// accumulators and block sums of some rows on the stack between sub-blocks (the 24 dot
// registers of a pair of groups stay put): a few % faster on Zen 4 (loaded) than two blocks of three,
// whose weight vectors are unpacked twice.
constexpr std::size_t kQ6Rows = kVectorRegisters == 16 ? 2 : 6;

// Rows [r0, r0 + M) of the tile `a` times the column tile at lane offset c0 of a Q6_SUPER256
// panel (gemm_packed.h), over the depth chunk `depth`. Per block the integer
// D = sub0 (sum u q - 32 sum q)_0 + sub1 (...)_1, |D| <= 2 * 128 * 16 * 32 * 127 < 2^24, is exact
// in f32 on every copy; then acc += float(D) * (super d).
template <std::size_t M>
void tile_q6(const Q6Tile& a, std::size_t r0, const std::uint8_t* records, const Depth& depth, std::size_t c0, TileStore s) {
    constexpr std::size_t code_bytes = 6 * kPanel * kCodeBlock / 8;
    constexpr std::size_t record_bytes = code_bytes + 2 * kPanel;
    constexpr std::size_t super_span = detail::kQ6HeaderBytes + detail::kSuperBlocks * record_bytes;
    const I32s six_bits(0x3F3F3F3F);
    s.c += r0 * s.ldc;
    float* partial = depth.partial + r0 * 2 * kLanes;
    F32s acc[M][2];
    for (std::size_t i = 0; i < M; ++i)
        for (std::size_t v = 0; v < 2; ++v)
            acc[i][v] = depth.first ? F32s(0.0f) : F32s::load_aligned(partial + (2 * i + v) * kLanes);
    for (std::size_t b = depth.first_block; b < depth.first_block + depth.blocks; ++b) {
        const std::uint8_t* super = records + b / detail::kSuperBlocks * super_span;
        const std::uint8_t* record = super + detail::kQ6HeaderBytes + b % detail::kSuperBlocks * record_bytes;
        const std::int32_t* x = a.codes + b * kGroups * kRows + r0;
        // Word l: the sub-scales (k 0-15, k 16-31) of column l, then of column l + 16.
        const I32s subs = I32s::load_aligned(reinterpret_cast<const std::int32_t*>(record + code_bytes) + c0);
        I32s block[M][2];
#pragma GCC unroll 2
        for (std::size_t h = 0; h < 2; ++h) {
            // The sub-block's sums start at its correction (the codes' bias times the sum of q).
            const std::int32_t* correction = a.corrections[h] + b * kRows + r0;
            I32s part[M][2];
            for (std::size_t i = 0; i < M; ++i) part[i][0] = part[i][1] = I32s(correction[i]);
            for (std::size_t pair = 2 * h; pair < 2 * h + 2; ++pair) {
                // Rows r = 0, 1, 2 of the pair: the codes of (column c0.., group 2 pair), (c0..,
                // 2 pair + 1), (c0 + 16.., 2 pair) in bits 0-5; bits 6-7 make (c0 + 16.., 2 pair + 1).
                const auto* row = reinterpret_cast<const std::int32_t*>(record + pair * 192 + 4 * c0);
                const I32s y0 = I32s::load_aligned(row), y1 = I32s::load_aligned(row + 16), y2 = I32s::load_aligned(row + 32);
                const I32s w[2][2] = {{y0 & six_bits, y2 & six_bits},
                                      {y1 & six_bits, ((y0 >> 6) & I32s(0x03030303)) | ((y1 >> 4) & I32s(0x0C0C0C0C)) |
                                                          ((y2 >> 2) & I32s(0x30303030))}};
                for (std::size_t odd = 0; odd < 2; ++odd) {
                    const std::size_t g = 2 * pair + odd;
                    for (std::size_t i = 0; i < M; ++i) {
                        const I32s xi(x[g * kRows + i]);
                        for (std::size_t v = 0; v < 2; ++v) {
                            if constexpr (kQ6S16)
                                add_to_s16(part[i][v], madd_quads_s16(w[odd][v], xi));
                            else
                                part[i][v] = dot_quads(part[i][v], w[odd][v], xi);  // u <= 63 is also an s8 for sdot
                        }
                    }
                }
            }
            I32s sub[2];
            for (std::size_t v = 0; v < 2; ++v) sub[v] = signed_byte(subs, static_cast<int>(2 * v + h));
            if constexpr (kQ6S16)
                for (std::size_t v = 0; v < 2; ++v) sub[v] = (sub[v] << 16) | (sub[v] & I32s(0xFFFF));
            for (std::size_t i = 0; i < M; ++i) {
                for (std::size_t v = 0; v < 2; ++v) {
                    I32s t;
                    if constexpr (kQ6S16)
                        t = madd_pairs(part[i][v], sub[v]);
                    else
                        t = part[i][v] * sub[v];
                    block[i][v] = h == 0 ? t : block[i][v] + t;
                }
            }
        }
        const auto* header = reinterpret_cast<const float*>(super);
        const F32s sw[2] = {F32s::load_aligned(header + c0), F32s::load_aligned(header + c0 + kPanel / 2)};
        for (std::size_t i = 0; i < M; ++i) {
            const F32s d(a.scales[b * kRows + r0 + i]);
            for (std::size_t v = 0; v < 2; ++v) acc[i][v] = xsimd::fma(int32_to_f32(block[i][v]), sw[v] * d, acc[i][v]);
        }
    }
    if (depth.last) {
        store_tile<M>(acc, s);
    } else {
        for (std::size_t i = 0; i < M; ++i)
            for (std::size_t v = 0; v < 2; ++v) acc[i][v].store_aligned(partial + (2 * i + v) * kLanes);
    }
}

template <std::size_t M>
struct Q6Block {
    static void run(const Q6Tile& a, std::size_t r0, const std::uint8_t* records, const Depth& depth, std::size_t c0,
                    const TileStore& s) {
        tile_q6<M>(a, r0, records, depth, c0, s);
    }
};
template <std::size_t... M>
constexpr auto make_q6_blocks(std::index_sequence<M...>) {
    return std::array{&Q6Block<M + 1>::run...};
}

template <int Bits, bool TwoLevel, std::size_t M>
struct QTile {
    static void run(const ATile& a, const std::uint8_t* records, const Depth& depth, std::size_t c0, const TileStore& s) {
        tile_q<Bits, TwoLevel, M>(a, records, depth, c0, s);
    }
};
template <int Bits, bool TwoLevel, std::size_t... M>
constexpr auto make_tiles(std::index_sequence<M...>) {
    return std::array{&QTile<Bits, TwoLevel, M + 1>::run...};
}

// One task's share of the product and what it reads and writes (gemm_packed.h).
using Share = detail::GemmShare;
using Problem = detail::GemmProblem;

// Bits 6: Q6_SUPER256 weights (tile_q6, each row tile in blocks of kQ6Rows rows).
template <int Bits, bool TwoLevel>
void run_share(const Problem& p, const Share& share, std::int32_t* buffer) {
    static constexpr auto tiles = make_tiles<Bits == 6 ? 4 : Bits, TwoLevel>(std::make_index_sequence<kRows>{});
    static constexpr auto q6_blocks = make_q6_blocks(std::make_index_sequence<kQ6Rows>{});
    const detail::PackedWeightsData& w = p.w;
    const std::size_t blocks = w.blocks(), words = tile_words(blocks);
    alignas(64) float partial[kRowTiles * kRows * 2 * kLanes];  // 6 KiB on AVX-512
    for (std::size_t r0 = share.row_begin; r0 < share.row_end; r0 += kRowBlock) {
        const std::size_t rows = std::min(kRowBlock, share.row_end - r0);
        for (std::size_t ri = 0; ri < rows; ri += kRows) {
            if constexpr (Bits == 6)
                pack_tile_q6(p.a + (r0 + ri) * p.lda, p.lda, std::min(kRows, rows - ri), blocks, buffer + (ri / kRows) * words);
            else
                pack_tile(p.a + (r0 + ri) * p.lda, p.lda, std::min(kRows, rows - ri), blocks, buffer + (ri / kRows) * words);
        }
        for (std::size_t t = share.tile_begin; t < share.tile_end; ++t) {
            const std::size_t panel = t / kTilesPerPanel, c0 = (t % kTilesPerPanel) * kLanes;
            const std::size_t col = panel * kPanel + c0;
            TileStore store{nullptr, p.ldc, {}, p.beta};
            for (std::size_t v = 0; v < 2; ++v) {
                const std::size_t first = col + v * (kPanel / 2);
                store.cols[v] = first >= w.out ? 0 : std::min(kLanes, w.out - first);
            }
            const std::uint8_t* records = w.panel_base(panel);
            for (std::size_t b0 = 0; b0 < blocks; b0 += kDepthBlocks) {
                const std::size_t chunk = std::min(kDepthBlocks, blocks - b0);
                for (std::size_t ri = 0; ri < rows; ri += kRows) {
                    store.c = p.c + (r0 + ri) * p.ldc + col;
                    const Depth depth{b0, chunk, b0 == 0, b0 + chunk == blocks, partial + (ri / kRows) * kRows * 2 * kLanes};
                    const std::size_t tile_rows = std::min(kRows, rows - ri);
                    if constexpr (Bits == 6) {
                        const Q6Tile a = q6_tile_view(buffer + (ri / kRows) * words, blocks);
                        for (std::size_t r = 0; r < tile_rows; r += kQ6Rows)
                            q6_blocks[std::min(kQ6Rows, tile_rows - r) - 1](a, r, records, depth, c0, store);
                    } else {
                        tiles[tile_rows - 1](tile_view(buffer + (ri / kRows) * words, blocks), records, depth, c0, store);
                    }
                }
            }
        }
    }
}

// One product's tasks, as context_run hands them to the workers: task t computes its share of
// C with its own quantized-activation buffer (a slice of the context's scratch).
struct QgemmTasks {
    Problem problem;
    detail::GemmSplit split;
    std::size_t n, row_tiles, col_tiles, task_words;
    std::int32_t* buffers;

    static void run(void* arg, std::size_t task) {
        const QgemmTasks& t = *static_cast<const QgemmTasks*>(arg);
        const Share share = detail::share_of(t.split, task, t.n, kRows, t.row_tiles, t.col_tiles);
        if (share.row_begin >= share.row_end || share.tile_begin >= share.tile_end) return;
        std::int32_t* buffer = t.buffers + task * t.task_words;
        if (t.problem.w.dtype == KVFUSE_DTYPE_Q8_BLOCK32)
            run_share<8, false>(t.problem, share, buffer);
        else if (t.problem.w.dtype == KVFUSE_DTYPE_Q4_SUPER256)
            run_share<4, true>(t.problem, share, buffer);
        else if (t.problem.w.dtype == KVFUSE_DTYPE_Q6_SUPER256)
            run_share<6, false>(t.problem, share, buffer);
        else
            run_share<4, false>(t.problem, share, buffer);
    }
};

void qgemm(kvfuse_context& context, const kvfuse_packed_weights& packed, const float* a, std::size_t n,
           std::size_t lda, float beta, float* c, std::size_t ldc, std::size_t workers) {
    const detail::PackedWeightsData& w = packed.weights;
    const std::size_t col_tiles = w.panels * kTilesPerPanel;
    const std::size_t row_tiles = (n + kRows - 1) / kRows;
    const detail::GemmSplit split = detail::split_gemm(row_tiles, col_tiles, workers);
    const std::size_t tasks = split.row_groups * split.col_groups;
    const std::size_t task_words = kRowTiles * tile_words(w.blocks());
    // Every buffer before any worker starts (std::bad_alloc -> KVFUSE_ERROR_OUT_OF_MEMORY).
    auto* buffers = static_cast<std::int32_t*>(detail::context_scratch(context, tasks * task_words * sizeof(std::int32_t)));
    QgemmTasks work{Problem{w, a, lda, beta, c, ldc}, split, n, row_tiles, col_tiles, task_words, buffers};
    detail::context_run(context, tasks, &QgemmTasks::run, &work);
}

}  // namespace

void register_qgemm(detail::KernelTable& table) {
    table.qgemm = &qgemm;
    KVFUSE_REGISTER_STORE_BARRIER();
    table.gemm_int8_scheme = kScheme;
}

}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
