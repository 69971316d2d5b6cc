// The key and query quantizers per ISA against a copy of the same f32 bytes timed in the same
// iterations (the roofline of a streaming kernel). The scalar ISA is reference/, which is what
// every ISA ran before kernels/quantize/ existed: its row is the "before" of the same run.
//   name: quantize/<kind>/<isa>/<tokens>x<heads>x<dim>/<where>/threads:<n>
//     kind: keys_i8, keys_i4 (mean removal + int8 / packed int4), rows_i8 (no mean)
//     where: l2 (fits one core's L2: what the arithmetic alone allows), l3, dram
//   GB/s: f32 input bytes per second (median); baseline_GB/s: memcpy of those bytes (the
//   threads of the run); x_baseline = copy time / quantizer time (1.0: at copy bandwidth).
//   Every buffer on both sides is 64-byte aligned; the copy's source is the quantizer's input.
#include <omp.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "kvfuse/kvfuse.hpp"

namespace {

enum class Kind { keys_i8, keys_i4, rows_i8 };

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::keys_i8: return "keys_i8";
        case Kind::keys_i4: return "keys_i4";
        default: return "rows_i8";
    }
}

struct Shape {
    std::size_t tokens, heads, head_dim;
    const char* where;
};

void quantize(benchmark::State& state, kvfuse::Isa isa, Kind kind, Shape shape, int threads) {
    if (!kvfuse::bench::force_isa_or_skip(state, static_cast<int>(isa))) return;
    omp_set_num_threads(threads);
    const std::size_t row = shape.heads * shape.head_dim, count = shape.tokens * row;
    // 64-byte aligned on both sides, as an engine's KV cache is: a 16-byte-aligned buffer splits
    // every AVX-512 load across two cache lines (up to 1.7x the time on the Zen 5 VM), and the
    // copy (memcpy aligns its own stores) would not pay the same.
    kvfuse::bench::AlignedVector<float> keys(count), copy_dst(count);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    for (std::size_t i = 0; i < count; ++i) keys[i] = normal(rng) + 0.1f * static_cast<float>(i % 7);
    kvfuse::bench::AlignedVector<std::int8_t> out8(count);
    kvfuse::bench::AlignedVector<std::uint8_t> out4(shape.tokens * shape.heads * ((shape.head_dim + 1) / 2));
    kvfuse::bench::AlignedVector<float> scales(shape.tokens * shape.heads), means(row);
    kvfuse::bench::run_side_by_side(
        state,
        [&] {
            kvfuse::Status s;
            if (kind == Kind::keys_i8)
                s = kvfuse::quantize_keys_i8(keys.data(), shape.tokens, shape.heads, shape.head_dim, row, out8.data(),
                                             scales.data(), means.data());
            else if (kind == Kind::keys_i4)
                s = kvfuse::quantize_keys_i4(keys.data(), shape.tokens, shape.heads, shape.head_dim, row, out4.data(),
                                             scales.data(), means.data());
            else
                s = kvfuse::quantize_rows_i8(keys.data(), shape.tokens, shape.heads, shape.head_dim, row, out8.data(),
                                             scales.data());
            if (!s.ok()) state.SkipWithError(s.message().c_str());
            benchmark::ClobberMemory();
        },
        [&] {
            kvfuse::bench::parallel_copy(copy_dst.data(), keys.data(), count * sizeof(float));
            benchmark::ClobberMemory();
        },
        static_cast<double>(count * sizeof(float)), "GB/s", 1e9);
    kvfuse::reset_isa();
}

void register_all() {
    const Shape shapes[] = {
        {128, 8, 128, "l2"},      // 512 KiB f32: in L2 on both sides, the kernel's compute ceiling
        {2048, 8, 8, "l2"},       // the same bytes at head dims below or not a multiple of the
        {256, 8, 64, "l2"},       // vector width and of the 16-value chunk (issue 16: head_dim
        {205, 8, 80, "l2"},       // 8, 64, 80 beside 128 for every kernel)
        {2080, 8, 128, "l3"},     // 8.1 MiB f32: a request's keys (issue 14's 2080 keys)
        {32768, 8, 128, "dram"},  // 128 MiB f32: out of every cache
    };
    for (kvfuse::Isa isa : kvfuse::supported_isas())
        for (const Shape& s : shapes)
            for (Kind kind : {Kind::keys_i8, Kind::keys_i4, Kind::rows_i8})
                for (int threads : {1, 2}) {
                    // The reference is single-threaded and takes seconds on the DRAM shape.
                    if (isa == kvfuse::Isa::scalar && (threads > 1 || std::string(s.where) == "dram")) continue;
                    const std::string name = std::string("quantize/") + kind_name(kind) + "/" + kvfuse::isa_name(isa) +
                                             "/" + std::to_string(s.tokens) + "x" + std::to_string(s.heads) + "x" +
                                             std::to_string(s.head_dim) + "/" + s.where +
                                             "/threads:" + std::to_string(threads);
                    auto* b = benchmark::RegisterBenchmark(name.c_str(), quantize, isa, kind, s, threads);
                    b->UseManualTime()->Unit(benchmark::kMillisecond);
                    if (std::string(s.where) == "dram") b->Iterations(20);
                }
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    return kvfuse::bench::run_benchmarks(argc, argv);
}
