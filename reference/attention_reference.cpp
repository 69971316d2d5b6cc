#include "reference/attention_reference.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "reference/f16_reference.h"

namespace kvfuse::reference {

namespace {

double element(const kvfuse_attention_args& a, const void* base, std::size_t token, std::size_t head, std::size_t d) {
    const std::size_t at = token * a.kv_token_stride + head * a.head_dim + d;
    return element_as_f32(a.kv_dtype, base, at);
}

}  // namespace

// GCC 12 for AArch64 stops with an internal compiler error (vect_transform_reduction,
// tree-vect-loop.cc:7457) when it auto-vectorizes a reduction of this function: loop
// vectorization is switched off for it there (GCC 12 on AArch64 only; nothing else changes).
#if defined(__aarch64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#define KVFUSE_GCC12_AARCH64_NO_LOOP_VECTORIZE __attribute__((optimize("no-tree-loop-vectorize")))
#else
#define KVFUSE_GCC12_AARCH64_NO_LOOP_VECTORIZE
#endif

KVFUSE_GCC12_AARCH64_NO_LOOP_VECTORIZE void sparse_attention(const kvfuse_attention_args& a) {
    const std::size_t group = a.query_heads / a.kv_heads;
    std::vector<double> score, acc(a.head_dim);
    for (std::size_t r = 0; r < a.rows; ++r) {
        const std::size_t visible = static_cast<std::size_t>(a.positions[r]) + 1;
        score.assign(visible, 0.0);
        for (std::size_t h = 0; h < a.query_heads; ++h) {
            const float* q = a.queries + r * a.query_row_stride + h * a.head_dim;
            const std::size_t kv = h / group;
            double max = -INFINITY;
            for (std::size_t j = 0; j < visible; ++j) {
                double dot = 0.0;
                for (std::size_t d = 0; d < a.head_dim; ++d) dot += q[d] * element(a, a.keys, j, kv, d);
                score[j] = dot * a.scale;
                max = std::fmax(max, score[j]);
            }
            double sum = 0.0;
            for (std::size_t j = 0; j < visible; ++j) sum += score[j] = std::exp(score[j] - max);
            acc.assign(a.head_dim, 0.0);
            for (std::size_t j = 0; j < visible; ++j)
                for (std::size_t d = 0; d < a.head_dim; ++d) acc[d] += score[j] * element(a, a.values, j, kv, d);
            float* out = a.out + r * a.out_row_stride + h * a.head_dim;
            for (std::size_t d = 0; d < a.head_dim; ++d) out[d] = static_cast<float>(acc[d] / sum);
        }
    }
}

}  // namespace kvfuse::reference
