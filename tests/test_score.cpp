// A3 relevance on every ISA against reference/ (double), from f32 and from int8 inputs; the
// int8 quantizers; and how close int8 relevance stays to f32 relevance. Every integer dot
// scheme (kernels/score/score_dot.h) is forced on every SIMD ISA through the internal hook, so
// each key layout and offset correction is checked here even where the CPU lacks its
// instruction (then emulated); which scheme ran, and whether through its instruction, is
// checked and printed.
//
// Bound: relevances are sums of softmax probabilities (each in [0, 1]); f32 logits and a f32
// softmax keep each within 2e-4 * (1 + value) of the double reference for these sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdio>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "isa_test_support.h"
#include "kernels/score/score_dot.h"
#include "reference/score_reference.h"

namespace {

struct Case {
    std::size_t M, C, H, Hkv, D;
};

struct Inputs {
    std::vector<float> q, k;
    std::vector<std::int8_t> q8, k8;
    std::vector<std::uint8_t> k4;
    std::vector<float> ks4, means4;
    std::vector<float> qs, ks, means;
};

Inputs make(const Case& c, std::uint32_t seed, float outlier = 1.0f) {
    Inputs in;
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    in.q.resize(c.M * c.H * c.D);
    in.k.resize(c.C * c.Hkv * c.D);
    for (float& v : in.q) v = normal(rng);
    for (std::size_t i = 0; i < in.k.size(); ++i) {
        // A few channels much larger than the rest and a shared offset, as real keys have.
        const std::size_t d = i % c.D;
        in.k[i] = normal(rng) * (d % 17 == 3 ? outlier : 1.0f) + 0.5f;
    }
    in.q8.resize(in.q.size());
    in.k8.resize(in.k.size());
    in.qs.resize(c.M * c.H);
    in.ks.resize(c.C * c.Hkv);
    in.means.resize(c.Hkv * c.D);
    EXPECT_TRUE(kvfuse::quantize_rows_i8(in.q.data(), c.M, c.H, c.D, c.H * c.D, in.q8.data(), in.qs.data()).ok());
    EXPECT_TRUE(kvfuse::quantize_keys_i8(in.k.data(), c.C, c.Hkv, c.D, c.Hkv * c.D, in.k8.data(), in.ks.data(),
                                         in.means.data()).ok());
    in.k4.resize(c.C * c.Hkv * ((c.D + 1) / 2));
    in.ks4.resize(c.C * c.Hkv);
    in.means4.resize(c.Hkv * c.D);
    EXPECT_TRUE(kvfuse::quantize_keys_i4(in.k.data(), c.C, c.Hkv, c.D, c.Hkv * c.D, in.k4.data(), in.ks4.data(),
                                         in.means4.data()).ok());
    return in;
}

enum class Keys { f32, i8, i4 };

kvfuse_relevance_args args_for(const Case& c, const Inputs& in, Keys keys, bool smoothing, std::vector<float>& out) {
    out.assign(c.C - c.M, -1.0f);
    kvfuse_relevance_args a;
    kvfuse_relevance_args_init(&a);
    a.question_rows = c.M;
    a.candidates = c.C;
    a.query_heads = c.H;
    a.kv_heads = c.Hkv;
    a.head_dim = c.D;
    if (keys == Keys::f32) {
        a.queries_f32 = in.q.data();
        a.keys_f32 = in.k.data();
    } else {
        a.queries_i8 = in.q8.data();
        a.query_scales = in.qs.data();
        if (keys == Keys::i8) {
            a.keys_i8 = in.k8.data();
            a.key_scales = in.ks.data();
        } else {
            a.keys_i4 = in.k4.data();
            a.key_scales = in.ks4.data();
        }
    }
    a.smoothing = smoothing ? 1 : 0;
    a.out = out.data();
    return a;
}

kvfuse_relevance_args args_for(const Case& c, const Inputs& in, bool int8, bool smoothing, std::vector<float>& out) {
    return args_for(c, in, int8 ? Keys::i8 : Keys::f32, smoothing, out);
}

class ScoreTest : public kvfuse::testing::IsaTest {
   protected:
    void TearDown() override {
        kvfuse::detail::force_score_dot(kvfuse::detail::ScoreDot::automatic);
        IsaTest::TearDown();
    }
};
KVFUSE_INSTANTIATE_ISA_TESTS(ScoreTest);

using kvfuse::detail::ScoreDot;

// The schemes a test can force for these keys (the s16-sum one exists for int4 only).
std::vector<ScoreDot> dot_schemes(Keys keys) {
    std::vector<ScoreDot> dots = {ScoreDot::pairs_s16, ScoreDot::quads_u8s8, ScoreDot::quads_s8s8};
    if (keys == Keys::i4) dots.push_back(ScoreDot::quads_u8s8_s16);
    return dots;
}

// Runs the relevance with `dot` forced and checks that it is the scheme that ran.
kvfuse::Status relevance_with(ScoreDot dot, const kvfuse_relevance_args& args) {
    kvfuse::detail::force_score_dot(dot);
    kvfuse::detail::record_score_dot({});
    const kvfuse::Status status = kvfuse::a3_relevance(args);
    EXPECT_STREQ(kvfuse::detail::score_dot_name(kvfuse::detail::last_score_dot().dot), kvfuse::detail::score_dot_name(dot));
    return status;
}

// The scheme each kernel build runs by itself: one instruction per four dimensions in the
// variant builds (vpdpbusd: avx2_vnni with AVX-VNNI, avx512_vnni with AVX512-VNNI; sdot:
// neon_dotprod), which the dispatch registers only where the CPU has the instruction; in the
// plain x86 builds, for int4 the s16 sums of pmaddubsw, else pmaddwd pairs; on plain NEON pairs,
// emulated.
kvfuse::detail::ScoreDotUsed expected_best_dot(const kvfuse::testing::KernelBuild& build, Keys keys) {
    switch (build.isa) {
        case kvfuse::Isa::avx2:
        case kvfuse::Isa::avx512:
            // (a build of other variants only, e.g. avx512_vbmi2 on a CPU without VNNI, is not)
            if (build.variant && build.name.find("vnni") != std::string::npos) return {ScoreDot::quads_u8s8, true};
            return {keys == Keys::i4 ? ScoreDot::quads_u8s8_s16 : ScoreDot::pairs_s16, true};
        case kvfuse::Isa::neon:
            if (build.variant) return {ScoreDot::quads_s8s8, true};
            return {ScoreDot::pairs_s16, false};
        default:
            return {};  // scalar: the reference, no scheme
    }
}

// The variant build is the one the dispatch picks exactly where the CPU has its instruction.
TEST_P(ScoreTest, VariantBuildIsChosenWhereTheCpuHasItsInstruction) {
    kvfuse_cpu_features cpu;
    kvfuse_cpu_features_init(&cpu);
    kvfuse_get_cpu_features(&cpu);
    const kvfuse::testing::KernelBuild& build = GetParam();
    const bool cpu_has = build.isa == kvfuse::Isa::avx2     ? cpu.avx_vnni != 0
                         : build.isa == kvfuse::Isa::avx512 ? cpu.avx512_vnni != 0 || cpu.avx512_bf16 != 0 || cpu.avx512_vbmi2 != 0
                         : build.isa == kvfuse::Isa::neon   ? cpu.arm_dotprod != 0
                                                            : false;
    if (build.variant) {
        EXPECT_TRUE(cpu_has) << build.name << " listed on a CPU without its instruction";
    }
    bool has_variant = false;
    for (const auto& other : kvfuse::testing::runnable_kernel_builds())
        has_variant = has_variant || (other.isa == build.isa && other.variant);
    // Forcing the ISA by its public name runs the variant wherever there is one.
    kvfuse::reset_isa();
    kvfuse::ScopedIsa scoped(build.isa);
    ASSERT_TRUE(scoped.status().ok());
    EXPECT_EQ(std::string(kvfuse::detail::active_kernel_build()).find('_') != std::string::npos, has_variant);
}

TEST_P(ScoreTest, MatchesReferenceFromF32AndInt8) {
    const Case cases[] = {{1, 1, 1, 1, 8},     {3, 20, 2, 1, 8},    {7, 131, 8, 4, 64}, {32, 300, 8, 8, 128},
                          {5, 77, 4, 2, 20},    {16, 513, 16, 2, 72}, {4, 40, 2, 1, 9},   {6, 33, 6, 3, 3},
                          {9, 70, 12, 4, 128},
                          // Head dims whose lanes end in a partial layout block (masked loads):
                          {3, 70, 4, 2, 40},    {5, 66, 8, 2, 80},    {2, 65, 4, 4, 96},  {3, 67, 2, 1, 33},
                          // Small heads whose tile stays in registers (at most 4 lanes), a KV
                          // head's rows not a whole number of register blocks, groups of 8 and 3:
                          {5, 70, 16, 2, 8},    {7, 90, 12, 4, 16},   {3, 41, 6, 2, 5}};
    std::uint32_t seed = 1;
    for (const Case& c : cases)
        for (Keys keys : {Keys::f32, Keys::i8, Keys::i4})
            for (bool smoothing : {false, true}) {
                const Inputs in = make(c, ++seed);
                std::vector<float> got, want;
                ASSERT_TRUE(kvfuse::a3_relevance(args_for(c, in, keys, smoothing, got)).ok());
                const kvfuse_relevance_args ref = args_for(c, in, keys, smoothing, want);
                kvfuse::reference::a3_relevance(ref);
                for (std::size_t j = 0; j < got.size(); ++j)
                    ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + want[j]))
                        << "M=" << c.M << " C=" << c.C << " H=" << c.H << " D=" << c.D
                        << " keys=" << static_cast<int>(keys) << " j=" << j;
                // Each question row's probabilities sum to 1, so without smoothing the document
                // sums can only reach M (and each row sees at least the documents).
                if (!smoothing) {
                    const double total = std::accumulate(got.begin(), got.end(), 0.0);
                    EXPECT_LE(total, static_cast<double>(c.M) + 1e-3);
                }
            }
}

TEST_P(ScoreTest, RunsTheBestDotOfThisCpu) {
    const Case c{5, 77, 4, 2, 20};
    const Inputs in = make(c, 11);
    for (Keys keys : {Keys::i8, Keys::i4}) {
        std::vector<float> got;
        kvfuse::detail::record_score_dot({});
        ASSERT_TRUE(kvfuse::a3_relevance(args_for(c, in, keys, false, got)).ok());
        const auto used = kvfuse::detail::last_score_dot(), want = expected_best_dot(GetParam(), keys);
        std::printf("%s %s keys: %s\n", kvfuse::isa_name(GetParam()), keys == Keys::i4 ? "int4" : "int8",
                    used.dot == ScoreDot::automatic ? "the reference (no scheme)"
                                                    : (std::string(kvfuse::detail::score_dot_name(used.dot)) +
                                                       (used.hardware ? " (instruction)" : " (emulated)")).c_str());
        EXPECT_STREQ(kvfuse::detail::score_dot_name(used.dot), kvfuse::detail::score_dot_name(want.dot));
        EXPECT_EQ(used.hardware, want.hardware);
        // What the public API reports is what the call ran.
        kvfuse::RelevanceDotSchemes reported;
        ASSERT_TRUE(kvfuse::relevance_dot_schemes(reported).ok());
        EXPECT_EQ(keys == Keys::i4 ? reported.int4_keys : reported.int8_keys,
                  used.dot == ScoreDot::automatic ? std::string("reference") : kvfuse::detail::score_dot_name(used.dot));
    }
}

// Every scheme forced on every SIMD ISA: odd head dims (partial pairs and quads), several s16
// chunks of pmaddubsw (D = 128: 32 quads), GQA groups, row-block remainders.
TEST_P(ScoreTest, EveryDotSchemeMatchesReference) {
    if (GetParam() == kvfuse::Isa::scalar) GTEST_SKIP() << "the scalar ISA is the reference";
    const Case cases[] = {{1, 2, 1, 1, 8}, {3, 20, 2, 1, 8},    {7, 131, 8, 4, 64}, {5, 77, 4, 2, 20},
                          {4, 40, 2, 1, 9}, {6, 33, 6, 3, 3},    {9, 70, 12, 4, 128}, {3, 45, 4, 2, 5},
                          {2, 38, 2, 2, 7}, {16, 100, 16, 2, 72}, {4, 50, 4, 1, 130},
                          // Lanes ending in a partial layout block (masked loads), every scheme:
                          {3, 70, 4, 2, 40}, {5, 66, 8, 2, 80},   {2, 65, 4, 4, 96},  {3, 67, 2, 1, 33}, {2, 41, 2, 1, 97}};
    std::uint32_t seed = 100;
    for (const Case& c : cases)
        for (Keys keys : {Keys::i8, Keys::i4})
            for (ScoreDot dot : dot_schemes(keys)) {
                const Inputs in = make(c, ++seed);
                std::vector<float> got, want;
                ASSERT_TRUE(relevance_with(dot, args_for(c, in, keys, true, got)).ok());
                kvfuse::reference::a3_relevance(args_for(c, in, keys, true, want));
                for (std::size_t j = 0; j < got.size(); ++j)
                    ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + want[j]))
                        << kvfuse::detail::score_dot_name(dot) << " M=" << c.M << " C=" << c.C << " H=" << c.H
                        << " D=" << c.D << " keys=" << static_cast<int>(keys) << " j=" << j;
            }
}

// Scales around `base` (0.5x to 1.5x) that differ from one (row or token, head) to the next.
void distinct_scales(std::vector<float>& scales, float base) {
    for (std::size_t i = 0; i < scales.size(); ++i) scales[i] = base * (0.5f + static_cast<float>((i * 7) % 11) / 10.0f);
}

// One bit per (token, element), well mixed, so that every token's key is its own.
bool key_bit(std::size_t token, std::size_t element) {
    std::uint64_t x = (static_cast<std::uint64_t>(token) << 32) ^ element ^ 0x9e3779b97f4a7c15ull;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (x & 1) != 0;
}

// The largest sums each scheme must hold exactly: queries all -128, all 127 or mixed, against
// keys at both ends (int8 -128/127, int4 -8/7) that differ from token to token (identical keys
// would give a uniform softmax, blind to any error), including the worst case of the s16 sums
// (k + 8 = 15 against q = -128 in every dimension of a chunk of pmaddubsw steps).
TEST_P(ScoreTest, EveryDotSchemeIsExactAtTheExtremes) {
    if (GetParam() == kvfuse::Isa::scalar) GTEST_SKIP() << "the scalar ISA is the reference";
    const Case c{3, 50, 4, 2, 128};
    const std::size_t per_token8 = c.Hkv * c.D, per_token4 = c.Hkv * ((c.D + 1) / 2);
    for (int pattern = 0; pattern < 3; ++pattern) {
        Inputs in = make(c, 31 + static_cast<std::uint32_t>(pattern));
        for (std::size_t i = 0; i < in.q8.size(); ++i)
            in.q8[i] = pattern == 0 ? (i % 3 == 0 ? -128 : (i % 3 == 1 ? 127 : -127)) : pattern == 1 ? -128 : 127;
        const std::int8_t ends8[] = {127, -128, 127, 0};
        for (std::size_t i = 0; i < in.k8.size(); ++i) {
            const std::size_t t = i / per_token8;
            in.k8[i] = t % 5 == 4 ? (i % 2 == 0 ? -128 : 127) : ends8[t % 4];
        }
        const std::uint8_t ends4[] = {0x77, 0x88, 0x77, 0x00};
        for (std::size_t i = 0; i < in.k4.size(); ++i) {
            const std::size_t t = i / per_token4;
            in.k4[i] = t % 5 == 4 ? static_cast<std::uint8_t>(i % 2 == 0 ? 0x88 : 0x7F) : ends4[t % 4];
        }
        // Scales that keep the logits a few units apart: large enough to see an error of one
        // s16 wrap-around, small enough that the softmax does not saturate. They differ from
        // token to token and head to head: with uniform key scales a wrong offset correction
        // (k + 128 or k + 8 times the query sum) shifts every logit of a row by the same amount
        // and the softmax cancels it.
        distinct_scales(in.qs, 1e-3f);
        distinct_scales(in.ks, 5e-3f);
        distinct_scales(in.ks4, 8e-2f);
        for (Keys keys : {Keys::i8, Keys::i4})
            for (ScoreDot dot : dot_schemes(keys)) {
                std::vector<float> got, want;
                ASSERT_TRUE(relevance_with(dot, args_for(c, in, keys, false, got)).ok());
                kvfuse::reference::a3_relevance(args_for(c, in, keys, false, want));
                for (std::size_t j = 0; j < got.size(); ++j)
                    ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + want[j]))
                        << kvfuse::detail::score_dot_name(dot) << " pattern " << pattern << " keys=" << static_cast<int>(keys)
                        << " j=" << j;
            }
    }
}

// Quantization is a round trip within half a step per element, after the per-head mean.
TEST_P(ScoreTest, QuantizersRoundTrip) {
    const Case c{4, 50, 4, 2, 64};
    const Inputs in = make(c, 77, 30.0f);
    for (std::size_t t = 0; t < c.C; ++t)
        for (std::size_t h = 0; h < c.Hkv; ++h)
            for (std::size_t d = 0; d < c.D; ++d) {
                const std::size_t at = (t * c.Hkv + h) * c.D + d;
                const float back = in.k8[at] * in.ks[t * c.Hkv + h] + in.means[h * c.D + d];
                ASSERT_NEAR(back, in.k[at], 0.5f * in.ks[t * c.Hkv + h] + 1e-5f);
            }
    for (std::size_t i = 0; i < in.q.size(); ++i) ASSERT_NEAR(in.q8[i] * in.qs[i / c.D], in.q[i], 0.5f * in.qs[i / c.D] + 1e-6f);
    // Mean subtraction is exact for the relevance: f32 relevance of keys minus their per-head
    // mean equals that of the original keys (each row's logits shift by one constant).
    std::vector<float> centred = in.k;
    for (std::size_t t = 0; t < c.C; ++t)
        for (std::size_t e = 0; e < c.Hkv * c.D; ++e) centred[t * c.Hkv * c.D + e] -= in.means[e];
    Inputs shifted = in;
    shifted.k = centred;
    std::vector<float> a, b;
    ASSERT_TRUE(kvfuse::a3_relevance(args_for(c, in, false, false, a)).ok());
    ASSERT_TRUE(kvfuse::a3_relevance(args_for(c, shifted, false, false, b)).ok());
    for (std::size_t j = 0; j < a.size(); ++j) EXPECT_NEAR(a[j], b[j], 2e-4);
}

// Quantized relevance picks nearly the same top 15 % as f32 relevance, even with outlier
// channels 20x the rest: set overlap and Spearman rank correlation (printed; `kvfuse
// score-accuracy` measures the same at the benchmark's head shape and on the bundled model's
// keys, docs/RESULTS.md). The bounds guard against regressions, with room below what was measured.
double spearman(const std::vector<float>& a, const std::vector<float>& b) {
    auto ranks = [](const std::vector<float>& x) {
        std::vector<std::size_t> idx(x.size());
        std::iota(idx.begin(), idx.end(), 0);
        std::sort(idx.begin(), idx.end(), [&](std::size_t p, std::size_t q) { return x[p] < x[q]; });
        std::vector<double> r(x.size());
        for (std::size_t i = 0; i < idx.size(); ++i) r[idx[i]] = static_cast<double>(i);
        return r;
    };
    const auto ra = ranks(a), rb = ranks(b);
    double d2 = 0;
    for (std::size_t i = 0; i < ra.size(); ++i) d2 += (ra[i] - rb[i]) * (ra[i] - rb[i]);
    const double n = static_cast<double>(ra.size());
    return 1.0 - 6.0 * d2 / (n * (n * n - 1.0));
}

double top_overlap(const std::vector<float>& a, const std::vector<float>& b, double fraction) {
    const std::size_t k = static_cast<std::size_t>(static_cast<double>(a.size()) * fraction);
    auto top = [&](const std::vector<float>& s) {
        std::vector<std::size_t> idx(s.size());
        std::iota(idx.begin(), idx.end(), 0);
        std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                          [&](std::size_t x, std::size_t y) { return s[x] > s[y]; });
        return std::set<std::size_t>(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k));
    };
    const auto ta = top(a), tb = top(b);
    std::size_t common = 0;
    for (auto x : ta) common += tb.count(x);
    return static_cast<double>(common) / static_cast<double>(k);
}

TEST_P(ScoreTest, QuantizedSelectionAgreesWithF32) {
    const Case c{32, 2000, 8, 2, 64};
    for (float outlier : {1.0f, 20.0f}) {
        const Inputs in = make(c, 5, outlier);
        std::vector<float> f32, i8, i4;
        ASSERT_TRUE(kvfuse::a3_relevance(args_for(c, in, Keys::f32, true, f32)).ok());
        ASSERT_TRUE(kvfuse::a3_relevance(args_for(c, in, Keys::i8, true, i8)).ok());
        ASSERT_TRUE(kvfuse::a3_relevance(args_for(c, in, Keys::i4, true, i4)).ok());
        const double o8 = top_overlap(f32, i8, 0.15), o4 = top_overlap(f32, i4, 0.15);
        const double r8 = spearman(f32, i8), r4 = spearman(f32, i4);
        std::printf("outlier x%.0f: top-15%% overlap int8 %.3f int4 %.3f; Spearman int8 %.4f int4 %.4f\n", outlier, o8, o4,
                    r8, r4);
        EXPECT_GE(o8, 0.9);
        EXPECT_GE(r8, 0.95);
        EXPECT_GE(o4, 0.7);
        EXPECT_GE(r4, 0.85);
    }
}

// Integer dots are exact for every int8 value, -128 included (no s16 saturation or wrap), and
// for every int4 nibble, through the scheme each build runs by itself: queries at the extremes
// against keys made only of -128 and 127 (int4: -8 and 7), each token's its own mix of the two
// (all -128 and all 127 among them), with scales that differ per token and head, so that
// every logit of a row differs and a dot that wrapped or saturated changes the relevance.
TEST_P(ScoreTest, ExtremeIntegerValuesAreExact) {
    const Case c{3, 50, 4, 2, 128};
    Inputs in = make(c, 21);
    // Question rows all -128 (two -128 x -128 products fill a pmaddwd pair: 32768, one past
    // s16), all 127, and mixed.
    const std::size_t per_row = c.H * c.D;
    for (std::size_t i = 0; i < in.q8.size(); ++i) {
        const std::size_t m = i / per_row;
        in.q8[i] = m == 0 ? -128 : m == 1 ? 127 : (i % 3 == 0 ? -128 : (i % 3 == 1 ? 127 : -127));
    }
    const std::size_t per_token8 = c.Hkv * c.D, per_token4 = c.Hkv * ((c.D + 1) / 2);
    for (std::size_t i = 0; i < in.k8.size(); ++i) {
        const std::size_t t = i / per_token8, e = i % per_token8;
        const bool high = t == 0 ? false : t == 1 ? true : key_bit(t, e);
        in.k8[i] = high ? 127 : -128;
    }
    for (std::size_t i = 0; i < in.k4.size(); ++i) {
        const std::size_t t = i / per_token4, e = i % per_token4;
        const bool low_high = t == 0 ? false : t == 1 ? true : key_bit(t, 2 * e);
        const bool high_high = t == 0 ? false : t == 1 ? true : key_bit(t, 2 * e + 1);
        in.k4[i] = static_cast<std::uint8_t>((low_high ? 0x7 : 0x8) | (high_high ? 0x70 : 0x80));
    }
    // An error of 2^16 in one head's dot moves its logit by 1e-3 * 1e-2 * 65536 / sqrt(H * D),
    // about 0.03 (int4: 0.29), and the relevances by far more than the tolerance.
    distinct_scales(in.qs, 1e-3f);
    distinct_scales(in.ks, 1e-2f);
    distinct_scales(in.ks4, 1e-1f);
    for (Keys keys : {Keys::i8, Keys::i4}) {
        std::vector<float> got, want;
        ASSERT_TRUE(kvfuse::a3_relevance(args_for(c, in, keys, false, got)).ok());
        kvfuse::reference::a3_relevance(args_for(c, in, keys, false, want));
        // The inputs must make the property observable: relevances far from uniform.
        const auto [lowest, highest] = std::minmax_element(want.begin(), want.end());
        ASSERT_GT(*highest, 4.0f * *lowest) << "keys=" << static_cast<int>(keys);
        for (std::size_t j = 0; j < got.size(); ++j)
            ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + want[j])) << "keys=" << static_cast<int>(keys) << " j=" << j;
    }
}

// The scoring kernel's parallel tiles, softmax rows and column sums at 1, 3 and 7 threads and
// the machine's count, on every path: the reference's answer, bit-identical across counts.
TEST_P(ScoreTest, SameAnswerAtEveryThreadCount) {
    kvfuse_tuning saved;
    kvfuse_tuning_init(&saved);
    kvfuse_get_tuning(&saved);
    kvfuse_tuning parallel = saved;
    parallel.score_parallel_work = 0;
    ASSERT_EQ(kvfuse_set_tuning(&parallel), KVFUSE_OK);
    const Case c{13, 700, 8, 2, 40};
    const Inputs in = make(c, 123);
    for (Keys keys : {Keys::f32, Keys::i8, Keys::i4}) {
        std::vector<float> want, single_thread;
        kvfuse::reference::a3_relevance(args_for(c, in, keys, true, want));
        kvfuse::testing::at_thread_counts([&](int threads) {
            std::vector<float> got;
            ASSERT_TRUE(kvfuse::a3_relevance(args_for(c, in, keys, true, got)).ok());
            for (std::size_t j = 0; j < got.size(); ++j)
                ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + want[j])) << "keys=" << static_cast<int>(keys) << " j=" << j;
            if (threads == 1)
                single_thread = got;
            else
                EXPECT_EQ(got, single_thread) << "keys=" << static_cast<int>(keys) << " differs from 1 thread";
        });
    }
    kvfuse_set_tuning(&saved);
}

// Segments: each range of candidates with its own keys, queries and bias, split at places that
// are not tile boundaries (one key alone, an empty segment), on every path.
TEST_P(ScoreTest, SegmentsMatchReference) {
    const Case c{7, 131, 8, 4, 40};
    const Inputs in = make(c, 91);
    const std::size_t sizes[] = {0, 37, 1, 50, 43};  // the last holds the question's keys
    const std::size_t packed = (c.D + 1) / 2;
    std::vector<Inputs> own;  // every segment's own queries
    std::vector<std::vector<float>> bias;
    std::vector<kvfuse_relevance_segment> segments;
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    for (std::size_t i = 0; i < std::size(sizes); ++i) {
        own.push_back(make(c, 200 + static_cast<std::uint32_t>(i)));
        bias.emplace_back(c.M);
        for (float& b : bias.back()) b = normal(rng);
    }
    for (Keys keys : {Keys::f32, Keys::i8, Keys::i4}) {
        segments.clear();
        std::size_t start = 0;
        for (std::size_t i = 0; i < std::size(sizes); ++i) {
            kvfuse_relevance_segment g;
            kvfuse_relevance_segment_init(&g);
            g.keys = sizes[i];
            g.queries_f32 = own[i].q.data();
            g.queries_i8 = own[i].q8.data();
            g.query_scales = own[i].qs.data();
            g.bias = i == 2 ? nullptr : bias[i].data();
            if (keys == Keys::f32) g.keys_f32 = in.k.data() + start * c.Hkv * c.D;
            if (keys == Keys::i8) g.keys_i8 = in.k8.data() + start * c.Hkv * c.D;
            if (keys == Keys::i4) g.keys_i4 = in.k4.data() + start * c.Hkv * packed;
            g.key_scales = (keys == Keys::i4 ? in.ks4 : in.ks).data() + start * c.Hkv;
            segments.push_back(g);
            start += sizes[i];
        }
        ASSERT_EQ(start, c.C);
        // Every integer scheme too (each segment has its own query corrections).
        std::vector<ScoreDot> dots = {ScoreDot::automatic};
        if (keys != Keys::f32 && GetParam() != kvfuse::Isa::scalar) dots = dot_schemes(keys);
        for (ScoreDot dot : dots)
            for (bool smoothing : {false, true}) {
                std::vector<float> got, want;
                kvfuse_relevance_args a = args_for(c, in, keys, smoothing, got);
                a.segment_count = segments.size();
                a.segments = segments.data();
                ASSERT_TRUE((dot == ScoreDot::automatic ? kvfuse::a3_relevance(a) : relevance_with(dot, a)).ok());
                kvfuse_relevance_args r = args_for(c, in, keys, smoothing, want);
                r.segment_count = segments.size();
                r.segments = segments.data();
                kvfuse::reference::a3_relevance(r);
                for (std::size_t j = 0; j < got.size(); ++j)
                    ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + want[j]))
                        << "keys " << static_cast<int>(keys) << " dot " << kvfuse::detail::score_dot_name(dot) << " j " << j;
            }
    }
    // The segments must add up to the candidates, on one path.
    std::vector<float> out;
    kvfuse_relevance_args a = args_for(c, in, Keys::i8, false, out);
    a.segment_count = segments.size();
    a.segments = segments.data();  // int4 segments from the last loop
    ASSERT_TRUE(kvfuse::a3_relevance(a).ok());
    std::vector<kvfuse_relevance_segment> broken = segments;
    broken[1].keys += 1;
    a.segments = broken.data();
    EXPECT_EQ(kvfuse_a3_relevance(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    broken = segments;
    broken[3].keys_i4 = nullptr;
    broken[3].keys_i8 = in.k8.data();
    a.segments = broken.data();
    EXPECT_EQ(kvfuse_a3_relevance(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    a.segments = nullptr;
    EXPECT_EQ(kvfuse_a3_relevance(&a), KVFUSE_ERROR_NULL_POINTER);
}

// NaN and Inf reaching a segment (its bias, its keys) give what the reference gives: NaN where
// it is NaN, the same values elsewhere, and no crash.
TEST_P(ScoreTest, SegmentsWithNanAndInfFollowTheReference) {
    const Case c{3, 40, 4, 2, 16};
    Inputs in = make(c, 92);
    const Inputs other = make(c, 93);
    std::vector<float> bias = {0.5f, -0.25f, 1.0f};
    for (int which : {0, 1, 2}) {
        std::vector<float> keys = in.k, segment_bias = bias;
        if (which == 0) segment_bias[1] = NAN;                // question row 1's logits in segment 0
        if (which == 1) keys[5 * c.Hkv * c.D + 3] = INFINITY;  // one key value of segment 0
        if (which == 2) keys[30 * c.Hkv * c.D] = NAN;          // a key of segment 1
        kvfuse::RelevanceSegment segments[2];
        segments[0].keys = 17;  // not a tile boundary
        segments[0].queries_f32 = other.q.data();
        segments[0].keys_f32 = keys.data();
        segments[0].bias = segment_bias.data();
        segments[1].keys = c.C - 17;
        segments[1].queries_f32 = in.q.data();
        segments[1].keys_f32 = keys.data() + 17 * c.Hkv * c.D;
        std::vector<float> got, want;
        kvfuse_relevance_args a = args_for(c, in, Keys::f32, true, got);
        a.segment_count = 2;
        a.segments = segments;
        ASSERT_TRUE(kvfuse::a3_relevance(a).ok());
        kvfuse_relevance_args r = args_for(c, in, Keys::f32, true, want);
        r.segment_count = 2;
        r.segments = segments;
        kvfuse::reference::a3_relevance(r);
        bool any_nan = false;
        for (std::size_t j = 0; j < got.size(); ++j) {
            ASSERT_EQ(std::isnan(got[j]), std::isnan(want[j])) << "case " << which << " j " << j;
            any_nan = any_nan || std::isnan(want[j]);
            if (!std::isnan(want[j])) {
                ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + want[j])) << "case " << which << " j " << j;
            }
        }
        EXPECT_TRUE(any_nan) << "case " << which << ": the bad value must reach the output";
    }
}

// NaN and Inf in the quantized inputs' scales (a key's, a question row's) give what the
// reference gives, on the small heads whose tile stays in registers (int8 D = 8, int4 D = 16)
// as on the blocked path (D = 40): NaN where it is NaN, the same values elsewhere.
TEST_P(ScoreTest, QuantizedScalesWithNanAndInfFollowTheReference) {
    for (const Case& c : {Case{5, 70, 16, 2, 8}, Case{7, 90, 12, 4, 16}, Case{3, 70, 4, 2, 40}})
        for (Keys keys : {Keys::i8, Keys::i4})
            for (int which : {0, 1, 2}) {
                Inputs in = make(c, 300 + static_cast<std::uint32_t>(which));
                std::vector<float>& key_scales = keys == Keys::i8 ? in.ks : in.ks4;
                if (which == 0) key_scales[9 * c.Hkv + 1] = NAN;  // one key of one KV head
                if (which == 1) key_scales[40 * c.Hkv] = INFINITY;
                if (which == 2) in.qs[1] = NAN;  // one (question row, head)
                std::vector<float> got, want;
                ASSERT_TRUE(kvfuse::a3_relevance(args_for(c, in, keys, true, got)).ok());
                kvfuse::reference::a3_relevance(args_for(c, in, keys, true, want));
                bool any_nan = false;
                for (std::size_t j = 0; j < got.size(); ++j) {
                    ASSERT_EQ(std::isnan(got[j]), std::isnan(want[j]))
                        << "D=" << c.D << " keys=" << static_cast<int>(keys) << " case " << which << " j " << j;
                    any_nan = any_nan || std::isnan(want[j]);
                    if (!std::isnan(want[j])) {
                        ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + std::fabs(want[j])))
                            << "D=" << c.D << " keys=" << static_cast<int>(keys) << " case " << which << " j " << j;
                    }
                }
                EXPECT_TRUE(any_nan) << "D=" << c.D << " case " << which << ": the bad value must reach the output";
            }
}

// What segments are for: chunks' keys kept in the frame they were computed in (their own
// positions, their own mean removed), scored with the question's queries rotated into that
// frame and the mean's logit as bias, give the relevance of the fused, re-rotated keys.
TEST_P(ScoreTest, StoredChunkFramesGiveFusedRelevance) {
    const std::size_t H = 8, Hkv = 2, D = 64, M = 5, group = H / Hkv;
    const std::size_t chunk_tokens[] = {45, 3, 70};
    const std::int64_t prefix = 2, computed_at = 1;  // each chunk was computed after its own BOS
    kvfuse::RopeConfig rope;
    rope.head_dim = static_cast<int>(D);
    std::mt19937 rng(17);
    std::normal_distribution<float> normal;
    auto random = [&](std::size_t n, float offset) {
        std::vector<float> v(n);
        for (float& x : v) x = normal(rng) + offset;
        return v;
    };
    std::size_t docs = 0;
    for (std::size_t n : chunk_tokens) docs += n;
    const std::size_t C = docs + M, row = Hkv * D;
    // The fused keys (absolute positions prefix + j) and, per chunk, the stored ones.
    std::vector<float> fused(C * row);
    std::vector<std::vector<float>> stored;
    std::vector<std::int64_t> deltas;
    std::size_t at = 0;
    for (std::size_t n : chunk_tokens) {
        std::vector<float> k = random(n * row, 0.7f);
        std::vector<std::int64_t> local(n);
        std::iota(local.begin(), local.end(), computed_at);
        ASSERT_TRUE(kvfuse::rope_rotate(rope, k.data(), n, Hkv, row, local.data()).ok());
        const std::int64_t delta = prefix + static_cast<std::int64_t>(at) - computed_at;
        ASSERT_TRUE(kvfuse::rope_rotate_span_copy(rope, k.data(), row, fused.data() + at * row, row, n, Hkv, delta).ok());
        stored.push_back(std::move(k));
        deltas.push_back(delta);
        at += n;
    }
    std::vector<float> q = random(M * H * D, 0.0f), question_keys = random(M * row, 0.7f);
    std::vector<std::int64_t> question_positions(M);
    std::iota(question_positions.begin(), question_positions.end(), prefix + static_cast<std::int64_t>(docs));
    ASSERT_TRUE(kvfuse::rope_rotate(rope, q.data(), M, H, H * D, question_positions.data()).ok());
    ASSERT_TRUE(kvfuse::rope_rotate(rope, question_keys.data(), M, Hkv, row, question_positions.data()).ok());
    std::copy(question_keys.begin(), question_keys.end(), fused.begin() + static_cast<std::ptrdiff_t>(docs * row));

    std::vector<float> want(docs), got(docs);
    kvfuse_relevance_args a;
    kvfuse_relevance_args_init(&a);
    a.question_rows = M;
    a.candidates = C;
    a.query_heads = H;
    a.kv_heads = Hkv;
    a.head_dim = D;
    a.smoothing = 1;
    a.queries_f32 = q.data();
    a.keys_f32 = fused.data();
    a.out = want.data();
    ASSERT_TRUE(kvfuse::a3_relevance(a).ok());

    // Per chunk: keys minus their mean, queries rotated back by the chunk's delta, bias q . mean.
    std::vector<std::vector<float>> centred, queries, bias;
    std::vector<kvfuse_relevance_segment> segments;
    for (std::size_t c = 0; c < std::size(chunk_tokens); ++c) {
        const std::size_t n = chunk_tokens[c];
        std::vector<float> mean(row, 0.0f), keys = stored[c];
        for (std::size_t t = 0; t < n; ++t)
            for (std::size_t e = 0; e < row; ++e) mean[e] += keys[t * row + e] / static_cast<float>(n);
        for (std::size_t t = 0; t < n; ++t)
            for (std::size_t e = 0; e < row; ++e) keys[t * row + e] -= mean[e];
        std::vector<float> rotated(q.size());
        ASSERT_TRUE(kvfuse::rope_rotate_span_copy(rope, q.data(), H * D, rotated.data(), H * D, M, H, -deltas[c]).ok());
        std::vector<float> b(M, 0.0f);
        for (std::size_t m = 0; m < M; ++m)
            for (std::size_t h = 0; h < H; ++h)
                for (std::size_t d = 0; d < D; ++d) b[m] += rotated[(m * H + h) * D + d] * mean[(h / group) * D + d];
        centred.push_back(std::move(keys));
        queries.push_back(std::move(rotated));
        bias.push_back(std::move(b));
    }
    for (std::size_t c = 0; c < std::size(chunk_tokens); ++c) {
        kvfuse_relevance_segment g;
        kvfuse_relevance_segment_init(&g);
        g.keys = chunk_tokens[c];
        g.keys_f32 = centred[c].data();
        g.queries_f32 = queries[c].data();
        g.bias = bias[c].data();
        segments.push_back(g);
    }
    kvfuse_relevance_segment question;
    kvfuse_relevance_segment_init(&question);
    question.keys = M;
    question.keys_f32 = question_keys.data();
    question.queries_f32 = q.data();
    segments.push_back(question);
    a.segment_count = segments.size();
    a.segments = segments.data();
    a.out = got.data();
    ASSERT_TRUE(kvfuse::a3_relevance(a).ok());
    for (std::size_t j = 0; j < docs; ++j) ASSERT_NEAR(got[j], want[j], 1e-4 * (1.0 + want[j])) << j;
}

TEST_P(ScoreTest, Int4QuantizerRoundTrip) {
    const Case c{2, 30, 2, 2, 9};  // odd head_dim: the last high nibble is padding
    const Inputs in = make(c, 78, 4.0f);
    const std::size_t packed = (c.D + 1) / 2;
    for (std::size_t t = 0; t < c.C; ++t)
        for (std::size_t h = 0; h < c.Hkv; ++h) {
            const std::uint8_t* row = in.k4.data() + (t * c.Hkv + h) * packed;
            EXPECT_EQ(row[packed - 1] >> 4, 0) << "padding nibble";
            for (std::size_t d = 0; d < c.D; ++d) {
                const float scale = in.ks4[t * c.Hkv + h];
                const std::int32_t q = kvfuse::reference::unpack_i4(row, d);
                ASSERT_GE(q, -7);
                ASSERT_LE(q, 7);
                ASSERT_NEAR(q * scale + in.means4[h * c.D + d], in.k[(t * c.Hkv + h) * c.D + d], 0.5f * scale + 1e-5f);
            }
        }
}

TEST_P(ScoreTest, NanInAKeyDoesNotCrash) {
    const Case c{2, 10, 2, 1, 8};
    Inputs in = make(c, 3);
    in.k[5] = NAN;
    std::vector<float> out;
    EXPECT_TRUE(kvfuse::a3_relevance(args_for(c, in, false, false, out)).ok());
    for (float v : out) EXPECT_TRUE(std::isnan(v));  // every row sees key 0, so every row is NaN
}

TEST_P(ScoreTest, InvalidArguments) {
    const Case c{2, 10, 4, 2, 8};
    const Inputs in = make(c, 4);
    std::vector<float> out;
    auto with = [&](auto change) {
        kvfuse_relevance_args a = args_for(c, in, true, false, out);
        change(a);
        return kvfuse_a3_relevance(&a);
    };
    EXPECT_EQ(with([](auto& a) { a.question_rows = 0; }), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(with([](auto& a) { a.candidates = 1; }), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(with([](auto& a) { a.query_heads = 3; }), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(with([](auto& a) { a.head_dim = 0; }), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(with([](auto& a) { a.key_scales = nullptr; }), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(with([](auto& a) { a.out = nullptr; }), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(with([](auto& a) { a.keys_i8 = nullptr; }), KVFUSE_ERROR_NULL_POINTER);  // and no f32 keys
    EXPECT_EQ(kvfuse_a3_relevance(nullptr), KVFUSE_ERROR_NULL_POINTER);
    std::int8_t q8[8];
    float s[1];
    EXPECT_EQ(kvfuse_quantize_rows_i8(in.q.data(), 1, 1, 8, 4, q8, s), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_quantize_keys_i8(nullptr, 1, 1, 8, 8, q8, s, s), KVFUSE_ERROR_NULL_POINTER);
    std::uint8_t k4[4];
    EXPECT_EQ(kvfuse_quantize_keys_i4(nullptr, 1, 1, 8, 8, k4, s, s), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_quantize_keys_i4(in.k.data(), 1, 1, 8, 4, k4, s, s), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(with([&](auto& a) { a.keys_i4 = in.k4.data(); }), KVFUSE_ERROR_INVALID_ARGUMENT);  // both int8 and int4
    // Element counts that fit in size_t but whose f32 bytes do not (found by fuzz_c_api: the
    // quantizer read past the caller's keys).
    const std::size_t quarter = std::numeric_limits<std::size_t>::max() / 4;
    EXPECT_EQ(kvfuse_quantize_keys_i8(in.k.data(), 2, 1, 8, quarter, q8, s, s), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_quantize_keys_i4(in.k.data(), 2, 1, 8, quarter, k4, s, s), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_quantize_rows_i8(in.q.data(), 2, 1, 8, quarter, q8, s), KVFUSE_ERROR_INVALID_ARGUMENT);
    // The same for the relevance's key tensor: candidates x kv_heads x head_dim fits, its bytes not.
    EXPECT_EQ(with([&](auto& a) {
                  a.candidates = quarter + 1;
                  a.kv_heads = 1;
                  a.query_heads = 1;
                  a.head_dim = 1;
              }),
              KVFUSE_ERROR_INVALID_ARGUMENT);
}

}  // namespace
