#include "reference/rope_reference.h"

#include <cmath>
#include <numbers>
#include <vector>

#include "reference/f16_reference.h"

namespace kvfuse::reference {

namespace {

int rotary_dims_of(const kvfuse_rope_config& c) { return c.rotary_dims == 0 ? c.head_dim : c.rotary_dims; }

// The frequency of pair i with the scaling applied (Llama 3.1's formulas), before any factor.
double scaled_frequency(const kvfuse_rope_config& c, int pair) {
    const double freq = 1.0 / std::pow(c.base, 2.0 * pair / rotary_dims_of(c));
    if (c.scaling == KVFUSE_ROPE_SCALING_LINEAR) return freq / c.scaling_factor;
    if (c.scaling != KVFUSE_ROPE_SCALING_LLAMA3) return freq;
    const double wavelength = 2.0 * std::numbers::pi / freq;
    if (wavelength < c.llama3_original_context / c.llama3_high_freq_factor) return freq;
    if (wavelength > c.llama3_original_context / c.llama3_low_freq_factor) return freq / c.scaling_factor;
    const double smooth = (c.llama3_original_context / wavelength - c.llama3_low_freq_factor) /
                          (c.llama3_high_freq_factor - c.llama3_low_freq_factor);
    return (1.0 - smooth) * freq / c.scaling_factor + smooth * freq;
}

// Index of the second element of pair i within a head.
std::size_t partner(const kvfuse_rope_config& c, int pair) {
    return c.pairing == KVFUSE_ROPE_NEOX ? static_cast<std::size_t>(pair + rotary_dims_of(c) / 2)
                                         : static_cast<std::size_t>(2 * pair + 1);
}
std::size_t first(const kvfuse_rope_config& c, int pair) {
    return c.pairing == KVFUSE_ROPE_NEOX ? static_cast<std::size_t>(pair) : static_cast<std::size_t>(2 * pair);
}

void rotate_head(const kvfuse_rope_config& c, const double* in, double* out, std::int64_t delta) {
    for (int d = 0; d < c.head_dim; ++d) out[d] = in[d];
    for (int i = 0; i < rotary_dims_of(c) / 2; ++i) {
        const double angle = static_cast<double>(delta) * rope_frequency(c, i);
        const double x1 = in[first(c, i)], x2 = in[partner(c, i)];
        out[first(c, i)] = x1 * std::cos(angle) - x2 * std::sin(angle);
        out[partner(c, i)] = x1 * std::sin(angle) + x2 * std::cos(angle);
    }
}

}  // namespace

double rope_frequency(const kvfuse_rope_config& c, int pair) {
    // Llama 3.1 GGUF files: theta_i = pos * base^(-2i/d) / rope_freqs[i], after any scaling.
    const double divisor = c.freq_factors != nullptr ? static_cast<double>(c.freq_factors[pair]) : 1.0;
    return scaled_frequency(c, pair) / divisor;
}


void rope_rotate(const kvfuse_rope_config& c, kvfuse_dtype dtype, kvfuse_dtype src_dtype, const void* src,
                 const kvfuse::detail::KeyLayout& src_layout,
                 void* dst, const kvfuse::detail::KeyLayout& dst_layout, std::size_t tokens, std::size_t heads,
                 const std::int64_t* deltas, std::int64_t delta) {
    const std::size_t head_dim = static_cast<std::size_t>(c.head_dim);
    std::vector<double> in(head_dim), out(head_dim);
    for (std::size_t t = 0; t < tokens; ++t) {
        for (std::size_t h = 0; h < heads; ++h) {
            const std::size_t offset_src = src_layout.at(t, h);
            const std::size_t offset_dst = dst_layout.at(t, h);
            for (std::size_t d = 0; d < head_dim; ++d) in[d] = element_as_f32(src_dtype, src, offset_src + d);
            rotate_head(c, in.data(), out.data(), deltas ? deltas[t] : delta);
            for (std::size_t d = 0; d < head_dim; ++d) store_from_f32(dtype, dst, offset_dst + d, static_cast<float>(out[d]));
        }
    }
}

void rope_rotate(const kvfuse_rope_config& c, kvfuse_dtype dtype, const void* src, std::size_t src_stride, void* dst,
                 std::size_t dst_stride, std::size_t tokens, std::size_t heads, const std::int64_t* deltas,
                 std::int64_t delta) {
    const std::size_t head_dim = static_cast<std::size_t>(c.head_dim);
    rope_rotate(c, dtype, dtype, src, kvfuse::detail::KeyLayout::packed(src_stride, head_dim), dst,
                kvfuse::detail::KeyLayout::packed(dst_stride, head_dim), tokens, heads, deltas, delta);
}

void rope_rotate_head_exact(const kvfuse_rope_config& c, const float* head, std::int64_t delta,
                            double* out) {
    std::vector<double> in(head, head + c.head_dim);
    rotate_head(c, in.data(), out, delta);
}

}  // namespace kvfuse::reference
