#include "reference/gemm_reference.h"

#include "kernels/common/bf16.h"

namespace kvfuse::reference {

namespace {

float weight_at(const float* w, std::size_t index) { return w[index]; }
float weight_at(const std::uint16_t* w, std::size_t index) { return detail::bf16_bits_to_f32(w[index]); }

template <class W>
void gemm_of(const float* a, std::size_t n, std::size_t lda, const W* w, std::size_t out, std::size_t in,
             std::size_t ldw, float beta, float* c, std::size_t ldc, bool round_a) {
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < out; ++j) {
            double sum = 0.0;
            for (std::size_t k = 0; k < in; ++k) {
                const float x = round_a ? detail::bf16_bits_to_f32(detail::f32_to_bf16_bits(a[i * lda + k])) : a[i * lda + k];
                sum += static_cast<double>(x) * static_cast<double>(weight_at(w, j * ldw + k));
            }
            float& result = c[i * ldc + j];
            result = beta == 0.0f ? static_cast<float>(sum)
                                  : static_cast<float>(static_cast<double>(beta) * static_cast<double>(result) + sum);
        }
}

}  // namespace

void gemm(const float* a, std::size_t n, std::size_t lda, const float* w, std::size_t out, std::size_t in,
          std::size_t ldw, float beta, float* c, std::size_t ldc) {
    gemm_of(a, n, lda, w, out, in, ldw, beta, c, ldc, false);
}

void gemm_bf16(const float* a, std::size_t n, std::size_t lda, const std::uint16_t* w, std::size_t out,
               std::size_t in, std::size_t ldw, float beta, float* c, std::size_t ldc) {
    gemm_of(a, n, lda, w, out, in, ldw, beta, c, ldc, true);
}

}  // namespace kvfuse::reference
