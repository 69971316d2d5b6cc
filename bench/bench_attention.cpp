// Sparse-row attention: T = 4096 keys, n = 0.15 T selected rows at random distinct positions,
// H = 32, Hkv = 8, D = 128 with f32, bf16 and f16 K/V (f16 side by side with bf16: the
// issue's bound is f16 within 10 % of bf16), and D = 8, 64, 80 with f32 K/V (head
// dimensions below or not a multiple of the AVX-512 vector: no ISA may be slower than a narrower
// one at any of them), 1 and 2 threads, per ISA. At D = 128 each type also runs paged
// ("paged:16": the same K/V in 16-token blocks of a pool, the blocks shuffled, read through a
// block table as vLLM keeps them), beside the contiguous call (the bound: paged within
// 10 % of contiguous).
//   GFLOP/s: 4 D FLOPs per visible (row, head, key), median over iterations;
//   pct_peak: against the f32 FMA peak of that ISA and thread count, measured right after every
//   iteration (median of the per-iteration ratios): on a shared machine a peak measured once
//   moves the figure by +-20 % with the load of the moment;
//   x_reference: against the scalar reference (double, -O3), timed in the same run on the
//   first 8 rows (its full call takes tens of seconds) and compared by GFLOP/s.
// --key_tile=N and --row_block=N override the tuning in force (to compare settings by hand;
// `kvfuse tune` is the way to choose them for a machine).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_support.h"
#include "kvfuse/kvfuse.hpp"
#include "roofline.h"

namespace {

constexpr std::size_t kTokens = 4096, kHeads = 32, kKvHeads = 8;

constexpr std::size_t kBlock = 16;

template <class T>
void attention_bench(benchmark::State& state, kvfuse::Isa isa, int threads, std::size_t kDim, bool paged) {
    if (!kvfuse::bench::force_isa_or_skip(state, static_cast<int>(isa))) return;
    omp_set_num_threads(threads);
    std::mt19937 rng(3);
    std::normal_distribution<float> normal;
    const std::size_t rows = kTokens * 15 / 100;
    std::vector<std::int64_t> positions(kTokens);
    std::iota(positions.begin(), positions.end(), 0);
    std::shuffle(positions.begin(), positions.end(), rng);
    positions.resize(rows);
    // 64-byte aligned, as an engine's cache is (bench_support.h: a std::vector is only 16-byte
    // aligned, which splits every AVX-512 load across two cache lines).
    kvfuse::bench::AlignedVector<float> q(rows * kHeads * kDim), out(q.size()), k32(kTokens * kKvHeads * kDim), v32(k32.size());
    for (auto* v : {&q, &k32, &v32})
        for (float& x : *v) x = normal(rng);
    kvfuse::bench::AlignedVector<T> k(k32.size()), v(v32.size());
    if constexpr (std::is_same_v<T, float>) {
        k.assign(k32.begin(), k32.end());
        v.assign(v32.begin(), v32.end());
    } else if constexpr (std::is_same_v<T, kvfuse::f16>) {
        (void)kvfuse::to_f16(k32.data(), k.data(), k.size());
        (void)kvfuse::to_f16(v32.data(), v.data(), v.size());
    } else {
        (void)kvfuse::to_bf16(k32.data(), k.data(), k.size());
        (void)kvfuse::to_bf16(v32.data(), v.data(), v.size());
    }
    kvfuse::AttentionArgs args = kvfuse::contiguous_attention_args(q.data(), rows, positions.data(), kHeads, k.data(),
                                                                   v.data(), kTokens, kKvHeads, kDim, out.data());
    // Paged: logical block b of the sequence in physical block table[b], the blocks shuffled.
    kvfuse::bench::AlignedVector<T> k_pool, v_pool;
    std::vector<std::int32_t> table(kTokens / kBlock);
    if (paged) {
        const std::size_t block_elements = kBlock * kKvHeads * kDim;
        std::iota(table.begin(), table.end(), 0);
        std::shuffle(table.begin(), table.end(), rng);
        k_pool.resize(k.size());
        v_pool.resize(v.size());
        for (std::size_t b = 0; b < table.size(); ++b) {
            std::copy_n(k.begin() + b * block_elements, block_elements, k_pool.begin() + table[b] * block_elements);
            std::copy_n(v.begin() + b * block_elements, block_elements, v_pool.begin() + table[b] * block_elements);
        }
        args.keys = k_pool.data();
        args.values = v_pool.data();
        args.with_paged_kv(table.data(), kBlock, table.size());
    }
    auto flops_of = [&](std::size_t count) {
        double visible = 0;
        for (std::size_t r = 0; r < count; ++r) visible += static_cast<double>(positions[r] + 1);
        return 4.0 * kDim * kHeads * visible;
    };
    std::vector<double> seconds, peaks, fractions;
    for (auto _ : state) {
        const auto start = std::chrono::steady_clock::now();
        if (!kvfuse::sparse_attention(args).ok()) state.SkipWithError("attention failed");
        seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        state.SetIterationTime(seconds.back());
        const double peak = kvfuse::bench::measure_f32_fma_peak_gflops(static_cast<int>(isa), threads);
        if (peak > 0) {
            peaks.push_back(peak);
            fractions.push_back(flops_of(rows) / seconds.back() / 1e9 / peak);
        }
    }
    const double gflops = flops_of(rows) / kvfuse::bench::median(seconds) / 1e9;
    // The reference on the first 8 rows, once, in this run.
    double reference_gflops = 0.0;
    {
        kvfuse::ScopedIsa scalar(kvfuse::Isa::scalar);
        kvfuse::AttentionArgs few = args;
        few.rows = 8;
        const auto start = std::chrono::steady_clock::now();
        (void)kvfuse::sparse_attention(few);
        reference_gflops = flops_of(8) / std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 1e9;
    }
    (void)kvfuse::force_isa(isa);
    state.counters["GFLOP/s"] = gflops;
    state.counters["reference_GFLOP/s"] = reference_gflops;
    state.counters["x_reference"] = gflops / reference_gflops;
    if (!peaks.empty()) {
        state.counters["peak_GFLOP/s"] = kvfuse::bench::median(peaks);
        state.counters["pct_peak"] = 100.0 * kvfuse::bench::median(fractions);
    }
    kvfuse::reset_isa();
}

// Removes --key_tile=N / --row_block=N from argv and applies them to the tuning in force.
bool apply_tuning_flags(int& argc, char** argv) {
    kvfuse::Tuning tuning = kvfuse::current_tuning();
    int kept = 1;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg.rfind("--key_tile=", 0) == 0)
            tuning.attention_key_tile = static_cast<std::uint32_t>(std::atoi(arg.c_str() + 11));
        else if (arg.rfind("--row_block=", 0) == 0)
            tuning.attention_row_block = static_cast<std::uint32_t>(std::atoi(arg.c_str() + 12));
        else
            argv[kept++] = argv[i];
    }
    argc = kept;
    const kvfuse::Status status = kvfuse::set_tuning(&tuning);
    if (!status.ok()) std::fprintf(stderr, "bench_attention: %s\n", status.message().c_str());
    return status.ok();
}

}  // namespace

int main(int argc, char** argv) {
    if (!apply_tuning_flags(argc, argv)) return 1;
    for (kvfuse::Isa isa : kvfuse::supported_isas()) {
        if (isa == kvfuse::Isa::scalar) continue;  // the reference is the baseline of every row
        for (std::size_t dim : {std::size_t{128}, std::size_t{8}, std::size_t{64}, std::size_t{80}})
            for (int threads : {1, 2})
                for (kvfuse::Dtype dtype : {kvfuse::Dtype::f32, kvfuse::Dtype::bf16, kvfuse::Dtype::f16})
                    for (bool paged : {false, true}) {
                        if ((dtype != kvfuse::Dtype::f32 || paged) && dim != 128) continue;
                        const char* type = dtype == kvfuse::Dtype::f32 ? "f32" : dtype == kvfuse::Dtype::bf16 ? "bf16" : "f16";
                        const std::string name = std::string("attention/") + kvfuse::isa_name(isa) + "/" + type +
                                                 (paged ? "/paged:16" : "") + "/T:4096/n:614/H:32/Hkv:8/D:" +
                                                 std::to_string(dim) + "/threads:" + std::to_string(threads);
                        auto* b = dtype == kvfuse::Dtype::bf16
                                      ? benchmark::RegisterBenchmark(name.c_str(), attention_bench<kvfuse::bf16>, isa, threads,
                                                                     dim, paged)
                                  : dtype == kvfuse::Dtype::f16
                                      ? benchmark::RegisterBenchmark(name.c_str(), attention_bench<kvfuse::f16>, isa, threads,
                                                                     dim, paged)
                                      : benchmark::RegisterBenchmark(name.c_str(), attention_bench<float>, isa, threads, dim,
                                                                     paged);
                        b->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5);
                    }
    }
    return kvfuse::bench::run_benchmarks(argc, argv);
}
