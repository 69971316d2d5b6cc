// The fixed cost of a tiny call: 1-row x 16-key attention, a 4-row x 60-candidate relevance,
// top-k of 64 of 1024 scores and a 1-token RoPE, each through a one-thread execution context
// (kvfuse_ctx_*) and through the plain call (the calling thread's default context, OpenMP's
// default thread count) side by side. Issue 14's target: <= 5 us per tiny call.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kvfuse/kvfuse.h"

namespace {

struct Tiny {
    std::vector<float> q, k, v, out, rq, rk, rout, scores, keys;
    std::vector<std::int64_t> positions{15}, picked;
    kvfuse_attention_args attention{};
    kvfuse_relevance_args relevance{};
    kvfuse_rope_config rope{};
    Tiny() {
        kvfuse_attention_args_init(&attention);
        kvfuse_relevance_args_init(&relevance);
        std::mt19937 rng(1);
        std::normal_distribution<float> normal;
        const std::size_t H = 4, Hkv = 2, D = 64;
        q.resize(H * D);
        k.resize(16 * Hkv * D);
        v.resize(16 * Hkv * D);
        out.resize(H * D);
        for (auto* x : {&q, &k, &v})
            for (float& f : *x) f = normal(rng);
        attention.queries = q.data();
        attention.rows = 1;
        attention.query_heads = H;
        attention.head_dim = D;
        attention.query_row_stride = H * D;
        attention.positions = positions.data();
        attention.keys = k.data();
        attention.values = v.data();
        attention.kv_dtype = KVFUSE_DTYPE_F32;
        attention.kv_tokens = 16;
        attention.kv_heads = Hkv;
        attention.kv_token_stride = Hkv * D;
        attention.scale = 0.125f;
        attention.out = out.data();
        attention.out_row_stride = H * D;
        const std::size_t M = 4, C = 60, RD = 32;
        rq.resize(M * H * RD);
        rk.resize(C * Hkv * RD);
        rout.resize(C - M);
        for (float& f : rq) f = normal(rng);
        for (float& f : rk) f = normal(rng);
        relevance.question_rows = M;
        relevance.candidates = C;
        relevance.query_heads = H;
        relevance.kv_heads = Hkv;
        relevance.head_dim = RD;
        relevance.queries_f32 = rq.data();
        relevance.keys_f32 = rk.data();
        relevance.smoothing = 1;
        relevance.out = rout.data();
        scores.resize(1024);
        for (float& f : scores) f = normal(rng);
        picked.resize(64);
        keys.resize(8 * 128, 0.5f);
        kvfuse_rope_config_init(&rope, 128);
    }
};

kvfuse_context* one_thread_context() {
    kvfuse_context_options options;
    kvfuse_context_options_init(&options);  // threads 1
    kvfuse_context* context = nullptr;
    kvfuse_context_create(&options, &context);
    return context;
}

// with_context: the one-thread context; otherwise the plain call.
template <class Call>
void run(benchmark::State& state, Call call) {
    kvfuse_context* context = state.range(0) ? one_thread_context() : nullptr;
    Tiny tiny;
    if (call(context, tiny) != KVFUSE_OK) state.SkipWithError(kvfuse_last_error());
    for (auto _ : state) benchmark::DoNotOptimize(call(context, tiny));
    state.SetLabel(state.range(0) ? "context, threads 1" : "plain call (default context)");
    kvfuse_context_destroy(context);
}

void BM_TinyAttention(benchmark::State& state) {
    run(state, [](kvfuse_context* c, Tiny& t) { return kvfuse_ctx_sparse_attention(c, &t.attention); });
}
void BM_TinyRelevance(benchmark::State& state) {
    run(state, [](kvfuse_context* c, Tiny& t) { return kvfuse_ctx_a3_relevance(c, &t.relevance); });
}
void BM_TinyTopk(benchmark::State& state) {
    run(state, [](kvfuse_context* c, Tiny& t) {
        std::size_t count = 0;
        return kvfuse_ctx_topk(c, t.scores.data(), t.scores.size(), 64, KVFUSE_TOPK_BY_POSITION, t.picked.data(), &count);
    });
}
void BM_TinyRope(benchmark::State& state) {
    run(state, [](kvfuse_context* c, Tiny& t) {
        return kvfuse_ctx_rope_rotate_span(c, &t.rope, KVFUSE_DTYPE_F32, t.keys.data(), 1, 8, 8 * 128, 17);
    });
}

BENCHMARK(BM_TinyAttention)->Arg(1)->Arg(0)->ArgName("context");
BENCHMARK(BM_TinyRelevance)->Arg(1)->Arg(0)->ArgName("context");
BENCHMARK(BM_TinyTopk)->Arg(1)->Arg(0)->ArgName("context");
BENCHMARK(BM_TinyRope)->Arg(1)->Arg(0)->ArgName("context");

}  // namespace

BENCHMARK_MAIN();
