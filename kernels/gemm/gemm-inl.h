// Dense-layer product C[n x out] = A[n x in] W^T (+ beta C) written once on the xsimd
// architecture (compiled per ISA; no include guard). W comes packed once (gemm_packed.h: panels
// of 32 output columns, k-major); A is packed per call, one block at a time.
//
// The classic three-level blocking (Goto / BLIS), with W in the role of BLIS's B:
//   for each depth block of kDepth k's              (the packed A block stays in L2 while the
//     for each block of kRowBlock rows of A          column tiles of W stream past it; W's
//       pack the block: kRows rows interleaved per k  slice of a column tile is reused by every
//                                                     row tile of the block)
//       for each column tile of kCols columns
//         for each row tile of kRows rows: the microkernel, kRows x kCols accumulators in
//         registers, one broadcast of A and kVectors loads of W per k.
// Register blocks: AVX-512 14 x 32 (28 zmm accumulators), AVX2 6 x 16 (12 ymm), NEON 6 x 16
// (24 q). Tasks -- the execution context's workers (an OpenMP team, the engine's parallel-for or
// the calling thread), each with a buffer in the context's scratch -- take whole row ranges
// when there are enough rows (each packs only its own rows of A; W is read by all), else whole
// column ranges (decode: W's bandwidth is the cost, and each task reads only its part of it).
//
// bf16 weights: the activations are rounded to bf16 (nearest even) as A is packed, so that every
// ISA computes the same products; sums are f32. With AVX512-BF16 (the avx512_bf16 variant, built
// with -mavx512bf16) `vdpbf16ps` multiplies a pair of k's per 32-bit lane; elsewhere the pairs
// are widened to two f32 vectors in registers (a shift and a mask) and fed to FMAs, which keeps
// W's memory traffic at two bytes a weight.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <xsimd/xsimd.hpp>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "kernels/call_context.h"
#include "kernels/common/bf16.h"
#include "kernels/gemm/gemm_packed.h"
#include "kernels/kernel_table.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
using U32s = xsimd::batch<std::uint32_t, Arch>;
constexpr std::size_t kLanes = F32s::size;
constexpr std::size_t kPanel = detail::kGemmPanel;

// Register block: kRows rows of A by kVectors vectors of columns. Sized to the register file:
// 32 zmm on AVX-512 (28 accumulators, 2 of W, 1 broadcast: 14 broadcasts and 2 loads per 28
// FMAs), 16 ymm on AVX2 (12 + 2 + 1), 32 q on NEON (24 + 4 + 1).
constexpr std::size_t kVectors = kLanes == 4 ? 4 : 2;
constexpr std::size_t kCols = kVectors * kLanes;
constexpr std::size_t kRows = kLanes >= 16 ? 14 : 6;
static_assert(kPanel % kCols == 0, "a column tile must not straddle two packed panels");

// Cache blocks: one row tile of A, kRows x kDepth (28 KiB on AVX-512), stays in L1 while the
// column tile's slice of W, kDepth x kCols (64 KiB f32, 32 KiB bf16), streams from L2; the
// packed A block, kRowBlock x kDepth (448 KiB), stays in L2. Every depth block reads and
// writes C once more, so a deep block pays: on the Zen 5 VM (loaded machine, single runs)
// kDepth 128 ran at ~0.7x OpenBLAS, 256 ~0.85x, 384-512 ~0.9-1.0x. kDepth is even so that only
// the last depth block of a bf16 product can hold an odd k.
constexpr std::size_t kDepth = 512;
constexpr std::size_t kRowBlock = kRows * 16;

// How a tile reaches C: overwritten (first depth block, beta = 0: C is not read, so a NaN
// already there does not leak in), else C = scale * C + tile.
struct TileStore {
    float* c;
    std::size_t ldc;
    std::size_t cols;  // valid columns of the tile, <= kCols
    bool overwrite;
    float scale;
};

template <std::size_t M>
void store_tile(F32s (&acc)[M][kVectors], const TileStore& s) {
    if (s.cols == kCols) {
        for (std::size_t i = 0; i < M; ++i)
            for (std::size_t v = 0; v < kVectors; ++v) {
                float* p = s.c + i * s.ldc + v * kLanes;
                const F32s result =
                    s.overwrite ? acc[i][v] : xsimd::fma(F32s(s.scale), F32s::load_unaligned(p), acc[i][v]);
                result.store_unaligned(p);
            }
        return;
    }
    alignas(64) float row[kCols];
    for (std::size_t i = 0; i < M; ++i) {
        for (std::size_t v = 0; v < kVectors; ++v) acc[i][v].store_aligned(row + v * kLanes);
        float* p = s.c + i * s.ldc;
        for (std::size_t j = 0; j < s.cols; ++j) p[j] = s.overwrite ? row[j] : std::fma(s.scale, p[j], row[j]);
    }
}

// f32 weights: a (depth x kRows, k-major) times w (depth rows of stride kPanel).
template <std::size_t M>
void tile_f32(const float* a, const float* w, std::size_t depth, const TileStore& s) {
    F32s acc[M][kVectors];
    for (std::size_t i = 0; i < M; ++i)
        for (std::size_t v = 0; v < kVectors; ++v) acc[i][v] = F32s(0.0f);
    for (std::size_t k = 0; k < depth; ++k) {
        F32s b[kVectors];
        for (std::size_t v = 0; v < kVectors; ++v) b[v] = F32s::load_aligned(w + k * kPanel + v * kLanes);
        for (std::size_t i = 0; i < M; ++i) {
            const F32s x(a[k * kRows + i]);
            for (std::size_t v = 0; v < kVectors; ++v) acc[i][v] = xsimd::fma(x, b[v], acc[i][v]);
        }
    }
    store_tile<M>(acc, s);
}

// bf16 weights widened in registers: a is f32 (already rounded to bf16), depth rounded up to
// even with zeros; w holds depth / 2 rows of kPanel pairs. The low half of a pair shifted up is
// the even k's weight as f32, the pair with its low half cleared the odd k's.
template <std::size_t M>
void tile_bf16_widened(const float* a, const std::uint32_t* w, std::size_t pairs, const TileStore& s) {
    F32s acc[M][kVectors];
    for (std::size_t i = 0; i < M; ++i)
        for (std::size_t v = 0; v < kVectors; ++v) acc[i][v] = F32s(0.0f);
    const U32s high_half(0xffff0000u);
    for (std::size_t kp = 0; kp < pairs; ++kp) {
        const std::uint32_t* row = w + kp * kPanel;
        F32s b[kVectors];
        for (std::size_t v = 0; v < kVectors; ++v)
            b[v] = xsimd::bitwise_cast<F32s>(U32s::load_aligned(row + v * kLanes) << 16);
        for (std::size_t i = 0; i < M; ++i) {
            const F32s x(a[2 * kp * kRows + i]);
            for (std::size_t v = 0; v < kVectors; ++v) acc[i][v] = xsimd::fma(x, b[v], acc[i][v]);
        }
        for (std::size_t v = 0; v < kVectors; ++v)
            b[v] = xsimd::bitwise_cast<F32s>(U32s::load_aligned(row + v * kLanes) & high_half);
        for (std::size_t i = 0; i < M; ++i) {
            const F32s x(a[(2 * kp + 1) * kRows + i]);
            for (std::size_t v = 0; v < kVectors; ++v) acc[i][v] = xsimd::fma(x, b[v], acc[i][v]);
        }
    }
    store_tile<M>(acc, s);
}

#if defined(__AVX512BF16__)
constexpr bool kBf16Dot = true;
static_assert(kLanes == 16 && kVectors == 2, "the vdpbf16ps tile is written for two zmm of columns");

// bf16 weights with vdpbf16ps: a holds pairs of bf16 activations (even k low) per row, one
// uint32 broadcast to every lane; each lane adds a[2kp] w[2kp] + a[2kp+1] w[2kp+1] in f32.
template <std::size_t M>
void tile_bf16_dot(const std::uint32_t* a, const std::uint32_t* w, std::size_t pairs, const TileStore& s) {
    __m512 acc[M][2];
    for (std::size_t i = 0; i < M; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (std::size_t kp = 0; kp < pairs; ++kp) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(w + kp * kPanel);
        const __m512bh b1 = (__m512bh)_mm512_load_si512(w + kp * kPanel + 16);
        for (std::size_t i = 0; i < M; ++i) {
            const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[kp * kRows + i]));
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], x, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], x, b1);
        }
    }
    F32s out[M][kVectors];
    for (std::size_t i = 0; i < M; ++i) {
        out[i][0] = F32s(acc[i][0]);
        out[i][1] = F32s(acc[i][1]);
    }
    store_tile<M>(out, s);
}
#else
constexpr bool kBf16Dot = false;
#endif

// Microkernels for 1..kRows rows, so that a short last row tile (or a one-token decode step)
// does no padded work.
template <template <std::size_t> class Tile, std::size_t... M>
constexpr auto make_tiles(std::index_sequence<M...>) {
    return std::array{&Tile<M + 1>::run...};
}

template <std::size_t M>
struct F32Tile {
    static void run(const float* a, const float* w, std::size_t depth, const TileStore& s) {
        tile_f32<M>(a, w, depth, s);
    }
};
template <std::size_t M>
struct Bf16WidenedTile {
    static void run(const float* a, const std::uint32_t* w, std::size_t pairs, const TileStore& s) {
        tile_bf16_widened<M>(a, w, pairs, s);
    }
};
#if defined(__AVX512BF16__)
template <std::size_t M>
struct Bf16DotTile {
    static void run(const std::uint32_t* a, const std::uint32_t* w, std::size_t pairs, const TileStore& s) {
        tile_bf16_dot<M>(a, w, pairs, s);
    }
};
#endif

// Packs rows [0, rows) x k in [k0, k0 + depth) of A into row tiles of kRows rows, k-major
// (padding rows and k's are zero): f32 as it is, or rounded to bf16 and widened back. k outer,
// rows inner: the stores run sequentially and the kRows row reads are each sequential, which
// matters when `out` is small (K/V projections: 256 columns share each packed element).
void pack_rows_f32(const float* a, std::size_t lda, std::size_t rows, std::size_t k0, std::size_t depth,
                   std::size_t padded_depth, bool round_to_bf16, float* dst) {
    static const float zeros[kDepth + 1] = {};
    for (std::size_t r0 = 0; r0 < rows; r0 += kRows) {
        float* tile = dst + (r0 / kRows) * padded_depth * kRows;
        const std::size_t m = std::min(kRows, rows - r0);
        const float* src[kRows];
        for (std::size_t i = 0; i < kRows; ++i) src[i] = i < m ? a + (r0 + i) * lda + k0 : zeros;
        if (round_to_bf16) {
            for (std::size_t k = 0; k < depth; ++k)
                for (std::size_t i = 0; i < kRows; ++i)
                    tile[k * kRows + i] = detail::bf16_bits_to_f32(detail::f32_to_bf16_bits(src[i][k]));
        } else {
            for (std::size_t k = 0; k < depth; ++k)
                for (std::size_t i = 0; i < kRows; ++i) tile[k * kRows + i] = src[i][k];
        }
        for (std::size_t k = depth; k < padded_depth; ++k)
            for (std::size_t i = 0; i < kRows; ++i) tile[k * kRows + i] = 0.0f;
    }
}

// The same as bf16 pairs (even k in the low half), for vdpbf16ps.
void pack_rows_bf16_pairs(const float* a, std::size_t lda, std::size_t rows, std::size_t k0, std::size_t depth,
                          std::uint32_t* dst) {
    static const float zeros[kDepth + 1] = {};
    const std::size_t pairs = (depth + 1) / 2, full_pairs = depth / 2;
    for (std::size_t r0 = 0; r0 < rows; r0 += kRows) {
        std::uint32_t* tile = dst + (r0 / kRows) * pairs * kRows;
        const std::size_t m = std::min(kRows, rows - r0);
        const float* src[kRows];
        for (std::size_t i = 0; i < kRows; ++i) src[i] = i < m ? a + (r0 + i) * lda + k0 : zeros;
        for (std::size_t kp = 0; kp < full_pairs; ++kp)
            for (std::size_t i = 0; i < kRows; ++i)
                tile[kp * kRows + i] = detail::f32_to_bf16_bits(src[i][2 * kp]) |
                                       static_cast<std::uint32_t>(detail::f32_to_bf16_bits(src[i][2 * kp + 1])) << 16;
        if (pairs > full_pairs)  // an odd depth: the last pair's high half is zero
            for (std::size_t i = 0; i < kRows; ++i)
                tile[full_pairs * kRows + i] = detail::f32_to_bf16_bits(src[i][2 * full_pairs]);
    }
}

// One task's share of the product and what it reads and writes (gemm_packed.h).
using Share = detail::GemmShare;
using Problem = detail::GemmProblem;

void run_share(const Problem& p, const Share& share, float* a_f32, std::uint32_t* a_pairs) {
    const detail::PackedWeightsData& w = p.w;
    const bool bf16 = w.dtype == KVFUSE_DTYPE_BF16;
    static constexpr auto f32_tiles = make_tiles<F32Tile>(std::make_index_sequence<kRows>{});
    static constexpr auto widened_tiles = make_tiles<Bf16WidenedTile>(std::make_index_sequence<kRows>{});
#if defined(__AVX512BF16__)
    static constexpr auto dot_tiles = make_tiles<Bf16DotTile>(std::make_index_sequence<kRows>{});
#endif
    for (std::size_t k0 = 0; k0 < w.in; k0 += kDepth) {
        const std::size_t depth = std::min(kDepth, w.in - k0);
        const std::size_t pairs = (depth + 1) / 2;
        const std::size_t padded_depth = bf16 ? 2 * pairs : depth;
        const bool first = k0 == 0;
        for (std::size_t r0 = share.row_begin; r0 < share.row_end; r0 += kRowBlock) {
            const std::size_t rows = std::min(kRowBlock, share.row_end - r0);
            const float* a_block = p.a + r0 * p.lda;
            if (bf16 && kBf16Dot)
                pack_rows_bf16_pairs(a_block, p.lda, rows, k0, depth, a_pairs);
            else
                pack_rows_f32(a_block, p.lda, rows, k0, depth, padded_depth, bf16, a_f32);
            for (std::size_t t = share.tile_begin; t < share.tile_end; ++t) {
                const std::size_t col0 = t * kCols, panel = col0 / kPanel, offset = col0 % kPanel;
                TileStore store{nullptr, p.ldc, std::min(kCols, w.out - col0), first && p.beta == 0.0f,
                                first ? p.beta : 1.0f};
                for (std::size_t ri = 0; ri < rows; ri += kRows) {
                    const std::size_t m = std::min(kRows, rows - ri);
                    store.c = p.c + (r0 + ri) * p.ldc + col0;
                    const std::size_t tile = ri / kRows;
                    if (!bf16) {
                        f32_tiles[m - 1](a_f32 + tile * depth * kRows, w.f32_panel(panel) + k0 * kPanel + offset,
                                         depth, store);
                    } else {
                        const std::uint32_t* wp = w.bf16_panel(panel) + (k0 / 2) * kPanel + offset;
#if defined(__AVX512BF16__)
                        dot_tiles[m - 1](a_pairs + tile * pairs * kRows, wp, pairs, store);
#else
                        widened_tiles[m - 1](a_f32 + tile * padded_depth * kRows, wp, pairs, store);
#endif
                    }
                }
            }
        }
    }
    (void)widened_tiles;
    (void)a_pairs;
}

// One product's tasks, as context_run hands them to the workers: task t computes its share of
// C into its own packed-activation buffer (a slice of the context's scratch).
struct GemmTasks {
    Problem problem;
    detail::GemmSplit split;
    std::size_t n, row_tiles, col_tiles, buffer_elements;
    float* f32_buffers;              // the f32 activations (f32 weights, and bf16 widened in registers)
    std::uint32_t* pair_buffers;     // or bf16 pairs of activations (vdpbf16ps)

    static void run(void* arg, std::size_t task) {
        const GemmTasks& t = *static_cast<const GemmTasks*>(arg);
        const Share share = detail::share_of(t.split, task, t.n, kRows, t.row_tiles, t.col_tiles);
        if (share.row_begin < share.row_end && share.tile_begin < share.tile_end)
            run_share(t.problem, share, t.f32_buffers ? t.f32_buffers + task * t.buffer_elements : nullptr,
                      t.pair_buffers ? t.pair_buffers + task * t.buffer_elements : nullptr);
    }
};

void gemm(kvfuse_context& context, const kvfuse_packed_weights& packed, const float* a, std::size_t n,
          std::size_t lda, float beta, float* c, std::size_t ldc, std::size_t workers) {
    const detail::PackedWeightsData& w = packed.weights;
    const std::size_t col_tiles = (w.out + kCols - 1) / kCols;
    const std::size_t row_tiles = (n + kRows - 1) / kRows;
    const detail::GemmSplit split = detail::split_gemm(row_tiles, col_tiles, workers);
    const std::size_t tasks = split.row_groups * split.col_groups;

    const bool pairs = w.dtype == KVFUSE_DTYPE_BF16 && kBf16Dot;
    const std::size_t buffer_elements = kRowBlock * (kDepth + 1);
    static_assert(sizeof(float) == sizeof(std::uint32_t), "one buffer size serves both element types");
    // Every buffer before any worker starts (std::bad_alloc -> KVFUSE_ERROR_OUT_OF_MEMORY).
    void* scratch = detail::context_scratch(context, tasks * buffer_elements * sizeof(float));
    GemmTasks work{Problem{w, a, lda, beta, c, ldc},
                   split,
                   n,
                   row_tiles,
                   col_tiles,
                   buffer_elements,
                   pairs ? nullptr : static_cast<float*>(scratch),
                   pairs ? static_cast<std::uint32_t*>(scratch) : nullptr};
    detail::context_run(context, tasks, &GemmTasks::run, &work);
}

}  // namespace

void register_gemm(detail::KernelTable& table) {
    table.gemm = &gemm;
    KVFUSE_REGISTER_STORE_BARRIER();
    table.gemm_bf16_scheme = kBf16Dot ? "dpbf16ps" : "widened_fma";
}

}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
