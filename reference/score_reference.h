// Plain A3 relevance in double (from int8, int4 or f32 / bf16 / f16 keys) and the int8 quantizers: ground truth
// of the scoring tests and the `scalar` ISA.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/key_layout.h"
#include "kvfuse/kvfuse.h"

namespace kvfuse::reference {

void a3_relevance(const kvfuse_relevance_args& args);

// Symmetric int8 of n values: scale = max|x| / 127 (0 for an all-zero input), q = x * RN(1 /
// scale) (a true x / scale when 1 / scale would not be a normal f32) clamped to [-127, 127]
// (NaN to 127) and rounded half to even.
float quantize_i8(const float* x, std::size_t n, std::int8_t* out);
// Symmetric int4 of n values packed two per byte (low nibble first): scale = max|x| / 7, q as
// quantize_i8's within [-7, 7].
float quantize_i4(const float* x, std::size_t n, std::uint8_t* out);
// kvfuse_quantize_keys_i8 (bits 8: int8 out, head_dim bytes per (token, head)) and _i4 (bits 4:
// (head_dim + 1) / 2 packed bytes per (token, head)): each (head, dim)'s mean over tokens (its
// f32 sum in token order divided by the f32 token count; a column whose f32 sum is not finite
// is summed again in double), removed in f32, then quantize_i8 / quantize_i4 per
// (token, head). The SIMD kernels (kernels/quantize/) match this bit for bit.
// Keys of `dtype` (f32, bf16 or f16, token_stride in its elements) are widened exactly first.
void quantize_keys(kvfuse_dtype dtype, const void* keys, std::size_t tokens, std::size_t heads, std::size_t head_dim,
                   std::size_t token_stride, int bits, void* out, float* scales, float* means);
// The same with keys anywhere a layout puts them (strided heads, a paged block table).
void quantize_keys(kvfuse_dtype dtype, const void* keys, std::size_t tokens, std::size_t heads, std::size_t head_dim,
                   const kvfuse::detail::KeyLayout& layout, int bits, void* out, float* scales, float* means);
// kvfuse_quantize_rows_i8: quantize_i8 per (row, head), no mean.
void quantize_rows_i8(kvfuse_dtype dtype, const void* x, std::size_t rows, std::size_t heads, std::size_t head_dim,
                      std::size_t row_stride, std::int8_t* out, float* scales);
// Element i of int4 values packed as above.
std::int32_t unpack_i4(const std::uint8_t* packed, std::size_t i);

}  // namespace kvfuse::reference
