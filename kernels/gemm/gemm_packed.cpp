#include "kernels/gemm/gemm_packed.h"

#include <cstring>

#include "kernels/common/bf16.h"

namespace kvfuse::detail {

namespace {

float source_at(kvfuse_dtype dtype, const void* weights, std::size_t index) {
    if (dtype == KVFUSE_DTYPE_F32) return static_cast<const float*>(weights)[index];
    return bf16_bits_to_f32(static_cast<const std::uint16_t*>(weights)[index]);
}

std::uint16_t source_bf16_at(kvfuse_dtype dtype, const void* weights, std::size_t index) {
    if (dtype == KVFUSE_DTYPE_BF16) return static_cast<const std::uint16_t*>(weights)[index];
    return f32_to_bf16_bits(static_cast<const float*>(weights)[index]);
}

}  // namespace

PackedWeightsData pack_weights(kvfuse_dtype src_dtype, const void* weights, std::size_t out, std::size_t in,
                               std::size_t row_stride, kvfuse_dtype packed_dtype) {
    PackedWeightsData w;
    w.out = out;
    w.in = in;
    w.dtype = packed_dtype;
    w.panels = (out + kGemmPanel - 1) / kGemmPanel;
    const std::size_t bytes = w.panels * w.panel_elements() * 4;  // a float or a uint32 pair
    w.data.reset(::operator new(bytes, std::align_val_t{64}));
    const auto panels = static_cast<std::ptrdiff_t>(w.panels);
    // Model load packs hundreds of MiB: spread the panels over the threads.
#pragma omp parallel for schedule(static) if (out * in >= (std::size_t{1} << 20))
    for (std::ptrdiff_t p = 0; p < panels; ++p) {
        const std::size_t first = static_cast<std::size_t>(p) * kGemmPanel;
        if (packed_dtype == KVFUSE_DTYPE_F32) {
            float* dst = static_cast<float*>(w.data.get()) + static_cast<std::size_t>(p) * w.panel_elements();
            for (std::size_t k = 0; k < in; ++k)
                for (std::size_t j = 0; j < kGemmPanel; ++j)
                    dst[k * kGemmPanel + j] =
                        first + j < out ? source_at(src_dtype, weights, (first + j) * row_stride + k) : 0.0f;
        } else {
            std::uint32_t* dst =
                static_cast<std::uint32_t*>(w.data.get()) + static_cast<std::size_t>(p) * w.panel_elements();
            for (std::size_t kp = 0; kp < (in + 1) / 2; ++kp)
                for (std::size_t j = 0; j < kGemmPanel; ++j) {
                    std::uint32_t pair = 0;
                    if (first + j < out) {
                        const std::size_t row = (first + j) * row_stride;
                        pair = source_bf16_at(src_dtype, weights, row + 2 * kp);
                        if (2 * kp + 1 < in)
                            pair |= static_cast<std::uint32_t>(source_bf16_at(src_dtype, weights, row + 2 * kp + 1)) << 16;
                    }
                    dst[kp * kGemmPanel + j] = pair;
                }
        }
    }
    return w;
}

void unpack_weight_row(const PackedWeightsData& w, std::size_t j, float* row) {
    const std::size_t p = j / kGemmPanel, col = j % kGemmPanel;
    if (w.dtype == KVFUSE_DTYPE_F32) {
        const float* panel = w.f32_panel(p);
        for (std::size_t k = 0; k < w.in; ++k) row[k] = panel[k * kGemmPanel + col];
    } else {
        const std::uint32_t* panel = w.bf16_panel(p);
        for (std::size_t k = 0; k < w.in; ++k) {
            const std::uint32_t pair = panel[(k / 2) * kGemmPanel + col];
            row[k] = bf16_bits_to_f32(static_cast<std::uint16_t>(k % 2 == 0 ? pair & 0xffffu : pair >> 16));
        }
    }
}

}  // namespace kvfuse::detail
