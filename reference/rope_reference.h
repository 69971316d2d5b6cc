// Plain double-precision RoPE: the ground truth of the RoPE tests and the `scalar` ISA.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/key_layout.h"
#include "kvfuse/kvfuse.h"

namespace kvfuse::reference {

// Frequency of pair i, scaling applied, written from the published formulas.
double rope_frequency(const kvfuse_rope_config& config, int pair);

// Same contract as kvfuse_rope_rotate_copy / _span_copy (deltas null = every token by delta);
// the config must be valid. Rotation in double, one rounding to the storage type.
void rope_rotate(const kvfuse_rope_config& config, kvfuse_dtype dtype, const void* src,
                 std::size_t src_token_stride, void* dst, std::size_t dst_token_stride,
                 std::size_t tokens, std::size_t heads, const std::int64_t* deltas,
                 std::int64_t delta);
// The same with each side in any layout (kvfuse_rope_rotate_layout, defaults resolved); src
// holds src_dtype and dst dtype (the converting copy).
void rope_rotate(const kvfuse_rope_config& config, kvfuse_dtype dtype, kvfuse_dtype src_dtype, const void* src,
                 const kvfuse::detail::KeyLayout& src_layout, void* dst, const kvfuse::detail::KeyLayout& dst_layout,
                 std::size_t tokens, std::size_t heads, const std::int64_t* deltas, std::int64_t delta);

// The exact rotation of one f32 head into doubles (no output rounding), for error bounds.
void rope_rotate_head_exact(const kvfuse_rope_config& config, const float* head,
                            std::int64_t delta, double* out);

}  // namespace kvfuse::reference
