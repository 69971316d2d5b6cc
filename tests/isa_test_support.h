// Parameterises a test over every ISA this build has and this CPU runs, forcing it in SetUp.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <cctype>
#include <string>
#include <vector>

#include <omp.h>

#include <ostream>

#include "dispatch/kernel_builds.h"
#include "kvfuse/kvfuse.hpp"

namespace kvfuse::testing {

// One compiled kernel build this CPU runs: an ISA's own objects ("avx2") or a variant registered
// over them ("avx2_vnni"). Converts to its Isa, so tests compare and switch on the parameter as
// on an Isa; `variant` says whether it is the variant (what the dispatch picks by itself here).
struct KernelBuild {
    Isa isa;
    std::string name;
    bool variant;
    operator Isa() const { return isa; }  // NOLINT: implicit by design
};

inline std::vector<KernelBuild> runnable_kernel_builds() {
    std::vector<KernelBuild> out;
    for (const kvfuse::detail::KernelBuild& b : kvfuse::detail::runnable_kernel_builds())
        out.push_back({static_cast<Isa>(b.isa), b.name, b.variant});
    return out;
}

inline void PrintTo(const KernelBuild& build, std::ostream* os) { *os << build.name; }

// Parameterises a test over every kernel build: on a VNNI CPU both "avx2" and "avx2_vnni", so
// that the plain objects, which the dispatch never picks there, still run.
class IsaTest : public ::testing::TestWithParam<KernelBuild> {
   protected:
    void SetUp() override {
        const kvfuse_status status = kvfuse::detail::force_kernel_build(GetParam().name.c_str());
        ASSERT_EQ(status, KVFUSE_OK) << kvfuse_last_error();
        Isa active = Isa::scalar;
        ASSERT_TRUE(active_isa(active).ok());
        ASSERT_EQ(active, GetParam().isa) << "the forced ISA is not the one running";
        ASSERT_STREQ(kvfuse::detail::active_kernel_build(), GetParam().name.c_str());
    }
    void TearDown() override { reset_isa(); }
};

// GoogleTest names allow letters, digits and '_': a build of several variants
// ("avx512_vnni+avx512_bf16") shows as "avx512_vnni_avx512_bf16".
inline std::string isa_param_name(const ::testing::TestParamInfo<KernelBuild>& info) {
    std::string name = info.param.name;
    for (char& c : name)
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    return name;
}

#define KVFUSE_INSTANTIATE_ISA_TESTS(fixture)                                                                   \
    INSTANTIATE_TEST_SUITE_P(Isa, fixture, ::testing::ValuesIn(::kvfuse::testing::runnable_kernel_builds()), \
                             ::kvfuse::testing::isa_param_name)

// Runs `body` with OpenMP at each thread count a test must cover: 1, 3 and 7 (odd splits of the
// work, more threads than this machine has cores) and the machine's own count.
template <class Body>
void at_thread_counts(Body&& body) {
    const int machine = omp_get_max_threads();
    for (int threads : {1, 3, 7, machine}) {
        omp_set_num_threads(threads);
        SCOPED_TRACE("threads " + std::to_string(threads));
        body(threads);
    }
    omp_set_num_threads(machine);
}

// Random finite values in [-scale, scale].
inline std::vector<float> random_floats(std::size_t count, std::uint32_t seed, float scale = 1.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(-scale, scale);
    std::vector<float> out(count);
    for (float& v : out) v = dist(rng);
    return out;
}

}  // namespace kvfuse::testing
