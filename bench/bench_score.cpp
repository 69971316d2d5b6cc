// A3 relevance from int8 or int4 keys (int8 queries) against the same call on f32 inputs,
// timed side by side: T = 32768 keys, H = 32, Hkv = 8, D = 128, M = 32 question rows, per
// ISA, 1 and 2 threads. GOP/s counts 2 operations per multiply-add of the merged-head logits
// (M x T x H x D of them, the causal mask aside).
// Each quantized row runs the ISA's own best integer dot scheme; the `[pairs_s16]` rows force
// the pmaddwd pairs every ISA ran before the byte dot products, for comparison in the same run
// (the label says which scheme ran and whether through its instruction).
//   x_baseline: f32 time / quantized time.  pct_int8_peak: against the best int8 dot-product
//   instruction of that ISA on this CPU, measured in this run (roofline.h; peak_kind says
//   which).  pct_f32_peak (on the baseline): the f32 path against the FMA peak.
#include <omp.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "kernels/score/score_dot.h"
#include "roofline.h"
#include "kvfuse/kvfuse.hpp"

namespace {

constexpr std::size_t kTokens = 32768, kHeads = 32, kKvHeads = 8, kRows = 32;

double int8_peak(int isa, int threads, const char** kind) {
    static std::map<std::pair<int, int>, std::pair<double, const char*>> cache;
    const auto key = std::make_pair(isa, threads);
    if (!cache.count(key)) {
        const char* name = "none";
        const double gops = kvfuse::bench::measure_int8_peak_gops(isa, threads, &name);
        cache[key] = {gops, name};
    }
    *kind = cache[key].second;
    return cache[key].first;
}

double fma_peak(int isa, int threads) {
    static std::map<std::pair<int, int>, double> cache;
    const auto key = std::make_pair(isa, threads);
    if (!cache.count(key)) cache[key] = kvfuse::bench::measure_f32_fma_peak_gflops(isa, threads);
    return cache[key];
}

void score_bench(benchmark::State& state, kvfuse::Isa isa, int threads, bool int4, kvfuse::detail::ScoreDot dot,
                 std::size_t kDim) {
    if (!kvfuse::bench::force_isa_or_skip(state, static_cast<int>(isa))) return;
    omp_set_num_threads(threads);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    // 64-byte aligned, as an engine's cache is (bench_support.h: a large std::vector splits every
    // AVX-512 load across two cache lines).
    using kvfuse::bench::AlignedVector;
    AlignedVector<float> q(kRows * kHeads * kDim), k(kTokens * kKvHeads * kDim);
    for (float& v : q) v = normal(rng);
    for (float& v : k) v = normal(rng);
    AlignedVector<std::int8_t> q8(q.size()), k8(k.size());
    AlignedVector<std::uint8_t> k4(kTokens * kKvHeads * ((kDim + 1) / 2));
    AlignedVector<float> qs(kRows * kHeads), ks(kTokens * kKvHeads), means(kKvHeads * kDim), out(kTokens - kRows);
    (void)kvfuse::quantize_rows_i8(q.data(), kRows, kHeads, kDim, kHeads * kDim, q8.data(), qs.data());
    if (int4)
        (void)kvfuse::quantize_keys_i4(k.data(), kTokens, kKvHeads, kDim, kKvHeads * kDim, k4.data(), ks.data(), means.data());
    else
        (void)kvfuse::quantize_keys_i8(k.data(), kTokens, kKvHeads, kDim, kKvHeads * kDim, k8.data(), ks.data(),
                                       means.data());
    kvfuse::RelevanceArgs base{};
    base.question_rows = kRows;
    base.candidates = kTokens;
    base.query_heads = kHeads;
    base.kv_heads = kKvHeads;
    base.head_dim = kDim;
    base.smoothing = 1;
    base.out = out.data();
    kvfuse::RelevanceArgs int8 = base, f32 = base;
    int8.queries_i8 = q8.data();
    int8.query_scales = qs.data();
    int8.keys_i8 = int4 ? nullptr : k8.data();
    int8.keys_i4 = int4 ? k4.data() : nullptr;
    int8.key_scales = ks.data();
    f32.queries_f32 = q.data();
    f32.keys_f32 = k.data();
    const double ops = 2.0 * kRows * kTokens * kHeads * kDim;
    kvfuse::detail::force_score_dot(dot);
    kvfuse::bench::run_side_by_side(
        state, [&] { (void)kvfuse::a3_relevance(int8); }, [&] { (void)kvfuse::a3_relevance(f32); }, ops, "GOP/s", 1e9);
    kvfuse::detail::force_score_dot(kvfuse::detail::ScoreDot::automatic);
    const kvfuse::detail::ScoreDotUsed used = kvfuse::detail::last_score_dot();
    std::string label = std::string("dot: ") + kvfuse::detail::score_dot_name(used.dot) +
                        (used.hardware ? " (instruction)" : " (emulated)");
    kvfuse::reset_isa();
    const char* kind = "none";
    const double peak = int8_peak(static_cast<int>(isa), threads, &kind);
    if (peak > 0) {
        state.counters["int8_peak_GOP/s"] = peak;
        state.counters["pct_int8_peak"] = 100.0 * state.counters["GOP/s"] / peak;
        label += std::string("; int8 peak: ") + kind;
    }
    state.SetLabel(label);
    if (const double f = fma_peak(static_cast<int>(isa), threads); f > 0)
        state.counters["pct_f32_peak"] = 100.0 * state.counters["baseline_GOP/s"] / f;
}

}  // namespace

int main(int argc, char** argv) {
    for (kvfuse::Isa isa : kvfuse::supported_isas()) {
        if (isa == kvfuse::Isa::scalar) continue;  // the double reference would take minutes per call
        for (int threads : {1, 2})
            for (bool int4 : {false, true})
                for (auto dot : {kvfuse::detail::ScoreDot::automatic, kvfuse::detail::ScoreDot::pairs_s16}) {
                    const bool forced = dot != kvfuse::detail::ScoreDot::automatic;
                    const std::string name = std::string("a3_relevance/") + kvfuse::isa_name(isa) + (int4 ? "/int4" : "/int8") +
                                             (forced ? "[pairs_s16]" : "") +
                                             "_vs_f32/T:32768/H:32/Hkv:8/D:128/M:32/threads:" + std::to_string(threads);
                    benchmark::RegisterBenchmark(name.c_str(), score_bench, isa, threads, int4, dot, std::size_t{128})
                        ->UseManualTime()
                        ->Unit(benchmark::kMillisecond)
                        ->Iterations(3);
                }
        // Other head dimensions (int8 keys, each ISA's own scheme, 2 threads): 8 and 80 are not
        // a whole number of AVX-512 vectors' worth of quads.
        for (std::size_t dim : {std::size_t{8}, std::size_t{64}, std::size_t{80}}) {
            const std::string name = std::string("a3_relevance/") + kvfuse::isa_name(isa) +
                                     "/int8_vs_f32/T:32768/H:32/Hkv:8/D:" + std::to_string(dim) + "/M:32/threads:2";
            benchmark::RegisterBenchmark(name.c_str(), score_bench, isa, 2, false, kvfuse::detail::ScoreDot::automatic, dim)
                ->UseManualTime()
                ->Unit(benchmark::kMillisecond)
                ->Iterations(3);
        }
    }
    return kvfuse::bench::run_benchmarks(argc, argv);
}
