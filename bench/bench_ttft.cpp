// End-to-end time to first token (TTFT) of the fusion pipeline on a random-weight llama model
// of realistic shape (`kvfuse make-model`; issue 6), every method side by side.
//
// Request: BOS ‖ N/512 chunks of 512 random token ids ‖ a 32-token question. Every chunk's
// cache is computed alone (compute_chunk_kv) before timing and held in memory, so TTFT is the
// request's own work: re-rotating and copying the stored K/V, the full layers, the selection,
// the recomputed rows and the logits (reading chunk files from disk is measured separately in
// bench_chunk_store, docs/STORE.md).
//
// One benchmark per context length N (`ttft/ctx:N`). Each iteration is one round that runs
// full prefill, reuse, epic, cacheblend, a3 (ratio 0.15) and a3-pipelined (the same with
// pipelined loading: FusionOptions::pipelined_loading), plus a3 at the --ratios at the
// ratio-sweep context, back to back, starting at a different method each round; the
// counters are per-method medians over the rounds, so every speed-up is measured under the
// same noise as its reference. The benchmark's own time is the round's wall time.
//   <m>_ms          median TTFT (wall time of run_request and the first token's argmax)
//   <m>_x           full prefill's median TTFT / <m>'s
//   <m>_<stage>_ms  the StageTimes of <m>'s median round (load, rotate, full_layers, select,
//                   recompute, logits; `other` = TTFT - their sum: embedding, bookkeeping)
//   <m>_dense_ms    of the TTFT, the time inside the model's dense layers (all stages)
//   <m>_recompute   rows pushed through layers / (layers x T)
//   <m>_ratio       the selection ratio (cacheblend and a3 variants only)
//   <m>_background_load_ms   a3-pipelined: the loading thread's busy time, overlapped (its
//                   `load` is the time the layers waited for it)
//   full_tokens_per_s         T / full prefill TTFT
//   dense_GFLOP/s, dense_pct_peak   the dense layers (Q/K/V/O projections, MLP, logits, with
//       their norms, RoPE and SiLU) inside full prefill, timed at the model interface, against
//       the f32 FMA peak measured in this run on the same threads (roofline.h; the highest of
//       the measurements at start-up and after each benchmark, as noise only lowers it)
//   prefill_GFLOP/s, prefill_pct_peak   all of full prefill's FLOPs (dense + causal attention,
//       4 D per visible (row, head, key)) over its TTFT
//
// Own flags (before Google Benchmark's):
//   --model=FILE       a GGUF model to use (else one is generated into a temporary directory;
//                      also $KVFUSE_E2E_MODEL)
//   --size=realistic|small|1b   the generated shape: realistic = dim 1024, 16 layers, 16 heads,
//                      4 KV heads, head dim 64, ffn 2816, vocab 32000 (default); small = dim
//                      256, 16 layers, 4 heads, 1 KV head, ffn 768 (a multiple of Q4_K's 256),
//                      vocab 8000 (quick runs);
//                      1b = Llama 3.2 1B's shape: dim 2048, 16 layers, 32 heads, 8 KV heads,
//                      head dim 64, ffn 8192, vocab 128256 (1.24 G parameters)
//   --dtype=f32|bf16|q4_k_m   storage of the generated model's matrices (bf16: the dense layers
//                      run kvfuse_gemm's bf16 path; q4_k_m: llama.cpp's Q4_K/Q6_K mix, kept
//                      compact, codes drawn directly by `make-model --random-codes`)
//   --methods=LIST     only these variants (labels as in the tables: full, reuse, epic,
//                      cacheblend, a3, a3-pipelined); full always runs (the x_full base)
//   --contexts=LIST    document tokens per request, multiples of 512 (default 4096)
//   --ratios=LIST      extra a3 ratios at the ratio-sweep context (default none, to keep the
//                      default run to a few minutes; the sweep: --ratios=0.05,0.1,0.25,0.5)
//   --ratio-context=N  where the ratio sweep runs (default 4096; it must be in --contexts)
//   --rounds=N         rounds per context (default 3)
// Counters of the whole run on every row: peak_rss_MiB (the process's peak resident set, chunk
// cache computation included), model_file_MiB, kv_MiB (the request's fused cache plus the
// chunk caches held in memory, f32 K and V and their int8/int4 keys).
// Markdown tables of the results are printed to stderr at the end.
#include <cblas.h>
#include <omp.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_support.h"
#include "fusion/loaded_model.h"
#include "fusion/pipeline.h"
#include "model/llama_model.h"
#include "roofline.h"

extern char** environ;

namespace {

using namespace kvfuse::fusion;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kChunkTokens = 512, kQuestionTokens = 32;
constexpr double kMainRatio = 0.15;

struct Config {
    std::string model;
    std::string size = "realistic";
    std::string dtype = "f32";
    std::vector<int> contexts = {4096};
    std::vector<double> ratios;  // a3 at 0.15 always runs
    int ratio_context = 4096;
    int rounds = 3;
    std::vector<std::string> methods;  // empty: every variant
};

// The variants every context runs (--methods picks among them by label; full always runs).
struct Variant {
    std::string label;
    Method method;
    double ratio;
    bool pipelined = false;  // FusionOptions::pipelined_loading
};

std::vector<Variant> main_variants() {
    return {{"full", Method::full, 1.0},
            {"reuse", parse_method("reuse"), kMainRatio},
            {"epic", parse_method("epic"), kMainRatio},
            {"cacheblend", parse_method("cacheblend"), kMainRatio},
            {"a3", Method::a3, kMainRatio},
            // The same with each layer's stored rows loaded on a thread of its own while the
            // layer before is computed.
            {"a3-pipelined", Method::a3, kMainRatio, true}};
}

// ---------------------------------------------------------------------------------------------
// Command line

std::vector<std::string> split_list(const std::string& text) {
    std::vector<std::string> out;
    std::stringstream in(text);
    for (std::string item; std::getline(in, item, ',');)
        if (!item.empty()) out.push_back(item);
    return out;
}

double parse_number(const std::string& flag, const std::string& text) {
    std::size_t used = 0;
    double value = 0;
    try {
        value = std::stod(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used == 0 || used != text.size() || !std::isfinite(value))
        throw std::invalid_argument(flag + ": '" + text + "' is not a number");
    return value;
}

int parse_int(const std::string& flag, const std::string& text) {
    const double value = parse_number(flag, text);
    if (value != std::floor(value) || value < 1 || value > 1e7) throw std::invalid_argument(flag + ": '" + text + "' is not a positive integer");
    return static_cast<int>(value);
}

// Takes this program's flags out of argv (Google Benchmark rejects flags it does not know).
Config parse_config(int& argc, char** argv) {
    Config c;
    if (const char* env = std::getenv("KVFUSE_E2E_MODEL"); env != nullptr && *env != '\0') c.model = env;
    int kept = 1;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        const auto eq = arg.find('=');
        const std::string flag = arg.substr(0, eq), value = eq == std::string::npos ? "" : arg.substr(eq + 1);
        const bool ours = flag == "--model" || flag == "--size" || flag == "--dtype" || flag == "--contexts" ||
                          flag == "--ratios" || flag == "--ratio-context" || flag == "--rounds" || flag == "--methods";
        if (!ours) {
            argv[kept++] = argv[i];
            continue;
        }
        if (eq == std::string::npos || (value.empty() && flag != "--ratios")) throw std::invalid_argument(flag + " needs a value (" + flag + "=...)");
        if (flag == "--model") {
            c.model = value;
        } else if (flag == "--size") {
            if (value != "realistic" && value != "small" && value != "1b")
                throw std::invalid_argument("--size must be realistic, small or 1b");
            c.size = value;
        } else if (flag == "--dtype") {
            if (value != "f32" && value != "bf16" && value != "q4_k_m") throw std::invalid_argument("--dtype must be f32, bf16 or q4_k_m");
            c.dtype = value;
        } else if (flag == "--contexts") {
            c.contexts.clear();
            for (const auto& item : split_list(value)) {
                const int n = parse_int(flag, item);
                if (n % static_cast<int>(kChunkTokens) != 0)
                    throw std::invalid_argument("--contexts: " + item + " is not a multiple of the 512-token chunk");
                c.contexts.push_back(n);
            }
            if (c.contexts.empty()) throw std::invalid_argument("--contexts is empty");
        } else if (flag == "--ratios") {
            c.ratios.clear();
            for (const auto& item : split_list(value)) {
                const double r = parse_number(flag, item);
                if (!(r > 0.0 && r <= 1.0)) throw std::invalid_argument("--ratios: " + item + " is not in (0, 1]");
                if (r != kMainRatio) c.ratios.push_back(r);
            }
        } else if (flag == "--ratio-context") {
            c.ratio_context = parse_int(flag, value);
        } else if (flag == "--methods") {
            c.methods = split_list(value);
            const std::vector<Variant> known = main_variants();
            for (const std::string& m : c.methods)
                if (std::none_of(known.begin(), known.end(), [&](const Variant& v) { return v.label == m; }))
                    throw std::invalid_argument("--methods: unknown variant '" + m + "'");
        } else if (flag == "--rounds") {
            c.rounds = parse_int(flag, value);
            if (c.rounds > 100) throw std::invalid_argument("--rounds must be at most 100");
        }
    }
    argc = kept;
    argv[argc] = nullptr;
    return c;
}

// ---------------------------------------------------------------------------------------------
// The model: generated by the same `kvfuse make-model` users run (so the benchmark links no
// generator code of its own), or given.

void run_program(const std::vector<std::string>& args) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);  // keep stdout for the results
    pid_t pid = 0;
    const int error = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (error != 0) throw std::runtime_error(args[0] + ": cannot start: " + std::strerror(error));
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) throw std::runtime_error("waitpid failed");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error(args[0] + " " + args[1] + " failed");
}

struct TempDir {
    std::filesystem::path path;
    ~TempDir() {
        std::error_code ignored;
        if (!path.empty()) std::filesystem::remove_all(path, ignored);
    }
};

std::string generate_model(const Config& c, TempDir& dir) {
    std::string pattern = (std::filesystem::temp_directory_path() / "kvfuse-bench-ttft-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("cannot create a temporary directory: " + std::string(std::strerror(errno)));
    dir.path = pattern;
    const std::string file = (dir.path / ("random-" + c.size + "-" + c.dtype + ".gguf")).string();
    std::vector<std::string> args = {KVFUSE_CLI, "make-model", "--out", file, "--dtype", c.dtype, "--seed", "1", "--context", "32768"};
    // Uniform random weights quantized by the scale search would take minutes at 1B; drawn
    // codes give the same layout and speed.
    if (c.dtype == "q4_k_m") args.emplace_back("--random-codes");
    if (c.size == "small") {
        for (const char* a : {"--dim", "256", "--layers", "16", "--heads", "4", "--kv-heads", "1", "--hidden", "768", "--vocab", "8000"})
            args.emplace_back(a);
    } else if (c.size == "1b") {
        for (const char* a : {"--dim", "2048", "--layers", "16", "--heads", "32", "--kv-heads", "8", "--hidden", "8192", "--vocab", "128256"})
            args.emplace_back(a);
    } else {
        for (const char* a : {"--dim", "1024", "--layers", "16", "--heads", "16", "--kv-heads", "4", "--hidden", "2816", "--vocab", "32000"})
            args.emplace_back(a);
    }
    run_program(args);
    return file;
}

// The model seen by the pipeline, with the dense layers timed at its interface: every call
// that runs the model's matrix products is timed and its multiply-add count added up.
class TimedModel : public FusionModel {
   public:
    TimedModel(const kvfuse::model::LlamaModel& model) : m_(model), ffn_(static_cast<double>(model.hidden_size_ffn())) {}
    const ModelShape& shape() const override { return m_.shape(); }
    std::string fingerprint() const override { return m_.fingerprint(); }
    std::int32_t bos() const override { return m_.bos(); }
    void embed(std::span<const std::int32_t> tokens, float* hidden) const override { m_.embed(tokens, hidden); }
    void project_qkv(kvfuse::Context& context, int layer, const float* hidden, std::size_t n, const std::int64_t* positions,
                     float* q, float* k, float* v) const override {
        const auto t0 = Clock::now();
        m_.project_qkv(context, layer, hidden, n, positions, q, k, v);
        add(t0, 2.0 * n * dim() * static_cast<double>(shape().q_row() + 2 * shape().kv_row()));
    }
    void finish_layer(kvfuse::Context& context, int layer, const float* attention, std::size_t n,
                      float* hidden) const override {
        const auto t0 = Clock::now();
        m_.finish_layer(context, layer, attention, n, hidden);
        add(t0, 2.0 * n * (static_cast<double>(shape().q_row()) * dim() + 3.0 * dim() * ffn_));
    }
    void logits(kvfuse::Context& context, const float* hidden, std::size_t n, float* out) const override {
        const auto t0 = Clock::now();
        m_.logits(context, hidden, n, out);
        add(t0, 2.0 * n * dim() * shape().vocab);
    }
    void reset() const { seconds_ = flops_ = 0; }
    double seconds() const { return seconds_; }
    double flops() const { return flops_; }

   private:
    double dim() const { return static_cast<double>(shape().dim); }
    void add(Clock::time_point t0, double flops) const {
        seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
        flops_ += flops;
    }
    const kvfuse::model::LlamaModel& m_;
    double ffn_;
    mutable double seconds_ = 0, flops_ = 0;
};

struct Fixture {
    Config config;
    TempDir temp;
    std::string path;
    LoadedModel loaded;
    const kvfuse::model::LlamaModel* llama = nullptr;
    std::unique_ptr<TimedModel> timed;
    std::string shape_text;
    std::uintmax_t file_bytes = 0;
    std::vector<TokenIds> chunk_pool;  // chunk i of every request is chunk_pool[i]
    std::vector<ChunkKv> chunk_caches;
    TokenIds question;
};

Fixture* g_fixture = nullptr;

void ensure_chunk_caches(Fixture& f, std::size_t count) {
    std::mt19937 rng(42);
    std::uniform_int_distribution<std::int32_t> token(3, f.llama->shape().vocab - 1);  // no <unk>, <s>, </s>
    if (f.question.empty()) {
        // The draws do not depend on how many chunks exist, so a longer context extends a shorter one.
        f.question.resize(kQuestionTokens);
        for (auto& t : f.question) t = token(rng);
    }
    while (f.chunk_pool.size() < count) {
        std::mt19937 chunk_rng(1000 + static_cast<unsigned>(f.chunk_pool.size()));
        TokenIds ids(kChunkTokens);
        for (auto& t : ids) t = token(chunk_rng);
        f.chunk_caches.push_back(compute_chunk_kv(*f.llama, ids));
        f.chunk_pool.push_back(std::move(ids));
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement

struct VariantResult {
    Variant variant;
    double ttft_ms = 0, x_full = 0, recompute = 0, other_ms = 0;
    double dense_ms = 0;  // of which in the model's dense layers (all stages together)
    StageTimes stages;
};

struct ContextResult {
    int context = 0;
    std::size_t total_tokens = 0;
    int rounds = 0;
    std::vector<VariantResult> variants;
    double tokens_per_s = 0, dense_gflops = 0, prefill_gflops = 0, peak_gflops = 0;
    const char* peak_isa = "";
};

std::vector<ContextResult> g_results;

// The FMA peak is a property of the machine; noise (another process taking a core for a
// moment) can only lower a measurement of it. So the peak used is the highest measured so far
// in this run: at start-up and after every benchmark.
double g_peak_gflops = 0;

int peak_isa();
double update_peak(int threads, int measurements = 1) {
    for (int i = 0; i < measurements; ++i)
        g_peak_gflops = std::max(g_peak_gflops, kvfuse::bench::measure_f32_fma_peak_gflops(peak_isa(), threads));
    return g_peak_gflops;
}

int peak_isa() { return kvfuse::isa_supported(kvfuse::Isa::avx512) ? static_cast<int>(kvfuse::Isa::avx512) : static_cast<int>(kvfuse::Isa::avx2); }

void ttft_bench(benchmark::State& state, int context) {
    Fixture& f = *g_fixture;
    const ModelShape& s = f.llama->shape();
    Request request;
    request.id = "bench";
    request.kind = "user";
    request.prefix = {f.llama->bos()};
    const std::size_t chunks = static_cast<std::size_t>(context) / kChunkTokens;
    const std::size_t T = 1 + static_cast<std::size_t>(context) + kQuestionTokens;
    if (s.context > 0 && T > static_cast<std::size_t>(s.context)) {
        state.SkipWithError(("the request's " + std::to_string(T) + " tokens exceed the model's context of " +
                             std::to_string(s.context)).c_str());
        return;
    }
    ensure_chunk_caches(f, chunks);  // before any timing
    for (std::size_t c = 0; c < chunks; ++c) request.chunks.push_back(f.chunk_pool[c]);
    request.question = f.question;
    std::vector<ChunkKvView> views;
    for (std::size_t c = 0; c < chunks; ++c) views.push_back(f.chunk_caches[c].view());

    std::vector<Variant> variants = main_variants();
    if (!f.config.methods.empty())
        std::erase_if(variants, [&](const Variant& v) {
            return v.method != Method::full &&
                   std::find(f.config.methods.begin(), f.config.methods.end(), v.label) == f.config.methods.end();
        });
    if (context == f.config.ratio_context)
        for (double r : f.config.ratios) {
            char label[32];
            std::snprintf(label, sizeof label, "a3@%.2f", r);
            variants.push_back({label, Method::a3, r});
        }
    const std::size_t vocab = static_cast<std::size_t>(s.vocab), M = kQuestionTokens;
    // One run's cache and buffers serve every request, as a serving process keeps them: a
    // request pays no allocation, zero-fill or page fault of its cache (the warm-up below
    // sizes them).
    FusionRun serving;
    auto run_one = [&](const Variant& v, double& wall_ms) -> const FusionRun& {
        FusionOptions options;
        options.method = v.method;
        options.ratio = v.ratio;
        options.pipelined_loading = v.pipelined;
        const auto t0 = Clock::now();
        FusionRun& run = serving;
        run_request(*f.timed, request, v.method == Method::full ? std::span<const ChunkKvView>() : views, options, run);
        const float* last = run.logits.data() + (M - 1) * vocab;
        const auto first = std::max_element(last, last + vocab) - last;  // the first token: part of TTFT
        wall_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        benchmark::DoNotOptimize(first);
        for (float x : run.logits)
            if (!std::isfinite(x)) throw std::runtime_error(v.label + ": non-finite logits");
        return run;
    };

    // Untimed warm-up: reuse runs every layer's weights once (for the question rows) and the
    // allocator's large blocks, so the first timed method does not pay page faults alone.
    {
        double ignored = 0;
        run_one(variants[1], ignored);
    }
    std::vector<std::vector<double>> wall(variants.size());
    std::vector<std::vector<StageTimes>> stages(variants.size());
    std::vector<std::vector<double>> dense(variants.size());
    std::vector<double> recompute(variants.size());
    std::vector<double> dense_gflops;
    double dense_flops = 0;  // of one full prefill, as the timed model counted them
    int round = 0;
    try {
        for (auto _ : state) {
            const auto round_start = Clock::now();
            for (std::size_t i = 0; i < variants.size(); ++i) {
                const std::size_t which = (i + static_cast<std::size_t>(round)) % variants.size();
                f.timed->reset();
                double ms = 0;
                const FusionRun& run = run_one(variants[which], ms);
                wall[which].push_back(ms);
                stages[which].push_back(run.times);
                dense[which].push_back(f.timed->seconds() * 1e3);
                recompute[which] = run.recompute_fraction;
                if (variants[which].method == Method::full) {
                    dense_flops = f.timed->flops();
                    dense_gflops.push_back(f.timed->flops() / f.timed->seconds() / 1e9);
                }
            }
            state.SetIterationTime(std::chrono::duration<double>(Clock::now() - round_start).count());
            ++round;
        }
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        return;
    }

    ContextResult result;
    result.context = context;
    result.total_tokens = T;
    result.rounds = round;
    const double full_ms = kvfuse::bench::median(wall[0]);
    for (std::size_t i = 0; i < variants.size(); ++i) {
        VariantResult r;
        r.variant = variants[i];
        r.ttft_ms = kvfuse::bench::median(wall[i]);
        r.x_full = full_ms / r.ttft_ms;
        r.recompute = recompute[i];
        // The breakdown of the round whose TTFT is closest to the median, so it sums up.
        std::size_t best = 0;
        for (std::size_t k = 1; k < wall[i].size(); ++k)
            if (std::abs(wall[i][k] - r.ttft_ms) < std::abs(wall[i][best] - r.ttft_ms)) best = k;
        r.stages = stages[i][best];
        r.other_ms = wall[i][best] - r.stages.total();
        r.dense_ms = dense[i][best];
        const std::string& m = r.variant.label;
        state.counters[m + "_ms"] = r.ttft_ms;
        if (i > 0) state.counters[m + "_x"] = r.x_full;
        state.counters[m + "_recompute"] = r.recompute;
        // The ratio only where the method selects by it, so the report needs no copy of kMainRatio.
        // (Not for a3-pipelined: the ratio sweep is a3's alone.)
        if (method_info(r.variant.method).takes_ratio && !r.variant.pipelined)
            state.counters[m + "_ratio"] = r.variant.ratio;
        state.counters[m + "_load_ms"] = r.stages.kv_load;
        if (r.variant.pipelined) state.counters[m + "_background_load_ms"] = r.stages.background_load;
        state.counters[m + "_rotate_ms"] = r.stages.rerotate;
        state.counters[m + "_full_layers_ms"] = r.stages.full_layers;
        state.counters[m + "_select_ms"] = r.stages.selection;
        state.counters[m + "_recompute_ms"] = r.stages.recompute;
        state.counters[m + "_logits_ms"] = r.stages.logits;
        state.counters[m + "_other_ms"] = r.other_ms;
        state.counters[m + "_dense_ms"] = r.dense_ms;
        result.variants.push_back(r);
    }
    const int threads = omp_get_max_threads();
    const double attention_flops = 4.0 * s.head_dim * s.heads * s.layers * (static_cast<double>(T) * (T + 1) / 2.0);
    result.tokens_per_s = static_cast<double>(T) / (full_ms / 1e3);
    result.dense_gflops = kvfuse::bench::median(dense_gflops);
    result.prefill_gflops = (dense_flops + attention_flops) / (full_ms / 1e3) / 1e9;
    result.peak_isa = kvfuse::isa_name(static_cast<kvfuse::Isa>(peak_isa()));
    result.peak_gflops = update_peak(threads);
    state.counters["T"] = static_cast<double>(T);
    state.counters["threads"] = threads;
    // Memory: the peak resident set against what a request must hold (the mapped model file,
    // its KV): issue 15 asks peak RSS <= 1.3 x (file + KV) for quantized files.
    struct rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    state.counters["peak_rss_MiB"] = static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB
    state.counters["model_file_MiB"] = static_cast<double>(f.file_bytes) / (1024.0 * 1024.0);
    auto cache_bytes = [](const KvCache& cache) {
        return 2.0 * static_cast<double>(cache.k.size() * cache.tokens * cache.row * sizeof(float));
    };
    double kv_bytes = cache_bytes(serving.cache);
    for (std::size_t c = 0; c < chunks; ++c) {
        const ChunkKv& chunk = f.chunk_caches[c];
        kv_bytes += cache_bytes(chunk.cache);
        for (const QuantizedKeys& q : chunk.quantized)
            kv_bytes += static_cast<double>(q.i8.size() + q.i4.size() +
                                            (q.i8_scales.size() + q.i8_means.size() + q.i4_scales.size() + q.i4_means.size()) * sizeof(float));
    }
    state.counters["kv_MiB"] = kv_bytes / (1024.0 * 1024.0);
    state.counters["full_tokens_per_s"] = result.tokens_per_s;
    state.counters["dense_GFLOP/s"] = result.dense_gflops;
    state.counters["prefill_GFLOP/s"] = result.prefill_gflops;
    if (result.peak_gflops > 0) {
        state.counters["peak_GFLOP/s"] = result.peak_gflops;
        state.counters["dense_pct_peak"] = 100.0 * result.dense_gflops / result.peak_gflops;
        state.counters["prefill_pct_peak"] = 100.0 * result.prefill_gflops / result.peak_gflops;
    }
    state.SetLabel(f.shape_text);
    g_results.push_back(result);
}

void print_tables(const Fixture& f) {
    if (g_results.empty()) return;
    std::fprintf(stderr, "\nmodel: %s\n", f.shape_text.c_str());
    for (const ContextResult& c : g_results) {
        std::fprintf(stderr, "\n#### %d document tokens (T = %zu), median of %d rounds\n\n", c.context, c.total_tokens, c.rounds);
        std::fprintf(stderr, "| method | ratio | recompute | TTFT ms | x full | load | rotate | full layers | select | recompute ms | logits | other | dense |\n");
        std::fprintf(stderr, "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (const VariantResult& r : c.variants) {
            const bool has_ratio = method_info(r.variant.method).takes_ratio;
            std::fprintf(stderr, "| %s | %s | %.3f | %.1f | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n",
                         r.variant.label.c_str(), has_ratio ? std::to_string(r.variant.ratio).substr(0, 4).c_str() : "-",
                         r.recompute, r.ttft_ms, r.x_full, r.stages.kv_load, r.stages.rerotate, r.stages.full_layers,
                         r.stages.selection, r.stages.recompute, r.stages.logits, r.other_ms, r.dense_ms);
        }
    }
    std::fprintf(stderr, "\n| document tokens | T | full prefill ms | tokens/s | dense GFLOP/s | dense %% of peak | prefill GFLOP/s | prefill %% of peak | FMA peak GFLOP/s |\n");
    std::fprintf(stderr, "|---|---|---|---|---|---|---|---|---|\n");
    for (const ContextResult& c : g_results)
        std::fprintf(stderr, "| %d | %zu | %.0f | %.0f | %.1f | %.0f %% | %.1f | %.0f %% | %.1f (%s) |\n", c.context, c.total_tokens,
                     c.variants[0].ttft_ms, c.tokens_per_s, c.dense_gflops, 100.0 * c.dense_gflops / c.peak_gflops,
                     c.prefill_gflops, 100.0 * c.prefill_gflops / c.peak_gflops, c.peak_gflops, c.peak_isa);
}

}  // namespace

int main(int argc, char** argv) {
    Fixture fixture;
    try {
        fixture.config = parse_config(argc, argv);
        const Config& c = fixture.config;
        if (std::find(c.contexts.begin(), c.contexts.end(), c.ratio_context) == c.contexts.end() && !c.ratios.empty())
            std::fprintf(stderr, "bench_ttft: note: --ratio-context=%d is not in --contexts: no ratio sweep\n", c.ratio_context);
        fixture.path = c.model.empty() ? generate_model(c, fixture.temp) : c.model;
        fixture.file_bytes = std::filesystem::file_size(fixture.path);
        fixture.loaded = load_model(fixture.path);
        // A generated model is removed as soon as it is loaded (the mapping keeps it readable),
        // so an interrupted or killed run leaves no gigabyte behind in the temporary directory.
        if (!fixture.temp.path.empty()) {
            std::error_code ignored;
            std::filesystem::remove_all(fixture.temp.path, ignored);
            fixture.temp.path.clear();
        }
        fixture.llama = dynamic_cast<const kvfuse::model::LlamaModel*>(fixture.loaded.model.get());
        if (fixture.llama == nullptr) throw std::runtime_error("the loaded model is not a llama model");
        fixture.timed = std::make_unique<TimedModel>(*fixture.llama);
        kvfuse::Isa active = kvfuse::Isa::scalar;
        kvfuse::active_isa(active).check();
        fixture.shape_text = fixture.loaded.description + "; kernels " + kvfuse::isa_name(active) + ", OpenBLAS " +
                             openblas_get_corename() + ", " + std::to_string(omp_get_max_threads()) + " threads";
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_ttft: error: %s\n", e.what());
        return 2;
    }
    g_fixture = &fixture;
    update_peak(omp_get_max_threads(), 10);
    for (int context : fixture.config.contexts) {
        const std::string name = "ttft/ctx:" + std::to_string(context);
        benchmark::RegisterBenchmark(name.c_str(), ttft_bench, context)
            ->UseManualTime()
            ->Unit(benchmark::kSecond)
            ->Iterations(fixture.config.rounds);
    }
    if (const int status = kvfuse::bench::run_benchmarks(argc, argv); status != 0) return status;
    print_tables(fixture);
    return 0;
}
