// Tuned ÷ default: every kernel at its benchmark shape, run with the tuning profile in force at
// start-up (KVFUSE_PROFILE, else this machine's default profile; `kvfuse tune` makes one) and
// with the built-in defaults, alternating in the same iterations. Tuned means the profile's
// parameters and per-kernel ISA; default means the built-in parameters on the active ISA.
//   name: tuning/<kernel>/<shape>/isa:<tuned>_vs_<default>; x_baseline = default time / tuned
//   time (> 1: tuning helps).
// Without a profile every benchmark is skipped with that message.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "kvfuse/kvfuse.hpp"
#include "tuning/int8_relevance.h"
#include "tuning/tuner.h"

namespace {

kvfuse::tuner::Settings g_tuned{}, g_defaults{};
bool g_have_profile = false;

std::vector<float> random_floats(std::size_t n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
}

// Runs `call` tuned (the kernel side) and default (the baseline side).
void tuned_vs_default(benchmark::State& state, int threads, const std::function<void()>& call, double work,
                      const char* unit, double scale) {
    if (!g_have_profile) {
        state.SkipWithError(("no tuning profile in force (" + kvfuse::profile_status() + ")").c_str());
        return;
    }
    omp_set_num_threads(threads);
    kvfuse::bench::run_side_by_side(
        state,
        [&] {
            (void)kvfuse::tuner::apply(g_tuned);
            call();
        },
        [&] {
            (void)kvfuse::tuner::apply(g_defaults);
            call();
        },
        work, unit, scale);
    (void)kvfuse::tuner::apply(g_tuned);
}

void rope_of(benchmark::State& state, std::size_t tokens) {
    const std::size_t heads = 8, D = 128;
    auto keys = random_floats(tokens * heads * D, 1);
    kvfuse::RopeConfig config;
    config.head_dim = static_cast<int>(D);
    tuned_vs_default(
        state, 2, [&] { (void)kvfuse::rope_rotate_span(config, keys.data(), tokens, heads, heads * D, std::int64_t{3}); },
        static_cast<double>(2 * keys.size() * sizeof(float)), "GB/s", 1e9);
}

void rope(benchmark::State& state) { rope_of(state, 8192); }
void rope_small(benchmark::State& state) { rope_of(state, 64); }  // one chunk's worth: the thread threshold matters

void topk(benchmark::State& state) {
    const std::size_t n = 131072, k = n * 15 / 100;
    const auto scores = random_floats(n, 2);
    std::vector<std::int64_t> out(k);
    tuned_vs_default(
        state, 1,
        [&] {
            std::size_t count = 0;
            (void)kvfuse::topk(scores.data(), n, k, kvfuse::TopkOrder::by_position, out.data(), count);
        },
        static_cast<double>(n), "Mscores/s", 1e6);
}

void attention(benchmark::State& state) {
    const std::size_t T = 4096, n = T * 15 / 100, H = 32, Hkv = 8, D = 128;
    const auto q = random_floats(n * H * D, 3), k = random_floats(T * Hkv * D, 4), v = random_floats(T * Hkv * D, 5);
    std::vector<float> out(n * H * D);
    std::vector<std::int64_t> positions(n);
    std::mt19937 rng(6);
    std::uniform_int_distribution<std::int64_t> pos(0, T - 1);
    double flops = 0;
    for (auto& p : positions) {
        p = pos(rng);
        flops += 4.0 * static_cast<double>(p + 1) * H * D;
    }
    const kvfuse::AttentionArgs a =
        kvfuse::contiguous_attention_args(q.data(), n, positions.data(), H, k.data(), v.data(), T, Hkv, D, out.data());
    tuned_vs_default(state, 2, [&] { (void)kvfuse_sparse_attention(&a); }, flops, "GFLOP/s", 1e9);
}

void score(benchmark::State& state) {
    const std::size_t T = 32768, H = 32, Hkv = 8, D = 128, M = 32;
    const kvfuse::tuner::Int8Relevance relevance(random_floats(M * H * D, 7), M, random_floats(T * Hkv * D, 8), T, H, Hkv, D);
    tuned_vs_default(state, 2, [&] { (void)kvfuse::a3_relevance(relevance.args); }, 2.0 * M * T * H * D, "GOP/s", 1e9);
}

}  // namespace

int main(int argc, char** argv) {
    g_defaults = kvfuse::tuner::default_settings();
    if (const std::string why = kvfuse::tuner::load_machine_profile(); !why.empty())
        std::fprintf(stderr, "bench_tuning: %s\n", why.c_str());
    g_tuned = kvfuse::tuner::settings_in_force();  // KVFUSE_PROFILE's or this machine's profile
    g_have_profile = kvfuse::profile_status().rfind("profile ", 0) == 0;
    kvfuse::Isa active = kvfuse::Isa::scalar;
    if (!kvfuse::active_isa(active).ok()) {
        std::fprintf(stderr, "bench_tuning: no ISA runs: %s\n", kvfuse::profile_status().c_str());
        return 1;
    }
    // The name says which ISA each side ran, so a per-kernel ISA choice shows in the report.
    auto add = [&](std::string name, kvfuse::Kernel kernel, void (*fn)(benchmark::State&), benchmark::TimeUnit unit) {
        const auto& tuned_isa = g_tuned.kernel_isa[static_cast<int>(kernel)];
        name += std::string("/isa:") + kvfuse::isa_name(tuned_isa ? *tuned_isa : active) + "_vs_" + kvfuse::isa_name(active);
        benchmark::RegisterBenchmark(name.c_str(), fn)->UseManualTime()->Unit(unit);
    };
    add("tuning/rope/f32/8192x8x128/threads:2", kvfuse::Kernel::rope, rope, benchmark::kMicrosecond);
    add("tuning/rope/f32/64x8x128/threads:2", kvfuse::Kernel::rope, rope_small, benchmark::kMicrosecond);
    add("tuning/topk/n:131072/k:19660/threads:1", kvfuse::Kernel::topk, topk, benchmark::kMicrosecond);
    add("tuning/attention/f32/T:4096/n:614/H:32/Hkv:8/D:128/threads:2", kvfuse::Kernel::attention, attention,
        benchmark::kMillisecond);
    add("tuning/a3_relevance/int8/T:32768/H:32/Hkv:8/D:128/M:32/threads:2", kvfuse::Kernel::relevance, score,
        benchmark::kMillisecond);
    benchmark::AddCustomContext("tuning", kvfuse::profile_status());
    benchmark::AddCustomContext("kernel_isa", kvfuse::tuner::describe_kernel_isas());
    return kvfuse::bench::run_benchmarks(argc, argv);
}
