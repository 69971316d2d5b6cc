#include "reference/gemm_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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

float quantize_activation_block(const float* x, std::int8_t* q) {
    float amax = 0.0f;
    bool finite = true;
    for (int k = 0; k < 32; ++k) {
        finite = finite && std::isfinite(x[k]);
        amax = std::max(amax, std::fabs(x[k]));
    }
    if (!finite) {
        for (int k = 0; k < 32; ++k) q[k] = 0;
        return std::numeric_limits<float>::quiet_NaN();
    }
    const float d = amax / 127.0f;
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    for (int k = 0; k < 32; ++k)
        q[k] = static_cast<std::int8_t>(std::max(-127.0f, std::min(127.0f, std::nearbyint(x[k] * inverse))));
    return d;
}

void gemm_quantized(const float* a, std::size_t n, std::size_t lda, const std::uint8_t* codes, std::size_t ldcodes,
                    const float* scales, const float* offsets, std::size_t ldblocks, std::size_t out, std::size_t in,
                    float beta, float* c, std::size_t ldc) {
    const std::size_t blocks = in / 32;
    std::vector<double> activations(in);
    std::vector<std::int8_t> q(32);
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t b = 0; b < blocks; ++b) {
            const float d = quantize_activation_block(a + i * lda + 32 * b, q.data());
            for (std::size_t k = 0; k < 32; ++k) activations[32 * b + k] = static_cast<double>(d) * q[k];
        }
        for (std::size_t j = 0; j < out; ++j) {
            double sum = 0.0;
            for (std::size_t k = 0; k < in; ++k) {
                const double w = static_cast<double>(scales[j * ldblocks + k / 32]) * codes[j * ldcodes + k] -
                                 static_cast<double>(offsets[j * ldblocks + k / 32]);
                sum += w * activations[k];
            }
            float& result = c[i * ldc + j];
            result = beta == 0.0f ? static_cast<float>(sum)
                                  : static_cast<float>(static_cast<double>(beta) * static_cast<double>(result) + sum);
        }
    }
}

void gemm_q6_super256(const float* a, std::size_t n, std::size_t lda, const std::uint8_t* codes, std::size_t ldcodes,
                      const std::int8_t* sub_scales, std::size_t ldsub, const float* super_scales, std::size_t ldsuper,
                      std::size_t out, std::size_t in, float beta, float* c, std::size_t ldc) {
    std::vector<double> activations(in);
    std::vector<std::int8_t> q(32);
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t b = 0; b < in / 32; ++b) {
            const float d = quantize_activation_block(a + i * lda + 32 * b, q.data());
            for (std::size_t k = 0; k < 32; ++k) activations[32 * b + k] = static_cast<double>(d) * q[k];
        }
        for (std::size_t j = 0; j < out; ++j) {
            double sum = 0.0;
            for (std::size_t k = 0; k < in; ++k) {
                const double w = static_cast<double>(super_scales[j * ldsuper + k / 256]) * sub_scales[j * ldsub + k / 16] *
                                 (static_cast<int>(codes[j * ldcodes + k]) - 32);
                sum += w * activations[k];
            }
            float& result = c[i * ldc + j];
            result = beta == 0.0f ? static_cast<float>(sum)
                                  : static_cast<float>(static_cast<double>(beta) * static_cast<double>(result) + sum);
        }
    }
}

}  // namespace kvfuse::reference
