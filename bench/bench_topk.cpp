// Top-k selection of N = 131072 scores, k = 15 % and 1 %, one thread, per ISA, against
// std::nth_element (+ sorting the k indices, as the pipeline needs them) and std::partial_sort,
// timed side by side in the same iterations.
//   name: topk/<isa>/n:<N>/k:<k>/vs:<baseline>; x_baseline = baseline time / kernel time.
#include <omp.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "kvfuse/kvfuse.hpp"

namespace {

void topk_bench(benchmark::State& state, kvfuse::Isa isa, std::size_t n, std::size_t k, bool partial_sort) {
    if (!kvfuse::bench::force_isa_or_skip(state, static_cast<int>(isa))) return;
    omp_set_num_threads(1);
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    std::vector<float> scores(n);
    for (float& v : scores) v = normal(rng);
    std::vector<std::int64_t> out(k);
    std::vector<std::uint32_t> work(n);
    kvfuse::bench::run_side_by_side(
        state,
        [&] {
            std::size_t count = 0;
            if (!kvfuse::topk(scores.data(), n, k, kvfuse::TopkOrder::by_position, out.data(), count).ok())
                state.SkipWithError("topk failed");
            benchmark::DoNotOptimize(out.data());
        },
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
        static_cast<double>(n), "Mscores/s", 1e6);
    kvfuse::reset_isa();
}

}  // namespace

int main(int argc, char** argv) {
    const std::size_t n = 131072;
    for (kvfuse::Isa isa : kvfuse::supported_isas())
        for (std::size_t k : {n * 15 / 100, n / 100})
            for (bool partial : {false, true}) {
                const std::string name = std::string("topk/") + kvfuse::isa_name(isa) + "/n:" + std::to_string(n) +
                                         "/k:" + std::to_string(k) + "/vs:" + (partial ? "partial_sort" : "nth_element");
                benchmark::RegisterBenchmark(name.c_str(), topk_bench, isa, n, k, partial)
                    ->UseManualTime()
                    ->Unit(benchmark::kMicrosecond);
            }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
