// The execution context (kvfuse_context): zero heap allocations after warm-up (row selection and
// the quantizers' context forms included), the caller's parallel-for, per-call thread counts that
// never start threads, out of memory reported as a status, one call per context at a time,
// options checked.
//
// This binary replaces malloc (malloc_counter.h) so that it can count every allocation of the
// process, operator new's included, and make large ones fail.
#include <dirent.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "isa_test_support.h"
#include "select_args.h"
#include "kvfuse/kvfuse.h"
#include "reference/attention_reference.h"
#include "reference/f16_reference.h"
#include "reference/score_reference.h"

#include "malloc_counter.h"

namespace kvfuse::testing {
namespace {

struct ContextHandle {
    kvfuse_context* context = nullptr;
    explicit ContextHandle(int threads, kvfuse_parallel_for_fn parallel_for = nullptr, void* user = nullptr) {
        kvfuse_context_options options;
        kvfuse_context_options_init(&options);
        options.threads = threads;
        options.parallel_for = parallel_for;
        options.parallel_for_user = user;
        EXPECT_EQ(kvfuse_context_create(&options, &context), KVFUSE_OK) << kvfuse_last_error();
    }
    ~ContextHandle() { kvfuse_context_destroy(context); }
};

// Attention of `rows` rows at positions spread over `keys` keys (GQA 4:2, D 64).
struct AttentionCase {
    std::size_t rows, keys, H = 4, Hkv = 2, D = 64;
    std::vector<float> q, k, v, out, expected;
    std::vector<std::int64_t> positions;
    kvfuse_attention_args args{};
    AttentionCase(std::size_t rows_, std::size_t keys_) : rows(rows_), keys(keys_) {
        kvfuse_attention_args_init(&args);
        std::mt19937 rng(7);
        std::normal_distribution<float> normal;
        q.resize(rows * H * D);
        k.resize(keys * Hkv * D);
        v.resize(keys * Hkv * D);
        for (auto* x : {&q, &k, &v})
            for (float& f : *x) f = normal(rng);
        for (std::size_t r = 0; r < rows; ++r) positions.push_back(static_cast<std::int64_t>(keys - 1 - (r * 7) % keys));
        out.assign(rows * H * D, 0.0f);
        expected.assign(rows * H * D, 0.0f);
        args.queries = q.data();
        args.rows = rows;
        args.query_heads = H;
        args.head_dim = D;
        args.query_row_stride = H * D;
        args.positions = positions.data();
        args.keys = k.data();
        args.values = v.data();
        args.kv_dtype = KVFUSE_DTYPE_F32;
        args.kv_tokens = keys;
        args.kv_heads = Hkv;
        args.kv_token_stride = Hkv * D;
        args.scale = 0.125f;
        args.out = out.data();
        args.out_row_stride = H * D;
        kvfuse_attention_args reference_args = args;
        reference_args.out = expected.data();
        reference::sparse_attention(reference_args);
    }
    void expect_matches_reference() const {
        for (std::size_t i = 0; i < out.size(); ++i)
            ASSERT_NEAR(out[i], expected[i], 1e-4f * std::max(1.0f, std::fabs(expected[i]))) << "element " << i;
    }
};

// The same attention through the V2 layouts: keys and values in a pool of 16-token blocks in
// reverse order, read through a block table, as two sequences of the same keys (rows split in
// half), with the log-sum-exp: the answer is the contiguous case's.
struct PagedAttentionCase {
    static constexpr std::size_t kBlock = 16;
    std::vector<float> k, v, out, lse;
    std::vector<std::int32_t> tables;
    std::vector<std::int64_t> cu_rows, cu_kv;
    kvfuse_attention_args args{};
    explicit PagedAttentionCase(const AttentionCase& c) {
        const std::size_t row = c.Hkv * c.D, blocks = (c.keys + kBlock - 1) / kBlock;
        k.assign(blocks * kBlock * row, 0.0f);
        v.assign(k.size(), 0.0f);
        for (std::size_t t = 0; t < c.keys; ++t) {
            const std::size_t at = ((blocks - 1 - t / kBlock) * kBlock + t % kBlock) * row;
            std::copy(c.k.begin() + t * row, c.k.begin() + (t + 1) * row, k.begin() + at);
            std::copy(c.v.begin() + t * row, c.v.begin() + (t + 1) * row, v.begin() + at);
        }
        for (int copy = 0; copy < 2; ++copy)
            for (std::size_t b = 0; b < blocks; ++b) tables.push_back(static_cast<std::int32_t>(blocks - 1 - b));
        cu_rows = {0, static_cast<std::int64_t>(c.rows / 2), static_cast<std::int64_t>(c.rows)};
        cu_kv = {0, static_cast<std::int64_t>(c.keys), static_cast<std::int64_t>(2 * c.keys)};
        out.assign(c.out.size(), 0.0f);
        lse.assign(c.rows * c.H, 0.0f);
        args = c.args;
        args.keys = k.data();
        args.values = v.data();
        args.kv_tokens = 2 * c.keys;
        args.out = out.data();
        args.kv_block_table = tables.data();
        args.kv_block_size = kBlock;
        args.kv_blocks_total = blocks;
        args.kv_block_table_stride = blocks;
        args.sequences = 2;
        args.cu_rows = cu_rows.data();
        args.cu_kv_tokens = cu_kv.data();
        args.lse = lse.data();
    }
    void expect_matches(const AttentionCase& c) const {
        for (std::size_t i = 0; i < out.size(); ++i)
            ASSERT_NEAR(out[i], c.expected[i], 1e-4f * std::max(1.0f, std::fabs(c.expected[i]))) << "element " << i;
    }
};

// Tiny f32 relevance: 4 question rows, 60 candidates.
struct RelevanceCase {
    std::size_t M = 4, C = 60, H = 4, Hkv = 2, D = 32;
    std::vector<float> q, k, out, expected;
    kvfuse_relevance_args args{};
    RelevanceCase() {
        kvfuse_relevance_args_init(&args);
        std::mt19937 rng(11);
        std::normal_distribution<float> normal;
        q.resize(M * H * D);
        k.resize(C * Hkv * D);
        for (float& f : q) f = normal(rng);
        for (float& f : k) f = normal(rng);
        out.assign(C - M, 0.0f);
        expected.assign(C - M, 0.0f);
        args.question_rows = M;
        args.candidates = C;
        args.query_heads = H;
        args.kv_heads = Hkv;
        args.head_dim = D;
        args.queries_f32 = q.data();
        args.keys_f32 = k.data();
        args.smoothing = 1;
        args.out = out.data();
        kvfuse_relevance_args reference_args = args;
        reference_args.out = expected.data();
        reference::a3_relevance(reference_args);
    }
};

// A request for kvfuse_ctx_select_rows: stored chunks of f16 keys in their own frames (shifted;
// chunk 1 read from a paged pool of 16-token blocks in reverse order), then the question's keys
// (M rows, the request's frame); queries 8 heads over 2 KV heads of 64.
struct SelectCase {
    std::size_t M = 8, H = 8, Hkv = 2, D = 64, documents = 0;
    kvfuse_rope_config rope{};
    std::vector<std::vector<std::uint16_t>> keys;
    std::vector<std::int32_t> table;
    std::vector<float> queries, scores, fresh, reused;
    std::vector<kvfuse_select_segment> segments;
    std::vector<std::int64_t> rows, cacheblend_rows;
    std::size_t count = 0, cacheblend_count = 0;
    kvfuse_select_args args{};
    SelectCase(const std::vector<std::size_t>& chunk_tokens, kvfuse_key_precision precision) {
        kvfuse_rope_config_init(&rope, static_cast<std::int32_t>(D));
        std::mt19937 rng(13);
        std::normal_distribution<float> normal;
        const std::size_t kv_row = Hkv * D;
        std::size_t position = 16;
        for (std::size_t c = 0; c <= chunk_tokens.size(); ++c) {
            const bool question = c == chunk_tokens.size();
            const std::size_t n = question ? M : chunk_tokens[c];
            keys.emplace_back(n * kv_row);
            for (std::uint16_t& k : keys.back()) k = reference::f32_to_f16(normal(rng));
            kvfuse_select_segment seg;
            kvfuse_select_segment_init(&seg);
            seg.tokens = n;
            seg.position_shift = question ? 0 : static_cast<std::int64_t>(position);
            seg.keys_dtype = KVFUSE_DTYPE_F16;
            seg.keys = keys.back().data();
            segments.push_back(seg);
            position += n;
            documents += question ? 0 : n;
        }
        if (chunk_tokens.size() > 1) {  // chunk 1 as 16-token pages in reverse order
            const std::size_t n = chunk_tokens[1], blocks = (n + 15) / 16;
            std::vector<std::uint16_t> pages(blocks * 16 * kv_row, 0);
            for (std::size_t b = 0; b < blocks; ++b) {
                table.push_back(static_cast<std::int32_t>(blocks - 1 - b));
                const std::size_t take = std::min<std::size_t>(16, n - b * 16);
                std::memcpy(pages.data() + table.back() * 16 * kv_row, keys[1].data() + b * 16 * kv_row,
                            take * kv_row * sizeof(std::uint16_t));
            }
            keys[1] = std::move(pages);
            segments[1].keys = keys[1].data();
            segments[1].key_block_table = table.data();
            segments[1].key_block_size = 16;
            segments[1].key_blocks_total = blocks;
        }
        queries.resize(M * H * D);
        for (float& q : queries) q = normal(rng);
        scores.assign(documents, 0.0f);
        rows.assign(documents, -1);
        args = kvfuse::testing::a3_select_args({16, documents, M, H, Hkv, D, 0.15}, queries.data(), precision, &rope, segments);
        args.rows = rows.data();
        args.rows_capacity = rows.size();
        args.row_count = &count;
        args.scores = scores.data();
    }
    // The same documents' CacheBlend selection (fresh and reused rows of the check layer).
    kvfuse_select_args cacheblend() {
        fresh.resize(documents * Hkv * D);
        reused.resize(fresh.size());
        std::mt19937 rng(17);
        std::normal_distribution<float> normal;
        for (float& f : fresh) f = normal(rng);
        for (float& f : reused) f = normal(rng);
        kvfuse_select_args c = args;
        c.method = KVFUSE_SELECT_CACHEBLEND;
        c.fresh = fresh.data();
        c.reused = reused.data();
        c.scores = nullptr;  // the context's own
        cacheblend_rows.assign(documents, -1);
        c.rows = cacheblend_rows.data();
        c.row_count = &cacheblend_count;
        return c;
    }
};

long count_allocations(const std::function<void()>& body) {
    g_allocations.store(0);
    g_counting.store(true);
    body();
    g_counting.store(false);
    return g_allocations.load();
}

using ContextIsaTest = IsaTest;

// After one warm-up call at each shape, calls through a context allocate nothing (on the SIMD
// ISAs; the scalar ISA is the reference, which allocates).
TEST_P(ContextIsaTest, CallsAllocateNothingAfterWarmUp) {
    if (!KVFUSE_TEST_OWNS_MALLOC) GTEST_SKIP() << "a sanitizer owns malloc";
    if (GetParam().isa == Isa::scalar) GTEST_SKIP() << "the scalar ISA runs the reference, which allocates";
    ContextHandle ctx(1);
    AttentionCase tiny(1, 16), larger(40, 700);
    PagedAttentionCase paged(larger);
    RelevanceCase relevance;
    std::vector<float> scores(5000);
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> uniform;
    for (float& s : scores) s = uniform(rng);
    std::vector<std::int64_t> picked(3 * 50);
    kvfuse_rope_config rope;
    kvfuse_rope_config_init(&rope, 64);
    std::vector<float> keys(32 * 2 * 64, 0.5f);
    auto calls = [&] {
        std::size_t count = 0;
        ASSERT_EQ(kvfuse_ctx_sparse_attention(ctx.context, &tiny.args), KVFUSE_OK);
        ASSERT_EQ(kvfuse_ctx_sparse_attention(ctx.context, &larger.args), KVFUSE_OK);
        ASSERT_EQ(kvfuse_ctx_sparse_attention(ctx.context, &paged.args), KVFUSE_OK) << kvfuse_last_error();
        ASSERT_EQ(kvfuse_ctx_a3_relevance(ctx.context, &relevance.args), KVFUSE_OK);
        ASSERT_EQ(kvfuse_ctx_topk(ctx.context, scores.data(), scores.size(), 50, KVFUSE_TOPK_BY_SCORE, picked.data(), &count),
                  KVFUSE_OK);
        ASSERT_EQ(kvfuse_ctx_topk_batched(ctx.context, scores.data(), 3, 1600, 1600, 50, KVFUSE_TOPK_BY_POSITION,
                                          picked.data(), 50),
                  KVFUSE_OK);
        for (std::int64_t delta : {3, -5, 1000})
            ASSERT_EQ(kvfuse_ctx_rope_rotate_span(ctx.context, &rope, KVFUSE_DTYPE_F32, keys.data(), 32, 2, 128, delta),
                      KVFUSE_OK);
    };
    calls();  // warm-up
    EXPECT_EQ(count_allocations(calls), 0);
    tiny.expect_matches_reference();
    larger.expect_matches_reference();
    paged.expect_matches(larger);
    for (std::size_t j = 0; j < relevance.out.size(); ++j)
        EXPECT_NEAR(relevance.out[j], relevance.expected[j], 1e-4f * std::max(1.0f, std::fabs(relevance.expected[j])));
    // The counter does see allocations: the same calls on a fresh context allocate.
    ContextHandle fresh(1);
    EXPECT_GT(count_allocations([&] { ASSERT_EQ(kvfuse_ctx_sparse_attention(fresh.context, &larger.args), KVFUSE_OK); }),
              0);
}

// The layout forms too: RoPE from a packed chunk into a paged f16 cache and in place there, and
// relevance over paged keys and over segments of f16 keys, allocate nothing after warm-up.
TEST_P(ContextIsaTest, LayoutCallsAllocateNothingAfterWarmUp) {
    if (!KVFUSE_TEST_OWNS_MALLOC) GTEST_SKIP() << "a sanitizer owns malloc";
    if (GetParam().isa == Isa::scalar) GTEST_SKIP() << "the scalar ISA runs the reference, which allocates";
    ContextHandle ctx(1);
    const std::size_t tokens = 40, heads = 2, D = 64, row = heads * D, block = 16, blocks = 5;
    kvfuse_rope_config rope;
    kvfuse_rope_config_init(&rope, static_cast<std::int32_t>(D));
    std::vector<std::uint16_t> stored(tokens * row, 0x3c00), cache(blocks * block * row, 0);
    const std::int32_t table[] = {3, 0, 4, 1};  // offset 8: tokens 8..47 of the sequence
    kvfuse_rope_args copy;
    kvfuse_rope_args_init(&copy);
    copy.config = &rope;
    copy.dtype = KVFUSE_DTYPE_F16;
    copy.tokens = tokens;
    copy.heads = heads;
    copy.delta = 1000;
    copy.src = stored.data();
    copy.dst = cache.data();
    copy.dst_block_table = table;
    copy.dst_block_size = block;
    copy.dst_blocks_total = blocks;
    copy.dst_token_offset = 8;
    kvfuse_rope_args in_place = copy;
    in_place.src = nullptr;
    in_place.delta = -3;
    RelevanceCase paged_relevance;
    // The case's keys as 4-token pages in reverse order.
    const std::size_t C = paged_relevance.C, kv_row = paged_relevance.Hkv * paged_relevance.D;
    std::vector<float> pages(C * kv_row);
    std::vector<std::int32_t> key_table(C / 4);
    for (std::size_t b = 0; b < C / 4; ++b) {
        key_table[b] = static_cast<std::int32_t>(C / 4 - 1 - b);
        std::memcpy(pages.data() + key_table[b] * 4 * kv_row, paged_relevance.k.data() + b * 4 * kv_row,
                    4 * kv_row * sizeof(float));
    }
    paged_relevance.args.keys_f32 = pages.data();
    paged_relevance.args.key_block_table = key_table.data();
    paged_relevance.args.key_block_size = 4;
    paged_relevance.args.key_blocks_total = C / 4;
    RelevanceCase segmented;
    std::vector<std::uint16_t> halves(segmented.k.size());
    for (std::size_t i = 0; i < halves.size(); ++i) halves[i] = reference::f32_to_f16(segmented.k[i]);
    kvfuse_relevance_segment segments[2];
    for (std::size_t g = 0; g < 2; ++g) {
        kvfuse_relevance_segment_init(&segments[g]);
        segments[g].keys = g == 0 ? 25 : segmented.C - 25;
        segments[g].queries_f32 = segmented.q.data();
        segments[g].keys_dtype = KVFUSE_DTYPE_F16;
        segments[g].typed_keys = halves.data() + (g == 0 ? 0 : 25 * segmented.Hkv * segmented.D);
    }
    segmented.args.keys_f32 = nullptr;
    segmented.args.segment_count = 2;
    segmented.args.segments = segments;
    auto calls = [&] {
        ASSERT_EQ(kvfuse_ctx_rope_rotate_layout(ctx.context, &copy), KVFUSE_OK) << kvfuse_last_error();
        ASSERT_EQ(kvfuse_ctx_rope_rotate_layout(ctx.context, &in_place), KVFUSE_OK) << kvfuse_last_error();
        ASSERT_EQ(kvfuse_ctx_a3_relevance(ctx.context, &paged_relevance.args), KVFUSE_OK) << kvfuse_last_error();
        ASSERT_EQ(kvfuse_ctx_a3_relevance(ctx.context, &segmented.args), KVFUSE_OK) << kvfuse_last_error();
    };
    calls();  // warm-up
    EXPECT_EQ(count_allocations(calls), 0);
    for (std::size_t j = 0; j < paged_relevance.out.size(); ++j)
        EXPECT_NEAR(paged_relevance.out[j], paged_relevance.expected[j],
                    1e-4f * std::max(1.0f, std::fabs(paged_relevance.expected[j])));
}

// The quantizers (no context argument: the thread's default context) allocate nothing after a
// warm-up call, on one worker and on several (a call above the default quantize_parallel_work).
TEST_P(ContextIsaTest, QuantizersAllocateNothingAfterWarmUp) {
    if (!KVFUSE_TEST_OWNS_MALLOC) GTEST_SKIP() << "a sanitizer owns malloc";
    if (GetParam().isa == Isa::scalar) GTEST_SKIP() << "the scalar ISA runs the reference, which allocates";
    const std::size_t heads = 8, dim = 128;
    std::vector<float> keys(300 * heads * dim), scales(300 * heads), means(heads * dim);
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    for (float& k : keys) k = normal(rng);
    std::vector<std::int8_t> out8(keys.size());
    std::vector<std::uint8_t> out4(keys.size() / 2);
    auto calls = [&] {
        for (std::size_t tokens : {3, 300}) {
            ASSERT_EQ(kvfuse_quantize_keys_i8(keys.data(), tokens, heads, dim, heads * dim, out8.data(), scales.data(),
                                              means.data()),
                      KVFUSE_OK);
            ASSERT_EQ(kvfuse_quantize_keys_i4(keys.data(), tokens, heads, dim, heads * dim, out4.data(), scales.data(),
                                              means.data()),
                      KVFUSE_OK);
            ASSERT_EQ(kvfuse_quantize_rows_i8(keys.data(), tokens, heads, dim, heads * dim, out8.data(), scales.data()),
                      KVFUSE_OK);
        }
    };
    kvfuse::testing::at_thread_counts([&](int) {
        calls();  // warm-up (the default context's scratch, an OpenMP team of this size)
        EXPECT_EQ(count_allocations(calls), 0);
    });
}

// kvfuse_ctx_select_rows allocates nothing after a warm-up call at each shape: A3 over shifted f16
// chunks (one paged) at f32, int8 and int4 (quantized by the call), its scores in the context
// or the caller's, and CacheBlend, on one thread and on several (the quantizers and the relevance
// split over workers), with the same rows as the default context's kvfuse_select_rows.
TEST_P(ContextIsaTest, SelectAllocatesNothingAfterWarmUp) {
    if (!KVFUSE_TEST_OWNS_MALLOC) GTEST_SKIP() << "a sanitizer owns malloc";
    if (GetParam().isa == Isa::scalar) GTEST_SKIP() << "the scalar ISA runs the reference, which allocates";
    SelectCase f32({300, 200, 250}, KVFUSE_KEYS_F32), int8({300, 200, 250}, KVFUSE_KEYS_INT8),
        int4({300, 200, 250}, KVFUSE_KEYS_INT4);
    kvfuse_select_args own_scores = int8.args;
    own_scores.scores = nullptr;
    const kvfuse_select_args cacheblend = f32.cacheblend();
    for (int threads : {1, 2}) {
        SCOPED_TRACE(std::to_string(threads) + " threads");
        kvfuse_tuning tuning;
        kvfuse_tuning_init(&tuning);
        kvfuse_default_tuning(&tuning);
        tuning.quantize_parallel_work = 4096;  // several workers for these quantizers too
        tuning.score_parallel_work = 0;
        kvfuse_context_options options;
        kvfuse_context_options_init(&options);
        options.threads = threads;
        options.tuning = &tuning;
        kvfuse_context* context = nullptr;
        ASSERT_EQ(kvfuse_context_create(&options, &context), KVFUSE_OK) << kvfuse_last_error();
        auto calls = [&] {
            for (SelectCase* c : {&f32, &int8, &int4}) ASSERT_EQ(kvfuse_ctx_select_rows(context, &c->args), KVFUSE_OK) << kvfuse_last_error();
            ASSERT_EQ(kvfuse_ctx_select_rows(context, &own_scores), KVFUSE_OK) << kvfuse_last_error();
            ASSERT_EQ(kvfuse_ctx_select_rows(context, &cacheblend), KVFUSE_OK) << kvfuse_last_error();
        };
        calls();  // warm-up
        EXPECT_EQ(count_allocations(calls), 0);
        kvfuse_context_destroy(context);
        for (SelectCase* c : {&f32, &int8, &int4}) {
            const std::vector<std::int64_t> got(c->rows.begin(), c->rows.begin() + static_cast<std::ptrdiff_t>(c->count));
            ASSERT_EQ(kvfuse_select_rows(&c->args), KVFUSE_OK) << kvfuse_last_error();
            EXPECT_EQ(got, std::vector<std::int64_t>(c->rows.begin(), c->rows.begin() + static_cast<std::ptrdiff_t>(c->count)));
        }
    }
}

// The engine's parallel-for: tasks run here one after another in reverse order, or on fresh
// std::threads at once. Either way the result is the reference's and OpenMP starts nothing.
struct Pool {
    bool threaded = false;
    std::atomic<std::size_t> calls{0}, tasks{0};
};
void pool_parallel_for(void* user, std::size_t n_tasks, kvfuse_task_fn task, void* arg) {
    auto* pool = static_cast<Pool*>(user);
    pool->calls.fetch_add(1);
    pool->tasks.fetch_add(n_tasks);
    if (!pool->threaded) {
        for (std::size_t i = n_tasks; i-- > 0;) task(arg, i);
        return;
    }
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < n_tasks; ++i) threads.emplace_back([=] { task(arg, i); });
    for (std::thread& t : threads) t.join();
}

TEST_P(ContextIsaTest, CallerParallelForGivesTheReferenceResult) {
    for (bool threaded : {false, true}) {
        SCOPED_TRACE(threaded ? "threaded pool" : "sequential pool");
        Pool pool;
        pool.threaded = threaded;
        ContextHandle ctx(3, &pool_parallel_for, &pool);
        AttentionCase big(96, 1500);
        ASSERT_EQ(kvfuse_ctx_sparse_attention(ctx.context, &big.args), KVFUSE_OK) << kvfuse_last_error();
        big.expect_matches_reference();
        if (GetParam().isa != Isa::scalar) {
            EXPECT_GE(pool.calls.load(), 1u);
            EXPECT_EQ(pool.tasks.load(), 3u * pool.calls.load());
        }
        std::vector<float> scores(3 * 20000);
        std::mt19937 rng(5);
        std::uniform_real_distribution<float> uniform;
        for (float& s : scores) s = uniform(rng);
        std::vector<std::int64_t> picked(3 * 100), expected(3 * 100);
        ASSERT_EQ(kvfuse_ctx_topk_batched(ctx.context, scores.data(), 3, 20000, 20000, 100, KVFUSE_TOPK_BY_SCORE,
                                          picked.data(), 100),
                  KVFUSE_OK);
        ContextHandle serial(1);
        ASSERT_EQ(kvfuse_ctx_topk_batched(serial.context, scores.data(), 3, 20000, 20000, 100, KVFUSE_TOPK_BY_SCORE,
                                          expected.data(), 100),
                  KVFUSE_OK);
        EXPECT_EQ(picked, expected);
    }
}

// Counts the allocations made while its tasks run (sequentially, on the calling thread).
struct TaskAllocations {
    long allocations = 0, calls = 0;
};
void counting_parallel_for(void* user, std::size_t n_tasks, kvfuse_task_fn task, void* arg) {
    auto* counted = static_cast<TaskAllocations*>(user);
    const long before = g_allocations.load();
    const bool was_counting = g_counting.exchange(true);
    for (std::size_t i = 0; i < n_tasks; ++i) task(arg, i);
    g_counting.store(was_counting);
    counted->allocations += g_allocations.load() - before;
    ++counted->calls;
}

// An engine's RoPE at absolute positions: fresh f32 keys (8 KV heads), f32 queries (32 heads)
// and an f16 cache, per-token positions, NeoX and interleaved, several workers. No task ever
// allocates (the position tables are built before the workers start), and once the positions
// have been seen nothing allocates at all: the three uses share the context's tables instead
// of evicting each other's.
TEST_P(ContextIsaTest, RopeAtPositionsAllocatesNothingInTasksNorAfterWarmUp) {
    if (!KVFUSE_TEST_OWNS_MALLOC) GTEST_SKIP() << "a sanitizer owns malloc";
    if (GetParam().isa == Isa::scalar) GTEST_SKIP() << "the scalar ISA runs the reference, which allocates";
    TaskAllocations in_tasks;
    ContextHandle ctx(2, &counting_parallel_for, &in_tasks);
    const std::size_t tokens = 600, D = 64;
    std::vector<std::int64_t> positions(tokens);
    for (std::size_t t = 0; t < tokens; ++t) positions[t] = static_cast<std::int64_t>(t);
    std::vector<float> keys(tokens * 8 * D, 0.25f), queries(tokens * 32 * D, 0.5f);
    std::vector<std::uint16_t> cache(tokens * 8 * D, 0x3400);
    kvfuse_rope_config neox, interleaved;
    kvfuse_rope_config_init(&neox, static_cast<std::int32_t>(D));
    kvfuse_rope_config_init(&interleaved, static_cast<std::int32_t>(D));
    interleaved.pairing = KVFUSE_ROPE_INTERLEAVED;
    auto request = [&] {
        for (const kvfuse_rope_config* config : {&neox, &interleaved}) {
            ASSERT_EQ(kvfuse_ctx_rope_rotate(ctx.context, config, KVFUSE_DTYPE_F32, keys.data(), tokens, 8, 8 * D,
                                             positions.data()),
                      KVFUSE_OK)
                << kvfuse_last_error();
            ASSERT_EQ(kvfuse_ctx_rope_rotate(ctx.context, config, KVFUSE_DTYPE_F32, queries.data(), tokens, 32, 32 * D,
                                             positions.data()),
                      KVFUSE_OK);
            ASSERT_EQ(kvfuse_ctx_rope_rotate(ctx.context, config, KVFUSE_DTYPE_F16, cache.data(), tokens, 8, 8 * D,
                                             positions.data()),
                      KVFUSE_OK);
        }
    };
    request();  // cold: the tables are built, on the calling thread
    EXPECT_EQ(in_tasks.calls, 6) << "every call should have run on the workers";
    EXPECT_EQ(in_tasks.allocations, 0) << "a RoPE task allocated";
    EXPECT_EQ(count_allocations(request), 0);
    EXPECT_EQ(in_tasks.allocations, 0);
}

// The quantizers' context forms allocate nothing after warm-up either, and follow the context's
// quantize_parallel_work: above it a call hands its workers to the parallel-for, below it not.
TEST_P(ContextIsaTest, ContextQuantizersFollowTheirTuning) {
    if (GetParam().isa == Isa::scalar) GTEST_SKIP() << "the scalar ISA runs the reference on the calling thread";
    const std::size_t tokens = 64, heads = 2, dim = 64;  // 8 K values
    std::vector<float> keys(tokens * heads * dim), scales(tokens * heads), means(heads * dim), expected_scales(scales);
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    for (float& k : keys) k = normal(rng);
    std::vector<std::int8_t> out(keys.size()), expected(keys.size());
    ASSERT_EQ(kvfuse_quantize_keys_i8(keys.data(), tokens, heads, dim, heads * dim, expected.data(),
                                      expected_scales.data(), means.data()),
              KVFUSE_OK);
    for (std::uint64_t threshold : {std::uint64_t{1} << 16, std::uint64_t{1024}}) {
        Pool pool;
        ContextHandle ctx(2, &pool_parallel_for, &pool);
        kvfuse_tuning tuning;
        kvfuse_tuning_init(&tuning);
        ASSERT_EQ(kvfuse_context_get_tuning(ctx.context, &tuning), KVFUSE_OK);
        EXPECT_EQ(tuning.quantize_parallel_work, std::uint64_t{1} << 16);  // the built-in default
        tuning.quantize_parallel_work = threshold;
        ASSERT_EQ(kvfuse_context_set_tuning(ctx.context, &tuning), KVFUSE_OK);
        auto calls = [&] {
            ASSERT_EQ(kvfuse_ctx_quantize_keys_i8(ctx.context, keys.data(), tokens, heads, dim, heads * dim, out.data(),
                                                  scales.data(), means.data()),
                      KVFUSE_OK);
            ASSERT_EQ(kvfuse_ctx_quantize_rows_i8_typed(ctx.context, KVFUSE_DTYPE_F32, keys.data(), tokens, heads, dim,
                                                        heads * dim, out.data() + 0, scales.data()),
                      KVFUSE_OK);
            ASSERT_EQ(kvfuse_ctx_quantize_keys_i8(ctx.context, keys.data(), tokens, heads, dim, heads * dim, out.data(),
                                                  scales.data(), means.data()),
                      KVFUSE_OK);
        };
        calls();
        if (threshold > keys.size()) {
            EXPECT_EQ(pool.calls.load(), 0u) << "below the threshold: one worker, no parallel-for";
        } else {
            EXPECT_GT(pool.calls.load(), 0u) << "above the threshold: workers on the parallel-for";
        }
        if (KVFUSE_TEST_OWNS_MALLOC) {
            EXPECT_EQ(count_allocations(calls), 0);
        }
        EXPECT_EQ(out, expected);
        EXPECT_EQ(scales, expected_scales);
    }
}

// Dense layers of every packed type (f32, bf16, 8- and 4-bit blocks), big enough to split.
struct GemmCase {
    std::size_t n, out, in;
    std::vector<kvfuse_packed_weights*> weights;
    std::vector<float> a;
    GemmCase(std::size_t n_, std::size_t out_, std::size_t in_) : n(n_), out(out_), in(in_) {
        std::mt19937 rng(11);
        std::normal_distribution<float> normal;
        std::vector<float> w(out * in);
        for (float& x : w) x = normal(rng);
        a.resize(n * in);
        for (float& x : a) x = normal(rng);
        for (kvfuse_dtype dtype : {KVFUSE_DTYPE_F32, KVFUSE_DTYPE_BF16}) {
            kvfuse_packed_weights* packed = nullptr;
            EXPECT_EQ(kvfuse_pack_weights(KVFUSE_DTYPE_F32, w.data(), out, in, in, dtype, &packed), KVFUSE_OK);
            weights.push_back(packed);
        }
        std::vector<std::uint8_t> codes(out * in);
        std::vector<float> scales(out * in / 32), offsets(scales.size());
        for (float& x : scales) x = 0.01f + 0.001f * static_cast<float>(rng() % 100);
        for (float& x : offsets) x = 0.1f * normal(rng);
        for (int bits : {8, 4}) {
            for (auto& c : codes) c = static_cast<std::uint8_t>(rng() % (1u << bits));
            kvfuse_quantized_weights q;
            kvfuse_quantized_weights_init(&q);
            q.out = out;
            q.in = in;
            q.code_bits = bits;
            q.codes = codes.data();
            q.codes_stride = in;
            q.scales = scales.data();
            q.offsets = offsets.data();
            q.block_stride = in / 32;
            kvfuse_packed_weights* packed = nullptr;
            EXPECT_EQ(kvfuse_pack_quantized_weights(&q, &packed), KVFUSE_OK);
            weights.push_back(packed);
        }
    }
    ~GemmCase() {
        for (auto* w : weights) kvfuse_packed_weights_free(w);
    }
    // kvfuse_gemm on one thread: the result every context must give bit for bit.
    std::vector<float> expected(std::size_t which, float beta) const {
        std::vector<float> c(n * out, 0.5f);
        EXPECT_EQ(kvfuse_gemm(weights[which], a.data(), n, in, beta, c.data(), out, 1), KVFUSE_OK);
        return c;
    }
};

// kvfuse_ctx_gemm on one worker, on a parallel-for run in turn or on threads of its own, and on
// an OpenMP context: kvfuse_gemm's bits for every packed type, and the workers ran where the
// context says.
TEST_P(ContextIsaTest, GemmOnAContextGivesKvfuseGemmsBits) {
    GemmCase gemm(100, 200, 256);  // 5 M multiply-adds: above the one-worker limit
    for (int threaded = 0; threaded < 2; ++threaded) {
        Pool pool;
        pool.threaded = threaded == 1;
        ContextHandle one(1), pooled(3, &pool_parallel_for, &pool), openmp(2);
        for (std::size_t which = 0; which < gemm.weights.size(); ++which) {
            SCOPED_TRACE("weights " + std::to_string(which) + (threaded ? ", threaded pool" : ", sequential pool"));
            for (float beta : {0.0f, 0.75f}) {
                const std::vector<float> expected = gemm.expected(which, beta);
                for (kvfuse_context* ctx : {one.context, pooled.context, openmp.context}) {
                    std::vector<float> c(gemm.n * gemm.out, 0.5f);
                    ASSERT_EQ(kvfuse_ctx_gemm(ctx, gemm.weights[which], gemm.a.data(), gemm.n, gemm.in, beta, c.data(),
                                              gemm.out),
                              KVFUSE_OK)
                        << kvfuse_last_error();
                    EXPECT_EQ(std::memcmp(c.data(), expected.data(), c.size() * sizeof(float)), 0);
                }
            }
        }
        if (GetParam().isa != Isa::scalar) {
            EXPECT_EQ(pool.calls.load(), 2 * gemm.weights.size());
            EXPECT_EQ(pool.tasks.load(), 3 * pool.calls.load()) << "three workers a product";
        }
    }
    // Small products run on the calling thread whatever the context's count.
    Pool pool;
    ContextHandle pooled(3, &pool_parallel_for, &pool);
    GemmCase small(4, 64, 64);
    std::vector<float> c(small.n * small.out);
    ASSERT_EQ(kvfuse_ctx_gemm(pooled.context, small.weights[0], small.a.data(), small.n, small.in, 0.0f, c.data(),
                              small.out),
              KVFUSE_OK);
    EXPECT_EQ(c, small.expected(0, 0.0f));
    EXPECT_EQ(pool.calls.load(), 0u);
    // And the checks of kvfuse_gemm hold.
    EXPECT_EQ(kvfuse_ctx_gemm(pooled.context, nullptr, small.a.data(), 1, small.in, 0.0f, c.data(), small.out),
              KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_ctx_gemm(pooled.context, small.weights[0], small.a.data(), 1, small.in - 1, 0.0f, c.data(),
                              small.out),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvfuse_last_error()).find("lda"), std::string::npos) << kvfuse_last_error();
}

// After one product at a shape, products of that shape or smaller allocate nothing: the packed
// activations live in the context's scratch.
TEST_P(ContextIsaTest, GemmAllocatesNothingAfterWarmUp) {
    if (!KVFUSE_TEST_OWNS_MALLOC) GTEST_SKIP() << "a sanitizer owns malloc";
    if (GetParam().isa == Isa::scalar) GTEST_SKIP() << "the scalar ISA runs the reference, which allocates";
    GemmCase gemm(100, 200, 256);
    Pool pool;
    ContextHandle ctx(2, &pool_parallel_for, &pool);
    std::vector<float> c(gemm.n * gemm.out);
    auto calls = [&] {
        for (auto* w : gemm.weights) {
            ASSERT_EQ(kvfuse_ctx_gemm(ctx.context, w, gemm.a.data(), gemm.n, gemm.in, 0.0f, c.data(), gemm.out), KVFUSE_OK);
            ASSERT_EQ(kvfuse_ctx_gemm(ctx.context, w, gemm.a.data(), 7, gemm.in, 1.0f, c.data(), gemm.out), KVFUSE_OK);
        }
    };
    calls();  // warm-up
    EXPECT_EQ(count_allocations(calls), 0);
    ContextHandle fresh(1);
    EXPECT_GT(count_allocations([&] {
                  ASSERT_EQ(kvfuse_ctx_gemm(fresh.context, gemm.weights[0], gemm.a.data(), gemm.n, gemm.in, 0.0f,
                                            c.data(), gemm.out),
                            KVFUSE_OK);
              }),
              0)
        << "the counter sees a fresh context's scratch";
}

KVFUSE_INSTANTIATE_ISA_TESTS(ContextIsaTest);

std::size_t process_threads() {
    std::size_t count = 0;
    if (DIR* dir = opendir("/proc/self/task")) {
        while (dirent* entry = readdir(dir))
            if (entry->d_name[0] != '.') ++count;
        closedir(dir);
    }
    return count;
}

// The most threads the process had while it ran (a thread of its own, counted with them).
class ThreadWatcher {
   public:
    ThreadWatcher()
        : thread_([this] {
              while (running_.load()) {
                  const std::size_t now = process_threads();
                  std::size_t seen = most_.load();
                  while (now > seen && !most_.compare_exchange_weak(seen, now)) {}
                  std::this_thread::yield();
              }
          }) {}
    ~ThreadWatcher() { stop(); }
    std::size_t stop() {
        running_ = false;
        if (thread_.joinable()) thread_.join();
        return most_.load();
    }

   private:
    std::atomic<std::size_t> most_{0};
    std::atomic<bool> running_{true};
    std::thread thread_;
};

// Eight engine threads, each with its own one-thread context, calling work large enough to
// run in parallel on a default context: no kvfuse thread appears, and every result is right.
TEST(Context, ManyEngineThreadsStartNoThreadOfTheirOwn) {
    const std::size_t before = process_threads();
    std::atomic<bool> wrong{false};
    ThreadWatcher watcher;
    std::vector<std::thread> engine;
    for (int t = 0; t < 8; ++t)
        engine.emplace_back([&] {
            ContextHandle ctx(1);
            AttentionCase big(64, 1200);
            for (int i = 0; i < 3; ++i) {
                if (kvfuse_ctx_sparse_attention(ctx.context, &big.args) != KVFUSE_OK) wrong = true;
                for (std::size_t e = 0; e < big.out.size(); ++e)
                    if (!(std::fabs(big.out[e] - big.expected[e]) <= 1e-4f * std::max(1.0f, std::fabs(big.expected[e]))))
                        wrong = true;
            }
        });
    for (std::thread& t : engine) t.join();
    const std::size_t most = watcher.stop();
    EXPECT_FALSE(wrong.load());
    // The eight engine threads and the watcher, nothing else.
    EXPECT_LE(most, before + 9) << "threads before " << before;
}

// kvfuse_ctx_select_rows starts no thread of its own: engine threads calling it on contexts of one
// thread, or of four workers run by a parallel-for (here sequential, on the calling thread), at
// sizes where a default context would start an OpenMP team (int8: the quantizers and the
// relevance both over their thresholds), leave the process with the engine's threads and the
// watcher only, and give the default context's rows.
TEST(Context, SelectStartsNoThreadOfItsOwn) {
    SelectCase reference_case({700, 600, 700}, KVFUSE_KEYS_INT8);
    ASSERT_EQ(kvfuse_select_rows(&reference_case.args), KVFUSE_OK) << kvfuse_last_error();
    const std::vector<std::int64_t> expected(reference_case.rows.begin(),
                                             reference_case.rows.begin() + static_cast<std::ptrdiff_t>(reference_case.count));
    const std::size_t before = process_threads();
    std::atomic<std::size_t> pool_calls{0};
    std::atomic<bool> wrong{false};
    ThreadWatcher watcher;
    std::vector<std::thread> engine;
    for (int t = 0; t < 4; ++t)
        engine.emplace_back([&, t] {
            Pool pool;
            ContextHandle ctx(t % 2 == 0 ? 1 : 4, t % 2 == 0 ? nullptr : &pool_parallel_for, &pool);
            SelectCase c({700, 600, 700}, KVFUSE_KEYS_INT8);
            for (int i = 0; i < 2; ++i) {
                if (kvfuse_ctx_select_rows(ctx.context, &c.args) != KVFUSE_OK) wrong = true;
                if (std::vector<std::int64_t>(c.rows.begin(), c.rows.begin() + static_cast<std::ptrdiff_t>(c.count)) != expected)
                    wrong = true;
            }
            pool_calls.fetch_add(pool.calls.load());
        });
    for (std::thread& t : engine) t.join();
    const std::size_t most = watcher.stop();
    EXPECT_FALSE(wrong.load());
    // The four engine threads and the watcher, nothing else.
    EXPECT_LE(most, before + 5) << "threads before " << before;
    kvfuse_isa isa;
    ASSERT_EQ(kvfuse_active_isa(&isa), KVFUSE_OK);
    if (isa != KVFUSE_ISA_SCALAR) {
        EXPECT_GT(pool_calls.load(), 0u) << "the steps' workers ran on the parallel-for";
    }
}

// Engine threads running products on one-thread contexts, at sizes where kvfuse_gemm would
// start an OpenMP team: no kvfuse thread appears, and every result is kvfuse_gemm's.
TEST(Context, GemmStartsNoThreadOfItsOwn) {
    GemmCase gemm(100, 200, 256);
    const std::vector<float> expected = gemm.expected(0, 0.0f);
    const std::size_t before = process_threads();
    std::atomic<bool> wrong{false};
    ThreadWatcher watcher;
    std::vector<std::thread> engine;
    for (int t = 0; t < 4; ++t)
        engine.emplace_back([&] {
            ContextHandle ctx(1);
            std::vector<float> c(gemm.n * gemm.out);
            for (int i = 0; i < 3; ++i) {
                if (kvfuse_ctx_gemm(ctx.context, gemm.weights[0], gemm.a.data(), gemm.n, gemm.in, 0.0f, c.data(),
                                    gemm.out) != KVFUSE_OK ||
                    c != expected)
                    wrong = true;
            }
        });
    for (std::thread& t : engine) t.join();
    const std::size_t most = watcher.stop();
    EXPECT_FALSE(wrong.load());
    EXPECT_LE(most, before + 5) << "threads before " << before;  // four engine threads, the watcher
}

TEST(Context, OutOfMemoryIsAStatus) {
    if (!KVFUSE_TEST_OWNS_MALLOC) GTEST_SKIP() << "a sanitizer owns malloc";
    ContextHandle ctx(2);
    AttentionCase big(64, 4000);  // several MiB of packed keys and values
    g_fail_from.store(1 << 20);
    const kvfuse_status failed = kvfuse_ctx_sparse_attention(ctx.context, &big.args);
    g_fail_from.store(0);
    EXPECT_EQ(failed, KVFUSE_ERROR_OUT_OF_MEMORY) << kvfuse_last_error();
    ASSERT_EQ(kvfuse_ctx_sparse_attention(ctx.context, &big.args), KVFUSE_OK);
    big.expect_matches_reference();
}

// A call into a context from inside its own call (here: from its parallel-for) is refused.
struct Reentry {
    kvfuse_context* context = nullptr;
    const kvfuse_attention_args* args = nullptr;
    std::atomic<int> refused{0};
};
void reentering_parallel_for(void* user, std::size_t n_tasks, kvfuse_task_fn task, void* arg) {
    auto* r = static_cast<Reentry*>(user);
    if (kvfuse_ctx_sparse_attention(r->context, r->args) == KVFUSE_ERROR_INVALID_ARGUMENT) r->refused.fetch_add(1);
    for (std::size_t i = 0; i < n_tasks; ++i) task(arg, i);
}

TEST(Context, OneCallAtATime) {
    Reentry reentry;
    ContextHandle ctx(2, &reentering_parallel_for, &reentry);
    AttentionCase big(64, 1500);
    reentry.context = ctx.context;
    reentry.args = &big.args;
    ASSERT_EQ(kvfuse_ctx_sparse_attention(ctx.context, &big.args), KVFUSE_OK);
    EXPECT_GE(reentry.refused.load(), 1);
    big.expect_matches_reference();
}

TEST(Context, OptionsAreChecked) {
    kvfuse_context_options options;
    kvfuse_context* context = nullptr;
    kvfuse_context_options_init(&options);
    EXPECT_EQ(options.threads, 1);
    EXPECT_EQ(kvfuse_context_create(nullptr, &context), KVFUSE_ERROR_NULL_POINTER);
    EXPECT_EQ(kvfuse_context_create(&options, nullptr), KVFUSE_ERROR_NULL_POINTER);
    options.struct_size = 8;
    EXPECT_EQ(kvfuse_context_create(&options, &context), KVFUSE_ERROR_STRUCT_SIZE);
    EXPECT_EQ(context, nullptr);
    kvfuse_context_options_init(&options);
    options.threads = -1;
    EXPECT_EQ(kvfuse_context_create(&options, &context), KVFUSE_ERROR_INVALID_ARGUMENT);
    options.threads = 0;
    options.parallel_for = &pool_parallel_for;
    EXPECT_EQ(kvfuse_context_create(&options, &context), KVFUSE_ERROR_INVALID_ARGUMENT);
    kvfuse_context_options_init(&options);
    kvfuse_tuning bad;
    kvfuse_tuning_init(&bad);
    kvfuse_default_tuning(&bad);
    bad.topk_sample = 1000;
    options.tuning = &bad;
    EXPECT_EQ(kvfuse_context_create(&options, &context), KVFUSE_ERROR_INVALID_ARGUMENT);
    options.tuning = nullptr;
    options.use_process_tuning = 2;
    EXPECT_EQ(kvfuse_context_create(&options, &context), KVFUSE_ERROR_INVALID_ARGUMENT);
    // A newer caller's struct (a size this library does not know) is refused, as every versioned struct.
    struct Newer {
        kvfuse_context_options known;
        std::uint64_t later_field;
    } newer{};
    kvfuse_context_options_init(&newer.known);
    newer.known.struct_size = sizeof newer;
    EXPECT_EQ(kvfuse_context_create(&newer.known, &context), KVFUSE_ERROR_STRUCT_SIZE);
    EXPECT_EQ(context, nullptr);
    kvfuse_context_options_init(&options);
    ASSERT_EQ(kvfuse_context_create(&options, &context), KVFUSE_OK);
    kvfuse_context_destroy(context);
}

// A context's tuning is its own: the process-wide tuning does not reach it.
TEST(Context, HasItsOwnTuning) {
    ContextHandle ctx(1);
    kvfuse_tuning defaults, process, mine;
    kvfuse_tuning_init(&defaults);
    kvfuse_tuning_init(&mine);
    kvfuse_default_tuning(&defaults);
    process = defaults;
    process.topk_sample = 4096;
    ASSERT_EQ(kvfuse_set_tuning(&process), KVFUSE_OK);
    ASSERT_EQ(kvfuse_context_get_tuning(ctx.context, &mine), KVFUSE_OK);
    EXPECT_EQ(mine.topk_sample, defaults.topk_sample);
    mine.topk_parallel_work = 123;
    ASSERT_EQ(kvfuse_context_set_tuning(ctx.context, &mine), KVFUSE_OK);
    kvfuse_tuning now;
    kvfuse_tuning_init(&now);
    ASSERT_EQ(kvfuse_context_get_tuning(ctx.context, &now), KVFUSE_OK);
    EXPECT_EQ(now.topk_parallel_work, 123u);
    mine.attention_row_block = 0;
    EXPECT_EQ(kvfuse_context_set_tuning(ctx.context, &mine), KVFUSE_ERROR_INVALID_ARGUMENT);
    ASSERT_EQ(kvfuse_set_tuning(nullptr), KVFUSE_OK);
}

}  // namespace
}  // namespace kvfuse::testing

namespace kvfuse::testing {
namespace {

// The C++ wrapper: a move-only Context and the context overloads.
TEST(Context, CppWrapper) {
    Context context;
    ASSERT_TRUE(Context::create(context).ok());
    ASSERT_NE(context.get(), nullptr);
    Context moved = std::move(context);
    EXPECT_EQ(context.get(), nullptr);
    AttentionCase tiny(1, 16);
    ASSERT_TRUE(sparse_attention(moved, tiny.args).ok());
    tiny.expect_matches_reference();
    SelectCase selection({40, 30}, KVFUSE_KEYS_INT4);
    ASSERT_TRUE(select_rows(moved, selection.args).ok()) << kvfuse_last_error();
    const std::vector<std::int64_t> picked(selection.rows.begin(), selection.rows.begin() + static_cast<std::ptrdiff_t>(selection.count));
    ASSERT_TRUE(select_rows(selection.args).ok());
    EXPECT_EQ(picked, std::vector<std::int64_t>(selection.rows.begin(), selection.rows.begin() + static_cast<std::ptrdiff_t>(selection.count)));
    std::vector<std::int8_t> q(selection.keys[0].size());
    std::vector<float> scales(40 * 2), means(2 * 64);
    ASSERT_TRUE(quantize_keys_i8(moved, reinterpret_cast<const f16*>(selection.keys[0].data()), 40, 2, 64, 128, q.data(),
                                 scales.data(), means.data())
                    .ok());
    // The C++ form of kvfuse_ctx_gemm: kvfuse_gemm's result; an empty handle is its error.
    std::vector<float> w(64 * 48), a(20 * 48), c(20 * 64), expected(c.size());
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 7) - 3.0f;
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = 0.25f * static_cast<float>(i % 5);
    PackedWeights weights, none;
    ASSERT_TRUE(PackedWeights::pack(w.data(), 64, 48, 0, Dtype::f32, weights).ok());
    ASSERT_TRUE(gemm(moved, weights, a.data(), 20, c.data()).ok()) << kvfuse_last_error();
    ASSERT_TRUE(gemm(weights, a.data(), 20, expected.data()).ok());
    EXPECT_EQ(c, expected);
    EXPECT_EQ(gemm(moved, none, a.data(), 20, c.data()).code(), StatusCode::null_pointer);
    kvfuse_context_options bad;
    kvfuse_context_options_init(&bad);
    bad.threads = -3;
    Context refused;
    const Status s = Context::create(refused, &bad);
    EXPECT_EQ(s.code(), StatusCode::invalid_argument);
    EXPECT_EQ(refused.get(), nullptr);
}

}  // namespace
}  // namespace kvfuse::testing
