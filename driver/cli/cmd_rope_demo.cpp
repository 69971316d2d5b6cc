// `kvfuse rope-demo`: move a stored chunk's keys to a new offset on every ISA this CPU runs,
// and report the median time, GB/s, speed over the scalar reference and the largest difference
// from it. A quick, honest look at the first kernel; bench/ has the real benchmark.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cli/commands.h"
#include "kvfuse/kvfuse.hpp"

namespace kvfuse::cli {

namespace {

struct DemoOptions {
    std::size_t tokens = 4096;
    std::size_t heads = 8;
    int head_dim = 128;
    std::int64_t delta = 3000;
    int repeats = 9;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

int run_demo(const DemoOptions& o) {
    kvfuse::RopeConfig config;
    config.head_dim = o.head_dim;
    const std::size_t stride = o.heads * static_cast<std::size_t>(o.head_dim);
    const std::size_t count = o.tokens * stride;
    std::vector<float> stored(count), fused(count), reference(count);
    std::mt19937 rng(42);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : stored) v = normal(rng);

    std::printf("RoPE re-rotation demo: %zu tokens x %zu KV heads x %d dims (f32, %.1f MiB), delta %lld\n",
                o.tokens, o.heads, o.head_dim, count * 4.0 / (1 << 20), static_cast<long long>(o.delta));
    std::printf("fused load = read the stored chunk, rotate, write into the request's cache\n");
    std::printf("%-8s %12s %10s %12s %14s\n", "isa", "median us", "GB/s", "x scalar", "max |diff|");
    double scalar_us = 0.0;
    for (kvfuse::Isa isa : kvfuse::supported_isas()) {
        kvfuse::ScopedIsa scoped(isa);
        if (!scoped.status().ok()) {
            std::fprintf(stderr, "kvfuse: error: %s\n", scoped.status().message().c_str());
            return 1;
        }
        std::vector<double> times;
        for (int r = 0; r < o.repeats; ++r) {
            const auto start = std::chrono::steady_clock::now();
            const kvfuse::Status status = kvfuse::rope_rotate_span_copy(
                config, stored.data(), stride, fused.data(), stride, o.tokens, o.heads, o.delta);
            const auto stop = std::chrono::steady_clock::now();
            if (!status.ok()) {
                std::fprintf(stderr, "kvfuse: error: %s\n", status.message().c_str());
                return 1;
            }
            times.push_back(std::chrono::duration<double, std::micro>(stop - start).count());
        }
        const double us = median(times);
        if (isa == kvfuse::Isa::scalar) {
            scalar_us = us;
            reference = fused;
        }
        double max_diff = 0.0;
        for (std::size_t i = 0; i < count; ++i)
            max_diff = std::max(max_diff, static_cast<double>(std::fabs(fused[i] - reference[i])));
        const double gbps = 2.0 * count * sizeof(float) / (us * 1e3);
        std::printf("%-8s %12.1f %10.2f %12.1f %14.3g\n", kvfuse::isa_name(isa), us, gbps, scalar_us / us, max_diff);
    }
    return 0;
}

}  // namespace

void add_rope_demo_command(CLI::App& app) {
    auto options = std::make_shared<DemoOptions>();
    CLI::App* cmd = app.add_subcommand("rope-demo", "Re-rotate a chunk's cached keys on every ISA and time it");
    cmd->add_option("--tokens", options->tokens, "tokens in the chunk")->check(CLI::Range(1, 1 << 20));
    cmd->add_option("--heads", options->heads, "KV heads")->check(CLI::Range(1, 256));
    cmd->add_option("--head-dim", options->head_dim, "dims per head (even)")->check(CLI::Range(2, 1024));
    cmd->add_option("--delta", options->delta, "positions to move the chunk by");
    cmd->add_option("--repeats", options->repeats, "timed runs per ISA (median reported)")->check(CLI::Range(1, 1000));
    cmd->callback([options] { g_exit_status = run_demo(*options); });
}

}  // namespace kvfuse::cli
