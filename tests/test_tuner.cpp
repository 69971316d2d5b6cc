// The tuner library (tuning/): a quick run at small shapes chooses settings that validate and
// apply, records every kernel's ISA decision and every search, and leaves the settings in force
// as they were; apply/settings_in_force round-trip the per-kernel ISAs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvfuse/kvfuse.hpp"
#include "tuning/tuner.h"

namespace {

using kvfuse::Isa;
using kvfuse::Kernel;

class TunerTest : public ::testing::Test {
   protected:
    void TearDown() override { ASSERT_TRUE(kvfuse::tuner::apply(kvfuse::tuner::default_settings()).ok()); }
};

TEST_F(TunerTest, ApplyAndSettingsInForceRoundTrip) {
    kvfuse::tuner::Settings s = kvfuse::tuner::default_settings();
    s.tuning.topk_sample = 4096;
    s.kernel_isa[static_cast<int>(Kernel::topk)] = Isa::scalar;
    ASSERT_TRUE(kvfuse::tuner::apply(s).ok());
    const kvfuse::tuner::Settings now = kvfuse::tuner::settings_in_force();
    EXPECT_EQ(now.tuning.topk_sample, 4096u);
    ASSERT_TRUE(now.kernel_isa[static_cast<int>(Kernel::topk)].has_value());
    EXPECT_EQ(*now.kernel_isa[static_cast<int>(Kernel::topk)], Isa::scalar);
    EXPECT_FALSE(now.kernel_isa[static_cast<int>(Kernel::rope)].has_value());
    EXPECT_NE(kvfuse::tuner::describe_kernel_isas().find("topk scalar (program)"), std::string::npos)
        << kvfuse::tuner::describe_kernel_isas();
    kvfuse::tuner::Settings bad = s;
    bad.tuning.score_query_rows = 5;
    EXPECT_FALSE(kvfuse::tuner::apply(bad).ok());
}

TEST_F(TunerTest, QuickRunChoosesValidSettingsAndRestoresTheOldOnes) {
    kvfuse::tuner::Settings before = kvfuse::tuner::default_settings();
    before.tuning.attention_row_block = 7;  // a value the search never proposes
    ASSERT_TRUE(kvfuse::tuner::apply(before).ok());
    kvfuse::tuner::Shapes shapes;
    shapes.heads = 4, shapes.kv_heads = 2, shapes.head_dim = 40, shapes.context = 256;
    kvfuse::tuner::Options options;
    options.quick = true;
    int lines = 0;
    options.progress = [&](const std::string&) { ++lines; };
    const kvfuse::tuner::Result result = kvfuse::tuner::tune(shapes, options);
    EXPECT_GT(lines, 0);
    EXPECT_EQ(kvfuse::tuner::settings_in_force().tuning.attention_row_block, 7u) << "the settings in force changed";
    ASSERT_TRUE(kvfuse::tuner::apply(result.settings).ok()) << "the tuner chose settings that do not apply";
    Isa active = Isa::scalar;
    ASSERT_TRUE(kvfuse::active_isa(active).ok());
    for (const auto& isa : result.settings.kernel_isa)
        if (isa) {
            EXPECT_NE(*isa, active) << "choosing the active ISA by name must stay auto";
            EXPECT_TRUE(kvfuse::isa_supported(*isa));
        }
    const auto record = nlohmann::json::parse(result.measurements_json);
    for (Kernel k : kvfuse::all_kernels()) EXPECT_TRUE(record.at("kernel_isa").contains(kvfuse::kernel_name(k))) << kvfuse::kernel_name(k);
    for (const char* search : {"attention", "score", "topk"}) {
        const auto& r = record.at(search);
        // A change is only kept when it was faster by the margin in the side-by-side round.
        if (r.at("changed").get<bool>())
            EXPECT_LT(r.at("tuned_ms").get<double>(), kvfuse::tuner::kNoiseMargin * r.at("default_ms").get<double>()) << search;
        else
            EXPECT_EQ(r.at("tuned_ms").get<double>(), r.at("default_ms").get<double>()) << search;
    }
    EXPECT_EQ(record.at("shapes").at("head_dim").get<int>(), 40);
    // The parallel thresholds, the quantizers' among them: measured on a ladder of sizes and
    // chosen from it (half the first size, the geometric mean of two neighbours, or twice the
    // last when all threads never won).
    if (record.at("threads").get<int>() > 1) {
        for (const char* search : {"rope_parallel", "score_parallel", "attention_parallel", "quantize_parallel"})
            EXPECT_FALSE(record.at(search).empty()) << search;
        const auto& ladder = record.at("quantize_parallel");
        std::vector<std::uint64_t> allowed = {ladder.front().at("work").get<std::uint64_t>() / 2,
                                              ladder.back().at("work").get<std::uint64_t>() * 2};
        for (std::size_t i = 1; i < ladder.size(); ++i)
            allowed.push_back(static_cast<std::uint64_t>(std::sqrt(static_cast<double>(ladder[i - 1].at("work").get<std::uint64_t>()) *
                                                                   static_cast<double>(ladder[i].at("work").get<std::uint64_t>()))));
        const std::uint64_t chosen = result.settings.tuning.quantize_parallel_work;
        EXPECT_NE(std::find(allowed.begin(), allowed.end(), chosen), allowed.end()) << chosen << " is not from the ladder";
        // The ladder stops at the first size where all threads won: every size before it lost.
        for (std::size_t i = 0; i + 1 < ladder.size(); ++i)
            EXPECT_GE(ladder[i].at("all_threads_ms").get<double>(),
                      kvfuse::tuner::kNoiseMargin * ladder[i].at("one_thread_ms").get<double>())
                << "size " << i << " won but the search went on";
        EXPECT_EQ(chosen == allowed[1], ladder.back().at("all_threads_ms").get<double>() >=
                                            kvfuse::tuner::kNoiseMargin * ladder.back().at("one_thread_ms").get<double>());
    } else {
        EXPECT_EQ(result.settings.tuning.quantize_parallel_work, kvfuse::tuner::default_settings().tuning.quantize_parallel_work);
    }
}

}  // namespace
