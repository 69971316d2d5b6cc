// The identities of ALGORITHMS.md that every fusion implementation must satisfy, on a small
// random-weight llama (tiny_llama.h) so they test the pipeline's logic: mask, positions,
// re-rotation, row bookkeeping.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <iterator>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>

#include "fusion/metrics.h"
#include "fusion/pipeline.h"
#include "fusion/score_accuracy.h"
#include "fusion_test_support.h"
#include "tiny_llama.h"

namespace {

using namespace kvfuse::fusion;

using kvfuse::testing::make_request;
using kvfuse::testing::stored_chunks;
using kvfuse::testing::full_prefill_views;
using kvfuse::testing::views;

FusionRun run(const FusionModel& model, const Request& r, const std::vector<ChunkKvView>& chunks, Method m,
              double ratio = 0.15, int check = 1) {
    FusionOptions o;
    o.method = m;
    o.ratio = ratio;
    o.check_layer = check;
    return run_request(model, r, chunks, o);
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double d = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, static_cast<double>(std::fabs(a[i] - b[i])));
    return d;
}

class FusionIdentity : public ::testing::TestWithParam<kvfuse::Isa> {
   protected:
    void SetUp() override { ASSERT_TRUE(kvfuse::force_isa(GetParam()).ok()); }
    void TearDown() override { kvfuse::reset_isa(); }
    kvfuse::testing::TinyLlama model{7};
};
INSTANTIATE_TEST_SUITE_P(Isa, FusionIdentity, ::testing::ValuesIn(kvfuse::supported_isas()),
                         [](const auto& info) { return std::string(kvfuse::isa_name(info.param)); });

// Every row selected: each method is a full prefill, bit for bit (same rows, same calls).
TEST_P(FusionIdentity, EveryRowSelectedEqualsFullPrefill) {
    const Request r = make_request({9, 14, 7}, 5, 1);
    const auto stored = stored_chunks(model, r);
    const FusionRun full = run(model, r, {}, Method::full);
    for (const MethodInfo& info : method_table()) {
        if (!info.takes_ratio) continue;  // every method whose selection follows the ratio
        const Method m = info.method();
        const FusionRun fused = run(model, r, views(stored), m, 1.0);
        EXPECT_EQ(fused.logits, full.logits) << method_name(m);
        if (m == parse_method("a3-probe"))  // its probe ran the prefix and question rows once more
            EXPECT_GT(fused.recompute_fraction, 1.0);
        else
            EXPECT_DOUBLE_EQ(fused.recompute_fraction, 1.0) << method_name(m);
    }
}

// Stored caches replaced by the full prefill's own K/V: any row set gives the full prefill's
// output, which checks the mask and the positions of sparse-row attention.
TEST_P(FusionIdentity, FullPrefillKvAsStoredCachesEqualsFullPrefillForAnyRows) {
    const Request r = make_request({8, 11, 6, 9}, 4, 2);
    const FusionRun full = run(model, r, {}, Method::full);
    const std::vector<ChunkKvView> exact = full_prefill_views(model, r, full);
    for (Method m : fused_methods())
        for (double ratio : {0.1, 0.3}) {
            const FusionRun fused = run(model, r, exact, m, ratio);
            EXPECT_LT(max_abs_diff(fused.logits, full.logits), 1e-4) << method_name(m) << " " << ratio;
        }
}

// Layer-0 K/V depend only on token and position, so recomputing layer 0 for the document rows
// changes nothing under full reuse.
TEST_P(FusionIdentity, ReuseWithOrWithoutLayerZeroRecomputeAgree) {
    const Request r = make_request({10, 12, 8}, 6, 3);
    const auto stored = stored_chunks(model, r);
    FusionOptions with, without;
    with.method = without.method = parse_method("reuse");
    without.recompute_layer0 = false;
    const FusionRun a = run_request(model, r, views(stored), with);
    const FusionRun b = run_request(model, r, views(stored), without);
    EXPECT_LT(max_abs_diff(a.logits, b.logits), 1e-4);
    for (int l = 0; l < model.shape().layers; ++l)
        EXPECT_LT(relative_l2(a.cache.k[static_cast<std::size_t>(l)], b.cache.k[static_cast<std::size_t>(l)]), 1e-5);
}

// One chunk holding the whole document, fused by full reuse, is the full prefill.
TEST_P(FusionIdentity, OneChunkFusedByReuseEqualsFullPrefill) {
    const Request r = make_request({25}, 5, 4);
    const auto stored = stored_chunks(model, r);
    const FusionRun full = run(model, r, {}, Method::full);
    const FusionRun fused = run(model, r, views(stored), parse_method("reuse"));
    EXPECT_LT(max_abs_diff(fused.logits, full.logits), 1e-4);
}

// Re-rotation is shift invariant: a chunk stored at another offset lands in the same place.
TEST_P(FusionIdentity, StoredPositionDoesNotMatter) {
    const Request r = make_request({12, 9}, 4, 5);
    auto stored = stored_chunks(model, r);
    const FusionRun a = run(model, r, views(stored), Method::a3, 0.3);
    // Move the first chunk's stored keys to positions 1000.. and say so.
    kvfuse::RopeConfig rope = model.shape().rope;
    for (auto& layer : stored[0].cache.k)
        ASSERT_TRUE(kvfuse::rope_rotate_span(rope, layer.data(), stored[0].cache.tokens, 2, stored[0].cache.row, 999).ok());
    stored[0].start_position = 1000;
    const FusionRun b = run(model, r, views(stored), Method::a3, 0.3);
    EXPECT_LT(max_abs_diff(a.logits, b.logits), 1e-4);
}

// A selective method at equal ratio recomputes the same number of rows; reuse recomputes
// only the question and prefix past layer 0.
TEST_P(FusionIdentity, RowAccounting) {
    const Request r = make_request({10, 10, 10}, 5, 6);
    const auto stored = stored_chunks(model, r);
    const std::size_t T = r.total_tokens();
    const FusionRun reuse = run(model, r, views(stored), parse_method("reuse"));
    EXPECT_EQ(reuse.rows_per_layer, (std::vector<std::size_t>{T, 6, 6}));
    for (Method m : {parse_method("cacheblend"), Method::a3, parse_method("random")}) {
        const FusionRun fused = run(model, r, views(stored), m, 0.2);
        EXPECT_EQ(fused.selected.size(), static_cast<std::size_t>(std::floor(0.2 * (T - 5)))) << method_name(m);
        EXPECT_TRUE(std::is_sorted(fused.selected.begin(), fused.selected.end()));
        for (auto row : fused.selected) {
            EXPECT_GE(row, 1);
            EXPECT_LT(row, static_cast<std::int64_t>(T - 5));
        }
    }
    // a3-layers: the set only grows; late joiners are counted in the layers they ran through.
    const FusionRun layered = run(model, r, views(stored), parse_method("a3-layers"), 0.2);
    EXPECT_GE(layered.selected.size(), static_cast<std::size_t>(std::floor(0.2 * (T - 5))));
    EXPECT_EQ(layered.rows_per_layer[0], T);
    for (std::size_t l = 2; l < layered.rows_per_layer.size(); ++l)
        EXPECT_GE(layered.rows_per_layer[l], layered.rows_per_layer[l - 1]);
    EXPECT_EQ(layered.rows_per_layer.back(), layered.selected.size() + 6);
    // a3-probe: the union of the per-layer sets holds the check layer's own top-k; the probe
    // pushed the prefix and question rows through the later layers once more.
    const FusionRun probed = run(model, r, views(stored), parse_method("a3-probe"), 0.2);
    const FusionRun one_shot = run(model, r, views(stored), Method::a3, 0.2);
    EXPECT_TRUE(std::includes(probed.selected.begin(), probed.selected.end(), one_shot.selected.begin(), one_shot.selected.end()));
    EXPECT_EQ(probed.rows_per_layer[0], T);
    for (std::size_t l = 1; l < probed.rows_per_layer.size(); ++l) EXPECT_EQ(probed.rows_per_layer[l], probed.selected.size() + 6);
    std::size_t pushed = 0;
    for (std::size_t n : probed.rows_per_layer) pushed += n;
    EXPECT_DOUBLE_EQ(probed.recompute_fraction, static_cast<double>(pushed + 6 * 1) / (3.0 * T));  // layer 1 only: 3 layers
    const FusionRun epic = run(model, r, views(stored), parse_method("epic"));
    EXPECT_EQ(epic.selected.size(), 30u);  // 3 chunks of 10 < 16 tokens each: all of them
}

// Per-layer A3 on stored keys: the chunks' keys scored in their own frame (queries rotated back,
// the mean returned as a bias) give the relevance of the re-rotated keys; in f32 up to
// rounding, and int8 / int4 stored keys pick nearly the same rows.
TEST_P(FusionIdentity, StoredKeyRelevanceEqualsReRotatedKeyRelevance) {
    const Request r = make_request({12, 9, 15}, 4, 11);
    const auto stored = stored_chunks(model, r);
    const auto chunk_views = views(stored);
    const ModelShape& s = model.shape();
    const std::size_t P = r.prefix.size(), M = r.question.size(), T = r.total_tokens();
    const int layer = 2;
    std::mt19937 rng(3);
    std::normal_distribution<float> normal;
    std::vector<float> q(M * s.q_row()), keys(T * s.kv_row(), 0.0f);
    for (float& x : q) x = normal(rng);
    // The re-rotated stored keys at their places in the prompt, then the question's own keys.
    std::vector<std::size_t> offsets;
    std::size_t at = P;
    for (const ChunkKvView& c : chunk_views) {
        offsets.push_back(at);
        ASSERT_TRUE(kvfuse::rope_rotate_span_copy(s.rope, c.k[layer], s.kv_row(), keys.data() + at * s.kv_row(), s.kv_row(),
                                                  c.tokens, static_cast<std::size_t>(s.kv_heads),
                                                  static_cast<std::int64_t>(at) - c.start_position)
                        .ok());
        at += c.tokens;
    }
    for (std::size_t e = (T - M) * s.kv_row(); e < keys.size(); ++e) keys[e] = normal(rng);
    const float* question_keys = keys.data() + (T - M) * s.kv_row();

    KernelContexts kernels;
    kernels.prepare(0);
    kvfuse::Context& context = kernels.request();
    const auto want = a3_relevance(context, s, q.data(), M, keys.data(), P, T, true, ScoreKeys::f32);
    const auto got = a3_relevance_stored(context, s, q.data(), M, question_keys, chunk_views, offsets, layer, true, ScoreKeys::f32);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t j = 0; j < got.size(); ++j) EXPECT_NEAR(got[j], want[j], 1e-4 * (1.0 + want[j])) << j;

    const std::size_t k = want.size() / 4;
    auto top = [&](const std::vector<float>& v) {
        std::vector<std::size_t> idx(v.size());
        std::iota(idx.begin(), idx.end(), 0);
        std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return v[a] > v[b]; });
        idx.resize(k);
        std::sort(idx.begin(), idx.end());
        return idx;
    };
    for (ScoreKeys precision : {ScoreKeys::int8, ScoreKeys::int4}) {
        const auto quantized =
            a3_relevance_stored(context, s, q.data(), M, question_keys, chunk_views, offsets, layer, true, precision);
        const auto a = top(want), b = top(quantized);
        std::vector<std::size_t> both;
        std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(both));
        EXPECT_GE(static_cast<double>(both.size()) / k, precision == ScoreKeys::int8 ? 0.8 : 0.6);
    }
    // A chunk without quantized keys cannot be scored from them.
    auto missing = chunk_views;
    missing[1].quantized.clear();
    EXPECT_THROW(a3_relevance_stored(context, s, q.data(), M, question_keys, missing, offsets, layer, true, ScoreKeys::int8),
                 std::invalid_argument);
}

// Loading layer l+1 on a thread of its own while layer l is computed changes nothing: every
// method gives the same logits, selection and cache, bit for bit.
TEST_P(FusionIdentity, PipelinedLoadingChangesNothing) {
    const Request r = make_request({13, 8, 11}, 4, 12);
    const auto stored = stored_chunks(model, r);
    for (Method m : fused_methods())
        for (bool layer0 : {true, false}) {
            FusionOptions o;
            o.method = m;
            o.ratio = 0.25;
            o.recompute_layer0 = layer0;
            const FusionRun upfront = run_request(model, r, views(stored), o);
            o.pipelined_loading = true;
            const FusionRun pipelined = run_request(model, r, views(stored), o);
            EXPECT_EQ(pipelined.logits, upfront.logits) << method_name(m);
            EXPECT_EQ(pipelined.selected, upfront.selected) << method_name(m);
            for (std::size_t l = 0; l < upfront.cache.k.size(); ++l) {
                EXPECT_TRUE(std::equal(upfront.cache.k[l].begin(), upfront.cache.k[l].end(), pipelined.cache.k[l].begin()));
                EXPECT_TRUE(std::equal(upfront.cache.v[l].begin(), upfront.cache.v[l].end(), pipelined.cache.v[l].begin()));
            }
            EXPECT_EQ(pipelined.times.rerotate, 0.0);
        }
}

// The kernels' thread count (--threads) changes where they run, not what they compute: one
// worker and two give the OpenMP default's answer bit for bit, every method; a run given another
// count makes its contexts again.
TEST_P(FusionIdentity, KernelThreadCountChangesNothing) {
    const Request r = make_request({13, 8, 11}, 4, 12);
    const auto stored = stored_chunks(model, r);
    for (const MethodInfo& info : method_table()) {
        FusionOptions o;
        o.method = info.method();
        o.ratio = 0.25;
        const auto chunks = o.method == Method::full ? std::vector<ChunkKvView>() : views(stored);
        const FusionRun reference = run_request(model, r, chunks, o);
        FusionRun run;
        for (int threads : {1, 2}) {
            o.threads = threads;
            const kvfuse_context* before = run.kernels.request().get();
            run_request(model, r, chunks, o, run);
            EXPECT_NE(run.kernels.request().get(), before) << info.name << " threads " << threads;
            EXPECT_EQ(run.logits, reference.logits) << info.name << " threads " << threads;
            EXPECT_EQ(run.selected, reference.selected) << info.name << " threads " << threads;
        }
    }
}

// A serving process keeps a run's cache and buffers across requests and never clears them:
// every row must be written before it is read. Buffers left holding NaN (from a larger request
// first, so that every buffer is reused, not reallocated) must give the fresh run's answer bit
// for bit, for every method, with and without the layer-0 recompute and pipelined loading.
TEST_P(FusionIdentity, ReusedNanFilledBuffersGiveTheFreshAnswer) {
    const Request large = make_request({15, 12, 14}, 6, 21), r = make_request({13, 8, 11}, 4, 12);
    const auto stored_large = stored_chunks(model, large), stored = stored_chunks(model, r);
    auto fill_nan = [](Floats& buffer) {
        buffer.resize(buffer.capacity());
        std::fill(buffer.begin(), buffer.end(), std::numeric_limits<float>::quiet_NaN());
    };
    for (const MethodInfo& info : method_table())
        for (bool layer0 : {true, false})
            for (bool pipelined : {false, true}) {
                FusionOptions o;
                const Method m = info.method();
                o.method = m;
                o.ratio = 0.25;
                o.recompute_layer0 = layer0;
                o.pipelined_loading = pipelined;
                o.a3_stored_keys = layer0;  // the per-layer A3 methods score the fused cache in half the runs
                const bool full = m == Method::full;
                const FusionRun fresh = run_request(model, r, full ? std::vector<ChunkKvView>() : views(stored), o);
                FusionRun reused;
                run_request(model, large, full ? std::vector<ChunkKvView>() : views(stored_large), o, reused);
                const float* cache_before = reused.cache.k[0].data();
                const kvfuse_context* context_before = reused.kernels.request().get();
                const kvfuse_context* loader_before = reused.kernels.loader().get();
                for (auto* side : {&reused.cache.k, &reused.cache.v})
                    for (Floats& rows : *side) fill_nan(rows);
                for (Floats* b : {&reused.buffers.hidden, &reused.buffers.q, &reused.buffers.k, &reused.buffers.v,
                                  &reused.buffers.attention})
                    fill_nan(*b);
                run_request(model, r, full ? std::vector<ChunkKvView>() : views(stored), o, reused);
                const std::string what = std::string(method_name(m)) + (layer0 ? "" : " no-layer0 fused-keys") + (pipelined ? " pipelined" : "");
                EXPECT_EQ(reused.cache.k[0].data(), cache_before) << what << ": the cache was reallocated, not reused";
                EXPECT_EQ(reused.kernels.request().get(), context_before) << what << ": the kernel context was made again";
                EXPECT_EQ(reused.kernels.loader().get(), loader_before) << what << ": the loading context was made again";
                EXPECT_EQ(reused.logits, fresh.logits) << what;
                EXPECT_EQ(reused.selected, fresh.selected) << what;
                EXPECT_EQ(reused.rows_per_layer, fresh.rows_per_layer) << what;
                ASSERT_EQ(reused.cache.tokens, fresh.cache.tokens);
                for (std::size_t l = 0; l < fresh.cache.k.size(); ++l) {
                    ASSERT_EQ(reused.cache.k[l].size(), fresh.cache.k[l].size());
                    // Bytes, so that a NaN left anywhere fails.
                    EXPECT_EQ(std::memcmp(reused.cache.k[l].data(), fresh.cache.k[l].data(), fresh.cache.k[l].size() * sizeof(float)), 0)
                        << what << " keys of layer " << l;
                    EXPECT_EQ(std::memcmp(reused.cache.v[l].data(), fresh.cache.v[l].data(), fresh.cache.v[l].size() * sizeof(float)), 0)
                        << what << " values of layer " << l;
                }
            }
}

// The method table is what parsing, --help, run, eval and the pipeline read: every method once,
// names round-trip, full prefill alone selects nowhere and has no selector, a join function
// exactly where rows join at later layers, an unknown name is refused with the list.
TEST(Fusion, MethodTableNamesEveryMethodOnce) {
    std::vector<std::string> names;
    for (const MethodInfo& info : method_table()) {
        EXPECT_EQ(parse_method(info.name), info.method()) << info.name;
        EXPECT_STREQ(method_name(info.method()), info.name);
        EXPECT_EQ(&method_info(info.method()), &info);
        EXPECT_EQ(info.where == SelectAt::nowhere, info.method() == Method::full) << info.name;
        EXPECT_EQ(info.select == nullptr, info.method() == Method::full) << info.name;
        EXPECT_EQ(info.join != nullptr, info.where == SelectAt::every_later_layer) << info.name;
        names.push_back(info.name);
    }
    // The count driver/README.md and fusion/pipeline.h state: change them with it.
    EXPECT_EQ(names.size(), 8u);
    EXPECT_EQ(std::set<std::string>(names.begin(), names.end()).size(), names.size());
    EXPECT_EQ(fused_methods().size(), names.size() - 1);
    try {
        parse_method("bogus");
        ADD_FAILURE() << "an unknown method was accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find(method_names()), std::string::npos) << e.what();
    }
}

TEST(Fusion, BadOptionsAreRefused) {
    kvfuse::testing::TinyLlama model{1};
    const Request r = make_request({5}, 2, 7);
    const auto stored = stored_chunks(model, r);
    FusionOptions o;
    o.ratio = 0.0;
    EXPECT_THROW(run_request(model, r, views(stored), o), std::invalid_argument);
    o.ratio = 0.5;
    o.check_layer = 3;
    EXPECT_THROW(run_request(model, r, views(stored), o), std::invalid_argument);
    o.check_layer = 1;
    EXPECT_THROW(run_request(model, r, {}, o), std::invalid_argument);
    EXPECT_THROW(parse_method("blend"), std::invalid_argument);
    Request too_long = make_request({300}, 2, 8);
    EXPECT_THROW(run_request(model, too_long, {}, FusionOptions{Method::full}), std::invalid_argument);
}

TEST(Fusion, GreedyDecodeContinuesTheCache) {
    kvfuse::testing::TinyLlama model{3};
    const Request r = make_request({6, 6}, 3, 9);
    FusionRun full = run(model, r, {}, Method::full);
    // Decoding from the full cache equals re-running the prompt with the tokens appended.
    const std::size_t vocab = 40;
    const auto first = static_cast<std::int32_t>(argmax(std::span<const float>(full.logits).subspan(2 * vocab, vocab)));
    const auto tokens = greedy_decode(model, full.cache, first, 4, full.kernels.request());
    ASSERT_EQ(tokens.size(), 4u);
    Request longer = r;
    longer.question.insert(longer.question.end(), tokens.begin(), tokens.end() - 1);
    const FusionRun again = run(model, longer, {}, Method::full);
    for (std::size_t i = 1; i < 4; ++i) {
        const auto row = std::span<const float>(again.logits).subspan((2 + i) * vocab, vocab);
        EXPECT_EQ(static_cast<std::int32_t>(argmax(row)), tokens[i]);
    }
}

// Quantized relevance against f32 on every layer of the (random-weight) model: one row per layer
// and precision plus the all-layer rows, every request counted, values in range, and int8 close
// to f32 (the bounds leave room below what it measures; a relevance unrelated to f32's would
// give an overlap near 0.15 and a correlation near 0).
TEST(Fusion, ScoreAccuracyComparesEveryLayer) {
    kvfuse::testing::TinyLlama model{5};
    const std::vector<Request> requests = {make_request({20, 30, 25}, 6, 21), make_request({40, 18}, 8, 22)};
    ScoreAccuracyOptions options;
    const auto rows = model_score_accuracy(model, requests, options);
    const std::size_t L = static_cast<std::size_t>(model.shape().layers);
    ASSERT_EQ(rows.size(), 2 * L + 2);
    for (const ScoreAgreement& a : rows) {
        EXPECT_EQ(a.samples, (a.inputs == "all layers" ? L : 1) * requests.size()) << a.inputs;
        EXPECT_GE(a.overlap_min, 0.0);
        EXPECT_LE(a.overlap_mean, 1.0);
        EXPECT_LE(a.overlap_min, a.overlap_mean);
        EXPECT_LE(a.spearman_min, a.spearman_mean);
        EXPECT_LE(a.spearman_mean, 1.0);
    }
    std::printf("tiny model, all layers: int8 overlap %.3f Spearman %.4f; int4 overlap %.3f Spearman %.4f\n",
                rows[2 * L].overlap_mean, rows[2 * L].spearman_mean, rows[2 * L + 1].overlap_mean, rows[2 * L + 1].spearman_mean);
    EXPECT_EQ(rows[2 * L].inputs, "all layers");
    EXPECT_EQ(rows[2 * L].keys, ScoreKeys::int8);
    EXPECT_GE(rows[2 * L].overlap_mean, 0.8);
    EXPECT_GE(rows[2 * L].spearman_mean, 0.9);
    EXPECT_THROW(model_score_accuracy(model, std::vector<Request>{}, options), std::invalid_argument);
}

TEST(Fusion, SyntheticScoreAccuracy) {
    SyntheticShape shape;
    shape.tokens = 600;
    shape.question_rows = 8;
    shape.heads = 8;
    shape.kv_heads = 2;
    shape.head_dim = 64;
    shape.draws = 2;
    shape.outlier = 1.0f;
    const auto rows = synthetic_score_accuracy(shape, ScoreAccuracyOptions{});
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_EQ(rows[0].keys, ScoreKeys::int8);
    EXPECT_EQ(rows[0].samples, 2u);
    EXPECT_GE(rows[0].overlap_min, 0.85);
    EXPECT_GE(rows[0].spearman_min, 0.95);
    EXPECT_GE(rows[1].spearman_min, 0.8);  // int4
    shape.kv_heads = 3;
    EXPECT_THROW(synthetic_score_accuracy(shape, ScoreAccuracyOptions{}), std::invalid_argument);
}

}  // namespace
