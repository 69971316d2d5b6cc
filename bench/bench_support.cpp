#include "bench_support.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kvfuse/kvfuse.hpp"

namespace kvfuse::bench {

double median(std::vector<double> values) {
    if (values.empty()) return 0.0;
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

void parallel_copy(void* dst, const void* src, std::size_t bytes) {
#pragma omp parallel
    {
        const std::size_t threads = static_cast<std::size_t>(omp_get_num_threads());
        const std::size_t id = static_cast<std::size_t>(omp_get_thread_num());
        const std::size_t chunk = (bytes / threads + 63) / 64 * 64;
        const std::size_t begin = std::min(bytes, id * chunk);
        const std::size_t end = std::min(bytes, begin + chunk);
        std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin, end - begin);
    }
}

void run_side_by_side(benchmark::State& state, const std::function<void()>& kernel,
                      const std::function<void()>& baseline, double work_per_call,
                      const std::string& unit, double unit_scale) {
    run_side_by_side_with_floor(state, kernel, baseline, nullptr, work_per_call, unit, unit_scale);
}

void run_side_by_side_with_floor(benchmark::State& state, const std::function<void()>& kernel,
                                 const std::function<void()>& baseline, const std::function<void()>& floor,
                                 double work_per_call, const std::string& unit, double unit_scale,
                                 const std::function<void()>& warm) {
    using clock = std::chrono::steady_clock;
    std::vector<double> kernel_s, baseline_s, floor_s;
    for (auto _ : state) {
        if (floor) {
            const auto f0 = clock::now();
            floor();
            floor_s.push_back(std::chrono::duration<double>(clock::now() - f0).count());
        }
        const auto t0 = clock::now();
        baseline();
        const auto t1 = clock::now();
        if (warm) warm();
        const auto t1_kernel = clock::now();
        kernel();
        const auto t2 = clock::now();
        baseline_s.push_back(std::chrono::duration<double>(t1 - t0).count());
        kernel_s.push_back(std::chrono::duration<double>(t2 - t1_kernel).count());
        state.SetIterationTime(kernel_s.back());
    }
    const double k = median(kernel_s), b = median(baseline_s);
    state.counters[unit] = work_per_call / k / unit_scale;
    state.counters["baseline_" + unit] = work_per_call / b / unit_scale;
    state.counters["x_baseline"] = b / k;
    if (floor) {
        const double f = median(floor_s);
        state.counters["floor_" + unit] = work_per_call / f / unit_scale;
        state.counters["pct_floor"] = 100.0 * f / k;
    }
}

#if defined(__x86_64__)
#define KVFUSE_BENCH_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KVFUSE_BENCH_CLONES
#endif

KVFUSE_BENCH_CLONES std::uint32_t read_words_once(const std::uint32_t* words, std::size_t count) {
    std::uint32_t seen = 0;
    for (std::size_t i = 0; i < count; ++i) seen |= words[i];
    return seen;
}

KVFUSE_BENCH_CLONES void write_indices_once(std::int64_t* dst, std::size_t count, std::int64_t add) {
    for (std::size_t i = 0; i < count; ++i) dst[i] = static_cast<std::int64_t>(i) + add;
}

bool force_isa_or_skip(benchmark::State& state, int isa) {
    const kvfuse::Status status = kvfuse::force_isa(static_cast<kvfuse::Isa>(isa));
    if (!status.ok()) {
        state.SkipWithError(status.message().c_str());
        return false;
    }
    return true;
}

int run_benchmarks(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}

}  // namespace kvfuse::bench
