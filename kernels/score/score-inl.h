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

// The keys [j0, j0 + kTile) of one KV head as scratch: f32 -> D rows of kTile floats; int ->
// D2 rows of kTile s16 pairs. Keys past the end are zero.
void layout_tile(const kvfuse_relevance_args& a, const Shape& s, Path path, std::size_t j0, std::size_t kv,
                 float* f32_tile, std::int32_t* int_tile, float* key_scales) {
    const std::size_t count = std::min(kTile, s.C - j0);
    for (std::size_t jj = 0; jj < kTile; ++jj) {
        const std::size_t j = j0 + jj;
        if (path == Path::f32) {
            const float* key = a.keys_f32 + (j * s.Hkv + kv) * s.D;
            for (std::size_t d = 0; d < s.D; ++d) f32_tile[d * kTile + jj] = jj < count ? key[d] : 0.0f;
            continue;
        }
        key_scales[jj] = jj < count ? a.key_scales[j * s.Hkv + kv] : 0.0f;
        if (jj >= count) {
            for (std::size_t d2 = 0; d2 < s.D2; ++d2) int_tile[d2 * kTile + jj] = 0;
        } else if (path == Path::int8) {
            const std::int8_t* key = a.keys_i8 + (j * s.Hkv + kv) * s.D;
            for (std::size_t d2 = 0; d2 < s.D2; ++d2) {
                const std::size_t d = 2 * d2;
                int_tile[d2 * kTile + jj] = pack_pair(key[d], d + 1 < s.D ? key[d + 1] : 0);
            }
        } else {
            const std::uint8_t* key = a.keys_i4 + (j * s.Hkv + kv) * s.D2;
            for (std::size_t d2 = 0; d2 < s.D2; ++d2)
                int_tile[d2 * kTile + jj] = pack_pair(nibble(key[d2]), nibble(key[d2] >> 4u));
        }
    }
}

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
void rows_of_group(const kvfuse_relevance_args& a, const Shape& s, Path path, std::size_t kv, std::size_t first_row,
                   const float* f32_tile, const std::int32_t* int_tile, const float* key_scales,
                   const std::int32_t* query_pairs, float* sums) {
    const float* f32_rows[kMaxRows];
    const std::int32_t* int_rows[kMaxRows];
    std::size_t m_of[kMaxRows], h_of[kMaxRows];
    for (std::size_t r = 0; r < R; ++r) {
        const std::size_t flat = first_row + r;
        m_of[r] = flat / s.group;
        h_of[r] = kv * s.group + flat % s.group;
        if (path == Path::f32)
            f32_rows[r] = a.queries_f32 + (m_of[r] * s.H + h_of[r]) * s.D;
        else
            int_rows[r] = query_pairs + (m_of[r] * s.H + h_of[r]) * s.D2;
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
            const F32s row_scale(a.query_scales[m_of[r] * s.H + h_of[r]]);
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
    const Path path = a.keys_i4 != nullptr ? Path::int4 : a.keys_i8 != nullptr ? Path::int8 : Path::f32;
    const float inv = 1.0f / std::sqrt(static_cast<float>(s.H * s.D));
    const std::size_t tiles = (s.C + kTile - 1) / kTile, padded = tiles * kTile;
    const std::size_t rows_per_kv = s.M * s.group;
    const kvfuse_tuning tuning = detail::current_tuning();
    const std::size_t block_rows = tuning.score_query_rows;
    const bool parallel = static_cast<double>(s.M) * s.C * s.H * s.D > static_cast<double>(tuning.score_parallel_work);

    // int paths: every query (row, head) as D2 s16 pairs, built once.
    Aligned<std::int32_t> query_pairs;
    if (path != Path::f32) {
        query_pairs.resize(s.M * s.H * s.D2);
        for (std::size_t rh = 0; rh < s.M * s.H; ++rh)
            for (std::size_t d2 = 0; d2 < s.D2; ++d2) {
                const std::size_t d = 2 * d2;
                const std::int8_t* q = a.queries_i8 + rh * s.D;
                query_pairs[rh * s.D2 + d2] = pack_pair(q[d], d + 1 < s.D ? q[d + 1] : 0);
            }
    }

    Aligned<float> logits(s.M * padded);
#pragma omp parallel if (parallel)
    {
        Aligned<float> f32_tile(path == Path::f32 ? s.D * kTile : 0), key_scales(kTile), sums(s.M * kTile);
        Aligned<std::int32_t> int_tile(path == Path::f32 ? 0 : s.D2 * kTile);
#pragma omp for schedule(static)
        for (std::ptrdiff_t ti = 0; ti < static_cast<std::ptrdiff_t>(tiles); ++ti) {
            const std::size_t j0 = static_cast<std::size_t>(ti) * kTile;
            std::fill(sums.begin(), sums.end(), 0.0f);
            for (std::size_t kv = 0; kv < s.Hkv; ++kv) {
                layout_tile(a, s, path, j0, kv, f32_tile.data(), int_tile.data(), key_scales.data());
                std::size_t row = 0;
                for (; row + block_rows <= rows_per_kv; row += block_rows) {
                    const auto block = block_rows == 6   ? &rows_of_group<6>
                                       : block_rows == 2 ? &rows_of_group<2>
                                                         : &rows_of_group<4>;
                    block(a, s, path, kv, row, f32_tile.data(), int_tile.data(), key_scales.data(), query_pairs.data(),
                          sums.data());
                }
                for (; row < rows_per_kv; ++row)
                    rows_of_group<1>(a, s, path, kv, row, f32_tile.data(), int_tile.data(), key_scales.data(),
                                     query_pairs.data(), sums.data());
            }
            // Scale, and mask what a row may not see (key j > docs + m) and the padding.
            for (std::size_t m = 0; m < s.M; ++m)
                for (std::size_t jj = 0; jj < kTile; ++jj) {
                    const std::size_t j = j0 + jj;
                    logits[m * padded + j] = j <= s.docs + m ? sums[m * kTile + jj] * inv : -INFINITY;
                }
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
