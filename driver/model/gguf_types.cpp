// The type table and the conversions of the plain float types. The quantized formats'
// dequantizers and quantizers are in gguf_quants.cpp.
#include "model/gguf_types.h"

#include <array>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>

#include "model/gguf_quants.h"

namespace kvfuse::model {

float half_to_float(std::uint16_t h) {
    const std::uint32_t sign = (h >> 15) & 1, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    float value;
    if (exponent == 0)
        value = std::ldexp(static_cast<float>(mantissa), -24);
    else if (exponent == 31)
        value = mantissa ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
    else
        value = std::ldexp(static_cast<float>(mantissa | 0x400), static_cast<int>(exponent) - 25);
    return sign ? -value : value;
}

std::uint16_t float_to_half(float f) {
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
    const std::uint32_t abs = bits & 0x7fffffffu;
    if (abs > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);  // NaN
    if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds past 65504: infinity
    if (abs < 0x38800000u) {
        // Below the smallest normal half (2^-14) a half is a multiple of 2^-24: count in those
        // units (the scaling is exact) and round to nearest even (the default rounding mode).
        const float scaled = std::fabs(f) * 16777216.0f;
        const float rounded = std::nearbyint(scaled);
        return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(rounded));
    }
    // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even (a carry
    // into the exponent is the right result, up to infinity which the check above excluded).
    std::uint32_t half = ((abs >> 13) - ((127u - 15u) << 10));
    const std::uint32_t dropped = abs & 0x1fffu;
    if (dropped > 0x1000u || (dropped == 0x1000u && (half & 1u))) ++half;
    return static_cast<std::uint16_t>(sign | half);
}

float bf16_to_float(std::uint16_t b) {
    const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

std::uint16_t float_to_bf16(float f) {
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<std::uint16_t>(bits >> 16);
}

namespace {

void dequantize_f32(const std::uint8_t* in, float* out, std::size_t n) { std::memcpy(out, in, n * 4); }
void quantize_f32(const float* in, std::uint8_t* out, std::size_t n) { std::memcpy(out, in, n * 4); }

void dequantize_f16(const std::uint8_t* in, float* out, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, in + 2 * i, 2);
        out[i] = half_to_float(h);
    }
}
void quantize_f16(const float* in, std::uint8_t* out, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t h = float_to_half(in[i]);
        std::memcpy(out + 2 * i, &h, 2);
    }
}

void dequantize_bf16(const std::uint8_t* in, float* out, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t b;
        std::memcpy(&b, in + 2 * i, 2);
        out[i] = bf16_to_float(b);
    }
}
void quantize_bf16(const float* in, std::uint8_t* out, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t b = float_to_bf16(in[i]);
        std::memcpy(out + 2 * i, &b, 2);
    }
}

using T = GgmlType;
// Sizes from ggml-common.h (block structs) for every type ggml defines, so a file holding any of
// them parses; the ones kvfuse reads have their functions.
constexpr TypeTraits kTable[] = {
    {T::f32, "F32", 1, 4, dequantize_f32, quantize_f32},
    {T::f16, "F16", 1, 2, dequantize_f16, quantize_f16},
    {T::q4_0, "Q4_0", 32, 18, quants::dequantize_q4_0, quants::quantize_q4_0},
    {T::q4_1, "Q4_1", 32, 20, quants::dequantize_q4_1, quants::quantize_q4_1},
    {T::q5_0, "Q5_0", 32, 22, quants::dequantize_q5_0, quants::quantize_q5_0},
    {T::q5_1, "Q5_1", 32, 24, quants::dequantize_q5_1, quants::quantize_q5_1},
    {T::q8_0, "Q8_0", 32, 34, quants::dequantize_q8_0, quants::quantize_q8_0},
    {T::q8_1, "Q8_1", 32, 36, nullptr, nullptr},
    {T::q2_k, "Q2_K", 256, 84, quants::dequantize_q2_k, quants::quantize_q2_k},
    {T::q3_k, "Q3_K", 256, 110, quants::dequantize_q3_k, quants::quantize_q3_k},
    {T::q4_k, "Q4_K", 256, 144, quants::dequantize_q4_k, quants::quantize_q4_k},
    {T::q5_k, "Q5_K", 256, 176, quants::dequantize_q5_k, quants::quantize_q5_k},
    {T::q6_k, "Q6_K", 256, 210, quants::dequantize_q6_k, quants::quantize_q6_k},
    {T::q8_k, "Q8_K", 256, 292, nullptr, nullptr},
    {T::iq2_xxs, "IQ2_XXS", 256, 66, nullptr, nullptr},
    {T::iq2_xs, "IQ2_XS", 256, 74, nullptr, nullptr},
    {T::iq3_xxs, "IQ3_XXS", 256, 98, nullptr, nullptr},
    {T::iq1_s, "IQ1_S", 256, 50, nullptr, nullptr},
    {T::iq4_nl, "IQ4_NL", 32, 18, quants::dequantize_iq4_nl, quants::quantize_iq4_nl},
    {T::iq3_s, "IQ3_S", 256, 110, nullptr, nullptr},
    {T::iq2_s, "IQ2_S", 256, 82, nullptr, nullptr},
    {T::iq4_xs, "IQ4_XS", 256, 136, quants::dequantize_iq4_xs, quants::quantize_iq4_xs},
    {T::i8, "I8", 1, 1, nullptr, nullptr},
    {T::i16, "I16", 1, 2, nullptr, nullptr},
    {T::i32, "I32", 1, 4, nullptr, nullptr},
    {T::i64, "I64", 1, 8, nullptr, nullptr},
    {T::f64, "F64", 1, 8, nullptr, nullptr},
    {T::iq1_m, "IQ1_M", 256, 56, nullptr, nullptr},
    {T::bf16, "BF16", 1, 2, dequantize_bf16, quantize_bf16},
    {T::tq1_0, "TQ1_0", 256, 54, nullptr, nullptr},
    {T::tq2_0, "TQ2_0", 256, 66, nullptr, nullptr},
};

}  // namespace

std::span<const TypeTraits> all_type_traits() { return kTable; }

const TypeTraits* find_type_traits(std::uint32_t id) {
    for (const auto& t : kTable)
        if (static_cast<std::uint32_t>(t.type) == id) return &t;
    return nullptr;
}

const TypeTraits& type_traits(GgmlType type) { return *find_type_traits(static_cast<std::uint32_t>(type)); }

const TypeTraits* find_type_traits(std::string_view name) {
    for (const auto& t : kTable) {
        const std::string_view candidate = t.name;
        if (candidate.size() != name.size()) continue;
        bool same = true;
        for (std::size_t i = 0; i < name.size() && same; ++i)
            same = std::toupper(static_cast<unsigned char>(name[i])) == static_cast<unsigned char>(candidate[i]);
        if (same) return &t;
    }
    return nullptr;
}

std::string supported_type_names() {
    std::string out;
    for (const auto& t : kTable)
        if (t.supported()) out += (out.empty() ? "" : ", ") + std::string(t.name);
    return out;
}

std::string type_name(std::uint32_t id) {
    const TypeTraits* t = find_type_traits(id);
    return t != nullptr ? std::string(t->name) : "type " + std::to_string(id) + " (unknown)";
}

}  // namespace kvfuse::model
