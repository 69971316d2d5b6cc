#include "reference/score_reference.h"

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/common/relevance_segments.h"
#include "reference/f16_reference.h"

namespace kvfuse::reference {

namespace {
// x / scale as the quantizers compute it: x times the reciprocal of scale rounded to f32 once
// (llama.cpp's quantizers do the same), or a true division when that reciprocal would not be a
// normal f32 (scale 0, subnormal, above 2^126, infinite or NaN).
struct Divider {
    float scale, recip;
    bool by_reciprocal;
    explicit Divider(float s)
        : scale(s), recip(1.0f / s), by_reciprocal(s >= std::numeric_limits<float>::min() && s <= 0x1p126f) {}
    float operator()(float x) const { return by_reciprocal ? x * recip : x / scale; }
};
}  // namespace

float quantize_i8(const float* x, std::size_t n, std::int8_t* out) {
    float max_abs = 0.0f;
    for (std::size_t i = 0; i < n; ++i) max_abs = std::fmax(max_abs, std::fabs(x[i]));
    const float scale = max_abs / 127.0f;
    const Divider divide(scale);
    for (std::size_t i = 0; i < n; ++i)
        out[i] = scale > 0.0f ? static_cast<std::int8_t>(std::lrint(std::fmax(-127.0f, std::fmin(127.0f, divide(x[i]))))) : 0;
    return scale;
}

float quantize_i4(const float* x, std::size_t n, std::uint8_t* out) {
    float max_abs = 0.0f;
    for (std::size_t i = 0; i < n; ++i) max_abs = std::fmax(max_abs, std::fabs(x[i]));
    const float scale = max_abs / 7.0f;
    const Divider divide(scale);
    for (std::size_t i = 0; i < (n + 1) / 2; ++i) out[i] = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const long q = scale > 0.0f ? std::lrint(std::fmax(-7.0f, std::fmin(7.0f, divide(x[i])))) : 0;
        out[i / 2] = static_cast<std::uint8_t>(out[i / 2] | ((static_cast<unsigned>(q) & 15u) << (4 * (i % 2))));
    }
    return scale;
}

void quantize_keys(kvfuse_dtype dtype, const void* keys, std::size_t tokens, std::size_t heads, std::size_t head_dim,
                   std::size_t token_stride, int bits, void* out, float* scales, float* means) {
    quantize_keys(dtype, keys, tokens, heads, head_dim, kvfuse::detail::KeyLayout::packed(token_stride, head_dim), bits,
                  out, scales, means);
}

void quantize_keys(kvfuse_dtype dtype, const void* keys, std::size_t tokens, std::size_t heads, std::size_t head_dim,
                   const kvfuse::detail::KeyLayout& layout, int bits, void* out, float* scales, float* means) {
    const std::size_t row = heads * head_dim, packed = (head_dim + 1) / 2;
    // Element e of the row of token t: dim e % head_dim of head e / head_dim.
    auto key = [&](std::size_t t, std::size_t e) {
        return element_as_f32(dtype, keys, layout.at(t, e / head_dim) + e % head_dim);
    };
    // The mean of each column: its f32 sum in token order over the f32 token count; a column
    // whose f32 sum is not finite (non-finite keys, or finite ones whose sum overflows f32) is
    // summed again in double and rounded to f32 once, so only non-finite keys give a
    // non-finite mean.
    std::vector<float> sum(row, 0.0f);
    for (std::size_t t = 0; t < tokens; ++t)
        for (std::size_t e = 0; e < row; ++e) sum[e] += key(t, e);
    for (std::size_t e = 0; e < row; ++e) {
        if (std::isfinite(sum[e])) {
            means[e] = sum[e] / static_cast<float>(tokens);
            continue;
        }
        double wide = 0.0;
        for (std::size_t t = 0; t < tokens; ++t) wide += key(t, e);
        means[e] = static_cast<float>(wide / static_cast<double>(tokens));
    }
    std::vector<float> centred(head_dim);
    for (std::size_t t = 0; t < tokens; ++t)
        for (std::size_t h = 0; h < heads; ++h) {
            for (std::size_t d = 0; d < head_dim; ++d) centred[d] = key(t, h * head_dim + d) - means[h * head_dim + d];
            const std::size_t at = t * heads + h;
            scales[at] = bits == 8 ? quantize_i8(centred.data(), head_dim, static_cast<std::int8_t*>(out) + at * head_dim)
                                   : quantize_i4(centred.data(), head_dim, static_cast<std::uint8_t*>(out) + at * packed);
        }
}

void quantize_rows_i8(kvfuse_dtype dtype, const void* x, std::size_t rows, std::size_t heads, std::size_t head_dim,
                      std::size_t row_stride, std::int8_t* out, float* scales) {
    std::vector<float> head(head_dim);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t h = 0; h < heads; ++h) {
            for (std::size_t d = 0; d < head_dim; ++d) head[d] = element_as_f32(dtype, x, r * row_stride + h * head_dim + d);
            scales[r * heads + h] = quantize_i8(head.data(), head_dim, out + (r * heads + h) * head_dim);
        }
}

std::int32_t unpack_i4(const std::uint8_t* packed, std::size_t i) {
    const std::int32_t v = (packed[i / 2] >> (4 * (i % 2))) & 15;
    return v >= 8 ? v - 16 : v;
}

void a3_relevance(const kvfuse_relevance_args& a) {
    const std::size_t M = a.question_rows, C = a.candidates, docs = C - M, H = a.query_heads, D = a.head_dim;
    const std::size_t group = H / a.kv_heads;
    const kvfuse::detail::RelevanceSegments segments(a);
    const bool int4 = segments.list[0].keys_i4 != nullptr, int8 = segments.list[0].keys_i8 != nullptr || int4;
    const double inv = 1.0 / std::sqrt(static_cast<double>(H * D));
    std::vector<double> sums(docs, 0.0), logits(C);
    for (std::size_t m = 0; m < M; ++m) {
        const std::size_t visible = docs + m + 1;
        double max = -INFINITY;
        for (std::size_t j = 0; j < visible; ++j) {
            const std::size_t si = segments.of(j), at = j - segments.starts[si];
            const kvfuse_relevance_segment& g = segments.list[si];
            double logit = g.bias != nullptr ? g.bias[m] : 0.0;
            for (std::size_t h = 0; h < H; ++h) {
                const std::size_t kv = h / group;
                double dot = 0.0;
                const std::size_t key = kvfuse::detail::relevance_key_at(g, at, kv);  // the key's (token, head) in its layout
                if (int8) {
                    long long exact = 0;
                    for (std::size_t d = 0; d < D; ++d)
                        exact += static_cast<long long>(g.queries_i8[(m * H + h) * D + d]) *
                                 (int4 ? unpack_i4(g.keys_i4 + key, d) : g.keys_i8[key + d]);
                    dot = static_cast<double>(exact) * g.query_scales[m * H + h] * g.key_scales[at * a.kv_heads + kv];
                } else {  // f32 / bf16 / f16 keys
                    for (std::size_t d = 0; d < D; ++d)
                        dot += static_cast<double>(g.queries_f32[(m * H + h) * D + d]) *
                               element_as_f32(g.keys_dtype, g.typed_keys, key + d);
                }
                logit += dot;
            }
            logits[j] = logit * inv;
            max = std::fmax(max, logits[j]);
        }
        double total = 0.0;
        for (std::size_t j = 0; j < visible; ++j) total += logits[j] = std::exp(logits[j] - max);
        for (std::size_t j = 0; j < docs; ++j) sums[j] += logits[j] / total;
    }
    for (std::size_t j = 0; j < docs; ++j) {
        if (!a.smoothing) {
            a.out[j] = static_cast<float>(sums[j]);
            continue;
        }
        double acc = 0.0;
        for (std::ptrdiff_t o = -2; o <= 2; ++o) {
            const std::ptrdiff_t at = static_cast<std::ptrdiff_t>(j) + o;
            if (at >= 0 && at < static_cast<std::ptrdiff_t>(docs)) acc += sums[static_cast<std::size_t>(at)];
        }
        a.out[j] = static_cast<float>(acc / 5.0);
    }
}

}  // namespace kvfuse::reference
