// The int8 / int4 quantizers (kernels/quantize/) on every kernel build against reference/, bit
// for bit: int8 values, packed int4 bytes, scales and means compared as bytes. Odd head
// dimensions (1, 3, 17: no full chunk; 130: chunks and a tail), odd token counts, token strides
// wider than the row, calls large enough to run on several workers (at 1, 3, 7 and the
// machine's thread count), values exactly halfway between integers (round half to even), NaN
// and infinities (NaN quantizes to +limit, an infinity makes its head's scale infinite: see
// kvfuse.h), all-zero heads and subnormal heads, quotients a few ulps from half integers (the
// kernels' multiply-by-reciprocal path and its fallback), scales above 2^126, and columns whose
// f32 sum overflows (summed again in double).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "isa_test_support.h"
#include "reference/score_reference.h"

namespace {

using kvfuse::testing::IsaTest;

struct Shape {
    std::size_t tokens, heads, head_dim, stride_pad;
    std::size_t stride() const { return heads * head_dim + stride_pad; }
};

std::string describe(const Shape& s) {
    return std::to_string(s.tokens) + " x " + std::to_string(s.heads) + " x " + std::to_string(s.head_dim) +
           " stride " + std::to_string(s.stride());
}

// Keys with a shared offset per column (what the mean removes) and a few large channels. The
// padding between rows holds NaN: a kernel that read it would spread NaN into the result.
std::vector<float> make_keys(const Shape& s, std::uint32_t seed) {
    std::vector<float> keys(s.tokens * s.stride(), std::numeric_limits<float>::quiet_NaN());
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    for (std::size_t t = 0; t < s.tokens; ++t)
        for (std::size_t e = 0; e < s.heads * s.head_dim; ++e)
            keys[t * s.stride() + e] = normal(rng) * (e % 13 == 5 ? 8.0f : 1.0f) + 0.25f * static_cast<float>(e % 7);
    return keys;
}

template <class T>
void expect_same_bytes(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i)
        if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
            ADD_FAILURE() << what << " differ first at " << i << " of " << got.size() << ": " << +got[i] << " vs reference "
                          << +want[i];
            return;
        }
}

// kvfuse_quantize_keys_i8 and _i4 against reference::quantize_keys.
void expect_keys_match(const std::vector<float>& keys, const Shape& s) {
    SCOPED_TRACE(describe(s));
    const std::size_t heads = s.tokens * s.heads, packed = (s.head_dim + 1) / 2;
    for (int bits : {8, 4}) {
        SCOPED_TRACE("int" + std::to_string(bits));
        const std::size_t out_bytes = heads * (bits == 8 ? s.head_dim : packed);
        // Poisoned outputs: every byte must be written.
        std::vector<std::uint8_t> out(out_bytes, 0xa5), want(out_bytes, 0x5a);
        std::vector<float> scales(heads, -1.0f), want_scales(heads, -2.0f);
        std::vector<float> means(s.heads * s.head_dim, -1.0f), want_means(s.heads * s.head_dim, -2.0f);
        kvfuse::reference::quantize_keys(KVFUSE_DTYPE_F32, keys.data(), s.tokens, s.heads, s.head_dim, s.stride(), bits, want.data(),
                                         want_scales.data(), want_means.data());
        const kvfuse_status status =
            bits == 8 ? kvfuse_quantize_keys_i8(keys.data(), s.tokens, s.heads, s.head_dim, s.stride(),
                                                reinterpret_cast<std::int8_t*>(out.data()), scales.data(), means.data())
                      : kvfuse_quantize_keys_i4(keys.data(), s.tokens, s.heads, s.head_dim, s.stride(), out.data(),
                                                scales.data(), means.data());
        ASSERT_EQ(status, KVFUSE_OK) << kvfuse_last_error();
        expect_same_bytes(means, want_means, "means");
        expect_same_bytes(scales, want_scales, "scales");
        expect_same_bytes(out, want, bits == 8 ? "int8 keys" : "packed int4 keys");
    }
}

// kvfuse_quantize_rows_i8 against reference::quantize_rows_i8.
void expect_rows_match(const std::vector<float>& x, const Shape& s) {
    SCOPED_TRACE(describe(s) + " rows");
    const std::size_t heads = s.tokens * s.heads;
    std::vector<std::int8_t> out(heads * s.head_dim, 0x55), want(heads * s.head_dim, 0x2a);
    std::vector<float> scales(heads, -1.0f), want_scales(heads, -2.0f);
    kvfuse::reference::quantize_rows_i8(KVFUSE_DTYPE_F32, x.data(), s.tokens, s.heads, s.head_dim, s.stride(), want.data(),
                                        want_scales.data());
    ASSERT_EQ(kvfuse_quantize_rows_i8(x.data(), s.tokens, s.heads, s.head_dim, s.stride(), out.data(), scales.data()),
              KVFUSE_OK)
        << kvfuse_last_error();
    expect_same_bytes(scales, want_scales, "row scales");
    expect_same_bytes(out, want, "int8 rows");
}

using QuantizeIsaTest = IsaTest;

TEST_P(QuantizeIsaTest, OddShapesMatchTheReference) {
    std::uint32_t seed = 1;
    for (std::size_t head_dim : {1, 3, 4, 8, 12, 17, 24, 32, 40, 48, 64, 80, 96, 128, 130})
        for (std::size_t heads : {1, 3, 8, 9})
            for (std::size_t tokens : {1, 2, 7, 33})
                for (std::size_t pad : {0, 5}) {
                    const Shape s{tokens, heads, head_dim, pad};
                    const std::vector<float> keys = make_keys(s, seed++);
                    expect_keys_match(keys, s);
                    expect_rows_match(keys, s);
                }
}

// Above the kernel's threshold for workers: the means split by columns (3 x 130 = 390: blocks
// of 64 and a partial one), the quantization by tokens, at odd thread counts.
TEST_P(QuantizeIsaTest, CallsOnSeveralWorkersMatchTheReference) {
    // 8 and 16 heads: split among 2 workers by heads (keys), 3 by tokens; head dim 8 a chunk of
    // two heads at a time.
    const Shape shapes[] = {{701, 3, 130, 3}, {1041, 8, 128, 0}, {257, 5, 17, 1}, {600, 16, 8, 1}, {300, 8, 64, 2}, {205, 8, 80, 0}};
    kvfuse::testing::at_thread_counts([&](int) {
        std::uint32_t seed = 100;
        for (const Shape& s : shapes) {
            const std::vector<float> keys = make_keys(s, seed++);
            expect_keys_match(keys, s);
            expect_rows_match(keys, s);
        }
    });
}

// Quotients exactly halfway between integers: scale is 1 when max|x| is the limit, so x / scale
// is x and lrint rounds 0.5 to 0, -2.5 to -2, 3.5 to 4.
TEST_P(QuantizeIsaTest, HalfwayValuesRoundToEven) {
    for (std::size_t head_dim : {16, 32, 64, 128, 131}) {
        const Shape s{3, 2, head_dim, 0};
        std::vector<float> x(s.tokens * s.stride());
        for (std::size_t i = 0; i < x.size(); ++i) {
            const float half = static_cast<float>(static_cast<int>(i % 13) - 6) + 0.5f;  // -5.5 .. 6.5
            x[i] = (i % s.head_dim == 0) ? 127.0f : half;
        }
        expect_rows_match(x, s);
        std::vector<std::int8_t> out(s.tokens * s.heads * head_dim);
        std::vector<float> scales(s.tokens * s.heads);
        ASSERT_EQ(kvfuse_quantize_rows_i8(x.data(), s.tokens, s.heads, head_dim, s.stride(), out.data(), scales.data()),
                  KVFUSE_OK);
        EXPECT_EQ(scales[0], 1.0f);
        for (std::size_t i = 1; i < 14; ++i) EXPECT_EQ(out[i], static_cast<std::int8_t>(std::lrint(x[i]))) << "at " << i;
        EXPECT_EQ(out[6], 0);   // 0.5
        EXPECT_EQ(out[3], -2);  // -2.5
        EXPECT_EQ(out[9], 4);   // 3.5
    }
    // int4: limit 7, so scale 1 again when max|x| is 7; keys: a column mean of zero needs
    // every token's value mirrored by another's.
    const Shape s{2, 1, 20, 0};
    std::vector<float> keys(s.tokens * s.stride());
    for (std::size_t d = 0; d < s.head_dim; ++d) {
        const float v = d == 0 ? 7.0f : static_cast<float>(static_cast<int>(d % 9) - 4) + 0.5f;
        keys[d] = v;
        keys[s.stride() + d] = -v;
    }
    expect_keys_match(keys, s);
}

// NaN and infinities anywhere must not crash and give the reference's bytes: a NaN value
// quantizes to +limit (its column's mean is NaN, so the whole column does); an infinity makes
// its head's scale infinite (finite values then quantize to 0, the infinity itself to +limit).
TEST_P(QuantizeIsaTest, NanAndInfinityMatchTheReference) {
    const float specials[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::quiet_NaN()};
    std::mt19937 rng(7);
    for (std::size_t head_dim : {3, 4, 8, 17, 32, 40, 64, 96, 128, 130}) {
        const Shape s{9, 5, head_dim, 2};
        for (float special : specials) {
            std::vector<float> keys = make_keys(s, static_cast<std::uint32_t>(head_dim));
            for (int n = 0; n < 4; ++n) {
                std::uniform_int_distribution<std::size_t> at(0, s.tokens * s.stride() - 1);
                std::size_t i = at(rng);
                if (i % s.stride() >= s.heads * s.head_dim) i -= s.stride_pad;
                keys[i] = special;
            }
            expect_keys_match(keys, s);
            expect_rows_match(keys, s);
        }
        // A head of NaN only: max|x| ignores NaN, so its scale is 0 and it quantizes to 0.
        std::vector<float> x = make_keys(s, 3);
        for (std::size_t d = 0; d < head_dim; ++d) x[s.stride() + head_dim + d] = std::numeric_limits<float>::quiet_NaN();
        expect_rows_match(x, s);
    }
}

// Finite keys so large that a column's f32 sum overflows (the f32 mean would be infinite): the
// column is summed again in double, so its mean stays finite and the head quantizes as usual.
TEST_P(QuantizeIsaTest, ColumnsWhoseF32SumOverflowsGetAFiniteMean) {
    for (std::size_t head_dim : {3, 64, 130}) {
        const Shape s{40, 2, head_dim, 1};
        std::vector<float> keys = make_keys(s, 11);
        // Column 1 of head 0 near FLT_MAX / 4 in every token: 40 of them overflow an f32 sum.
        for (std::size_t t = 0; t < s.tokens; ++t)
            keys[t * s.stride() + 1] = 8.5e37f * (1.0f + 0.001f * static_cast<float>(t % 5));
        std::vector<float> means(s.heads * s.head_dim), scales(s.tokens * s.heads);
        std::vector<std::int8_t> out(s.tokens * s.heads * s.head_dim);
        ASSERT_EQ(kvfuse_quantize_keys_i8(keys.data(), s.tokens, s.heads, s.head_dim, s.stride(), out.data(),
                                          scales.data(), means.data()),
                  KVFUSE_OK);
        EXPECT_TRUE(std::isfinite(means[1])) << means[1];
        EXPECT_NEAR(means[1] / 8.5e37f, 1.002, 1e-6);
        expect_keys_match(keys, s);
    }
}

// All-zero heads (scale 0, every value 0), keys equal in every token (all zero once the mean is
// removed), and subnormal heads (the scale underflows to 0 or is subnormal itself).
TEST_P(QuantizeIsaTest, ZeroAndSubnormalHeadsMatchTheReference) {
    for (std::size_t head_dim : {1, 4, 8, 17, 32, 40, 64, 96, 128, 130}) {
        const Shape s{5, 4, head_dim, 1};
        std::vector<float> x = make_keys(s, 11);
        for (std::size_t d = 0; d < head_dim; ++d) {
            x[0 * s.stride() + 1 * head_dim + d] = 0.0f;
            x[2 * s.stride() + 3 * head_dim + d] = (d % 2 ? -1.0f : 1.0f) * 1e-45f * static_cast<float>(d % 5);
            x[3 * s.stride() + 0 * head_dim + d] = (d % 3 ? -1.0f : 1.0f) * 3e-39f * static_cast<float>(d % 7 + 1);
        }
        expect_rows_match(x, s);
        expect_keys_match(x, s);
        std::vector<float> same(s.tokens * s.stride());
        for (std::size_t t = 0; t < s.tokens; ++t)
            for (std::size_t e = 0; e < s.heads * head_dim; ++e) same[t * s.stride() + e] = 0.75f * static_cast<float>(e % 5);
        expect_keys_match(same, s);
        std::vector<float> zeros(s.tokens * s.stride(), 0.0f);
        expect_keys_match(zeros, s);
        expect_rows_match(zeros, s);
    }
}

// The kernels multiply by 1 / scale and redo a head by division when a product lies within
// 2^-15 of a half integer (kernels/quantize/quantize-inl.h): quotients a few ulps either side of
// k + 1/2 at scales whose reciprocal is inexact, where x * (1 / scale) and x / scale round to
// different integers unless the kernel falls back; and scales above 2^126 (reciprocal
// subnormal), which must divide.
TEST_P(QuantizeIsaTest, QuotientsNextToHalfIntegersMatchTheReference) {
    std::mt19937 rng(23);
    std::uniform_real_distribution<float> unit(0.5f, 1.0f);
    std::uniform_int_distribution<int> ulps(-4, 4), step(-127, 126);
    for (std::size_t head_dim : {4, 8, 16, 32, 64, 80, 96, 128, 131}) {
        const Shape s{4, 6, head_dim, 0};
        std::vector<float> x(s.tokens * s.stride());
        for (std::size_t t = 0; t < s.tokens; ++t)
            for (std::size_t h = 0; h < s.heads; ++h) {
                float* head = x.data() + t * s.stride() + h * head_dim;
                // 127 * scale is the head's max, so scale is exactly max / 127 for most draws.
                const float max = unit(rng) * (h == 5 ? 0x1p127f : 3.0f);
                const float scale = max / 127.0f;
                head[0] = max;
                for (std::size_t d = 1; d < head_dim; ++d) {
                    float v = (static_cast<float>(step(rng)) + 0.5f) * scale;
                    for (int u = ulps(rng); u != 0; u += u > 0 ? -1 : 1)
                        v = std::nextafter(v, u > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity());
                    head[d] = std::fabs(v) < max ? v : max;
                }
            }
        expect_rows_match(x, s);
    }
    // Keys: the same quotients once each column's mean (zero here: mirrored tokens) is removed.
    const Shape s{2, 3, 128, 0};
    std::vector<float> keys(s.tokens * s.stride());
    for (std::size_t h = 0; h < s.heads; ++h) {
        const float max = unit(rng) * 5.0f, scale = max / 127.0f;
        for (std::size_t d = 0; d < s.head_dim; ++d) {
            float v = d == 0 ? max : (static_cast<float>(step(rng)) + 0.5f) * scale;
            if (d != 0)
                for (int u = ulps(rng); u != 0; u += u > 0 ? -1 : 1)
                    v = std::nextafter(v, u > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity());
            keys[h * s.head_dim + d] = std::fabs(v) < max ? v : max;
            keys[s.stride() + h * s.head_dim + d] = -keys[h * s.head_dim + d];
        }
    }
    expect_keys_match(keys, s);
}

KVFUSE_INSTANTIATE_ISA_TESTS(QuantizeIsaTest);

}  // namespace
