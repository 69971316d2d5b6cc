// Top-k on every ISA against reference/ (a full stable sort): exact equality of the index sets
// and their order, over sizes, k, ties, infinities, NaNs and adversarial distributions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstring>
#include <string>
#include <limits>
#include <random>
#include <vector>

#include "isa_test_support.h"
#include "reference/topk_reference.h"

namespace {

using kvfuse::TopkOrder;

std::vector<std::int64_t> expected(const std::vector<float>& x, std::size_t k, TopkOrder order) {
    const std::size_t m = std::min(k, x.size());
    std::vector<std::int64_t> out(m);
    if (m > 0) kvfuse::reference::topk(x.data(), x.size(), m, static_cast<kvfuse_topk_order>(order), out.data());
    return out;
}

void check(const std::vector<float>& x, std::size_t k, const char* what) {
    for (TopkOrder order : {TopkOrder::by_position, TopkOrder::by_score}) {
        kvfuse::Status status;
        const auto got = kvfuse::topk(x, k, order, &status);
        ASSERT_TRUE(status.ok()) << status.message();
        ASSERT_EQ(got, expected(x, k, order)) << what << " n=" << x.size() << " k=" << k
                                              << " order=" << static_cast<int>(order);
    }
}

class TopkTest : public kvfuse::testing::IsaTest {};
KVFUSE_INSTANTIATE_ISA_TESTS(TopkTest);

TEST_P(TopkTest, RandomScoresOverSizesAndK) {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    std::vector<std::size_t> sizes;
    for (std::size_t n = 1; n < 1024; n += 37) sizes.push_back(n);
    for (std::size_t n : {4095, 4096, 4097, 20000, 131072}) sizes.push_back(n);
    for (std::size_t n : sizes) {
        std::vector<float> x(n);
        for (float& v : x) v = normal(rng);
        for (std::size_t k : {std::size_t{0}, std::size_t{1}, n / 100, n * 15 / 100, n / 2, n - 1, n, n + 5})
            check(x, k, "normal");
    }
}

TEST_P(TopkTest, MillionScores) {
    std::mt19937 rng(2);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::vector<float> x(1u << 20);
    for (float& v : x) v = uniform(rng);
    check(x, x.size() * 15 / 100, "1M uniform");
    check(x, 1000, "1M uniform small k");
}

TEST_P(TopkTest, TiesAreBrokenByLowerIndex) {
    for (std::size_t n : {7, 100, 5000, 70000}) {
        std::vector<float> same(n, 3.0f);
        check(same, n / 3, "all equal");
        std::vector<float> few(n);
        for (std::size_t i = 0; i < n; ++i) few[i] = static_cast<float>(i % 4);  // many ties at the boundary
        for (std::size_t k : {n / 4, n / 4 + 1, n / 2 - 1, n * 3 / 4 + 2}) check(few, k, "four values");
        std::vector<float> zeros(n, 0.0f);
        for (std::size_t i = 0; i < n; i += 2) zeros[i] = -0.0f;  // -0 and +0 compare equal
        check(zeros, n / 5, "signed zeros");
    }
}

TEST_P(TopkTest, SortedAndAdversarialInputs) {
    for (std::size_t n : {5000, 65536}) {
        std::vector<float> up(n), down(n);
        for (std::size_t i = 0; i < n; ++i) up[i] = down[n - 1 - i] = static_cast<float>(i);
        check(up, n / 7, "ascending");
        check(down, n / 7, "descending");
        // One huge value, the rest tiny: the sample sees only tiny values.
        std::vector<float> spike(n, 1e-6f);
        spike[n / 2 + 3] = 1e30f;
        for (std::size_t i = 0; i < n; i += 3) spike[i] = 2e-6f;
        check(spike, n / 10, "spike");
        // Values crowded around the threshold, with a sparse stride the sample never hits.
        std::vector<float> crowd(n);
        for (std::size_t i = 0; i < n; ++i) crowd[i] = 1.0f + static_cast<float>(i % 997) * 1e-7f;
        for (std::size_t i = 1; i < n; i += 64) crowd[i] = 5.0f;
        check(crowd, n * 15 / 100, "crowd");
        check(crowd, n / 64, "crowd, exactly the sparse ones");
    }
}

// The bucket histogram inside the sampled bracket: a bracket of subnormals (too narrow for a
// finite bucket scale), a log-uniform spread (nearly all candidates in one bucket), and a
// heavy cluster of equal values right at the boundary.
TEST_P(TopkTest, BracketHistogramEdgeCases) {
    const std::size_t n = 50000;
    std::mt19937 rng(11);
    std::vector<float> subnormal(n);
    std::uniform_int_distribution<int> small(1, 3000);
    for (float& v : subnormal) v = static_cast<float>(small(rng)) * std::numeric_limits<float>::denorm_min();
    for (std::size_t k : {n / 100, n * 15 / 100, n / 2}) check(subnormal, k, "subnormal");
    std::vector<float> spread(n);
    std::uniform_real_distribution<float> exponent(-30.0f, 30.0f);
    for (float& v : spread) v = std::pow(10.0f, exponent(rng));
    for (std::size_t k : {n / 100, n * 15 / 100, n / 2}) check(spread, k, "log-uniform");
    std::vector<float> cluster(n);
    std::normal_distribution<float> normal;
    for (float& v : cluster) v = normal(rng);
    for (std::size_t i = 0; i < n; i += 5) cluster[i] = 1.0364f;  // about the 15 % quantile
    for (std::size_t k : {n * 15 / 100, n * 15 / 100 + 3000, n / 5}) check(cluster, k, "cluster at the boundary");
    // A small k leaves the bracket open above, and the histogram then spans up to the largest
    // candidate: an infinite one, or a range whose width overflows.
    std::vector<float> with_inf(n);
    for (float& v : with_inf) v = normal(rng);
    for (std::size_t i = 17; i < n; i += 9000) with_inf[i] = std::numeric_limits<float>::infinity();
    for (std::size_t k : {n / 200, n / 100}) check(with_inf, k, "open top, infinities");
    std::vector<float> huge(n);
    std::uniform_real_distribution<float> wide(-3e38f, 3e38f);
    for (float& v : huge) v = wide(rng);
    for (std::size_t k : {n / 200, n / 100, n * 15 / 100}) check(huge, k, "open top, overflowing width");
    // Equal scores spread over every lane position around the boundary element.
    std::vector<float> steps(n);
    for (std::size_t i = 0; i < n; ++i) steps[i] = static_cast<float>((i * 7919) % 613);
    for (std::size_t k : {n / 100, n / 100 + 1, n / 7, n / 7 + 5}) check(steps, k, "many ties at the boundary");
}

// The filter keeps scores a group of 64 at a time (on AVX512-VBMI2 through one byte compress of
// the kept positions, then 16 at a time): groups keeping every count from 0 to 64 (so 0 to 4
// runs of 16), the group tail of whole vectors and the scalar tail after it, with the kept ones
// at every position in their group.
TEST_P(TopkTest, FilterGroupsKeepingEveryCount) {
    std::mt19937 rng(13);
    std::normal_distribution<float> normal;
    for (std::size_t n : {std::size_t{64 * 130}, std::size_t{64 * 130 + 16 * 3 + 5}, std::size_t{64 * 200 + 23}}) {
        std::vector<float> x(n);
        std::size_t high = 0;
        for (std::size_t i = 0; i < n; ++i) {
            const std::size_t group = i / 64, lane = (i * 37 + group * 11) % 64;  // scattered in the group
            const bool kept = lane < group % 65;
            x[i] = kept ? 10.0f + normal(rng) : normal(rng);
            high += kept;
        }
        for (std::size_t k : {high / 3, high, high + n / 50, n / 2, n - 7}) check(x, k, "groups of every count");
    }
}

// The bracket's two ends come from one quickselect of the sample (hi among the sample values
// above lo; a rank past them is lo itself), and the scan for the last tie taken is skipped when
// every candidate equal to the boundary is taken: few distinct levels (the sample's ends often
// equal, lo's value repeated), a boundary value repeated among distinct ones (a tie that is cut
// or taken whole), NaN and infinities in the sample, and n not a multiple of any vector width.
TEST_P(TopkTest, BracketEndsAndTiesAtTheBoundary) {
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    std::mt19937 rng(17);
    std::normal_distribution<float> normal;
    for (std::size_t n : {std::size_t{4096}, std::size_t{20011}, std::size_t{131072 + 13}}) {
        std::vector<float> levels(n);
        std::geometric_distribution<int> level(0.3);
        for (float& v : levels) v = static_cast<float>(level(rng));
        for (std::size_t k : {n / 100, n * 15 / 100, n / 2, n * 9 / 10}) check(levels, k, "few levels");
        std::vector<float> repeated(n);
        for (float& v : repeated) v = normal(rng);
        std::vector<float> sorted = repeated;
        std::sort(sorted.begin(), sorted.end(), std::greater<float>());
        const std::size_t k = n * 15 / 100;
        const float boundary = sorted[k - 1];
        for (std::size_t i = 5; i < n; i += 997) repeated[i] = boundary;  // equals on both sides of k
        for (std::size_t kk : {k - 3, k, k + 2, k + 40}) check(repeated, kk, "boundary repeated");
        std::vector<float> odd = repeated;
        for (std::size_t i = 0; i < n; i += 61) odd[i] = nan;
        for (std::size_t i = 7; i < n; i += 1009) odd[i] = inf;
        for (std::size_t i = 11; i < n; i += 1013) odd[i] = -inf;
        for (std::size_t kk : {std::size_t{1}, n / 20, k, n - n / 61 - 2, n - 5}) check(odd, kk, "NaN and infinities sampled");
    }
}

TEST_P(TopkTest, InfinitiesAndNaNs) {
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    for (std::size_t n : {50, 9000}) {
        std::mt19937 rng(static_cast<std::uint32_t>(n));
        std::normal_distribution<float> normal;
        std::vector<float> x(n);
        for (float& v : x) v = normal(rng);
        for (std::size_t i = 0; i < n; i += 7) x[i] = nan;
        x[3] = inf;
        x[4] = -inf;
        x[n - 1] = -inf;
        for (std::size_t k : {std::size_t{1}, n / 10, n * 6 / 7, n - 3, n - 1}) check(x, k, "nan mixed");
        std::vector<float> all_nan(n, nan);
        check(all_nan, n / 2, "all nan");
        std::vector<float> mostly_nan(n, nan);
        mostly_nan[n / 3] = -inf;
        mostly_nan[n / 2] = 1.0f;
        check(mostly_nan, n / 4, "mostly nan");
    }
}

TEST_P(TopkTest, Batched) {
    const std::size_t rows = 5, n = 3000, stride = 3010, k = 450;
    std::mt19937 rng(9);
    std::normal_distribution<float> normal;
    std::vector<float> x(rows * stride);
    for (float& v : x) v = normal(rng);
    std::vector<std::int64_t> out(rows * (k + 3), -1);
    ASSERT_TRUE(kvfuse::topk_batched(x.data(), rows, n, stride, k, TopkOrder::by_position, out.data(), k + 3).ok());
    for (std::size_t r = 0; r < rows; ++r) {
        const std::vector<float> row(x.begin() + static_cast<std::ptrdiff_t>(r * stride),
                                     x.begin() + static_cast<std::ptrdiff_t>(r * stride + n));
        const auto want = expected(row, k, TopkOrder::by_position);
        ASSERT_EQ(std::vector<std::int64_t>(out.begin() + static_cast<std::ptrdiff_t>(r * (k + 3)),
                                            out.begin() + static_cast<std::ptrdiff_t>(r * (k + 3) + k)),
                  want);
        EXPECT_EQ(out[r * (k + 3) + k], -1);  // padding untouched
    }
}

TEST_P(TopkTest, InvalidArguments) {
    std::vector<float> x(10, 1.0f);
    std::vector<std::int64_t> out(10);
    std::size_t count = 99;
    EXPECT_EQ(kvfuse_topk(x.data(), 10, 3, KVFUSE_TOPK_BY_POSITION, out.data(), nullptr), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_topk(nullptr, 10, 3, KVFUSE_TOPK_BY_POSITION, out.data(), &count), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_topk(x.data(), 10, 3, KVFUSE_TOPK_BY_POSITION, nullptr, &count), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_topk(x.data(), 10, 3, static_cast<kvfuse_topk_order>(4), out.data(), &count),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_topk(x.data(), 10, 0, KVFUSE_TOPK_BY_POSITION, nullptr, &count), KVFUSE_OK);
    EXPECT_EQ(count, 0u);
    EXPECT_EQ(kvfuse::topk_batched(x.data(), 2, 5, 4, 2, TopkOrder::by_position, out.data(), 2).code(),
              kvfuse::StatusCode::invalid_argument);
    EXPECT_EQ(kvfuse::topk_batched(x.data(), 2, 5, 5, 3, TopkOrder::by_position, out.data(), 2).code(),
              kvfuse::StatusCode::invalid_argument);
    // Sizes no buffer can have (found by fuzz_c_api): n * 4 bytes past SIZE_MAX used to reach the
    // reference's std::vector(n), whose std::length_error escaped through the C API; a wrapped
    // rows * stride span reached the kernel.
    const std::size_t huge = std::numeric_limits<std::size_t>::max() / 2;
    EXPECT_EQ(kvfuse_topk(x.data(), huge, 3, KVFUSE_TOPK_BY_SCORE, out.data(), &count), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(count, 0u);
    EXPECT_EQ(kvfuse_topk(x.data(), huge / 2, huge / 2, KVFUSE_TOPK_BY_SCORE, out.data(), &count),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_topk_batched(x.data(), 2, 5, huge, 2, KVFUSE_TOPK_BY_POSITION, out.data(), 2),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_topk_batched(x.data(), 2, 5, 5, 2, KVFUSE_TOPK_BY_POSITION, out.data(), huge),
              KVFUSE_ERROR_INVALID_ARGUMENT);
}

// Batched rows in parallel (n >= 4096 takes the parallel loop) at 1, 3 and 7 threads and the
// machine's count: every row the reference's exact answer.
TEST_P(TopkTest, BatchedAtEveryThreadCount) {
    const std::size_t rows = 11, n = 5000, k = 333;
    std::mt19937 rng(12);
    std::normal_distribution<float> normal;
    std::vector<float> x(rows * n);
    for (float& v : x) v = normal(rng);
    kvfuse::testing::at_thread_counts([&](int) {
        std::vector<std::int64_t> out(rows * k, -1);
        ASSERT_TRUE(kvfuse::topk_batched(x.data(), rows, n, n, k, TopkOrder::by_score, out.data(), k).ok());
        for (std::size_t r = 0; r < rows; ++r) {
            const std::vector<float> row(x.begin() + static_cast<std::ptrdiff_t>(r * n),
                                         x.begin() + static_cast<std::ptrdiff_t>((r + 1) * n));
            ASSERT_EQ(std::vector<std::int64_t>(out.begin() + static_cast<std::ptrdiff_t>(r * k),
                                                out.begin() + static_cast<std::ptrdiff_t>((r + 1) * k)),
                      expected(row, k, TopkOrder::by_score))
                << "row " << r;
        }
    });
}

// Bad input from C on every ISA: an order outside the enum (negative included), an
// indices_stride whose rows wrap size_t, and misaligned scores or indices are refused before
// anything is written.
TEST_P(TopkTest, OutOfRangeOrderWrappingStrideAndMisalignmentAreRefused) {
    std::vector<float> x(64, 1.0f);
    std::vector<std::int64_t> out(64, -1);
    std::size_t count = 99;
    int negative = -1;
    kvfuse_topk_order bad_order;
    std::memcpy(&bad_order, &negative, sizeof bad_order);  // as a C caller passes it
    EXPECT_EQ(kvfuse_topk(x.data(), 10, 3, bad_order, out.data(), &count), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvfuse_last_error()).find("order (-1)"), std::string::npos) << kvfuse_last_error();
    EXPECT_EQ(kvfuse_topk_batched(x.data(), 2, 8, 8, 2, bad_order, out.data(), 2), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_topk_batched(x.data(), 2, 8, 8, 2, KVFUSE_TOPK_BY_SCORE, out.data(), std::size_t{1} << 61),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvfuse_last_error()).find("overflows"), std::string::npos) << kvfuse_last_error();
    const auto* odd_scores = reinterpret_cast<const float*>(reinterpret_cast<const char*>(x.data()) + 1);
    auto* odd_indices = reinterpret_cast<std::int64_t*>(reinterpret_cast<char*>(out.data()) + 4);
    EXPECT_EQ(kvfuse_topk(odd_scores, 10, 3, KVFUSE_TOPK_BY_SCORE, out.data(), &count), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_topk(x.data(), 10, 3, KVFUSE_TOPK_BY_SCORE, odd_indices, &count), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_topk_batched(x.data(), 2, 8, 8, 2, KVFUSE_TOPK_BY_SCORE, odd_indices, 2), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(out, std::vector<std::int64_t>(64, -1));
}

}  // namespace
