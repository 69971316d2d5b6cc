// RoPE re-rotation bandwidth per ISA, f32 and bf16, against a copy of the same bytes timed in
// the same iterations. In place: the kernel reads and writes every key once, like the copy.
//   name: rope/<isa>/<dtype>/<tokens>x<heads>x<dim>/threads:<n>
//   GB/s: bytes read + written per second (median); x_baseline = copy time / rope time.
// Buffers are 64-byte aligned, as engines allocate caches; `/offset16` rows start the same keys
// 16 bytes past a cache line (a plain std::vector's alignment), where every AVX-512 access splits.
// The fused load (a stored chunk, packed, copied rotated into the request's cache), into a
// packed cache and into a paged one (16-token blocks in shuffled order, kvfuse_rope_rotate_layout):
//   name: rope_copy/<isa>/f32/<tokens>x<heads>x<dim>/<where>/<contiguous|paged16>/threads:<n>
#include <omp.h>

#include <algorithm>
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
void rope_in_place(benchmark::State& state, kvfuse::Isa isa, Shape shape, int threads, std::size_t offset_bytes) {
    if (!kvfuse::bench::force_isa_or_skip(state, static_cast<int>(isa))) return;
    omp_set_num_threads(threads);
    kvfuse::RopeConfig config;
    config.head_dim = shape.head_dim;
    const std::size_t stride = shape.heads * static_cast<std::size_t>(shape.head_dim);
    const std::size_t count = shape.tokens * stride;
    const std::size_t offset = offset_bytes / sizeof(T);
    kvfuse::bench::AlignedVector<T> storage(count + offset), copy_src(count + offset), copy_dst(count + offset);
    T* keys = storage.data() + offset;
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    for (std::size_t i = 0; i < count; ++i) {
        const float v = normal(rng);
        if constexpr (std::is_same_v<T, float>)
            keys[i] = v;
        else
            (void)kvfuse::to_bf16(&v, &keys[i], 1);
    }
    copy_src = storage;
    std::int64_t delta = 4097;
    const double bytes = 2.0 * count * sizeof(T);
    kvfuse::bench::run_side_by_side(
        state,
        [&] {
            // Alternate the sign so the keys stay bounded over many iterations.
            delta = -delta;
            if (!kvfuse::rope_rotate_span(config, keys, shape.tokens, shape.heads, stride, delta).ok())
                state.SkipWithError("rope_rotate_span failed");
            benchmark::ClobberMemory();
        },
        [&] {
            kvfuse::bench::parallel_copy(copy_dst.data() + offset, copy_src.data() + offset, count * sizeof(T));
            benchmark::ClobberMemory();
        },
        bytes, "GB/s", 1e9);
    kvfuse::reset_isa();
}

void rope_copy(benchmark::State& state, kvfuse::Isa isa, Shape shape, int threads, bool paged) {
    if (!kvfuse::bench::force_isa_or_skip(state, static_cast<int>(isa))) return;
    omp_set_num_threads(threads);
    kvfuse::RopeConfig config;
    config.head_dim = shape.head_dim;
    const std::size_t row = shape.heads * static_cast<std::size_t>(shape.head_dim), count = shape.tokens * row;
    const std::size_t block = 16, blocks = (shape.tokens + block - 1) / block;
    kvfuse::bench::AlignedVector<float> stored(count), cache(blocks * block * row), copy_dst(count);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    for (float& v : stored) v = normal(rng);
    std::vector<std::int32_t> table(blocks);
    for (std::size_t b = 0; b < blocks; ++b) table[b] = static_cast<std::int32_t>(b);
    std::shuffle(table.begin(), table.end(), rng);
    kvfuse::RopeArgs args;
    args.tokens = shape.tokens;
    args.heads = shape.heads;
    args.delta = 4097;
    kvfuse::set_rope_keys(args, cache.data(), stored.data());
    args.dst_block_table = table.data();
    args.dst_block_size = block;
    args.dst_blocks_total = blocks;
    kvfuse::bench::run_side_by_side(
        state,
        [&] {
            const kvfuse::Status s = paged ? kvfuse::rope_rotate_layout(config, args)
                                           : kvfuse::rope_rotate_span_copy(config, stored.data(), row, cache.data(), row,
                                                                           shape.tokens, shape.heads, 4097);
            if (!s.ok()) state.SkipWithError("rope copy failed");
            benchmark::ClobberMemory();
        },
        [&] {
            kvfuse::bench::parallel_copy(copy_dst.data(), stored.data(), count * sizeof(float));
            benchmark::ClobberMemory();
        },
        2.0 * count * sizeof(float), "GB/s", 1e9);
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
                                  ? benchmark::RegisterBenchmark(name.c_str(), rope_in_place<float>, isa, s, threads, 0)
                                  : benchmark::RegisterBenchmark(name.c_str(), rope_in_place<kvfuse::bf16>, isa, s, threads, 0);
                    b->UseManualTime()->Unit(benchmark::kMicrosecond);
                    if (std::string(s.where) == "dram") b->Iterations(isa == kvfuse::Isa::scalar ? 3 : 30);
                }
    // The L2 shapes again 16 bytes past a cache line (f32; after the aligned rows, which the
    // report's summary reads first).
    for (kvfuse::Isa isa : kvfuse::supported_isas())
        for (const Shape& s : {shapes[1], shapes[2]})
            for (int threads : {1, 2}) {
                const std::string name = std::string("rope/") + kvfuse::isa_name(isa) + "/f32/" + std::to_string(s.tokens) +
                                         "x" + std::to_string(s.heads) + "x" + std::to_string(s.head_dim) + "/" + s.where +
                                         "/offset16/threads:" + std::to_string(threads);
                benchmark::RegisterBenchmark(name.c_str(), rope_in_place<float>, isa, s, threads, 16)
                    ->UseManualTime()
                    ->Unit(benchmark::kMicrosecond);
            }
    // The fused load at the main shapes, packed and paged side by side.
    for (kvfuse::Isa isa : kvfuse::supported_isas())
        for (const Shape& s : {shapes[0], shapes[1]})
            for (int threads : {1, 2})
                for (bool paged : {false, true}) {
                    const std::string name = std::string("rope_copy/") + kvfuse::isa_name(isa) + "/f32/" +
                                             std::to_string(s.tokens) + "x" + std::to_string(s.heads) + "x" +
                                             std::to_string(s.head_dim) + "/" + s.where + (paged ? "/paged16" : "/contiguous") +
                                             "/threads:" + std::to_string(threads);
                    auto* b = benchmark::RegisterBenchmark(name.c_str(), rope_copy, isa, s, threads, paged);
                    b->UseManualTime()->Unit(benchmark::kMicrosecond);
                    if (std::string(s.where) == "dram") b->Iterations(isa == kvfuse::Isa::scalar ? 3 : 30);
                }
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    return kvfuse::bench::run_benchmarks(argc, argv);
}
