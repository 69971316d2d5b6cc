// RoPE re-rotation bandwidth per ISA, f32 and bf16, against a copy of the same bytes timed in
// the same iterations. In place: the kernel reads and writes every key once, like the copy.
//   name: rope/<isa>/<dtype>/<tokens>x<heads>x<dim>/threads:<n>
//   GB/s: bytes read + written per second (median); x_baseline = copy time / rope time.
#include <omp.h>

#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "kvfuse/kvfuse.hpp"

namespace {

struct Shape {
    std::size_t tokens, heads;
    int head_dim;
    const char* where;
};

template <class T>
void rope_in_place(benchmark::State& state, kvfuse::Isa isa, Shape shape, int threads) {
    if (!kvfuse::bench::force_isa_or_skip(state, static_cast<int>(isa))) return;
    omp_set_num_threads(threads);
    kvfuse::RopeConfig config;
    config.head_dim = shape.head_dim;
    const std::size_t stride = shape.heads * static_cast<std::size_t>(shape.head_dim);
    const std::size_t count = shape.tokens * stride;
    std::vector<T> keys(count), copy_src(count), copy_dst(count);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    for (std::size_t i = 0; i < count; ++i) {
        const float v = normal(rng);
        if constexpr (std::is_same_v<T, float>)
            keys[i] = v;
        else
            (void)kvfuse::to_bf16(&v, &keys[i], 1);
    }
    copy_src = keys;
    std::int64_t delta = 4097;
    const double bytes = 2.0 * count * sizeof(T);
    kvfuse::bench::run_side_by_side(
        state,
        [&] {
            // Alternate the sign so the keys stay bounded over many iterations.
            delta = -delta;
            if (!kvfuse::rope_rotate_span(config, keys.data(), shape.tokens, shape.heads, stride, delta).ok())
                state.SkipWithError("rope_rotate_span failed");
            benchmark::ClobberMemory();
        },
        [&] {
            kvfuse::bench::parallel_copy(copy_dst.data(), copy_src.data(), count * sizeof(T));
            benchmark::ClobberMemory();
        },
        bytes, "GB/s", 1e9);
    kvfuse::reset_isa();
}

void register_all() {
    const Shape shapes[] = {
        {32768, 8, 128, "dram"},  // 128 MiB f32: out of every cache
        {128, 8, 128, "l2"},      // 512 KiB f32: fits one core's 1 MiB L2
        // Other head dimensions, the same 512 KiB (f32 only): 8 and 80 are not a whole number
        // of AVX-512 vectors.
        {2048, 8, 8, "l2"},
        {256, 8, 64, "l2"},
        {205, 8, 80, "l2"},
    };
    for (kvfuse::Isa isa : kvfuse::supported_isas())
        for (const Shape& s : shapes)
            for (int threads : {1, 2})
                for (const char* dtype : {"f32", "bf16"}) {
                    if (s.head_dim != 128 && std::string(dtype) != "f32") continue;
                    const std::string name = std::string("rope/") + kvfuse::isa_name(isa) + "/" + dtype + "/" +
                                             std::to_string(s.tokens) + "x" + std::to_string(s.heads) + "x" +
                                             std::to_string(s.head_dim) + "/" + s.where +
                                             "/threads:" + std::to_string(threads);
                    auto* b = std::string(dtype) == "f32"
                                  ? benchmark::RegisterBenchmark(name.c_str(), rope_in_place<float>, isa, s, threads)
                                  : benchmark::RegisterBenchmark(name.c_str(), rope_in_place<kvfuse::bf16>, isa, s, threads);
                    b->UseManualTime()->Unit(benchmark::kMicrosecond);
                    if (std::string(s.where) == "dram") b->Iterations(isa == kvfuse::Isa::scalar ? 3 : 30);
                }
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
