// The dense-layer product on every ISA (and, where the CPU has AVX512-BF16, the vdpbf16ps
// variant that avx512 then runs) against reference/ (double sums), f32 and bf16 weights, odd
// sizes around every register and cache block edge, strides, beta, NaN/Inf, 1/3/7 threads,
// and the C API's argument checks.
//
// Tolerance: a sum of `in` products in f32 (any order, FMA or not) is within
// (in - 1) * u * sum_k |a_k w_k| of the exact sum (u = 2^-24), plus one rounding of beta * C and
// of the result. We allow (in + 2) * eps * (sum_k |a_k w_k| + |beta * C|) with eps = 2^-23:
// twice that bound, and far below what one wrong or missing product would cost (inputs in
// [-1, 1]). With bf16 weights the reference multiplies the same bf16-rounded activations, so
// the same bound holds.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "isa_test_support.h"
#include "kernels/common/bf16.h"
#include "reference/gemm_reference.h"

namespace {

using kvfuse::Dtype;
using kvfuse::PackedWeights;

struct Shape {
    std::size_t n, out, in;
};

struct Operands {
    Shape s;
    std::size_t lda, ldw, ldc;
    std::vector<float> a, w, c;  // w in f32 (for bf16 weights: values already bf16)
    std::vector<std::uint16_t> w_bf16;
};

Operands make_operands(Shape s, std::uint32_t seed, std::size_t pad = 0) {
    Operands o{s, s.in + pad, s.in + pad, s.out + pad, {}, {}, {}, {}};
    o.a = kvfuse::testing::random_floats(s.n * o.lda, seed);
    o.w = kvfuse::testing::random_floats(s.out * o.ldw, seed + 1);
    o.c = kvfuse::testing::random_floats(s.n * o.ldc, seed + 2);
    o.w_bf16.resize(o.w.size());
    for (std::size_t i = 0; i < o.w.size(); ++i) o.w_bf16[i] = kvfuse::detail::f32_to_bf16_bits(o.w[i]);
    return o;
}

PackedWeights pack(const Operands& o, Dtype dtype) {
    PackedWeights packed;
    kvfuse::Status s = dtype == Dtype::f32
                           ? PackedWeights::pack(o.w.data(), o.s.out, o.s.in, o.ldw, dtype, packed)
                           : PackedWeights::pack(reinterpret_cast<const kvfuse::bf16*>(o.w_bf16.data()), o.s.out,
                                                 o.s.in, o.ldw, dtype, packed);
    EXPECT_TRUE(s.ok()) << s.message();
    return packed;
}

float activation(const Operands& o, std::size_t i, std::size_t k, Dtype dtype) {
    const float x = o.a[i * o.lda + k];
    return dtype == Dtype::f32 ? x : kvfuse::detail::bf16_bits_to_f32(kvfuse::detail::f32_to_bf16_bits(x));
}

float weight(const Operands& o, std::size_t j, std::size_t k, Dtype dtype) {
    return dtype == Dtype::f32 ? o.w[j * o.ldw + k] : kvfuse::detail::bf16_bits_to_f32(o.w_bf16[j * o.ldw + k]);
}

// Runs the kernel and the reference on the same C and compares every element (and checks that
// the padding columns of C were left alone).
void check(const Operands& o, Dtype dtype, float beta, int threads, const std::string& what) {
    const PackedWeights packed = pack(o, dtype);
    ASSERT_FALSE(packed.empty());
    std::vector<float> got = o.c, want = o.c;
    const kvfuse::Status s = kvfuse::gemm(packed, o.a.data(), o.s.n, got.data(), beta, threads, o.lda, o.ldc);
    ASSERT_TRUE(s.ok()) << s.message();
    if (dtype == Dtype::f32)
        kvfuse::reference::gemm(o.a.data(), o.s.n, o.lda, o.w.data(), o.s.out, o.s.in, o.ldw, beta, want.data(), o.ldc);
    else
        kvfuse::reference::gemm_bf16(o.a.data(), o.s.n, o.lda, o.w_bf16.data(), o.s.out, o.s.in, o.ldw, beta,
                                     want.data(), o.ldc);
    const double eps = std::numeric_limits<float>::epsilon();
    for (std::size_t i = 0; i < o.s.n; ++i) {
        for (std::size_t j = 0; j < o.s.out; ++j) {
            const float g = got[i * o.ldc + j], r = want[i * o.ldc + j];
            if (std::isnan(r)) {
                ASSERT_TRUE(std::isnan(g)) << what << " (" << i << ", " << j << "): " << g << ", want NaN";
                continue;
            }
            if (std::isinf(r)) {
                ASSERT_EQ(g, r) << what << " (" << i << ", " << j << ")";
                continue;
            }
            double magnitude = beta == 0.0f ? 0.0 : std::fabs(double(beta) * o.c[i * o.ldc + j]);
            for (std::size_t k = 0; k < o.s.in; ++k)
                magnitude += std::fabs(double(activation(o, i, k, dtype)) * weight(o, j, k, dtype));
            const double tolerance = double(o.s.in + 2) * eps * magnitude;
            ASSERT_LE(std::fabs(double(g) - r), tolerance)
                << what << " (" << i << ", " << j << "): got " << g << " want " << r;
        }
        for (std::size_t j = o.s.out; j < o.ldc; ++j)
            ASSERT_EQ(std::memcmp(&got[i * o.ldc + j], &o.c[i * o.ldc + j], sizeof(float)), 0)
                << what << ": padding column " << j << " of row " << i << " was written";
    }
}

std::string describe(const Shape& s, Dtype dtype, float beta, int threads, std::size_t pad) {
    return "n=" + std::to_string(s.n) + " out=" + std::to_string(s.out) + " in=" + std::to_string(s.in) +
           (dtype == Dtype::f32 ? " f32" : " bf16") + " beta=" + std::to_string(beta) +
           " threads=" + std::to_string(threads) + " pad=" + std::to_string(pad);
}

class GemmTest : public kvfuse::testing::IsaTest {};
KVFUSE_INSTANTIATE_ISA_TESTS(GemmTest);

// Sizes on both sides of every register block (AVX-512 14 x 32, AVX2/NEON 6 x 16), of the
// vector widths and of a packed panel (32), odd inner sizes (bf16 pairs).
TEST_P(GemmTest, OddSizesMatchReference) {
    const std::size_t rows[] = {1, 2, 5, 6, 7, 13, 14, 15, 29, 70};
    const std::size_t cols[] = {1, 3, 15, 16, 17, 31, 32, 33, 47, 70};
    const std::size_t inner[] = {1, 2, 3, 15, 16, 17, 33, 70};
    std::uint32_t seed = 1;
    for (std::size_t n : rows)
        for (std::size_t out : cols)
            for (std::size_t in : inner)
                for (Dtype dtype : {Dtype::f32, Dtype::bf16}) {
                    const Shape s{n, out, in};
                    const std::size_t pad = seed % 3 == 0 ? 5 : 0;
                    const float beta = seed % 4 == 0 ? 1.0f : (seed % 4 == 1 ? 0.0f : 0.5f);
                    check(make_operands(s, seed++, pad), dtype, beta, 1, describe(s, dtype, beta, 1, pad));
                }
}

// Inner sizes beyond one depth block (512): later blocks add into C.
TEST_P(GemmTest, SeveralDepthBlocks) {
    for (std::size_t in : {255, 511, 512, 513, 1100})
        for (Dtype dtype : {Dtype::f32, Dtype::bf16})
            for (float beta : {0.0f, 1.0f}) {
                const Shape s{29, 45, in};
                check(make_operands(s, static_cast<std::uint32_t>(in), 3), dtype, beta, 1, describe(s, dtype, beta, 1, 3));
            }
}

// Thread counts that do not divide the work, on shapes split by rows (many rows) and by
// columns (few rows); the result must also be bit-identical to one thread's, because each
// element is summed in the same order whatever thread computes it.
TEST_P(GemmTest, ThreadCountsAgreeExactly) {
    for (const Shape s : {Shape{70, 70, 70}, Shape{400, 50, 40}, Shape{3, 300, 33}, Shape{1, 1000, 64}})
        for (Dtype dtype : {Dtype::f32, Dtype::bf16}) {
            const Operands o = make_operands(s, static_cast<std::uint32_t>(s.n * 7 + s.out), 1);
            const PackedWeights packed = pack(o, dtype);
            std::vector<float> one = o.c;
            ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), s.n, one.data(), 1.0f, 1, o.lda, o.ldc).ok());
            for (int threads : {1, 3, 7}) {
                check(o, dtype, 1.0f, threads, describe(s, dtype, 1.0f, threads, 1));
                std::vector<float> many = o.c;
                ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), s.n, many.data(), 1.0f, threads, o.lda, o.ldc).ok());
                ASSERT_EQ(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)), 0)
                    << describe(s, dtype, 1.0f, threads, 1) << ": differs from one thread";
            }
            std::vector<float> automatic = o.c;
            ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), s.n, automatic.data(), 1.0f, 0, o.lda, o.ldc).ok());
            ASSERT_EQ(std::memcmp(one.data(), automatic.data(), one.size() * sizeof(float)), 0);
        }
}

// NaN and Inf in A or W propagate as in the reference (NaN where it has NaN, the same
// infinity where it has one); values stay small so that nothing else overflows.
TEST_P(GemmTest, NanAndInfPropagate) {
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    const Shape s{14, 35, 19};
    for (Dtype dtype : {Dtype::f32, Dtype::bf16}) {
        Operands o = make_operands(s, 99);
        o.a[2 * o.lda + 5] = nan;   // row 2: NaN everywhere
        o.a[4 * o.lda + 0] = inf;   // row 4: +-Inf by the sign of each W[j][0]
        o.a[7 * o.lda + 3] = inf;   // row 7: Inf and -Inf meet in column 9 (below)
        o.a[7 * o.lda + 4] = inf;
        o.w[9 * o.ldw + 3] = 0.5f;
        o.w[9 * o.ldw + 4] = -0.5f;  // (7, 9): Inf - Inf = NaN
        o.w[20 * o.ldw + 11] = nan;  // column 20: NaN in every row
        o.w[33 * o.ldw + 2] = -inf;  // column 33 (second panel): -Inf * a[i][2]
        for (std::size_t i = 0; i < o.w.size(); ++i) o.w_bf16[i] = kvfuse::detail::f32_to_bf16_bits(o.w[i]);
        check(o, dtype, 0.0f, 1, std::string("NaN/Inf ") + (dtype == Dtype::f32 ? "f32" : "bf16"));
        check(o, dtype, 1.0f, 2, std::string("NaN/Inf beta=1 ") + (dtype == Dtype::f32 ? "f32" : "bf16"));
    }
}

// beta = 0 overwrites C without reading it: a NaN already there must not survive.
TEST_P(GemmTest, BetaZeroIgnoresOldC) {
    const Shape s{13, 33, 17};
    for (Dtype dtype : {Dtype::f32, Dtype::bf16}) {
        Operands o = make_operands(s, 5);
        for (std::size_t i = 0; i < s.n; ++i)
            for (std::size_t j = 0; j < s.out; ++j) o.c[i * o.ldc + j] = std::numeric_limits<float>::quiet_NaN();
        const PackedWeights packed = pack(o, dtype);
        std::vector<float> got = o.c;
        ASSERT_TRUE(kvfuse::gemm(packed, o.a.data(), s.n, got.data(), 0.0f).ok());
        for (float v : got) ASSERT_FALSE(std::isnan(v));
    }
}

TEST_P(GemmTest, Bf16SchemeNamesTheKernel) {
    const std::string scheme = kvfuse::gemm_bf16_scheme();
    const kvfuse::CpuFeatures cpu = kvfuse::cpu_features();
    switch (GetParam()) {
        case kvfuse::Isa::scalar: EXPECT_EQ(scheme, "reference"); break;
        // dpbf16ps where the build running holds the avx512_bf16 variant (not the plain avx512
        // objects, which the tests also force on a BF16 CPU).
        case kvfuse::Isa::avx512: {
            const bool variant = std::string(kvfuse::detail::active_kernel_build()).find("avx512_bf16") != std::string::npos;
            EXPECT_EQ(variant, cpu.avx512_bf16 != 0 && GetParam().variant);
            EXPECT_EQ(scheme, variant ? "dpbf16ps" : "widened_fma");
            break;
        }
        default: EXPECT_EQ(scheme, "widened_fma"); break;
    }
}

// Packing an f32 matrix as bf16 rounds each weight to nearest even: the same result as packing
// the rounded matrix.
TEST(GemmPacking, F32PackedAsBf16RoundsEachWeight) {
    const Operands o = make_operands({9, 40, 21}, 3, 2);
    PackedWeights from_f32, from_bf16;
    ASSERT_TRUE(PackedWeights::pack(o.w.data(), 40, 21, o.ldw, Dtype::bf16, from_f32).ok());
    ASSERT_TRUE(PackedWeights::pack(reinterpret_cast<const kvfuse::bf16*>(o.w_bf16.data()), 40, 21, o.ldw, Dtype::bf16,
                                    from_bf16)
                    .ok());
    std::vector<float> x(9 * 40), y(9 * 40);
    ASSERT_TRUE(kvfuse::gemm(from_f32, o.a.data(), 9, x.data(), 0.0f, 1, o.lda).ok());
    ASSERT_TRUE(kvfuse::gemm(from_bf16, o.a.data(), 9, y.data(), 0.0f, 1, o.lda).ok());
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0);
    EXPECT_EQ(from_f32.out(), 40u);
    EXPECT_EQ(from_f32.in(), 21u);
    EXPECT_EQ(from_f32.dtype(), Dtype::bf16);
}

TEST(GemmApi, RejectsBadArguments) {
    const float w[6] = {1, 2, 3, 4, 5, 6};
    kvfuse_packed_weights* h = reinterpret_cast<kvfuse_packed_weights*>(&h);  // must be reset to NULL on failure
    EXPECT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F32, w, 2, 3, 2, KVFUSE_DTYPE_F32, &h), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(h, nullptr);
    EXPECT_NE(std::string(kvfuse_last_error()).find("row_stride"), std::string::npos);
    EXPECT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F32, w, 0, 3, 3, KVFUSE_DTYPE_F32, &h), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F32, w, 2, 0, 3, KVFUSE_DTYPE_F32, &h), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_pack_weights(static_cast<kvfuse_dtype>(7), w, 2, 3, 3, KVFUSE_DTYPE_F32, &h),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F32, w, 2, 3, 3, static_cast<kvfuse_dtype>(-1), &h),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F32, nullptr, 2, 3, 3, KVFUSE_DTYPE_F32, &h), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F32, w, 2, 3, 3, KVFUSE_DTYPE_F32, nullptr), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F32, w, SIZE_MAX / 2, 3, 3, KVFUSE_DTYPE_F32, &h),
              KVFUSE_ERROR_INVALID_ARGUMENT);

    ASSERT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F32, w, 2, 3, 3, KVFUSE_DTYPE_F32, &h), KVFUSE_OK);
    ASSERT_NE(h, nullptr);
    size_t out = 0, in = 0;
    kvfuse_dtype dtype = KVFUSE_DTYPE_BF16;
    EXPECT_EQ(kvfuse_packed_weights_info(h, &out, &in, &dtype), KVFUSE_OK);
    EXPECT_EQ(out, 2u);
    EXPECT_EQ(in, 3u);
    EXPECT_EQ(dtype, KVFUSE_DTYPE_F32);
    EXPECT_EQ(kvfuse_packed_weights_info(nullptr, &out, &in, &dtype), KVFUSE_ERROR_NULL_POINTER);

    float a[6] = {1, 0, 0, 0, 1, 0};
    float c[4] = {};
    EXPECT_EQ(kvfuse_gemm(nullptr, a, 2, 3, 0.0f, c, 2, 0), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_gemm(h, a, 2, 2, 0.0f, c, 2, 0), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvfuse_last_error()).find("lda"), std::string::npos);
    EXPECT_EQ(kvfuse_gemm(h, a, 2, 3, 0.0f, c, 1, 0), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_gemm(h, a, 2, 3, 0.0f, c, 2, -1), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_gemm(h, nullptr, 2, 3, 0.0f, c, 2, 0), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_gemm(h, a, 2, 3, 0.0f, nullptr, 2, 0), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_gemm(h, a, 2, 3, 0.0f, a + 1, 2, 0), KVFUSE_ERROR_INVALID_ARGUMENT);  // overlap
    EXPECT_EQ(kvfuse_gemm(h, a, SIZE_MAX, 3, 0.0f, c, 2, 0), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_gemm(h, nullptr, 0, 3, 0.0f, nullptr, 2, 0), KVFUSE_OK);  // n = 0: nothing to do
    ASSERT_EQ(kvfuse_gemm(h, a, 2, 3, 0.0f, c, 2, 1), KVFUSE_OK);
    EXPECT_EQ(c[0], 1.0f);  // row 0 of A picks column 0 of W^T: W[0][0], W[1][0]
    EXPECT_EQ(c[1], 4.0f);
    EXPECT_EQ(c[2], 2.0f);
    EXPECT_EQ(c[3], 5.0f);
    const char* scheme = nullptr;
    EXPECT_EQ(kvfuse_gemm_bf16_scheme(nullptr), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_gemm_bf16_scheme(&scheme), KVFUSE_OK);
    EXPECT_NE(scheme, nullptr);
    kvfuse_packed_weights_free(h);
    kvfuse_packed_weights_free(nullptr);
}

TEST(GemmApi, PackedWeightsMove) {
    const float w[4] = {1, 2, 3, 4};
    PackedWeights a;
    EXPECT_TRUE(a.empty());
    ASSERT_TRUE(PackedWeights::pack(w, 2, 2, 0, Dtype::f32, a).ok());
    PackedWeights b = std::move(a);
    EXPECT_TRUE(a.empty());
    EXPECT_FALSE(b.empty());
    EXPECT_EQ(b.out(), 2u);
    float x[2] = {1, 1}, y[2] = {};
    ASSERT_TRUE(kvfuse::gemm(b, x, 1, y).ok());
    EXPECT_EQ(y[0], 3.0f);
    EXPECT_EQ(y[1], 7.0f);
    EXPECT_FALSE(kvfuse::gemm(a, x, 1, y).ok());  // an empty object is a null handle
}

}  // namespace
