// RoPE rotation on every ISA against reference/ (double precision).
//
// Bounds. f32: the kernel rounds cos/sin to f32 and rotates with two f32 roundings (product,
// FMA); each output element is within 8 * 2^-24 * max|x of its head| of the exact rotation.
// bf16: one rounding to bf16 has a relative L2 floor of about 1.66e-3; we require <= 3e-3.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "isa_test_support.h"
#include "kernels/common/bf16.h"
#include "reference/rope_reference.h"

namespace {

using kvfuse::Dtype;
using kvfuse::RopeConfig;
using kvfuse::RopePairing;
using kvfuse::RopeScaling;
using kvfuse::testing::random_floats;

constexpr double kF32Eps = 1.0 / (1 << 24);
constexpr double kBf16RelativeL2Bound = 3e-3;

struct Shape {
    int head_dim;
    int rotary_dims;
    std::size_t heads;
    std::size_t tokens;
    std::size_t pad;  // extra elements per token beyond heads * head_dim
};

std::vector<Shape> shapes() {
    return {
        {8, 8, 4, 1, 0},     {8, 8, 1, 7, 3},      {8, 4, 2, 5, 0},     {64, 64, 3, 33, 0},
        {64, 32, 8, 17, 5},  {128, 128, 8, 129, 0}, {128, 64, 2, 31, 7}, {128, 128, 1, 3001, 0},
        {64, 64, 8, 2049, 1}, {6, 6, 3, 11, 0},    {10, 6, 3, 9, 1},    {130, 130, 2, 5, 0},
        // Half heads that end on a narrower vector of AVX-512 (40 and 24 pairs: 16 + 8 lanes).
        {80, 80, 8, 37, 0},   {48, 48, 3, 19, 2},  {96, 80, 2, 13, 0},
        // Heads of 4, 8 and 16 dims that fill vectors (the in-vector NeoX path) and end on
        // heads left over (the per-head path), heads packed and apart.
        {8, 8, 3, 9, 0},      {8, 8, 5, 6, 2},     {4, 4, 7, 5, 0},     {16, 16, 3, 7, 0},
        {16, 16, 5, 4, 1},    {4, 4, 12, 3, 0},
    };
}

RopeConfig config_for(const Shape& s, RopePairing pairing) {
    RopeConfig c;
    c.head_dim = s.head_dim;
    c.rotary_dims = s.rotary_dims;
    c.base = 10000.0;
    c.pairing = pairing;
    return c;
}

std::vector<std::int64_t> random_deltas(std::size_t tokens, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<std::int64_t> dist(-131072, 131072);
    std::vector<std::int64_t> out(tokens);
    // Runs of equal deltas (a chunk moved as one) mixed with single tokens.
    for (std::size_t t = 0; t < tokens;) {
        const std::int64_t delta = dist(rng);
        const std::size_t run = 1 + rng() % 5;
        for (std::size_t k = 0; k < run && t < tokens; ++k) out[t++] = delta;
    }
    return out;
}

// Exact rotation of f32 keys (double, no rounding), row by row with the same stride.
std::vector<double> exact_rotation(const RopeConfig& config, const std::vector<float>& keys,
                                   std::size_t stride, std::size_t tokens, std::size_t heads,
                                   const std::vector<std::int64_t>& deltas) {
    const kvfuse_rope_config c = config.to_c();
    std::vector<double> out(keys.size(), 0.0);
    for (std::size_t t = 0; t < tokens; ++t)
        for (std::size_t h = 0; h < heads; ++h) {
            const std::size_t at = t * stride + h * static_cast<std::size_t>(config.head_dim);
            kvfuse::reference::rope_rotate_head_exact(c, keys.data() + at, deltas[t], out.data() + at);
        }
    return out;
}

class RopeTest : public kvfuse::testing::IsaTest {};
KVFUSE_INSTANTIATE_ISA_TESTS(RopeTest);

// f32, in place, per-token deltas, against the exact rotation with the stated bound.
TEST_P(RopeTest, F32MatchesReferenceInPlace) {
    std::uint32_t seed = 1;
    for (const Shape& s : shapes())
        for (RopePairing pairing : {RopePairing::neox, RopePairing::interleaved}) {
            const RopeConfig config = config_for(s, pairing);
            const std::size_t stride = s.heads * s.head_dim + s.pad;
            // One leading element so the data is not vector aligned.
            std::vector<float> storage = random_floats(stride * s.tokens + 1, ++seed, 4.0f);
            std::vector<float> original(storage.begin() + 1, storage.end());
            const auto deltas = random_deltas(s.tokens, seed);
            ASSERT_TRUE(kvfuse::rope_rotate(config, storage.data() + 1, s.tokens, s.heads, stride, deltas.data()).ok());
            const auto exact = exact_rotation(config, original, stride, s.tokens, s.heads, deltas);
            for (std::size_t t = 0; t < s.tokens; ++t)
                for (std::size_t h = 0; h < s.heads; ++h) {
                    const std::size_t at = t * stride + h * s.head_dim;
                    float max_abs = 0.0f;
                    for (int d = 0; d < s.head_dim; ++d) max_abs = std::max(max_abs, std::fabs(original[at + d]));
                    for (int d = 0; d < s.head_dim; ++d) {
                        ASSERT_NEAR(storage[1 + at + d], exact[at + d], 8 * kF32Eps * max_abs)
                            << "D=" << s.head_dim << " rot=" << s.rotary_dims << " t=" << t << " h=" << h
                            << " d=" << d << " pairing=" << static_cast<int>(pairing);
                    }
                }
            // Padding between tokens is never written.
            for (std::size_t t = 0; t < s.tokens; ++t)
                for (std::size_t p = s.heads * s.head_dim; p < stride; ++p)
                    ASSERT_EQ(storage[1 + t * stride + p], original[t * stride + p]);
        }
}

// The parallel token loop at 1, 3 and 7 threads and the machine's count: bit-identical to the
// single-thread rotation (each token is rotated alone) and to the reference's bound.
TEST_P(RopeTest, SameAnswerAtEveryThreadCount) {
    kvfuse_tuning saved;
    kvfuse_tuning_init(&saved);
    kvfuse_get_tuning(&saved);
    kvfuse_tuning parallel = saved;
    parallel.rope_parallel_work = 0;
    ASSERT_EQ(kvfuse_set_tuning(&parallel), KVFUSE_OK);
    RopeConfig config;
    config.head_dim = 64;
    const std::size_t tokens = 301, heads = 4, stride = heads * 64;
    const std::vector<float> original = random_floats(tokens * stride, 5, 4.0f);
    const auto deltas = random_deltas(tokens, 5);
    const auto exact = exact_rotation(config, original, stride, tokens, heads, deltas);
    std::vector<float> single_thread;
    kvfuse::testing::at_thread_counts([&](int threads) {
        std::vector<float> keys = original;
        ASSERT_TRUE(kvfuse::rope_rotate(config, keys.data(), tokens, heads, stride, deltas.data()).ok());
        for (std::size_t i = 0; i < keys.size(); ++i) ASSERT_NEAR(keys[i], exact[i], 8 * kF32Eps * 8.0f) << i;
        if (threads == 1)
            single_thread = keys;
        else
            EXPECT_EQ(keys, single_thread) << threads << " threads";
    });
    kvfuse_set_tuning(&saved);
}

// Sizes whose products wrap are refused on every ISA: heads = 2^61 + 1 once made one key row
// 2^65 + 16 bytes, wrapped to 16, and the kernel read past the buffer.
TEST_P(RopeTest, WrappingSizesAreRefused) {
    kvfuse_rope_config c;
    kvfuse_rope_config_init(&c, 4);
    std::vector<float> keys(16, 1.0f);
    const std::vector<float> before = keys;
    const std::size_t heads = (std::size_t{1} << 61) + 1;
    EXPECT_EQ(kvfuse_rope_rotate_span(&c, KVFUSE_DTYPE_F32, keys.data(), 1, heads, SIZE_MAX, 1), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvfuse_last_error()).find("overflows"), std::string::npos) << kvfuse_last_error();
    EXPECT_EQ(kvfuse_rope_rotate_span(&c, KVFUSE_DTYPE_F32, keys.data(), 2, 1, SIZE_MAX / 4, 1), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_rope_rotate_span(&c, KVFUSE_DTYPE_F32, reinterpret_cast<char*>(keys.data()) + 2, 1, 1, 4, 1),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(keys, before);
}

// bf16, copying with different strides, constant delta, against the exact rotation.
TEST_P(RopeTest, Bf16CopyWithinRelativeL2Bound) {
    std::uint32_t seed = 100;
    for (const Shape& s : shapes())
        for (RopePairing pairing : {RopePairing::neox, RopePairing::interleaved})
            for (std::int64_t delta : {std::int64_t{1}, std::int64_t{-4097}, std::int64_t{131072}}) {
                const RopeConfig config = config_for(s, pairing);
                const std::size_t src_stride = s.heads * s.head_dim + s.pad;
                const std::size_t dst_stride = s.heads * s.head_dim + 2;
                const auto values = random_floats(src_stride * s.tokens, ++seed, 2.0f);
                std::vector<kvfuse::bf16> src(values.size() + 1), dst(dst_stride * s.tokens + 1);
                ASSERT_TRUE(kvfuse::to_bf16(values.data(), src.data() + 1, values.size()).ok());
                const kvfuse::bf16 sentinel{0x7e7e};
                std::fill(dst.begin(), dst.end(), sentinel);
                ASSERT_TRUE(kvfuse::rope_rotate_span_copy(config, src.data() + 1, src_stride, dst.data() + 1,
                                                          dst_stride, s.tokens, s.heads, delta).ok());
                std::vector<float> src_f32(values.size());
                ASSERT_TRUE(kvfuse::to_f32(src.data() + 1, src_f32.data(), src_f32.size()).ok());
                const std::vector<std::int64_t> deltas(s.tokens, delta);
                const auto exact = exact_rotation(config, src_f32, src_stride, s.tokens, s.heads, deltas);
                double err2 = 0.0, ref2 = 0.0;
                for (std::size_t t = 0; t < s.tokens; ++t)
                    for (std::size_t e = 0; e < s.heads * s.head_dim; ++e) {
                        const double got = kvfuse::detail::bf16_bits_to_f32(dst[1 + t * dst_stride + e].bits);
                        const double want = exact[t * src_stride + e];
                        err2 += (got - want) * (got - want);
                        ref2 += want * want;
                    }
                EXPECT_LE(std::sqrt(err2 / ref2), kBf16RelativeL2Bound)
                    << "D=" << s.head_dim << " rot=" << s.rotary_dims << " delta=" << delta;
                for (std::size_t t = 0; t < s.tokens; ++t)
                    for (std::size_t p = s.heads * s.head_dim; p < dst_stride; ++p)
                        ASSERT_EQ(dst[1 + t * dst_stride + p].bits, sentinel.bits);
            }
}

// Linear and llama3 scaling through the copying per-token form (absolute positions).
TEST_P(RopeTest, ScalingMatchesReference) {
    for (RopeScaling scaling : {RopeScaling::linear, RopeScaling::llama3}) {
        RopeConfig config;
        config.head_dim = 128;
        config.base = 500000.0;
        config.scaling = scaling;
        config.scaling_factor = 8.0;
        const std::size_t tokens = 64, heads = 4, stride = heads * 128;
        const auto keys = random_floats(stride * tokens, 7);
        std::vector<float> out(keys.size());
        std::vector<std::int64_t> positions(tokens);
        for (std::size_t t = 0; t < tokens; ++t) positions[t] = static_cast<std::int64_t>(t * 997);
        ASSERT_TRUE(kvfuse::rope_rotate_copy(config, keys.data(), stride, out.data(), stride, tokens, heads,
                                             positions.data()).ok());
        const auto exact = exact_rotation(config, keys, stride, tokens, heads, positions);
        for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], exact[i], 8 * kF32Eps);
    }
}

// Llama 3.1-style factors: pair i's frequency over the llama3-scaled one (what llama.cpp's
// converter writes as rope_freqs.weight), between 1 and scaling_factor.
std::vector<float> llama31_factors(int rotary_dims, double base) {
    RopeConfig plain;
    plain.head_dim = rotary_dims;
    plain.base = base;
    RopeConfig scaled = plain;
    scaled.scaling = RopeScaling::llama3;
    scaled.scaling_factor = 8.0;
    scaled.llama3_original_context = 64;  // so that small heads reach all three bands
    const kvfuse_rope_config p = plain.to_c(), q = scaled.to_c();
    std::vector<float> factors(static_cast<std::size_t>(rotary_dims / 2));
    for (int i = 0; i < rotary_dims / 2; ++i)
        factors[static_cast<std::size_t>(i)] =
            static_cast<float>(kvfuse::reference::rope_frequency(p, i) / kvfuse::reference::rope_frequency(q, i));
    return factors;
}

// Per-pair frequency factors (kvfuse_rope_config V2) on every shape, pairing and dtype: f32 in
// place within the f32 bound, bf16 copies within the bf16 bound, against the reference.
TEST_P(RopeTest, FreqFactorsMatchReference) {
    std::uint32_t seed = 100;
    for (const Shape& s : shapes())
        for (RopePairing pairing : {RopePairing::neox, RopePairing::interleaved}) {
            RopeConfig config = config_for(s, pairing);
            config.freq_factors = llama31_factors(s.rotary_dims, config.base);
            if (s.rotary_dims >= 4) {
                ASSERT_GT(config.freq_factors.back(), 1.5f) << "the factors must matter";
            }
            const std::size_t stride = s.heads * s.head_dim + s.pad;
            std::vector<float> keys = random_floats(stride * s.tokens, ++seed, 4.0f);
            const std::vector<float> original = keys;
            const auto deltas = random_deltas(s.tokens, seed);
            ASSERT_TRUE(kvfuse::rope_rotate(config, keys.data(), s.tokens, s.heads, stride, deltas.data()).ok());
            const auto exact = exact_rotation(config, original, stride, s.tokens, s.heads, deltas);
            for (std::size_t t = 0; t < s.tokens; ++t)
                for (std::size_t h = 0; h < s.heads; ++h) {
                    const std::size_t at = t * stride + h * s.head_dim;
                    float max_abs = 0.0f;
                    for (int d = 0; d < s.head_dim; ++d) max_abs = std::max(max_abs, std::fabs(original[at + d]));
                    for (int d = 0; d < s.head_dim; ++d)
                        ASSERT_NEAR(keys[at + d], exact[at + d], 8 * kF32Eps * max_abs)
                            << "D=" << s.head_dim << " rot=" << s.rotary_dims << " t=" << t << " d=" << d;
                }

            std::vector<kvfuse::bf16> half(original.size()), rotated(original.size());
            ASSERT_TRUE(kvfuse::to_bf16(original.data(), half.data(), half.size()).ok());
            ASSERT_TRUE(kvfuse::rope_rotate_span_copy(config, half.data(), stride, rotated.data(), stride, s.tokens, s.heads,
                                                      deltas[0]).ok());
            std::vector<kvfuse::bf16> expected(original.size());
            kvfuse::reference::rope_rotate(config.to_c(), KVFUSE_DTYPE_BF16, half.data(), stride, expected.data(), stride,
                                           s.tokens, s.heads, nullptr, deltas[0]);
            double err2 = 0, ref2 = 0;
            for (std::size_t t = 0; t < s.tokens; ++t)
                for (std::size_t e = 0; e < s.heads * s.head_dim; ++e) {
                    const double a = kvfuse::detail::bf16_bits_to_f32(rotated[t * stride + e].bits);
                    const double b = kvfuse::detail::bf16_bits_to_f32(expected[t * stride + e].bits);
                    err2 += (a - b) * (a - b);
                    ref2 += b * b;
                }
            EXPECT_LE(std::sqrt(err2 / std::max(ref2, 1e-30)), kBf16RelativeL2Bound) << "D=" << s.head_dim;
        }
}

// Factors equal to freq / llama3_freq rotate as llama3 scaling does (the two ways a Llama 3.1
// model can say the same thing), and differ from no factors at all.
TEST_P(RopeTest, FreqFactorsEqualTheirScaling) {
    RopeConfig scaled;
    scaled.head_dim = 64;
    scaled.base = 500000.0;
    scaled.scaling = RopeScaling::llama3;
    scaled.scaling_factor = 8.0;
    scaled.llama3_original_context = 64;
    RopeConfig factored;
    factored.head_dim = 64;
    factored.base = 500000.0;
    factored.freq_factors = llama31_factors(64, 500000.0);
    const std::size_t tokens = 40, heads = 2, stride = heads * 64;
    const auto keys = random_floats(stride * tokens, 9);
    std::vector<std::int64_t> positions(tokens);
    for (std::size_t t = 0; t < tokens; ++t) positions[t] = static_cast<std::int64_t>(t * 311);
    std::vector<float> a(keys.size()), b(keys.size()), plain(keys.size());
    ASSERT_TRUE(kvfuse::rope_rotate_copy(scaled, keys.data(), stride, a.data(), stride, tokens, heads, positions.data()).ok());
    ASSERT_TRUE(kvfuse::rope_rotate_copy(factored, keys.data(), stride, b.data(), stride, tokens, heads, positions.data()).ok());
    RopeConfig none = factored;
    none.freq_factors.clear();
    ASSERT_TRUE(kvfuse::rope_rotate_copy(none, keys.data(), stride, plain.data(), stride, tokens, heads, positions.data()).ok());
    double differs = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        // The factor is rounded to f32 (relative 6e-8), times angles up to ~12000 radians.
        ASSERT_NEAR(a[i], b[i], 2e-3) << i;
        differs = std::max(differs, std::fabs(static_cast<double>(plain[i]) - b[i]));
    }
    EXPECT_GT(differs, 0.1);
}

// The plan and table caches key on the factors' values: the same array rewritten between calls
// (positions in and beyond the per-position tables, and one span delta) must not reuse the
// previous tables.
TEST_P(RopeTest, CachedTablesFollowTheFactors) {
    const std::size_t heads = 2, stride = heads * 32, tokens = 5;
    std::vector<float> factors(16, 1.0f);
    kvfuse_rope_config c;
    kvfuse_rope_config_init(&c, 32);
    c.freq_factors = factors.data();
    const std::vector<std::int64_t> positions = {0, 7, 300, 40000, 40001};
    for (float value : {1.0f, 4.0f, 1.0f, 0.5f}) {
        std::fill(factors.begin(), factors.end(), value);
        factors[3] = 2.0f * value;
        const auto original = random_floats(stride * tokens, 13);
        std::vector<float> keys = original, span = original;
        ASSERT_EQ(kvfuse_rope_rotate(&c, KVFUSE_DTYPE_F32, keys.data(), tokens, heads, stride, positions.data()), KVFUSE_OK);
        ASSERT_EQ(kvfuse_rope_rotate_span(&c, KVFUSE_DTYPE_F32, span.data(), tokens, heads, stride, 999), KVFUSE_OK);
        std::vector<double> exact(original.size()), exact_span(original.size());
        for (std::size_t t = 0; t < tokens; ++t)
            for (std::size_t h = 0; h < heads; ++h) {
                const std::size_t at = t * stride + h * 32;
                kvfuse::reference::rope_rotate_head_exact(c, original.data() + at, positions[t], exact.data() + at);
                kvfuse::reference::rope_rotate_head_exact(c, original.data() + at, 999, exact_span.data() + at);
            }
        for (std::size_t i = 0; i < keys.size(); ++i) {
            ASSERT_NEAR(keys[i], exact[i], 8 * kF32Eps * 4) << "factor " << value << " i=" << i;
            ASSERT_NEAR(span[i], exact_span[i], 8 * kF32Eps * 4) << "factor " << value << " i=" << i;
        }
    }
}

// A V1 caller's struct ends before freq_factors: whatever lies after it is never read. Bad
// factors are refused with their index.
TEST_P(RopeTest, FreqFactorsVersionAndValidation) {
    struct {
        kvfuse_rope_config config;
    } padded;
    kvfuse_rope_config_init(&padded.config, 8);
    padded.config.freq_factors = reinterpret_cast<const float*>(std::uintptr_t{8});  // never dereferenced
    padded.config.struct_size = KVFUSE_ROPE_CONFIG_SIZE_V1;
    std::vector<float> keys = random_floats(8, 3), plain = keys;
    ASSERT_EQ(kvfuse_rope_rotate_span(&padded.config, KVFUSE_DTYPE_F32, keys.data(), 1, 1, 8, 77), KVFUSE_OK);
    kvfuse_rope_config v2;
    kvfuse_rope_config_init(&v2, 8);
    ASSERT_EQ(kvfuse_rope_rotate_span(&v2, KVFUSE_DTYPE_F32, plain.data(), 1, 1, 8, 77), KVFUSE_OK);
    EXPECT_EQ(keys, plain);

    for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        std::vector<float> factors = {1.0f, 2.0f, bad, 1.0f};
        v2.freq_factors = factors.data();
        const kvfuse_status status = kvfuse_rope_rotate_span(&v2, KVFUSE_DTYPE_F32, keys.data(), 1, 1, 8, 1);
        EXPECT_EQ(status, KVFUSE_ERROR_INVALID_ARGUMENT) << bad;
        EXPECT_NE(std::string(kvfuse_last_error()).find("freq_factors[2]"), std::string::npos)
            << kvfuse_last_error();
    }
    EXPECT_EQ(keys, plain);
}

TEST_P(RopeTest, RotatingBackReturnsTheInput) {
    for (RopePairing pairing : {RopePairing::neox, RopePairing::interleaved}) {
        const Shape s{128, 128, 8, 257, 0};
        const RopeConfig config = config_for(s, pairing);
        const std::size_t stride = s.heads * s.head_dim;
        const auto original = random_floats(stride * s.tokens, 11);
        auto deltas = random_deltas(s.tokens, 12);
        std::vector<float> keys = original;
        ASSERT_TRUE(kvfuse::rope_rotate(config, keys.data(), s.tokens, s.heads, stride, deltas.data()).ok());
        for (auto& d : deltas) d = -d;
        ASSERT_TRUE(kvfuse::rope_rotate(config, keys.data(), s.tokens, s.heads, stride, deltas.data()).ok());
        for (std::size_t i = 0; i < keys.size(); ++i) ASSERT_NEAR(keys[i], original[i], 16 * kF32Eps);

        std::vector<kvfuse::bf16> half(original.size());
        ASSERT_TRUE(kvfuse::to_bf16(original.data(), half.data(), half.size()).ok());
        const auto start = half;
        ASSERT_TRUE(kvfuse::rope_rotate_span(config, half.data(), s.tokens, s.heads, stride, 70000).ok());
        ASSERT_TRUE(kvfuse::rope_rotate_span(config, half.data(), s.tokens, s.heads, stride, -70000).ok());
        double err2 = 0, ref2 = 0;
        for (std::size_t i = 0; i < half.size(); ++i) {
            const double a = kvfuse::detail::bf16_bits_to_f32(half[i].bits);
            const double b = kvfuse::detail::bf16_bits_to_f32(start[i].bits);
            err2 += (a - b) * (a - b);
            ref2 += b * b;
        }
        EXPECT_LE(std::sqrt(err2 / ref2), 2 * kBf16RelativeL2Bound);
    }
}

// Rotating by a then by b is rotating by a + b (R(a)R(b) = R(a+b)), up to rounding.
TEST_P(RopeTest, RotationsCompose) {
    const Shape s{64, 64, 4, 40, 0};
    for (RopePairing pairing : {RopePairing::neox, RopePairing::interleaved}) {
        const RopeConfig config = config_for(s, pairing);
        const std::size_t stride = s.heads * s.head_dim;
        const auto original = random_floats(stride * s.tokens, 21);
        std::vector<float> twice = original, once = original;
        ASSERT_TRUE(kvfuse::rope_rotate_span(config, twice.data(), s.tokens, s.heads, stride, 1234).ok());
        ASSERT_TRUE(kvfuse::rope_rotate_span(config, twice.data(), s.tokens, s.heads, stride, 4321).ok());
        ASSERT_TRUE(kvfuse::rope_rotate_span(config, once.data(), s.tokens, s.heads, stride, 5555).ok());
        for (std::size_t i = 0; i < once.size(); ++i) ASSERT_NEAR(twice[i], once[i], 24 * kF32Eps);
    }
}

// Tables are cached per thread across calls: a call that changes only the base (or only the
// head count) with the same delta must not reuse the previous call's cos/sin.
TEST_P(RopeTest, CachedTablesFollowTheConfiguration) {
    RopeConfig a;
    a.head_dim = 64;
    RopeConfig b = a;
    b.base = 500000.0;
    for (std::size_t heads : {std::size_t{2}, std::size_t{3}}) {
        const std::size_t stride = heads * 64, tokens = 4;
        for (const RopeConfig* config : {&a, &b, &a}) {
            const auto original = random_floats(stride * tokens, 3);
            std::vector<float> keys = original;
            ASSERT_TRUE(kvfuse::rope_rotate_span(*config, keys.data(), tokens, heads, stride, 999).ok());
            const std::vector<std::int64_t> deltas(tokens, 999);
            const auto exact = exact_rotation(*config, original, stride, tokens, heads, deltas);
            for (std::size_t i = 0; i < keys.size(); ++i) ASSERT_NEAR(keys[i], exact[i], 8 * kF32Eps);
        }
    }
}

TEST_P(RopeTest, ZeroDeltaIsIdentityUpToRounding) {
    const Shape s{128, 128, 2, 9, 0};
    for (RopePairing pairing : {RopePairing::neox, RopePairing::interleaved}) {
        const RopeConfig config = config_for(s, pairing);
        const auto original = random_floats(s.heads * s.head_dim * s.tokens, 5);
        std::vector<float> keys = original;
        ASSERT_TRUE(kvfuse::rope_rotate_span(config, keys.data(), s.tokens, s.heads, s.heads * s.head_dim, 0).ok());
        EXPECT_EQ(keys, original);  // cos 0 = 1 and sin 0 = 0 exactly
    }
}

// NaN and Inf stay in their pair and never crash; every other pair is unaffected. D = 80: the
// NeoX half head (40 pairs) ends on a narrower vector on AVX-512, and element 36 lies there.
TEST_P(RopeTest, NanAndInfPropagateWithinTheirPair) {
    for (int head_dim : {64, 80})
        for (RopePairing pairing : {RopePairing::neox, RopePairing::interleaved})
            for (Dtype dtype : {Dtype::f32, Dtype::bf16}) {
                const Shape s{head_dim, head_dim, 2, 3, 0};
                const RopeConfig config = config_for(s, pairing);
                const std::size_t stride = s.heads * s.head_dim, dims = static_cast<std::size_t>(head_dim);
                auto keys = random_floats(stride * s.tokens, 9);
                const float nan = std::numeric_limits<float>::quiet_NaN();
                const float inf = std::numeric_limits<float>::infinity();
                const std::size_t poisoned_at[] = {5, stride + 36, 2 * stride + 1};
                keys[poisoned_at[0]] = nan;
                keys[poisoned_at[1]] = inf;
                keys[poisoned_at[2]] = -inf;
                auto partner = [&](std::size_t e) {
                    const std::size_t d = e % dims, base = e - d, half = dims / 2;
                    if (pairing == RopePairing::interleaved) return base + (d ^ 1);
                    return base + (d < half ? d + half : d - half);
                };
                std::vector<bool> poisoned(keys.size(), false);
                for (std::size_t e : poisoned_at) poisoned[e] = poisoned[partner(e)] = true;
                std::vector<float> out(keys.size());
                if (dtype == Dtype::f32) {
                    out = keys;
                    ASSERT_TRUE(kvfuse::rope_rotate_span(config, out.data(), s.tokens, s.heads, stride, 77).ok());
                } else {
                    std::vector<kvfuse::bf16> half(keys.size());
                    ASSERT_TRUE(kvfuse::to_bf16(keys.data(), half.data(), half.size()).ok());
                    ASSERT_TRUE(kvfuse::rope_rotate_span(config, half.data(), s.tokens, s.heads, stride, 77).ok());
                    ASSERT_TRUE(kvfuse::to_f32(half.data(), out.data(), out.size()).ok());
                }
                for (std::size_t e = 0; e < out.size(); ++e) {
                    if (poisoned[e])
                        EXPECT_FALSE(std::isfinite(out[e])) << "D " << head_dim << " element " << e;
                    else
                        EXPECT_TRUE(std::isfinite(out[e])) << "D " << head_dim << " element " << e;
                }
                EXPECT_TRUE(std::isnan(out[5]));
                EXPECT_TRUE(std::isnan(out[partner(5)]));
            }
}

// NeoX f32 with every dim rotating goes through a loop over a row's heads (and over runs of
// tokens with one delta) that keeps the tables in registers. On every SIMD ISA it must give the
// bits of the f32 formula the kernels share: cos/sin rounded once to f32, then
// x1*c - x2*s and x1*s + x2*c each as a product and one FMA. Half heads of 1 to 8 vectors and
// others (which take the per-head path), heads packed or apart, per-token deltas with runs and
// one delta, in place and copied, NaN and Inf. (The scalar ISA is the double reference.)
TEST_P(RopeTest, NeoxF32RowsMatchTheFmaFormulaBitForBit) {
    if (GetParam().isa == kvfuse::Isa::scalar) GTEST_SKIP() << "the scalar ISA rotates in double";
    std::uint32_t seed = 100;
    for (int head_dim : {16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 256, 34})
        for (std::size_t heads : {1u, 3u, 8u})
            for (std::size_t pad : {0u, 5u})
                for (bool per_token : {false, true}) {
                    const std::size_t tokens = 9;
                    const Shape s{head_dim, head_dim, heads, tokens, pad};
                    const RopeConfig config = config_for(s, RopePairing::neox);
                    const kvfuse_rope_config c = config.to_c();
                    const std::size_t dims = static_cast<std::size_t>(head_dim), half = dims / 2;
                    const std::size_t stride = heads * dims + pad, out_stride = heads * dims + 2 * pad + 1;
                    std::vector<float> keys = random_floats(stride * tokens, ++seed, 4.0f);
                    keys[3] = std::numeric_limits<float>::quiet_NaN();
                    keys[stride + half + 1] = std::numeric_limits<float>::infinity();
                    keys[keys.size() - 1 - pad] = -std::numeric_limits<float>::infinity();
                    std::vector<std::int64_t> deltas = random_deltas(tokens, seed);
                    if (!per_token) std::fill(deltas.begin(), deltas.end(), deltas[0]);
                    std::vector<float> in_place = keys, copied(out_stride * tokens, 7.0f);
                    if (per_token) {
                        ASSERT_TRUE(kvfuse::rope_rotate(config, in_place.data(), tokens, heads, stride, deltas.data()).ok());
                    } else {
                        ASSERT_TRUE(kvfuse::rope_rotate_span(config, in_place.data(), tokens, heads, stride, deltas[0]).ok());
                        ASSERT_TRUE(kvfuse::rope_rotate_span_copy(config, keys.data(), stride, copied.data(), out_stride,
                                                                  tokens, heads, deltas[0])
                                        .ok());
                    }
                    const auto same = [](float a, float b) {
                        return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof a) == 0;
                    };
                    for (std::size_t t = 0; t < tokens; ++t)
                        for (std::size_t i = 0; i < half; ++i) {
                            const double angle = static_cast<double>(deltas[t]) *
                                                 kvfuse::reference::rope_frequency(c, static_cast<int>(i));
                            const float cs = static_cast<float>(std::cos(angle)), sn = static_cast<float>(std::sin(angle));
                            for (std::size_t h = 0; h < heads; ++h) {
                                const std::size_t at = t * stride + h * dims, out_at = t * out_stride + h * dims;
                                const float x1 = keys[at + i], x2 = keys[at + half + i];
                                const float o1 = std::fma(x1, cs, -(x2 * sn)), o2 = std::fma(x1, sn, x2 * cs);
                                ASSERT_TRUE(same(in_place[at + i], o1) && same(in_place[at + half + i], o2))
                                    << "D " << head_dim << " heads " << heads << " pad " << pad << " t " << t << " h " << h
                                    << " pair " << i << ": " << in_place[at + i] << " vs " << o1;
                                if (!per_token)
                                    ASSERT_TRUE(same(copied[out_at + i], o1) && same(copied[out_at + half + i], o2))
                                        << "copy: D " << head_dim << " heads " << heads << " t " << t << " h " << h;
                            }
                        }
                    // Padding is never written.
                    for (std::size_t t = 0; t < tokens; ++t)
                        for (std::size_t p = heads * dims; p < stride; ++p)
                            ASSERT_TRUE(same(in_place[t * stride + p], keys[t * stride + p]));
                    if (!per_token)
                        for (std::size_t t = 0; t < tokens; ++t)
                            for (std::size_t p = heads * dims; p < out_stride; ++p) ASSERT_EQ(copied[t * out_stride + p], 7.0f);
                }
}

// bf16 in and out, every dim rotating: on every SIMD build each output is the f32 FMA formula
// of NeoxF32RowsMatchTheFmaFormulaBitForBit on the widened inputs, rounded to bf16 to nearest
// even (detail::f32_to_bf16_bits), both pairings, small heads (in-vector path) and large. The
// inputs include results that are subnormal (AVX512-BF16's vcvtne2ps2bf16 flushes those: the
// kernel must round them in integers), f32 results exactly halfway between two bf16 values, NaN
// and infinities.
TEST_P(RopeTest, Bf16RowsRoundTheFmaFormulaToNearestEven) {
    if (GetParam().isa == kvfuse::Isa::scalar) GTEST_SKIP() << "the scalar ISA rotates in double";
    std::uint32_t seed = 300;
    for (RopePairing pairing : {RopePairing::neox, RopePairing::interleaved})
        for (int head_dim : {8, 16, 64, 128, 34})
            for (std::size_t heads : {1u, 8u}) {
                const std::size_t tokens = 5, dims = static_cast<std::size_t>(head_dim), stride = heads * dims;
                const Shape s{head_dim, head_dim, heads, tokens, 0};
                const RopeConfig config = config_for(s, pairing);
                const kvfuse_rope_config c = config.to_c();
                std::vector<float> values = random_floats(stride * tokens, ++seed, 4.0f);
                std::mt19937 rng(seed);
                for (std::size_t i = 0; i < values.size(); ++i) {
                    if ((i / dims) % 3 == 1) values[i] *= 0x1p-130f;  // whole heads subnormal: inputs and results
                    if (i % 11 == 2) values[i] = std::ldexp(static_cast<float>(rng() % 256 + 128), -7);  // exact in bf16
                }
                values[2] = std::numeric_limits<float>::quiet_NaN();
                values[stride + 3] = std::numeric_limits<float>::infinity();
                std::vector<kvfuse::bf16> keys(values.size());
                ASSERT_TRUE(kvfuse::to_bf16(values.data(), keys.data(), values.size()).ok());
                std::vector<float> widened(values.size());
                ASSERT_TRUE(kvfuse::to_f32(keys.data(), widened.data(), widened.size()).ok());
                const std::int64_t delta = 1 + static_cast<std::int64_t>(rng() % 5000);
                std::vector<kvfuse::bf16> rotated = keys;
                ASSERT_TRUE(kvfuse::rope_rotate_span(config, rotated.data(), tokens, heads, stride, delta).ok());
                for (std::size_t t = 0; t < tokens; ++t)
                    for (std::size_t h = 0; h < heads; ++h)
                        for (std::size_t i = 0; i < dims / 2; ++i) {
                            const double angle = static_cast<double>(delta) * kvfuse::reference::rope_frequency(c, static_cast<int>(i));
                            const float cs = static_cast<float>(std::cos(angle)), sn = static_cast<float>(std::sin(angle));
                            const std::size_t at = t * stride + h * dims;
                            const std::size_t first = at + (pairing == RopePairing::neox ? i : 2 * i);
                            const std::size_t second = at + (pairing == RopePairing::neox ? dims / 2 + i : 2 * i + 1);
                            const float x1 = widened[first], x2 = widened[second];
                            const std::uint16_t o1 = kvfuse::detail::f32_to_bf16_bits(std::fma(x1, cs, -(x2 * sn)));
                            const std::uint16_t o2 = kvfuse::detail::f32_to_bf16_bits(std::fma(x1, sn, x2 * cs));
                            ASSERT_EQ(rotated[first].bits, o1) << "D " << head_dim << " heads " << heads << " t " << t << " h "
                                                               << h << " pair " << i << " x " << x1 << ", " << x2;
                            ASSERT_EQ(rotated[second].bits, o2) << "D " << head_dim << " heads " << heads << " t " << t
                                                                << " h " << h << " pair " << i;
                        }
            }
}

TEST_P(RopeTest, InvalidArgumentsAreRefused) {
    RopeConfig config;
    config.head_dim = 8;
    std::vector<float> keys(64, 1.0f);
    const std::vector<float> before = keys;
    const std::int64_t delta[8] = {};
    auto code = [](const kvfuse::Status& s) { return s.code(); };
    using kvfuse::StatusCode;

    RopeConfig odd = config;
    odd.rotary_dims = 7;
    EXPECT_EQ(code(kvfuse::rope_rotate(odd, keys.data(), 8, 1, 8, delta)), StatusCode::invalid_argument);
    RopeConfig too_many = config;
    too_many.rotary_dims = 10;
    EXPECT_EQ(code(kvfuse::rope_rotate(too_many, keys.data(), 8, 1, 8, delta)), StatusCode::invalid_argument);
    RopeConfig negative = config;
    negative.head_dim = -8;
    EXPECT_EQ(code(kvfuse::rope_rotate(negative, keys.data(), 8, 1, 8, delta)), StatusCode::invalid_argument);
    RopeConfig bad_base = config;
    bad_base.base = 0.5;
    EXPECT_EQ(code(kvfuse::rope_rotate(bad_base, keys.data(), 8, 1, 8, delta)), StatusCode::invalid_argument);
    RopeConfig bad_scale = config;
    bad_scale.scaling = RopeScaling::linear;
    bad_scale.scaling_factor = 0.0;
    EXPECT_EQ(code(kvfuse::rope_rotate(bad_scale, keys.data(), 8, 1, 8, delta)), StatusCode::invalid_argument);
    RopeConfig bad_llama3 = config;
    bad_llama3.scaling = RopeScaling::llama3;
    bad_llama3.llama3_high_freq_factor = 0.5;
    EXPECT_EQ(code(kvfuse::rope_rotate(bad_llama3, keys.data(), 8, 1, 8, delta)), StatusCode::invalid_argument);

    EXPECT_EQ(code(kvfuse::rope_rotate<float>(config, nullptr, 8, 1, 8, delta)), StatusCode::null_pointer);
    EXPECT_EQ(code(kvfuse::rope_rotate(config, keys.data(), 8, 1, 8, nullptr)), StatusCode::null_pointer);
    EXPECT_EQ(code(kvfuse::rope_rotate(config, keys.data(), 8, 0, 8, delta)), StatusCode::invalid_argument);
    EXPECT_EQ(code(kvfuse::rope_rotate(config, keys.data(), 8, 2, 8, delta)), StatusCode::invalid_argument);
    EXPECT_EQ(code(kvfuse::rope_rotate(config, keys.data(), SIZE_MAX / 2, 1, SIZE_MAX / 4, delta)),
              StatusCode::invalid_argument);
    // Overlapping copy, and in place with unequal strides.
    EXPECT_EQ(code(kvfuse::rope_rotate_span_copy(config, keys.data(), 8, keys.data() + 4, 8, 4, 1, 1)),
              StatusCode::invalid_argument);
    EXPECT_EQ(code(kvfuse::rope_rotate_span_copy(config, keys.data(), 8, keys.data(), 16, 4, 1, 1)),
              StatusCode::invalid_argument);
    EXPECT_EQ(kvfuse_rope_rotate_span(nullptr, KVFUSE_DTYPE_F32, keys.data(), 1, 1, 8, 1),
              KVFUSE_ERROR_NULL_POINTER);
    kvfuse_rope_config c = config.to_c();
    EXPECT_EQ(code(kvfuse::Status(kvfuse_rope_rotate_span(&c, static_cast<kvfuse_dtype>(9), keys.data(), 1, 1, 8, 1))),
              StatusCode::invalid_argument);
    EXPECT_EQ(keys, before);
    // Zero tokens is a valid no-op, even with null keys.
    EXPECT_TRUE(kvfuse::rope_rotate<float>(config, nullptr, 0, 1, 8, nullptr).ok());
    const kvfuse::Status detail = kvfuse::rope_rotate(odd, keys.data(), 8, 1, 8, delta);
    EXPECT_NE(detail.message().find("rotary_dims"), std::string::npos) << detail.message();
}

}  // namespace
