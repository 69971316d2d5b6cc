// Top-k selection of N = 131072 scores, k = 15 % and 1 %, one thread, per ISA, against
// std::nth_element (+ sorting the k indices, as the pipeline needs them) and std::partial_sort,
// timed side by side in the same iterations.
//   name: topk/<isa>/n:<N>/k:<k>/vs:<baseline>; x_baseline = baseline time / kernel time.
// The baseline evicts the kernel's scores and buffers from L2 between calls (its index array
// alone is 512 KiB), so those rows time a cold kernel. The `hot` rows (k = 1, 5, 15 and 50 %)
// call the kernel once more, untimed, between the baseline and the timed call: the kernel with
// its scores and buffers in L2, as when a caller selects from scores it has just written.
//   name: topk/<isa>/n:<N>/k:<k>/hot/vs:nth_element.
// The roofline of a selection is its data movement: `pct_floor` compares the kernel with one
// read of the N scores plus one sequential write of the k int64 indices, timed in the same
// iterations (right after the previous kernel call, so the scores are as warm as they get: the
// floor is the least any top-k could take here, not a kernel that could exist).
#include <omp.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "kvfuse/kvfuse.hpp"

namespace {

void topk_bench(benchmark::State& state, kvfuse::Isa isa, std::size_t n, std::size_t k, bool partial_sort, bool hot) {
    if (!kvfuse::bench::force_isa_or_skip(state, static_cast<int>(isa))) return;
    omp_set_num_threads(1);
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    // 64-byte aligned (bench_support.h: a large std::vector splits every AVX-512 load).
    kvfuse::bench::AlignedVector<float> scores(n);
    for (float& v : scores) v = normal(rng);
    kvfuse::bench::AlignedVector<std::int64_t> out(k);
    std::vector<std::uint32_t> work(n);
    std::vector<std::int64_t> floor_out(k);
    const auto floor = [&] {
        const std::uint32_t seen =
            kvfuse::bench::read_words_once(reinterpret_cast<const std::uint32_t*>(scores.data()), n);
        kvfuse::bench::write_indices_once(floor_out.data(), k, seen & 1u);
        benchmark::DoNotOptimize(floor_out.data());
    };
    const auto kernel = [&] {
        std::size_t count = 0;
        if (!kvfuse::topk(scores.data(), n, k, kvfuse::TopkOrder::by_position, out.data(), count).ok())
            state.SkipWithError("topk failed");
        benchmark::DoNotOptimize(out.data());
    };
    kvfuse::bench::run_side_by_side_with_floor(
        state, kernel,
        [&] {
            std::iota(work.begin(), work.end(), 0u);
            auto better = [&](std::uint32_t a, std::uint32_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); };
            if (partial_sort) {
                std::partial_sort(work.begin(), work.begin() + static_cast<std::ptrdiff_t>(k), work.end(), better);
            } else {
                std::nth_element(work.begin(), work.begin() + static_cast<std::ptrdiff_t>(k), work.end(), better);
            }
            std::sort(work.begin(), work.begin() + static_cast<std::ptrdiff_t>(k));
            benchmark::DoNotOptimize(work.data());
        },
        floor, static_cast<double>(n), "Mscores/s", 1e6, hot ? std::function<void()>(kernel) : nullptr);
    kvfuse::reset_isa();
}

}  // namespace

int main(int argc, char** argv) {
    const std::size_t n = 131072;
    const auto add = [&](kvfuse::Isa isa, std::size_t k, bool partial, bool hot) {
        const std::string name = std::string("topk/") + kvfuse::isa_name(isa) + "/n:" + std::to_string(n) + "/k:" +
                                 std::to_string(k) + (hot ? "/hot" : "") + "/vs:" +
                                 (partial ? "partial_sort" : "nth_element");
        benchmark::RegisterBenchmark(name.c_str(), topk_bench, isa, n, k, partial, hot)
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
    };
    for (kvfuse::Isa isa : kvfuse::supported_isas()) {
        for (std::size_t k : {n * 15 / 100, n / 100})
            for (bool partial : {false, true}) add(isa, k, partial, false);
        for (std::size_t k : {n / 100, n * 5 / 100, n * 15 / 100, n / 2}) add(isa, k, false, true);
    }
    return kvfuse::bench::run_benchmarks(argc, argv);
}
