// The GGUF block types whose values are exactly w = s u - m per 32 consecutive values of a row
// (integer codes u of 4 or 8 bits, one scale s and one offset m per 32), so that kvfuse_gemm
// multiplies them from their codes with int8 activations (kvfuse_pack_quantized_weights):
//   Q8_0  u = q + 128 (8 bits), s = d, m = 128 d      Q4_0  u = q (4), s = d, m = 8 d
//   Q5_0  u = q (5 bits in 8), s = d, m = 16 d         Q4_1 / Q5_1  s = d, m = -min
//   Q4_K  u (4), s = d sc, m = dmin mn per sub-block   Q5_K  the same with 5-bit u in 8 bits
// Every s and m is exact in f32 (a half times an integer of at most 8 bits), so the codes hold
// exactly the dequantizer's values. Q6_K has a form of its own (q6_k_codes below,
// KVFUSE_DTYPE_Q6_SUPER256); the other types with 16-value sub-blocks (Q2_K, Q3_K) and the IQ4
// grids have none: they stay on the dequantize-a-tile path.
#pragma once

#include <cstddef>
#include <cstdint>

#include "model/gguf_types.h"

namespace kvfuse::model {

// 4 or 8: the code width `type` packs with; 0 when it has no block-32 form.
int block32_code_bits(GgmlType type);

// One row of `elements` values (whole blocks of `type`) as codes (one byte per value), scales
// and offsets (one per 32 values). `type` must have a block-32 form.
void block32_codes(GgmlType type, const std::uint8_t* blocks, std::size_t elements, std::uint8_t* codes, float* scales,
                   float* offsets);

// Q4_K in the two-level form (KVFUSE_DTYPE_Q4_SUPER256, 4.75 bits a weight against the 6 of
// the one-level one): one row of `elements` values (whole super-blocks of 256) as codes (one
// byte per value), per 32 values the 6-bit sub-scale sc and sub-min mn, per 256 the super-block's
// d and dmin (f16 values widened). d * sc and dmin * mn, one f32 product each, are exactly the
// scales and offsets block32_codes gives, so both forms hold the dequantizer's values.
void q4_k_two_level_codes(const std::uint8_t* blocks, std::size_t elements, std::uint8_t* codes, std::uint8_t* sub_scales,
                          std::uint8_t* sub_offsets, float* super_scales, float* super_offsets);

// Q6_K in its own form (KVFUSE_DTYPE_Q6_SUPER256): one row of `elements` values (whole
// super-blocks of 256) as 6-bit codes u (one byte per value), per 16 values the signed sub-scale,
// per 256 the super-block's d (an f16 value widened). The value is d * sub * (u - 32), which is
// what the dequantizer computes (exact in f32: 11 + 8 + 6 significant bits).
void q6_k_codes(const std::uint8_t* blocks, std::size_t elements, std::uint8_t* codes, std::int8_t* sub_scales,
                float* super_scales);

}  // namespace kvfuse::model
