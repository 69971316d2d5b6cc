// How far a fused run is from the full prefill, and how good an answer is. Pure functions,
// double precision, no model code: the evaluation (`kvfuse eval`) composes them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvfuse::fusion {

// KL(P || Q) in nats of the next-token distributions softmax(p_logits) and softmax(q_logits),
// computed with log-sum-exp in double. Sizes must match; non-finite logits give NaN.
double kl_divergence(std::span<const float> p_logits, std::span<const float> q_logits);

// Index of the largest logit, the lower index on ties (what greedy decoding picks).
std::size_t argmax(std::span<const float> logits);

// Index of the largest logit of row `row` of a [rows x vocab] matrix.
std::int32_t argmax_row(std::span<const float> logits, std::size_t row, std::size_t vocab);

// Row by row agreement of two [rows x vocab] logit matrices of equal size: mean over rows of
// KL(reference || other), and the fraction of rows whose argmax agrees.
struct LogitAgreement {
    double mean_kl = 0.0;
    double top1 = 0.0;
};
LogitAgreement compare_logit_rows(std::span<const float> reference, std::span<const float> other, std::size_t vocab);

// Tokens equal from the start until the first mismatch (or the shorter length).
std::size_t matching_prefix(std::span<const std::int32_t> a, std::span<const std::int32_t> b);

// ||fused - full|| / ||full|| (L2); 0 when both are zero, +Inf when only `full` is zero.
double relative_l2(std::span<const float> fused, std::span<const float> full);

// SQuAD-style answer normalisation: lower case, punctuation removed, articles (a, an, the)
// removed, white space collapsed.
std::string normalize_answer(std::string_view text);

// Token F1 of a prediction against one answer after normalisation (bag-of-words overlap).
double token_f1(std::string_view prediction, std::string_view answer);

// Best token F1 over several acceptable answers (0 when there are none).
double best_token_f1(std::string_view prediction, std::span<const std::string> answers);

// Mean and standard error of the mean (sample standard deviation / sqrt(n)); n < 2 gives se 0.
struct MeanWithError {
    double mean = 0.0;
    double standard_error = 0.0;
    std::size_t count = 0;
};
MeanWithError mean_with_error(std::span<const double> values);

// Mean and standard error of a[i] - b[i]: the paired difference of two methods on the same
// requests. Sizes must match.
MeanWithError paired_difference(std::span<const double> a, std::span<const double> b);

// Spearman's rank correlation of two equally long score vectors: Pearson's correlation of their
// ranks, tied scores sharing their average rank. NaN when fewer than two scores, when either
// vector is constant, or when a score is NaN. Sizes must match.
double spearman_correlation(std::span<const float> a, std::span<const float> b);

// The share of `reference`'s top max(1, floor(fraction * n)) scores that `other` also puts in
// its top as many (ranked by score, ties by lower index, NaN last: kvfuse's top-k, as the
// selection is). fraction in (0, 1]; sizes must match and be non-zero.
double top_set_overlap(std::span<const float> reference, std::span<const float> other, double fraction);

}  // namespace kvfuse::fusion
