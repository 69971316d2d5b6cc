// The method table is the one place a method is declared: a selector registered here (one
// function and one MethodInfo row, as a new method's file would hold) is parsed, listed,
// evaluated by default and run by the pipeline with no other change, and it satisfies the
// identities of ALGORITHMS.md through the same code as the built-in methods. Its own test
// program, so that the methods it adds do not reach test_fusion's loops over the table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>

#include "fusion/evaluation.h"
#include "fusion/pipeline.h"
#include "fusion/selector.h"
#include "fusion_test_support.h"
#include "tiny_llama.h"

namespace {

using namespace kvfuse::fusion;

// Static: every other document row, from the request alone.
Selection every_other_row(const SelectionContext& c) {
    Selection out;
    for (std::size_t row = c.prefix_rows; row < c.total_rows - c.question_rows; row += 2)
        out.rows.push_back(static_cast<std::int64_t>(row));
    return out;
}

// At the check layer: every document row whose fresh V (K/V of the check layer are there)
// has a positive first element, at most `budget` of them.
Selection positive_values(const SelectionContext& c) {
    Selection out;
    const std::size_t kv_row = c.model.shape().kv_row();
    for (std::size_t row = c.prefix_rows; row < c.total_rows - c.question_rows && out.rows.size() < c.budget; ++row)
        if (c.v[row * kv_row] > 0.0f) out.rows.push_back(static_cast<std::int64_t>(row));
    return out;
}

// Per layer: nothing at the check layer, then every document row joins at the next one.
Selection nothing(const SelectionContext&) { return {}; }
std::vector<std::int64_t> every_document_row(const SelectionContext& c, int, const float*, const float*, std::size_t) {
    std::vector<std::int64_t> rows;
    for (std::size_t row = c.prefix_rows; row < c.total_rows - c.question_rows; ++row)
        rows.push_back(static_cast<std::int64_t>(row));
    return rows;
}

const MethodInfo kEveryOther = {"test-every-other", "every other document row (test only)", false, SelectAt::request,
                                every_other_row};
const MethodInfo kPositive = {"test-positive-v", "rows of positive V at the check layer (test only)", true,
                              SelectAt::check_layer, positive_values};
const MethodInfo kAllJoin = {"test-all-join", "every row joins after the check layer (test only)", false,
                             SelectAt::every_later_layer, nothing, every_document_row};

void register_test_methods() {
    static const bool done = [] {
        register_method(kEveryOther);
        register_method(kPositive);
        register_method(kAllJoin);
        return true;
    }();
    (void)done;
}

using kvfuse::testing::make_request;
using kvfuse::testing::stored_chunks;
using kvfuse::testing::full_prefill_views;
using kvfuse::testing::views;

TEST(MethodRegistry, ARegisteredMethodIsEverywhereTheTableIsRead) {
    const MethodInfo& a3_row = method_info(Method::a3);
    register_test_methods();
    const std::size_t built_in = static_cast<std::size_t>(std::count_if(
        method_table().begin(), method_table().end(), [](const MethodInfo& m) { return std::string(m.name).rfind("test-", 0) != 0; }));
    ASSERT_EQ(method_table().size(), built_in + 3);
    EXPECT_STREQ(method_table().back().name, "test-all-join");  // registered rows come last
    EXPECT_EQ(&method_info(Method::a3), &a3_row) << "registering moved a row";
    // Parsing, the names in --help and error texts, `--method all` and eval's default list.
    const Method m = parse_method("test-every-other");
    EXPECT_EQ(m.name(), "test-every-other");
    EXPECT_STREQ(method_name(m), "test-every-other");
    EXPECT_EQ(method_info(m).select, &every_other_row);
    EXPECT_NE(method_names().find("test-every-other"), std::string::npos);
    EXPECT_NE(method_names(", ", false).find("test-positive-v"), std::string::npos);
    const std::vector<Method> fused = fused_methods();
    EXPECT_EQ(fused.size(), method_table().size() - 1);
    EXPECT_NE(std::find(fused.begin(), fused.end(), parse_method("test-all-join")), fused.end());
    const EvalOptions eval;
    EXPECT_EQ(eval.methods, fused);
    try {
        parse_method("bogus");
        ADD_FAILURE() << "an unknown method was accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("test-positive-v"), std::string::npos) << e.what();
    }
}

TEST(MethodRegistry, RowsThatDoNotFitAreRefused) {
    register_test_methods();
    const std::size_t before = method_table().size();
    EXPECT_THROW(register_method(kEveryOther), std::invalid_argument);  // the name is taken
    EXPECT_THROW(register_method({"a3", "again", true, SelectAt::check_layer, positive_values}), std::invalid_argument);
    EXPECT_THROW(register_method({"test-no-selector", "none", false, SelectAt::request, nullptr}), std::invalid_argument);
    EXPECT_THROW(register_method({"test-second-full", "a second reference", false, SelectAt::nowhere, every_other_row}),
                 std::invalid_argument);
    EXPECT_THROW(register_method({"test-no-join", "per layer without a join", true, SelectAt::every_later_layer, nothing}),
                 std::invalid_argument);
    EXPECT_THROW(register_method({"test-stray-join", "a join it never gets", true, SelectAt::check_layer, nothing,
                                  every_document_row}),
                 std::invalid_argument);
    EXPECT_EQ(method_table().size(), before);
}

// The pipeline runs a registered selector where its row says, recomputes what it chose (plus
// prefix and question), and the identities hold.
TEST(MethodRegistry, ThePipelineRunsARegisteredSelector) {
    register_test_methods();
    kvfuse::testing::TinyLlama model{5};
    const Request r = make_request({9, 12, 8}, 4, 3);
    const auto stored = stored_chunks(model, r);
    const std::size_t P = r.prefix.size(), M = r.question.size(), T = r.total_tokens();
    FusionOptions o;
    o.method = Method::full;
    const FusionRun full = run_request(model, r, {}, o);

    o.method = parse_method("test-every-other");
    const FusionRun every_other = run_request(model, r, views(stored), o);
    std::vector<std::int64_t> want;
    for (std::size_t row = P; row < T - M; row += 2) want.push_back(static_cast<std::int64_t>(row));
    EXPECT_EQ(every_other.selected, want);
    ASSERT_EQ(every_other.rows_per_layer.size(), static_cast<std::size_t>(model.shape().layers));
    EXPECT_EQ(every_other.rows_per_layer[0], T);  // layer 0 in full
    for (std::size_t l = 1; l < every_other.rows_per_layer.size(); ++l)
        EXPECT_EQ(every_other.rows_per_layer[l], want.size() + P + M);

    // At the check layer, within the budget the ratio gives.
    o.method = parse_method("test-positive-v");
    o.ratio = 0.5;
    const FusionRun positive = run_request(model, r, views(stored), o);
    EXPECT_LE(positive.selected.size(), static_cast<std::size_t>(0.5 * static_cast<double>(T - M)));
    EXPECT_FALSE(positive.selected.empty());

    // Every document row joins after the check layer and first catches up through the layers
    // it missed, so every layer pushes every row (the pipeline's bookkeeping). With stored
    // caches that are the full prefill's own K/V, the output is the full prefill's (identity 2
    // of ALGORITHMS.md), late joiners included.
    const std::vector<ChunkKvView> exact = full_prefill_views(model, r, full);
    o.method = parse_method("test-all-join");
    const FusionRun all = run_request(model, r, exact, o);
    EXPECT_EQ(all.selected.size(), T - P - M);
    for (std::size_t n : all.rows_per_layer) EXPECT_EQ(n, T);
    EXPECT_DOUBLE_EQ(all.recompute_fraction, 1.0);
    double worst = 0.0;
    for (std::size_t i = 0; i < full.logits.size(); ++i)
        worst = std::max(worst, static_cast<double>(std::fabs(all.logits[i] - full.logits[i])));
    EXPECT_LT(worst, 1e-4);
}

}  // namespace
