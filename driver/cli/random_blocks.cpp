#include "cli/random_blocks.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

#include "model/gguf_quants.h"

namespace kvfuse::cli {

namespace {

using kvfuse::model::GgmlType;

// Half precision as the reader will see it; returns the stored value.
float store_half(std::uint8_t* p, float value) {
    const std::uint16_t h = kvfuse::model::float_to_half(value);
    std::memcpy(p, &h, 2);
    return kvfuse::model::half_to_float(h);
}

// Fills `bytes` (a multiple of 8) from consecutive words of the stream starting at `counter`.
void fill_words(std::uint64_t counter, std::uint8_t* out, std::size_t bytes) {
    for (std::size_t w = 0; w < bytes / 8; ++w) {
        const std::uint64_t word = mix64(counter + w);
        std::memcpy(out + 8 * w, &word, 8);
    }
}

// Q4_K (144 bytes: half d, half dmin, 12 bytes of 6-bit (scale, min) pairs, 128 bytes of nibbles;
// x = d * scale * q - dmin * min). Each sub-block of 32 takes scale = 32 + 2r (r uniform in
// 0..15) and min = scale / 2 with dmin = 15 d: its codes, uniform in 0..15, have mean 7.5, so
// d * scale * 7.5 - 15 d * scale / 2 = 0 is the sub-block's mean.
constexpr int kQ4kWords = 17;  // 16 words of codes, one of scales
void draw_q4_k(std::uint64_t stream, std::uint64_t first_block, std::size_t blocks, float stddev, std::uint8_t* out) {
    // E[(q - 7.5)^2] = (16^2 - 1) / 12 over the codes; E[scale^2] = 47^2 + 4 (16^2 - 1) / 12.
    const double code_var = 255.0 / 12.0, scale_sq = 47.0 * 47.0 + 4.0 * 255.0 / 12.0;
    const float target_d = static_cast<float>(stddev / std::sqrt(code_var * scale_sq));
    for (std::size_t b = 0; b < blocks; ++b, out += 144) {
        const std::uint64_t counter = stream + (first_block + b) * kQ4kWords;
        const float d = store_half(out, target_d);
        store_half(out + 2, 15.0f * d);
        std::uint64_t bits = mix64(counter + 16);
        int scales[8], mins[8];
        for (int s = 0; s < 8; ++s, bits >>= 4) {
            scales[s] = 32 + 2 * static_cast<int>(bits & 15);
            mins[s] = scales[s] / 2;
        }
        kvfuse::model::quants::pack_scale_min_k4(scales, mins, out + 4);
        fill_words(counter, out + 16, 128);
    }
}

// Q6_K (210 bytes: 128 bytes of low nibbles, 64 of high bit pairs, sixteen int8 scales, half d;
// x = d * scale * (q - 32)). Codes uniform in 0..63 (mean -0.5 after the offset); each sub-block
// of 16 takes a scale of magnitude 32 + r (r uniform in 0..31) and a random sign, so the half-step
// bias of the codes cancels over the tensor.
constexpr int kQ6kWords = 26;  // 24 words of codes, two of scales
void draw_q6_k(std::uint64_t stream, std::uint64_t first_block, std::size_t blocks, float stddev, std::uint8_t* out) {
    // E[(q - 32)^2] = (64^2 - 1) / 12 + 0.25; E[scale^2] = 47.5^2 + (32^2 - 1) / 12.
    const double code_sq = 4095.0 / 12.0 + 0.25, scale_sq = 47.5 * 47.5 + 1023.0 / 12.0;
    const float target_d = static_cast<float>(stddev / std::sqrt(code_sq * scale_sq));
    for (std::size_t b = 0; b < blocks; ++b, out += 210) {
        const std::uint64_t counter = stream + (first_block + b) * kQ6kWords;
        fill_words(counter, out, 192);
        for (int s = 0; s < 16; ++s) {
            const std::uint64_t word = mix64(counter + 24 + static_cast<std::uint64_t>(s / 8));
            const unsigned bits = static_cast<unsigned>(word >> (8 * (s % 8))) & 63u;  // 5 bits magnitude, 1 sign
            const int magnitude = 32 + static_cast<int>(bits & 31u);
            out[192 + s] = static_cast<std::uint8_t>(static_cast<std::int8_t>((bits & 32u) != 0 ? -magnitude : magnitude));
        }
        store_half(out + 208, target_d);
    }
}

}  // namespace

bool can_draw_blocks(GgmlType type) { return type == GgmlType::q4_k || type == GgmlType::q6_k; }

void draw_blocks(GgmlType type, std::uint64_t stream, std::uint64_t first_block, std::size_t blocks, float stddev,
                 std::uint8_t* out) {
    switch (type) {
        case GgmlType::q4_k: return draw_q4_k(stream, first_block, blocks, stddev, out);
        case GgmlType::q6_k: return draw_q6_k(stream, first_block, blocks, stddev, out);
        default: throw std::invalid_argument("draw_blocks: no drawn blocks for " + kvfuse::model::type_name(static_cast<std::uint32_t>(type)));
    }
}

}  // namespace kvfuse::cli
