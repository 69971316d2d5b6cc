// The ggml tensor types, described once: every type id GGUF files use, with its name, block
// geometry and, for the types kvfuse reads, a dequantizer and a quantizer of its own. The reader,
// its error messages, the writer and `make-model` all go through this table; no other code
// spells a type as a number.
//
// Block layouts are ggml's public ones (ggml-common.h). A type with a size but no dequantizer is
// "known but unsupported": a file holding it parses (its tensors' extents are checked), and only
// a tensor the model actually reads is an error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace kvfuse::model {

// ggml's type ids (the numbers stored in a GGUF tensor table).
enum class GgmlType : std::uint32_t {
    f32 = 0,
    f16 = 1,
    q4_0 = 2,
    q4_1 = 3,
    q5_0 = 6,
    q5_1 = 7,
    q8_0 = 8,
    q8_1 = 9,
    q2_k = 10,
    q3_k = 11,
    q4_k = 12,
    q5_k = 13,
    q6_k = 14,
    q8_k = 15,
    iq2_xxs = 16,
    iq2_xs = 17,
    iq3_xxs = 18,
    iq1_s = 19,
    iq4_nl = 20,
    iq3_s = 21,
    iq2_s = 22,
    iq4_xs = 23,
    i8 = 24,
    i16 = 25,
    i32 = 26,
    i64 = 27,
    f64 = 28,
    iq1_m = 29,
    bf16 = 30,
    tq1_0 = 34,
    tq2_0 = 35,
};

// `elements` is a multiple of block_elements; `blocks` holds elements / block_elements blocks.
using DequantizeRow = void (*)(const std::uint8_t* blocks, float* out, std::size_t elements);
using QuantizeRow = void (*)(const float* in, std::uint8_t* blocks, std::size_t elements);

struct TypeTraits {
    GgmlType type;
    const char* name;  // as llama.cpp prints it: "Q4_K", "IQ4_NL", "BF16"
    std::uint32_t block_elements;
    std::uint32_t block_bytes;
    DequantizeRow dequantize_row;  // nullptr: known to ggml, not read by kvfuse
    QuantizeRow quantize_row;      // nullptr exactly when dequantize_row is

    bool supported() const { return dequantize_row != nullptr; }
    // Bytes of a row of `elements` values; nullopt when `elements` is not whole blocks.
    std::optional<std::uint64_t> row_bytes(std::uint64_t elements) const {
        if (elements % block_elements != 0) return std::nullopt;
        return elements / block_elements * block_bytes;
    }
};

// The traits of a type id, or nullptr for an id ggml does not define.
const TypeTraits* find_type_traits(std::uint32_t id);
const TypeTraits& type_traits(GgmlType type);
// By name, case-insensitive ("q4_k" or "Q4_K"); nullptr when unknown.
const TypeTraits* find_type_traits(std::string_view name);
// Every type in the table, in id order.
std::span<const TypeTraits> all_type_traits();
// The types kvfuse reads and writes, comma separated, for error messages and --help.
std::string supported_type_names();
// "Q4_K" or "type 77 (unknown)".
std::string type_name(std::uint32_t id);

// IEEE half <-> float; float_to_half rounds to nearest even (overflow gives infinity).
float half_to_float(std::uint16_t h);
std::uint16_t float_to_half(float f);
// bfloat16 <-> float; float_to_bf16 rounds to nearest even (NaN stays NaN).
float bf16_to_float(std::uint16_t b);
std::uint16_t float_to_bf16(float f);

}  // namespace kvfuse::model
