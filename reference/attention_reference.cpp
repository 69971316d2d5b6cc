#include "reference/attention_reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "reference/f16_reference.h"

namespace kvfuse::reference {

namespace {

std::size_t or_default(std::size_t stride, std::size_t fallback) { return stride != 0 ? stride : fallback; }

// Element offset of key / value `token` (counted from its sequence's start) of sequence `seq`, kv head `head`.
std::size_t kv_offset(const kvfuse_attention_args& a, std::size_t seq, std::size_t token, std::size_t head) {
    const std::size_t at_head = head * or_default(a.kv_head_stride, a.head_dim);
    if (a.kv_block_table == nullptr) {
        const std::size_t first = a.sequences > 0 ? static_cast<std::size_t>(a.cu_kv_tokens[seq]) : 0;
        return (first + token) * a.kv_token_stride + at_head;
    }
    const std::int32_t* table = a.kv_block_table + seq * a.kv_block_table_stride;
    const std::size_t block = static_cast<std::size_t>(table[token / a.kv_block_size]);
    return block * or_default(a.kv_block_stride, a.kv_block_size * a.kv_token_stride) +
           token % a.kv_block_size * a.kv_token_stride + at_head;
}

double element(const kvfuse_attention_args& a, const void* base, std::size_t at) {
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
    const std::size_t q_head = or_default(a.query_head_stride, a.head_dim);
    const std::size_t out_head = or_default(a.out_head_stride, a.head_dim);
    const std::size_t lse_row = or_default(a.lse_row_stride, a.query_heads);
    std::vector<double> score, acc(a.head_dim);
    for (std::size_t seq = 0; seq < std::max<std::size_t>(a.sequences, 1); ++seq) {
        const std::size_t first_row = a.sequences > 0 ? static_cast<std::size_t>(a.cu_rows[seq]) : 0;
        const std::size_t end_row = a.sequences > 0 ? static_cast<std::size_t>(a.cu_rows[seq + 1]) : a.rows;
        for (std::size_t r = first_row; r < end_row; ++r) {
            const std::size_t visible = static_cast<std::size_t>(a.positions[r]) + 1;
            score.assign(visible, 0.0);
            for (std::size_t h = 0; h < a.query_heads; ++h) {
                const float* q = a.queries + r * a.query_row_stride + h * q_head;
                const std::size_t kv = h / group;
                double max = -INFINITY;
                for (std::size_t j = 0; j < visible; ++j) {
                    const std::size_t at = kv_offset(a, seq, j, kv);
                    double dot = 0.0;
                    for (std::size_t d = 0; d < a.head_dim; ++d) dot += q[d] * element(a, a.keys, at + d);
                    score[j] = dot * a.scale;
                    max = std::fmax(max, score[j]);
                }
                double sum = 0.0;
                for (std::size_t j = 0; j < visible; ++j) sum += score[j] = std::exp(score[j] - max);
                acc.assign(a.head_dim, 0.0);
                for (std::size_t j = 0; j < visible; ++j) {
                    const std::size_t at = kv_offset(a, seq, j, kv);
                    for (std::size_t d = 0; d < a.head_dim; ++d) acc[d] += score[j] * element(a, a.values, at + d);
                }
                float* out = a.out + r * a.out_row_stride + h * out_head;
                for (std::size_t d = 0; d < a.head_dim; ++d) out[d] = static_cast<float>(acc[d] / sum);
                if (a.lse != nullptr) a.lse[r * lse_row + h] = static_cast<float>(max + std::log(sum));
            }
        }
    }
}

}  // namespace kvfuse::reference
