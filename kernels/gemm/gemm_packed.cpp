#include "kernels/gemm/gemm_packed.h"


#include <algorithm>
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
#if defined(KVFUSE_HAVE_OPENMP)
#pragma omp parallel for schedule(static) if (out * in >= (std::size_t{1} << 20))
#endif
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

namespace {

// Block b's codes of the panel's columns first .. first + kGemmPanel - 1; columns past q.out
// (the last panel's padding) get zero codes.
void gather_block_codes(const kvfuse_quantized_weights& q, std::size_t first, std::size_t b,
                        std::uint8_t (&codes)[kGemmPanel][kQuantBlock]) {
    for (std::size_t j = 0; j < kGemmPanel; ++j) {
        const bool real = first + j < q.out;
        for (std::size_t k = 0; k < kQuantBlock; ++k)
            codes[j][k] = real ? q.codes[(first + j) * q.codes_stride + b * kQuantBlock + k] : 0;
    }
}

// Q6_K's form (gemm_packed.h): per panel and super-block the header of super-scales, per block
// and pair of groups three 64-byte rows of codes (the fourth vector's code spread over their top
// bits), then the signed sub-scales as 16 words.
void pack_q6(const kvfuse_quantized_weights& q, PackedWeightsData& w) {
    const std::size_t blocks = w.blocks(), code_bytes = w.code_bytes();
    const auto panels = static_cast<std::ptrdiff_t>(w.panels);
#if defined(KVFUSE_HAVE_OPENMP)
#pragma omp parallel for schedule(static) if (q.out * q.in >= (std::size_t{1} << 20))
#endif
    for (std::ptrdiff_t p = 0; p < panels; ++p) {
        const std::size_t first = static_cast<std::size_t>(p) * kGemmPanel;
        auto* base = static_cast<std::uint8_t*>(w.data.get()) + static_cast<std::size_t>(p) * w.panel_bytes();
        for (std::size_t b = 0; b < blocks; ++b) {
            std::uint8_t* record = base + w.record_offset(b);
            std::uint8_t codes[kGemmPanel][kQuantBlock];  // padding columns: zero codes and scales
            gather_block_codes(q, first, b, codes);
            for (std::size_t pair = 0; pair < kQuantBlock / 8; ++pair)
                for (std::size_t t = 0; t < 4; ++t)
                    for (std::size_t j = 0; j < kGemmPanel / 2; ++j) {
                        const std::size_t even = 8 * pair + t, odd = even + 4;
                        const unsigned last = codes[j + 16][odd];  // spread over the top bits of the other three
                        const unsigned three[3] = {codes[j][even], codes[j][odd], codes[j + 16][even]};
                        for (std::size_t r = 0; r < 3; ++r)
                            record[pair * 192 + r * 64 + 4 * j + t] = static_cast<std::uint8_t>(three[r] | ((last >> (2 * r)) & 3u) << 6);
                    }
            for (std::size_t j = 0; j < kGemmPanel; ++j)
                for (std::size_t half = 0; half < 2; ++half) {
                    const bool real = first + j < q.out;
                    const std::int8_t sub = real ? q.signed_sub_scales[(first + j) * q.signed_sub_stride + 2 * b + half] : 0;
                    record[code_bytes + 4 * (j % 16) + 2 * (j / 16) + half] = static_cast<std::uint8_t>(sub);
                }
            if (b % kSuperBlocks == 0) {
                float header[kGemmPanel];
                for (std::size_t j = 0; j < kGemmPanel; ++j)
                    header[j] = first + j < q.out ? q.super_scales[(first + j) * q.super_stride + b / kSuperBlocks] : 0.0f;
                std::memcpy(base + b / kSuperBlocks * w.super_span(), header, sizeof header);
            }
        }
    }
}

}  // namespace

PackedWeightsData pack_quantized_weights(const kvfuse_quantized_weights& q) {
    PackedWeightsData w;
    w.out = q.out;
    w.in = q.in;
    const bool two_level = q.sub_scales != nullptr;
    w.dtype = q.code_bits == 6 ? KVFUSE_DTYPE_Q6_SUPER256
              : two_level      ? KVFUSE_DTYPE_Q4_SUPER256
              : q.code_bits == 8 ? KVFUSE_DTYPE_Q8_BLOCK32
                                 : KVFUSE_DTYPE_Q4_BLOCK32;
    w.panels = (q.out + kGemmPanel - 1) / kGemmPanel;
    w.data.reset(::operator new(w.panels * w.panel_bytes(), std::align_val_t{64}));
    if (q.code_bits == 6) {
        pack_q6(q, w);
        return w;
    }
    const std::size_t blocks = w.blocks(), code_bytes = w.code_bytes();
    const auto panels = static_cast<std::ptrdiff_t>(w.panels);
    const bool eight = q.code_bits == 8;
#if defined(KVFUSE_HAVE_OPENMP)
#pragma omp parallel for schedule(static) if (q.out * q.in >= (std::size_t{1} << 20))
#endif
    for (std::ptrdiff_t p = 0; p < panels; ++p) {
        const std::size_t first = static_cast<std::size_t>(p) * kGemmPanel;
        auto* base = static_cast<std::uint8_t*>(w.data.get()) + static_cast<std::size_t>(p) * w.panel_bytes();
        for (std::size_t b = 0; b < blocks; ++b) {
            std::uint8_t* record = base + w.record_offset(b);
            std::uint8_t codes[kGemmPanel][kQuantBlock];  // padding columns: zero codes, scale, offset
            gather_block_codes(q, first, b, codes);
            for (std::size_t g = 0; g < kQuantBlock / 4; ++g)
                for (std::size_t t = 0; t < 4; ++t) {
                    if (eight) {
                        for (std::size_t j = 0; j < kGemmPanel; ++j) record[g * 128 + 4 * j + t] = codes[j][4 * g + t];
                    } else {
                        for (std::size_t j = 0; j < kGemmPanel / 2; ++j)
                            record[g * 64 + 4 * j + t] =
                                static_cast<std::uint8_t>(codes[j][4 * g + t] | (codes[j + 16][4 * g + t] << 4));
                    }
                }
            if (two_level) {
                for (std::size_t j = 0; j < kGemmPanel; ++j) {
                    const bool real = first + j < q.out;
                    const std::size_t at = code_bytes + 4 * (j % 16) + 2 * (j / 16);
                    record[at] = real ? q.sub_scales[(first + j) * q.block_stride + b] : 0;
                    record[at + 1] = real ? q.sub_offsets[(first + j) * q.block_stride + b] : 0;
                }
                if (b % kSuperBlocks == 0) {
                    float header[2 * kGemmPanel];
                    for (std::size_t j = 0; j < kGemmPanel; ++j) {
                        const bool real = first + j < q.out;
                        header[j] = real ? q.super_scales[(first + j) * q.super_stride + b / kSuperBlocks] : 0.0f;
                        header[kGemmPanel + j] = real ? q.super_offsets[(first + j) * q.super_stride + b / kSuperBlocks] : 0.0f;
                    }
                    std::memcpy(base + b / kSuperBlocks * w.super_span(), header, sizeof header);
                }
            } else {
                float scales[kGemmPanel], offsets[kGemmPanel];
                for (std::size_t j = 0; j < kGemmPanel; ++j) {
                    const bool real = first + j < q.out;
                    scales[j] = real ? q.scales[(first + j) * q.block_stride + b] : 0.0f;
                    offsets[j] = real ? q.offsets[(first + j) * q.block_stride + b] : 0.0f;
                }
                std::memcpy(record + code_bytes, scales, sizeof scales);
                std::memcpy(record + code_bytes + sizeof scales, offsets, sizeof offsets);
            }
        }
    }
    return w;
}

void unpack_quantized_row(const PackedWeightsData& w, std::size_t j, std::uint8_t* codes, float* scales,
                          float* offsets) {
    const std::size_t p = j / kGemmPanel, col = j % kGemmPanel;
    const bool eight = w.dtype == KVFUSE_DTYPE_Q8_BLOCK32;
    for (std::size_t b = 0; b < w.blocks(); ++b) {
        const std::uint8_t* record = w.record(p, b);
        for (std::size_t k = 0; k < kQuantBlock; ++k) {
            const std::size_t g = k / 4, t = k % 4;
            std::uint8_t code;
            if (eight) {
                code = record[g * 128 + 4 * col + t];
            } else {
                const std::uint8_t pair = record[g * 64 + 4 * (col % 16) + t];
                code = static_cast<std::uint8_t>(col < 16 ? pair & 0xF : pair >> 4);
            }
            codes[b * kQuantBlock + k] = code;
        }
        if (w.two_level()) {
            const float* header = w.super_header(p, b);
            const std::size_t at = w.code_bytes() + 4 * (col % 16) + 2 * (col / 16);
            scales[b] = header[col] * static_cast<float>(record[at]);
            offsets[b] = header[kGemmPanel + col] * static_cast<float>(record[at + 1]);
        } else {
            std::memcpy(scales + b, record + w.code_bytes() + col * sizeof(float), sizeof(float));
            std::memcpy(offsets + b, record + w.code_bytes() + (kGemmPanel + col) * sizeof(float), sizeof(float));
        }
    }
}

void unpack_q6_row(const PackedWeightsData& w, std::size_t j, std::uint8_t* codes, std::int8_t* sub_scales,
                   float* super_scales) {
    const std::size_t p = j / kGemmPanel, col = j % kGemmPanel;
    for (std::size_t b = 0; b < w.blocks(); ++b) {
        const std::uint8_t* record = w.record(p, b);
        for (std::size_t k = 0; k < kQuantBlock; ++k) {
            const std::size_t pair = k / 8, odd = k / 4 % 2, t = k % 4;
            const std::uint8_t* bytes = record + pair * 192 + 4 * (col % 16) + t;  // rows at 0, 64, 128
            unsigned code;
            if (odd == 1 && col >= 16)
                code = (bytes[0] >> 6) | (bytes[64] >> 6) << 2 | (bytes[128] >> 6) << 4;
            else
                code = bytes[(col >= 16 ? 128 : odd == 1 ? 64 : 0)] & 0x3Fu;
            codes[b * kQuantBlock + k] = static_cast<std::uint8_t>(code);
        }
        for (std::size_t half = 0; half < 2; ++half)
            sub_scales[2 * b + half] = static_cast<std::int8_t>(record[w.code_bytes() + 4 * (col % 16) + 2 * (col / 16) + half]);
        if (b % kSuperBlocks == 0) super_scales[b / kSuperBlocks] = w.super_header(p, b)[col];
    }
}

std::size_t gemm_workers(std::size_t n, std::size_t out, std::size_t in, int threads, std::size_t default_workers) {
    constexpr double kParallelWork = 1 << 20;
    constexpr std::size_t kMaxWorkers = 256;
    std::size_t workers = threads > 0 ? static_cast<std::size_t>(threads) : default_workers;
    if (threads <= 0 && static_cast<double>(n) * static_cast<double>(out) * static_cast<double>(in) < kParallelWork)
        workers = 1;
    return std::clamp<std::size_t>(workers, 1, kMaxWorkers);
}

GemmSplit split_gemm(std::size_t row_tiles, std::size_t col_tiles, std::size_t workers) {
    const std::size_t t = std::max<std::size_t>(1, std::min(workers, col_tiles * row_tiles));
    if (row_tiles >= 4 * t) return {t, 1};
    const std::size_t col_groups = std::min(t, col_tiles);
    return {std::max<std::size_t>(1, std::min(t / col_groups, row_tiles)), col_groups};
}

GemmShare share_of(const GemmSplit& split, std::size_t task, std::size_t n, std::size_t tile_rows,
                   std::size_t row_tiles, std::size_t col_tiles) {
    const std::size_t rg = task / split.col_groups, cg = task % split.col_groups;
    return {std::min(n, rg * row_tiles / split.row_groups * tile_rows),
            std::min(n, (rg + 1) * row_tiles / split.row_groups * tile_rows), cg * col_tiles / split.col_groups,
            (cg + 1) * col_tiles / split.col_groups};
}

}  // namespace kvfuse::detail
