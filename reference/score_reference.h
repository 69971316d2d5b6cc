// Plain A3 relevance in double (from int8 or f32 inputs) and the int8 quantizers: ground truth
// of the scoring tests and the `scalar` ISA.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvfuse/kvfuse.h"

namespace kvfuse::reference {

void a3_relevance(const kvfuse_relevance_args& args);

// Symmetric int8 of n values: scale = max|x| / 127 (0 for an all-zero input), round to nearest.
float quantize_i8(const float* x, std::size_t n, std::int8_t* out);
// Symmetric int4 of n values packed two per byte (low nibble first): scale = max|x| / 7.
float quantize_i4(const float* x, std::size_t n, std::uint8_t* out);
// Element i of int4 values packed as above.
std::int32_t unpack_i4(const std::uint8_t* packed, std::size_t i);

}  // namespace kvfuse::reference
