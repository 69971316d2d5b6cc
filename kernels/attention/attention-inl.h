// Sparse-row attention written once on the xsimd architecture (see kernels/README.md for how it
// is compiled per ISA). No include guard on purpose.
//
// Loop order: for each (KV head, block of rows sorted by position), keys are taken in tiles of
// kKeyTile; each tile is transposed (and widened from bf16) ONCE into scratch and then used by
// every row of the block and every query head of the group. Scores are computed with vectors
// running across keys (no horizontal reductions), the softmax is online (running max and sum
// per row and head), and P·V accumulates with vectors running across the head dimension.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>
#include <xsimd/xsimd.hpp>

#include "kernels/common/bf16.h"
#include "kernels/kernel_table.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
constexpr std::size_t kLanes = F32s::size;
constexpr std::size_t kKeyTile = 64;   // keys per tile: a multiple of every ISA's lane count
constexpr std::size_t kRowBlock = 16;  // rows sharing one transposed tile
static_assert(kKeyTile % 16 == 0, "key tile must be a multiple of the widest vector");

struct RowState {
    float max;
    float sum;
};

// Copies keys [first, first + count) of one KV head into scratch transposed (D x kKeyTile), and
// values row-major (kKeyTile x D), widening bf16. Missing keys of a partial tile are zero.
void load_tile(const kvfuse_attention_args& a, std::size_t kv_head, std::size_t first, std::size_t count,
               float* keys_t, float* values) {
    const std::size_t d_count = a.head_dim;
    for (std::size_t j = 0; j < count; ++j) {
        const std::size_t at = (first + j) * a.kv_token_stride + kv_head * d_count;
        if (a.kv_dtype == KVFUSE_DTYPE_F32) {
            const float* k = static_cast<const float*>(a.keys) + at;
            const float* v = static_cast<const float*>(a.values) + at;
            for (std::size_t d = 0; d < d_count; ++d) keys_t[d * kKeyTile + j] = k[d];
            std::memcpy(values + j * d_count, v, d_count * sizeof(float));
        } else {
            const std::uint16_t* k = static_cast<const std::uint16_t*>(a.keys) + at;
            const std::uint16_t* v = static_cast<const std::uint16_t*>(a.values) + at;
            for (std::size_t d = 0; d < d_count; ++d) {
                keys_t[d * kKeyTile + j] = detail::bf16_bits_to_f32(k[d]);
                values[j * d_count + d] = detail::bf16_bits_to_f32(v[d]);
            }
        }
    }
    for (std::size_t j = count; j < kKeyTile; ++j) {
        for (std::size_t d = 0; d < d_count; ++d) keys_t[d * kKeyTile + j] = 0.0f;
        std::memset(values + j * d_count, 0, d_count * sizeof(float));
    }
}

// scores[0, kKeyTile) = scale * q . K_tile (vectors across keys). Two sets of accumulators
// (even and odd d) give twice as many independent FMA chains as the tile has vectors, enough to
// cover the FMA latency on two pipes.
void tile_scores(const float* q, const float* keys_t, std::size_t head_dim, float scale, float* scores) {
    constexpr std::size_t kVectors = kKeyTile / kLanes;
    F32s even[kVectors], odd[kVectors];
    for (std::size_t v = 0; v < kVectors; ++v) even[v] = odd[v] = F32s(0.0f);
    std::size_t d = 0;
    for (; d + 2 <= head_dim; d += 2) {
        const F32s q0(q[d]), q1(q[d + 1]);
        const float* row0 = keys_t + d * kKeyTile;
        const float* row1 = row0 + kKeyTile;
        for (std::size_t v = 0; v < kVectors; ++v) {
            even[v] = xsimd::fma(q0, F32s::load_aligned(row0 + v * kLanes), even[v]);
            odd[v] = xsimd::fma(q1, F32s::load_aligned(row1 + v * kLanes), odd[v]);
        }
    }
    if (d < head_dim) {
        const F32s qd(q[d]);
        const float* row = keys_t + d * kKeyTile;
        for (std::size_t v = 0; v < kVectors; ++v) even[v] = xsimd::fma(qd, F32s::load_aligned(row + v * kLanes), even[v]);
    }
    const F32s s(scale);
    for (std::size_t v = 0; v < kVectors; ++v) ((even[v] + odd[v]) * s).store_aligned(scores + v * kLanes);
}

// out += sum_j p[j] * V[j] over `count` keys. Blocks of up to 8 vectors of the head dimension
// stay in registers while the keys stream past.
void accumulate_values(const float* p, const float* values, std::size_t count, std::size_t head_dim, float* out) {
    constexpr std::size_t kBlock = 8;
    std::size_t d = 0;
    for (; d + kLanes <= head_dim;) {
        const std::size_t vectors = std::min(kBlock, (head_dim - d) / kLanes);
        F32s acc[kBlock];
        for (std::size_t v = 0; v < vectors; ++v) acc[v] = F32s::load_unaligned(out + d + v * kLanes);
        for (std::size_t j = 0; j < count; ++j) {
            const F32s weight(p[j]);
            const float* row = values + j * head_dim + d;
            for (std::size_t v = 0; v < vectors; ++v) acc[v] = xsimd::fma(weight, F32s::load_unaligned(row + v * kLanes), acc[v]);
        }
        for (std::size_t v = 0; v < vectors; ++v) acc[v].store_unaligned(out + d + v * kLanes);
        d += vectors * kLanes;
    }
    for (; d < head_dim; ++d) {
        float acc = out[d];
        for (std::size_t j = 0; j < count; ++j) acc = std::fma(p[j], values[j * head_dim + d], acc);
        out[d] = acc;
    }
}

// One online-softmax step of one (row, head) over the first `visible` keys of a tile; the
// scores beyond are masked to -inf so the whole tile runs in vectors (exp(-inf) = 0).
void update(float* scores, std::size_t visible, const float* values, std::size_t head_dim, RowState& state, float* acc) {
    constexpr std::size_t kVectors = kKeyTile / kLanes;
    for (std::size_t j = visible; j < kKeyTile; ++j) scores[j] = -INFINITY;
    F32s max_v(-INFINITY);
    auto nan_v = F32s(0.0f) != F32s(0.0f);
    for (std::size_t v = 0; v < kVectors; ++v) {
        const F32s x = F32s::load_aligned(scores + v * kLanes);
        max_v = xsimd::max(max_v, x);
        nan_v = nan_v || (x != x);
    }
    // A NaN score poisons its row (every later exp and sum is NaN), as in the reference.
    alignas(64) float lanes[kLanes];
    max_v.store_aligned(lanes);
    const float tile_max = xsimd::any(nan_v) ? NAN : *std::max_element(lanes, lanes + kLanes);
    const float new_max = std::isnan(tile_max) ? tile_max : std::max(state.max, tile_max);
    const float rescale = std::exp(state.max - new_max);  // 0 on the first tile (max = -inf)
    F32s sum_v(0.0f);
    const F32s shift(new_max);
    for (std::size_t v = 0; v < kVectors; ++v) {
        const F32s e = xsimd::exp(F32s::load_aligned(scores + v * kLanes) - shift);
        e.store_aligned(scores + v * kLanes);
        sum_v += e;
    }
    if (rescale != 1.0f)
        for (std::size_t d = 0; d < head_dim; ++d) acc[d] *= rescale;
    state.sum = state.sum * rescale + xsimd::hadd(sum_v);
    state.max = new_max;
    accumulate_values(scores, values, visible, head_dim, acc);
}

void sparse_attention(const kvfuse_attention_args& a) {
    const std::size_t group = a.query_heads / a.kv_heads;
    const std::size_t d_count = a.head_dim;
    // Rows by position, so that a block's rows need about the same key tiles.
    std::vector<std::size_t> order(a.rows);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) { return a.positions[x] < a.positions[y]; });
    const std::size_t blocks = (a.rows + kRowBlock - 1) / kRowBlock;
    const std::size_t tasks = blocks * a.kv_heads;
    double work = 0.0;
    for (std::size_t r = 0; r < a.rows; ++r) work += static_cast<double>(a.positions[r] + 1);
    work *= static_cast<double>(a.query_heads * d_count);
    const bool parallel = work > 2e5 && tasks > 1 && omp_get_max_threads() > 1;

#pragma omp parallel if (parallel)
    {
        std::vector<float, xsimd::aligned_allocator<float, 64>> keys_t(d_count * kKeyTile), values(kKeyTile * d_count),
            scores(kKeyTile);
        std::vector<float> acc(kRowBlock * group * d_count);
        std::vector<RowState> states(kRowBlock * group);
#pragma omp for schedule(dynamic)
        for (std::ptrdiff_t task = 0; task < static_cast<std::ptrdiff_t>(tasks); ++task) {
            // Later (longer) blocks first: better balance under dynamic scheduling.
            const std::size_t block = blocks - 1 - static_cast<std::size_t>(task) / a.kv_heads;
            const std::size_t kv_head = static_cast<std::size_t>(task) % a.kv_heads;
            const std::size_t begin = block * kRowBlock, end = std::min(a.rows, begin + kRowBlock);
            const std::size_t last_key = static_cast<std::size_t>(a.positions[order[end - 1]]);
            std::fill(acc.begin(), acc.end(), 0.0f);
            std::fill(states.begin(), states.end(), RowState{-INFINITY, 0.0f});
            for (std::size_t first = 0; first <= last_key; first += kKeyTile) {
                const std::size_t count = std::min(kKeyTile, last_key + 1 - first);
                load_tile(a, kv_head, first, count, keys_t.data(), values.data());
                for (std::size_t i = begin; i < end; ++i) {
                    const std::size_t position = static_cast<std::size_t>(a.positions[order[i]]);
                    if (position < first) continue;
                    const std::size_t visible = std::min(count, position + 1 - first);
                    for (std::size_t g = 0; g < group; ++g) {
                        const std::size_t h = kv_head * group + g;
                        const float* q = a.queries + order[i] * a.query_row_stride + h * d_count;
                        tile_scores(q, keys_t.data(), d_count, a.scale, scores.data());
                        const std::size_t slot = (i - begin) * group + g;
                        update(scores.data(), visible, values.data(), d_count, states[slot], acc.data() + slot * d_count);
                    }
                }
            }
            for (std::size_t i = begin; i < end; ++i)
                for (std::size_t g = 0; g < group; ++g) {
                    const std::size_t slot = (i - begin) * group + g;
                    const float inverse = 1.0f / states[slot].sum;
                    float* out = a.out + order[i] * a.out_row_stride + (kv_head * group + g) * d_count;
                    const float* from = acc.data() + slot * d_count;
                    for (std::size_t d = 0; d < d_count; ++d) out[d] = from[d] * inverse;
                }
        }
    }
}

}  // namespace

void register_attention(detail::KernelTable& table) { table.sparse_attention = &sparse_attention; }

}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
