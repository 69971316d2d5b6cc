// IEEE binary16 <-> binary32, written plainly: the ground truth of every f16 path. Debian's
// libfp16-dev (FP16) was considered: its f32 -> f16 turns every NaN into 0x7E00, dropping the
// sign and payload that F16C and AArch64's fcvt keep, so the kernels could not be checked bit
// for bit against it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvfuse/kvfuse.h"

namespace kvfuse::reference {

// Exact. A NaN keeps its sign and payload and comes back quiet (as vcvtph2ps and fcvt do).
float f16_to_f32(std::uint16_t bits);
// Round to nearest, ties to even (the default rounding mode is assumed): below half the
// smallest subnormal -> +-0, from 65520 up -> +-Inf. A NaN keeps its sign and the top 10 bits
// of its payload, quieted (as vcvtps2ph and fcvt do).
std::uint16_t f32_to_f16(float value);

// Element `at` of a tensor of `dtype` (f32, bf16, f16), widened exactly; and one stored,
// rounded to nearest even.
float element_as_f32(kvfuse_dtype dtype, const void* base, std::size_t at);
void store_from_f32(kvfuse_dtype dtype, void* base, std::size_t at, float value);

}  // namespace kvfuse::reference
