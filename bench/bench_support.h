// Shared pieces of the benchmarks: side-by-side timing of a kernel and its baseline, so every
// ratio is measured under the same noise, and a thread-parallel copy as the bandwidth roofline.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace kvfuse::bench {

double median(std::vector<double> values);

// memcpy split evenly over the current OpenMP threads.
void parallel_copy(void* dst, const void* src, std::size_t bytes);

// Times `kernel` and `baseline` alternately in every iteration; the benchmark's own time is
// the kernel's (manual time). Sets counters: <unit> (kernel work per second, from the median),
// baseline_<unit>, and `x_baseline` = median baseline time / median kernel time.
void run_side_by_side(benchmark::State& state, const std::function<void()>& kernel,
                      const std::function<void()>& baseline, double work_per_call,
                      const std::string& unit, double unit_scale);

// Marks the ISA for a benchmark; returns false (and skips) when it cannot run here.
bool force_isa_or_skip(benchmark::State& state, int isa);

}  // namespace kvfuse::bench
