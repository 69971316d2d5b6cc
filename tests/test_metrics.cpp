// The evaluation's metrics against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "fusion/metrics.h"

namespace {

using namespace kvfuse::fusion;

TEST(Metrics, KlOfIdenticalDistributionsIsZero) {
    const std::vector<float> logits = {1.0f, 2.0f, -3.0f, 0.5f};
    EXPECT_DOUBLE_EQ(kl_divergence(logits, logits), 0.0);
    // Shifting all logits by a constant does not change the distribution.
    std::vector<float> shifted = logits;
    for (float& v : shifted) v += 100.0f;
    EXPECT_NEAR(kl_divergence(logits, shifted), 0.0, 1e-12);
}

TEST(Metrics, KlMatchesHandComputedValue) {
    // P = softmax(0, log 3) = (1/4, 3/4); Q = (1/2, 1/2): KL = 1/4 log(1/2) + 3/4 log(3/2).
    const std::vector<float> p = {0.0f, static_cast<float>(std::log(3.0))};
    const std::vector<float> q = {0.0f, 0.0f};
    EXPECT_NEAR(kl_divergence(p, q), 0.25 * std::log(0.5) + 0.75 * std::log(1.5), 1e-7);
    EXPECT_TRUE(std::isnan(kl_divergence(std::vector<float>{NAN, 0.0f}, q)));
    EXPECT_THROW(kl_divergence(p, std::vector<float>{1.0f}), std::invalid_argument);
}

TEST(Metrics, ArgmaxPrefersTheLowerIndexOnTies) {
    EXPECT_EQ(argmax(std::vector<float>{1.0f, 3.0f, 3.0f, 2.0f}), 1u);
    EXPECT_EQ(argmax(std::vector<float>{5.0f}), 0u);
}

TEST(Metrics, MatchingPrefixStopsAtTheFirstMismatch) {
    const std::vector<std::int32_t> a = {1, 2, 3, 4}, b = {1, 2, 9, 4}, c = {1, 2};
    EXPECT_EQ(matching_prefix(a, b), 2u);
    EXPECT_EQ(matching_prefix(a, a), 4u);
    EXPECT_EQ(matching_prefix(a, c), 2u);
}

TEST(Metrics, RelativeL2) {
    EXPECT_DOUBLE_EQ(relative_l2(std::vector<float>{3.0f, 4.0f}, std::vector<float>{0.0f, 4.0f}), 0.75);
    EXPECT_DOUBLE_EQ(relative_l2(std::vector<float>{0.0f}, std::vector<float>{0.0f}), 0.0);
    EXPECT_TRUE(std::isinf(relative_l2(std::vector<float>{1.0f}, std::vector<float>{0.0f})));
}

TEST(Metrics, AnswerNormalisationAndF1) {
    EXPECT_EQ(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
    EXPECT_DOUBLE_EQ(token_f1("the Eiffel Tower", "Eiffel tower."), 1.0);
    // prediction {paris, france}, answer {paris}: precision 1/2, recall 1, F1 2/3.
    EXPECT_NEAR(token_f1("Paris, France", "Paris"), 2.0 / 3.0, 1e-12);
    EXPECT_DOUBLE_EQ(token_f1("London", "Paris"), 0.0);
    const std::vector<std::string> answers = {"Lyon", "Paris"};
    EXPECT_DOUBLE_EQ(best_token_f1("paris", answers), 1.0);
    EXPECT_DOUBLE_EQ(best_token_f1("paris", std::vector<std::string>{}), 0.0);
}

TEST(Metrics, MeanStandardErrorAndPairedDifference) {
    const std::vector<double> v = {1.0, 2.0, 3.0, 4.0};
    const MeanWithError m = mean_with_error(v);
    EXPECT_DOUBLE_EQ(m.mean, 2.5);
    // sample sd = sqrt(5/3); se = sd / 2
    EXPECT_NEAR(m.standard_error, std::sqrt(5.0 / 3.0) / 2.0, 1e-12);
    const std::vector<double> w = {0.0, 2.0, 2.0, 4.0};
    const MeanWithError d = paired_difference(v, w);
    EXPECT_DOUBLE_EQ(d.mean, 0.5);
    EXPECT_EQ(d.count, 4u);
    EXPECT_EQ(mean_with_error(std::vector<double>{7.0}).standard_error, 0.0);
}

}  // namespace

namespace {

TEST(Metrics, RowAgreementOfLogitMatrices) {
    using namespace kvfuse::fusion;
    // Two rows of vocab 2: the first identical, the second with the other argmax.
    const std::vector<float> reference = {1.0f, 0.0f, 0.0f, 2.0f};
    const std::vector<float> other = {1.0f, 0.0f, 2.0f, 0.0f};
    const LogitAgreement a = compare_logit_rows(reference, other, 2);
    EXPECT_DOUBLE_EQ(a.top1, 0.5);
    EXPECT_NEAR(a.mean_kl, 0.5 * kl_divergence(std::vector<float>{0.0f, 2.0f}, std::vector<float>{2.0f, 0.0f}), 1e-12);
    EXPECT_EQ(argmax_row(reference, 1, 2), 1);
    EXPECT_THROW(compare_logit_rows(reference, std::vector<float>{1.0f}, 2), std::invalid_argument);
}

TEST(Metrics, SpearmanCorrelationWithTies) {
    const std::vector<float> a = {1, 2, 3, 4, 5};
    EXPECT_DOUBLE_EQ(spearman_correlation(a, a), 1.0);
    EXPECT_DOUBLE_EQ(spearman_correlation(a, std::vector<float>{50, 40, 30, 20, 10}), -1.0);
    // b's two 7s share rank 2.5: ranks (0, 1, 2.5, 4, 2.5) against (0, 1, 2, 3, 4) -> 8 / sqrt(10 * 9.5).
    EXPECT_NEAR(spearman_correlation(a, std::vector<float>{5, 6, 7, 8, 7}), 8.0 / std::sqrt(95.0), 1e-12);
    // Only the order matters.
    EXPECT_DOUBLE_EQ(spearman_correlation(a, std::vector<float>{-3, 0.5f, 0.6f, 100, 1e9f}), 1.0);
    EXPECT_TRUE(std::isnan(spearman_correlation(a, std::vector<float>{2, 2, 2, 2, 2})));
    EXPECT_TRUE(std::isnan(spearman_correlation(std::vector<float>{1}, std::vector<float>{1})));
    EXPECT_TRUE(std::isnan(spearman_correlation(a, std::vector<float>{1, 2, std::nanf(""), 4, 5})));
    EXPECT_THROW(spearman_correlation(a, std::vector<float>{1, 2}), std::invalid_argument);
}

TEST(Metrics, TopSetOverlap) {
    const std::vector<float> reference = {0.9f, 0.1f, 0.8f, 0.3f, 0.7f};
    EXPECT_DOUBLE_EQ(top_set_overlap(reference, reference, 0.4), 1.0);
    // Top 2: {0, 2} against {0, 1}.
    EXPECT_DOUBLE_EQ(top_set_overlap(reference, std::vector<float>{0.9f, 0.85f, 0.1f, 0.2f, 0.3f}, 0.4), 0.5);
    // At least one score is compared; ties go to the lower index in both.
    EXPECT_DOUBLE_EQ(top_set_overlap(reference, std::vector<float>{0.1f, 0.2f, 0.3f, 0.4f, 0.5f}, 0.01), 0.0);
    EXPECT_DOUBLE_EQ(top_set_overlap(std::vector<float>(4, 1.0f), std::vector<float>(4, 2.0f), 0.5), 1.0);
    EXPECT_DOUBLE_EQ(top_set_overlap(reference, std::vector<float>{5, 4, 3, 2, 1}, 1.0), 1.0);
    // NaN ranks below every number: the top 2 of {NaN, 0.5, NaN, 0.9, 0.1} are {1, 3}.
    const float nan = std::numeric_limits<float>::quiet_NaN();
    EXPECT_DOUBLE_EQ(top_set_overlap(std::vector<float>{nan, 0.5f, nan, 0.9f, 0.1f}, std::vector<float>{0, 1, 0, 1, 0}, 0.4), 1.0);
    EXPECT_THROW(top_set_overlap(reference, reference, 0.0), std::invalid_argument);
    EXPECT_THROW(top_set_overlap(reference, reference, 1.5), std::invalid_argument);
    EXPECT_THROW(top_set_overlap(reference, std::vector<float>{1}, 0.5), std::invalid_argument);
    EXPECT_THROW(top_set_overlap(std::vector<float>{}, std::vector<float>{}, 0.5), std::invalid_argument);
}

}  // namespace
