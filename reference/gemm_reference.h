// Dense-layer product by the definition, summed in double: the ground truth of the GEMM tests
// and (through dispatch/scalar_kernels.cpp) the `scalar` ISA.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvfuse::reference {

// C[i][j] = beta * C[i][j] + sum_k A[i][k] W[j][k] for i < n, j < out; the sum in double,
// rounded to f32 once. beta = 0 does not read C. Row strides in elements.
void gemm(const float* a, std::size_t n, std::size_t lda, const float* w, std::size_t out, std::size_t in,
          std::size_t ldw, float beta, float* c, std::size_t ldc);

// The same with bf16 weights (raw bits); each A[i][k] is rounded to bf16 first, as kvfuse_gemm
// specifies for bf16 weights.
void gemm_bf16(const float* a, std::size_t n, std::size_t lda, const std::uint16_t* w, std::size_t out,
               std::size_t in, std::size_t ldw, float beta, float* c, std::size_t ldc);

// One block of 32 activations quantized as kvfuse_gemm does for block-quantized weights:
// d = max|x| / 127, q = round-to-nearest-even(x * (1 / d)) (d = 0: every q = 0); a NaN or an
// infinity in the block gives d = NaN and q = 0. Returns d.
float quantize_activation_block(const float* x, std::int8_t* q);

// C = beta C + A W^T with block-quantized W (W[j][k] = scales[j][k/32] codes[j][k] -
// offsets[j][k/32]) and each row of A quantized per block of 32 by quantize_activation_block:
// the product of the dequantized weights and dequantized activations, summed in double. in is a
// multiple of 32; codes row stride ldcodes bytes, scales/offsets row stride ldblocks floats.
void gemm_quantized(const float* a, std::size_t n, std::size_t lda, const std::uint8_t* codes, std::size_t ldcodes,
                    const float* scales, const float* offsets, std::size_t ldblocks, std::size_t out, std::size_t in,
                    float beta, float* c, std::size_t ldc);

// The same with Q6_K-form W (KVFUSE_DTYPE_Q6_SUPER256): W[j][k] = super_scales[j][k/256] *
// sub_scales[j][k/16] * (codes[j][k] - 32), codes below 64; row strides ldcodes bytes, ldsub
// sub-scales, ldsuper super-scales. in is a multiple of 32.
void gemm_q6_super256(const float* a, std::size_t n, std::size_t lda, const std::uint8_t* codes, std::size_t ldcodes,
                      const std::int8_t* sub_scales, std::size_t ldsub, const float* super_scales, std::size_t ldsuper,
                      std::size_t out, std::size_t in, float beta, float* c, std::size_t ldc);

}  // namespace kvfuse::reference
