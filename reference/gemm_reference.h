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

}  // namespace kvfuse::reference
