// Parameterises a test over every ISA this build has and this CPU runs, forcing it in SetUp.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kvfuse/kvfuse.hpp"

namespace kvfuse::testing {

class IsaTest : public ::testing::TestWithParam<Isa> {
   protected:
    void SetUp() override {
        const Status status = force_isa(GetParam());
        ASSERT_TRUE(status.ok()) << status.message();
        Isa active = Isa::scalar;
        ASSERT_TRUE(active_isa(active).ok());
        ASSERT_EQ(active, GetParam()) << "the forced ISA is not the one running";
    }
    void TearDown() override { reset_isa(); }
};

inline std::string isa_param_name(const ::testing::TestParamInfo<Isa>& info) {
    return isa_name(info.param);
}

#define KVFUSE_INSTANTIATE_ISA_TESTS(fixture)                                                    \
    INSTANTIATE_TEST_SUITE_P(Isa, fixture, ::testing::ValuesIn(::kvfuse::supported_isas()), \
                             ::kvfuse::testing::isa_param_name)

// Random finite values in [-scale, scale].
inline std::vector<float> random_floats(std::size_t count, std::uint32_t seed, float scale = 1.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(-scale, scale);
    std::vector<float> out(count);
    for (float& v : out) v = dist(rng);
    return out;
}

}  // namespace kvfuse::testing
