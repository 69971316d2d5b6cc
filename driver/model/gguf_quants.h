// Dequantizers and quantizers of ggml's block formats, one pair per type, plain scalar code.
// Reached through the type table (gguf_types.h); declared here for the table alone.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvfuse::model::quants {

#define KVFUSE_QUANT_PAIR(type)                                                       \
    void dequantize_##type(const std::uint8_t* blocks, float* out, std::size_t elements); \
    void quantize_##type(const float* in, std::uint8_t* blocks, std::size_t elements);

KVFUSE_QUANT_PAIR(q4_0)
KVFUSE_QUANT_PAIR(q4_1)
KVFUSE_QUANT_PAIR(q5_0)
KVFUSE_QUANT_PAIR(q5_1)
KVFUSE_QUANT_PAIR(q8_0)
KVFUSE_QUANT_PAIR(q2_k)
KVFUSE_QUANT_PAIR(q3_k)
KVFUSE_QUANT_PAIR(q4_k)
KVFUSE_QUANT_PAIR(q5_k)
KVFUSE_QUANT_PAIR(q6_k)
KVFUSE_QUANT_PAIR(iq4_nl)
KVFUSE_QUANT_PAIR(iq4_xs)

#undef KVFUSE_QUANT_PAIR

// The K formats' eight 6-bit (scale, min) pairs in 12 bytes `q`: pair j (0-7). Also read by
// model/block_codes.cpp, which repacks Q4_K / Q5_K for the quantized GEMM.
void unpack_scale_min_k4(int j, const std::uint8_t* q, int& scale, int& min);
// Packs eight (scale, min) pairs, each in [0, 63], into those 12 bytes (also used by
// make-model's drawn blocks, cli/random_blocks.cpp).
void pack_scale_min_k4(const int* scales, const int* mins, std::uint8_t* q);

}  // namespace kvfuse::model::quants
