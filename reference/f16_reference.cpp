#include "reference/f16_reference.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "kernels/common/bf16.h"

namespace kvfuse::reference {

float f16_to_f32(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0x1f)  // Inf, or NaN with its payload and the quiet bit set
        return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13) | (mantissa != 0 ? 0x00400000u : 0u));
    if (exponent == 0)  // zero or subnormal: mantissa * 2^-24, exact in f32
        return std::copysign(std::ldexp(static_cast<float>(mantissa), -24), std::bit_cast<float>(sign | 0x3f800000u));
    return std::bit_cast<float>(sign | ((exponent - 15 + 127) << 23) | (mantissa << 13));
}

std::uint16_t f32_to_f16(float value) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
    if (std::isnan(value)) return static_cast<std::uint16_t>(sign | 0x7e00u | ((bits >> 13) & 0x3ffu));
    const double x = std::fabs(static_cast<double>(value));
    if (x >= 65520.0) return static_cast<std::uint16_t>(sign | 0x7c00u);  // 65520 is halfway to 2^16
    if (x < 0x1p-14) {
        // Subnormal (or zero): a multiple of 2^-24, rounded half to even. 1024 is the smallest
        // normal, whose encoding 0x400 follows on.
        return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(std::nearbyint(x * 0x1p24)));
    }
    int e;
    std::frexp(x, &e);  // x = f * 2^e, f in [0.5, 1): the f16 exponent is e - 1, in [-14, 15]
    const int exponent = e - 1;
    // 1.m * 2^exponent with 10 fraction bits, rounded half to even; 2048 (a carry out of the
    // fraction) moves to the next exponent by the same addition.
    const auto significand = static_cast<std::uint32_t>(std::nearbyint(std::ldexp(x, 10 - exponent)));
    return static_cast<std::uint16_t>(sign + (static_cast<std::uint32_t>(exponent + 15) << 10) + (significand - 1024));
}

float element_as_f32(kvfuse_dtype dtype, const void* base, std::size_t at) {
    if (dtype == KVFUSE_DTYPE_F32) return static_cast<const float*>(base)[at];
    const std::uint16_t bits = static_cast<const std::uint16_t*>(base)[at];
    return dtype == KVFUSE_DTYPE_F16 ? f16_to_f32(bits) : detail::bf16_bits_to_f32(bits);
}

void store_from_f32(kvfuse_dtype dtype, void* base, std::size_t at, float value) {
    if (dtype == KVFUSE_DTYPE_F32)
        static_cast<float*>(base)[at] = value;
    else
        static_cast<std::uint16_t*>(base)[at] = dtype == KVFUSE_DTYPE_F16 ? f32_to_f16(value) : detail::f32_to_bf16_bits(value);
}

}  // namespace kvfuse::reference
