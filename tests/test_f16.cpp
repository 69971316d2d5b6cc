// The f16 KV type (KVFUSE_DTYPE_F16) on every ISA against reference/: the conversions bit for
// bit (every f16 value, every rounding boundary, NaN payloads, subnormals), RoPE, sparse
// attention, the quantizers and A3 relevance with f16 (and bf16) input, odd sizes, NaN / Inf /
// subnormal inputs.
//
// Bounds. RoPE: the kernel rotates in f32 and rounds once to f16; the reference rotates in
// double, rounds to f32 then to f16: the two differ by at most one f16 ulp of the result.
// Attention, quantizers, relevance: f16 input is widened exactly, so each is bit for bit the
// same kernel's answer on the widened f32 tensor, and within the f32 tests' bounds of the
// reference (which reads the same f16 values).
#include <bit>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "isa_test_support.h"
#include "reference/attention_reference.h"
#include "reference/f16_reference.h"
#include "reference/rope_reference.h"
#include "reference/score_reference.h"

namespace {

using kvfuse::testing::random_floats;


// f32 values to f16 through the reference, as the tests' inputs.
std::vector<kvfuse::f16> to_f16_reference(const std::vector<float>& values) {
    std::vector<kvfuse::f16> out(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) out[i].bits = kvfuse::reference::f32_to_f16(values[i]);
    return out;
}
std::vector<float> widened(const std::vector<kvfuse::f16>& values) {
    std::vector<float> out(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) out[i] = kvfuse::reference::f16_to_f32(values[i].bits);
    return out;
}

// One f16 ulp at magnitude |v| (2^-24 in the subnormal range).
double f16_ulp(double v) {
    const double a = std::fabs(v);
    return a < 0x1p-14 ? 0x1p-24 : std::ldexp(1.0, std::ilogb(a) - 10);
}

// ---- the scalar reference itself: known encodings -------------------------------------------

TEST(F16Reference, KnownValues) {
    using kvfuse::reference::f16_to_f32;
    using kvfuse::reference::f32_to_f16;
    EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
    EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
    EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
    EXPECT_EQ(f32_to_f16(65519.99f), 0x7bff);
    EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // the tie rounds to even: Inf
    EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
    EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
    EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);   // smallest subnormal
    EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);   // half of it: tie to even, 0
    EXPECT_EQ(f32_to_f16(0x1.8p-24f), 0x0002);  // 1.5 subnormal ulps: tie to even, 2
    EXPECT_EQ(f32_to_f16(0x1.0p-25f * 1.0000001f), 0x0001);
    EXPECT_EQ(f32_to_f16(0x1p-14f), 0x0400);  // smallest normal
    EXPECT_EQ(f32_to_f16(0x1.ff8p-15f), 0x03ff);  // largest subnormal
    EXPECT_EQ(f32_to_f16(0x1.ffcp-15f), 0x0400);  // halfway to the smallest normal: even
    EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
    EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3c00);  // tie between 1 and 1 + 2^-10: even
    EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
    EXPECT_EQ(f32_to_f16(std::bit_cast<float>(0x7fc00000u)), 0x7e00);  // the default quiet NaN
    EXPECT_EQ(f32_to_f16(std::bit_cast<float>(0xff800001u)), 0xfe00);  // signalling, payload below 10 bits: quieted
    EXPECT_EQ(f32_to_f16(std::bit_cast<float>(0x7fa02000u)), 0x7f01);  // payload's top bits kept, quieted
    EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
    EXPECT_EQ(f16_to_f32(0x0001), 0x1p-24f);
    EXPECT_EQ(f16_to_f32(0x83ff), -0x1.ff8p-15f);
    EXPECT_EQ(std::bit_cast<std::uint32_t>(f16_to_f32(0x7c00)), 0x7f800000u);
    EXPECT_EQ(std::bit_cast<std::uint32_t>(f16_to_f32(0x7d01)), 0x7fe02000u);  // signalling: quieted, payload kept
    EXPECT_EQ(std::bit_cast<std::uint32_t>(f16_to_f32(0xfe00)), 0xffc00000u);
    // Every non-NaN f16 survives the round trip; so does every quiet NaN.
    for (std::uint32_t h = 0; h < 65536; ++h) {
        const bool nan = (h & 0x7fff) > 0x7c00, quiet = (h & 0x200) != 0;
        if (nan && !quiet) continue;
        ASSERT_EQ(f32_to_f16(f16_to_f32(static_cast<std::uint16_t>(h))), h) << std::hex << h;
    }
}

// ---- per ISA --------------------------------------------------------------------------------

class F16Test : public kvfuse::testing::IsaTest {};
KVFUSE_INSTANTIATE_ISA_TESTS(F16Test);

// f32 inputs that probe every rounding decision: each f16 value widened, the midpoints between
// neighbours (ties) and one f32 ulp either side, the ranges' edges, NaN payloads, random bits.
std::vector<float> conversion_probes() {
    std::vector<float> out;
    for (std::uint32_t h = 0; h < 0x7c00; ++h) {
        const double lo = kvfuse::reference::f16_to_f32(static_cast<std::uint16_t>(h));
        const double hi = h + 1 < 0x7c00 ? kvfuse::reference::f16_to_f32(static_cast<std::uint16_t>(h + 1)) : 65536.0;
        const float mid = static_cast<float>((lo + hi) / 2);  // exact in f32
        for (float v : {static_cast<float>(lo), mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
            out.push_back(v);
            out.push_back(-v);
        }
    }
    for (std::uint32_t b : {0x7f800000u, 0xff800000u, 0x7f800001u, 0x7fc00000u, 0xffffffffu, 0x7fbfffffu, 0x7fa02000u,
                            0x00000001u, 0x80000001u, 0x33000000u, 0x33000001u, 0x477fe000u, 0x477ff000u, 0x477fefffu})
        out.push_back(std::bit_cast<float>(b));
    std::mt19937 rng(7);
    for (int i = 0; i < 200000; ++i) out.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(rng())));
    return out;
}

TEST_P(F16Test, ConversionsAreTheReferenceBitForBit) {
    const std::vector<float> probes = conversion_probes();
    // Offsets and odd counts: vector bodies, narrower tails and the scalar tail all run.
    for (std::size_t offset : {std::size_t{0}, std::size_t{3}}) {
        const std::size_t count = probes.size() - offset;
        std::vector<std::uint16_t> got(count + 1, 0x5555);
        ASSERT_EQ(kvfuse_f32_to_f16(probes.data() + offset, got.data() + 1, count), KVFUSE_OK);
        for (std::size_t i = 0; i < count; ++i)
            ASSERT_EQ(got[1 + i], kvfuse::reference::f32_to_f16(probes[offset + i]))
                << "f32 bits 0x" << std::hex << std::bit_cast<std::uint32_t>(probes[offset + i]);
        EXPECT_EQ(got[0], 0x5555);
    }
    std::vector<std::uint16_t> all(65536 + 5);
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::uint16_t>(i * 40503u);  // a permutation, then some
    for (std::size_t count : {all.size(), std::size_t{1}, std::size_t{7}, std::size_t{15}, std::size_t{17}, std::size_t{33}}) {
        std::vector<float> got(count);
        ASSERT_EQ(kvfuse_f16_to_f32(all.data(), got.data(), count), KVFUSE_OK);
        for (std::size_t i = 0; i < count; ++i)
            ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(kvfuse::reference::f16_to_f32(all[i]))) << "f16 0x" << std::hex << all[i];
    }
    // The C++ wrappers are the same calls.
    const float one = 1.5f;
    kvfuse::f16 h;
    ASSERT_TRUE(kvfuse::to_f16(&one, &h, 1).ok());
    EXPECT_EQ(h.bits, 0x3e00);
    float back = 0;
    ASSERT_TRUE(kvfuse::to_f32(&h, &back, 1).ok());
    EXPECT_EQ(back, 1.5f);
}

TEST_P(F16Test, ConversionArgumentsAreChecked) {
    std::uint16_t h[4] = {};
    float f[4] = {};
    EXPECT_EQ(kvfuse_f32_to_f16(nullptr, h, 1), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_f16_to_f32(h, nullptr, 1), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_f32_to_f16(nullptr, nullptr, 0), KVFUSE_OK);
    EXPECT_EQ(kvfuse_f16_to_f32(reinterpret_cast<const std::uint16_t*>(reinterpret_cast<const char*>(h) + 1), f, 1),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_f32_to_f16(f, h, SIZE_MAX / 2), KVFUSE_ERROR_INVALID_ARGUMENT);
}

// ---- RoPE -----------------------------------------------------------------------------------

struct RopeShape {
    int head_dim, rotary_dims;
    std::size_t heads, tokens, pad;
};

TEST_P(F16Test, RopeWithinOneUlpOfTheReference) {
    const RopeShape shapes[] = {{8, 8, 4, 1, 0},   {8, 8, 1, 7, 3},    {8, 4, 2, 5, 0},     {64, 64, 3, 33, 0},
                                {64, 32, 8, 17, 5}, {128, 128, 8, 129, 0}, {6, 6, 3, 11, 0},  {10, 6, 3, 9, 1},
                                {80, 80, 8, 37, 0}, {48, 48, 3, 19, 2},  {96, 80, 2, 13, 0}, {130, 130, 2, 5, 0}};
    std::uint32_t seed = 300;
    for (const RopeShape& s : shapes)
        for (kvfuse::RopePairing pairing : {kvfuse::RopePairing::neox, kvfuse::RopePairing::interleaved})
            for (bool copy : {false, true}) {
                kvfuse::RopeConfig config;
                config.head_dim = s.head_dim;
                config.rotary_dims = s.rotary_dims;
                config.pairing = pairing;
                const std::size_t stride = s.heads * s.head_dim + s.pad, dst_stride = copy ? stride + 3 : stride;
                std::vector<float> values = random_floats(stride * s.tokens, ++seed, 3.0f);
                // Subnormal and tiny inputs rotate like any other (flush-to-zero would break them).
                for (std::size_t i = 0; i < values.size(); i += 7) values[i] *= 0x1p-17f;
                const std::vector<kvfuse::f16> src = to_f16_reference(values);
                std::vector<std::int64_t> deltas(s.tokens);
                std::mt19937 rng(seed);
                for (auto& d : deltas) d = static_cast<std::int64_t>(rng() % 200000) - 100000;
                std::vector<kvfuse::f16> got(dst_stride * s.tokens + 1, kvfuse::f16{0x7e7e});
                std::vector<std::uint16_t> want(dst_stride * s.tokens, 0x7e7e);
                if (copy) {
                    ASSERT_TRUE(kvfuse::rope_rotate_copy(config, src.data(), stride, got.data() + 1, dst_stride, s.tokens,
                                                         s.heads, deltas.data())
                                    .ok());
                } else {
                    std::copy(src.begin(), src.end(), got.begin() + 1);
                    ASSERT_TRUE(kvfuse::rope_rotate(config, got.data() + 1, s.tokens, s.heads, stride, deltas.data()).ok());
                    for (std::size_t i = 0; i < src.size(); ++i) want[i] = src[i].bits;
                }
                kvfuse::reference::rope_rotate(config.to_c(), KVFUSE_DTYPE_F16, src.data(), stride, want.data(),
                                               dst_stride, s.tokens, s.heads, deltas.data(), 0);
                // The f32 rotation is within 8 f32 ulps of max|x| of the exact one (test_rope.cpp),
                // then both round to f16: one f16 ulp apart, plus that where the result is tiny.
                float max_abs = 0.0f;
                for (const kvfuse::f16& v : src) max_abs = std::max(max_abs, std::fabs(kvfuse::reference::f16_to_f32(v.bits)));
                for (std::size_t i = 0; i < want.size(); ++i) {
                    if (got[1 + i].bits == want[i]) continue;  // the padding (a NaN sentinel) compares by its bits
                    const float g = kvfuse::reference::f16_to_f32(got[1 + i].bits);
                    const float w = kvfuse::reference::f16_to_f32(want[i]);
                    ASSERT_LE(std::fabs(g - w), f16_ulp(w) + 8 * 0x1p-24 * max_abs)
                        << "D=" << s.head_dim << " rot=" << s.rotary_dims << " copy=" << copy << " at " << i << " got 0x"
                        << std::hex << got[1 + i].bits << " want 0x" << want[i];
                }
                EXPECT_EQ(got[0].bits, 0x7e7e);
            }
}

// NaN and Inf stay in their pair; subnormals and large values next to them are unaffected.
TEST_P(F16Test, RopeNanAndInfStayInTheirPair) {
    for (int head_dim : {64, 80})
        for (kvfuse::RopePairing pairing : {kvfuse::RopePairing::neox, kvfuse::RopePairing::interleaved}) {
            kvfuse::RopeConfig config;
            config.head_dim = head_dim;
            config.pairing = pairing;
            const std::size_t heads = 2, tokens = 3, stride = heads * head_dim, dims = static_cast<std::size_t>(head_dim);
            std::vector<kvfuse::f16> keys = to_f16_reference(random_floats(stride * tokens, 9));
            const std::size_t poisoned_at[] = {5, stride + 36, 2 * stride + 1};
            keys[poisoned_at[0]].bits = 0x7e01;  // NaN with a payload
            keys[poisoned_at[1]].bits = 0x7c00;  // +Inf
            keys[poisoned_at[2]].bits = 0xfc00;  // -Inf
            keys[7].bits = 0x0003;                // subnormals
            keys[stride + 2].bits = 0x83ff;
            auto partner = [&](std::size_t e) {
                const std::size_t d = e % dims, base = e - d, half = dims / 2;
                if (pairing == kvfuse::RopePairing::interleaved) return base + (d ^ 1);
                return base + (d < half ? d + half : d - half);
            };
            std::vector<bool> poisoned(keys.size(), false);
            for (std::size_t e : poisoned_at) poisoned[e] = poisoned[partner(e)] = true;
            std::vector<std::uint16_t> want(keys.size());
            kvfuse::reference::rope_rotate(config.to_c(), KVFUSE_DTYPE_F16, keys.data(), stride, want.data(), stride,
                                           tokens, heads, nullptr, 77);
            ASSERT_TRUE(kvfuse::rope_rotate_span(config, keys.data(), tokens, heads, stride, 77).ok());
            for (std::size_t e = 0; e < keys.size(); ++e) {
                const float got = kvfuse::reference::f16_to_f32(keys[e].bits);
                EXPECT_EQ(!std::isfinite(got), poisoned[e]) << "D " << head_dim << " element " << e;
                if (!poisoned[e]) {
                    EXPECT_LE(std::fabs(got - kvfuse::reference::f16_to_f32(want[e])),
                              f16_ulp(kvfuse::reference::f16_to_f32(want[e])) + 8 * 0x1p-24 * 4.0)
                        << e;
                }
            }
            EXPECT_TRUE(std::isnan(kvfuse::reference::f16_to_f32(keys[5].bits)));
            EXPECT_TRUE(std::isnan(kvfuse::reference::f16_to_f32(keys[partner(5)].bits)));
        }
}

// ---- attention ------------------------------------------------------------------------------

struct AttentionProblem {
    std::size_t rows, heads, kv_heads, head_dim, tokens, pad;
};

// One problem with f16 K/V: the answer is bit for bit the f32 kernel's on the widened K/V (the
// packed tiles hold the same floats) and within the attention tests' bound of the reference.
void check_attention(const AttentionProblem& p, std::uint32_t seed, std::vector<kvfuse::f16> k,
                     std::vector<kvfuse::f16> v) {
    const std::size_t q_stride = p.heads * p.head_dim + p.pad, kv_stride = p.kv_heads * p.head_dim + p.pad;
    const std::vector<float> q = random_floats(p.rows * q_stride, seed, 1.5f);
    std::vector<std::int64_t> positions(p.rows);
    std::mt19937 rng(seed);
    for (auto& x : positions) x = static_cast<std::int64_t>(rng() % p.tokens);
    if (p.rows > 1) positions[0] = static_cast<std::int64_t>(p.tokens - 1);
    // Both tensors one element past an aligned start.
    k.insert(k.begin(), kvfuse::f16{});
    v.insert(v.begin(), kvfuse::f16{});
    const std::vector<float> k32 = widened(k), v32 = widened(v);
    kvfuse::AttentionArgs a;
    a.queries = q.data();
    a.rows = p.rows;
    a.query_heads = p.heads;
    a.head_dim = p.head_dim;
    a.query_row_stride = q_stride;
    a.positions = positions.data();
    a.kv_tokens = p.tokens;
    a.kv_heads = p.kv_heads;
    a.kv_token_stride = kv_stride;
    a.scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
    a.out_row_stride = q_stride;
    std::vector<float> got(p.rows * q_stride, -7.0f), same(got), want(got);
    a.keys = k.data() + 1;
    a.values = v.data() + 1;
    a.kv_dtype = KVFUSE_DTYPE_F16;
    a.out = got.data();
    ASSERT_TRUE(kvfuse::sparse_attention(a).ok()) << kvfuse_last_error();
    kvfuse_attention_args f32 = a;
    f32.keys = k32.data() + 1;
    f32.values = v32.data() + 1;
    f32.kv_dtype = KVFUSE_DTYPE_F32;
    f32.out = same.data();
    ASSERT_TRUE(kvfuse::sparse_attention(f32).ok());
    kvfuse_attention_args ref = a;
    ref.out = want.data();
    kvfuse::reference::sparse_attention(ref);
    float max_v = 0.0f;
    for (float x : v32)
        if (std::isfinite(x)) max_v = std::max(max_v, std::fabs(x));
    for (std::size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(same[i])) << "f16 and widened f32 differ at " << i;
        if (std::isnan(want[i])) {
            ASSERT_TRUE(std::isnan(got[i])) << i;
        } else if (std::isinf(want[i])) {
            ASSERT_EQ(got[i], want[i]) << i;
        } else {
            ASSERT_NEAR(got[i], want[i], 2e-5 * (max_v + 1)) << "rows " << p.rows << " D " << p.head_dim << " at " << i;
        }
    }
}

TEST_P(F16Test, AttentionMatchesReferenceAndWidenedF32) {
    const AttentionProblem problems[] = {{1, 1, 1, 8, 1, 0},    {3, 4, 2, 8, 17, 1},   {7, 8, 2, 64, 131, 0},
                                         {5, 6, 3, 20, 77, 3},   {16, 8, 8, 128, 300, 0}, {9, 12, 4, 40, 257, 0},
                                         {4, 2, 1, 9, 33, 2},    {2, 4, 4, 3, 5, 0},      {33, 32, 8, 64, 1025, 0}};
    std::uint32_t seed = 500;
    for (const AttentionProblem& p : problems) {
        const std::size_t kv_stride = p.kv_heads * p.head_dim + p.pad;
        std::vector<float> kf = random_floats(p.tokens * kv_stride, ++seed, 1.5f);
        std::vector<float> vf = random_floats(p.tokens * kv_stride, ++seed, 2.0f);
        for (std::size_t i = 0; i < vf.size(); i += 5) vf[i] *= 0x1p-18f;  // subnormal values
        for (std::size_t i = 3; i < kf.size(); i += 11) kf[i] *= 0x1p-20f;  // and keys
        check_attention(p, ++seed, to_f16_reference(kf), to_f16_reference(vf));
    }
}

TEST_P(F16Test, AttentionNanAndInfFollowTheReference) {
    const AttentionProblem p{6, 4, 2, 24, 40, 0};
    const std::size_t kv_stride = p.kv_heads * p.head_dim;
    for (int which = 0; which < 4; ++which) {
        std::vector<kvfuse::f16> k = to_f16_reference(random_floats(p.tokens * kv_stride, 20 + which, 1.5f));
        std::vector<kvfuse::f16> v = to_f16_reference(random_floats(p.tokens * kv_stride, 30 + which, 2.0f));
        const std::size_t at = (13 + which) * kv_stride + 5;
        if (which == 0) k[at].bits = 0x7e00;  // NaN key: every row that sees it is NaN in that head
        if (which == 1) v[at].bits = 0xfd11;  // NaN value
        if (which == 2) v[at].bits = 0x7c00;  // Inf value
        if (which == 3) k[at].bits = 0x7bff;  // the largest f16: a huge score, finite softmax
        check_attention(p, 40 + which, k, v);
    }
}

// ---- quantizers -----------------------------------------------------------------------------

struct QuantizeShape {
    std::size_t tokens, heads, head_dim, pad;
};

template <class T>
void check_quantizers(kvfuse::Dtype dtype, const QuantizeShape& s, const std::vector<T>& x) {
    const std::size_t stride = s.heads * s.head_dim + s.pad, n = s.tokens * s.heads;
    const auto type = static_cast<kvfuse_dtype>(dtype);
    std::vector<float> x32(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) x32[i] = kvfuse::reference::element_as_f32(type, x.data(), i);
    for (int bits : {8, 4}) {
        const std::size_t head_bytes = bits == 8 ? s.head_dim : (s.head_dim + 1) / 2;
        std::vector<std::uint8_t> got(n * head_bytes), want(got.size()), same(got.size());
        std::vector<float> scales(n), want_scales(n), same_scales(n);
        std::vector<float> means(s.heads * s.head_dim), want_means(means.size()), same_means(means.size());
        const T* keys = x.data() + 1;
        if (bits == 8)
            ASSERT_TRUE(kvfuse::quantize_keys_i8(keys, s.tokens, s.heads, s.head_dim, stride,
                                                 reinterpret_cast<std::int8_t*>(got.data()), scales.data(), means.data())
                            .ok());
        else
            ASSERT_TRUE(kvfuse::quantize_keys_i4(keys, s.tokens, s.heads, s.head_dim, stride, got.data(), scales.data(),
                                                 means.data())
                            .ok());
        kvfuse::reference::quantize_keys(type, keys, s.tokens, s.heads, s.head_dim, stride, bits, want.data(),
                                         want_scales.data(), want_means.data());
        const float* keys32 = x32.data() + 1;
        if (bits == 8)
            ASSERT_TRUE(kvfuse::quantize_keys_i8(keys32, s.tokens, s.heads, s.head_dim, stride,
                                                 reinterpret_cast<std::int8_t*>(same.data()), same_scales.data(),
                                                 same_means.data())
                            .ok());
        else
            ASSERT_TRUE(kvfuse::quantize_keys_i4(keys32, s.tokens, s.heads, s.head_dim, stride, same.data(),
                                                 same_scales.data(), same_means.data())
                            .ok());
        ASSERT_EQ(got, want) << "bits " << bits << " D " << s.head_dim;
        ASSERT_EQ(got, same);
        for (std::size_t i = 0; i < n; ++i) {
            ASSERT_EQ(std::bit_cast<std::uint32_t>(scales[i]), std::bit_cast<std::uint32_t>(want_scales[i])) << i;
            ASSERT_EQ(std::bit_cast<std::uint32_t>(scales[i]), std::bit_cast<std::uint32_t>(same_scales[i])) << i;
        }
        for (std::size_t i = 0; i < means.size(); ++i) {
            if (std::isnan(want_means[i])) {
                ASSERT_TRUE(std::isnan(means[i]) && std::isnan(same_means[i])) << i;
                continue;
            }
            ASSERT_EQ(std::bit_cast<std::uint32_t>(means[i]), std::bit_cast<std::uint32_t>(want_means[i])) << i;
            ASSERT_EQ(std::bit_cast<std::uint32_t>(means[i]), std::bit_cast<std::uint32_t>(same_means[i])) << i;
        }
    }
    std::vector<std::int8_t> rows(n * s.head_dim), want_rows(rows.size()), same_rows(rows.size());
    std::vector<float> scales(n), want_scales(n), same_scales(n);
    ASSERT_TRUE(kvfuse::quantize_rows_i8(x.data() + 1, s.tokens, s.heads, s.head_dim, stride, rows.data(), scales.data()).ok());
    kvfuse::reference::quantize_rows_i8(type, x.data() + 1, s.tokens, s.heads, s.head_dim, stride, want_rows.data(),
                                        want_scales.data());
    ASSERT_TRUE(kvfuse::quantize_rows_i8(x32.data() + 1, s.tokens, s.heads, s.head_dim, stride, same_rows.data(),
                                         same_scales.data())
                    .ok());
    ASSERT_EQ(rows, want_rows);
    ASSERT_EQ(rows, same_rows);
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(std::bit_cast<std::uint32_t>(scales[i]), std::bit_cast<std::uint32_t>(want_scales[i])) << i;
}

std::vector<QuantizeShape> quantize_shapes() {
    return {{1, 1, 1, 0}, {3, 2, 7, 1}, {5, 1, 16, 0}, {17, 4, 33, 3}, {33, 8, 64, 0}, {9, 3, 128, 5}, {64, 8, 80, 0},
            {12, 4, 8, 0}, {7, 2, 40, 1},
            // Above the worker threshold (64 K values).
            {300, 8, 64, 0}};
}

TEST_P(F16Test, QuantizersFromF16AndBf16AreTheReference) {
    std::uint32_t seed = 700;
    for (const QuantizeShape& s : quantize_shapes()) {
        const std::size_t stride = s.heads * s.head_dim + s.pad;
        std::vector<float> values = random_floats(s.tokens * stride + 1, ++seed, 3.0f);
        for (std::size_t i = 0; i < values.size(); i += 3) values[i] += 0.75f;  // a mean to remove
        for (std::size_t i = 5; i < values.size(); i += 13) values[i] *= 0x1p-19f;  // f16 subnormals
        check_quantizers(kvfuse::Dtype::f16, s, to_f16_reference(values));
        std::vector<kvfuse::bf16> b(values.size());
        ASSERT_TRUE(kvfuse::to_bf16(values.data(), b.data(), b.size()).ok());
        check_quantizers(kvfuse::Dtype::bf16, s, b);
    }
}

TEST_P(F16Test, QuantizersWithNanInfAndSubnormalF16) {
    for (std::size_t head_dim : {40, 64, 128}) {
        const QuantizeShape s{12, 2, head_dim, 0};
        const std::size_t stride = s.heads * s.head_dim;
        std::vector<kvfuse::f16> x = to_f16_reference(random_floats(s.tokens * stride + 1, 77, 2.0f));
        x[1 + 3].bits = 0x7e00;                     // NaN
        x[1 + stride + head_dim + 1].bits = 0x7c00;  // +Inf (head 1 of token 1)
        x[1 + 2 * stride + 7].bits = 0xfd00;        // signalling NaN
        for (std::size_t d = 0; d < s.head_dim; ++d) x[1 + 5 * stride + d].bits = static_cast<std::uint16_t>(d % 4);  // subnormal head
        for (std::size_t d = 0; d < s.head_dim; ++d) x[1 + 6 * stride + d].bits = 0x8000;  // -0 head
        check_quantizers(kvfuse::Dtype::f16, s, x);
    }
}

TEST_P(F16Test, QuantizerArgumentsAreChecked) {
    std::vector<std::uint16_t> x(64, 0x3c00);
    std::vector<std::int8_t> out(64);
    std::vector<float> scales(8), means(64);
    EXPECT_EQ(kvfuse_quantize_keys_i8_typed(static_cast<kvfuse_dtype>(3), x.data(), 2, 2, 8, 16, out.data(),
                                            scales.data(), means.data()),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvfuse_last_error()).find("KVFUSE_DTYPE_F16"), std::string::npos) << kvfuse_last_error();
    const auto* odd = reinterpret_cast<const std::uint16_t*>(reinterpret_cast<const char*>(x.data()) + 1);
    EXPECT_EQ(kvfuse_quantize_rows_i8_typed(KVFUSE_DTYPE_F16, odd, 2, 2, 8, 16, out.data(), scales.data()),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_quantize_keys_i4_typed(KVFUSE_DTYPE_F16, nullptr, 2, 2, 8, 16,
                                            reinterpret_cast<std::uint8_t*>(out.data()), scales.data(), means.data()),
              KVFUSE_ERROR_NULL_POINTER);
    // The extent is checked in 2-byte elements: 32 f16 of stride 16 fit in x.
    EXPECT_EQ(kvfuse_quantize_rows_i8_typed(KVFUSE_DTYPE_F16, x.data(), 4, 2, 8, 16, out.data(), scales.data()), KVFUSE_OK);
}

// ---- A3 relevance with f16 / bf16 keys ------------------------------------------------------

struct RelevanceCase {
    std::size_t M, C, H, Hkv, D;
};

// The f32-path arguments of a case: its shape, the queries, keys of T (float, bf16 or f16, read
// in place) and the output.
template <class T>
kvfuse::RelevanceArgs relevance_args(const RelevanceCase& c, const float* queries, const T* keys, float* out) {
    kvfuse::RelevanceArgs a;
    a.question_rows = c.M;
    a.candidates = c.C;
    a.query_heads = c.H;
    a.kv_heads = c.Hkv;
    a.head_dim = c.D;
    a.queries_f32 = queries;
    kvfuse::set_relevance_keys(a, keys);
    a.out = out;
    return a;
}

TEST_P(F16Test, RelevanceFromF16AndBf16KeysScoresThemDirectly) {
    const RelevanceCase cases[] = {{1, 1, 1, 1, 8},  {3, 20, 2, 1, 8},   {7, 131, 8, 4, 64}, {5, 77, 4, 2, 20},
                                   {4, 40, 2, 1, 9}, {6, 33, 6, 3, 3},   {16, 513, 16, 2, 72}, {9, 70, 12, 4, 128},
                                   {3, 70, 4, 2, 40}, {2, 65, 4, 4, 97}};
    std::uint32_t seed = 900;
    for (const RelevanceCase& c : cases)
        for (kvfuse::Dtype dtype : {kvfuse::Dtype::f16, kvfuse::Dtype::bf16})
            for (bool smoothing : {false, true}) {
                std::vector<float> q = random_floats(c.M * c.H * c.D, ++seed, 1.0f);
                std::vector<float> k = random_floats(c.C * c.Hkv * c.D + 1, ++seed, 1.5f);
                for (std::size_t i = 2; i < k.size(); i += 9) k[i] *= 0x1p-18f;
                std::vector<std::uint16_t> k16(k.size());
                if (dtype == kvfuse::Dtype::bf16) {
                    ASSERT_EQ(kvfuse_f32_to_bf16(k.data(), k16.data(), k.size()), KVFUSE_OK);
                } else {
                    for (std::size_t i = 0; i < k.size(); ++i) k16[i] = kvfuse::reference::f32_to_f16(k[i]);
                }
                std::vector<float> k32(k.size());
                for (std::size_t i = 0; i < k.size(); ++i)
                    k32[i] = kvfuse::reference::element_as_f32(static_cast<kvfuse_dtype>(dtype), k16.data(), i);
                const std::size_t docs = c.C - c.M;
                std::vector<float> got(docs + 1, -1.0f), same(docs + 1, -1.0f), want(docs + 1, -1.0f);
                // 2-byte aligned only
                kvfuse::RelevanceArgs a = dtype == kvfuse::Dtype::bf16
                                              ? relevance_args(c, q.data(), reinterpret_cast<const kvfuse::bf16*>(k16.data() + 1), got.data())
                                              : relevance_args(c, q.data(), reinterpret_cast<const kvfuse::f16*>(k16.data() + 1), got.data());
                a.smoothing = smoothing;
                ASSERT_TRUE(kvfuse::a3_relevance(a).ok()) << kvfuse_last_error();
                kvfuse::RelevanceArgs f32 = a;
                f32.keys = nullptr;
                f32.keys_f32 = k32.data() + 1;
                f32.out = same.data();
                ASSERT_TRUE(kvfuse::a3_relevance(f32).ok());
                kvfuse::RelevanceArgs ref = a;
                ref.out = want.data();
                kvfuse::reference::a3_relevance(ref);
                for (std::size_t j = 0; j < docs; ++j) {
                    ASSERT_EQ(std::bit_cast<std::uint32_t>(got[j]), std::bit_cast<std::uint32_t>(same[j])) << "typed and widened f32 keys differ at " << j;
                    ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + want[j]))
                        << "M=" << c.M << " C=" << c.C << " D=" << c.D << " j=" << j;
                }
                EXPECT_EQ(got[docs], -1.0f);
            }
}

TEST_P(F16Test, RelevanceNanAndInfKeysFollowTheReference) {
    const RelevanceCase c{4, 60, 4, 2, 24};
    for (std::uint16_t poison : {std::uint16_t{0x7e00}, std::uint16_t{0x7c00}, std::uint16_t{0x0001}}) {
        const std::vector<float> q = random_floats(c.M * c.H * c.D, 5, 1.0f);
        std::vector<kvfuse::f16> k = to_f16_reference(random_floats(c.C * c.Hkv * c.D, 6, 1.5f));
        k[17 * c.Hkv * c.D + 3].bits = poison;
        std::vector<float> got(c.C - c.M), want(c.C - c.M);
        kvfuse::RelevanceArgs a = relevance_args(c, q.data(), k.data(), got.data());
        ASSERT_TRUE(kvfuse::a3_relevance(a).ok());
        kvfuse::RelevanceArgs ref = a;
        ref.out = want.data();
        kvfuse::reference::a3_relevance(ref);
        for (std::size_t j = 0; j < got.size(); ++j) {
            if (std::isnan(want[j]))
                ASSERT_TRUE(std::isnan(got[j])) << "poison 0x" << std::hex << poison << " j " << std::dec << j;
            else
                ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + want[j])) << "poison 0x" << std::hex << poison << " j " << j;
        }
    }
}

TEST_P(F16Test, RelevanceKeyArgumentsAreChecked) {
    const RelevanceCase c{2, 10, 2, 1, 8};
    std::vector<float> q(c.M * c.H * c.D, 0.5f), k32(c.C * c.Hkv * c.D, 0.25f), out(c.C);
    std::vector<std::uint16_t> k(c.C * c.Hkv * c.D + 1, 0x3c00);
    kvfuse::RelevanceArgs a = relevance_args(c, q.data(), reinterpret_cast<const kvfuse::f16*>(k.data()), out.data());
    ASSERT_EQ(kvfuse_a3_relevance(&a), KVFUSE_OK);
    kvfuse::RelevanceArgs both = a;
    both.keys_f32 = k32.data();
    EXPECT_EQ(kvfuse_a3_relevance(&both), KVFUSE_ERROR_INVALID_ARGUMENT);
    kvfuse::RelevanceArgs bad_type = a;
    bad_type.keys_dtype = static_cast<kvfuse_dtype>(7);
    EXPECT_EQ(kvfuse_a3_relevance(&bad_type), KVFUSE_ERROR_INVALID_ARGUMENT);
    kvfuse::RelevanceArgs misaligned = a;
    misaligned.keys = reinterpret_cast<const char*>(k.data()) + 1;
    EXPECT_EQ(kvfuse_a3_relevance(&misaligned), KVFUSE_ERROR_INVALID_ARGUMENT);
    kvfuse::RelevanceArgs no_queries = a;
    no_queries.queries_f32 = nullptr;
    EXPECT_EQ(kvfuse_a3_relevance(&no_queries), KVFUSE_ERROR_NULL_POINTER);
    kvfuse::RelevanceSegment segment;
    segment.keys = c.C;
    segment.queries_f32 = q.data();
    segment.keys_f32 = k32.data();
    kvfuse::RelevanceArgs with_segments = a;
    with_segments.segment_count = 1;
    with_segments.segments = &segment;
    EXPECT_EQ(kvfuse_a3_relevance(&with_segments), KVFUSE_ERROR_INVALID_ARGUMENT);
    // A V2 caller (no keys fields) still reads its f32 keys.
    kvfuse::RelevanceArgs v2 = a;
    v2.keys = nullptr;
    v2.keys_f32 = k32.data();
    v2.struct_size = KVFUSE_RELEVANCE_ARGS_SIZE_V2;
    EXPECT_EQ(kvfuse_a3_relevance(&v2), KVFUSE_OK);
}

// ---- what f16 is not ------------------------------------------------------------------------

TEST_P(F16Test, GemmWeightsAreNotF16) {
    std::vector<std::uint16_t> w(16, 0x3c00);
    kvfuse_packed_weights* packed = nullptr;
    EXPECT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F16, w.data(), 4, 4, 4, KVFUSE_DTYPE_F32, &packed),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvfuse_last_error()).find("KV-cache type"), std::string::npos) << kvfuse_last_error();
    EXPECT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F32, w.data(), 2, 2, 2, KVFUSE_DTYPE_F16, &packed),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(packed, nullptr);
}

TEST_P(F16Test, GatherAndScatterMoveF16RowsUnchanged) {
    std::vector<kvfuse::f16> src(5 * 6), dst(3 * 6), back(5 * 6);
    for (std::size_t i = 0; i < src.size(); ++i) src[i].bits = static_cast<std::uint16_t>(0x7c01 + i * 977);  // NaNs too
    const std::int64_t rows[3] = {4, 0, 2};
    ASSERT_TRUE(kvfuse::gather_rows(src.data(), 5, 6, rows, 3, dst.data(), 6, 6).ok());
    for (std::size_t i = 0; i < 3; ++i)
        for (std::size_t e = 0; e < 6; ++e) ASSERT_EQ(dst[i * 6 + e].bits, src[rows[i] * 6 + e].bits);
    ASSERT_TRUE(kvfuse::scatter_rows(dst.data(), 6, rows, 3, back.data(), 5, 6, 6).ok());
    for (std::int64_t r : rows)
        for (std::size_t e = 0; e < 6; ++e) ASSERT_EQ(back[r * 6 + e].bits, src[r * 6 + e].bits);
}

}  // namespace
