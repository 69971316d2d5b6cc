// The model's own kernel calls (its dense layers' GEMM and RoPE) run on the kvfuse::Context the
// caller passes (FusionModel's project_qkv / finish_layer / logits): a context with the caller's
// parallel-for sees every one of them and gives the default context's logits bit for bit;
// after warm-up a prefill through the model on a context allocates nothing; two requests on
// one model at once, each on its own contexts, give what they give one after another.
//
// This binary replaces malloc (malloc_counter.h) to count allocations.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "fusion/loaded_model.h"
#include "fusion/pipeline.h"
#include "isa_test_support.h"
#include "malloc_counter.h"
#include "model/llama_model.h"

namespace {

using namespace kvfuse::fusion;
using kvfuse::Isa;

const LoadedModel& bundled() {
    static const LoadedModel loaded = load_model(bundled_model_path());
    return loaded;
}

// The engine's parallel-for: runs the tasks one after another on the calling thread, counting
// the calls.
struct CountingPool {
    std::size_t calls = 0, tasks = 0;
};
void counting_parallel_for(void* user, std::size_t n_tasks, kvfuse_task_fn task, void* arg) {
    auto* pool = static_cast<CountingPool*>(user);
    ++pool->calls;
    pool->tasks += n_tasks;
    for (std::size_t i = 0; i < n_tasks; ++i) task(arg, i);
}

kvfuse::Context make_context(int threads, CountingPool* pool = nullptr, std::uint64_t rope_parallel_work = 0) {
    kvfuse_tuning tuning;
    kvfuse_tuning_init(&tuning);
    EXPECT_EQ(kvfuse_default_tuning(&tuning), KVFUSE_OK);
    if (rope_parallel_work != 0) tuning.rope_parallel_work = rope_parallel_work;
    kvfuse_context_options options;
    kvfuse_context_options_init(&options);
    options.threads = threads;
    options.parallel_for = pool != nullptr ? &counting_parallel_for : nullptr;
    options.parallel_for_user = pool;
    options.tuning = &tuning;
    kvfuse::Context context;
    const kvfuse::Status status = kvfuse::Context::create(context, &options);
    EXPECT_TRUE(status.ok()) << status.message();
    return context;
}

std::vector<std::int32_t> prompt(const FusionModel& model, std::size_t tokens, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<std::int32_t> id(3, model.shape().vocab - 1);
    std::vector<std::int32_t> out(tokens);
    out[0] = model.bos();
    for (std::size_t t = 1; t < tokens; ++t) out[t] = id(rng);
    return out;
}

// Full prefill of `tokens` written out: the model's calls on `layers`, attention on
// `attention`. Returns every row's logits. `model_calls`, when given, gets the pool calls made
// inside project_qkv, finish_layer and logits (summed over the layers).
struct ModelCalls {
    std::size_t project_qkv = 0, finish_layer = 0, logits = 0;
};
struct Prefill {
    const FusionModel& model;
    std::size_t T;
    std::vector<float> hidden, q, k, v, attention, logits;
    std::vector<std::int64_t> rows;
    explicit Prefill(const FusionModel& m, std::size_t tokens) : model(m), T(tokens) {
        const ModelShape& s = model.shape();
        hidden.resize(T * static_cast<std::size_t>(s.dim));
        q.resize(T * s.q_row());
        k.resize(T * s.kv_row());
        v.resize(T * s.kv_row());
        attention.resize(T * s.q_row());
        logits.resize(T * static_cast<std::size_t>(s.vocab));
        rows.resize(T);
        for (std::size_t t = 0; t < T; ++t) rows[t] = static_cast<std::int64_t>(t);
    }
    void run(std::span<const std::int32_t> tokens, kvfuse::Context& layers, kvfuse::Context& attend,
             const CountingPool* pool = nullptr, ModelCalls* calls = nullptr) {
        const ModelShape& s = model.shape();
        auto counted = [&](std::size_t& into, auto&& call) {
            const std::size_t before = pool != nullptr ? pool->calls : 0;
            call();
            if (calls != nullptr) into += pool->calls - before;
        };
        ModelCalls ignored;
        ModelCalls& c = calls != nullptr ? *calls : ignored;
        model.embed(tokens, hidden.data());
        for (int l = 0; l < s.layers; ++l) {
            counted(c.project_qkv, [&] { model.project_qkv(layers, l, hidden.data(), T, rows.data(), q.data(), k.data(), v.data()); });
            attend_rows(attend, s, q.data(), rows, k.data(), v.data(), T, s.kv_row(), attention.data());
            counted(c.finish_layer, [&] { model.finish_layer(layers, l, attention.data(), T, hidden.data()); });
        }
        counted(c.logits, [&] { model.logits(layers, hidden.data(), T, logits.data()); });
    }
};

class ModelContextTest : public kvfuse::testing::IsaTest {};
KVFUSE_INSTANTIATE_ISA_TESTS(ModelContextTest);

// 512 rows of the bundled model (dim 64, 8 heads, 4 KV heads of 8, ffn 172, vocab 512, 5
// layers): every product of a layer is at least 2^20 multiply-adds, so each runs on the
// context's two workers, and RoPE does too with its threshold at 1 element. The context's
// parallel-for then sees each kernel call once: 3 GEMMs + 2 RoPEs in project_qkv, 4 GEMMs in
// finish_layer, 1 in logits, per layer. A call left on the default context would be missing
// from the count (and would run on OpenMP threads).
TEST_P(ModelContextTest, ModelKernelsRunOnTheGivenContext) {
    const FusionModel& model = *bundled().model;
    const ModelShape& s = model.shape();
    ASSERT_EQ(s.dim, 64);
    ASSERT_EQ(s.kv_heads * s.head_dim, 32);
    const std::size_t T = 512;
    const std::vector<std::int32_t> tokens = prompt(model, T, 3);

    kvfuse::Context none;  // empty: the calling thread's default context, as the calls without _ctx_
    Prefill reference(model, T);
    reference.run(tokens, none, none);

    CountingPool pool;
    kvfuse::Context pooled = make_context(2, &pool, 1);
    kvfuse::Context attention = make_context(1);
    Prefill on_context(model, T);
    ModelCalls calls;
    on_context.run(tokens, pooled, attention, &pool, &calls);
    EXPECT_EQ(on_context.logits, reference.logits) << "the context changed the model's results";

    Isa active = Isa::scalar;
    ASSERT_TRUE(kvfuse::active_isa(active).ok());
    if (active != Isa::scalar) {  // the scalar ISA runs the reference code on the calling thread
        const std::size_t L = static_cast<std::size_t>(s.layers);
        EXPECT_EQ(calls.project_qkv, 5 * L) << "Q, K, V products and the two RoPE calls of every layer";
        EXPECT_EQ(calls.finish_layer, 4 * L) << "O, gate, up and down products of every layer";
        EXPECT_EQ(calls.logits, 1u) << "the output product";
        EXPECT_EQ(pool.tasks, 2 * pool.calls) << "two workers a call";
    }

    // The pipeline's full prefill runs the model on its request context: the same logits.
    Request request;
    request.prefix = {tokens[0]};
    request.question.assign(tokens.begin() + 1, tokens.end());
    FusionOptions full;
    full.method = Method::full;
    const FusionRun run = run_request(model, request, {}, full);
    const std::size_t vocab = static_cast<std::size_t>(s.vocab);
    ASSERT_EQ(run.logits.size(), (T - 1) * vocab);
    EXPECT_TRUE(std::equal(run.logits.begin(), run.logits.end(), reference.logits.begin() + static_cast<std::ptrdiff_t>(vocab)));
}

// Once a prefill has run on a context (warm-up: the model's working buffers, the context's
// scratch and RoPE tables), the next one, of the same rows, allocates nothing: neither the
// model (its buffers are kept), nor the kernels (the context's scratch).
TEST_P(ModelContextTest, PrefillOnAContextAllocatesNothingAfterWarmUp) {
    if (!KVFUSE_TEST_OWNS_MALLOC) GTEST_SKIP() << "a sanitizer owns malloc";
    if (GetParam().isa == Isa::scalar) GTEST_SKIP() << "the scalar ISA runs the reference, which allocates";
    const FusionModel& model = *bundled().model;
    const std::size_t T = 300;
    const std::vector<std::int32_t> tokens = prompt(model, T, 4);
    CountingPool pool;
    kvfuse::Context context = make_context(2, &pool);
    Prefill prefill(model, T);
    prefill.run(tokens, context, context);
    const std::vector<float> first = prefill.logits;
    const long before = g_allocations.load();
    g_counting = true;
    prefill.run(tokens, context, context);
    g_counting = false;
    EXPECT_EQ(g_allocations.load() - before, 0) << "allocations in a warm prefill";
    EXPECT_EQ(prefill.logits, first);
    EXPECT_GT(pool.calls, 0u);
}

// Two requests at once on one model, each run_request on its own FusionRun (its own contexts,
// and the model lends each call a working set of its own): the same logits, cache and rows as
// run one after another. (A shared context would refuse the second call; shared working
// buffers would mix the requests' rows.)
TEST(ModelContext, TwoRequestsAtOnceOnTwoContexts) {
    const LoadedModel& m = bundled();
    const FusionModel& model = *m.model;
    std::vector<Request> requests(2);
    std::vector<std::vector<ChunkKv>> stored(2);
    std::vector<std::vector<ChunkKvView>> views(2);
    for (std::size_t i = 0; i < 2; ++i) {
        const std::vector<std::int32_t> tokens = prompt(model, 200, 10 + static_cast<unsigned>(i));
        Request& r = requests[i];
        r.prefix = {model.bos()};
        r.chunks = {TokenIds(tokens.begin() + 1, tokens.begin() + 90), TokenIds(tokens.begin() + 90, tokens.begin() + 170)};
        r.question.assign(tokens.begin() + 170, tokens.end());
        for (const TokenIds& chunk : r.chunks) stored[i].push_back(compute_chunk_kv(model, chunk));
        for (const ChunkKv& chunk : stored[i]) views[i].push_back(chunk.view());
    }
    std::vector<FusionOptions> options(2);
    options[0].method = Method::a3;
    options[0].threads = 2;
    options[1].method = parse_method("cacheblend");
    options[1].threads = 1;
    options[1].pipelined_loading = true;
    std::vector<FusionRun> alone(2);
    for (std::size_t i = 0; i < 2; ++i) run_request(model, requests[i], views[i], options[i], alone[i]);

    std::vector<FusionRun> together(2);
    std::atomic<bool> failed{false};
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < 2; ++i)
        threads.emplace_back([&, i] {
            try {
                for (int repeat = 0; repeat < 3; ++repeat) {
                    run_request(model, requests[i], views[i], options[i], together[i]);
                    if (together[i].logits != alone[i].logits || together[i].selected != alone[i].selected ||
                        together[i].cache.k != alone[i].cache.k || together[i].cache.v != alone[i].cache.v)
                        failed = true;
                }
            } catch (const std::exception& e) {
                ADD_FAILURE() << "request " << i << ": " << e.what();
                failed = true;
            }
        });
    for (std::thread& t : threads) t.join();
    EXPECT_FALSE(failed.load()) << "a request run beside another differs from the same request alone";
}

// A chunk's cache computed on contexts the caller keeps (ChunkSource keeps one set for all its
// chunks, prepared for --threads): the same cache and quantized keys, bit for bit, as on
// contexts of its own; the contexts come back prepared for the thread count asked, and the
// next chunk reuses them instead of making new ones.
TEST(ModelContext, ChunksAreComputedOnTheCallersKeptContexts) {
    const LoadedModel& m = bundled();
    const FusionModel& model = *m.model;
    const std::vector<std::int32_t> tokens = prompt(model, 121, 77);
    const TokenIds chunk(tokens.begin() + 1, tokens.end());
    const ChunkKv own = compute_chunk_kv(model, chunk);

    KernelContexts kept;
    EXPECT_EQ(kept.threads(), -1);
    const ChunkKv first = compute_chunk_kv(model, chunk, kept, 1);
    ASSERT_EQ(kept.threads(), 1) << "the contexts were not handed back prepared for 1 thread";
    const kvfuse_context* made = kept.request().get();
    ASSERT_NE(made, nullptr);
    const ChunkKv second = compute_chunk_kv(model, chunk, kept, 1);
    EXPECT_EQ(kept.request().get(), made) << "the second chunk made new contexts instead of reusing the kept ones";
    const ChunkKv two_threads = compute_chunk_kv(model, chunk, kept, 2);
    EXPECT_EQ(kept.threads(), 2);

    for (const ChunkKv* c : {&first, &second, &two_threads}) {
        EXPECT_EQ(c->start_position, own.start_position);
        EXPECT_EQ(c->cache.k, own.cache.k);
        EXPECT_EQ(c->cache.v, own.cache.v);
        ASSERT_EQ(c->quantized.size(), own.quantized.size());
        for (std::size_t l = 0; l < own.quantized.size(); ++l) {
            EXPECT_EQ(c->quantized[l].i8, own.quantized[l].i8) << "layer " << l;
            EXPECT_EQ(c->quantized[l].i8_scales, own.quantized[l].i8_scales) << "layer " << l;
            EXPECT_EQ(c->quantized[l].i4, own.quantized[l].i4) << "layer " << l;
            EXPECT_EQ(c->quantized[l].i4_means, own.quantized[l].i4_means) << "layer " << l;
        }
    }
    // A failed computation (an empty chunk) leaves the kept contexts as they were.
    EXPECT_THROW(compute_chunk_kv(model, TokenIds{}, kept, 2), std::invalid_argument);
    EXPECT_EQ(kept.threads(), 2);
}

}  // namespace
