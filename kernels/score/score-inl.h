// A3 relevance written once on the xsimd architecture (compiled per ISA; no include guard).
// Each question row is one task: merged-head logits against every visible key, a vector
// softmax, and its contribution to the column sums. int8 dot products are exact integer loops
// that GCC vectorizes per ISA (sign-extend + multiply-add pairs on x86, widening
// multiply-accumulate on NEON); the f32 path uses FMAs.
#include <omp.h>

#include <cmath>
#include <vector>
#include <xsimd/xsimd.hpp>

#include "kernels/kernel_table.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
constexpr std::size_t kLanes = F32s::size;

inline std::int32_t dot_i8(const std::int8_t* a, const std::int8_t* b, std::size_t n) {
    std::int32_t acc = 0;
    for (std::size_t i = 0; i < n; ++i) acc += static_cast<std::int32_t>(a[i]) * static_cast<std::int32_t>(b[i]);
    return acc;
}

inline float dot_f32(const float* a, const float* b, std::size_t n) {
    F32s acc(0.0f);
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes) acc = xsimd::fma(F32s::load_unaligned(a + i), F32s::load_unaligned(b + i), acc);
    float sum = xsimd::hadd(acc);
    for (; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

void relevance(const kvfuse_relevance_args& a) {
    const std::size_t M = a.question_rows, C = a.candidates, docs = C - M, H = a.query_heads, D = a.head_dim;
    const std::size_t group = H / a.kv_heads, kv_row = a.kv_heads * D;
    const bool int8 = a.keys_i8 != nullptr;
    const float inv = 1.0f / std::sqrt(static_cast<float>(H * D));
    const std::size_t padded = (C + kLanes - 1) / kLanes * kLanes;
    std::vector<float> sums(docs, 0.0f);
    const bool parallel = static_cast<double>(M) * C * H * D > 1e6 && M > 1;
#pragma omp parallel if (parallel)
    {
        std::vector<float, xsimd::aligned_allocator<float, 64>> logits(padded);
        std::vector<float> local(docs, 0.0f);
#pragma omp for schedule(static)
        for (std::ptrdiff_t mi = 0; mi < static_cast<std::ptrdiff_t>(M); ++mi) {
            const std::size_t m = static_cast<std::size_t>(mi), visible = docs + m + 1;
            for (std::size_t j = 0; j < visible; ++j) {
                float logit = 0.0f;
                for (std::size_t h = 0; h < H; ++h) {
                    const std::size_t kv = h / group;
                    if (int8)
                        logit += static_cast<float>(dot_i8(a.queries_i8 + (m * H + h) * D, a.keys_i8 + j * kv_row + kv * D, D)) *
                                 a.query_scales[m * H + h] * a.key_scales[j * a.kv_heads + kv];
                    else
                        logit += dot_f32(a.queries_f32 + (m * H + h) * D, a.keys_f32 + j * kv_row + kv * D, D);
                }
                logits[j] = logit * inv;
            }
            for (std::size_t j = visible; j < padded; ++j) logits[j] = -INFINITY;
            F32s max_v(-INFINITY);
            for (std::size_t j = 0; j < padded; j += kLanes) max_v = xsimd::max(max_v, F32s::load_aligned(logits.data() + j));
            alignas(64) float lanes[kLanes];
            max_v.store_aligned(lanes);
            float max = lanes[0];
            for (std::size_t l = 1; l < kLanes; ++l) max = std::fmax(max, lanes[l]);
            F32s total_v(0.0f);
            const F32s shift(max);
            for (std::size_t j = 0; j < padded; j += kLanes) {
                const F32s e = xsimd::exp(F32s::load_aligned(logits.data() + j) - shift);
                e.store_aligned(logits.data() + j);
                total_v += e;
            }
            const float inverse = 1.0f / xsimd::hadd(total_v);
            for (std::size_t j = 0; j < docs; ++j) local[j] += logits[j] * inverse;
        }
#pragma omp critical
        for (std::size_t j = 0; j < docs; ++j) sums[j] += local[j];
    }
    for (std::size_t j = 0; j < docs; ++j) {
        if (!a.smoothing) {
            a.out[j] = sums[j];
            continue;
        }
        float acc = 0.0f;
        for (std::size_t k = (j >= 2 ? j - 2 : 0); k <= j + 2 && k < docs; ++k) acc += sums[k];
        a.out[j] = acc / 5.0f;
    }
}

}  // namespace

void register_score(detail::KernelTable& table) { table.relevance = &relevance; }

}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
