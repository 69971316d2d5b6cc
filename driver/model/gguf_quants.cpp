// ggml's block formats (layouts from ggml-common.h), read and written by code of our own.
//
// Dequantizers follow the formats exactly; they are checked against values llama.cpp's own
// Python dequantizer produced for files its quantizer wrote (tests/data/quants).
//
// Quantizers: each block's (or sub-block's) scale, and min where the format has one, is fitted
// by least squares over a few starting scales (alternating "round every value to the grid" and
// "solve for the best scale/min given those integers"), then the sub-block scales are themselves
// quantized to the format's few bits and every value is rounded again with the scales as stored.
// This is not llama.cpp's search (which also weighs values by an importance matrix); the
// round-trip error per type is measured in docs/MODEL.md.
#include "model/gguf_quants.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "model/gguf_types.h"

namespace kvfuse::model::quants {

namespace {

// ---- block helpers -----------------------------------------------------------------------------

float load_half(const std::uint8_t* p) {
    std::uint16_t h;
    std::memcpy(&h, p, 2);
    return half_to_float(h);
}

// Stores `value` as a half and returns what was stored, so the caller quantizes against the
// scale a reader will see.
float store_half(std::uint8_t* p, float value) {
    const std::uint16_t h = float_to_half(value);
    std::memcpy(p, &h, 2);
    return half_to_float(h);
}

int clamp_round(float value, int lo, int hi) {
    const float r = std::nearbyint(value);
    if (!(r >= static_cast<float>(lo))) return lo;  // also NaN
    if (r > static_cast<float>(hi)) return hi;
    return static_cast<int>(r);
}

// The non-linear 4-bit grid of IQ4_NL and IQ4_XS.
constexpr std::array<std::int8_t, 16> kIq4Grid = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

int nearest_iq4(float value) {
    int best = 0;
    float best_distance = std::numeric_limits<float>::infinity();
    for (int i = 0; i < 16; ++i) {
        const float distance = std::fabs(value - static_cast<float>(kIq4Grid[static_cast<std::size_t>(i)]));
        if (distance < best_distance) {
            best_distance = distance;
            best = i;
        }
    }
    return best;
}

// The value of largest magnitude, with its sign.
float signed_absmax(const float* x, int n) {
    float m = 0.0f;
    for (int i = 0; i < n; ++i)
        if (std::fabs(x[i]) > std::fabs(m)) m = x[i];
    return m;
}

// ---- fitting -----------------------------------------------------------------------------------

// x ≈ scale * q with integer q in [qmin, qmax]: the scale of least squared error among a few
// starting points, each refined by alternating rounding and least squares. Signed: the value
// of largest magnitude may land on either end of the range.
float fit_symmetric(const float* x, int n, int qmin, int qmax) {
    const float m = signed_absmax(x, n);
    if (m == 0.0f) return 0.0f;
    float best_scale = m / static_cast<float>(qmin), best_error = std::numeric_limits<float>::infinity();
    for (int side = 0; side < 2; ++side) {
        const float end = static_cast<float>(side == 0 ? qmin : -qmax);
        for (int k = -3; k <= 3; ++k) {
            float scale = m / (end + (end < 0 ? -0.1f : 0.1f) * static_cast<float>(k));
            for (int iteration = 0; iteration < 3 && scale != 0.0f; ++iteration) {
                double sqx = 0.0, sqq = 0.0;
                for (int i = 0; i < n; ++i) {
                    const int q = clamp_round(x[i] / scale, qmin, qmax);
                    sqx += static_cast<double>(q) * x[i];
                    sqq += static_cast<double>(q) * q;
                }
                if (sqq == 0.0) break;
                scale = static_cast<float>(sqx / sqq);
                double error = 0.0;
                for (int i = 0; i < n; ++i) {
                    const float d = x[i] - scale * static_cast<float>(clamp_round(x[i] / scale, qmin, qmax));
                    error += static_cast<double>(d) * d;
                }
                if (error < best_error) {
                    best_error = static_cast<float>(error);
                    best_scale = scale;
                }
            }
        }
    }
    return best_scale;
}

// x ≈ scale * q + offset with integer q in [0, qmax] and scale ≥ 0. When `offset_at_most_zero`
// (the K formats store a non-negative min that is subtracted) the offset is kept ≤ 0.
struct Affine {
    float scale = 0.0f, offset = 0.0f;
};

Affine fit_affine(const float* x, int n, int qmax, bool offset_at_most_zero) {
    float lo = *std::min_element(x, x + n), hi = *std::max_element(x, x + n);
    if (offset_at_most_zero) lo = std::min(lo, 0.0f);
    if (!(hi > lo)) return {0.0f, offset_at_most_zero ? std::min(lo, 0.0f) : lo};
    Affine best{(hi - lo) / static_cast<float>(qmax), lo};
    double best_error = std::numeric_limits<double>::infinity();
    for (int k = -3; k <= 3; ++k) {
        Affine a{(hi - lo) / (static_cast<float>(qmax) + 0.1f * static_cast<float>(k)), lo};
        for (int iteration = 0; iteration < 3 && a.scale > 0.0f; ++iteration) {
            double sq = 0.0, sqq = 0.0, sx = 0.0, sqx = 0.0;
            for (int i = 0; i < n; ++i) {
                const int q = clamp_round((x[i] - a.offset) / a.scale, 0, qmax);
                sq += q;
                sqq += static_cast<double>(q) * q;
                sx += x[i];
                sqx += static_cast<double>(q) * x[i];
            }
            const double det = n * sqq - sq * sq;
            if (det <= 0.0) break;
            Affine next{static_cast<float>((n * sqx - sq * sx) / det), static_cast<float>((sqq * sx - sq * sqx) / det)};
            if (offset_at_most_zero && next.offset > 0.0f) next = {static_cast<float>(sqx / sqq), 0.0f};
            if (!(next.scale > 0.0f)) break;
            a = next;
            double error = 0.0;
            for (int i = 0; i < n; ++i) {
                const float d = x[i] - (a.scale * static_cast<float>(clamp_round((x[i] - a.offset) / a.scale, 0, qmax)) + a.offset);
                error += static_cast<double>(d) * d;
            }
            if (error < best_error) {
                best_error = error;
                best = a;
            }
        }
    }
    return best;
}

// x ≈ scale * grid[q] on the IQ4 grid.
float fit_iq4(const float* x, int n) {
    const float m = signed_absmax(x, n);
    if (m == 0.0f) return 0.0f;
    float best_scale = m / kIq4Grid[0];
    double best_error = std::numeric_limits<double>::infinity();
    for (float end : {static_cast<float>(kIq4Grid[0]), -static_cast<float>(kIq4Grid[15])}) {
        for (int k = -5; k <= 5; ++k) {
            float scale = m / (end * (1.0f + 0.02f * static_cast<float>(k)));
            for (int iteration = 0; iteration < 2; ++iteration) {
                double sxg = 0.0, sgg = 0.0;
                for (int i = 0; i < n; ++i) {
                    const float g = kIq4Grid[static_cast<std::size_t>(nearest_iq4(x[i] / scale))];
                    sxg += static_cast<double>(x[i]) * g;
                    sgg += static_cast<double>(g) * g;
                }
                scale = static_cast<float>(sxg / sgg);
                if (scale == 0.0f) break;
                double error = 0.0;
                for (int i = 0; i < n; ++i) {
                    const float d = x[i] - scale * kIq4Grid[static_cast<std::size_t>(nearest_iq4(x[i] / scale))];
                    error += static_cast<double>(d) * d;
                }
                if (error < best_error) {
                    best_error = error;
                    best_scale = scale;
                }
            }
        }
    }
    return best_scale;
}

// Sub-block scales and mins of a K block (scale ≥ 0, min ≥ 0 subtracted), fitted then stored
// as `bits`-bit integers under two half super-scales. Returns the integer levels.
struct KLevels {
    float d = 0.0f, dmin = 0.0f;
    std::array<int, 16> scale{}, min{};
};

KLevels fit_k_affine(const float* x, int subblocks, int subblock_size, int qmax, int bits, std::uint8_t* d_field,
                     std::uint8_t* dmin_field) {
    std::array<Affine, 16> fits;
    float max_scale = 0.0f, max_min = 0.0f;
    for (int s = 0; s < subblocks; ++s) {
        fits[static_cast<std::size_t>(s)] = fit_affine(x + s * subblock_size, subblock_size, qmax, true);
        max_scale = std::max(max_scale, fits[static_cast<std::size_t>(s)].scale);
        max_min = std::max(max_min, -fits[static_cast<std::size_t>(s)].offset);
    }
    const int levels = (1 << bits) - 1;
    KLevels k;
    k.d = store_half(d_field, max_scale / static_cast<float>(levels));
    k.dmin = store_half(dmin_field, max_min / static_cast<float>(levels));
    for (int s = 0; s < subblocks; ++s) {
        const auto& f = fits[static_cast<std::size_t>(s)];
        k.scale[static_cast<std::size_t>(s)] = k.d > 0.0f ? clamp_round(f.scale / k.d, 0, levels) : 0;
        k.min[static_cast<std::size_t>(s)] = k.dmin > 0.0f ? clamp_round(-f.offset / k.dmin, 0, levels) : 0;
    }
    return k;
}

// Sub-block scales of a signed K block (Q3_K, Q6_K, IQ4_XS) stored as signed `bits`-bit
// integers under one half super-scale, signed so that the scale of largest magnitude lands on
// the lowest level. Returns the integer levels.
struct KSignedLevels {
    float d = 0.0f;
    std::array<int, 16> level{};
};

KSignedLevels quantize_k_scales(const float* scales, int subblocks, int bits, std::uint8_t* d_field) {
    const int lowest = -(1 << (bits - 1));
    KSignedLevels k;
    k.d = store_half(d_field, signed_absmax(scales, subblocks) / static_cast<float>(lowest));
    for (int s = 0; s < subblocks; ++s)
        k.level[static_cast<std::size_t>(s)] = k.d != 0.0f ? clamp_round(scales[s] / k.d, lowest, -lowest - 1) : 0;
    return k;
}

// Every value of a sub-block rounded with its stored scale and min.
void quantize_affine_values(const float* x, int n, float scale, float min, int qmax, int* q) {
    for (int i = 0; i < n; ++i) q[i] = scale > 0.0f ? clamp_round((x[i] + min) / scale, 0, qmax) : 0;
}

}  // namespace

// The K formats pack eight (scale, min) pairs of 6 bits into 12 bytes: pairs 0-3 in the low six
// bits of bytes 0-3 (scales) and 4-7 (mins); pairs 4-7 as nibbles of bytes 8-11 with their top
// two bits in the spare top bits of bytes 0-7.
void unpack_scale_min_k4(int j, const std::uint8_t* q, int& scale, int& min) {
    if (j < 4) {
        scale = q[j] & 63;
        min = q[j + 4] & 63;
    } else {
        scale = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// The inverse of unpack_scale_min_k4: eight pairs (each 0-63) into 12 bytes.
void pack_scale_min_k4(const int* scales, const int* mins, std::uint8_t* q) {
    std::memset(q, 0, 12);
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            q[j] = static_cast<std::uint8_t>(scales[j]);
            q[j + 4] = static_cast<std::uint8_t>(mins[j]);
        } else {
            q[j + 4] = static_cast<std::uint8_t>((scales[j] & 0xF) | ((mins[j] & 0xF) << 4));
            q[j - 4] |= static_cast<std::uint8_t>((scales[j] >> 4) << 6);
            q[j] |= static_cast<std::uint8_t>((mins[j] >> 4) << 6);
        }
    }
}

// ---- 32-element formats ------------------------------------------------------------------------

// Q4_0: half scale, 16 bytes of nibbles (value j low, j + 16 high); x = d * (q - 8).
void dequantize_q4_0(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 18, out += 32) {
        const float d = load_half(blocks);
        for (int j = 0; j < 16; ++j) {
            out[j] = d * static_cast<float>((blocks[2 + j] & 0xF) - 8);
            out[j + 16] = d * static_cast<float>((blocks[2 + j] >> 4) - 8);
        }
    }
}
void quantize_q4_0(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 18, in += 32) {
        const float d = store_half(blocks, fit_symmetric(in, 32, -8, 7));
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < 16; ++j)
            blocks[2 + j] = static_cast<std::uint8_t>((clamp_round(in[j] * id, -8, 7) + 8) | ((clamp_round(in[j + 16] * id, -8, 7) + 8) << 4));
    }
}

// Q4_1: half scale, half min, nibbles; x = d * q + m.
void dequantize_q4_1(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 20, out += 32) {
        const float d = load_half(blocks), m = load_half(blocks + 2);
        for (int j = 0; j < 16; ++j) {
            out[j] = d * static_cast<float>(blocks[4 + j] & 0xF) + m;
            out[j + 16] = d * static_cast<float>(blocks[4 + j] >> 4) + m;
        }
    }
}
void quantize_q4_1(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 20, in += 32) {
        const Affine a = fit_affine(in, 32, 15, false);
        const float d = store_half(blocks, a.scale), m = store_half(blocks + 2, a.offset);
        int q[32];
        quantize_affine_values(in, 32, d, -m, 15, q);
        for (int j = 0; j < 16; ++j) blocks[4 + j] = static_cast<std::uint8_t>(q[j] | (q[j + 16] << 4));
    }
}

// Q5_0: half scale, 32 fifth bits (bit j of a little-endian u32 for value j), nibbles;
// x = d * (q - 16).
void dequantize_q5_0(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 22, out += 32) {
        const float d = load_half(blocks);
        std::uint32_t qh;
        std::memcpy(&qh, blocks + 2, 4);
        for (int j = 0; j < 16; ++j) {
            const int low = (blocks[6 + j] & 0xF) | static_cast<int>(((qh >> j) & 1u) << 4);
            const int high = (blocks[6 + j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
            out[j] = d * static_cast<float>(low - 16);
            out[j + 16] = d * static_cast<float>(high - 16);
        }
    }
}
void quantize_q5_0(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 22, in += 32) {
        const float d = store_half(blocks, fit_symmetric(in, 32, -16, 15));
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        std::uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
            const int low = clamp_round(in[j] * id, -16, 15) + 16, high = clamp_round(in[j + 16] * id, -16, 15) + 16;
            blocks[6 + j] = static_cast<std::uint8_t>((low & 0xF) | ((high & 0xF) << 4));
            qh |= static_cast<std::uint32_t>(low >> 4) << j;
            qh |= static_cast<std::uint32_t>(high >> 4) << (j + 16);
        }
        std::memcpy(blocks + 2, &qh, 4);
    }
}

// Q5_1: half scale, half min, fifth bits, nibbles; x = d * q + m.
void dequantize_q5_1(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 24, out += 32) {
        const float d = load_half(blocks), m = load_half(blocks + 2);
        std::uint32_t qh;
        std::memcpy(&qh, blocks + 4, 4);
        for (int j = 0; j < 16; ++j) {
            const int low = (blocks[8 + j] & 0xF) | static_cast<int>(((qh >> j) & 1u) << 4);
            const int high = (blocks[8 + j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
            out[j] = d * static_cast<float>(low) + m;
            out[j + 16] = d * static_cast<float>(high) + m;
        }
    }
}
void quantize_q5_1(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 24, in += 32) {
        const Affine a = fit_affine(in, 32, 31, false);
        const float d = store_half(blocks, a.scale), m = store_half(blocks + 2, a.offset);
        int q[32];
        quantize_affine_values(in, 32, d, -m, 31, q);
        std::uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
            blocks[8 + j] = static_cast<std::uint8_t>((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
            qh |= static_cast<std::uint32_t>(q[j] >> 4) << j;
            qh |= static_cast<std::uint32_t>(q[j + 16] >> 4) << (j + 16);
        }
        std::memcpy(blocks + 4, &qh, 4);
    }
}

// Q8_0: half scale, 32 signed bytes; x = d * q.
void dequantize_q8_0(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 34, out += 32) {
        const float d = load_half(blocks);
        for (int j = 0; j < 32; ++j) out[j] = d * static_cast<float>(static_cast<std::int8_t>(blocks[2 + j]));
    }
}
void quantize_q8_0(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 34, in += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(in[j]));
        const float d = store_half(blocks, amax / 127.0f);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < 32; ++j) blocks[2 + j] = static_cast<std::uint8_t>(static_cast<std::int8_t>(clamp_round(in[j] * id, -127, 127)));
    }
}

// IQ4_NL: half scale, nibbles indexing the non-linear grid; x = d * grid[q].
void dequantize_iq4_nl(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 18, out += 32) {
        const float d = load_half(blocks);
        for (int j = 0; j < 16; ++j) {
            out[j] = d * static_cast<float>(kIq4Grid[blocks[2 + j] & 0xF]);
            out[j + 16] = d * static_cast<float>(kIq4Grid[blocks[2 + j] >> 4]);
        }
    }
}
void quantize_iq4_nl(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 32; ++b, blocks += 18, in += 32) {
        const float d = store_half(blocks, fit_iq4(in, 32));
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < 16; ++j)
            blocks[2 + j] = static_cast<std::uint8_t>(nearest_iq4(in[j] * id) | (nearest_iq4(in[j + 16] * id) << 4));
    }
}

// ---- 256-element (K) formats -------------------------------------------------------------------

// Q2_K (84 bytes): 16 bytes of (4-bit scale | 4-bit min << 4) for sub-blocks of 16, 64 bytes of
// 2-bit values, half d, half dmin. Values n*128 + j*32 + l sit in byte n*32 + l at bits 2j;
// x = d * scale * q - dmin * min.
void dequantize_q2_k(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 84) {
        const std::uint8_t* scales = blocks;
        const std::uint8_t* q = blocks + 16;
        const float d = load_half(blocks + 80), dmin = load_half(blocks + 82);
        int is = 0;
        for (int half = 0; half < 2; ++half, q += 32) {
            for (int j = 0; j < 4; ++j) {
                for (int part = 0; part < 2; ++part) {
                    const int sc = scales[is++];
                    const float dl = d * static_cast<float>(sc & 0xF), ml = dmin * static_cast<float>(sc >> 4);
                    for (int l = 0; l < 16; ++l) *out++ = dl * static_cast<float>((q[l + 16 * part] >> (2 * j)) & 3) - ml;
                }
            }
        }
    }
}
void quantize_q2_k(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 84, in += 256) {
        const KLevels k = fit_k_affine(in, 16, 16, 3, 4, blocks + 80, blocks + 82);
        std::memset(blocks, 0, 80);
        for (int s = 0; s < 16; ++s) {
            blocks[s] = static_cast<std::uint8_t>(k.scale[static_cast<std::size_t>(s)] | (k.min[static_cast<std::size_t>(s)] << 4));
            int q[16];
            quantize_affine_values(in + 16 * s, 16, k.d * static_cast<float>(k.scale[static_cast<std::size_t>(s)]),
                                   k.dmin * static_cast<float>(k.min[static_cast<std::size_t>(s)]), 3, q);
            for (int i = 0; i < 16; ++i) {
                const int e = 16 * s + i, half = e / 128, j = (e % 128) / 32, l = e % 32;
                blocks[16 + half * 32 + l] |= static_cast<std::uint8_t>(q[i] << (2 * j));
            }
        }
    }
}

// Q3_K (110 bytes): 32 bytes of high bits, 64 bytes of low 2-bit values, 12 bytes of sixteen
// 6-bit scales (offset 32), half d. Value n*128 + j*32 + l: low bits in byte n*32 + l at 2j, its
// high bit in hmask[l] bit n*4 + j; x = d * (scale - 32) * (q - (high ? 0 : 4)).
namespace {
void unpack_q3_k_scales(const std::uint8_t* packed, std::int8_t* scales) {
    std::uint32_t aux[4];
    std::memcpy(aux, packed, 12);
    constexpr std::uint32_t kLow4 = 0x0f0f0f0f, kLow2 = 0x03030303;
    const std::uint32_t top = aux[2];
    aux[2] = ((aux[0] >> 4) & kLow4) | (((top >> 4) & kLow2) << 4);
    aux[3] = ((aux[1] >> 4) & kLow4) | (((top >> 6) & kLow2) << 4);
    aux[0] = (aux[0] & kLow4) | (((top >> 0) & kLow2) << 4);
    aux[1] = (aux[1] & kLow4) | (((top >> 2) & kLow2) << 4);
    std::memcpy(scales, aux, 16);
}
}  // namespace

void dequantize_q3_k(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 110) {
        const std::uint8_t* hmask = blocks;
        const std::uint8_t* q = blocks + 32;
        std::int8_t scales[16];
        unpack_q3_k_scales(blocks + 96, scales);
        const float d = load_half(blocks + 108);
        int is = 0;
        std::uint8_t bit = 1;
        for (int half = 0; half < 2; ++half, q += 32) {
            for (int j = 0; j < 4; ++j, bit = static_cast<std::uint8_t>(bit << 1)) {
                for (int part = 0; part < 2; ++part) {
                    const float dl = d * static_cast<float>(scales[is++] - 32);
                    for (int l = 16 * part; l < 16 * part + 16; ++l)
                        *out++ = dl * static_cast<float>(((q[l] >> (2 * j)) & 3) - ((hmask[l] & bit) ? 0 : 4));
                }
            }
        }
    }
}
void quantize_q3_k(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 110, in += 256) {
        float scales[16];
        for (int s = 0; s < 16; ++s) scales[s] = fit_symmetric(in + 16 * s, 16, -4, 3);
        const KSignedLevels k = quantize_k_scales(scales, 16, 6, blocks + 108);
        const float d = k.d;
        std::memset(blocks, 0, 108);
        std::uint8_t* packed = blocks + 96;
        for (int s = 0; s < 16; ++s) {
            const int level = k.level[static_cast<std::size_t>(s)];
            const int l = level + 32;
            if (s < 8)
                packed[s] = static_cast<std::uint8_t>(l & 0xF);
            else
                packed[s - 8] |= static_cast<std::uint8_t>((l & 0xF) << 4);
            packed[8 + s % 4] |= static_cast<std::uint8_t>((l >> 4) << (2 * (s / 4)));
            const float dl = d * static_cast<float>(level);
            for (int i = 0; i < 16; ++i) {
                const int q = (dl != 0.0f ? clamp_round(in[16 * s + i] / dl, -4, 3) : 0) + 4;
                const int e = 16 * s + i, half = e / 128, j = (e % 128) / 32, pos = e % 32;
                blocks[32 + half * 32 + pos] |= static_cast<std::uint8_t>((q & 3) << (2 * j));
                if (q >= 4) blocks[pos] |= static_cast<std::uint8_t>(1u << (half * 4 + j));
            }
        }
    }
}

// Q4_K (144 bytes): half d, half dmin, 12 bytes of eight 6-bit (scale, min) pairs, 128 bytes of
// nibbles: values 64c + l (low) and 64c + 32 + l (high) in byte 32c + l; x = d*scale*q - dmin*min.
void dequantize_q4_k(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 144) {
        const float d = load_half(blocks), dmin = load_half(blocks + 2);
        const std::uint8_t* q = blocks + 16;
        for (int c = 0; c < 4; ++c, q += 32) {
            int sc, m;
            unpack_scale_min_k4(2 * c, blocks + 4, sc, m);
            const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
            unpack_scale_min_k4(2 * c + 1, blocks + 4, sc, m);
            const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
            for (int l = 0; l < 32; ++l) *out++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *out++ = d2 * static_cast<float>(q[l] >> 4) - m2;
        }
    }
}
void quantize_q4_k(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 144, in += 256) {
        const KLevels k = fit_k_affine(in, 8, 32, 15, 6, blocks, blocks + 2);
        pack_scale_min_k4(k.scale.data(), k.min.data(), blocks + 4);
        for (int c = 0; c < 4; ++c) {
            int low[32], high[32];
            quantize_affine_values(in + 64 * c, 32, k.d * static_cast<float>(k.scale[static_cast<std::size_t>(2 * c)]),
                                   k.dmin * static_cast<float>(k.min[static_cast<std::size_t>(2 * c)]), 15, low);
            quantize_affine_values(in + 64 * c + 32, 32, k.d * static_cast<float>(k.scale[static_cast<std::size_t>(2 * c + 1)]),
                                   k.dmin * static_cast<float>(k.min[static_cast<std::size_t>(2 * c + 1)]), 15, high);
            for (int l = 0; l < 32; ++l) blocks[16 + 32 * c + l] = static_cast<std::uint8_t>(low[l] | (high[l] << 4));
        }
    }
}

// Q5_K (176 bytes): as Q4_K plus 32 bytes of fifth bits after the scales: value 64c + l has its
// fifth bit in qh[l] bit 2c, value 64c + 32 + l in bit 2c + 1.
void dequantize_q5_k(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 176) {
        const float d = load_half(blocks), dmin = load_half(blocks + 2);
        const std::uint8_t* qh = blocks + 16;
        const std::uint8_t* q = blocks + 48;
        for (int c = 0; c < 4; ++c, q += 32) {
            int sc, m;
            unpack_scale_min_k4(2 * c, blocks + 4, sc, m);
            const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
            unpack_scale_min_k4(2 * c + 1, blocks + 4, sc, m);
            const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
            for (int l = 0; l < 32; ++l) *out++ = d1 * static_cast<float>((q[l] & 0xF) + (((qh[l] >> (2 * c)) & 1) << 4)) - m1;
            for (int l = 0; l < 32; ++l) *out++ = d2 * static_cast<float>((q[l] >> 4) + (((qh[l] >> (2 * c + 1)) & 1) << 4)) - m2;
        }
    }
}
void quantize_q5_k(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 176, in += 256) {
        const KLevels k = fit_k_affine(in, 8, 32, 31, 6, blocks, blocks + 2);
        pack_scale_min_k4(k.scale.data(), k.min.data(), blocks + 4);
        std::memset(blocks + 16, 0, 32);
        for (int c = 0; c < 4; ++c) {
            int low[32], high[32];
            quantize_affine_values(in + 64 * c, 32, k.d * static_cast<float>(k.scale[static_cast<std::size_t>(2 * c)]),
                                   k.dmin * static_cast<float>(k.min[static_cast<std::size_t>(2 * c)]), 31, low);
            quantize_affine_values(in + 64 * c + 32, 32, k.d * static_cast<float>(k.scale[static_cast<std::size_t>(2 * c + 1)]),
                                   k.dmin * static_cast<float>(k.min[static_cast<std::size_t>(2 * c + 1)]), 31, high);
            for (int l = 0; l < 32; ++l) {
                blocks[48 + 32 * c + l] = static_cast<std::uint8_t>((low[l] & 0xF) | ((high[l] & 0xF) << 4));
                blocks[16 + l] |= static_cast<std::uint8_t>(((low[l] >> 4) << (2 * c)) | ((high[l] >> 4) << (2 * c + 1)));
            }
        }
    }
}

// Q6_K (210 bytes): 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, sixteen int8 scales,
// half d. In each half n of 128 values, value 32k + l (k < 4, l < 32) has its low nibble in
// ql[64n + l + 32 (k & 1)] (high nibble when k ≥ 2), its top two bits in qh[32n + l] at 2k;
// x = d * scale * (q - 32).
void dequantize_q6_k(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 210) {
        const std::uint8_t* ql = blocks;
        const std::uint8_t* qh = blocks + 128;
        const auto* sc = reinterpret_cast<const std::int8_t*>(blocks + 192);
        const float d = load_half(blocks + 208);
        for (int half = 0; half < 2; ++half, out += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                out[l] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
                out[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
                out[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
                out[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
            }
        }
    }
}
void quantize_q6_k(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 210, in += 256) {
        float scales[16];
        for (int s = 0; s < 16; ++s) scales[s] = fit_symmetric(in + 16 * s, 16, -32, 31);
        const KSignedLevels k = quantize_k_scales(scales, 16, 8, blocks + 208);
        const float d = k.d;
        int q[256];
        for (int s = 0; s < 16; ++s) {
            const int level = k.level[static_cast<std::size_t>(s)];
            blocks[192 + s] = static_cast<std::uint8_t>(static_cast<std::int8_t>(level));
            const float dl = d * static_cast<float>(level);
            for (int i = 0; i < 16; ++i) q[16 * s + i] = (dl != 0.0f ? clamp_round(in[16 * s + i] / dl, -32, 31) : 0) + 32;
        }
        for (int half = 0; half < 2; ++half) {
            const int* v = q + 128 * half;
            std::uint8_t* ql = blocks + 64 * half;
            std::uint8_t* qh = blocks + 128 + 32 * half;
            for (int l = 0; l < 32; ++l) {
                ql[l] = static_cast<std::uint8_t>((v[l] & 0xF) | ((v[l + 64] & 0xF) << 4));
                ql[l + 32] = static_cast<std::uint8_t>((v[l + 32] & 0xF) | ((v[l + 96] & 0xF) << 4));
                qh[l] = static_cast<std::uint8_t>((v[l] >> 4) | ((v[l + 32] >> 4) << 2) | ((v[l + 64] >> 4) << 4) | ((v[l + 96] >> 4) << 6));
            }
        }
    }
}

// IQ4_XS (136 bytes): half d, u16 of eight 2-bit scale tops, 4 bytes of 4-bit scale bottoms,
// then per sub-block of 32 the IQ4_NL nibble layout; x = d * (scale - 32) * grid[q].
void dequantize_iq4_xs(const std::uint8_t* blocks, float* out, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 136) {
        const float d = load_half(blocks);
        std::uint16_t scales_high;
        std::memcpy(&scales_high, blocks + 2, 2);
        const std::uint8_t* scales_low = blocks + 4;
        const std::uint8_t* q = blocks + 8;
        for (int ib = 0; ib < 8; ++ib, q += 16, out += 32) {
            const int ls = ((scales_low[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((scales_high >> (2 * ib)) & 3) << 4);
            const float dl = d * static_cast<float>(ls - 32);
            for (int j = 0; j < 16; ++j) {
                out[j] = dl * static_cast<float>(kIq4Grid[q[j] & 0xF]);
                out[j + 16] = dl * static_cast<float>(kIq4Grid[q[j] >> 4]);
            }
        }
    }
}
void quantize_iq4_xs(const float* in, std::uint8_t* blocks, std::size_t n) {
    for (std::size_t b = 0; b < n / 256; ++b, blocks += 136, in += 256) {
        float scales[8];
        for (int s = 0; s < 8; ++s) scales[s] = fit_iq4(in + 32 * s, 32);
        const KSignedLevels k = quantize_k_scales(scales, 8, 6, blocks);
        const float d = k.d;
        std::uint16_t scales_high = 0;
        std::memset(blocks + 4, 0, 4);
        for (int s = 0; s < 8; ++s) {
            const int level = k.level[static_cast<std::size_t>(s)] + 32;
            blocks[4 + s / 2] |= static_cast<std::uint8_t>((level & 0xF) << (4 * (s % 2)));
            scales_high = static_cast<std::uint16_t>(scales_high | ((level >> 4) << (2 * s)));
            const float dl = d * static_cast<float>(level - 32);
            const float id = dl != 0.0f ? 1.0f / dl : 0.0f;
            const float* x = in + 32 * s;
            for (int j = 0; j < 16; ++j)
                blocks[8 + 16 * s + j] = static_cast<std::uint8_t>(nearest_iq4(x[j] * id) | (nearest_iq4(x[j + 16] * id) << 4));
        }
        std::memcpy(blocks + 2, &scales_high, 2);
    }
}

}  // namespace kvfuse::model::quants
