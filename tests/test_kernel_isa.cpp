// Per-kernel ISA choice: a kernel set to an ISA runs that ISA's code (read back from the kernel
// table's slot) and gives the reference's results, the other kernels stay on the active ISA,
// kvfuse_force_isa overrides every choice, bad choices are refused with the reason and change
// nothing, and choices round-trip through a profile (bad ones make the profile rejected).
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "isa_test_support.h"
#include "scratch_files.h"
#include "tuning/int8_relevance.h"
#include "reference/attention_reference.h"
#include "reference/rope_reference.h"
#include "reference/score_reference.h"
#include "reference/topk_reference.h"

namespace {

namespace fs = std::filesystem;
using kvfuse::Isa;
using kvfuse::Kernel;

// Every kernel back to the active ISA and the defaults after each test: the choice is process-wide.
class KernelIsaTest : public ::testing::Test {
   protected:
    void SetUp() override { reset_all(); }
    void TearDown() override {
        kvfuse::reset_isa();
        reset_all();
    }
    static void reset_all() {
        for (Kernel k : kvfuse::all_kernels()) ASSERT_TRUE(kvfuse::reset_kernel_isa(k).ok());
        ASSERT_EQ(kvfuse_set_tuning(nullptr), KVFUSE_OK);
    }
};

Isa active() {
    Isa isa = Isa::scalar;
    EXPECT_TRUE(kvfuse::active_isa(isa).ok());
    return isa;
}

Isa running(Kernel kernel, std::string* source = nullptr) {
    Isa isa = Isa::scalar;
    const kvfuse::Status s = kvfuse::kernel_isa(kernel, isa, source);
    EXPECT_TRUE(s.ok()) << s.message();
    return isa;
}

// Each kernel on a small odd shape, compared with reference/.
void expect_rope_matches_reference(const std::string& where) {
    const std::size_t tokens = 19, heads = 3, D = 40;
    const auto keys = kvfuse::testing::random_floats(tokens * heads * D, 1, 2.0f);
    std::vector<float> got(keys.size()), want(keys.size());
    kvfuse_rope_config config;
    kvfuse_rope_config_init(&config, static_cast<int32_t>(D));
    std::vector<std::int64_t> deltas(tokens);
    for (std::size_t t = 0; t < tokens; ++t) deltas[t] = static_cast<std::int64_t>(t * 37) - 200;
    kvfuse::reference::rope_rotate(config, KVFUSE_DTYPE_F32, keys.data(), heads * D, want.data(), heads * D, tokens, heads,
                                   deltas.data(), 0);
    ASSERT_EQ(kvfuse_rope_rotate_copy(&config, KVFUSE_DTYPE_F32, keys.data(), heads * D, got.data(), heads * D, tokens,
                                      heads, deltas.data()),
              KVFUSE_OK)
        << kvfuse_last_error();
    for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5f * 4) << where << " at " << i;
}

void expect_attention_matches_reference(const std::string& where) {
    const std::size_t T = 131, n = 17, H = 4, Hkv = 2, D = 40;
    const auto q = kvfuse::testing::random_floats(n * H * D, 2), k = kvfuse::testing::random_floats(T * Hkv * D, 3),
               v = kvfuse::testing::random_floats(T * Hkv * D, 4);
    std::vector<float> got(n * H * D), want(n * H * D);
    std::vector<std::int64_t> positions(n);
    for (std::size_t i = 0; i < n; ++i) positions[i] = static_cast<std::int64_t>((i * 53) % T);
    kvfuse::AttentionArgs a = kvfuse::contiguous_attention_args(q.data(), n, positions.data(), H, k.data(), v.data(), T,
                                                                Hkv, D, want.data(), 0.15f);
    kvfuse::reference::sparse_attention(a);
    a.out = got.data();
    ASSERT_EQ(kvfuse_sparse_attention(&a), KVFUSE_OK) << kvfuse_last_error();
    for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-4f) << where << " at " << i;
}

void expect_topk_matches_reference(const std::string& where) {
    const std::size_t n = 50001, k = n * 15 / 100;
    const auto x = kvfuse::testing::random_floats(n, 5);
    std::vector<std::int64_t> got(k), want(k);
    kvfuse::reference::topk(x.data(), n, k, KVFUSE_TOPK_BY_POSITION, want.data());
    std::size_t count = 0;
    ASSERT_EQ(kvfuse_topk(x.data(), n, k, KVFUSE_TOPK_BY_POSITION, got.data(), &count), KVFUSE_OK) << kvfuse_last_error();
    ASSERT_EQ(count, k);
    EXPECT_EQ(got, want) << where;
}

void expect_relevance_matches_reference(const std::string& where) {
    const std::size_t T = 203, M = 7, H = 4, Hkv = 2, D = 40;
    // The call the tuner times, at a small odd shape.
    kvfuse::tuner::Int8Relevance relevance(kvfuse::testing::random_floats(M * H * D, 6), M,
                                           kvfuse::testing::random_floats(T * Hkv * D, 7), T, H, Hkv, D);
    std::vector<float> got(T - M), want(T - M);
    kvfuse_relevance_args& a = relevance.args;
    a.out = want.data();
    kvfuse::reference::a3_relevance(a);
    a.out = got.data();
    ASSERT_EQ(kvfuse_a3_relevance(&a), KVFUSE_OK) << kvfuse_last_error();
    for (std::size_t j = 0; j < got.size(); ++j) ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + want[j])) << where << " j " << j;
}

void expect_matches_reference(Kernel kernel, const std::string& where) {
    switch (kernel) {
        case Kernel::rope: return expect_rope_matches_reference(where);
        case Kernel::attention: return expect_attention_matches_reference(where);
        case Kernel::topk: return expect_topk_matches_reference(where);
        case Kernel::relevance: return expect_relevance_matches_reference(where);
    }
}

TEST_F(KernelIsaTest, NamesRoundTripAndBadValuesAreRefused) {
    for (Kernel k : kvfuse::all_kernels()) {
        Kernel back = Kernel::rope;
        ASSERT_TRUE(kvfuse::kernel_from_name(kvfuse::kernel_name(k), back).ok());
        EXPECT_EQ(back, k);
    }
    kvfuse_kernel raw;
    EXPECT_EQ(kvfuse_kernel_from_name("gemm", &raw), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvfuse_last_error()).find("'gemm' is not a kernel"), std::string::npos) << kvfuse_last_error();
    EXPECT_EQ(kvfuse_kernel_from_name(nullptr, &raw), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_STREQ(kvfuse_kernel_name(static_cast<kvfuse_kernel>(9)), "unknown");

    const kvfuse_isa avx2 = KVFUSE_ISA_AVX2, unknown = static_cast<kvfuse_isa>(42);
    EXPECT_EQ(kvfuse_set_kernel_isa(static_cast<kvfuse_kernel>(9), &avx2), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_set_kernel_isa(static_cast<kvfuse_kernel>(-1), &avx2), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_set_kernel_isa(KVFUSE_KERNEL_TOPK, &unknown), KVFUSE_ERROR_UNKNOWN_ISA);
    kvfuse_isa isa;
    EXPECT_EQ(kvfuse_kernel_isa(static_cast<kvfuse_kernel>(4), &isa, nullptr), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_kernel_isa(KVFUSE_KERNEL_TOPK, nullptr, nullptr), KVFUSE_ERROR_NULL_POINTER);
    for (Isa candidate : kvfuse::all_isas()) {
        if (kvfuse::isa_supported(candidate)) continue;
        const kvfuse::Status s = kvfuse::set_kernel_isa(Kernel::topk, candidate);
        EXPECT_EQ(s.code(), kvfuse::StatusCode::unsupported_isa) << kvfuse::isa_name(candidate);
        EXPECT_NE(s.message().find(std::string(kvfuse::isa_name(candidate)) + " for topk"), std::string::npos) << s.message();
        std::string source;
        EXPECT_EQ(running(Kernel::topk, &source), active()) << "a refused choice changed the kernel";
        EXPECT_EQ(source, "default");
    }
}

TEST_F(KernelIsaTest, EachKernelRunsOnTheChosenIsaAndMatchesTheReference) {
    const Isa base = active();
    for (Kernel kernel : kvfuse::all_kernels()) {
        for (Isa isa : kvfuse::supported_isas()) {
            const std::string where = std::string(kvfuse::kernel_name(kernel)) + " on " + kvfuse::isa_name(isa);
            ASSERT_TRUE(kvfuse::set_kernel_isa(kernel, isa).ok()) << where;
            std::string source;
            EXPECT_EQ(running(kernel, &source), isa) << where;
            EXPECT_EQ(source, "program") << where;
            for (Kernel other : kvfuse::all_kernels()) {
                if (other == kernel) continue;
                EXPECT_EQ(running(other, &source), base) << where << ": " << kvfuse::kernel_name(other) << " moved";
                EXPECT_EQ(source, "default") << where;
            }
            EXPECT_EQ(active(), base) << "a per-kernel choice changed the active ISA";
            expect_matches_reference(kernel, where);
            if (kernel == Kernel::relevance) {
                // The dot scheme travels with the scoring slot: the chosen ISA's, variant included.
                kvfuse::RelevanceDotSchemes chosen, forced;
                ASSERT_TRUE(kvfuse::relevance_dot_schemes(chosen).ok());
                {
                    kvfuse::ScopedIsa scoped(isa);
                    ASSERT_TRUE(scoped.status().ok());
                    ASSERT_TRUE(kvfuse::relevance_dot_schemes(forced).ok());
                }
                EXPECT_EQ(chosen.int8_keys, forced.int8_keys) << where;
                EXPECT_EQ(chosen.int4_keys, forced.int4_keys) << where;
            }
        }
        ASSERT_TRUE(kvfuse::reset_kernel_isa(kernel).ok());
        EXPECT_EQ(running(kernel), base);
    }
}

TEST_F(KernelIsaTest, ForcingOneIsaOverridesEveryChoice) {
    const std::vector<Isa> isas = kvfuse::supported_isas();
    ASSERT_TRUE(kvfuse::set_kernel_isa(Kernel::topk, Isa::scalar).ok());
    for (Isa forced : isas) {
        ASSERT_TRUE(kvfuse::force_isa(forced).ok());
        for (Kernel k : kvfuse::all_kernels()) {
            std::string source;
            EXPECT_EQ(running(k, &source), forced) << kvfuse::kernel_name(k);
            EXPECT_EQ(source, "kvfuse_force_isa");
        }
        expect_topk_matches_reference(std::string("forced ") + kvfuse::isa_name(forced));
    }
    kvfuse::reset_isa();
    std::string source;
    EXPECT_EQ(running(Kernel::topk, &source), Isa::scalar) << "the choice must survive a force and reset";
    EXPECT_EQ(source, "program");
}


TEST_F(KernelIsaTest, ChoicesRoundTripThroughAProfile) {
    const fs::path dir = kvfuse::testing::fresh_scratch_dir("kernel-isa", "roundtrip");
    const fs::path path = dir / "profile.json";
    const Isa base = active();
    // A SIMD ISA other than the active one where this CPU has one, else scalar (always runs).
    Isa other_simd = Isa::scalar;
    for (Isa isa : kvfuse::supported_isas())
        if (isa != base && isa != Isa::scalar) other_simd = isa;
    ASSERT_TRUE(kvfuse::set_kernel_isa(Kernel::topk, other_simd).ok());
    ASSERT_TRUE(kvfuse::set_kernel_isa(Kernel::attention, Isa::scalar).ok());
    kvfuse_tuning t;
    kvfuse_tuning_init(&t);
    kvfuse_default_tuning(&t);
    ASSERT_EQ(kvfuse_save_profile(path.c_str(), &t, nullptr), KVFUSE_OK) << kvfuse_last_error();
    const std::string text = kvfuse::testing::read_whole_file(path);
    EXPECT_NE(text.find(std::string("\"topk\": \"") + kvfuse::isa_name(other_simd) + "\""), std::string::npos) << text;
    EXPECT_NE(text.find("\"attention\": \"scalar\""), std::string::npos) << text;
    EXPECT_NE(text.find("\"rope\": \"auto\""), std::string::npos) << text;

    reset_all();
    EXPECT_EQ(running(Kernel::topk), base);
    ASSERT_EQ(kvfuse_load_profile(path.c_str()), KVFUSE_OK) << kvfuse_last_error();
    std::string source;
    EXPECT_EQ(running(Kernel::topk, &source), other_simd);
    EXPECT_EQ(source, "profile");
    EXPECT_EQ(running(Kernel::attention, &source), Isa::scalar);
    EXPECT_EQ(source, "profile");
    EXPECT_EQ(running(Kernel::rope, &source), base);
    EXPECT_EQ(source, "default");
    expect_attention_matches_reference("attention from the profile");
    expect_topk_matches_reference("topk from the profile");
    fs::remove_all(dir);
}

TEST_F(KernelIsaTest, BadChoicesInAProfileRejectItAndChangeNothing) {
    const fs::path dir = kvfuse::testing::fresh_scratch_dir("kernel-isa", "bad");
    const fs::path good = dir / "good.json";
    kvfuse_tuning t;
    kvfuse_tuning_init(&t);
    kvfuse_default_tuning(&t);
    ASSERT_EQ(kvfuse_save_profile(good.c_str(), &t, nullptr), KVFUSE_OK);
    const std::string text = kvfuse::testing::read_whole_file(good);
    ASSERT_NE(text.find("\"topk\": \"auto\""), std::string::npos) << text;
    auto with_topk = [&](const std::string& value) {
        std::string s = text;
        s.replace(s.find("\"topk\": \"auto\""), std::string("\"topk\": \"auto\"").size(), "\"topk\": " + value);
        return s;
    };
    std::string unsupported;
    for (Isa isa : kvfuse::all_isas())
        if (!kvfuse::isa_supported(isa)) unsupported = kvfuse::isa_name(isa);
    struct Case {
        std::string name, content, why;
    };
    std::vector<Case> cases = {
        {"unknown isa", with_topk("\"sse9\""), "kernel_isa.topk: 'sse9' is not an ISA"},
        {"not a string", with_topk("2"), "kernel_isa.topk must be an ISA name"},
        {"unknown kernel", [&] {
             std::string s = text;
             s.replace(s.find("\"topk\": \"auto\""), std::string("\"topk\": \"auto\"").size(), "\"gemm\": \"auto\"");
             return s;
         }(),
         "'gemm' is not a kernel"},
    };
    if (!unsupported.empty())
        cases.push_back({"unsupported isa", with_topk("\"" + unsupported + "\""), "kernel_isa.topk is " + unsupported + ", which"});
    ASSERT_TRUE(kvfuse::set_kernel_isa(Kernel::topk, Isa::scalar).ok());
    for (const Case& c : cases) {
        const fs::path p = dir / "bad.json";
        std::ofstream(p, std::ios::trunc) << c.content;
        EXPECT_EQ(kvfuse_load_profile(p.c_str()), KVFUSE_ERROR_BAD_PROFILE) << c.name;
        EXPECT_NE(std::string(kvfuse_last_error()).find(c.why), std::string::npos) << c.name << ": " << kvfuse_last_error();
        std::string source;
        EXPECT_EQ(running(Kernel::topk, &source), Isa::scalar) << c.name;
        EXPECT_EQ(source, "program") << c.name;
    }
    fs::remove_all(dir);
}

}  // namespace
