// Dense-layer products C[n x out] = A[n x in] W^T, the shapes of bench_ttft's generated model
// (dim 1024, 4 KV heads of 64, ffn 2816): Q/O (1024 -> 1024), K/V (1024 -> 256), gate/up
// (1024 -> 2816) and down (2816 -> 1024), for n = 512 and 4096 tokens, per ISA, f32 and bf16
// weights, 1 and 2 threads.
//   GFLOP/s: 2 n out in per call, from the median time;
//   baseline_GFLOP/s, x_baseline: OpenBLAS cblas_sgemm(RowMajor, NoTrans, Trans) on the same
//   f32 operands (what the driver called before), timed alternately with kvfuse in every
//   iteration; the label names the kernel OpenBLAS chose (openblas_get_corename: it follows
//   OPENBLAS_CORETYPE when set);
//   pct_peak: against the f32 FMA peak of that ISA and thread count (bench/roofline.cpp),
//   measured after every iteration (median of the per-iteration ratios);
//   bf16 rows: packed bf16 weights (activations rounded to bf16 by the kernel), against the same
//   f32 peak and the same f32 OpenBLAS baseline.
//   q4 / q8 / q4k / q6k rows: block-quantized weights (kvfuse_pack_quantized_weights, random
//   codes in the forms Q4_0, Q8_0, Q4_K (two-level) and Q6_K GGUF tensors are packed in), activations quantized to int8 by
//   the kernel: GOP/s (2 per multiply-add, as GFLOP/s), pct_peak against the f32 FMA peak like
//   the other rows, pct_int8_peak against the int8 dot peak of the ISA (bench/roofline.cpp:
//   vpdpbusd where the CPU has VNNI, else pmaddubsw + pmaddwd), measured after every iteration.
#include <cblas.h>
#include <omp.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "kvfuse/kvfuse.hpp"
#include "roofline.h"

namespace {

struct Shape {
    const char* layer;
    std::size_t out, in;
};

std::vector<float> random_values(std::size_t count, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> out(count);
    for (float& v : out) v = dist(rng);
    return out;
}

constexpr Shape kShapes[] = {{"qo", 1024, 1024}, {"kv", 256, 1024}, {"gate_up", 2816, 1024}, {"down", 1024, 2816}};

void gemm_bench(benchmark::State& state, kvfuse::Isa isa, kvfuse::Dtype dtype, Shape shape, std::size_t n, int threads) {
    if (!kvfuse::bench::force_isa_or_skip(state, static_cast<int>(isa))) return;
    omp_set_num_threads(threads);  // OpenBLAS's OpenMP build follows it
    const std::vector<float> a = random_values(n * shape.in, 1);
    const std::vector<float> w = random_values(shape.out * shape.in, 2);
    std::vector<float> c(n * shape.out), c_blas(c.size());
    kvfuse::PackedWeights packed;
    const bool two_level = dtype == kvfuse::Dtype::q4_super256, six_bit = dtype == kvfuse::Dtype::q6_super256;
    const bool quantized = two_level || six_bit || dtype == kvfuse::Dtype::q4_block32 || dtype == kvfuse::Dtype::q8_block32;
    kvfuse::Status packing;
    if (quantized) {
        const int bits = dtype == kvfuse::Dtype::q8_block32 ? 8 : six_bit ? 6 : 4;
        std::vector<std::uint8_t> codes(shape.out * shape.in);
        std::mt19937 rng(3);
        for (auto& u : codes) u = static_cast<std::uint8_t>(rng() & ((1u << bits) - 1));
        const std::vector<float> scales = random_values(shape.out * shape.in / 32, 4), offsets = random_values(scales.size(), 5);
        kvfuse_quantized_weights q;
        kvfuse_quantized_weights_init(&q);
        q.out = shape.out;
        q.in = shape.in;
        q.code_bits = bits;
        q.codes = codes.data();
        q.codes_stride = shape.in;
        q.scales = scales.data();
        q.offsets = offsets.data();
        q.block_stride = shape.in / 32;
        // Two-level (Q4_K's form): 6-bit sub-values, super values per 256 (a partial last one
        // when `in` is not a multiple of 256).
        const std::size_t supers = (shape.in / 32 + 7) / 8;
        std::vector<std::uint8_t> subs(2 * shape.out * shape.in / 32);
        for (auto& u : subs) u = static_cast<std::uint8_t>(rng() & 63u);
        const std::vector<float> supers_scale = random_values(shape.out * supers, 6), supers_offset = random_values(shape.out * supers, 7);
        if (two_level) {
            q.scales = q.offsets = nullptr;
            q.sub_scales = subs.data();
            q.sub_offsets = subs.data() + shape.out * shape.in / 32;
            q.super_scales = supers_scale.data();
            q.super_offsets = supers_offset.data();
            q.super_stride = supers;
        }
        // Q6_K's form: 6-bit codes, signed sub-scales per 16, super-scales per 256.
        std::vector<std::int8_t> signed_subs(shape.out * shape.in / 16);
        for (auto& x : signed_subs) x = static_cast<std::int8_t>(rng() & 0xFFu);
        if (six_bit) {
            q.scales = q.offsets = nullptr;
            q.block_stride = 0;
            q.signed_sub_scales = signed_subs.data();
            q.signed_sub_stride = shape.in / 16;
            q.super_scales = supers_scale.data();
            q.super_stride = supers;
        }
        packing = kvfuse::PackedWeights::pack_quantized(q, packed);
    } else {
        packing = kvfuse::PackedWeights::pack(w.data(), shape.out, shape.in, 0, dtype, packed);
    }
    if (!packing.ok()) {
        state.SkipWithError(packing.message().c_str());
        return;
    }
    const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(shape.out) * static_cast<double>(shape.in);
    auto kernel = [&] {
        if (!kvfuse::gemm(packed, a.data(), n, c.data(), 0.0f, threads).ok()) state.SkipWithError("kvfuse_gemm failed");
    };
    auto baseline = [&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(shape.out),
                    static_cast<int>(shape.in), 1.0f, a.data(), static_cast<int>(shape.in), w.data(),
                    static_cast<int>(shape.in), 0.0f, c_blas.data(), static_cast<int>(shape.out));
    };
    kernel();  // warm: thread pool, packed-activation buffers, pages of C
    baseline();
    std::vector<double> kernel_seconds, baseline_seconds, fractions, int8_fractions;
    const char* int8_peak_name = "";
    for (auto _ : state) {
        auto start = std::chrono::steady_clock::now();
        kernel();
        kernel_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        state.SetIterationTime(kernel_seconds.back());
        start = std::chrono::steady_clock::now();
        baseline();
        baseline_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        const double peak = kvfuse::bench::measure_f32_fma_peak_gflops(static_cast<int>(isa), threads);
        if (peak > 0) fractions.push_back(flops / kernel_seconds.back() / 1e9 / peak);
        if (quantized) {
            const double int8_peak = kvfuse::bench::measure_int8_peak_gops(static_cast<int>(isa), threads, &int8_peak_name);
            if (int8_peak > 0) int8_fractions.push_back(flops / kernel_seconds.back() / 1e9 / int8_peak);
        }
    }
    const double kernel_median = kvfuse::bench::median(kernel_seconds);
    const double baseline_median = kvfuse::bench::median(baseline_seconds);
    state.counters["GFLOP/s"] = flops / kernel_median / 1e9;
    state.counters["baseline_GFLOP/s"] = flops / baseline_median / 1e9;
    state.counters["x_baseline"] = baseline_median / kernel_median;
    if (!fractions.empty()) state.counters["pct_peak"] = 100.0 * kvfuse::bench::median(fractions);
    if (!int8_fractions.empty()) state.counters["pct_int8_peak"] = 100.0 * kvfuse::bench::median(int8_fractions);
    state.SetLabel(std::string("openblas:") + openblas_get_corename() +
                   (quantized ? std::string(" int8:") + kvfuse::gemm_int8_scheme() + " int8_peak:" + int8_peak_name
                              : std::string(" bf16:") + kvfuse::gemm_bf16_scheme()));
    kvfuse::reset_isa();
}

}  // namespace

int main(int argc, char** argv) {
    for (kvfuse::Isa isa : kvfuse::supported_isas()) {
        if (isa == kvfuse::Isa::scalar) continue;  // OpenBLAS is the baseline of every row
        for (std::size_t n : {512, 4096})
            for (const Shape& shape : kShapes)
                for (kvfuse::Dtype dtype : {kvfuse::Dtype::f32, kvfuse::Dtype::bf16, kvfuse::Dtype::q8_block32,
                                            kvfuse::Dtype::q4_block32, kvfuse::Dtype::q4_super256,
                                            kvfuse::Dtype::q6_super256})
                    for (int threads : {1, 2}) {
                        const char* type = dtype == kvfuse::Dtype::f32    ? "f32"
                                           : dtype == kvfuse::Dtype::bf16 ? "bf16"
                                           : dtype == kvfuse::Dtype::q8_block32 ? "q8"
                                           : dtype == kvfuse::Dtype::q4_block32 ? "q4"
                                           : dtype == kvfuse::Dtype::q4_super256 ? "q4k"
                                                                                 : "q6k";
                        const std::string name = std::string("gemm/") + kvfuse::isa_name(isa) + "/" + type + "/" + shape.layer +
                                                 "/n:" + std::to_string(n) + "/out:" + std::to_string(shape.out) +
                                                 "/in:" + std::to_string(shape.in) + "/threads:" + std::to_string(threads);
                        benchmark::RegisterBenchmark(name.c_str(), gemm_bench, isa, dtype, shape, n, threads)
                            ->UseManualTime()
                            ->Unit(benchmark::kMillisecond)
                            ->Iterations(n >= 4096 ? 3 : 7);
                    }
    }
    return kvfuse::bench::run_benchmarks(argc, argv);
}
