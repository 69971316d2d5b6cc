// fused_request: the example engine (engine.h) serves a few fused requests over stored chunks
// and checks itself, exiting non-zero with a message on the first mismatch:
//   * the paged f16 cache and the attention outputs equal, bit for bit, the same calls on a
//     contiguous f16 cache (the layouts change where kvfuse reads, never the arithmetic);
//   * attention on a contiguous f32 copy of the cache agrees within 1e-5;
//   * the re-rotated keys match a straightforward RoPE in double (within half an f16 step), the
//     values are the stored ones, and attention matches a straightforward softmax in double;
//   * the A3 scores of kvfuse_ctx_select_rows (f32 and int8) match a straightforward A3 in double,
//     and the rows picked are the best ones up to that precision;
//   * after the first request, the engine's kvfuse calls allocate nothing, and no thread exists
//     beyond the main one and the engine's pool (kvfuse ran its workers on the pool).
// Usage: fused_request [--requests N] [--workers N]
#include <dirent.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include <kvfuse/kvfuse.h>

#include "allocation_counter.h"
#include "chunk_store.h"
#include "engine.h"
#include "paged_kv_cache.h"
#include "status.h"
#include "straightforward.h"
#include "thread_pool.h"

namespace {

const ModelShape kModel{/*layers*/ 4, /*check_layer*/ 1, /*query_heads*/ 32, /*kv_heads*/ 8, /*head_dim*/ 64};
const std::size_t kChunkTokens[] = {64, 160, 288, 512};
constexpr std::size_t kPrefixRows = 16, kQuestionRows = 16, kBlockSize = 16, kPoolBlocks = 96;
constexpr double kRatio = 0.15;

std::size_t process_threads() {
    std::size_t count = 0;
    if (DIR* dir = opendir("/proc/self/task")) {
        while (const dirent* entry = readdir(dir))
            if (entry->d_name[0] != '.') ++count;
        closedir(dir);
    }
    return count;
}

// No thread beyond the main one and the pool after any step: every kvfuse call, row selection
// included (kvfuse_ctx_select_rows), runs on the engine's context and its pool.
class ThreadCheck : public StepObserver {
public:
    explicit ThreadCheck(std::size_t expected) : expected_(expected) {}
    void after(const char* step) override {
        const std::size_t now = process_threads();
        if (now != expected_)
            fail(std::string("after the ") + step + " step the process has " + std::to_string(now) +
                 " threads, expected " + std::to_string(expected_) + " (the main thread and the pool)");
    }

private:
    std::size_t expected_;
};

// A request's K/V in plain contiguous f16 arrays [tokens][kv_heads][head_dim] per layer.
class ContiguousTarget : public CacheTarget {
public:
    ContiguousTarget(std::size_t layers, std::size_t tokens, std::size_t row)
        : tokens_(tokens), row_(row), keys_(layers * tokens * row), values_(keys_.size()) {}
    KvView keys(std::size_t layer) override { return view(keys_, layer); }
    KvView values(std::size_t layer) override { return view(values_, layer); }

private:
    KvView view(std::vector<std::uint16_t>& a, std::size_t layer) {
        KvView v;
        v.base = a.data() + layer * tokens_ * row_;
        v.token_elements = row_;
        v.cells_total = tokens_;
        return v;
    }
    std::size_t tokens_, row_;
    std::vector<std::uint16_t> keys_, values_;
};

std::vector<double> widen(const KvView& view, std::size_t tokens) {
    std::vector<double> out(tokens * view.token_elements);
    for (std::size_t t = 0; t < tokens; ++t)
        for (std::size_t e = 0; e < view.token_elements; ++e) out[t * view.token_elements + e] = half_to_double(view.row(t)[e]);
    return out;
}

std::string where(std::size_t layer, const char* what, std::size_t row) {
    return "layer " + std::to_string(layer) + ", " + what + " " + std::to_string(row);
}

// The same request replayed on a contiguous f16 cache: cache and outputs equal bit for bit.
void check_against_contiguous(Engine& engine, const RequestPlan& plan) {
    const ModelShape& m = engine.model();
    const std::size_t T = plan.tokens(), row = m.token_elements();
    ContiguousTarget contiguous(m.layers, T, row);
    std::vector<float> out_selected(m.layers * engine.selected_stride()), out_question(m.layers * engine.question_stride());
    engine.place_chunks(plan, contiguous);
    engine.write_prompt_rows(plan, contiguous);
    engine.recompute_and_attend(plan, contiguous, engine.selected(), engine.selected_count(), out_selected.data(),
                                out_question.data());
    for (std::size_t layer = 0; layer < m.layers; ++layer) {
        const KvView pk = engine.cache().keys(layer, engine.block_table()), pv = engine.cache().values(layer, engine.block_table());
        const KvView ck = contiguous.keys(layer), cv = contiguous.values(layer);
        for (std::size_t t = 0; t < T; ++t)
            if (std::memcmp(pk.row(t), ck.row(t), row * 2) != 0 || std::memcmp(pv.row(t), cv.row(t), row * 2) != 0)
                fail(where(layer, "token", t) + ": the paged cache differs from the contiguous one");
        const std::size_t q = m.query_elements();
        if (std::memcmp(engine.out_selected(layer), out_selected.data() + layer * engine.selected_stride(),
                        engine.selected_count() * q * sizeof(float)) != 0 ||
            std::memcmp(engine.out_question(layer), out_question.data() + layer * engine.question_stride(),
                        plan.question_rows * q * sizeof(float)) != 0)
            fail(where(layer, "attention", 0) + ": paged and contiguous f16 results differ");
    }
}

// Attention on a contiguous f32 copy of the paged cache, through the same kvfuse call.
void check_f32_copy(Engine& engine, const RequestPlan& plan) {
    const ModelShape& m = engine.model();
    const std::size_t T = plan.tokens(), row = m.token_elements(), q = m.query_elements();
    const std::size_t count = engine.selected_count();
    std::vector<float> keys(T * row), values(T * row), queries(count * q), out(count * q);
    double worst = 0.0;
    for (std::size_t layer = 0; layer < m.layers; ++layer) {
        const KvView pk = engine.cache().keys(layer, engine.block_table()), pv = engine.cache().values(layer, engine.block_table());
        for (std::size_t t = 0; t < T; ++t) {
            require(kvfuse_f16_to_f32(pk.row(t), keys.data() + t * row, row), "kvfuse_f16_to_f32");
            require(kvfuse_f16_to_f32(pv.row(t), values.data() + t * row, row), "kvfuse_f16_to_f32");
        }
        engine.make_queries(plan, layer, engine.selected(), count, queries.data());
        kvfuse_attention_args args;
        kvfuse_attention_args_init(&args);
        args.queries = queries.data();
        args.rows = count;
        args.query_heads = m.query_heads;
        args.head_dim = m.head_dim;
        args.query_row_stride = q;
        args.positions = engine.selected();
        args.keys = keys.data();
        args.values = values.data();
        args.kv_dtype = KVFUSE_DTYPE_F32;
        args.kv_tokens = T;
        args.kv_heads = m.kv_heads;
        args.kv_token_stride = row;
        args.scale = 1.0f / std::sqrt(static_cast<float>(m.head_dim));
        args.out = out.data();
        args.out_row_stride = q;
        require(kvfuse_ctx_sparse_attention(engine.context(), &args), "kvfuse_ctx_sparse_attention");
        for (std::size_t i = 0; i < count * q; ++i) {
            const double d = std::fabs(static_cast<double>(out[i]) - engine.out_selected(layer)[i]);
            worst = std::max(worst, d);
            if (!(d <= 1e-5)) fail(where(layer, "selected row", i / q) + ": f16 paged and f32 contiguous attention differ by " + std::to_string(d));
        }
    }
    std::printf("  f32 copy: attention within %.1e of the paged f16 call\n", worst);
}

// Re-rotated keys against RoPE in double, values against the store, for the document rows not
// recomputed; attention against softmax in double for some rows at two layers.
void check_independently(Engine& engine, const RequestPlan& plan) {
    const ModelShape& m = engine.model();
    const std::size_t T = plan.tokens(), row = m.token_elements(), D = m.head_dim, q = m.query_elements();
    const std::int64_t* selected = engine.selected();
    const std::size_t count = engine.selected_count();
    std::vector<bool> recomputed(T, false);
    for (std::size_t i = 0; i < count; ++i) recomputed[static_cast<std::size_t>(selected[i])] = true;
    double worst_rope = 0.0, worst_attention = 0.0;
    std::vector<double> head(D);
    for (std::size_t layer = 0; layer < m.layers; ++layer) {
        const KvView keys = engine.cache().keys(layer, engine.block_table()), values = engine.cache().values(layer, engine.block_table());
        for (std::size_t c = 0; c < plan.chunk_order.size(); ++c) {
            const StoredChunk& chunk = engine.store()[plan.chunk_order[c]];
            const std::uint16_t* stored_keys = chunk.layer_keys(m, layer);
            const std::uint16_t* stored_values = chunk.layer_values(m, layer);
            for (std::size_t t = 0; t < chunk.tokens; ++t) {
                const std::size_t token = plan.offsets[c] + t;
                if (recomputed[token]) continue;
                if (std::memcmp(values.row(token), stored_values + t * row, row * 2) != 0)
                    fail(where(layer, "token", token) + ": value differs from the stored chunk's");
                for (std::size_t h = 0; h < m.kv_heads; ++h) {
                    for (std::size_t d = 0; d < D; ++d) head[d] = half_to_double(stored_keys[t * row + h * D + d]);
                    rotate_head(head.data(), D, engine.rope().base, static_cast<double>(plan.offsets[c]));
                    for (std::size_t d = 0; d < D; ++d) {
                        const double got = half_to_double(keys.row(token)[h * D + d]), diff = std::fabs(got - head[d]);
                        // One step of f16 at the value (f32 arithmetic, whose error on inputs up to ~4 is
                        // below 1e-6, rounded once to f16).
                        const double tolerance = std::ldexp(1.0, std::ilogb(std::max(std::fabs(head[d]), 6.2e-5)) - 10) + 1e-6;
                        worst_rope = std::max(worst_rope, diff / tolerance);
                        if (!(diff <= tolerance))
                            fail(where(layer, "token", token) + ": re-rotated key " + std::to_string(got) +
                                 ", straightforward RoPE " + std::to_string(head[d]));
                    }
                }
            }
        }
        if (layer != m.check_layer && layer != m.layers - 1) continue;
        const std::vector<double> k = widen(keys, T), v = widen(values, T);
        std::vector<float> queries(std::max(count, plan.question_rows) * q);
        std::vector<double> out(D);
        const double scale = 1.0 / std::sqrt(static_cast<double>(D));
        const std::size_t group = m.query_heads / m.kv_heads;
        auto compare = [&](const std::int64_t* positions, std::size_t rows, std::size_t step, const float* got, const char* what) {
            engine.make_queries(plan, layer, positions, rows, queries.data());
            for (std::size_t r = 0; r < rows; r += step)
                for (std::size_t h = 0; h < m.query_heads; ++h) {
                    const std::size_t kv = (h / group) * D;
                    attend_head(queries.data() + r * q + h * D, D, static_cast<std::size_t>(positions[r]), scale,
                                [&](std::size_t j) { return k.data() + j * row + kv; },
                                [&](std::size_t j) { return v.data() + j * row + kv; }, out.data());
                    for (std::size_t d = 0; d < D; ++d) {
                        const double diff = std::fabs(got[r * q + h * D + d] - out[d]);
                        worst_attention = std::max(worst_attention, diff);
                        if (!(diff <= 1e-4)) fail(where(layer, what, r) + ": attention differs from softmax in double by " + std::to_string(diff));
                    }
                }
        };
        compare(selected, count, 7, engine.out_selected(layer), "selected row");
        std::vector<std::int64_t> question(plan.question_rows);
        for (std::size_t i = 0; i < plan.question_rows; ++i) question[i] = static_cast<std::int64_t>(plan.prefix_rows + plan.documents + i);
        compare(question.data(), plan.question_rows, 1, engine.out_question(layer), "question row");
    }
    std::printf("  straightforward: RoPE within %.2f of an f16 step, attention within %.1e\n", worst_rope, worst_attention);
}

// A3 scores from kvfuse_ctx_select_rows (f32 and int8) against A3 in double over the fused keys.
void check_selection(Engine& engine, const RequestPlan& plan) {
    const ModelShape& m = engine.model();
    const std::size_t docs = plan.documents, M = plan.question_rows, row = m.token_elements(), D = m.head_dim;
    std::vector<std::vector<double>> keys(docs + M, std::vector<double>(row)), queries(M, std::vector<double>(m.query_elements()));
    for (std::size_t c = 0; c < plan.chunk_order.size(); ++c) {
        const StoredChunk& chunk = engine.store()[plan.chunk_order[c]];
        const std::uint16_t* stored = chunk.layer_keys(m, m.check_layer);
        for (std::size_t t = 0; t < chunk.tokens; ++t) {
            std::vector<double>& key = keys[plan.offsets[c] - plan.prefix_rows + t];
            for (std::size_t e = 0; e < row; ++e) key[e] = half_to_double(stored[t * row + e]);
            for (std::size_t h = 0; h < m.kv_heads; ++h) rotate_head(key.data() + h * D, D, engine.rope().base, static_cast<double>(plan.offsets[c]));
        }
    }
    // The question's keys as the selection reads them: from the paged f16 cache.
    const KvView cached = engine.cache().keys(m.check_layer, engine.block_table());
    for (std::size_t i = 0; i < M; ++i) {
        const std::uint16_t* key = cached.row(plan.prefix_rows + docs + i);
        for (std::size_t e = 0; e < row; ++e) keys[docs + i][e] = half_to_double(key[e]);
        for (std::size_t e = 0; e < m.query_elements(); ++e) queries[i][e] = engine.question_queries()[i * m.query_elements() + e];
    }
    const std::vector<double> expected = a3_relevance(keys, queries, docs, m.query_heads, m.kv_heads, D, true);
    std::vector<double> sorted = expected;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    const double top = sorted.front();

    std::vector<std::int64_t> rows(docs);
    std::vector<float> f32_scores(docs);
    const std::size_t count = engine.select(plan, KVFUSE_KEYS_F32, rows.data(), f32_scores.data());
    const std::size_t k = static_cast<std::size_t>(std::floor(engine.ratio() * static_cast<double>(plan.prefix_rows + docs)));
    if (count != k || engine.selected_count() != k)
        fail("kvfuse_ctx_select_rows picked " + std::to_string(count) + " (f32) and " + std::to_string(engine.selected_count()) +
             " (int8) rows, expected floor(ratio * (P + documents)) = " + std::to_string(k));
    const double kth = sorted[k - 1];
    // Scores: f32 within rounding; int8 within its quantization. Rows: each one picked scores at
    // least the k-th best score, less what that precision may misjudge.
    struct Precision {
        const char* name;
        const float* scores;
        const std::int64_t* rows;
        double score_tolerance;
    } precisions[] = {{"f32", f32_scores.data(), rows.data(), 1e-4 * top}, {"int8", engine.scores(), engine.selected(), 0.02 * top}};
    for (const Precision& p : precisions) {
        double worst = 0.0, lowest = top;
        for (std::size_t j = 0; j < docs; ++j) {
            const double diff = std::fabs(p.scores[j] - expected[j]);
            worst = std::max(worst, diff);
            if (!(diff <= p.score_tolerance))
                fail(std::string(p.name) + " A3 score of document row " + std::to_string(j) + " is " + std::to_string(p.scores[j]) +
                     ", straightforward A3 gives " + std::to_string(expected[j]));
        }
        std::size_t among_best = 0;
        for (std::size_t i = 0; i < k; ++i) {
            const double score = expected[static_cast<std::size_t>(p.rows[i]) - plan.prefix_rows];
            lowest = std::min(lowest, score);
            among_best += score >= kth;
            if (!(score >= kth - 2 * p.score_tolerance))
                fail(std::string(p.name) + " selection picked row " + std::to_string(p.rows[i]) + " of score " + std::to_string(score) +
                     ", below the k-th best " + std::to_string(kth));
        }
        std::printf("  %s selection: scores within %.1e (top %.3g), %zu of %zu rows among the exact top %zu\n", p.name, worst, top,
                    among_best, k, k);
    }
}

void verify(Engine& engine, const RequestPlan& plan) {
    check_against_contiguous(engine, plan);
    std::printf("  contiguous f16 replay: cache and attention bit for bit\n");
    check_f32_copy(engine, plan);
    check_independently(engine, plan);
    check_selection(engine, plan);
}

std::size_t option(int argc, char** argv, const char* name, std::size_t fallback) {
    for (int i = 1; i + 1 < argc; ++i)
        if (std::strcmp(argv[i], name) == 0) return static_cast<std::size_t>(std::strtoul(argv[i + 1], nullptr, 10));
    return fallback;
}

}  // namespace

int main(int argc, char** argv) {
    const std::size_t requests = std::max<std::size_t>(2, option(argc, argv, "--requests", 3));
    const std::size_t workers = option(argc, argv, "--workers", 2);
    // While 0.x, another minor version is another ABI.
    if (kvfuse_version_number() / 100 != KVFUSE_VERSION_NUMBER / 100)
        fail(std::string("built against kvfuse ") + KVFUSE_VERSION_STRING + ", running with " + kvfuse_version_string());
    kvfuse_isa isa;
    require(kvfuse_active_isa(&isa), "kvfuse_active_isa");
    std::printf("kvfuse %s, ISA %s; pool of %zu threads + the caller\n", kvfuse_version_string(), kvfuse_isa_name(isa), workers);

    // Relative to the threads before the pool: an emulator (qemu-user) has threads of its own.
    const std::size_t before_pool = process_threads();
    ThreadPool pool(workers);
    const std::size_t expected_threads = before_pool + workers;
    if (process_threads() != expected_threads)
        fail("the process has " + std::to_string(process_threads()) + " threads before any kvfuse call, expected " +
             std::to_string(expected_threads));
    // One context for the engine's thread: its workers are the pool's tasks; built-in tuning
    // (no profile file read).
    kvfuse_context_options options;
    kvfuse_context_options_init(&options);
    options.threads = static_cast<int>(workers + 1);
    options.parallel_for = &ThreadPool::parallel_for;
    options.parallel_for_user = &pool;
    kvfuse_context* context = nullptr;
    require(kvfuse_context_create(&options, &context), "kvfuse_context_create");

    kvfuse_rope_config rope;
    kvfuse_rope_config_init(&rope, static_cast<std::int32_t>(kModel.head_dim));
    const std::vector<float> topic = question_topic(kModel, 7);
    std::vector<StoredChunk> store;
    std::size_t documents = 0;
    for (std::size_t c = 0; c < std::size(kChunkTokens); ++c) {
        store.push_back(compute_chunk(kModel, rope, context, c, kChunkTokens[c], topic));
        documents += kChunkTokens[c];
    }
    const std::size_t max_tokens = kPrefixRows + documents + kQuestionRows;
    Engine engine(kModel, rope, store, topic, context, kPoolBlocks, kBlockSize, max_tokens, kQuestionRows, kRatio);
    ThreadCheck threads(expected_threads);
    std::printf("%zu chunks (%zu tokens), %zu layers, %zu query heads / %zu KV heads x %zu, %zu-token f16 blocks\n",
                store.size(), documents, kModel.layers, kModel.query_heads, kModel.kv_heads, kModel.head_dim, kBlockSize);

    for (std::size_t r = 0; r < requests; ++r) {
        std::vector<std::size_t> order(store.size());
        // Two chunk orders in turn: a request in an order seen before places its chunks at positions
        // (RoPE deltas) seen before, so its RoPE calls must allocate nothing.
        for (std::size_t c = 0; c < order.size(); ++c) order[c] = (c * 3 + r % 2) % order.size();
        const RequestPlan plan = make_plan(r, store, order, kPrefixRows, kQuestionRows);
        allocation_counter::reset();
        engine.run(plan, threads);
        const long engine_allocations = allocation_counter::count(0), select_allocations = allocation_counter::count(1),
                   rope_allocations = allocation_counter::count(2);
        std::printf("request %zu: %zu tokens, %zu rows selected; heap allocations: %ld in attention, conversions and "
                    "the engine's code, %ld in RoPE calls, %ld in kvfuse_ctx_select_rows\n",
                    r, plan.tokens(), engine.selected_count(), engine_allocations, rope_allocations, select_allocations);
        verify(engine, plan);
        engine.end_request(plan);
        if (r >= 2 && allocation_counter::available() && rope_allocations != 0)
            fail("request " + std::to_string(r) + " made " + std::to_string(rope_allocations) +
                 " heap allocations in RoPE calls at positions seen before (expected 0)");
        if (r > 0 && allocation_counter::available() && engine_allocations != 0)
            fail("request " + std::to_string(r) + " made " + std::to_string(engine_allocations) +
                 " heap allocations in attention, conversions or the engine's own code after warm-up (expected 0)");
        if (r > 0 && allocation_counter::available() && select_allocations != 0)
            fail("request " + std::to_string(r) + " made " + std::to_string(select_allocations) +
                 " heap allocations in kvfuse_ctx_select_rows after warm-up (expected 0)");
    }
    if (!allocation_counter::available()) std::printf("allocations not counted: a sanitizer owns malloc\n");
    if (pool.tasks_on_workers() == 0) fail("no kvfuse task ran on the engine's pool: parallel_for was never used");
    std::printf("%zu kvfuse tasks ran on the pool's threads; no other thread was started\n", pool.tasks_on_workers());
    kvfuse_context_destroy(context);
    std::printf("fused_request: OK\n");
    return 0;
}
