// A3 relevance written once on the xsimd architecture (compiled per ISA; no include guard).
//
// The merged-head logits are, per KV head, a small matrix product: its M * g query rows
// against every key. Keys go in tiles of kTile; a tile of one KV head is first laid out in an
// L1 scratch so that one vector holds one dimension of kLanes keys (f32), or one pair of
// dimensions as two s16 in each 32-bit lane (int8 and int4 keys: x86 `pmaddwd` multiplies
// and adds such pairs exactly, whatever the int8 values). A register block of 2, 4 or 6
// (tuned) query rows x kVectors key vectors then runs down the head dimension with one
// broadcast per row, so each loaded key vector serves every row of the block and no
// horizontal reduction is needed. Tiles are independent (OpenMP); the softmax per question
// row and the column sums follow as two vector passes over the M x T logits.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include <xsimd/xsimd.hpp>

#if defined(__AVX2__) || defined(__AVX512BW__)
#include <immintrin.h>
#endif

#include "kernels/common/relevance_segments.h"
#include "kernels/kernel_table.h"
#include "kernels/tuning.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
using I32s = xsimd::batch<std::int32_t, Arch>;
constexpr std::size_t kLanes = F32s::size;
constexpr std::size_t kVectors = 2;                 // key vectors per tile
constexpr std::size_t kTile = kVectors * kLanes;   // keys per tile
constexpr std::size_t kMaxRows = 6;                 // query rows per register block: 2, 4 or 6 (tuned)

template <class T>
using Aligned = std::vector<T, xsimd::aligned_allocator<T, 64>>;

// Per 32-bit lane: lo(k) * lo(q) + hi(k) * hi(q) with lo/hi the signed 16-bit halves. A
// template so that only this ISA's branch is instantiated.
template <class V>
inline V madd_pairs(V k, V q) {
#if defined(__AVX512BW__)
    if constexpr (V::size == 16) return _mm512_madd_epi16(k, q);
    else
#endif
#if defined(__AVX2__)
    if constexpr (V::size == 8) return _mm256_madd_epi16(k, q);
    else
#endif
        return ((k << 16) >> 16) * ((q << 16) >> 16) + (k >> 16) * (q >> 16);
}

inline std::int32_t pack_pair(std::int32_t lo, std::int32_t hi) {
    return static_cast<std::int32_t>(static_cast<std::uint16_t>(lo) | (static_cast<std::uint32_t>(static_cast<std::uint16_t>(hi)) << 16));
}

// Two's-complement nibble -> int.
inline std::int32_t nibble(unsigned v) { return static_cast<std::int32_t>(v & 15u) - static_cast<std::int32_t>((v & 8u) << 1); }

enum class Path { f32, int8, int4 };

struct Shape {
    std::size_t M, C, docs, H, Hkv, D, D2, group;
};

// Lanes [lo, hi) of one KV head's tile as scratch, from the segment's keys first, first + 1, ...:
// f32 -> D rows of kTile floats; int -> D2 rows of kTile s16 pairs. Every other lane is zero
// (past the end, or another segment's key: that segment fills it with its own queries).
void layout_tile(const kvfuse_relevance_segment& g, const Shape& s, Path path, std::size_t first, std::size_t lo,
                 std::size_t hi, std::size_t kv, float* f32_tile, std::int32_t* int_tile, float* key_scales) {
    for (std::size_t jj = 0; jj < kTile; ++jj) {
        const bool in = jj >= lo && jj < hi;
        const std::size_t j = first + (jj - lo);  // meaningful only when `in`
        if (path == Path::f32) {
            const float* key = g.keys_f32 + (j * s.Hkv + kv) * s.D;
            for (std::size_t d = 0; d < s.D; ++d) f32_tile[d * kTile + jj] = in ? key[d] : 0.0f;
            continue;
        }
        key_scales[jj] = in ? g.key_scales[j * s.Hkv + kv] : 0.0f;
        if (!in) {
            for (std::size_t d2 = 0; d2 < s.D2; ++d2) int_tile[d2 * kTile + jj] = 0;
        } else if (path == Path::int8) {
            const std::int8_t* key = g.keys_i8 + (j * s.Hkv + kv) * s.D;
            for (std::size_t d2 = 0; d2 < s.D2; ++d2) {
                const std::size_t d = 2 * d2;
                int_tile[d2 * kTile + jj] = pack_pair(key[d], d + 1 < s.D ? key[d + 1] : 0);
            }
        } else {
            const std::uint8_t* key = g.keys_i4 + (j * s.Hkv + kv) * s.D2;
            for (std::size_t d2 = 0; d2 < s.D2; ++d2)
                int_tile[d2 * kTile + jj] = pack_pair(nibble(key[d2]), nibble(key[d2] >> 4u));
        }
    }
}

// One segment's queries as the register blocks read them.
struct SegmentQueries {
    const float* f32;           // M x H x D
    const std::int32_t* pairs;  // M x H x D2 s16 pairs
    const float* scales;        // M x H
};

// acc[r][v] = sum over d of tile[d][v lanes] * row_r[d], for R rows.
template <std::size_t R>
inline void f32_block(const float* const* rows, const float* tile, std::size_t D, F32s (&acc)[kMaxRows][kVectors]) {
    for (std::size_t r = 0; r < R; ++r)
        for (std::size_t v = 0; v < kVectors; ++v) acc[r][v] = F32s(0.0f);
    for (std::size_t d = 0; d < D; ++d) {
        const F32s k0 = F32s::load_aligned(tile + d * kTile), k1 = F32s::load_aligned(tile + d * kTile + kLanes);
        for (std::size_t r = 0; r < R; ++r) {
            const F32s q(rows[r][d]);
            acc[r][0] = xsimd::fma(k0, q, acc[r][0]);
            acc[r][1] = xsimd::fma(k1, q, acc[r][1]);
        }
    }
}

template <std::size_t R>
inline void int_block(const std::int32_t* const* rows, const std::int32_t* tile, std::size_t D2,
                      I32s (&acc)[kMaxRows][kVectors]) {
    for (std::size_t r = 0; r < R; ++r)
        for (std::size_t v = 0; v < kVectors; ++v) acc[r][v] = I32s(0);
    for (std::size_t d2 = 0; d2 < D2; ++d2) {
        const I32s k0 = I32s::load_aligned(tile + d2 * kTile), k1 = I32s::load_aligned(tile + d2 * kTile + kLanes);
        for (std::size_t r = 0; r < R; ++r) {
            const I32s q(rows[r][d2]);
            acc[r][0] += madd_pairs(k0, q);
            acc[r][1] += madd_pairs(k1, q);
        }
    }
}

// Logits of every question row against the keys [j0, j0 + kTile): `sums` (M x kTile) gets the
// merged-head sums, unscaled.
template <std::size_t R>
void rows_of_group(const SegmentQueries& queries, const Shape& s, Path path, std::size_t kv, std::size_t first_row,
                   const float* f32_tile, const std::int32_t* int_tile, const float* key_scales, float* sums) {
    const float* f32_rows[kMaxRows];
    const std::int32_t* int_rows[kMaxRows];
    std::size_t m_of[kMaxRows], h_of[kMaxRows];
    for (std::size_t r = 0; r < R; ++r) {
        const std::size_t flat = first_row + r;
        m_of[r] = flat / s.group;
        h_of[r] = kv * s.group + flat % s.group;
        if (path == Path::f32)
            f32_rows[r] = queries.f32 + (m_of[r] * s.H + h_of[r]) * s.D;
        else
            int_rows[r] = queries.pairs + (m_of[r] * s.H + h_of[r]) * s.D2;
    }
    if (path == Path::f32) {
        F32s acc[kMaxRows][kVectors];
        f32_block<R>(f32_rows, f32_tile, s.D, acc);
        for (std::size_t r = 0; r < R; ++r)
            for (std::size_t v = 0; v < kVectors; ++v) {
                float* out = sums + m_of[r] * kTile + v * kLanes;
                (F32s::load_aligned(out) + acc[r][v]).store_aligned(out);
            }
    } else {
        I32s acc[kMaxRows][kVectors];
        int_block<R>(int_rows, int_tile, s.D2, acc);
        for (std::size_t r = 0; r < R; ++r) {
            const F32s row_scale(queries.scales[m_of[r] * s.H + h_of[r]]);
            for (std::size_t v = 0; v < kVectors; ++v) {
                float* out = sums + m_of[r] * kTile + v * kLanes;
                const F32s scale = F32s::load_aligned(key_scales + v * kLanes) * row_scale;
                xsimd::fma(xsimd::batch_cast<float>(acc[r][v]), scale, F32s::load_aligned(out)).store_aligned(out);
            }
        }
    }
}

void relevance(const kvfuse_relevance_args& a) {
    Shape s{};
    s.M = a.question_rows;
    s.C = a.candidates;
    s.docs = s.C - s.M;
    s.H = a.query_heads;
    s.Hkv = a.kv_heads;
    s.D = a.head_dim;
    s.D2 = (s.D + 1) / 2;
    s.group = s.H / s.Hkv;
    const detail::RelevanceSegments segments(a);
    const std::size_t segment_count = segments.list.size();
    const Path path = segments.list[0].keys_i4 != nullptr ? Path::int4 : segments.list[0].keys_i8 != nullptr ? Path::int8 : Path::f32;
    const float inv = 1.0f / std::sqrt(static_cast<float>(s.H * s.D));
    const std::size_t tiles = (s.C + kTile - 1) / kTile, padded = tiles * kTile;
    const std::size_t rows_per_kv = s.M * s.group;
    const kvfuse_tuning tuning = detail::current_tuning();
    const std::size_t block_rows = tuning.score_query_rows;
    const bool parallel = static_cast<double>(s.M) * s.C * s.H * s.D > static_cast<double>(tuning.score_parallel_work);

    // int paths: every segment's query (row, head) as D2 s16 pairs, built once.
    const std::size_t pairs_per_segment = s.M * s.H * s.D2;
    Aligned<std::int32_t> query_pairs;
    std::vector<SegmentQueries> queries(segment_count);
    if (path != Path::f32) query_pairs.resize(segment_count * pairs_per_segment);
    for (std::size_t si = 0; si < segment_count; ++si) {
        const kvfuse_relevance_segment& g = segments.list[si];
        queries[si] = {g.queries_f32, query_pairs.data() + si * pairs_per_segment, g.query_scales};
        if (path == Path::f32) continue;
        std::int32_t* pairs = query_pairs.data() + si * pairs_per_segment;
        for (std::size_t rh = 0; rh < s.M * s.H; ++rh)
            for (std::size_t d2 = 0; d2 < s.D2; ++d2) {
                const std::size_t d = 2 * d2;
                const std::int8_t* q = g.queries_i8 + rh * s.D;
                pairs[rh * s.D2 + d2] = pack_pair(q[d], d + 1 < s.D ? q[d + 1] : 0);
            }
    }

    Aligned<float> logits(s.M * padded);
#pragma omp parallel if (parallel)
    {
        Aligned<float> f32_tile(path == Path::f32 ? s.D * kTile : 0), key_scales(kTile), sums(s.M * kTile);
        Aligned<std::int32_t> int_tile(path == Path::f32 ? 0 : s.D2 * kTile);
#pragma omp for schedule(static)
        for (std::ptrdiff_t ti = 0; ti < static_cast<std::ptrdiff_t>(tiles); ++ti) {
            const std::size_t j0 = static_cast<std::size_t>(ti) * kTile, end = std::min(j0 + kTile, s.C);
            const std::size_t first_segment = segments.of(j0);
            std::fill(sums.begin(), sums.end(), 0.0f);
            for (std::size_t kv = 0; kv < s.Hkv; ++kv) {
                // Usually one segment covers the tile; at a boundary each fills its own lanes.
                for (std::size_t si = first_segment; si < segment_count && segments.starts[si] < end; ++si) {
                    const std::size_t lo = std::max(segments.starts[si], j0) - j0, hi = std::min(segments.starts[si + 1], end) - j0;
                    layout_tile(segments.list[si], s, path, j0 + lo - segments.starts[si], lo, hi, kv, f32_tile.data(),
                                int_tile.data(), key_scales.data());
                    std::size_t row = 0;
                    for (; row + block_rows <= rows_per_kv; row += block_rows) {
                        const auto block = block_rows == 6   ? &rows_of_group<6>
                                           : block_rows == 2 ? &rows_of_group<2>
                                                             : &rows_of_group<4>;
                        block(queries[si], s, path, kv, row, f32_tile.data(), int_tile.data(), key_scales.data(), sums.data());
                    }
                    for (; row < rows_per_kv; ++row)
                        rows_of_group<1>(queries[si], s, path, kv, row, f32_tile.data(), int_tile.data(), key_scales.data(),
                                         sums.data());
                }
            }
            // Bias, scale, and mask what a row may not see (key j > docs + m) and the padding.
            for (std::size_t si = first_segment; si < segment_count && segments.starts[si] < end; ++si) {
                const float* bias = segments.list[si].bias;
                const std::size_t lo = std::max(segments.starts[si], j0), hi = std::min(segments.starts[si + 1], end);
                for (std::size_t m = 0; m < s.M; ++m) {
                    const float row_bias = bias != nullptr ? bias[m] : 0.0f;
                    for (std::size_t j = lo; j < hi; ++j)
                        logits[m * padded + j] = j <= s.docs + m ? (sums[m * kTile + (j - j0)] + row_bias) * inv : -INFINITY;
                }
            }
            for (std::size_t m = 0; m < s.M; ++m)
                for (std::size_t j = end; j < j0 + kTile; ++j) logits[m * padded + j] = -INFINITY;
        }
    }

    // Softmax per question row, in place; the row's 1 / total kept for the column sums.
    std::vector<float> inverse_total(s.M);
#pragma omp parallel for schedule(static) if (parallel)
    for (std::ptrdiff_t mi = 0; mi < static_cast<std::ptrdiff_t>(s.M); ++mi) {
        float* row = logits.data() + static_cast<std::size_t>(mi) * padded;
        F32s max_v(-INFINITY);
        for (std::size_t j = 0; j < padded; j += kLanes) max_v = xsimd::max(max_v, F32s::load_aligned(row + j));
        alignas(64) float lanes[kLanes];
        max_v.store_aligned(lanes);
        float max = lanes[0];
        for (std::size_t l = 1; l < kLanes; ++l) max = std::fmax(max, lanes[l]);
        F32s total_v(0.0f);
        const F32s shift(max);
        for (std::size_t j = 0; j < padded; j += kLanes) {
            const F32s e = xsimd::exp(F32s::load_aligned(row + j) - shift);
            e.store_aligned(row + j);
            total_v += e;
        }
        inverse_total[static_cast<std::size_t>(mi)] = 1.0f / xsimd::hadd(total_v);
    }
    // Column sums over the question rows, document keys only.
    Aligned<float> column(padded, 0.0f);
#pragma omp parallel for schedule(static) if (parallel)
    for (std::ptrdiff_t ti = 0; ti < static_cast<std::ptrdiff_t>(tiles); ++ti) {
        const std::size_t j0 = static_cast<std::size_t>(ti) * kTile;
        for (std::size_t v = 0; v < kVectors; ++v) {
            F32s acc(0.0f);
            for (std::size_t m = 0; m < s.M; ++m)
                acc = xsimd::fma(F32s::load_aligned(logits.data() + m * padded + j0 + v * kLanes), F32s(inverse_total[m]), acc);
            acc.store_aligned(column.data() + j0 + v * kLanes);
        }
    }
    for (std::size_t j = 0; j < s.docs; ++j) {
        if (!a.smoothing) {
            a.out[j] = column[j];
            continue;
        }
        float acc = 0.0f;
        for (std::size_t k = (j >= 2 ? j - 2 : 0); k <= j + 2 && k < s.docs; ++k) acc += column[k];
        a.out[j] = acc / 5.0f;
    }
}

}  // namespace

void register_score(detail::KernelTable& table) { table.relevance = &relevance; }

}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
