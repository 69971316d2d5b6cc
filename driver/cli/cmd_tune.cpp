// `kvfuse tune`: measures each kernel's parameters on this machine and writes the profile the
// library loads at start-up.
//
// Shapes come from a GGUF model (heads, KV heads, head dim, context) or a default set (32 / 8
// heads of 128, 4096 tokens). Every search starts from the built-in default; a candidate
// replaces it only if a final side-by-side round (default and candidate alternating, medians)
// confirms it is faster by more than the noise margin, so a tuned setting never loses to the
// default by more than noise.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "kvfuse/kvfuse.hpp"
#include "model/gguf.h"
#include "model/llama_model.h"

namespace kvfuse::cli {

namespace {

constexpr double kMargin = 0.97;  // a candidate must beat the default by 3 %

struct Shapes {
    std::size_t heads = 32, kv_heads = 8, head_dim = 128, context = 4096;
    std::string source = "default shapes";
};

double seconds_of(const std::function<void()>& f) {
    const auto start = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Median time of `run` under tuning `t`, `repeats` timed runs after one warm-up.
double time_with(const Tuning& t, int repeats, const std::function<void()>& run) {
    if (!set_tuning(&t).ok()) throw std::runtime_error("invalid tuning candidate");
    run();
    std::vector<double> times;
    for (int r = 0; r < repeats; ++r) times.push_back(seconds_of(run));
    return median(times);
}

struct Choice {
    Tuning tuning;
    double default_seconds = 0, tuned_seconds = 0;
    bool changed = false;
};

// Tries every candidate, then confirms the fastest against the default side by side.
Choice search(const char* what, const Tuning& base, const std::vector<Tuning>& candidates, int repeats,
              const std::function<void()>& run) {
    std::fprintf(stderr, "tune: %s: %zu settings", what, candidates.size());
    std::size_t best = 0;
    double best_time = 1e300;
    for (std::size_t i = 0; i < candidates.size(); ++i) {
        const double t = time_with(candidates[i], repeats, run);
        if (t < best_time) best_time = t, best = i;
        std::fputc('.', stderr);
    }
    Choice c;
    c.tuning = base;
    std::vector<double> base_times, best_times;
    for (int r = 0; r < std::max(3, repeats); ++r) {
        base_times.push_back(time_with(base, 1, run));
        best_times.push_back(time_with(candidates[best], 1, run));
    }
    c.default_seconds = median(base_times);
    c.tuned_seconds = median(best_times);
    if (c.tuned_seconds < kMargin * c.default_seconds) {
        c.tuning = candidates[best];
        c.changed = true;
    } else {
        c.tuned_seconds = c.default_seconds;
    }
    std::fprintf(stderr, " default %.3f ms, tuned %.3f ms%s\n", 1e3 * c.default_seconds, 1e3 * c.tuned_seconds,
                 c.changed ? "" : " (default kept)");
    (void)set_tuning(&base);
    return c;
}

std::vector<float> random_floats(std::size_t n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
}

// The work size above which running on every thread beats one thread: the smallest size of
// the ladder where the parallel run is faster by the margin (the geometric mean with the size
// below it), or past the ladder's end when it never is.
std::uint64_t crossover(const char* what, const Tuning& base, std::uint64_t Tuning::*field,
                        const std::vector<std::uint64_t>& work, int repeats,
                        const std::function<void(std::size_t)>& run_size, nlohmann::json& record) {
    std::fprintf(stderr, "tune: %s: one thread vs %d threads at %zu sizes", what, omp_get_max_threads(), work.size());
    Tuning serial = base, parallel = base;
    serial.*field = ~std::uint64_t{0};
    parallel.*field = 0;
    std::uint64_t threshold = work.back() * 2;
    for (std::size_t i = 0; i < work.size(); ++i) {
        std::vector<double> s, p;
        for (int r = 0; r < std::max(3, repeats); ++r) {
            s.push_back(time_with(serial, 1, [&] { run_size(i); }));
            p.push_back(time_with(parallel, 1, [&] { run_size(i); }));
        }
        const double ts = median(s), tp = median(p);
        record.push_back({{"work", work[i]}, {"one_thread_ms", 1e3 * ts}, {"all_threads_ms", 1e3 * tp}});
        std::fputc('.', stderr);
        if (tp < kMargin * ts) {
            threshold = i == 0 ? work[0] / 2
                               : static_cast<std::uint64_t>(std::sqrt(static_cast<double>(work[i - 1]) * work[i]));
            break;
        }
    }
    std::fprintf(stderr, " parallel above %llu\n", static_cast<unsigned long long>(threshold));
    (void)set_tuning(&base);
    return threshold;
}

int run_tune(const std::string& model_path, std::string out_path, bool quick) {
    Shapes shapes;
    if (!model_path.empty()) {
        const auto file = model::GgufFile::open(model_path);
        const model::LlamaModel model(file);
        const auto& s = model.shape();
        shapes.heads = static_cast<std::size_t>(s.heads);
        shapes.kv_heads = static_cast<std::size_t>(s.kv_heads);
        shapes.head_dim = static_cast<std::size_t>(s.head_dim);
        shapes.context = static_cast<std::size_t>(s.context);
        shapes.source = model_path;
    }
    if (out_path.empty()) out_path = default_profile_path();
    if (out_path.empty()) {
        std::fprintf(stderr, "kvfuse: error: no default profile location (set HOME or XDG_CACHE_HOME) and no --out\n");
        return 1;
    }
    {
        // Fail before minutes of measuring, not after, when the profile cannot be written there.
        std::error_code ec;
        const std::filesystem::path parent = std::filesystem::path(out_path).parent_path();
        if (!parent.empty()) std::filesystem::create_directories(parent, ec);
        if (ec || (!parent.empty() && !std::filesystem::is_directory(parent))) {
            std::fprintf(stderr, "kvfuse: error: cannot create %s for the profile: %s\n", parent.c_str(),
                         ec ? ec.message().c_str() : "not a directory");
            return 1;
        }
    }
    const int repeats = quick ? 1 : 3;
    Isa isa = Isa::scalar;
    if (Status s = active_isa(isa); !s.ok()) {
        std::fprintf(stderr, "kvfuse: error: %s\n", s.message().c_str());
        return 1;
    }
    const std::size_t H = shapes.heads, Hkv = shapes.kv_heads, D = shapes.head_dim;
    std::fprintf(stderr, "tune: isa %s, %d threads, shapes from %s: H %zu, Hkv %zu, D %zu, context %zu%s\n",
                 isa_name(isa), omp_get_max_threads(), shapes.source.c_str(), H, Hkv, D, shapes.context,
                 quick ? " (quick)" : "");
    const Tuning defaults = default_tuning();
    Tuning tuned = defaults;
    nlohmann::json record;
    record["isa"] = isa_name(isa);
    record["threads"] = omp_get_max_threads();
    record["shapes"] = {{"source", shapes.source}, {"heads", H}, {"kv_heads", Hkv}, {"head_dim", D}, {"context", shapes.context}};
    record["quick"] = quick;
    auto note = [&](const char* name, const Choice& c, nlohmann::json settings) {
        record[name] = {{"default_ms", 1e3 * c.default_seconds}, {"tuned_ms", 1e3 * c.tuned_seconds},
                        {"changed", c.changed}, {"settings", std::move(settings)}};
    };

    // Attention: key tile x row block, at ratio 0.15 of a context-long cache.
    {
        const std::size_t T = std::min<std::size_t>(shapes.context, quick ? 512 : 2048);
        const std::size_t n = std::max<std::size_t>(1, T * 15 / 100);
        const auto q = random_floats(n * H * D, 1), k = random_floats(T * Hkv * D, 2), v = random_floats(T * Hkv * D, 3);
        std::vector<float> out(n * H * D);
        std::vector<std::int64_t> positions(n);
        for (std::size_t i = 0; i < n; ++i) positions[i] = static_cast<std::int64_t>(T - n + i);
        const AttentionArgs a =
            contiguous_attention_args(q.data(), n, positions.data(), H, k.data(), v.data(), T, Hkv, D, out.data());
        std::vector<Tuning> candidates;
        for (std::uint32_t tile : {0u, 32u, 64u, 128u})
            for (std::uint32_t block : {4u, 8u, 16u, 32u}) {
                Tuning t = tuned;
                t.attention_key_tile = tile;
                t.attention_row_block = block;
                candidates.push_back(t);
            }
        const Choice c = search("attention key tile x row block", tuned, candidates, repeats,
                                [&] { (void)kvfuse_sparse_attention(&a); });
        tuned = c.tuning;
        note("attention", c, {{"attention_key_tile", tuned.attention_key_tile}, {"attention_row_block", tuned.attention_row_block},
                              {"tokens", T}, {"rows", n}});
    }
    // Scoring: register block rows, int8 keys, 32 question rows.
    {
        const std::size_t T = std::min<std::size_t>(shapes.context, quick ? 1024 : 8192), M = std::min<std::size_t>(32, T);
        const auto q = random_floats(M * H * D, 4), k = random_floats(T * Hkv * D, 5);
        std::vector<std::int8_t> q8(q.size()), k8(k.size());
        std::vector<float> qs(M * H), ks(T * Hkv), means(Hkv * D), out(T);
        (void)quantize_rows_i8(q.data(), M, H, D, H * D, q8.data(), qs.data());
        (void)quantize_keys_i8(k.data(), T, Hkv, D, Hkv * D, k8.data(), ks.data(), means.data());
        RelevanceArgs a{};
        a.question_rows = M;
        a.candidates = T;
        a.query_heads = H;
        a.kv_heads = Hkv;
        a.head_dim = D;
        a.queries_i8 = q8.data();
        a.query_scales = qs.data();
        a.keys_i8 = k8.data();
        a.key_scales = ks.data();
        a.smoothing = 1;
        a.out = out.data();
        std::vector<Tuning> candidates;
        for (std::uint32_t rows : {4u, 2u, 6u}) {
            Tuning t = tuned;
            t.score_query_rows = rows;
            candidates.push_back(t);
        }
        const Choice c = search("scoring row block", tuned, candidates, repeats, [&] { (void)a3_relevance(a); });
        tuned = c.tuning;
        note("score", c, {{"score_query_rows", tuned.score_query_rows}, {"keys", T}, {"question_rows", M}});
    }
    // Top-k: bracket sample size, k = 15 % of the keys of a long context.
    {
        const std::size_t n = quick ? 16384 : 131072, k = n * 15 / 100;
        const auto scores = random_floats(n, 6);
        std::vector<std::int64_t> out(k);
        std::vector<Tuning> candidates;
        for (std::uint32_t sample = 256; sample <= 8192; sample *= 2) {
            Tuning t = tuned;
            t.topk_sample = sample;
            candidates.push_back(t);
        }
        const Choice c = search("top-k sample size", tuned, candidates, quick ? 3 : 15, [&] {
            std::size_t count = 0;
            (void)topk(scores.data(), n, k, TopkOrder::by_position, out.data(), count);
        });
        tuned = c.tuning;
        note("topk", c, {{"topk_sample", tuned.topk_sample}, {"n", n}, {"k", k}});
    }
    // Thread counts by problem size: where going parallel starts to pay.
    if (omp_get_max_threads() > 1) {
        nlohmann::json rope_record = nlohmann::json::array();
        std::vector<std::size_t> tokens = {8, 32, 128, 512, 2048};
        std::vector<std::uint64_t> work;
        for (std::size_t t : tokens) work.push_back(t * Hkv * D);
        auto keys = random_floats(tokens.back() * Hkv * D, 7);
        RopeConfig config;
        config.head_dim = static_cast<int>(D);
        tuned.rope_parallel_work = crossover("rope parallel threshold", tuned, &Tuning::rope_parallel_work, work, repeats,
                                             [&](std::size_t i) {
                                                 (void)rope_rotate_span(config, keys.data(), tokens[i], Hkv, Hkv * D,
                                                                        std::int64_t{17});
                                             },
                                             rope_record);
        record["rope_parallel"] = rope_record;

        nlohmann::json score_record = nlohmann::json::array();
        std::vector<std::size_t> keys_count = {16, 64, 256, 1024, 4096};
        const std::size_t M = 4;
        const auto q = random_floats(M * H * D, 8), k = random_floats(keys_count.back() * Hkv * D, 9);
        std::vector<float> out(keys_count.back());
        work.clear();
        for (std::size_t c : keys_count) work.push_back(M * c * H * D);
        tuned.score_parallel_work = crossover("scoring parallel threshold", tuned, &Tuning::score_parallel_work, work,
                                              repeats,
                                              [&](std::size_t i) {
                                                  RelevanceArgs a{};
                                                  a.question_rows = M;
                                                  a.candidates = keys_count[i];
                                                  a.query_heads = H;
                                                  a.kv_heads = Hkv;
                                                  a.head_dim = D;
                                                  a.queries_f32 = q.data();
                                                  a.keys_f32 = k.data();
                                                  a.out = out.data();
                                                  (void)a3_relevance(a);
                                              },
                                              score_record);
        record["score_parallel"] = score_record;

        nlohmann::json attention_record = nlohmann::json::array();
        // One row (a decode step) over a growing cache, then growing row counts over 256 keys.
        struct Size {
            std::size_t rows, tokens;
        };
        const std::vector<Size> sizes = {{1, 8}, {1, 32}, {1, 128}, {4, 256}, {16, 256}, {64, 256}};
        const std::size_t T = 256, max_rows = 64;
        const auto aq = random_floats(max_rows * H * D, 10), ak = random_floats(T * Hkv * D, 11),
                   av = random_floats(T * Hkv * D, 12);
        std::vector<float> aout(max_rows * H * D);
        std::vector<std::int64_t> positions(max_rows);
        work.clear();
        for (const Size& size : sizes) {
            double w = 0;
            for (std::size_t i = 0; i < size.rows; ++i) w += static_cast<double>(size.tokens - size.rows + i + 1);
            work.push_back(static_cast<std::uint64_t>(w * static_cast<double>(H * D)));
        }
        tuned.attention_parallel_work = crossover("attention parallel threshold", tuned, &Tuning::attention_parallel_work,
                                                  work, repeats,
                                                  [&](std::size_t i) {
                                                      const std::size_t n = sizes[i].rows, tokens = sizes[i].tokens;
                                                      for (std::size_t r = 0; r < n; ++r)
                                                          positions[r] = static_cast<std::int64_t>(tokens - n + r);
                                                      (void)sparse_attention(contiguous_attention_args(
                                                          aq.data(), n, positions.data(), H, ak.data(), av.data(),
                                                          tokens, Hkv, D, aout.data(), 0.1f));
                                                  },
                                                  attention_record);
        record["attention_parallel"] = attention_record;
    } else {
        std::fprintf(stderr, "tune: one thread: parallel thresholds left at their defaults\n");
    }

    const Status saved = save_profile(out_path, tuned, record.dump());
    if (!saved.ok()) {
        std::fprintf(stderr, "kvfuse: error: %s\n", saved.message().c_str());
        return 1;
    }
    if (Status loaded = load_profile(out_path); !loaded.ok()) {
        std::fprintf(stderr, "kvfuse: error: the profile just written does not load: %s\n", loaded.message().c_str());
        return 1;
    }
    std::printf("profile written: %s\n", out_path.c_str());
    std::printf("attention key tile %u%s, row block %u; scoring rows %u; top-k sample %u;\n"
                "parallel above: rope %llu, attention %llu, scoring %llu\n",
                tuned.attention_key_tile, tuned.attention_key_tile == 0 ? " (from L1 size)" : "", tuned.attention_row_block,
                tuned.score_query_rows, tuned.topk_sample, static_cast<unsigned long long>(tuned.rope_parallel_work),
                static_cast<unsigned long long>(tuned.attention_parallel_work),
                static_cast<unsigned long long>(tuned.score_parallel_work));
    return 0;
}

}  // namespace

void add_tune_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("tune", "Measure the kernels' parameters on this machine and write its profile");
    auto model = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    auto quick = std::make_shared<bool>(false);
    cmd->add_option("--model", *model, "GGUF model whose shapes to tune for (default: 32/8 heads of 128, 4096 tokens)")
        ->check(CLI::ExistingFile);
    cmd->add_option("--out", *out, "Profile path (default: this machine's default location, see `kvfuse info`)");
    cmd->add_flag("--quick", *quick, "Small problem sizes and single runs: seconds, for a smoke test");
    cmd->callback([=] { g_exit_status = run_tune(*model, *out, *quick); });
}

}  // namespace kvfuse::cli
