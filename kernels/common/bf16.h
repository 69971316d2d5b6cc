// Scalar bf16 <-> f32 conversions shared by the reference and the kernels' scalar tails.
// ISA-neutral and constexpr-simple, so including it in every ISA's translation unit is safe.
#pragma once

#include <cstdint>
#include <cstring>

namespace kvfuse::detail {

inline float bf16_bits_to_f32(std::uint16_t bits) {
    const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
    float out;
    std::memcpy(&out, &wide, sizeof out);
    return out;
}

// Round to nearest, ties to even; a NaN stays a (quiet) NaN instead of rounding to Inf.
inline std::uint16_t f32_to_bf16_bits(float value) {
    std::uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits | 0x00400000u) >> 16);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<std::uint16_t>(bits >> 16);
}

}  // namespace kvfuse::detail
