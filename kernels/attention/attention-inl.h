// Sparse-row attention written once on the xsimd architecture (see kernels/README.md for how it
// is compiled per ISA). No include guard on purpose.
//
// Loop order: (sequence, KV head) units in turn (one sequence unless args.sequences > 1); each
// unit's keys -- read from contiguous, strided or paged K/V (Layout, KeyWalk) -- are transposed
// into tiles (D x tile, widened from bf16 or f16) and its values widened ONCE into a packed copy,
// then blocks of the sequence's rows sorted by position (tile and row block from the tuning in
// force, see kernels/tuning.h) walk its tiles in order. Each tile serves every row of the block
// and every query head of the group. Scores are computed with vectors running across keys (no
// horizontal reductions), the softmax is online (running max and sum per row and head), and P.V
// accumulates with vectors running across the head dimension. Threads take packing chunks and row blocks from one ordered task list (see
// sparse_attention), without barriers between units.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <numeric>
#include <thread>
#include <type_traits>
#include <vector>
#include <xsimd/xsimd.hpp>

#include "kernels/common/bf16.h"
#include "kernels/common/half-inl.h"
#include "kernels/common/narrower_batch.h"
#include "kernels/kernel_table.h"
#include "kernels/call_context.h"
#include "kernels/common/workers.h"
#include "kernels/tuning.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
constexpr std::size_t kLanes = F32s::size;
// Key tiles (32, 64 or 128 keys) are a multiple of 2 vectors of the widest ISA.
static_assert(32 % (2 * kLanes) == 0, "the smallest key tile must hold whole pairs of vectors");
// Scores of one (row, head) sit kScoreStride floats apart whatever the tile (the largest tile the
// tuning allows), so that the R heads of a register block are one pointer plus constant
// offsets: with R pointers the inner loops ran out of registers and reloaded them from the stack.
constexpr std::size_t kScoreStride = 128;
// Queries are packed per row as blocks of kHeadBlock heads interleaved by dimension
// (q[d][head]): the broadcasts of the inner score loop then come from one pointer as well.
constexpr std::size_t kHeadBlock = 4;

struct RowState {
    float max;           // of the scores seen so far
    float sum[kLanes];   // of exp(score - max), per lane
};

// The call's tensors as the kernel reads them: the V2 strides with their defaults resolved, and
// where each sequence's rows and keys are (one sequence when args.sequences is 0).
struct Layout {
    const kvfuse_attention_args* a;
    std::size_t query_head, kv_head, out_head, lse_row, block_stride, sequences;
    explicit Layout(const kvfuse_attention_args& args)
        : a(&args),
          query_head(args.query_head_stride != 0 ? args.query_head_stride : args.head_dim),
          kv_head(args.kv_head_stride != 0 ? args.kv_head_stride : args.head_dim),
          out_head(args.out_head_stride != 0 ? args.out_head_stride : args.head_dim),
          lse_row(args.lse_row_stride != 0 ? args.lse_row_stride : args.query_heads),
          block_stride(args.kv_block_stride != 0 ? args.kv_block_stride : args.kv_block_size * args.kv_token_stride),
          sequences(args.sequences != 0 ? args.sequences : 1) {}
    std::size_t first_row(std::size_t seq) const { return a->sequences != 0 ? static_cast<std::size_t>(a->cu_rows[seq]) : 0; }
    std::size_t end_row(std::size_t seq) const {
        return a->sequences != 0 ? static_cast<std::size_t>(a->cu_rows[seq + 1]) : a->rows;
    }
    std::size_t first_key(std::size_t seq) const {
        return a->sequences != 0 ? static_cast<std::size_t>(a->cu_kv_tokens[seq]) : 0;
    }
};

// Element offsets of consecutive keys of one sequence and KV head: one running offset when the
// keys are contiguous, block by block through the sequence's table when paged (the table is read
// only for blocks that hold a key the call reads: next() is called only before such a key).
class KeyWalk {
   public:
    KeyWalk(const Layout& l, std::size_t seq, std::size_t kv_head, std::size_t token)
        : token_stride_(l.a->kv_token_stride), head_at_(kv_head * l.kv_head) {
        if (l.a->kv_block_table == nullptr) {
            base_ = (l.first_key(seq) + token) * token_stride_ + head_at_;
            return;
        }
        table_ = l.a->kv_block_table + seq * l.a->kv_block_table_stride;
        block_size_ = l.a->kv_block_size;
        block_stride_ = l.block_stride;
        block_ = token / block_size_;
        slot_ = token % block_size_;
        base_ = static_cast<std::size_t>(table_[block_]) * block_stride_ + head_at_;
    }
    std::size_t offset() const { return base_ + slot_ * token_stride_; }
    void next() {
        if (++slot_ == block_size_) {
            slot_ = 0;
            base_ = static_cast<std::size_t>(table_[++block_]) * block_stride_ + head_at_;
        }
    }

   private:
    std::size_t token_stride_, head_at_, base_ = 0, slot_ = 0;
    const std::int32_t* table_ = nullptr;
    std::size_t block_size_ = ~std::size_t{0}, block_stride_ = 0, block_ = 0;
};

// Copies keys [first, first + count) of one sequence and KV head into a packed tile, transposed
// (D x tile), and values row-major (tile x D), widening bf16 and f16. Missing keys of a partial
// tile are zero.
void load_tile(const Layout& layout, std::size_t seq, std::size_t kv_head, std::size_t first, std::size_t count,
               std::size_t tile, float* keys_t, float* values) {
    const kvfuse_attention_args& a = *layout.a;
    const std::size_t d_count = a.head_dim;
    KeyWalk walk(layout, seq, kv_head, first);
    for (std::size_t j = 0; j < count; ++j) {
        if (j > 0) walk.next();
        const std::size_t at = walk.offset();
        if (a.kv_dtype == KVFUSE_DTYPE_F32) {
            const float* k = static_cast<const float*>(a.keys) + at;
            const float* v = static_cast<const float*>(a.values) + at;
            for (std::size_t d = 0; d < d_count; ++d) keys_t[d * tile + j] = k[d];
            std::memcpy(values + j * d_count, v, d_count * sizeof(float));
        } else if (a.kv_dtype == KVFUSE_DTYPE_F16) {
            // Widened a vector at a time (vcvtph2ps / fcvtl); the keys then go to their columns.
            const std::uint16_t* k = static_cast<const std::uint16_t*>(a.keys) + at;
            const std::uint16_t* v = static_cast<const std::uint16_t*>(a.values) + at;
            alignas(64) float lanes[kLanes];
            std::size_t d = 0;
            for (; d + kLanes <= d_count; d += kLanes) {
                load_f16<F32s>(v + d).store_unaligned(values + j * d_count + d);
                load_f16<F32s>(k + d).store_aligned(lanes);
                for (std::size_t l = 0; l < kLanes; ++l) keys_t[(d + l) * tile + j] = lanes[l];
            }
            for (; d < d_count; ++d) {
                keys_t[d * tile + j] = f16_one(k[d]);
                values[j * d_count + d] = f16_one(v[d]);
            }
        } else {
            const std::uint16_t* k = static_cast<const std::uint16_t*>(a.keys) + at;
            const std::uint16_t* v = static_cast<const std::uint16_t*>(a.values) + at;
            for (std::size_t d = 0; d < d_count; ++d) {
                keys_t[d * tile + j] = detail::bf16_bits_to_f32(k[d]);
                values[j * d_count + d] = detail::bf16_bits_to_f32(v[d]);
            }
        }
    }
    for (std::size_t j = count; j < tile; ++j) {
        for (std::size_t d = 0; d < d_count; ++d) keys_t[d * tile + j] = 0.0f;
        std::memset(values + j * d_count, 0, d_count * sizeof(float));
    }
}

// scores[r * kScoreStride + 0..tile) = scale * q_r . K_tile for R query heads of one KV group
// at once (q interleaved: q[d * kHeadBlock + r]): each key vector loaded from the transposed
// tile serves R heads, and 2R independent FMA chains cover the FMA latency.
template <std::size_t R>
void tile_scores(const float* q, const float* keys_t, std::size_t tile, std::size_t head_dim, float scale,
                 float* scores) {
    constexpr std::size_t kChunk = 2;  // key vectors per register block
    const F32s s(scale);
    for (std::size_t v0 = 0; v0 < tile / kLanes; v0 += kChunk) {
        F32s acc[R][kChunk];
        for (std::size_t r = 0; r < R; ++r) acc[r][0] = acc[r][1] = F32s(0.0f);
        const float* column = keys_t + v0 * kLanes;
        for (std::size_t d = 0; d < head_dim; ++d) {
            const F32s k0 = F32s::load_aligned(column + d * tile), k1 = F32s::load_aligned(column + d * tile + kLanes);
            for (std::size_t r = 0; r < R; ++r) {
                const F32s qd(q[d * kHeadBlock + r]);
                acc[r][0] = xsimd::fma(qd, k0, acc[r][0]);
                acc[r][1] = xsimd::fma(qd, k1, acc[r][1]);
            }
        }
        for (std::size_t r = 0; r < R; ++r) {
            (acc[r][0] * s).store_aligned(scores + r * kScoreStride + v0 * kLanes);
            (acc[r][1] * s).store_aligned(scores + r * kScoreStride + (v0 + 1) * kLanes);
        }
    }
}

// out_r[d, d + V * lanes) += sum_j p_r[j] * V[j] over `count` keys for R heads (p_r = p +
// r * kScoreStride, out_r = out + r * head_dim): each value vector loaded serves R heads, and the
// R x V accumulators stay in registers while the keys stream past. B is the full-width batch or,
// for the tail of the head dimension, a narrower one.
// Always inlined: out of line (as GCC 12 has left it since 3df48ec moved the row blocks into a
// worker lambda) it kept acc[][] in a stack array, 12 zmm stored and reloaded around every call
// of a <= 32-key loop, and attention ran 5-7 % slower on Zen 4 (in-process A/B, 1 and 2 threads).
template <class B, std::size_t R, std::size_t V>
[[gnu::always_inline]] inline void values_block(const float* p, const float* values, std::size_t count,
                                                std::size_t head_dim, std::size_t d, float* out) {
    constexpr std::size_t lanes = B::size;
    B acc[R][V];
    for (std::size_t r = 0; r < R; ++r)
        for (std::size_t v = 0; v < V; ++v) acc[r][v] = B::load_unaligned(out + r * head_dim + d + v * lanes);
    const float* row = values + d;
    for (std::size_t j = 0; j < count; ++j, row += head_dim) {
        B x[V];
        for (std::size_t v = 0; v < V; ++v) x[v] = B::load_unaligned(row + v * lanes);
        for (std::size_t r = 0; r < R; ++r) {
            const B weight(p[r * kScoreStride + j]);
            for (std::size_t v = 0; v < V; ++v) acc[r][v] = xsimd::fma(weight, x[v], acc[r][v]);
        }
    }
    for (std::size_t r = 0; r < R; ++r)
        for (std::size_t v = 0; v < V; ++v) acc[r][v].store_unaligned(out + r * head_dim + d + v * lanes);
}

// The tail [d, head_dim) that holds less than one full vector: narrower vectors of the same ISA
// (an AVX-512 head of 8 or 40 dimensions ends in one 256-bit vector), so that no head dimension
// runs slower on a wider ISA. Returns where the vectors stopped (only a tail of < 4 is left).
template <class NarrowArch, std::size_t R>
std::size_t values_tail(const float* p, const float* values, std::size_t count, std::size_t head_dim, std::size_t d,
                        float* out) {
    if constexpr (!std::is_void_v<NarrowArch>) {
        using B = xsimd::batch<float, NarrowArch>;
        for (; d + B::size <= head_dim; d += B::size) values_block<B, R, 1>(p, values, count, head_dim, d, out);
        return values_tail<detail::narrower_arch_t<NarrowArch>, R>(p, values, count, head_dim, d, out);
    }
    return d;
}

// out_r += sum_j p_r[j] * V[j] for the whole head dimension. Blocks of 3 vectors where R = 4:
// 12 independent FMA chains (of 16 registers) leave the scheduler slack that 8 chains, exactly
// latency x throughput, do not; a remainder of 1 vector is taken as 2 + 2 instead of 3 + 1.
template <std::size_t R>
void accumulate_values(const float* p, const float* values, std::size_t count, std::size_t head_dim, float* out) {
    const std::size_t vectors = head_dim / kLanes;
    std::size_t triples = R == 4 ? vectors / 3 : 0;
    if (triples > 0 && vectors - 3 * triples == 1) --triples;
    std::size_t d = 0;
    for (std::size_t t = 0; t < triples; ++t, d += 3 * kLanes) values_block<F32s, R, 3>(p, values, count, head_dim, d, out);
    for (; d + 2 * kLanes <= head_dim; d += 2 * kLanes) values_block<F32s, R, 2>(p, values, count, head_dim, d, out);
    for (; d + kLanes <= head_dim; d += kLanes) values_block<F32s, R, 1>(p, values, count, head_dim, d, out);
    d = values_tail<detail::narrower_arch_t<Arch>, R>(p, values, count, head_dim, d, out);
    for (; d < head_dim; ++d)
        for (std::size_t r = 0; r < R; ++r) {
            float acc = out[r * head_dim + d];
            for (std::size_t j = 0; j < count; ++j) acc = std::fma(p[r * kScoreStride + j], values[j * head_dim + d], acc);
            out[r * head_dim + d] = acc;
        }
}

// One online-softmax step of one (row, head) over the first `visible` keys of a tile: the
// scores become exp(score - running max) (beyond `visible`: -inf, so exp gives 0 and the whole
// tile runs in vectors). The accumulator and sum are rescaled only when the max grows, which
// after the first tiles is rare, and the sum stays a vector until the row is finished.
// A NaN score needs no test of its own: exp(NaN - max) is NaN whatever the max, so the row's
// sum (and accumulator) become NaN, as in the reference.
void softmax_step(float* scores, std::size_t visible, std::size_t tile, std::size_t head_dim, RowState& state, float* acc) {
    const std::size_t vectors = tile / kLanes;
    for (std::size_t j = visible; j < tile; ++j) scores[j] = -INFINITY;
    F32s max_v = F32s::load_aligned(scores);
    for (std::size_t v = 1; v < vectors; ++v) max_v = xsimd::max(max_v, F32s::load_aligned(scores + v * kLanes));
    alignas(64) float lanes[kLanes];
    max_v.store_aligned(lanes);
    float tile_max = lanes[0];
    for (std::size_t l = 1; l < kLanes; ++l) tile_max = std::max(tile_max, lanes[l]);
    F32s sum_v = F32s::load_unaligned(state.sum);
    if (tile_max > state.max) {
        const float rescale = std::exp(state.max - tile_max);  // 0 on the first tile (max = -inf)
        const F32s rescale_v(rescale);
        std::size_t d = 0;
        for (; d + kLanes <= head_dim; d += kLanes) (F32s::load_unaligned(acc + d) * rescale_v).store_unaligned(acc + d);
        for (; d < head_dim; ++d) acc[d] *= rescale;
        sum_v *= rescale_v;
        state.max = tile_max;
    }
    const F32s shift(state.max);
    for (std::size_t v = 0; v < vectors; ++v) {
        const F32s e = xsimd::exp(F32s::load_aligned(scores + v * kLanes) - shift);
        e.store_aligned(scores + v * kLanes);
        sum_v += e;
    }
    sum_v.store_unaligned(state.sum);
}

// Prefetches share `part` of `parts` of the cache lines of [base, base + floats): the rows of a
// pass over one tile each fetch a slice of the next tile, which comes from L3 (a KV head's
// packed copy is larger than L2), so that its misses overlap with this tile's FMAs.
void prefetch_slice(const float* base, std::size_t floats, std::size_t part, std::size_t parts) {
    constexpr std::size_t kLineFloats = 64 / sizeof(float);
    const std::size_t lines = (floats + kLineFloats - 1) / kLineFloats;
    for (std::size_t l = lines * part / parts; l < lines * (part + 1) / parts; ++l)
        __builtin_prefetch(base + l * kLineFloats, 0, 3);
}

// Floats of one row's packed queries: the group rounded up to whole head blocks.
std::size_t packed_query_floats(std::size_t group, std::size_t head_dim) {
    return (group + kHeadBlock - 1) / kHeadBlock * kHeadBlock * head_dim;
}

// Rows of one block (indices into `order`, sorted by position) against the packed tiles of one
// KV head: every tile serves every row of the block that sees it and every head of the group.
// Scratch per (row, head) slot: queries (head_dim floats, interleaved by head blocks), scores
// (kScoreStride floats), accumulator (head_dim floats), state.
void attend_block(const Layout& layout, const std::size_t* order, std::size_t begin, std::size_t end,
                  std::size_t kv_head, const float* packed, std::size_t tile, float* queries, float* scores, float* acc,
                  RowState* states) {
    const kvfuse_attention_args& a = *layout.a;
    const std::size_t group = a.query_heads / a.kv_heads;
    const std::size_t d_count = a.head_dim;
    const std::size_t tile_floats = 2 * d_count * tile;
    const std::size_t last_key = static_cast<std::size_t>(a.positions[order[end - 1]]);
    std::fill(acc, acc + (end - begin) * group * d_count, 0.0f);
    std::fill(states, states + (end - begin) * group, RowState{-INFINITY, {}});
    // The group's heads in blocks of up to kHeadBlock (R below), each block's queries
    // interleaved by dimension (a partial block padded with zeros), packed once per block of rows.
    const std::size_t q_row = packed_query_floats(group, d_count);
    for (std::size_t i = begin; i < end; ++i)
        for (std::size_t g0 = 0; g0 < group; g0 += kHeadBlock) {
            const std::size_t heads = std::min(kHeadBlock, group - g0);
            const float* q = a.queries + order[i] * a.query_row_stride + (kv_head * group + g0) * layout.query_head;
            float* to = queries + (i - begin) * q_row + g0 * d_count;
            for (std::size_t d = 0; d < d_count; ++d)
                for (std::size_t r = 0; r < kHeadBlock; ++r)
                    to[d * kHeadBlock + r] = r < heads ? q[r * layout.query_head + d] : 0.0f;
        }
    for (std::size_t first = 0; first <= last_key; first += tile) {
        const float* keys_t = packed + (first / tile) * tile_floats;
        const float* values = keys_t + d_count * tile;
        const std::size_t count = std::min(tile, last_key + 1 - first);
        // Rows that see this tile: the block is sorted by position, so they are a suffix.
        std::size_t seen = begin;
        while (static_cast<std::size_t>(a.positions[order[seen]]) < first) ++seen;
        const bool more = first + tile <= last_key;
        const float* next_keys_t = keys_t + tile_floats;
        const float* next_values = next_keys_t + d_count * tile;
        // Two passes over the rows (scores and softmax steps of every row, then P.V) so that
        // each pass holds one half of the tile in L1 (K^T, then V: 4 * tile * head_dim bytes)
        // next to one row's queries or accumulators; one pass with both halves missed L1.
        for (std::size_t i = seen; i < end; ++i) {
            const std::size_t position = static_cast<std::size_t>(a.positions[order[i]]);
            const std::size_t visible = std::min(count, position + 1 - first);
            if (more) prefetch_slice(next_keys_t, d_count * tile, i - seen, end - seen);
            for (std::size_t g0 = 0; g0 < group; g0 += kHeadBlock) {
                const std::size_t heads = std::min(kHeadBlock, group - g0);
                const std::size_t slot = (i - begin) * group + g0;
                const float* q = queries + (i - begin) * q_row + g0 * d_count;
                float* head_scores = scores + slot * kScoreStride;
                switch (heads) {
                    case 4: tile_scores<4>(q, keys_t, tile, d_count, a.scale, head_scores); break;
                    case 3: tile_scores<3>(q, keys_t, tile, d_count, a.scale, head_scores); break;
                    case 2: tile_scores<2>(q, keys_t, tile, d_count, a.scale, head_scores); break;
                    default: tile_scores<1>(q, keys_t, tile, d_count, a.scale, head_scores); break;
                }
                for (std::size_t r = 0; r < heads; ++r)
                    softmax_step(head_scores + r * kScoreStride, visible, tile, d_count, states[slot + r],
                                 acc + (slot + r) * d_count);
            }
        }
        for (std::size_t i = seen; i < end; ++i) {
            const std::size_t position = static_cast<std::size_t>(a.positions[order[i]]);
            const std::size_t visible = std::min(count, position + 1 - first);
            if (more) prefetch_slice(next_values, d_count * tile, i - seen, end - seen);
            for (std::size_t g0 = 0; g0 < group; g0 += kHeadBlock) {
                const std::size_t heads = std::min(kHeadBlock, group - g0);
                const std::size_t slot = (i - begin) * group + g0;
                const float* p = scores + slot * kScoreStride;
                float* out = acc + slot * d_count;
                switch (heads) {
                    case 4: accumulate_values<4>(p, values, visible, d_count, out); break;
                    case 3: accumulate_values<3>(p, values, visible, d_count, out); break;
                    case 2: accumulate_values<2>(p, values, visible, d_count, out); break;
                    default: accumulate_values<1>(p, values, visible, d_count, out); break;
                }
            }
        }
    }
    for (std::size_t i = begin; i < end; ++i)
        for (std::size_t g = 0; g < group; ++g) {
            const std::size_t slot = (i - begin) * group + g;
            const float sum = xsimd::hadd(F32s::load_unaligned(states[slot].sum));
            const float inverse = 1.0f / sum;
            float* out = a.out + order[i] * a.out_row_stride + (kv_head * group + g) * layout.out_head;
            const float* from = acc + slot * d_count;
            for (std::size_t d = 0; d < d_count; ++d) out[d] = from[d] * inverse;
            // log sum_j exp(s_j) = max + log sum_j exp(s_j - max)
            if (a.lse != nullptr) a.lse[order[i] * layout.lse_row + kv_head * group + g] = states[slot].max + std::log(sum);
        }
}

// Waits (yielding: the machine may have more threads than cores) until `counter` reaches `target`.
void wait_for(const std::atomic<std::size_t>& counter, std::size_t target) {
    while (counter.load(std::memory_order_acquire) < target) std::this_thread::yield();
}

// A block of scratch for `count` objects of T, taken from the call's scratch layout.
template <class T>
struct ScratchBlock {
    std::size_t offset = 0, count = 0;
    void add(detail::ScratchLayout& layout, std::size_t n) { count = n, offset = layout.add(n * sizeof(T)); }
    T* at(void* base) const { return reinterpret_cast<T*>(static_cast<char*>(base) + offset); }
};

// One sequence's share of the task list: its rows (a range of `order`, sorted by position), the
// keys they see, and where its tasks start. Sequences without rows have none.
struct SequenceWork {
    std::size_t seq, first_row, rows, keys, tiles, chunks, blocks, first_task;
};

void sparse_attention(kvfuse_context& context, const kvfuse_attention_args& a) {
    if (a.rows == 0) return;
    const Layout layout(a);
    const std::size_t group = a.query_heads / a.kv_heads;
    const std::size_t d_count = a.head_dim;
    const kvfuse_tuning& tuning = detail::context_tuning(context);
    // The tuning allows tiles up to kScoreStride keys; the clamp keeps a wider one from running
    // the scores of one head into the next (a tile changes speed, never results). A call whose
    // sequences all have fewer keys than half the tile takes the smallest allowed tile (32, 64,
    // 128) that holds them: a tile tuned on long sequences (128) made a 1-row x 16-key call pack,
    // score and weigh 128 keys, 12 us against 2.5 us with a 32-key tile (bench_context, Zen 4).
    std::size_t tile = std::min(detail::attention_key_tile(tuning, d_count), kScoreStride);
    {
        std::size_t most_keys = 0;
        for (std::size_t seq = 0; seq < layout.sequences; ++seq)
            for (std::size_t r = layout.first_row(seq); r < layout.end_row(seq); ++r)
                most_keys = std::max(most_keys, static_cast<std::size_t>(a.positions[r]) + 1);
        while (tile > 32 && tile / 2 >= most_keys) tile /= 2;
    }
    const std::size_t row_block = tuning.attention_row_block;
    constexpr std::size_t kPackChunk = 8;  // tiles per packing task
    // Each sequence (one unless args.sequences > 1) on its own: its keys up to the last position
    // of its rows, its rows in blocks. First the sizes, to reserve the scratch.
    auto work_of = [&](std::size_t seq, SequenceWork& w) {
        w.seq = seq;
        w.first_row = layout.first_row(seq);
        w.rows = layout.end_row(seq) - w.first_row;
        std::size_t last_position = 0;
        for (std::size_t r = w.first_row; r < w.first_row + w.rows; ++r)
            last_position = std::max(last_position, static_cast<std::size_t>(a.positions[r]));
        w.keys = last_position + 1;
        w.tiles = (w.keys + tile - 1) / tile;
        w.chunks = (w.tiles + kPackChunk - 1) / kPackChunk;
        w.blocks = (w.rows + row_block - 1) / row_block;
    };
    std::size_t active = 0, most_tiles = 0, tasks = 0;
    for (std::size_t seq = 0; seq < layout.sequences; ++seq) {
        SequenceWork w;
        work_of(seq, w);
        if (w.rows == 0) continue;
        ++active;
        most_tiles = std::max(most_tiles, w.tiles);
        tasks += a.kv_heads * (w.chunks + w.blocks);
    }
    double work = 0.0;
    for (std::size_t r = 0; r < a.rows; ++r) work += static_cast<double>(a.positions[r] + 1);
    work *= static_cast<double>(a.query_heads * d_count);
    // One (sequence, KV head) unit at a time, its keys transposed and its values widened ONCE
    // into a packed copy (tile after tile, K^T then V) that every row block reads in order.
    // Transposing per block instead repeated the work for each block and read K/V with a 4 KiB
    // stride (one token of one head per page) that no hardware prefetcher follows: a third of the
    // time went there.
    const std::size_t tile_floats = 2 * d_count * tile;
    const std::size_t units = active * a.kv_heads;
    const std::size_t workers = work > static_cast<double>(tuning.attention_parallel_work)
                                    ? std::min(detail::context_workers(context), tasks)
                                    : 1;
    // With several workers two packed units live at a time, so that packing unit u + 1 overlaps
    // the last blocks of u.
    const std::size_t buffers = workers > 1 ? 2 : 1;

    // Everything the call needs, from the context's scratch (reserved before any worker runs:
    // workers never allocate). Per worker: one row block's packed queries, scores, accumulators
    // and softmax states.
    detail::ScratchLayout scratch;
    ScratchBlock<std::size_t> order_block;
    ScratchBlock<SequenceWork> work_block;
    ScratchBlock<float> packed_block, scores_block, queries_block, acc_block;
    ScratchBlock<RowState> states_block;
    ScratchBlock<std::atomic<std::size_t>> packed_chunks_block, done_blocks_block;
    order_block.add(scratch, a.rows);
    work_block.add(scratch, active);
    packed_block.add(scratch, buffers * most_tiles * tile_floats);
    packed_chunks_block.add(scratch, units);
    done_blocks_block.add(scratch, units);
    const std::size_t scores_floats = row_block * group * kScoreStride;
    const std::size_t queries_floats = (row_block * packed_query_floats(group, d_count) + 15) / 16 * 16;
    const std::size_t acc_floats = (row_block * group * d_count + 15) / 16 * 16;
    scores_block.add(scratch, workers * scores_floats);
    queries_block.add(scratch, workers * queries_floats);
    acc_block.add(scratch, workers * acc_floats);
    states_block.add(scratch, workers * row_block * group);
    void* base = detail::context_scratch(context, scratch.bytes);

    SequenceWork* sequences = work_block.at(base);
    for (std::size_t seq = 0, i = 0, first_task = 0; seq < layout.sequences; ++seq) {
        SequenceWork w;
        work_of(seq, w);
        if (w.rows == 0) continue;
        w.first_task = first_task;
        first_task += a.kv_heads * (w.chunks + w.blocks);
        new (sequences + i++) SequenceWork(w);
    }
    // Each sequence's rows by position (ties by index, as a stable sort would leave them), so
    // that a block's rows need about the same key tiles.
    std::size_t* order = order_block.at(base);
    std::iota(order, order + a.rows, std::size_t{0});
    for (std::size_t i = 0; i < active; ++i)
        std::sort(order + sequences[i].first_row, order + sequences[i].first_row + sequences[i].rows,
                  [&](std::size_t x, std::size_t y) {
                      return a.positions[x] < a.positions[y] || (a.positions[x] == a.positions[y] && x < y);
                  });
    float* packed = packed_block.at(base);
    std::atomic<std::size_t>* packed_chunks = packed_chunks_block.at(base);
    std::atomic<std::size_t>* done_blocks = done_blocks_block.at(base);
    for (std::size_t u = 0; u < units; ++u) {
        new (packed_chunks + u) std::atomic<std::size_t>(0);
        new (done_blocks + u) std::atomic<std::size_t>(0);
    }

    // One ordered list of tasks, per unit (sequence by sequence, KV head by KV head): its packing
    // in chunks of tiles, then its row blocks (later, longer blocks first). Workers take tasks in
    // order; a block waits only for its unit's packing, a packing chunk only for the blocks of
    // the unit that used its buffer before, all tasks earlier in the list and so already taken by
    // a running worker: the wait ends however the workers are scheduled (even one after another).
    // Per-head barriers (omp for) cost 13 % of the time on a loaded machine: a thread waited at
    // every head for the other's last block, or for a descheduled thread.
    std::atomic<std::size_t> next_task{0};
    auto worker = [&](std::size_t w) {
        float* scores = scores_block.at(base) + w * scores_floats;
        float* queries = queries_block.at(base) + w * queries_floats;
        float* acc = acc_block.at(base) + w * acc_floats;
        RowState* states = states_block.at(base) + w * row_block * group;
        for (std::size_t task; (task = next_task.fetch_add(1, std::memory_order_relaxed)) < tasks;) {
            // The sequence whose tasks hold this one: the last that starts at or before it.
            const SequenceWork* sw = std::upper_bound(sequences, sequences + active, task,
                                                      [](std::size_t t, const SequenceWork& x) { return t < x.first_task; }) -
                                     1;
            const std::size_t per_head = sw->chunks + sw->blocks, within = task - sw->first_task;
            const std::size_t kv_head = within / per_head, step = within % per_head;
            const std::size_t unit = static_cast<std::size_t>(sw - sequences) * a.kv_heads + kv_head;
            float* buffer = packed + (unit % buffers) * most_tiles * tile_floats;
            if (step < sw->chunks) {
                if (unit >= buffers) wait_for(done_blocks[unit - buffers], sequences[(unit - buffers) / a.kv_heads].blocks);
                for (std::size_t t = step * kPackChunk; t < std::min(sw->tiles, (step + 1) * kPackChunk); ++t) {
                    const std::size_t first = t * tile;
                    float* at = buffer + t * tile_floats;
                    load_tile(layout, sw->seq, kv_head, first, std::min(tile, sw->keys - first), tile, at,
                              at + d_count * tile);
                }
                packed_chunks[unit].fetch_add(1, std::memory_order_release);
            } else {
                wait_for(packed_chunks[unit], sw->chunks);
                const std::size_t block = sw->blocks - 1 - (step - sw->chunks);
                const std::size_t begin = sw->first_row + block * row_block;
                const std::size_t end = std::min(sw->first_row + sw->rows, begin + row_block);
                attend_block(layout, order, begin, end, kv_head, buffer, tile, queries, scores, acc, states);
                done_blocks[unit].fetch_add(1, std::memory_order_release);
            }
        }
    };
    detail::run_workers(context, workers, worker);
}

}  // namespace

void register_attention(detail::KernelTable& table) { table.sparse_attention = &sparse_attention; }

}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
