// Shared pieces of the benchmarks: side-by-side timing of a kernel and its baseline, so every
// ratio is measured under the same noise, and a thread-parallel copy as the bandwidth roofline.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
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

// The same, also timing `floor` (the least work any kernel must do, e.g. one pass over the
// input and the output written once) in every iteration, before the baseline so that the
// kernel still runs right after the baseline: adds floor_<unit> and `pct_floor` = median
// floor time / median kernel time, in percent. `warm` (optional) runs untimed between the
// baseline and the kernel: e.g. the kernel itself, so that the timed call finds its input and
// buffers in cache again after a baseline that evicted them.
void run_side_by_side_with_floor(benchmark::State& state, const std::function<void()>& kernel,
                                 const std::function<void()>& baseline, const std::function<void()>& floor,
                                 double work_per_call, const std::string& unit, double unit_scale,
                                 const std::function<void()>& warm = nullptr);

// The two halves of a data-movement floor, at the best vector width of this CPU (cloned per
// target: the benchmarks are built for the baseline ISA): every 32-bit word of `words` read
// once (their OR, so nothing is skipped), and dst[i] = i + add written for i < count.
std::uint32_t read_words_once(const std::uint32_t* words, std::size_t count);
void write_indices_once(std::int64_t* dst, std::size_t count, std::int64_t add);

// Allocates on 64-byte (cache line) boundaries, as engines allocate KV caches (page- or
// 64-byte-aligned tensors); a std::vector's default allocation is only 16-byte aligned, which
// splits every AVX-512 load and store across two cache lines.
template <class T>
struct CacheLineAllocator {
    using value_type = T;
    CacheLineAllocator() = default;
    template <class U>
    CacheLineAllocator(const CacheLineAllocator<U>&) {}
    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
    void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t{64}); }
    template <class U>
    bool operator==(const CacheLineAllocator<U>&) const { return true; }
    template <class U>
    bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};
template <class T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

// Marks the ISA for a benchmark; returns false (and skips) when it cannot run here.
bool force_isa_or_skip(benchmark::State& state, int isa);

// The end of every benchmark program's main, once it has registered its benchmarks: Google
// Benchmark's flags parsed, then the benchmarks they select run. Returns main's status: 1 (with
// a message) for an unknown flag, before running anything; else 0.
int run_benchmarks(int argc, char** argv);

}  // namespace kvfuse::bench
