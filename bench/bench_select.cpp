// Per-request row selection through the one call an engine makes (kvfuse_select_rows, A3):
// 4 stored chunks x 512 tokens in their own frame + a 32-token question, 32 query heads over 8
// KV heads of 128 dims, r = 0.15. The int8 (and int4) rows quantize the chunks' f32 keys inside
// the call (an engine without a stored quantized form), then score and pick; the baseline is the
// f32 call on the same keys, timed in the same iterations. Issue 14's target: per-request int8
// selection (quantize + score + top-k) faster than f32 selection, i.e. x_baseline > 1.
//   name: select/<isa>/<int8|int4>_vs_f32/T:<documents + M>/H:32/Hkv:8/D:<d>/threads:<n>
//   (D = 128 at 1 and 2 threads; int8 also at D = 8, 64, 80 at 2 threads: issue 16's head dims)
//   Mrows/s: candidate rows scored per second; x_baseline = f32 time / quantized time.
#include <omp.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "select_args.h"
#include "kvfuse/kvfuse.hpp"

namespace {

constexpr std::size_t kChunks = 4, kChunkTokens = 512, M = 32, H = 32, Hkv = 8, P = 1;

struct Request {
    std::size_t D, kv_row;
    kvfuse_rope_config rope{};
    std::vector<std::vector<float>> chunk_keys;
    std::vector<float> question_keys, queries;
    std::vector<std::int64_t> rows;
    std::size_t row_count = 0;

    explicit Request(std::size_t head_dim) : D(head_dim), kv_row(Hkv * head_dim) {
        kvfuse_rope_config_init(&rope, static_cast<std::int32_t>(D));
        std::mt19937 rng(3);
        std::normal_distribution<float> normal;
        auto fill = [&](std::vector<float>& v, std::size_t n) {
            v.resize(n);
            for (float& x : v) x = normal(rng);
        };
        chunk_keys.resize(kChunks);
        for (auto& keys : chunk_keys) fill(keys, kChunkTokens * kv_row);
        fill(question_keys, M * kv_row);
        fill(queries, M * H * D);
        rows.resize(kChunks * kChunkTokens);
    }

    // Chunk c stored at positions 0..511 and fused after the prefix and the chunks before it.
    std::vector<kvfuse_select_segment> segments() const {
        std::vector<kvfuse_select_segment> out(kChunks + 1);
        for (kvfuse_select_segment& s : out) kvfuse_select_segment_init(&s);
        for (std::size_t c = 0; c < kChunks; ++c) {
            out[c].tokens = kChunkTokens;
            out[c].position_shift = static_cast<std::int64_t>(P + c * kChunkTokens);
            out[c].keys_f32 = chunk_keys[c].data();
        }
        out[kChunks].tokens = M;
        out[kChunks].keys_f32 = question_keys.data();
        return out;
    }

    kvfuse_select_args args(kvfuse_key_precision precision, const std::vector<kvfuse_select_segment>& segs) {
        kvfuse_select_args a = kvfuse::testing::a3_select_args({P, kChunks * kChunkTokens, M, H, Hkv, D, 0.15},
                                                               queries.data(), precision, &rope, segs);
        a.rows = rows.data();
        a.rows_capacity = rows.size();
        a.row_count = &row_count;
        return a;
    }
};

void select_bench(benchmark::State& state, kvfuse::Isa isa, kvfuse_key_precision precision, int threads,
                  std::size_t head_dim) {
    if (!kvfuse::bench::force_isa_or_skip(state, static_cast<int>(isa))) return;
    omp_set_num_threads(threads);
    Request request(head_dim);
    const auto segs = request.segments();
    const kvfuse_select_args quantized = request.args(precision, segs), f32 = request.args(KVFUSE_KEYS_F32, segs);
    kvfuse::bench::run_side_by_side(
        state,
        [&] {
            if (kvfuse_select_rows(&quantized) != KVFUSE_OK) state.SkipWithError(kvfuse_last_error());
            benchmark::DoNotOptimize(request.rows.data());
        },
        [&] {
            if (kvfuse_select_rows(&f32) != KVFUSE_OK) state.SkipWithError(kvfuse_last_error());
            benchmark::DoNotOptimize(request.rows.data());
        },
        static_cast<double>(kChunks * kChunkTokens + M), "Mrows/s", 1e6);
    kvfuse::reset_isa();
}

void register_one(kvfuse::Isa isa, kvfuse_key_precision precision, int threads, std::size_t head_dim) {
    const std::string name = std::string("select/") + kvfuse::isa_name(isa) + "/" +
                             (precision == KVFUSE_KEYS_INT8 ? "int8" : "int4") + "_vs_f32/T:" +
                             std::to_string(kChunks * kChunkTokens + M) + "/H:" + std::to_string(H) +
                             "/Hkv:" + std::to_string(Hkv) + "/D:" + std::to_string(head_dim) +
                             "/threads:" + std::to_string(threads);
    benchmark::RegisterBenchmark(name.c_str(), select_bench, isa, precision, threads, head_dim)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
}

void register_all() {
    for (kvfuse::Isa isa : kvfuse::supported_isas()) {
        for (kvfuse_key_precision precision : {KVFUSE_KEYS_INT8, KVFUSE_KEYS_INT4})
            for (int threads : {1, 2}) register_one(isa, precision, threads, 128);
        for (std::size_t head_dim : {8, 64, 80}) register_one(isa, KVFUSE_KEYS_INT8, 2, head_dim);
    }
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    return kvfuse::bench::run_benchmarks(argc, argv);
}
