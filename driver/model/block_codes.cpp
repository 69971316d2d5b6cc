#include "model/block_codes.h"

#include "model/gguf_quants.h"

#include <cstring>
#include <stdexcept>

namespace kvfuse::model {

namespace {

float load_half(const std::uint8_t* p) {
    std::uint16_t h;
    std::memcpy(&h, p, 2);
    return half_to_float(h);
}

// Q4_0 / Q4_1 / Q5_0 / Q5_1: 16 bytes of nibbles, value j low, value j + 16 high; `high_bits`
// (Q5) the fifth bits, bit j of a little-endian u32 for value j.
void nibbles(const std::uint8_t* q, const std::uint8_t* high_bits, std::uint8_t* codes) {
    std::uint32_t qh = 0;
    if (high_bits != nullptr) std::memcpy(&qh, high_bits, 4);
    for (int j = 0; j < 16; ++j) {
        codes[j] = static_cast<std::uint8_t>((q[j] & 0xF) | (((qh >> j) & 1u) << 4));
        codes[j + 16] = static_cast<std::uint8_t>((q[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
    }
}

// Q4_K / Q5_K super-blocks of 256: sub-block 2c from the low nibbles of q[32c..], 2c + 1 from
// the high ones; Q5_K's fifth bits in qh[l], bit 2c / 2c + 1.
void k_quant(const std::uint8_t* block, const std::uint8_t* qh, const std::uint8_t* q, std::uint8_t* codes, float* scales,
             float* offsets) {
    const float d = load_half(block), dmin = load_half(block + 2);
    for (int c = 0; c < 4; ++c, q += 32)
        for (int half = 0; half < 2; ++half) {
            const int sub = 2 * c + half;
            int sc, mn;
            quants::unpack_scale_min_k4(sub, block + 4, sc, mn);
            scales[sub] = d * static_cast<float>(sc);
            offsets[sub] = dmin * static_cast<float>(mn);
            for (int l = 0; l < 32; ++l) {
                int u = half == 0 ? q[l] & 0xF : q[l] >> 4;
                if (qh != nullptr) u |= ((qh[l] >> sub) & 1) << 4;
                codes[32 * sub + l] = static_cast<std::uint8_t>(u);
            }
        }
}

}  // namespace

int block32_code_bits(GgmlType type) {
    switch (type) {
        case GgmlType::q4_0:
        case GgmlType::q4_1:
        case GgmlType::q4_k: return 4;
        case GgmlType::q8_0:
        case GgmlType::q5_0:
        case GgmlType::q5_1:
        case GgmlType::q5_k: return 8;
        default: return 0;
    }
}

void block32_codes(GgmlType type, const std::uint8_t* blocks, std::size_t elements, std::uint8_t* codes, float* scales,
                   float* offsets) {
    const TypeTraits& traits = type_traits(type);
    const std::size_t count = elements / traits.block_elements;
    for (std::size_t b = 0; b < count; ++b, blocks += traits.block_bytes) {
        const std::size_t first = b * traits.block_elements, sub = first / 32;
        std::uint8_t* u = codes + first;
        switch (type) {
            case GgmlType::q8_0: {
                const float d = load_half(blocks);
                for (int k = 0; k < 32; ++k) u[k] = static_cast<std::uint8_t>(static_cast<std::int8_t>(blocks[2 + k]) + 128);
                scales[sub] = d;
                offsets[sub] = 128.0f * d;
                break;
            }
            case GgmlType::q4_0:
                nibbles(blocks + 2, nullptr, u);
                scales[sub] = load_half(blocks);
                offsets[sub] = 8.0f * scales[sub];
                break;
            case GgmlType::q4_1:
                nibbles(blocks + 4, nullptr, u);
                scales[sub] = load_half(blocks);
                offsets[sub] = -load_half(blocks + 2);
                break;
            case GgmlType::q5_0:
                nibbles(blocks + 6, blocks + 2, u);
                scales[sub] = load_half(blocks);
                offsets[sub] = 16.0f * scales[sub];
                break;
            case GgmlType::q5_1:
                nibbles(blocks + 8, blocks + 4, u);
                scales[sub] = load_half(blocks);
                offsets[sub] = -load_half(blocks + 2);
                break;
            case GgmlType::q4_k: k_quant(blocks, nullptr, blocks + 16, u, scales + sub, offsets + sub); break;
            case GgmlType::q5_k: k_quant(blocks, blocks + 16, blocks + 48, u, scales + sub, offsets + sub); break;
            default: throw std::logic_error("block32_codes: type " + std::string(traits.name) + " has no block-32 form");
        }
    }
}

void q4_k_two_level_codes(const std::uint8_t* blocks, std::size_t elements, std::uint8_t* codes, std::uint8_t* sub_scales,
                          std::uint8_t* sub_offsets, float* super_scales, float* super_offsets) {
    const TypeTraits& traits = type_traits(GgmlType::q4_k);
    const std::size_t count = elements / traits.block_elements;
    for (std::size_t b = 0; b < count; ++b, blocks += traits.block_bytes) {
        super_scales[b] = load_half(blocks);
        super_offsets[b] = load_half(blocks + 2);
        const std::uint8_t* q = blocks + 16;
        for (int c = 0; c < 4; ++c, q += 32)
            for (int half = 0; half < 2; ++half) {
                const int sub = 2 * c + half;
                int sc, mn;
                quants::unpack_scale_min_k4(sub, blocks + 4, sc, mn);
                sub_scales[8 * b + static_cast<std::size_t>(sub)] = static_cast<std::uint8_t>(sc);
                sub_offsets[8 * b + static_cast<std::size_t>(sub)] = static_cast<std::uint8_t>(mn);
                std::uint8_t* u = codes + 256 * b + 32 * static_cast<std::size_t>(sub);
                for (int l = 0; l < 32; ++l) u[l] = static_cast<std::uint8_t>(half == 0 ? q[l] & 0xF : q[l] >> 4);
            }
    }
}

void q6_k_codes(const std::uint8_t* blocks, std::size_t elements, std::uint8_t* codes, std::int8_t* sub_scales,
                float* super_scales) {
    const TypeTraits& traits = type_traits(GgmlType::q6_k);
    const std::size_t count = elements / traits.block_elements;
    for (std::size_t b = 0; b < count; ++b, blocks += traits.block_bytes) {
        // 128 bytes of low nibbles, 64 of top-bit pairs, 16 int8 sub-scales, half d (gguf_quants.cpp):
        // in half n of 128 values, value 32 c + l has its low nibble in ql[64 n + l + 32 (c & 1)]
        // (the high one when c >= 2) and its top two bits in qh[32 n + l] at 2 c.
        super_scales[b] = load_half(blocks + 208);
        std::memcpy(sub_scales + 16 * b, blocks + 192, 16);
        std::uint8_t* u = codes + 256 * b;
        for (int n = 0; n < 2; ++n) {
            const std::uint8_t* ql = blocks + 64 * n;
            const std::uint8_t* qh = blocks + 128 + 32 * n;
            for (int c = 0; c < 4; ++c)
                for (int l = 0; l < 32; ++l) {
                    const int nibble = c < 2 ? ql[l + 32 * (c & 1)] & 0xF : ql[l + 32 * (c & 1)] >> 4;
                    u[128 * n + 32 * c + l] = static_cast<std::uint8_t>(nibble | ((qh[l] >> (2 * c)) & 3) << 4);
                }
        }
    }
}

}  // namespace kvfuse::model
