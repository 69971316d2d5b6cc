#include "fusion/score_accuracy.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <stdexcept>

#include "fusion/metrics.h"
#include "kvfuse/kvfuse.hpp"

namespace kvfuse::fusion {

namespace {

constexpr ScoreKeys kQuantized[] = {ScoreKeys::int8, ScoreKeys::int4};

// Agreements of one set of inputs, accumulated sample by sample.
struct Tally {
    std::vector<double> overlap, spearman;
    void add(const std::vector<float>& reference, const std::vector<float>& other, double fraction) {
        overlap.push_back(top_set_overlap(reference, other, fraction));
        spearman.push_back(spearman_correlation(reference, other));
    }
    ScoreAgreement summary(std::string inputs, ScoreKeys keys) const {
        ScoreAgreement a;
        a.inputs = std::move(inputs);
        a.keys = keys;
        a.samples = overlap.size();
        if (overlap.empty()) return a;
        a.overlap_mean = mean_with_error(overlap).mean;
        a.overlap_min = *std::min_element(overlap.begin(), overlap.end());
        // NaN, in the mean and the minimum, if any sample's is (a constant relevance).
        a.spearman_mean = mean_with_error(spearman).mean;
        const bool undefined = std::any_of(spearman.begin(), spearman.end(), [](double x) { return std::isnan(x); });
        a.spearman_min = undefined ? std::numeric_limits<double>::quiet_NaN() : *std::min_element(spearman.begin(), spearman.end());
        return a;
    }
};

}  // namespace

const char* score_keys_name(ScoreKeys keys) {
    switch (keys) {
        case ScoreKeys::f32:
            return "f32";
        case ScoreKeys::int8:
            return "int8";
        case ScoreKeys::int4:
            return "int4";
    }
    return "?";
}

std::vector<ScoreAgreement> model_score_accuracy(const FusionModel& model, std::span<const Request> requests,
                                                 const ScoreAccuracyOptions& options) {
    const ModelShape& s = model.shape();
    const std::size_t L = static_cast<std::size_t>(s.layers);
    if (requests.empty()) throw std::invalid_argument("score accuracy needs at least one request");
    // [layer][precision], and all layers together.
    std::vector<std::array<Tally, 2>> per_layer(L);
    std::array<Tally, 2> all_layers;
    KernelContexts kernels;  // OpenMP's default thread count; the model's layers run on it too
    kernels.prepare(0);
    kvfuse::Context& context = kernels.request();
    for (const Request& r : requests) {
        const TokenIds tokens = r.full_prompt();
        const std::size_t T = tokens.size(), P = r.prefix.size(), M = r.question.size();
        if (M == 0 || T <= P + M) throw std::invalid_argument(r.id + ": a request needs question rows and document rows");
        std::vector<std::int64_t> rows(T);
        for (std::size_t i = 0; i < T; ++i) rows[i] = static_cast<std::int64_t>(i);
        std::vector<float> hidden(T * static_cast<std::size_t>(s.dim)), q(T * s.q_row()), k(T * s.kv_row()), v(T * s.kv_row()),
            attention(T * s.q_row());
        model.embed(tokens, hidden.data());
        for (std::size_t l = 0; l < L; ++l) {
            model.project_qkv(context, static_cast<int>(l), hidden.data(), T, rows.data(), q.data(), k.data(), v.data());
            const float* q_question = q.data() + (T - M) * s.q_row();
            const std::vector<float> reference = a3_relevance(context, s, q_question, M, k.data(), P, T, options.smoothing, ScoreKeys::f32);
            for (std::size_t p = 0; p < 2; ++p) {
                const std::vector<float> quantized = a3_relevance(context, s, q_question, M, k.data(), P, T, options.smoothing, kQuantized[p]);
                per_layer[l][p].add(reference, quantized, options.fraction);
                all_layers[p].add(reference, quantized, options.fraction);
            }
            attend_rows(context, s, q.data(), rows, k.data(), v.data(), T, s.kv_row(), attention.data());
            model.finish_layer(context, static_cast<int>(l), attention.data(), T, hidden.data());
        }
    }
    std::vector<ScoreAgreement> out;
    for (std::size_t l = 0; l < L; ++l)
        for (std::size_t p = 0; p < 2; ++p) out.push_back(per_layer[l][p].summary("layer " + std::to_string(l), kQuantized[p]));
    for (std::size_t p = 0; p < 2; ++p) out.push_back(all_layers[p].summary("all layers", kQuantized[p]));
    return out;
}

std::vector<ScoreAgreement> synthetic_score_accuracy(const SyntheticShape& g, const ScoreAccuracyOptions& options) {
    if (g.tokens <= g.question_rows || g.question_rows == 0 || g.heads == 0 || g.kv_heads == 0 || g.heads % g.kv_heads != 0 ||
        g.head_dim == 0 || g.draws == 0 || !(g.outlier > 0.0f) || !std::isfinite(g.outlier))
        throw std::invalid_argument("synthetic score accuracy: tokens > question rows > 0, heads a multiple of kv heads, "
                                    "head_dim > 0, draws > 0 and a finite outlier scale > 0");
    ModelShape s;
    s.heads = static_cast<int>(g.heads);
    s.kv_heads = static_cast<int>(g.kv_heads);
    s.head_dim = static_cast<int>(g.head_dim);
    std::array<Tally, 2> tally;
    KernelContexts kernels;
    kernels.prepare(0);
    kvfuse::Context& context = kernels.request();
    std::mt19937 rng(g.seed);
    std::normal_distribution<float> normal;
    std::vector<float> q(g.question_rows * s.q_row()), k(g.tokens * s.kv_row());
    for (std::size_t draw = 0; draw < g.draws; ++draw) {
        for (float& x : q) x = normal(rng);
        // Outlier channels (the same dimensions in every head and token), plus an offset that the
        // per-head mean removal must take out.
        for (std::size_t i = 0; i < k.size(); ++i) k[i] = normal(rng) * ((i % g.head_dim) % 17 == 3 ? g.outlier : 1.0f) + 0.5f;
        const float* q_question = q.data();
        const std::vector<float> reference = a3_relevance(context, s, q_question, g.question_rows, k.data(), 0, g.tokens, options.smoothing,
                                                          ScoreKeys::f32);
        for (std::size_t p = 0; p < 2; ++p)
            tally[p].add(reference,
                         a3_relevance(context, s, q_question, g.question_rows, k.data(), 0, g.tokens, options.smoothing, kQuantized[p]),
                         options.fraction);
    }
    char name[96];
    if (g.outlier == 1.0f)
        std::snprintf(name, sizeof name, "synthetic, no outlier channels");
    else
        std::snprintf(name, sizeof name, "synthetic, outlier channels x%g", static_cast<double>(g.outlier));
    return {tally[0].summary(name, ScoreKeys::int8), tally[1].summary(name, ScoreKeys::int4)};
}

}  // namespace kvfuse::fusion
