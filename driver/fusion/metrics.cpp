#include "fusion/metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iterator>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>

#include "driver_errors.h"
#include "kvfuse/kvfuse.hpp"

namespace kvfuse::fusion {

namespace {

// log(sum(exp(x))) in double, shifted by the maximum so nothing overflows.
double log_sum_exp(std::span<const float> logits) {
    double max = -std::numeric_limits<double>::infinity();
    for (float v : logits) max = std::max(max, static_cast<double>(v));
    double sum = 0.0;
    for (float v : logits) sum += std::exp(static_cast<double>(v) - max);
    return max + std::log(sum);
}

std::vector<std::string> words(std::string_view text) {
    std::vector<std::string> out;
    std::istringstream stream{std::string(text)};
    for (std::string word; stream >> word;) out.push_back(word);
    return out;
}

// 0-based ranks of x ascending, tied values sharing their average rank.
std::vector<double> average_ranks(std::span<const float> x) {
    std::vector<std::size_t> order(x.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t p, std::size_t q) { return x[p] < x[q]; });
    std::vector<double> ranks(x.size());
    for (std::size_t first = 0; first < order.size();) {
        std::size_t last = first + 1;
        while (last < order.size() && x[order[last]] == x[order[first]]) ++last;
        const double rank = 0.5 * static_cast<double>(first + last - 1);
        for (std::size_t i = first; i < last; ++i) ranks[order[i]] = rank;
        first = last;
    }
    return ranks;
}

// Positions of the k best scores, ascending: the library's exact top-k, so ties go to the lower
// index and NaN ranks last, as in the selection itself.
std::vector<std::int64_t> best_positions(std::span<const float> x, std::size_t k) {
    std::vector<std::int64_t> out(k);
    std::size_t count = 0;
    driver::throw_if_failed(kvfuse::topk(x.data(), x.size(), k, kvfuse::TopkOrder::by_position, out.data(), count), "top-k");
    out.resize(count);
    return out;
}

}  // namespace

double spearman_correlation(std::span<const float> a, std::span<const float> b) {
    if (a.size() != b.size()) throw std::invalid_argument("spearman_correlation: sizes differ");
    const double nan = std::numeric_limits<double>::quiet_NaN();
    if (a.size() < 2) return nan;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::isnan(a[i]) || std::isnan(b[i])) return nan;
    const std::vector<double> ra = average_ranks(a), rb = average_ranks(b);
    const double mean = 0.5 * static_cast<double>(a.size() - 1);  // of 0 .. n-1, ties included
    double sab = 0.0, saa = 0.0, sbb = 0.0;
    for (std::size_t i = 0; i < ra.size(); ++i) {
        sab += (ra[i] - mean) * (rb[i] - mean);
        saa += (ra[i] - mean) * (ra[i] - mean);
        sbb += (rb[i] - mean) * (rb[i] - mean);
    }
    if (saa == 0.0 || sbb == 0.0) return nan;
    return sab / std::sqrt(saa * sbb);
}

double top_set_overlap(std::span<const float> reference, std::span<const float> other, double fraction) {
    if (reference.size() != other.size() || reference.empty())
        throw std::invalid_argument("top_set_overlap: scores must be non-empty and of equal size");
    if (!(fraction > 0.0 && fraction <= 1.0)) throw std::invalid_argument("top_set_overlap: fraction must be in (0, 1]");
    const std::size_t k = std::max<std::size_t>(1, static_cast<std::size_t>(fraction * static_cast<double>(reference.size())));
    const std::vector<std::int64_t> a = best_positions(reference, k), b = best_positions(other, k);
    std::vector<std::int64_t> common;
    std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(common));
    return static_cast<double>(common.size()) / static_cast<double>(k);
}

double kl_divergence(std::span<const float> p_logits, std::span<const float> q_logits) {
    if (p_logits.size() != q_logits.size() || p_logits.empty())
        throw std::invalid_argument("kl_divergence: logits must be non-empty and of equal size");
    for (std::size_t i = 0; i < p_logits.size(); ++i)
        if (!std::isfinite(p_logits[i]) || !std::isfinite(q_logits[i]))
            return std::numeric_limits<double>::quiet_NaN();
    const double p_norm = log_sum_exp(p_logits), q_norm = log_sum_exp(q_logits);
    double kl = 0.0;
    for (std::size_t i = 0; i < p_logits.size(); ++i) {
        const double log_p = p_logits[i] - p_norm;
        const double log_q = q_logits[i] - q_norm;
        kl += std::exp(log_p) * (log_p - log_q);
    }
    return std::max(kl, 0.0);  // rounding can leave a tiny negative value for equal inputs
}

std::size_t argmax(std::span<const float> logits) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < logits.size(); ++i)
        if (logits[i] > logits[best]) best = i;
    return best;
}

std::int32_t argmax_row(std::span<const float> logits, std::size_t row, std::size_t vocab) {
    return static_cast<std::int32_t>(argmax(logits.subspan(row * vocab, vocab)));
}

LogitAgreement compare_logit_rows(std::span<const float> reference, std::span<const float> other, std::size_t vocab) {
    if (vocab == 0 || reference.size() != other.size() || reference.size() % vocab != 0 || reference.empty())
        throw std::invalid_argument("compare_logit_rows: matrices must be non-empty, equal and whole rows");
    const std::size_t rows = reference.size() / vocab;
    LogitAgreement out;
    for (std::size_t r = 0; r < rows; ++r) {
        const auto a = reference.subspan(r * vocab, vocab), b = other.subspan(r * vocab, vocab);
        out.mean_kl += kl_divergence(a, b);
        out.top1 += argmax(a) == argmax(b) ? 1.0 : 0.0;
    }
    out.mean_kl /= static_cast<double>(rows);
    out.top1 /= static_cast<double>(rows);
    return out;
}

std::size_t matching_prefix(std::span<const std::int32_t> a, std::span<const std::int32_t> b) {
    std::size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
    return n;
}

double relative_l2(std::span<const float> fused, std::span<const float> full) {
    if (fused.size() != full.size()) throw std::invalid_argument("relative_l2: sizes differ");
    double diff = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < full.size(); ++i) {
        const double d = static_cast<double>(fused[i]) - full[i];
        diff += d * d;
        norm += static_cast<double>(full[i]) * full[i];
    }
    if (norm == 0.0) return diff == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
    return std::sqrt(diff / norm);
}

std::string normalize_answer(std::string_view text) {
    std::string lowered;
    lowered.reserve(text.size());
    for (char ch : text) {
        const unsigned char c = static_cast<unsigned char>(ch);
        if (std::ispunct(c)) continue;
        lowered.push_back(static_cast<char>(std::tolower(c)));
    }
    std::string out;
    for (const std::string& word : words(lowered)) {
        if (word == "a" || word == "an" || word == "the") continue;
        if (!out.empty()) out.push_back(' ');
        out += word;
    }
    return out;
}

double token_f1(std::string_view prediction, std::string_view answer) {
    const auto predicted = words(normalize_answer(prediction));
    const auto expected = words(normalize_answer(answer));
    if (predicted.empty() || expected.empty()) return predicted == expected ? 1.0 : 0.0;
    std::map<std::string, int> counts;
    for (const auto& w : expected) ++counts[w];
    int common = 0;
    for (const auto& w : predicted)
        if (auto it = counts.find(w); it != counts.end() && it->second > 0) {
            --it->second;
            ++common;
        }
    if (common == 0) return 0.0;
    const double precision = static_cast<double>(common) / predicted.size();
    const double recall = static_cast<double>(common) / expected.size();
    return 2.0 * precision * recall / (precision + recall);
}

double best_token_f1(std::string_view prediction, std::span<const std::string> answers) {
    double best = 0.0;
    for (const auto& answer : answers) best = std::max(best, token_f1(prediction, answer));
    return best;
}

MeanWithError mean_with_error(std::span<const double> values) {
    MeanWithError out;
    out.count = values.size();
    if (values.empty()) return out;
    double sum = 0.0;
    for (double v : values) sum += v;
    out.mean = sum / values.size();
    if (values.size() < 2) return out;
    double squares = 0.0;
    for (double v : values) squares += (v - out.mean) * (v - out.mean);
    out.standard_error = std::sqrt(squares / (values.size() - 1) / values.size());
    return out;
}

MeanWithError paired_difference(std::span<const double> a, std::span<const double> b) {
    if (a.size() != b.size()) throw std::invalid_argument("paired_difference: sizes differ");
    std::vector<double> diff(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) diff[i] = a[i] - b[i];
    return mean_with_error(diff);
}

}  // namespace kvfuse::fusion
