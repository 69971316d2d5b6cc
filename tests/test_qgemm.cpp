// The dense-layer product with block-quantized weights (kvfuse_pack_quantized_weights, 4- and
// 8-bit codes, the two-level Q4_K form and Q6_K's form) on every kernel build (avx2 pmaddubsw, avx2_vnni / avx512_vnni vpdpbusd, avx512
// without VNNI, NEON sdot and its emulation) against reference::gemm_quantized: odd sizes around
// every register block, panel and vector edge, strides, beta, one-row decode, thread counts
// bit-identical, NaN / Inf activations, the codes and activations that would saturate
// pmaddubsw, and the C API's argument checks.
//
// Tolerance: the kernel sums per block b, in f32, T_b = s d D_b - m (d sum q) (D_b the exact
// integer dot): one rounding of s d, one fused multiply-add and one fused multiply-subtract per
// block, so the error is within (2 blocks + 2) u sum_b (|s d D_b| + |m d sum q|) (u = 2^-24),
// plus a rounding of beta C and of the result. We allow twice that with eps = 2^-23 on the same
// magnitudes; one wrong code (a change of s d q >= 1e-3 * 1e-2 / 127) is far above it for the
// sizes here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "isa_test_support.h"
#include "reference/f16_reference.h"
#include "reference/gemm_reference.h"

namespace {

using kvfuse::PackedWeights;

struct Shape {
    std::size_t n, out, in;
};

struct QOperands {
    Shape s;
    int bits;
    std::size_t lda, ldcodes, ldblocks, ldc;
    std::vector<float> a, c, scales, offsets;
    std::vector<std::uint8_t> codes;
    // The two-level form (KVFUSE_DTYPE_Q4_SUPER256) when two_level: scales and offsets above are
    // then the f32 products super * sub that define it (what the reference multiplies by).
    bool two_level = false;
    std::size_t ldsuper = 0;
    std::vector<std::uint8_t> sub_scales, sub_offsets;
    std::vector<float> super_scales, super_offsets;
};

QOperands make_operands(Shape s, int bits, std::uint32_t seed, std::size_t pad = 0) {
    QOperands o{s, bits, s.in + pad, s.in + pad, s.in / 32 + pad, s.out + pad, {}, {}, {}, {}, {}, false, 0, {}, {}, {}, {}};
    o.a = kvfuse::testing::random_floats(s.n * o.lda, seed);
    o.c = kvfuse::testing::random_floats(s.n * o.ldc, seed + 2);
    std::mt19937 rng(seed + 3);
    std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
    std::uniform_real_distribution<float> scale(1e-3f, 2e-2f), offset(-0.2f, 0.2f);
    o.codes.resize(s.out * o.ldcodes);
    for (auto& u : o.codes) u = static_cast<std::uint8_t>(code(rng));
    o.scales.resize(s.out * o.ldblocks);
    o.offsets.resize(s.out * o.ldblocks);
    for (auto& x : o.scales) x = scale(rng);
    for (auto& x : o.offsets) x = offset(rng);
    return o;
}

// The same codes with two-level scales: per 32 a u8 sub-scale and sub-offset, per 256 f16-valued
// super-scales (as Q4_K's d, dmin; some negative super-offsets, as Q4_1-like offsets are).
QOperands make_two_level(Shape s, std::uint32_t seed, std::size_t pad = 0) {
    QOperands o = make_operands(s, 4, seed, pad);
    o.two_level = true;
    const std::size_t blocks = s.in / 32, supers = (blocks + 7) / 8;
    o.ldsuper = supers + pad;
    std::mt19937 rng(seed + 7);
    std::uniform_int_distribution<int> sub(0, 255);
    std::uniform_real_distribution<float> super(-4e-4f, 4e-4f);
    o.sub_scales.resize(s.out * o.ldblocks);
    o.sub_offsets.resize(s.out * o.ldblocks);
    for (auto& u : o.sub_scales) u = static_cast<std::uint8_t>(sub(rng));
    for (auto& u : o.sub_offsets) u = static_cast<std::uint8_t>(sub(rng));
    o.super_scales.resize(s.out * o.ldsuper);
    o.super_offsets.resize(s.out * o.ldsuper);
    for (auto& x : o.super_scales) x = kvfuse::reference::f16_to_f32(kvfuse::reference::f32_to_f16(std::fabs(super(rng))));
    for (auto& x : o.super_offsets) x = kvfuse::reference::f16_to_f32(kvfuse::reference::f32_to_f16(super(rng)));
    for (std::size_t j = 0; j < s.out; ++j)
        for (std::size_t b = 0; b < blocks; ++b) {
            o.scales[j * o.ldblocks + b] = o.super_scales[j * o.ldsuper + b / 8] * float(o.sub_scales[j * o.ldblocks + b]);
            o.offsets[j * o.ldblocks + b] = o.super_offsets[j * o.ldsuper + b / 8] * float(o.sub_offsets[j * o.ldblocks + b]);
        }
    return o;
}

kvfuse_quantized_weights describe_weights(const QOperands& o) {
    kvfuse_quantized_weights q;
    kvfuse_quantized_weights_init(&q);
    q.out = o.s.out;
    q.in = o.s.in;
    q.code_bits = o.bits;
    q.codes = o.codes.data();
    q.codes_stride = o.ldcodes;
    q.scales = o.scales.data();
    q.offsets = o.offsets.data();
    q.block_stride = o.ldblocks;
    if (o.two_level) {
        q.scales = q.offsets = nullptr;
        q.sub_scales = o.sub_scales.data();
        q.sub_offsets = o.sub_offsets.data();
        q.super_scales = o.super_scales.data();
        q.super_offsets = o.super_offsets.data();
        q.super_stride = o.ldsuper;
    }
    return q;
}

PackedWeights pack(const QOperands& o) {
    PackedWeights packed;
    const kvfuse::Status s = PackedWeights::pack_quantized(describe_weights(o), packed);
    EXPECT_TRUE(s.ok()) << s.message();
    return packed;
}

// sum_b (|s d D_b| + |m d sum q|) for row i of A and row j of W, with A quantized as the
// reference does.
double magnitude(const QOperands& o, std::size_t i, std::size_t j) {
    double total = 0.0;
    std::int8_t q[32];
    for (std::size_t b = 0; b < o.s.in / 32; ++b) {
        const float d = kvfuse::reference::quantize_activation_block(o.a.data() + i * o.lda + 32 * b, q);
        long dot = 0, sum = 0;
        for (std::size_t k = 0; k < 32; ++k) {
            dot += long{o.codes[j * o.ldcodes + 32 * b + k]} * q[k];
            sum += q[k];
        }
        total += std::fabs(double(o.scales[j * o.ldblocks + b]) * d * double(dot)) +
                 std::fabs(double(o.offsets[j * o.ldblocks + b]) * d * double(sum));
    }
    return total;
}

// got against want (the reference's C) for the operands `o` of either form: NaN where the
// reference has NaN, else within the int8 product's rounding of the terms' magnitude (beta C
// included); the padding columns past out untouched.
template <class Operands, class Magnitude>
void expect_reference_within_rounding(const Operands& o, const std::vector<float>& got, const std::vector<float>& want,
                                      float beta, Magnitude magnitude_of, const std::string& what) {
    const double eps = std::numeric_limits<float>::epsilon();
    const double blocks = double(o.s.in / 32);
    for (std::size_t i = 0; i < o.s.n; ++i) {
        for (std::size_t j = 0; j < o.s.out; ++j) {
            const float g = got[i * o.ldc + j], r = want[i * o.ldc + j];
            if (std::isnan(r)) {
                ASSERT_TRUE(std::isnan(g)) << what << " (" << i << ", " << j << "): " << g << ", want NaN";
                continue;
            }
            const double m = magnitude_of(o, i, j) + (beta == 0.0f ? 0.0 : std::fabs(double(beta) * o.c[i * o.ldc + j]));
            const double tolerance = (2 * blocks + 4) * eps * m + 1e-30;
            ASSERT_LE(std::fabs(double(g) - r), tolerance) << what << " (" << i << ", " << j << "): got " << g << " want " << r;
        }
        for (std::size_t j = o.s.out; j < o.ldc; ++j)
            ASSERT_EQ(std::memcmp(&got[i * o.ldc + j], &o.c[i * o.ldc + j], sizeof(float)), 0)
                << what << ": padding column " << j << " of row " << i << " was written";
    }
}

void check(const QOperands& o, float beta, int threads, const std::string& what) {
    const PackedWeights packed = pack(o);
    ASSERT_FALSE(packed.empty());
    std::vector<float> got = o.c, want = o.c;
    const kvfuse::Status s = kvfuse::gemm(packed, o.a.data(), o.s.n, got.data(), beta, threads, o.lda, o.ldc);
    ASSERT_TRUE(s.ok()) << s.message();
    kvfuse::reference::gemm_quantized(o.a.data(), o.s.n, o.lda, o.codes.data(), o.ldcodes, o.scales.data(),
                                      o.offsets.data(), o.ldblocks, o.s.out, o.s.in, beta, want.data(), o.ldc);
    expect_reference_within_rounding(o, got, want, beta, magnitude, what);
}

std::string describe(const Shape& s, int bits, float beta, int threads, std::size_t pad) {
    return "n=" + std::to_string(s.n) + " out=" + std::to_string(s.out) + " in=" + std::to_string(s.in) +
           " bits=" + std::to_string(bits) + " beta=" + std::to_string(beta) + " threads=" + std::to_string(threads) +
           " pad=" + std::to_string(pad);
}

class QGemmTest : public kvfuse::testing::IsaTest {};
KVFUSE_INSTANTIATE_ISA_TESTS(QGemmTest);

// Rows on both sides of the register blocks (AVX2 2, AVX-512 / NEON 6) and of a packed block of
// A (8 row tiles); columns around the vector widths (4, 8, 16) and a panel (32, whose two
// halves a 4-bit load splits); one to five blocks of 32 k.
TEST_P(QGemmTest, OddSizesMatchReference) {
    const std::size_t rows[] = {1, 2, 3, 5, 6, 7, 13, 49, 97};
    const std::size_t cols[] = {1, 3, 4, 9, 16, 17, 31, 32, 33, 47, 70};
    const std::size_t inner[] = {32, 64, 160};
    std::uint32_t seed = 1;
    for (std::size_t n : rows)
        for (std::size_t out : cols)
            for (std::size_t in : inner)
                for (int bits : {4, 8}) {
                    const Shape s{n, out, in};
                    const std::size_t pad = seed % 3 == 0 ? 5 : 0;
                    const float beta = seed % 4 == 0 ? 1.0f : (seed % 4 == 1 ? 0.0f : 0.5f);
                    check(make_operands(s, bits, seed++, pad), beta, 1, describe(s, bits, beta, 1, pad));
                }
}

// Realistic depths (a layer's 1024 and 2816 inputs) and a decode step (one row).
TEST_P(QGemmTest, DeepRowsAndDecode) {
    for (int bits : {4, 8})
        for (const Shape s : {Shape{1, 100, 1024}, Shape{1, 64, 2816}, Shape{20, 70, 1024}}) {
            check(make_operands(s, bits, static_cast<std::uint32_t>(s.in + s.n), 2), 1.0f, 1, describe(s, bits, 1.0f, 1, 2));
            check(make_operands(s, bits, static_cast<std::uint32_t>(s.in + s.n + 1)), 0.0f, 2, describe(s, bits, 0.0f, 2, 0));
        }
}

// The largest codes with activations all of one sign and full scale: an 8-bit code of 255 times
// 127, twice, does not fit pmaddubsw's s16 (the 8-bit path must not use it), and a 4-bit block
// sum reaches 8 * 2 * 15 * 127 = 30480, the most the s16 block sums hold.
TEST_P(QGemmTest, ExtremeCodesDoNotSaturate) {
    for (int bits : {4, 8})
        for (float sign : {1.0f, -1.0f}) {
            QOperands o = make_operands({7, 40, 96}, bits, 11);
            for (auto& u : o.codes) u = static_cast<std::uint8_t>((1 << bits) - 1);
            for (auto& x : o.a) x = sign;
            check(o, 0.0f, 1, "extreme codes bits=" + std::to_string(bits));
            // Exact here: every q is +-127, every code the maximum.
            const PackedWeights packed = pack(o);
            std::vector<float> got(o.s.n * o.ldc);
            ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), o.s.n, got.data(), 0.0f, 1, o.lda, o.ldc).ok());
            const float code = static_cast<float>((1 << bits) - 1);
            double want = 0.0;
            for (std::size_t b = 0; b < 3; ++b)
                want += (double(o.scales[b]) * code - o.offsets[b]) * 32.0 * sign;  // d = 1/127, q = 127
            EXPECT_NEAR(got[0], want, 1e-4 * std::fabs(want) + 1e-5);
        }
}

// Bit-identical results whatever the thread count (rows split, columns split, decode).
TEST_P(QGemmTest, ThreadCountsAgreeExactly) {
    for (int bits : {4, 8})
        for (const Shape s : {Shape{70, 70, 96}, Shape{400, 50, 64}, Shape{3, 300, 64}, Shape{1, 1000, 128}}) {
            const QOperands o = make_operands(s, bits, static_cast<std::uint32_t>(s.n * 7 + s.out), 1);
            const PackedWeights packed = pack(o);
            std::vector<float> one = o.c;
            ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), s.n, one.data(), 1.0f, 1, o.lda, o.ldc).ok());
            for (int threads : {0, 2, 3, 7}) {
                std::vector<float> many = o.c;
                ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), s.n, many.data(), 1.0f, threads, o.lda, o.ldc).ok());
                ASSERT_EQ(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)), 0)
                    << describe(s, bits, 1.0f, threads, 1) << ": differs from one thread";
            }
            check(o, 1.0f, 3, describe(s, bits, 1.0f, 3, 1));
        }
}

// A NaN or an infinity in a block of A makes that row's outputs NaN (kvfuse.h); other rows
// are untouched; an all-zero block quantizes to zeros (no 0 / 0).
TEST_P(QGemmTest, NonFiniteActivationsGiveNan) {
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    for (int bits : {4, 8}) {
        QOperands o = make_operands({9, 35, 96}, bits, 21);
        o.a[1 * o.lda + 40] = nan;
        o.a[4 * o.lda + 0] = inf;
        o.a[6 * o.lda + 95] = -inf;
        for (std::size_t k = 32; k < 64; ++k) o.a[7 * o.lda + k] = 0.0f;
        check(o, 0.0f, 1, "non-finite bits=" + std::to_string(bits));
        check(o, 1.0f, 2, "non-finite beta=1 bits=" + std::to_string(bits));
        const PackedWeights packed = pack(o);
        std::vector<float> got(o.s.n * o.ldc);
        ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), o.s.n, got.data(), 0.0f, 1, o.lda, o.ldc).ok());
        for (std::size_t i = 0; i < o.s.n; ++i)
            for (std::size_t j = 0; j < o.s.out; ++j)
                EXPECT_EQ(std::isnan(got[i * o.ldc + j]), i == 1 || i == 4 || i == 6) << i << ", " << j;
    }
}

// Two-level weights (KVFUSE_DTYPE_Q4_SUPER256): against the reference over depths with whole and
// partial super-blocks, and bit-identical to the one-level form given the same f32 products
// (kvfuse.h promises it), whatever the thread count.
TEST_P(QGemmTest, TwoLevelMatchesReferenceAndOneLevel) {
    const Shape shapes[] = {{1, 1, 32},     {3, 17, 160},  {7, 33, 256},  {13, 70, 288},
                            {49, 40, 544},  {1, 100, 1024}, {20, 64, 2816}, {97, 9, 96}};
    std::uint32_t seed = 100;
    for (const Shape& s : shapes)
        for (std::size_t pad : {std::size_t{0}, std::size_t{3}}) {
            const QOperands o = make_two_level(s, seed++, pad);
            const float beta = seed % 2 == 0 ? 0.0f : 0.5f;
            const int threads = seed % 3 == 0 ? 2 : 1;
            const std::string what = "two-level " + describe(s, 4, beta, threads, pad);
            check(o, beta, threads, what);
            QOperands flat = o;
            flat.two_level = false;
            const PackedWeights two = pack(o), one = pack(flat);
            ASSERT_EQ(two.dtype(), kvfuse::Dtype::q4_super256);
            std::vector<float> got = o.c, want = o.c;
            ASSERT_TRUE(kvfuse::gemm(two, o.a.data(), s.n, got.data(), beta, threads, o.lda, o.ldc).ok());
            ASSERT_TRUE(kvfuse::gemm(one, o.a.data(), s.n, want.data(), beta, 1, o.lda, o.ldc).ok());
            ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << what << ": differs from one-level";
        }
}

// ---- Q6_K's form (KVFUSE_DTYPE_Q6_SUPER256) ----
//
// Per block b the kernel adds float(D_b) * (super d) to an f32 sum, D_b the exact integer
// sub0 sum_0 (u - 32) q + sub1 sum_1 (u - 32) q: one rounding of super d and one of the FMA per
// block, so the tolerance of check() applies with the magnitude sum_b |super d D_b|.

struct Q6Operands {
    Shape s;
    std::size_t lda, ldcodes, ldsub, ldsuper, ldc;
    std::vector<float> a, c, super_scales;
    std::vector<std::uint8_t> codes;
    std::vector<std::int8_t> sub_scales;
};

// Random 6-bit codes, signed sub-scales over their whole range, f16-valued super-scales of both
// signs (Q6_K's d is an f16; its sign is free).
Q6Operands make_q6(Shape s, std::uint32_t seed, std::size_t pad = 0) {
    Q6Operands o{s, s.in + pad, s.in + pad, s.in / 16 + pad, (s.in + 255) / 256 + pad, s.out + pad, {}, {}, {}, {}, {}};
    o.a = kvfuse::testing::random_floats(s.n * o.lda, seed);
    o.c = kvfuse::testing::random_floats(s.n * o.ldc, seed + 2);
    std::mt19937 rng(seed + 3);
    std::uniform_int_distribution<int> code(0, 63), sub(-128, 127);
    std::uniform_real_distribution<float> super(-2e-4f, 2e-4f);
    o.codes.resize(s.out * o.ldcodes);
    for (auto& u : o.codes) u = static_cast<std::uint8_t>(code(rng));
    o.sub_scales.resize(s.out * o.ldsub);
    for (auto& x : o.sub_scales) x = static_cast<std::int8_t>(sub(rng));
    o.super_scales.resize(s.out * o.ldsuper);
    for (auto& x : o.super_scales) x = kvfuse::reference::f16_to_f32(kvfuse::reference::f32_to_f16(super(rng)));
    return o;
}

kvfuse_quantized_weights describe_q6(const Q6Operands& o) {
    kvfuse_quantized_weights q;
    kvfuse_quantized_weights_init(&q);
    q.out = o.s.out;
    q.in = o.s.in;
    q.code_bits = 6;
    q.codes = o.codes.data();
    q.codes_stride = o.ldcodes;
    q.signed_sub_scales = o.sub_scales.data();
    q.signed_sub_stride = o.ldsub;
    q.super_scales = o.super_scales.data();
    q.super_stride = o.ldsuper;
    return q;
}

PackedWeights pack_q6(const Q6Operands& o) {
    PackedWeights packed;
    const kvfuse::Status s = PackedWeights::pack_quantized(describe_q6(o), packed);
    EXPECT_TRUE(s.ok()) << s.message();
    return packed;
}

double weight_q6(const Q6Operands& o, std::size_t j, std::size_t k) {
    return double(o.super_scales[j * o.ldsuper + k / 256]) * o.sub_scales[j * o.ldsub + k / 16] *
           (int(o.codes[j * o.ldcodes + k]) - 32);
}

double magnitude_q6(const Q6Operands& o, std::size_t i, std::size_t j) {
    double total = 0.0;
    std::int8_t q[32];
    for (std::size_t b = 0; b < o.s.in / 32; ++b) {
        const float d = kvfuse::reference::quantize_activation_block(o.a.data() + i * o.lda + 32 * b, q);
        long block = 0;
        for (std::size_t h = 0; h < 2; ++h) {
            long dot = 0;
            for (std::size_t k = 16 * h; k < 16 * h + 16; ++k) dot += (long{o.codes[j * o.ldcodes + 32 * b + k]} - 32) * q[k];
            block += dot * o.sub_scales[j * o.ldsub + 2 * b + h];
        }
        total += std::fabs(double(o.super_scales[j * o.ldsuper + b / 8]) * d * double(block));
    }
    return total;
}

void check_q6(const Q6Operands& o, float beta, int threads, const std::string& what) {
    const PackedWeights packed = pack_q6(o);
    ASSERT_FALSE(packed.empty());
    ASSERT_EQ(packed.dtype(), kvfuse::Dtype::q6_super256);
    std::vector<float> got = o.c, want = o.c;
    const kvfuse::Status s = kvfuse::gemm(packed, o.a.data(), o.s.n, got.data(), beta, threads, o.lda, o.ldc);
    ASSERT_TRUE(s.ok()) << s.message();
    kvfuse::reference::gemm_q6_super256(o.a.data(), o.s.n, o.lda, o.codes.data(), o.ldcodes, o.sub_scales.data(), o.ldsub,
                                        o.super_scales.data(), o.ldsuper, o.s.out, o.s.in, beta, want.data(), o.ldc);
    expect_reference_within_rounding(o, got, want, beta, magnitude_q6, what);
}

// Odd sizes around the register blocks (AVX2 2 rows, 32-register ISAs a 6-row tile), the
// vector widths and a panel; depths of whole and partial super-blocks, past a depth chunk (16
// blocks); strides, beta, threads.
TEST_P(QGemmTest, Q6MatchesReference) {
    const std::size_t rows[] = {1, 2, 3, 4, 5, 6, 7, 13, 49};
    const std::size_t cols[] = {1, 4, 9, 16, 17, 32, 33, 70};
    const std::size_t inner[] = {32, 64, 160, 256, 288, 544};
    std::uint32_t seed = 300;
    for (std::size_t n : rows)
        for (std::size_t out : cols)
            for (std::size_t in : inner) {
                const Shape s{n, out, in};
                const std::size_t pad = seed % 3 == 0 ? 5 : 0;
                const float beta = seed % 4 == 0 ? 1.0f : (seed % 4 == 1 ? 0.0f : 0.5f);
                const int threads = seed % 5 == 0 ? 2 : 1;
                check_q6(make_q6(s, seed++, pad), beta, threads, "q6 " + describe(s, 6, beta, threads, pad));
            }
    for (const Shape s : {Shape{1, 100, 1024}, Shape{20, 64, 2816}, Shape{97, 40, 768}})
        check_q6(make_q6(s, seed++, 1), 1.0f, 2, "q6 " + describe(s, 6, 1.0f, 2, 1));
}

// The sums the pmaddubsw copy keeps in s16: every code 0 (u - 32 = -32) or every code 63 (31)
// with activations all +-1 (q = +-127): a half-lane sum reaches 8 * 32 * 127 = 32512, and the
// sums of u q before the bias is taken off (8 * 63 * 127) do not fit s16 (they wrap and come
// back). Sub-scales -128 and 127 give the largest |D|. Exact: every q is +-127, d = 1/127.
TEST_P(QGemmTest, Q6ExtremeCodesAreExact) {
    for (int u : {0, 63})
        for (int sub : {-128, 127})
            for (float sign : {1.0f, -1.0f}) {
                Q6Operands o = make_q6({7, 40, 288}, 31);
                for (auto& x : o.codes) x = static_cast<std::uint8_t>(u);
                for (auto& x : o.sub_scales) x = static_cast<std::int8_t>(sub);
                for (auto& x : o.a) x = sign;
                const std::string what = "q6 extreme u=" + std::to_string(u) + " sub=" + std::to_string(sub);
                check_q6(o, 0.0f, 1, what);
                const PackedWeights packed = pack_q6(o);
                std::vector<float> got(o.s.n * o.ldc);
                ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), o.s.n, got.data(), 0.0f, 1, o.lda, o.ldc).ok());
                for (std::size_t j = 0; j < o.s.out; ++j) {
                    double want = 0.0;
                    for (std::size_t k = 0; k < o.s.in; ++k) want += weight_q6(o, j, k) * sign;  // d q = +-1 within an ulp
                    ASSERT_NEAR(got[j], want, 1e-5 * std::fabs(want) + 1e-7) << what << " column " << j;
                }
            }
}

// Bit-identical whatever the thread count; NaN / Inf rows give NaN and leave the others alone.
TEST_P(QGemmTest, Q6ThreadsAndNonFinite) {
    for (const Shape s : {Shape{70, 70, 256}, Shape{400, 50, 64}, Shape{3, 300, 512}, Shape{1, 1000, 256}}) {
        const Q6Operands o = make_q6(s, static_cast<std::uint32_t>(s.n * 7 + s.out), 1);
        const PackedWeights packed = pack_q6(o);
        std::vector<float> one = o.c;
        ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), s.n, one.data(), 1.0f, 1, o.lda, o.ldc).ok());
        for (int threads : {0, 2, 3, 7}) {
            std::vector<float> many = o.c;
            ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), s.n, many.data(), 1.0f, threads, o.lda, o.ldc).ok());
            ASSERT_EQ(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)), 0)
                << describe(s, 6, 1.0f, threads, 1) << ": differs from one thread";
        }
    }
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    Q6Operands o = make_q6({9, 35, 256}, 41);
    o.a[1 * o.lda + 40] = nan;
    o.a[4 * o.lda + 0] = inf;
    o.a[6 * o.lda + 255] = -inf;
    for (std::size_t k = 32; k < 64; ++k) o.a[7 * o.lda + k] = 0.0f;
    check_q6(o, 0.0f, 1, "q6 non-finite");
    const PackedWeights packed = pack_q6(o);
    std::vector<float> got(o.s.n * o.ldc);
    ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), o.s.n, got.data(), 0.0f, 1, o.lda, o.ldc).ok());
    for (std::size_t i = 0; i < o.s.n; ++i)
        for (std::size_t j = 0; j < o.s.out; ++j)
            EXPECT_EQ(std::isnan(got[i * o.ldc + j]), i == 1 || i == 4 || i == 6) << i << ", " << j;
}

TEST_P(QGemmTest, Int8SchemeNamesTheKernel) {
    const std::string scheme = kvfuse::gemm_int8_scheme();
    const std::string build = kvfuse::detail::active_kernel_build();
    switch (GetParam()) {
        case kvfuse::Isa::scalar: EXPECT_EQ(scheme, "reference"); break;
        case kvfuse::Isa::neon:
            EXPECT_EQ(scheme, build.find("dotprod") != std::string::npos ? "sdot" : "emulated");
            break;
        default: EXPECT_EQ(scheme, build.find("vnni") != std::string::npos ? "vpdpbusd" : "pmaddubsw"); break;
    }
}

// The packed handle reports its shape and type, and unpacks to exactly the weights given.
TEST(QGemmPacking, InfoAndExactWeights) {
    for (int bits : {4, 8}) {
        QOperands o = make_operands({2, 37, 64}, bits, 5, 3);
        const PackedWeights packed = pack(o);
        EXPECT_EQ(packed.out(), 37u);
        EXPECT_EQ(packed.in(), 64u);
        EXPECT_EQ(packed.dtype(), bits == 8 ? kvfuse::Dtype::q8_block32 : kvfuse::Dtype::q4_block32);
        // A one-hot activation row picks W[j][k] d q with d q = (1 / 127) 127, within an ulp of 1:
        // the dequantized weight at f32 precision.
        for (std::size_t k : {0u, 31u, 33u, 63u}) {
            std::vector<float> x(64, 0.0f), y(37);
            x[k] = 1.0f;
            ASSERT_TRUE(kvfuse::gemm(packed, x.data(), 1, y.data(), 0.0f, 1).ok());
            for (std::size_t j = 0; j < 37; ++j) {
                const double w = double(o.scales[j * o.ldblocks + k / 32]) * o.codes[j * o.ldcodes + k] -
                                 o.offsets[j * o.ldblocks + k / 32];
                EXPECT_NEAR(y[j], w, 1e-6 * (std::fabs(w) + 1.0)) << "bits " << bits << " row " << j << " k " << k;
            }
        }
    }
}

// The two-level form packs in 4.75 bits a weight and unpacks to the f32 products exactly.
TEST(QGemmPacking, TwoLevelExactWeights) {
    const QOperands o = make_two_level({1, 37, 288}, 15, 2);
    const PackedWeights packed = pack(o);
    EXPECT_EQ(packed.dtype(), kvfuse::Dtype::q4_super256);
    for (std::size_t k : {0u, 31u, 255u, 256u, 287u}) {
        std::vector<float> x(288, 0.0f), y(37);
        x[k] = 1.0f;
        ASSERT_TRUE(kvfuse::gemm(packed, x.data(), 1, y.data(), 0.0f, 1).ok());
        for (std::size_t j = 0; j < 37; ++j) {
            const double w = double(o.scales[j * o.ldblocks + k / 32]) * o.codes[j * o.ldcodes + k] - o.offsets[j * o.ldblocks + k / 32];
            EXPECT_NEAR(y[j], w, 1e-6 * (std::fabs(w) + 1.0)) << "row " << j << " k " << k;
        }
    }
}

// Q6_K's form packs in 6.625 bits a weight (the handle's bytes are not visible: the one-hot
// products show every weight, which is exactly super * sub * (u - 32)).
TEST(QGemmPacking, Q6ExactWeights) {
    const Q6Operands o = make_q6({1, 37, 288}, 17, 2);
    const PackedWeights packed = pack_q6(o);
    EXPECT_EQ(packed.dtype(), kvfuse::Dtype::q6_super256);
    EXPECT_EQ(packed.out(), 37u);
    EXPECT_EQ(packed.in(), 288u);
    for (std::size_t k : {0u, 15u, 16u, 31u, 100u, 255u, 256u, 287u}) {
        std::vector<float> x(288, 0.0f), y(37);
        x[k] = 1.0f;
        ASSERT_TRUE(kvfuse::gemm(packed, x.data(), 1, y.data(), 0.0f, 1).ok());
        for (std::size_t j = 0; j < 37; ++j) {
            const double w = weight_q6(o, j, k);
            EXPECT_NEAR(y[j], w, 1e-6 * (std::fabs(w) + 1e-3)) << "row " << j << " k " << k;
        }
    }
}

TEST(QGemmApi, RejectsBadQ6Arguments) {
    Q6Operands o = make_q6({1, 3, 288}, 23);
    const kvfuse_quantized_weights q = describe_q6(o);
    kvfuse_packed_weights* h = nullptr;
    auto expect = [&](kvfuse_quantized_weights bad, kvfuse_status status, const char* text) {
        EXPECT_EQ(kvfuse_pack_quantized_weights(&bad, &h), status) << text;
        EXPECT_EQ(h, nullptr);
        EXPECT_NE(std::string(kvfuse_last_error()).find(text), std::string::npos) << kvfuse_last_error();
    };
    kvfuse_quantized_weights bad = q;
    bad.code_bits = 4;
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "signed_sub_scales (Q6_K's form) needs code_bits = 6");
    bad = q;
    bad.signed_sub_stride = 17;  // 288 values need 18
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "signed_sub_stride");
    bad = q;
    bad.super_stride = 1;  // 9 blocks need 2 super-blocks
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "super_stride");
    bad = q;
    bad.super_scales = nullptr;
    expect(bad, KVFUSE_ERROR_NULL_POINTER, "super_scales");
    bad = q;
    const float offsets[18] = {};
    bad.super_offsets = offsets;
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "must be NULL");
    bad = q;
    bad.struct_size = KVFUSE_QUANTIZED_WEIGHTS_SIZE_V2;  // a V2 caller has no signed sub-scales
    expect(bad, KVFUSE_ERROR_NULL_POINTER, "signed_sub_scales");
    o.codes[2 * o.ldcodes + 100] = 64;
    expect(describe_q6(o), KVFUSE_ERROR_INVALID_ARGUMENT, "codes[2][100] = 64");
    o.codes[2 * o.ldcodes + 100] = 63;
    ASSERT_EQ(kvfuse_pack_quantized_weights(&q, &h), KVFUSE_OK);
    kvfuse_dtype dtype = KVFUSE_DTYPE_F32;
    EXPECT_EQ(kvfuse_packed_weights_info(h, nullptr, nullptr, &dtype), KVFUSE_OK);
    EXPECT_EQ(dtype, KVFUSE_DTYPE_Q6_SUPER256);
    kvfuse_packed_weights_free(h);
}

TEST(QGemmApi, RejectsBadTwoLevelArguments) {
    const QOperands o = make_two_level({1, 3, 288}, 19);
    const kvfuse_quantized_weights q = describe_weights(o);
    kvfuse_packed_weights* h = nullptr;
    auto expect = [&](kvfuse_quantized_weights bad, kvfuse_status status, const char* text) {
        EXPECT_EQ(kvfuse_pack_quantized_weights(&bad, &h), status) << text;
        EXPECT_EQ(h, nullptr);
        EXPECT_NE(std::string(kvfuse_last_error()).find(text), std::string::npos) << kvfuse_last_error();
    };
    kvfuse_quantized_weights bad = q;
    bad.code_bits = 8;
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "code_bits = 4");
    bad = q;
    bad.scales = o.scales.data();
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "must be NULL");
    bad = q;
    bad.super_stride = 1;  // 9 blocks need 2 super-blocks
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "super_stride");
    bad = q;
    bad.super_offsets = nullptr;
    expect(bad, KVFUSE_ERROR_NULL_POINTER, "super_offsets");
    bad = q;
    bad.struct_size = KVFUSE_QUANTIZED_WEIGHTS_SIZE_V1;  // a V1 caller never has the two-level form
    ASSERT_EQ(kvfuse_pack_quantized_weights(&bad, &h), KVFUSE_ERROR_NULL_POINTER);
    ASSERT_EQ(kvfuse_pack_quantized_weights(&q, &h), KVFUSE_OK);
    kvfuse_dtype dtype = KVFUSE_DTYPE_F32;
    EXPECT_EQ(kvfuse_packed_weights_info(h, nullptr, nullptr, &dtype), KVFUSE_OK);
    EXPECT_EQ(dtype, KVFUSE_DTYPE_Q4_SUPER256);
    kvfuse_packed_weights_free(h);
}

TEST(QGemmApi, RejectsBadArguments) {
    QOperands o = make_operands({1, 3, 64}, 4, 9);
    kvfuse_quantized_weights q = describe_weights(o);
    kvfuse_packed_weights* h = reinterpret_cast<kvfuse_packed_weights*>(&h);
    auto expect = [&](kvfuse_quantized_weights bad, kvfuse_status status, const char* text) {
        EXPECT_EQ(kvfuse_pack_quantized_weights(&bad, &h), status) << text;
        EXPECT_EQ(h, nullptr);
        EXPECT_NE(std::string(kvfuse_last_error()).find(text), std::string::npos) << kvfuse_last_error();
    };
    kvfuse_quantized_weights bad = q;
    bad.in = 48;
    bad.block_stride = 2;
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "multiple of 32");
    bad = q;
    bad.code_bits = 5;
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "code_bits");
    bad = q;
    bad.codes_stride = 63;
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "codes_stride");
    bad = q;
    bad.block_stride = 1;
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "block_stride");
    bad = q;
    bad.out = 0;
    expect(bad, KVFUSE_ERROR_INVALID_ARGUMENT, "out and in");
    bad = q;
    bad.scales = nullptr;
    expect(bad, KVFUSE_ERROR_NULL_POINTER, "scales");
    bad = q;
    bad.struct_size = 3;
    expect(bad, KVFUSE_ERROR_STRUCT_SIZE, "struct_size");
    o.codes[2 * o.ldcodes + 17] = 16;  // too big for 4 bits
    expect(describe_weights(o), KVFUSE_ERROR_INVALID_ARGUMENT, "codes[2][17] = 16");
    EXPECT_EQ(kvfuse_pack_quantized_weights(nullptr, &h), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_pack_quantized_weights(&q, nullptr), KVFUSE_ERROR_NULL_POINTER);
    o.codes[2 * o.ldcodes + 17] = 15;
    ASSERT_EQ(kvfuse_pack_quantized_weights(&q, &h), KVFUSE_OK);
    kvfuse_dtype dtype = KVFUSE_DTYPE_F32;
    EXPECT_EQ(kvfuse_packed_weights_info(h, nullptr, nullptr, &dtype), KVFUSE_OK);
    EXPECT_EQ(dtype, KVFUSE_DTYPE_Q4_BLOCK32);
    float a[64] = {}, c[3] = {};
    EXPECT_EQ(kvfuse_gemm(h, a, 1, 63, 0.0f, c, 3, 1), KVFUSE_ERROR_INVALID_ARGUMENT);  // lda < in
    EXPECT_EQ(kvfuse_gemm(h, a, 1, 64, 0.0f, c, 3, 1), KVFUSE_OK);
    const char* scheme = nullptr;
    EXPECT_EQ(kvfuse_gemm_int8_scheme(nullptr), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_gemm_int8_scheme(&scheme), KVFUSE_OK);
    EXPECT_NE(scheme, nullptr);
    kvfuse_packed_weights_free(h);
    // Quantized dtypes are gemm weights only: the f32/bf16 packer refuses them.
    const float w[64] = {};
    EXPECT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F32, w, 1, 64, 64, KVFUSE_DTYPE_Q8_BLOCK32, &h),
              KVFUSE_ERROR_INVALID_ARGUMENT);
}

}  // namespace
