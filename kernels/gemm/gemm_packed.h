// The packed weights of a dense layer (the opaque kvfuse_packed_weights of the C API) and their
// layout. ISA-neutral: one layout for every ISA, so weights packed once at model load stay valid
// whatever ISA is forced later.
//
// W is `out` rows of `in` (a linear layer's [out x in] matrix, C = A W^T). Its rows are cut into
// panels of kGemmPanel = 32 consecutive rows (output columns of C), the last zero-padded. Within
// a panel the data is k-major, so a microkernel reads one 128-byte line per k (f32) or per pair
// of k (bf16) for all 32 columns:
//   f32:  panel p holds in x 32 floats: element (k, j) at [k * 32 + j] for W row p * 32 + j.
//   bf16: panel p holds ceil(in / 2) x 32 pairs of bf16: pair (kp, j) = (W[j][2kp], W[j][2kp+1])
//         as one uint32, the even k in the low half (what vdpbf16ps multiplies lane-wise, and what
//         a shift/mask widens to two f32 vectors); an odd `in` ends with a zero high half.
//   block-quantized (KVFUSE_DTYPE_Q8_BLOCK32 / Q4_BLOCK32, kvfuse_pack_quantized_weights): panel
//         p holds in / 32 records, one per block b of 32 k, each its codes then 32 f32 scales
//         then 32 f32 offsets (column j of the panel: w = scale[j] * code - offset[j]). Codes of
//         a record in 8 groups g of 4 consecutive k (k = 32 b + 4 g + t):
//           8-bit: byte g * 128 + 4 j + t is the code of column j (a 32-bit lane per column,
//                  what vpdpbusd / sdot multiply: four k's of one column);
//           4-bit: byte g * 64 + 4 j + t, j < 16, holds column j in its low nibble and column
//                  j + 16 in its high one, so that one load, a mask and a shift give two vectors
//                  of columns (j.. and j + 16..) on every vector width (16, 8 or 4 lanes).
//         Records are 1280 (8-bit) or 768 bytes (4-bit): 64-byte aligned.
//   two-level 4-bit (KVFUSE_DTYPE_Q4_SUPER256, Q4_K's form): panel p holds, per super-block s
//         of 8 blocks (256 k; the last may have fewer), a header of 32 f32 super-scales then 32
//         f32 super-offsets, then the super-block's records: 4-bit codes as above, then 16
//         32-bit words, word j < 16 holding bytes (sub-scale, sub-offset) of column j and then of
//         column j + 16 (as the nibbles: one load, masks and shifts give both vectors), column j:
//         scale = super_scale[j] * sub_scale[j], offset = super_offset[j] * sub_offset[j], one f32
//         product each. Header 256 bytes, records 576: 4.75 bits a weight, 64-byte aligned.
//   Q6_K's form (KVFUSE_DTYPE_Q6_SUPER256): panel p holds, per super-block of 8 blocks, a header
//         of 32 f32 super-scales, then the super-block's records of 832 bytes: the 6-bit codes,
//         per pair of groups (2h, 2h + 1) three 64-byte rows at h * 192 (768 bytes), byte
//         r * 64 + 4 j + t, j < 16, of row r holding in bits 0-5 the code of column j, group 2h
//         (r = 0), column j, group 2h + 1 (r = 1) or column j + 16, group 2h (r = 2), and in bits
//         6-7 bits 2r, 2r + 1 of the code of column j + 16, group 2h + 1: a mask gives three
//         vectors of codes, three shifts, masks and two ors the fourth, on every vector width;
//         then 16 words of signed sub-scales, word j < 16 holding the bytes (k 0-15, k 16-31) of
//         column j and then of column j + 16. Header 128 bytes: 6.625 bits a weight (Q6_K
//         6.5625, its f16 super-scale here an f32), 64-byte aligned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

// Internal linkage, not `inline`: see kTopkMaxBuckets (topk_scratch.h) on AddressSanitizer.
constexpr std::size_t kGemmPanel = 32;

// How many workers a product gets: `threads` > 0 asks for that many (kvfuse_gemm's argument),
// else `default_workers` (the context's count) -- but one below 2^20 multiply-adds, where
// starting workers costs more than it gains. At most 256 (each task owns a buffer: a runaway
// thread count must not become a runaway allocation). Out of line in gemm_packed.cpp, shared by
// the f32/bf16 and the quantized kernels: no ISA object carries a copy.
std::size_t gemm_workers(std::size_t n, std::size_t out, std::size_t in, int threads, std::size_t default_workers);

// How kvfuse_gemm splits a product among at most `workers` tasks: whole row ranges when every
// task gets at least four row tiles (each then packs only its own rows), else column ranges
// first, then rows among the tasks a column range has.
struct GemmSplit {
    std::size_t row_groups, col_groups;
};
GemmSplit split_gemm(std::size_t row_tiles, std::size_t col_tiles, std::size_t workers);

// One task's share: rows [row_begin, row_end) x column tiles [tile_begin, tile_end), even shares
// of whole row tiles (of `tile_rows` rows, the last cut at n) and column tiles. Empty (begin ==
// end on either side) when the task has nothing.
struct GemmShare {
    std::size_t row_begin, row_end, tile_begin, tile_end;
};
GemmShare share_of(const GemmSplit& split, std::size_t task, std::size_t n, std::size_t tile_rows,
                   std::size_t row_tiles, std::size_t col_tiles);

struct AlignedFree {
    void operator()(void* p) const noexcept { ::operator delete(p, std::align_val_t{64}); }
};

// Consecutive k's sharing a scale and an offset in block-quantized weights.
constexpr std::size_t kQuantBlock = 32;
// Blocks per super-block of two-level weights (KVFUSE_DTYPE_Q4_SUPER256), and the bytes of a
// super-block's header (32 f32 super-scales, 32 f32 super-offsets).
constexpr std::size_t kSuperBlocks = 8;
constexpr std::size_t kSuperHeaderBytes = 2 * kGemmPanel * sizeof(float);
// Q6_K's form: its super-block header (32 f32 super-scales), its 16-value sub-blocks and the
// bias of its 6-bit codes (w = super * sub * (u - 32)).
constexpr std::size_t kQ6HeaderBytes = kGemmPanel * sizeof(float);
constexpr std::size_t kQ6SubBlock = 16;
constexpr int kQ6CodeBias = 32;

// A packed matrix: sizes, the packed type and the 64-byte aligned panels.
struct PackedWeightsData {
    std::size_t out = 0, in = 0, panels = 0;
    kvfuse_dtype dtype = KVFUSE_DTYPE_F32;
    std::unique_ptr<void, AlignedFree> data;

    bool quantized() const {
        return dtype == KVFUSE_DTYPE_Q8_BLOCK32 || dtype == KVFUSE_DTYPE_Q4_BLOCK32 || dtype == KVFUSE_DTYPE_Q4_SUPER256 ||
               dtype == KVFUSE_DTYPE_Q6_SUPER256;
    }
    bool two_level() const { return dtype == KVFUSE_DTYPE_Q4_SUPER256; }
    bool six_bit() const { return dtype == KVFUSE_DTYPE_Q6_SUPER256; }
    // Records grouped in super-blocks of 8 behind a header (Q4_SUPER256, Q6_SUPER256).
    bool super_blocked() const { return two_level() || six_bit(); }
    std::size_t header_bytes() const { return two_level() ? kSuperHeaderBytes : six_bit() ? kQ6HeaderBytes : 0; }
    int code_bits() const { return dtype == KVFUSE_DTYPE_Q8_BLOCK32 ? 8 : six_bit() ? 6 : 4; }
    std::size_t blocks() const { return in / kQuantBlock; }
    std::size_t supers() const { return (blocks() + kSuperBlocks - 1) / kSuperBlocks; }
    // Bytes of one block record of a quantized panel: the codes, then the scales and offsets
    // (f32, or u8 sub-values for two-level weights, or two s8 sub-scales per column for Q6).
    std::size_t code_bytes() const { return static_cast<std::size_t>(code_bits()) * kGemmPanel * kQuantBlock / 8; }
    std::size_t record_bytes() const { return code_bytes() + 2 * kGemmPanel * (super_blocked() ? 1 : sizeof(float)); }
    // Bytes from one super-block's header to the next (super-blocked weights).
    std::size_t super_span() const { return header_bytes() + kSuperBlocks * record_bytes(); }
    std::size_t panel_bytes() const { return blocks() * record_bytes() + supers() * header_bytes(); }
    const std::uint8_t* panel_base(std::size_t panel) const {
        return static_cast<const std::uint8_t*>(data.get()) + panel * panel_bytes();
    }
    std::size_t record_offset(std::size_t block) const {
        if (!super_blocked()) return block * record_bytes();
        return block / kSuperBlocks * super_span() + header_bytes() + block % kSuperBlocks * record_bytes();
    }
    const std::uint8_t* record(std::size_t panel, std::size_t block) const { return panel_base(panel) + record_offset(block); }
    // The header (super-scales, then super-offsets) of the super-block holding `block`.
    const float* super_header(std::size_t panel, std::size_t block) const {
        return reinterpret_cast<const float*>(panel_base(panel) + block / kSuperBlocks * super_span());
    }

    // Elements of one packed panel: floats (f32) or uint32 pairs (bf16).
    std::size_t panel_elements() const { return (dtype == KVFUSE_DTYPE_F32 ? in : (in + 1) / 2) * kGemmPanel; }
    const float* f32_panel(std::size_t p) const { return static_cast<const float*>(data.get()) + p * panel_elements(); }
    const std::uint32_t* bf16_panel(std::size_t p) const {
        return static_cast<const std::uint32_t*>(data.get()) + p * panel_elements();
    }
};

// What every task of one product reads (A, its leading dimension) and writes (C = A W^T + beta C).
struct GemmProblem {
    const PackedWeightsData& w;
    const float* a;
    std::size_t lda;
    float beta;
    float* c;
    std::size_t ldc;
};

// Allocates the packed copy of a [out x in] matrix of `src_dtype` (row stride in elements) as
// `packed_dtype`; f32 -> bf16 rounds to nearest even. Throws std::bad_alloc.
PackedWeightsData pack_weights(kvfuse_dtype src_dtype, const void* weights, std::size_t out, std::size_t in,
                               std::size_t row_stride, kvfuse_dtype packed_dtype);

// Row j of W back from the packed copy, widened to f32 (exact for both dtypes).
void unpack_weight_row(const PackedWeightsData& w, std::size_t j, float* row);

// Block-quantized W (kvfuse_quantized_weights, checked by the caller: in a multiple of 32,
// codes below 2^code_bits; two-level when sub_scales is set, Q6_K's form when code_bits is 6)
// packed as above. Throws
// std::bad_alloc.
PackedWeightsData pack_quantized_weights(const kvfuse_quantized_weights& q);

// Row j of quantized W: its `in` codes and its in / 32 scales and offsets (two-level: each the
// f32 product of the super and sub value, as the kernels compute it). Not for Q6_SUPER256.
void unpack_quantized_row(const PackedWeightsData& w, std::size_t j, std::uint8_t* codes, float* scales,
                          float* offsets);

// Row j of Q6_SUPER256 W: its `in` 6-bit codes, in / 16 signed sub-scales, ceil(in / 256)
// super-scales.
void unpack_q6_row(const PackedWeightsData& w, std::size_t j, std::uint8_t* codes, std::int8_t* sub_scales,
                   float* super_scales);

}  // namespace kvfuse::detail

struct kvfuse_packed_weights {
    kvfuse::detail::PackedWeightsData weights;
};
