// A3 relevance written once on the xsimd architecture (compiled per ISA; no include guard).
//
// The merged-head logits are, per KV head, a small matrix product: its M * g query rows
// against every key. Keys go in tiles of kTile; a tile of one KV head is first laid out in an
// L1 scratch so that one vector holds one slice of the head dimension for kLanes keys: one
// dimension (f32), or for int8 and int4 keys one 32-bit lane per key holding either a pair of
// dimensions as two s16 (`pmaddwd`: exact for any int8) or four dimensions as four bytes (the
// byte dot products `pmaddubsw`, `vpdpbusd`, `sdot`: half the instructions per dimension). A
// register block of 2, 4 or 6 (tuned) query rows x kVectors key vectors then runs down the
// head dimension with one broadcast per row, so each loaded key vector serves every row of the
// block and no horizontal reduction is needed. Tiles are independent (OpenMP); the softmax per
// question row and the column sums follow as two vector passes over the M x T logits. Keys may
// come in segments (stored chunks in their own frame), each with its own queries and bias: a
// tile that straddles two segments is laid out and multiplied once per segment, each filling
// only its own lanes.
//
// Which integer scheme runs (score_dot.h): each copy of this file picks the best its compile
// flags allow (the dispatch registers a copy built with VNNI or dotprod only on CPUs that have
// it); a test may force any other, which then runs as an exact emulation where this ISA has no
// instruction for it. The instructions themselves (intrinsics, asm, the emulations, the register
// transposes) live in kernels/common/isa_dot-inl.h: this file has no `#if`.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>
#include <xsimd/xsimd.hpp>

#include "kernels/common/half-inl.h"
#include "kernels/common/isa_dot-inl.h"
#include "kernels/common/relevance_segments.h"
#include "kernels/kernel_table.h"
#include "kernels/score/score_dot.h"
#include "kernels/call_context.h"
#include "kernels/common/workers.h"
#include "kernels/tuning.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using detail::ScoreDot;
using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
using I32s = xsimd::batch<std::int32_t, Arch>;
constexpr std::size_t kLanes = F32s::size;
// Key vectors per tile: 4 with AVX-512 (32 registers: a 4-row block's 16 vpdpbusd chains cover
// the instruction's latency at two a cycle, and each broadcast query lane serves 4 multiply-adds
// instead of 2), else 2 (AVX2's 16 registers; NEON's 4-lane vectors keep tiles short).
constexpr std::size_t kVectors = kLanes == 16 ? 4 : 2;
constexpr std::size_t kTile = kVectors * kLanes;   // keys per tile
constexpr std::size_t kMaxRows = 6;                 // query rows per register block: 2, 4 or 6 (tuned)

template <class T>
using Aligned = std::vector<T, xsimd::aligned_allocator<T, 64>>;

// The scheme this copy runs unless a test forces another: one instruction per four dimensions
// where there is one; for int4 without it, `pmaddubsw` with s16 sums still halves the work of
// `pmaddwd`; for int8 without it, `pmaddwd`. pmaddubsw does not pay for int8: k + 128 as u8
// saturates a pair sum (2 * 255 * 128 > 32767), and the sign trick (|k| as u8, vpsignb moving
// k's sign onto q) gets -(-128) wrong for q = -128, which the API accepts, and still needs a
// pmaddwd to widen after every step: as many multiplies as the pairs.
constexpr ScoreDot kBestInt8Dot = kHasSdot ? ScoreDot::quads_s8s8 : kHasDpbusd ? ScoreDot::quads_u8s8 : ScoreDot::pairs_s16;
constexpr ScoreDot kBestInt4Dot = kHasSdot     ? ScoreDot::quads_s8s8
                                  : kHasDpbusd ? ScoreDot::quads_u8s8
                                  : kHasMadd   ? ScoreDot::quads_u8s8_s16
                                               : ScoreDot::pairs_s16;

constexpr bool has_instruction(ScoreDot dot) {
    switch (dot) {
        case ScoreDot::pairs_s16:
        case ScoreDot::quads_u8s8_s16:
            return kHasMadd;
        case ScoreDot::quads_u8s8:
            return kHasDpbusd;
        case ScoreDot::quads_s8s8:
            return kHasSdot;
        default:
            return false;
    }
}

// ---- pairs: two s16 per 32-bit lane ----


inline std::int32_t pack_pair(std::int32_t lo, std::int32_t hi) {
    return static_cast<std::int32_t>(static_cast<std::uint16_t>(lo) | (static_cast<std::uint32_t>(static_cast<std::uint16_t>(hi)) << 16));
}

// ---- quads: four bytes per 32-bit lane ----


// pmaddubsw adds at most 2 * 15 * 128 = 3840 to a lane half per step (int4 keys k + 8 <= 15 as
// u8, int8 queries |q| <= 128), so 8 steps stay within s16 before one widening.
constexpr std::size_t kStepsPerWidening = 8;
static_assert(kStepsPerWidening * 2 * 15 * 128 <= 32767, "s16 sums of pmaddubsw must not saturate");

// pmaddubsw has no accumulating form, so each row of a block holds an s16 and an s32 sum per
// key vector: with the key vectors, the broadcast and a product, a block of R rows needs
// 2 * kVectors * R + kVectors + 2 vector registers. x86 without AVX-512 has 16, so at most 2
// rows (more spills a sum to the stack: measured 10-20 % slower at 4 rows); NEON (2 vectors)
// has 32 and takes 6; AVX-512's 32 with 4 vectors, 2.
// Each row needs 2 * kVectors sums; the key vectors, the broadcast and a product need the rest.
constexpr std::size_t kMaxS16SumRows = (kVectorRegisters - kVectors - 2) / (2 * kVectors) >= 6 ? 6 : 2;

constexpr bool is_quads(ScoreDot dot) { return dot != ScoreDot::pairs_s16; }
constexpr bool is_unsigned_quads(ScoreDot dot) { return dot == ScoreDot::quads_u8s8_s16 || dot == ScoreDot::quads_u8s8; }

inline std::uint32_t bytes_to_lane(std::uint32_t b0, std::uint32_t b1, std::uint32_t b2, std::uint32_t b3) {
    return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24);
}

enum class Path { f32, int8, int4 };

struct Shape {
    std::size_t M, C, docs, H, Hkv, D, D2, group;
    std::size_t lanes;  // int paths: 32-bit lanes per key and per query row (D2 pairs or D4 quads)
};

// What the u8 schemes add to each key so that it is non-negative: the dot then carries
// offset * sum(q), which the query's correction takes back.
inline std::int32_t key_offset(ScoreDot dot, Path path) {
    if (!is_unsigned_quads(dot)) return 0;
    return path == Path::int8 ? 128 : 8;
}

// ---- tile layout by blocks ----
//
// The tile is the keys transposed (lane i of key jj at tile[i * kTile + jj]), so laying it out
// one element at a time costs a scalar load, shifts and a store per lane: measured a quarter
// of the int8 call on AVX2 (the dot products themselves run a lane per broadcast). Instead,
// square blocks of kBlock keys x kBlock lanes (isa_dot-inl.h): each key's lanes encoded by one
// vector load (and a widening or a few bit operations), the block transposed in registers and
// stored as kBlock tile rows. The last block of a key whose lanes are not a whole number of
// blocks (head_dim 8, 40, 80, ...) is loaded masked, zero past the key (isa_dot-inl.h), and
// stores only the tile rows that exist: no lane is laid out one at a time.
static_assert(kTile % kBlock == 0, "a tile is a whole number of blocks");

// Lanes [i0, i0 + kBlock) of the key at element offset `key_at` (one (token, KV head)): f32
// one dimension per lane; int8 pairs (two s16) or quads (four bytes, k + 128 for the u8
// schemes); int4 pairs or quads (k + 8 for the u8 schemes, else k as s8). Only the key's own
// bytes are read; lanes past the head hold zeros or offsets, which meet zero query lanes.
inline Block encode_block(const kvfuse_relevance_segment& g, const Shape& s, Path path, ScoreDot dot, std::size_t key_at,
                          std::size_t i0) {
    if (path == Path::f32) {
        const std::size_t at = key_at + i0, left = s.D - i0;
        if (g.keys_dtype == KVFUSE_DTYPE_F16) return load_f16_as_lanes(static_cast<const std::uint16_t*>(g.typed_keys) + at, 2 * left);
        if (g.keys_dtype == KVFUSE_DTYPE_BF16)
            return load_bf16_as_lanes(static_cast<const std::uint16_t*>(g.typed_keys) + at, 2 * left);
        return load_lanes(static_cast<const float*>(g.typed_keys) + at, 4 * left);
    }
    if (path == Path::int8) {
        const std::int8_t* key = g.keys_i8 + key_at;
        if (!is_quads(dot)) return load_s8_as_pairs(key + 2 * i0, s.D - 2 * i0);
        const Block bytes = load_lanes(key + 4 * i0, s.D - 4 * i0);
        return key_offset(dot, path) == 128 ? bytes ^ Block(static_cast<std::int32_t>(0x80808080u)) : bytes;
    }
    const std::uint8_t* key = g.keys_i4 + key_at;
    if (!is_quads(dot)) {
        // One packed byte per lane: its low and high nibbles sign-extended into the two s16.
        const Block b = load_u8_as_lanes(key + i0, s.D2 - i0);
        return (((b << 28) >> 28) & Block(0xFFFF)) | (((b << 24) >> 28) << 16);
    }
    // Two packed bytes per lane, nibble n moved to byte n: k + 8 (u8) is the nibble with its top
    // bit flipped; k as s8 is then (k + 8) + 0x78, top bit flipped (no carry between bytes).
    const Block v = load_u16_as_lanes(key + 2 * i0, s.D2 - 2 * i0);
    Block w = (v | (v << 8)) & Block(0x00FF00FF);
    w = (w | (w << 4)) & Block(0x0F0F0F0F);
    const Block biased = w ^ Block(0x08080808);
    return is_unsigned_quads(dot) ? biased : (biased + Block(0x78787878)) ^ Block(static_cast<std::int32_t>(0x80808080u));
}

// Asks for key j's rows of every KV head into L2 (one run when the heads are contiguous).
inline void prefetch_token_keys(const kvfuse_relevance_segment& g, const Shape& s, Path path, std::size_t j) {
    const std::size_t element = path == Path::f32 ? element_bytes(g.keys_dtype) : 1;
    const char* keys = path == Path::f32    ? static_cast<const char*>(g.typed_keys)
                       : path == Path::int8 ? reinterpret_cast<const char*>(g.keys_i8)
                                            : reinterpret_cast<const char*>(g.keys_i4);
    const std::size_t head_bytes = (path == Path::int4 ? s.D2 : s.D) * element;
    const bool contiguous = g.key_head_stride * element == head_bytes;
    for (std::size_t kv = 0; kv < (contiguous ? 1 : s.Hkv); ++kv) {
        const char* key = keys + detail::relevance_key_at(g, j, kv) * element;
        const std::size_t bytes = contiguous ? s.Hkv * head_bytes : head_bytes;
        for (std::size_t b = 0; b < bytes; b += 64) __builtin_prefetch(key + b, 0, 2);
    }
}

// Lanes [lo, hi) of one KV head's tile as scratch, from the segment's keys first, first + 1, ...:
// f32 -> D rows of kTile floats; int -> s.lanes rows of kTile lanes. Every other lane is zero
// (past the end, or another segment's key: that segment fills it with its own queries).
void layout_tile(const kvfuse_relevance_segment& g, const Shape& s, Path path, ScoreDot dot, std::size_t first, std::size_t lo,
                 std::size_t hi, std::size_t kv, float* f32_tile, std::int32_t* int_tile, float* key_scales) {
    // Where each of the tile's keys starts in the segment's keys (its layout: strides, pages).
    std::size_t key_at[kTile];
    for (std::size_t jj = lo; jj < hi; ++jj) key_at[jj] = detail::relevance_key_at(g, first + (jj - lo), kv);
    // Tile rows: one per dimension (f32) or per lane; the last block may be partial.
    const std::size_t tile_rows = path == Path::f32 ? s.D : s.lanes;
    for (std::size_t jj0 = 0; jj0 < kTile; jj0 += kBlock)
        for (std::size_t i0 = 0; i0 < tile_rows; i0 += kBlock) {
            Block rows[kBlock];
            for (std::size_t r = 0; r < kBlock; ++r) {
                const std::size_t jj = jj0 + r;
                if (jj < lo || jj >= hi) {
                    rows[r] = Block(0);
                    continue;
                }
                const std::size_t j = first + (jj - lo);
                rows[r] = encode_block(g, s, path, dot, key_at[jj], i0);
                // This key's row of the next tile, a tile ahead: the keys stream from memory
                // with a stride of Hkv rows, which the hardware prefetcher did not hide (half
                // the layout time was waiting on these loads).
                if (i0 == 0 && kv == 0 && j + kTile < g.keys) prefetch_token_keys(g, s, path, j + kTile);
            }
            store_transposed(rows, path == Path::f32 ? static_cast<void*>(f32_tile + i0 * kTile + jj0)
                                                     : static_cast<void*>(int_tile + i0 * kTile + jj0),
                             kTile, std::min(kBlock, tile_rows - i0));
        }
    if (path == Path::f32) return;
    for (std::size_t jj = 0; jj < kTile; ++jj)
        key_scales[jj] = jj >= lo && jj < hi ? g.key_scales[(first + (jj - lo)) * s.Hkv + kv] : 0.0f;
}

// Where query (row, head) rh = m * H + kv * group + h goes when queries are stored KV head by KV
// head: row kv * M * group + r of KV head kv's rows r = m * group + h (see encode_queries).
inline std::size_t kv_major_row(const Shape& s, std::size_t rh) {
    const std::size_t m = rh / s.H, kv = (rh % s.H) / s.group, h = rh % s.group;
    return (kv * s.M + m) * s.group + h;
}
inline std::size_t kv_head_first_row(const Shape& s, std::size_t kv) { return kv * s.M * s.group; }

// Every query (row, head) as s.lanes lanes (pairs or quads, zero past the head), its scale, and
// its correction: -offset * sum(q) for the u8 schemes (the sums' start value), else 0. All three
// go KV head by KV head (kv_major_row): a row block reads them at consecutive indices, and the
// rows a tile multiplies are contiguous (in (row, head) order one KV head's rows lie
// H * lanes * 4 bytes apart, 8 KiB at the benchmark shape, all in the same few L1 sets, and they
// evicted the tile: the int8 call ran at half the speed of the same loop on contiguous rows).
void encode_queries(const kvfuse_relevance_segment& g, const Shape& s, Path path, ScoreDot dot, std::int32_t* all_lanes,
                    std::int32_t* corrections, float* scales) {
    const std::int32_t offset = key_offset(dot, path);
    for (std::size_t rh = 0; rh < s.M * s.H; ++rh) {
        const std::size_t row = kv_major_row(s, rh);
        std::int32_t* lanes = all_lanes + row * s.lanes;
        const std::int8_t* q = g.queries_i8 + rh * s.D;
        auto at = [&](std::size_t d) { return d < s.D ? q[d] : std::int8_t{0}; };
        std::int32_t sum = 0;
        for (std::size_t d = 0; d < s.D; ++d) sum += q[d];
        corrections[row] = -offset * sum;
        scales[row] = g.query_scales[rh];
        for (std::size_t i = 0; i < s.lanes; ++i)
            lanes[i] =
                is_quads(dot) ? static_cast<std::int32_t>(bytes_to_lane(static_cast<std::uint8_t>(at(4 * i)), static_cast<std::uint8_t>(at(4 * i + 1)),
                                                                        static_cast<std::uint8_t>(at(4 * i + 2)), static_cast<std::uint8_t>(at(4 * i + 3))))
                              : pack_pair(at(2 * i), at(2 * i + 1));
    }
}

// acc[r][v] = sum over d of tile[d][v lanes] * row_r[d], for R rows.
template <std::size_t R>
inline void f32_block(const float* const* rows, const float* tile, std::size_t D, F32s (&acc)[kMaxRows][kVectors]) {
    for (std::size_t r = 0; r < R; ++r)
        for (std::size_t v = 0; v < kVectors; ++v) acc[r][v] = F32s(0.0f);
    for (std::size_t d = 0; d < D; ++d) {
        F32s k[kVectors];
        for (std::size_t v = 0; v < kVectors; ++v) k[v] = F32s::load_aligned(tile + d * kTile + v * kLanes);
        for (std::size_t r = 0; r < R; ++r) {
            const F32s q(rows[r][d]);
            for (std::size_t v = 0; v < kVectors; ++v) acc[r][v] = xsimd::fma(k[v], q, acc[r][v]);
        }
    }
}

// The same over `lanes` integer lanes with scheme kDot.
// Row r's sums start at start[r] (the u8 schemes' correction). The sums are plain registers
// (I32s::register_type) rather than xsimd batches: GCC 12 kept an array of batches in
// registers only partly (register copies in the loop; every sum through the stack before and
// after it once the sums started at the correction).
using I32Reg = typename I32s::register_type;
template <std::size_t R, ScoreDot kDot>
inline void int_block(const std::int32_t* const* rows, const std::int32_t* start, const std::int32_t* tile, std::size_t lanes,
                      I32Reg (&acc)[kMaxRows][kVectors]) {
    for (std::size_t r = 0; r < R; ++r)
        for (std::size_t v = 0; v < kVectors; ++v) acc[r][v] = I32s(start[r]);
    if constexpr (kDot == ScoreDot::quads_u8s8_s16) {
        for (std::size_t first = 0; first < lanes; first += kStepsPerWidening) {
            const std::size_t last = std::min(lanes, first + kStepsPerWidening);
            I32s partial[kMaxRows][kVectors];
            for (std::size_t r = 0; r < R; ++r)
                for (std::size_t v = 0; v < kVectors; ++v) partial[r][v] = I32s(0);
            for (std::size_t i = first; i < last; ++i) {
                I32s k[kVectors];
                for (std::size_t v = 0; v < kVectors; ++v) k[v] = I32s::load_aligned(tile + i * kTile + v * kLanes);
                for (std::size_t r = 0; r < R; ++r) {
                    const I32s q(rows[r][i]);
                    for (std::size_t v = 0; v < kVectors; ++v) add_to_s16(partial[r][v], madd_quads_s16(k[v], q));
                }
            }
            for (std::size_t r = 0; r < R; ++r)
                for (std::size_t v = 0; v < kVectors; ++v) acc[r][v] = I32s(acc[r][v]) + widen_s16_pairs(partial[r][v]);
        }
        return;
    }
    using Reg = I32Reg;
    Reg (&sum)[kMaxRows][kVectors] = acc;
    for (std::size_t i = 0; i < lanes; ++i) {
        Reg k[kVectors];
        for (std::size_t v = 0; v < kVectors; ++v) k[v] = I32s::load_aligned(tile + i * kTile + v * kLanes);
        for (std::size_t r = 0; r < R; ++r) {
            const Reg q = I32s(rows[r][i]);
            for (std::size_t v = 0; v < kVectors; ++v) {
                if constexpr (kDot == ScoreDot::pairs_s16) {
                    I32s a = sum[r][v];
                    add_to(a, madd_pairs(I32s(k[v]), I32s(q)));
                    sum[r][v] = a;
                } else if constexpr (kDot == ScoreDot::quads_u8s8) {
                    sum[r][v] = dot_quads_u8s8(I32s(sum[r][v]), I32s(k[v]), I32s(q));
                } else {
                    sum[r][v] = dot_quads_s8s8(I32s(sum[r][v]), I32s(k[v]), I32s(q));
                }
            }
        }
        for (std::size_t v = 0; v < kVectors; ++v) keep_in_register(I32s(k[v]));
    }
}

// What one block of query rows needs besides the arguments: the tile and the encoded queries.
struct Scratch {
    const float* f32_tile;
    const std::int32_t* int_tile;
    const float* key_scales;
    // The segment's queries: f32, or encoded with their scales and corrections (KV-major rows,
    // as the lanes: encode_queries).
    const float* queries_f32;
    const float* query_scales;
    const std::int32_t* query_lanes;
    const std::int32_t* corrections;
    // Row r of a KV head's M * group rows is question row_question[r], head row_head[r] of the
    // group: kept as tables because dividing by the group size in every block costs more than
    // the block's bookkeeping.
    const std::uint32_t* row_question;
    const std::uint32_t* row_head;
    // The keys the next layout_tile will read (next KV head, or the next tile's first), asked
    // into L1 a few at a time between the row blocks (see prefetch_next_keys).
    const char* const* next_keys;
    const float* const* next_scales;
    std::size_t next_key_count, next_key_bytes;
    // Rows per register block (the tuned 2, 4 or 6): where the blocks end decides where the
    // sums of a question row are flushed, which the small-head path below reproduces.
    std::size_t block_rows;
};

// The rows first_row .. first_row + R - 1 of KV head kv: question row m and (row, head) index.
struct BlockRows {
    std::size_t m[kMaxRows], rh[kMaxRows];
};

template <std::size_t R>
BlockRows block_rows(const Shape& s, const Scratch& scratch, std::size_t kv, std::size_t first_row) {
    BlockRows b{};
    for (std::size_t r = 0; r < R; ++r) {
        b.m[r] = scratch.row_question[first_row + r];
        b.rh[r] = b.m[r] * s.H + kv * s.group + scratch.row_head[first_row + r];
    }
    return b;
}

// sums[m] += the R rows' products, rows of one question row (the heads of a group: rows are
// m * group + h) added in registers first, so that the block does not wait on its own stores.
template <std::size_t R, class Product>
inline void add_to_sums(const BlockRows& b, float* sums, Product product) {
    F32s total[kVectors];
    for (std::size_t v = 0; v < kVectors; ++v) total[v] = F32s::load_aligned(sums + b.m[0] * kTile + v * kLanes);
    for (std::size_t r = 0; r < R; ++r) {
        if (r > 0 && b.m[r] != b.m[r - 1])
            for (std::size_t v = 0; v < kVectors; ++v) {
                total[v].store_aligned(sums + b.m[r - 1] * kTile + v * kLanes);
                total[v] = F32s::load_aligned(sums + b.m[r] * kTile + v * kLanes);
            }
        for (std::size_t v = 0; v < kVectors; ++v) total[v] = product(r, v, total[v]);
    }
    for (std::size_t v = 0; v < kVectors; ++v) total[v].store_aligned(sums + b.m[R - 1] * kTile + v * kLanes);
}

// Logits of R question rows against the keys [j0, j0 + kTile): `sums` (M x kTile) gets the
// merged-head sums, unscaled.
template <std::size_t R>
inline void f32_rows(const Shape& s, std::size_t kv, std::size_t first_row, const Scratch& scratch, float* sums) {
    const BlockRows b = block_rows<R>(s, scratch, kv, first_row);
    const float* rows[kMaxRows];
    for (std::size_t r = 0; r < R; ++r) rows[r] = scratch.queries_f32 + (kv_head_first_row(s, kv) + first_row + r) * s.D;
    F32s acc[kMaxRows][kVectors];
    f32_block<R>(rows, scratch.f32_tile, s.D, acc);
    add_to_sums<R>(b, sums, [&](std::size_t r, std::size_t v, F32s total) { return total + acc[r][v]; });
}

// The rows' dots scaled and added to sums: per question row m (the block's rows of one m are
// heads of one group), sum_r qs_r * dot_r in registers, then sums[m] += key_scale * that: one
// multiply-add per (row, key vector) besides the conversion, and one per question row.
template <std::size_t R, ScoreDot kDot>
[[gnu::always_inline]] inline void int_rows(const Shape& s, std::size_t kv, std::size_t first_row, const Scratch& scratch, float* sums) {
    const std::size_t row0 = kv_head_first_row(s, kv) + first_row;
    const std::int32_t* rows[kMaxRows];
    for (std::size_t r = 0; r < R; ++r) rows[r] = scratch.query_lanes + (row0 + r) * s.lanes;
    I32Reg acc[kMaxRows][kVectors];
    int_block<R, kDot>(rows, scratch.corrections + row0, scratch.int_tile, s.lanes, acc);
    const float* query_scales = scratch.query_scales + row0;
    const std::uint32_t* question = scratch.row_question + first_row;
    F32s part[kVectors], key_scales[kVectors];
    for (std::size_t v = 0; v < kVectors; ++v) key_scales[v] = F32s::load_aligned(scratch.key_scales + v * kLanes);
    auto flush = [&](std::uint32_t m) {
        for (std::size_t v = 0; v < kVectors; ++v) {
            float* at = sums + m * kTile + v * kLanes;
            xsimd::fma(part[v], key_scales[v], F32s::load_aligned(at)).store_aligned(at);
        }
    };
    // Unrolled, so that acc[r] is a register (a rolled loop indexes the sums through the stack).
#pragma GCC unroll 8
    for (std::size_t r = 0; r < R; ++r) {
        const bool first_of_m = r == 0 || question[r] != question[r - 1];
        if (r > 0 && first_of_m) flush(question[r - 1]);
        const F32s qs(query_scales[r]);
        for (std::size_t v = 0; v < kVectors; ++v)
            part[v] = first_of_m ? int32_to_f32(I32s(acc[r][v])) * qs : xsimd::fma(int32_to_f32(I32s(acc[r][v])), qs, part[v]);
    }
    flush(question[R - 1]);
}

// The next tile's keys [from, to) of scratch.next_keys asked into L1; returns `to`. The int
// keys stream from memory at a stride of Hkv * D bytes, so each tile's layout used to wait on
// them: at the benchmark's shape (1 thread, int8, avx512_vnni) the key loads in layout_tile took
// a third of the call although the layout is a few percent of its instructions. Spread over the
// row blocks of the KV head before, the lines arrive while the dot products run.
inline std::size_t prefetch_next_keys(const Scratch& scratch, std::size_t from, std::size_t to) {
    for (std::size_t k = from; k < to; ++k) {
        const char* key = scratch.next_keys[k];
        for (std::size_t b = 0; b < scratch.next_key_bytes; b += 64) __builtin_prefetch(key + b, 0, 3);
        __builtin_prefetch(key + scratch.next_key_bytes - 1, 0, 3);
        __builtin_prefetch(scratch.next_scales[k], 0, 3);
    }
    return to;
}

// Every row of KV head kv against the tile: blocks of R rows, then one at a time. One call per
// KV head and tile, so that the per-block bookkeeping stays in registers.
template <std::size_t R, bool kF32, ScoreDot kDot>
void kv_head_rows(const Shape& s, std::size_t kv, const Scratch& scratch, float* sums) {
    const std::size_t rows = s.M * s.group;
    std::size_t row = 0, prefetched = 0, due = 0;
    for (; row + R <= rows; row += R) {
        if constexpr (kF32)
            f32_rows<R>(s, kv, row, scratch, sums);
        else
            int_rows<R, kDot>(s, kv, row, scratch, sums);
        // (row + R) * next_key_count / rows keys asked for by now, counted without a division
        // (a 64-bit divide per block was a visible part of the small head dims' time).
        std::size_t to = prefetched;
        for (due += R * scratch.next_key_count; due >= rows; due -= rows) ++to;
        prefetched = prefetch_next_keys(scratch, prefetched, to);
    }
    for (; row < rows; ++row) {
        if constexpr (kF32)
            f32_rows<1>(s, kv, row, scratch, sums);
        else
            int_rows<1, kDot>(s, kv, row, scratch, sums);
    }
}

using RowsFn = void (*)(const Shape&, std::size_t, const Scratch&, float*);

// ---- small heads: the tile's keys held in registers ----
//
// A head of at most kStationaryLanes lanes (int8 pairs up to head dim 8, quads up to 16) is
// the whole tile in L * kVectors registers: the keys are loaded once per KV head and the rows
// stream past them one at a time, so there are no key loads, no per-block bookkeeping and no
// runtime tests of which question row a block's row belongs to (at head dim 8 these cost more
// than the dot products). The float epilogue is int_rows' to the bit: rows summed per question
// row as qs_r * dot_r in row order, flushed into sums with the key scales where int_rows would
// flush (the end of a question row's heads or of a register block of scratch.block_rows rows;
// the rows past the last whole block one at a time).
constexpr std::size_t kStationaryLanes = 4;

static_assert(kStationaryLanes <= 4, "stationary_dot sums at most four lanes");
template <std::size_t L, ScoreDot kDot>
[[gnu::always_inline]] inline void stationary_dot(const I32Reg (&k)[L][kVectors], const std::int32_t* q, std::int32_t start,
                                                  I32Reg (&acc)[kVectors]) {
    if constexpr (kDot == ScoreDot::quads_u8s8_s16) {
        static_assert(L <= kStepsPerWidening, "one widening per row");
        I32s partial[kVectors];
        for (std::size_t v = 0; v < kVectors; ++v) partial[v] = madd_quads_s16(I32s(k[0][v]), I32s(q[0]));
        for (std::size_t i = 1; i < L; ++i) {
            const I32s qi(q[i]);
            for (std::size_t v = 0; v < kVectors; ++v) add_to_s16(partial[v], madd_quads_s16(I32s(k[i][v]), qi));
        }
        for (std::size_t v = 0; v < kVectors; ++v) acc[v] = I32s(start) + widen_s16_pairs(partial[v]);
        return;
    }
    if constexpr (kDot == ScoreDot::pairs_s16) {
        // No key offset, so no correction (start is 0): the products summed as a tree.
        I32s product[L][kVectors];
        for (std::size_t i = 0; i < L; ++i) {
            const I32s qi(q[i]);
            for (std::size_t v = 0; v < kVectors; ++v) product[i][v] = madd_pairs(I32s(k[i][v]), qi);
        }
        for (std::size_t v = 0; v < kVectors; ++v) {
            if constexpr (L >= 2) add_to(product[0][v], product[1][v]);
            if constexpr (L >= 4) add_to(product[2][v], product[3][v]);
            if constexpr (L >= 3) add_to(product[0][v], product[2][v]);
            acc[v] = product[0][v];
        }
        return;
    }
    // The accumulating dots (VNNI, dotprod): from the correction, lane after lane.
    for (std::size_t v = 0; v < kVectors; ++v) acc[v] = I32s(start);
    for (std::size_t i = 0; i < L; ++i) {
        const I32s qi(q[i]);
        for (std::size_t v = 0; v < kVectors; ++v) {
            if constexpr (kDot == ScoreDot::quads_u8s8)
                acc[v] = dot_quads_u8s8(I32s(acc[v]), I32s(k[i][v]), qi);
            else
                acc[v] = dot_quads_s8s8(I32s(acc[v]), I32s(k[i][v]), qi);
        }
    }
}

template <std::size_t L, ScoreDot kDot>
void kv_head_keys_in_registers(const Shape& s, std::size_t kv, const Scratch& scratch, float* sums) {
    I32Reg k[L][kVectors];
    for (std::size_t i = 0; i < L; ++i)
        for (std::size_t v = 0; v < kVectors; ++v) k[i][v] = I32s::load_aligned(scratch.int_tile + i * kTile + v * kLanes);
    const std::size_t row0 = kv_head_first_row(s, kv), rows = s.M * s.group, R = scratch.block_rows;
    const std::size_t whole_blocks_end = rows - rows % R;  // rows from here are blocks of one
    const std::int32_t* lanes = scratch.query_lanes + row0 * L;
    const std::int32_t* starts = scratch.corrections + row0;
    const float* query_scales = scratch.query_scales + row0;
    std::size_t row = 0, in_block = 0, prefetched = 0, due = 0;
    for (std::size_t m = 0; m < s.M; ++m) {
        F32s part[kVectors];
        bool first = true;
        auto finish_row = [&](const I32Reg (&acc)[kVectors], std::size_t h) {
            const F32s qs(query_scales[row]);
            for (std::size_t v = 0; v < kVectors; ++v)
                part[v] = first ? int32_to_f32(I32s(acc[v])) * qs : xsimd::fma(int32_to_f32(I32s(acc[v])), qs, part[v]);
            first = false;
            if (++in_block == R) in_block = 0;
            if (h + 1 == s.group || in_block == 0 || row >= whole_blocks_end) {
                for (std::size_t v = 0; v < kVectors; ++v) {
                    float* at = sums + m * kTile + v * kLanes;
                    xsimd::fma(part[v], F32s::load_aligned(scratch.key_scales + v * kLanes), F32s::load_aligned(at)).store_aligned(at);
                }
                first = true;
            }
            ++row;
        };
        std::size_t h = 0;
        // Two rows' dot products before either's epilogue: independent chains side by side.
        for (; h + 2 <= s.group; h += 2) {
            I32Reg acc0[kVectors], acc1[kVectors];
            stationary_dot<L, kDot>(k, lanes + row * L, starts[row], acc0);
            stationary_dot<L, kDot>(k, lanes + (row + 1) * L, starts[row + 1], acc1);
            finish_row(acc0, h);
            finish_row(acc1, h + 1);
        }
        if (h < s.group) {
            I32Reg acc[kVectors];
            stationary_dot<L, kDot>(k, lanes + row * L, starts[row], acc);
            finish_row(acc, h);
        }
        std::size_t to = prefetched;
        for (due += scratch.next_key_count; due >= s.M; due -= s.M) ++to;
        prefetched = prefetch_next_keys(scratch, prefetched, to);
    }
}

template <ScoreDot kDot>
RowsFn keys_in_registers_function(std::size_t lanes) {
    switch (lanes) {
        case 1:
            return &kv_head_keys_in_registers<1, kDot>;
        case 2:
            return &kv_head_keys_in_registers<2, kDot>;
        case 3:
            return &kv_head_keys_in_registers<3, kDot>;
        default:
            return &kv_head_keys_in_registers<4, kDot>;
    }
}
RowsFn keys_in_registers_function(ScoreDot dot, std::size_t lanes) {
    switch (dot) {
        case ScoreDot::quads_u8s8_s16:
            return keys_in_registers_function<ScoreDot::quads_u8s8_s16>(lanes);
        case ScoreDot::quads_u8s8:
            return keys_in_registers_function<ScoreDot::quads_u8s8>(lanes);
        case ScoreDot::quads_s8s8:
            return keys_in_registers_function<ScoreDot::quads_s8s8>(lanes);
        default:
            return keys_in_registers_function<ScoreDot::pairs_s16>(lanes);
    }
}

template <std::size_t R>
RowsFn rows_function(Path path, ScoreDot dot) {
    if (path == Path::f32) return &kv_head_rows<R, true, ScoreDot::automatic>;
    switch (dot) {
        case ScoreDot::quads_u8s8_s16:
            return &kv_head_rows<R, false, ScoreDot::quads_u8s8_s16>;
        case ScoreDot::quads_u8s8:
            return &kv_head_rows<R, false, ScoreDot::quads_u8s8>;
        case ScoreDot::quads_s8s8:
            return &kv_head_rows<R, false, ScoreDot::quads_s8s8>;
        default:
            return &kv_head_rows<R, false, ScoreDot::pairs_s16>;
    }
}

// The scheme for this call: a forced one where it applies to these keys, else this copy's best.
ScoreDot choose_dot(Path path) {
    const ScoreDot forced = detail::forced_score_dot();
    if (forced == ScoreDot::automatic || (forced == ScoreDot::quads_u8s8_s16 && path != Path::int4))
        return path == Path::int4 ? kBestInt4Dot : kBestInt8Dot;
    return forced;
}

// The call's segments, in its scratch (relevance_segments.h).
struct SegmentView {
    const kvfuse_relevance_segment* list;
    const std::size_t* starts;
    std::size_t count;
    std::size_t of(std::size_t j) const { return detail::relevance_segment_of(starts, count, j); }
};

// A block of scratch for `count` objects of T, taken from the call's scratch layout.
template <class T>
struct ScratchBlock {
    std::size_t offset = 0;
    void add(detail::ScratchLayout& layout, std::size_t count) { offset = layout.add(count * sizeof(T)); }
    T* at(void* base) const { return reinterpret_cast<T*>(static_cast<char*>(base) + offset); }
};

void relevance(kvfuse_context& context, const kvfuse_relevance_args& a) {
    Shape s{};
    s.M = a.question_rows;
    s.C = a.candidates;
    s.docs = s.C - s.M;
    s.H = a.query_heads;
    s.Hkv = a.kv_heads;
    s.D = a.head_dim;
    s.D2 = (s.D + 1) / 2;
    s.group = s.H / s.Hkv;
    const std::size_t segment_count = detail::count_relevance_segments(a);
    const kvfuse_tuning& tuning = detail::context_tuning(context);
    const std::size_t tiles = (s.C + kTile - 1) / kTile, padded = tiles * kTile;
    const std::size_t rows_per_kv = s.M * s.group;
    const bool parallel = static_cast<double>(s.M) * s.C * s.H * s.D > static_cast<double>(tuning.score_parallel_work);
    const std::size_t workers = parallel ? std::min(detail::context_workers(context), tiles) : 1;

    // Path and scheme from the top-level fields or the first non-empty segment (every segment
    // uses the same path, checked by the API layer).
    const kvfuse_relevance_segment* path_source = nullptr;
    kvfuse_relevance_segment top{};
    if (a.segment_count == 0) {
        top.keys_i4 = a.keys_i4;
        top.keys_i8 = a.keys_i8;
    } else {
        for (std::size_t i = 0; i < a.segment_count; ++i)
            if (detail::relevance_segment_at(a.segments, i).keys > 0) {
                top = detail::relevance_segment_at(a.segments, i);
                break;
            }
    }
    path_source = &top;
    const Path path = path_source->keys_i4 != nullptr ? Path::int4 : path_source->keys_i8 != nullptr ? Path::int8 : Path::f32;
    const ScoreDot dot = path == Path::f32 ? ScoreDot::automatic : choose_dot(path);
    if (path != Path::f32) detail::record_score_dot({dot, has_instruction(dot)});
    s.lanes = is_quads(dot) ? (s.D + 3) / 4 : s.D2;
    const float inv = 1.0f / std::sqrt(static_cast<float>(s.H * s.D));
    const std::size_t block_rows =
        dot == ScoreDot::quads_u8s8_s16 ? std::min<std::size_t>(tuning.score_query_rows, kMaxS16SumRows) : tuning.score_query_rows;
    const RowsFn kv_head = path != Path::f32 && s.lanes <= kStationaryLanes ? keys_in_registers_function(dot, s.lanes)
                           : block_rows == 6                                 ? rows_function<6>(path, dot)
                           : block_rows == 2                                 ? rows_function<2>(path, dot)
                                                                             : rows_function<4>(path, dot);

    // Everything the call needs, from the context's scratch, reserved before any worker runs.
    const std::size_t lanes_per_segment = s.M * s.H * s.lanes, rows_heads = s.M * s.H;
    const std::size_t f32_tile_floats = path == Path::f32 ? s.D * kTile : 0;
    const std::size_t int_tile_lanes = path == Path::f32 ? 0 : s.lanes * kTile;
    detail::ScratchLayout layout;
    ScratchBlock<kvfuse_relevance_segment> list_block;
    ScratchBlock<std::size_t> starts_block;
    ScratchBlock<float> queries_f32_block, query_scales_block, logits_block, inverse_total_block, column_block;
    ScratchBlock<std::int32_t> query_lanes_block, corrections_block;
    ScratchBlock<std::uint32_t> row_question_block, row_head_block;
    list_block.add(layout, segment_count);
    starts_block.add(layout, segment_count + 1);
    if (path == Path::f32) {
        queries_f32_block.add(layout, segment_count * rows_heads * s.D);
    } else {
        query_lanes_block.add(layout, segment_count * lanes_per_segment);
        corrections_block.add(layout, segment_count * rows_heads);
        query_scales_block.add(layout, segment_count * rows_heads);
    }
    row_question_block.add(layout, rows_per_kv);
    row_head_block.add(layout, rows_per_kv);
    logits_block.add(layout, s.M * padded);
    inverse_total_block.add(layout, s.M);
    column_block.add(layout, padded);
    // Per worker, each block a whole number of 64-byte lines (aligned loads).
    const std::size_t worker_floats = (f32_tile_floats + 15) / 16 * 16 + kTile + (s.M * kTile + 15) / 16 * 16;
    const std::size_t worker_lanes = (int_tile_lanes + 15) / 16 * 16;
    ScratchBlock<float> worker_floats_block;
    ScratchBlock<std::int32_t> worker_lanes_block;
    worker_floats_block.add(layout, workers * worker_floats);
    worker_lanes_block.add(layout, workers * worker_lanes);
    void* base = detail::context_scratch(context, layout.bytes);

    kvfuse_relevance_segment* segment_list = list_block.at(base);
    std::size_t* segment_starts = starts_block.at(base);
    detail::split_relevance_segments(a, segment_list, segment_starts);
    const SegmentView segments{segment_list, segment_starts, segment_count};

    // int paths: every segment's query (row, head) encoded once; f32: copied KV head by KV head
    // as the int lanes are (encode_queries says why).
    float* queries_f32 = queries_f32_block.at(base);
    std::int32_t* query_lanes = query_lanes_block.at(base);
    std::int32_t* corrections = corrections_block.at(base);
    float* query_scales = query_scales_block.at(base);
    if (path == Path::f32) {
        for (std::size_t si = 0; si < segment_count; ++si)
            for (std::size_t rh = 0; rh < rows_heads; ++rh)
                std::memcpy(queries_f32 + (si * rows_heads + kv_major_row(s, rh)) * s.D,
                            segments.list[si].queries_f32 + rh * s.D, s.D * sizeof(float));
    } else {
        for (std::size_t si = 0; si < segment_count; ++si)
            encode_queries(segments.list[si], s, path, dot, query_lanes + si * lanes_per_segment,
                           corrections + si * rows_heads, query_scales + si * rows_heads);
    }

    std::uint32_t* row_question = row_question_block.at(base);
    std::uint32_t* row_head = row_head_block.at(base);
    for (std::size_t r = 0; r < rows_per_kv; ++r) {
        row_question[r] = static_cast<std::uint32_t>(r / s.group);
        row_head[r] = static_cast<std::uint32_t>(r % s.group);
    }

    float* logits = logits_block.at(base);
    // Tiles are taken in chunks from a shared counter rather than split evenly up front: with
    // an even split a worker whose core is shared with another process (a compile beside a
    // benchmark) held the whole call back, 2 threads then slower than 1.
    const std::size_t tiles_per_chunk = std::max<std::size_t>(1, std::min<std::size_t>(8, tiles / (4 * workers)));
    const std::size_t chunks = (tiles + tiles_per_chunk - 1) / tiles_per_chunk;
    std::atomic<std::size_t> next_chunk{0};
    auto score_tiles = [&](std::size_t w) {
        float* f32_tile = worker_floats_block.at(base) + w * worker_floats;
        float* key_scales = f32_tile + (f32_tile_floats + 15) / 16 * 16;
        float* sums = key_scales + kTile;
        std::int32_t* int_tile = worker_lanes_block.at(base) + w * worker_lanes;
        Scratch scratch{f32_tile, int_tile, key_scales, nullptr, nullptr, nullptr, nullptr, row_question, row_head, nullptr, nullptr, 0, 0,
                        block_rows};
        const char* next_keys[kTile];
        const float* next_scales[kTile];
        scratch.next_keys = next_keys;
        scratch.next_scales = next_scales;
        scratch.next_key_bytes = path == Path::int8 ? s.D : s.D2;
        std::size_t last_tile = 0;  // past the current chunk
        // Where the keys of KV head kv of tile ti start (its first segment's part; f32 tiles are
        // too large to prefetch beside the current one in L1).
        auto find_next_keys = [&](std::size_t ti, std::size_t kv) {
            scratch.next_key_count = 0;
            if (path == Path::f32 || ti >= last_tile) return;
            const std::size_t j0 = ti * kTile, end = std::min(j0 + kTile, s.C), si = segments.of(j0);
            const kvfuse_relevance_segment& g = segments.list[si];
            const char* keys = path == Path::int8 ? reinterpret_cast<const char*>(g.keys_i8) : reinterpret_cast<const char*>(g.keys_i4);
            const std::size_t hi = std::min(segments.starts[si + 1], end);
            for (std::size_t j = j0; j < hi; ++j) {
                next_scales[scratch.next_key_count] = g.key_scales + (j - segments.starts[si]) * s.Hkv + kv;
                next_keys[scratch.next_key_count++] = keys + detail::relevance_key_at(g, j - segments.starts[si], kv);
            }
        };
        for (std::size_t chunk = next_chunk.fetch_add(1, std::memory_order_relaxed); chunk < chunks;
             chunk = next_chunk.fetch_add(1, std::memory_order_relaxed)) {
            last_tile = std::min(tiles, (chunk + 1) * tiles_per_chunk);
            for (std::size_t ti = chunk * tiles_per_chunk; ti < last_tile; ++ti) {
                const std::size_t j0 = ti * kTile, end = std::min(j0 + kTile, s.C);
                const std::size_t first_segment = segments.of(j0);
                std::fill(sums, sums + s.M * kTile, 0.0f);
                for (std::size_t kv = 0; kv < s.Hkv; ++kv) {
                    // Usually one segment covers the tile; at a boundary each fills its own lanes.
                    for (std::size_t si = first_segment; si < segment_count && segments.starts[si] < end; ++si) {
                        const kvfuse_relevance_segment& g = segments.list[si];
                        const std::size_t lo = std::max(segments.starts[si], j0) - j0, hi = std::min(segments.starts[si + 1], end) - j0;
                        layout_tile(g, s, path, dot, j0 + lo - segments.starts[si], lo, hi, kv, f32_tile, int_tile, key_scales);
                        if (kv + 1 < s.Hkv)
                            find_next_keys(ti, kv + 1);
                        else
                            find_next_keys(ti + 1, 0);
                        scratch.queries_f32 = path == Path::f32 ? queries_f32 + si * rows_heads * s.D : nullptr;
                        if (path != Path::f32) {
                            scratch.query_scales = query_scales + si * rows_heads;
                            scratch.query_lanes = query_lanes + si * lanes_per_segment;
                            scratch.corrections = corrections + si * rows_heads;
                        }
                        kv_head(s, kv, scratch, sums);
                    }
                }
                // Bias, scale, and mask what a row may not see (key j > docs + m) and the padding.
                for (std::size_t si = first_segment; si < segment_count && segments.starts[si] < end; ++si) {
                    const float* bias = segments.list[si].bias;
                    const std::size_t lo = std::max(segments.starts[si], j0), hi = std::min(segments.starts[si + 1], end);
                    for (std::size_t m = 0; m < s.M; ++m) {
                        const float row_bias = bias != nullptr ? bias[m] : 0.0f;
                        if (lo == j0 && hi == j0 + kTile && j0 + kTile <= s.docs + m + 1) {  // the whole tile, all visible
                            for (std::size_t v = 0; v < kTile; v += kLanes)
                                ((F32s::load_aligned(sums + m * kTile + v) + F32s(row_bias)) * F32s(inv))
                                    .store_aligned(logits + m * padded + j0 + v);
                            continue;
                        }
                        for (std::size_t j = lo; j < hi; ++j)
                            logits[m * padded + j] = j <= s.docs + m ? (sums[m * kTile + (j - j0)] + row_bias) * inv : -INFINITY;
                    }
                }
                for (std::size_t m = 0; m < s.M; ++m)
                    for (std::size_t j = end; j < j0 + kTile; ++j) logits[m * padded + j] = -INFINITY;
            }
        }
    };
    detail::run_workers(context, workers, score_tiles);

    // Softmax per question row, in place; the row's 1 / total kept for the column sums.
    float* inverse_total = inverse_total_block.at(base);
    const std::size_t row_workers = std::max<std::size_t>(1, std::min(workers, s.M));
    auto softmax_rows = [&](std::size_t w) {
        for (std::size_t mi = s.M * w / row_workers; mi < s.M * (w + 1) / row_workers; ++mi) {
            float* row = logits + mi * padded;
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
            inverse_total[mi] = 1.0f / xsimd::hadd(total_v);
        }
    };
    detail::run_workers(context, row_workers, softmax_rows);
    // Column sums over the question rows, document keys only.
    float* column = column_block.at(base);
    auto column_sums = [&](std::size_t w) {
        for (std::size_t ti = tiles * w / workers; ti < tiles * (w + 1) / workers; ++ti) {
            const std::size_t j0 = ti * kTile;
            for (std::size_t v = 0; v < kVectors; ++v) {
                F32s acc(0.0f);
                for (std::size_t m = 0; m < s.M; ++m)
                    acc = xsimd::fma(F32s::load_aligned(logits + m * padded + j0 + v * kLanes), F32s(inverse_total[m]), acc);
                acc.store_aligned(column + j0 + v * kLanes);
            }
        }
    };
    detail::run_workers(context, workers, column_sums);
    if (!a.smoothing) {
        std::memcpy(a.out, column, s.docs * sizeof(float));
        return;
    }
    // Width-5 average, the window's terms added in key order from 0 (the same bits whether a
    // vector or one key at a time); vectors where the whole window is inside the documents.
    auto window = [&](std::size_t j) {
        float acc = 0.0f;
        for (std::size_t k = (j >= 2 ? j - 2 : 0); k <= j + 2 && k < s.docs; ++k) acc += column[k];
        return acc / 5.0f;
    };
    std::size_t j = 0;
    for (; j < std::min<std::size_t>(2, s.docs); ++j) a.out[j] = window(j);
    for (; j + 2 + kLanes <= s.docs; j += kLanes) {
        F32s acc = F32s(0.0f) + F32s::load_unaligned(column + j - 2);
        for (std::size_t k = 1; k < 5; ++k) acc += F32s::load_unaligned(column + j - 2 + k);
        (acc / F32s(5.0f)).store_unaligned(a.out + j);
    }
    for (; j < s.docs; ++j) a.out[j] = window(j);
}

}  // namespace

void register_score(detail::KernelTable& table) {
    table.relevance = &relevance;
    KVFUSE_REGISTER_STORE_BARRIER();
    table.int8_dot = detail::score_dot_name(kBestInt8Dot);
    KVFUSE_REGISTER_STORE_BARRIER();
    table.int4_dot = detail::score_dot_name(kBestInt4Dot);
}

}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
