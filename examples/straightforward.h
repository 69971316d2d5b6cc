// The example's own, straightforward versions of what it asks kvfuse to do, in double and
// written from the definitions (docs/ALGORITHMS.md), not from kvfuse's code: the checks compare
// kvfuse's results with these. Slow and obvious on purpose.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

// IEEE binary16 -> double, exactly (subnormals, infinities and NaN included).
inline double half_to_double(std::uint16_t h) {
    const int sign = (h >> 15) ? -1 : 1, exponent = (h >> 10) & 31, mantissa = h & 1023;
    if (exponent == 31) return mantissa != 0 ? NAN : sign * INFINITY;
    if (exponent == 0) return sign * std::ldexp(mantissa, -24);
    return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// NeoX RoPE (pairs (i, i + D/2)) of one head by `delta` positions, theta_i = base^(-2i/D).
inline void rotate_head(double* x, std::size_t head_dim, double base, double delta) {
    const std::size_t half = head_dim / 2;
    for (std::size_t i = 0; i < half; ++i) {
        const double angle = delta * std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
        const double a = x[i], b = x[i + half];
        x[i] = a * std::cos(angle) - b * std::sin(angle);
        x[i + half] = a * std::sin(angle) + b * std::cos(angle);
    }
}

// Causal softmax attention of one query head over keys 0..position of one KV head; `key(j)` and
// `value(j)` give token j's head as doubles.
template <class KeyAt, class ValueAt>
void attend_head(const float* query, std::size_t head_dim, std::size_t position, double scale, KeyAt key,
                 ValueAt value, double* out) {
    std::vector<double> logits(position + 1);
    double most = -INFINITY;
    for (std::size_t j = 0; j <= position; ++j) {
        const double* k = key(j);
        double dot = 0.0;
        for (std::size_t d = 0; d < head_dim; ++d) dot += static_cast<double>(query[d]) * k[d];
        logits[j] = dot * scale;
        most = std::max(most, logits[j]);
    }
    double total = 0.0;
    for (double& l : logits) total += (l = std::exp(l - most));
    std::fill(out, out + head_dim, 0.0);
    for (std::size_t j = 0; j <= position; ++j) {
        const double* v = value(j);
        for (std::size_t d = 0; d < head_dim; ++d) out[d] += logits[j] / total * v[d];
    }
}

// A3 relevance of the documents (ALGORITHMS.md): keys[j] for j in [0, documents + M) are the
// candidates' fused keys (kv_heads x head_dim each), queries the M question rows (query_heads x
// head_dim each). Heads merged into one logit per (m, j) over sqrt(H * D), question row m sees
// candidates j <= documents + m, softmax per row, column sums over the rows, optional width-5
// moving average (zero padded, divided by 5).
inline std::vector<double> a3_relevance(const std::vector<std::vector<double>>& keys,
                                        const std::vector<std::vector<double>>& queries, std::size_t documents,
                                        std::size_t query_heads, std::size_t kv_heads, std::size_t head_dim,
                                        bool smoothing) {
    const std::size_t group = query_heads / kv_heads, rows = queries.size();
    const double scale = 1.0 / std::sqrt(static_cast<double>(query_heads * head_dim));
    std::vector<double> sums(documents, 0.0);
    for (std::size_t m = 0; m < rows; ++m) {
        const std::size_t seen = documents + m + 1;
        std::vector<double> logits(seen);
        double most = -INFINITY;
        for (std::size_t j = 0; j < seen; ++j) {
            double dot = 0.0;
            for (std::size_t h = 0; h < query_heads; ++h)
                for (std::size_t d = 0; d < head_dim; ++d)
                    dot += queries[m][h * head_dim + d] * keys[j][(h / group) * head_dim + d];
            logits[j] = dot * scale;
            most = std::max(most, logits[j]);
        }
        double total = 0.0;
        for (double& l : logits) total += (l = std::exp(l - most));
        for (std::size_t j = 0; j < documents; ++j) sums[j] += logits[j] / total;
    }
    if (!smoothing) return sums;
    std::vector<double> smooth(documents, 0.0);
    for (std::size_t j = 0; j < documents; ++j)
        for (std::size_t o = j >= 2 ? j - 2 : 0; o <= j + 2 && o < documents; ++o) smooth[j] += sums[o] / 5.0;
    return smooth;
}
