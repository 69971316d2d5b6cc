// Before/after harness (issue 14: "no kernel slower than before at its main shape"): the kernels
// at the main shapes of bench_attention, bench_rope, bench_topk, bench_score and bench_gemm,
// through the C API subset that kvfuse had before issue 14 (d181c6f) and still has, so that one
// source compiles against the old library and against the new one. tools/before_after.sh builds
// it twice and runs the two binaries alternately.
//
// Where the API grew (every args struct versioned with struct_size and a *_init function), the
// struct set-up is under #if on KVFUSE_ATTENTION_ARGS_SIZE_V1, a macro the versioned header
// defines and the old one does not. Everything else is the same code in both builds: the same
// inputs (std::mt19937 with the benchmarks' seeds, hashed into input_hash so the two builds can be
// checked to have timed the same bytes), 64-byte aligned buffers, the plain (context-less) calls
// with the thread count set by omp_set_num_threads (the old library has no contexts; the new one's
// plain calls run on the calling thread's default context, which follows it) and, for gemm, its
// own thread argument.
//
// Per row: warm-up calls, then samples of a batch of calls (a batch lasts >= 1 ms) until both
// --min-samples and --min-seconds are reached; the row's figure is the median time per call.
// Output: one JSON document on stdout (progress on stderr).
//
// Usage: before_after [--min-samples N] [--min-seconds S] [--warmup N] [--filter A,B,...] [--list]
#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kvfuse/kvfuse.h"

#if defined(KVFUSE_ATTENTION_ARGS_SIZE_V1)
#define BA_VERSIONED_STRUCTS 1
#else
#define BA_VERSIONED_STRUCTS 0
#endif

namespace {

// ---- small helpers ---------------------------------------------------------------------------

[[noreturn]] void fail(const std::string& what, kvfuse_status status) {
    std::fprintf(stderr, "before_after: %s failed: %s (%s)\n", what.c_str(), kvfuse_status_message(status),
                 kvfuse_last_error());
    std::exit(1);
}

void check(kvfuse_status status, const char* what) {
    if (status != KVFUSE_OK) fail(what, status);
}

// 64-byte aligned, zero-initialised, as an engine allocates its caches.
template <class T>
class Aligned {
public:
    explicit Aligned(std::size_t n) : n_(n), p_(static_cast<T*>(::operator new(std::max<std::size_t>(n, 1) * sizeof(T),
                                                                              std::align_val_t{64}))) {
        std::memset(static_cast<void*>(p_), 0, n * sizeof(T));
    }
    ~Aligned() { ::operator delete(p_, std::align_val_t{64}); }
    Aligned(const Aligned&) = delete;
    Aligned& operator=(const Aligned&) = delete;
    T* data() { return p_; }
    const T* data() const { return p_; }
    std::size_t size() const { return n_; }
    T& operator[](std::size_t i) { return p_[i]; }
    const T& operator[](std::size_t i) const { return p_[i]; }
    std::size_t bytes() const { return n_ * sizeof(T); }

private:
    std::size_t n_;
    T* p_;
};

void fill_normal(Aligned<float>& v, std::mt19937& rng) {
    std::normal_distribution<float> normal;
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = normal(rng);
}

// FNV-1a over bytes: the same inputs give the same hash in both builds.
std::uint64_t fnv1a(const void* data, std::size_t bytes, std::uint64_t h = 1469598103934665603ull) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

double sum_of(const float* v, std::size_t n) {
    double s = 0;
    for (std::size_t i = 0; i < n; ++i) s += v[i];
    return s;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// ---- one row: a kernel call at one shape and thread count ------------------------------------

struct Row {
    std::string name;
    int threads = 1;
    double work = 0;        // units of work per call (FLOPs, bytes, scores, ops)
    std::string unit;       // rate reported: work / time
    double unit_scale = 1;  // e.g. 1e9 for GFLOP/s
    std::uint64_t input_hash = 0;
    double checksum = 0;    // of the first call's output (the same call in both builds)
    std::function<void()> call;
    std::function<double()> output_sum;
    std::vector<std::shared_ptr<void>> owned;  // every buffer the call reads or writes
};

// Each factory sets up inputs and returns a Row that owns them (Row::owned).

Row attention_row(bool bf16, int threads) {
    constexpr std::size_t kTokens = 4096, kHeads = 32, kKvHeads = 8, kDim = 128;
    const std::size_t rows = kTokens * 15 / 100;
    std::mt19937 rng(3);
    auto positions = std::make_shared<Aligned<std::int64_t>>(rows);
    {
        std::vector<std::int64_t> all(kTokens);
        std::iota(all.begin(), all.end(), 0);
        std::shuffle(all.begin(), all.end(), rng);
        std::copy_n(all.begin(), rows, positions->data());
    }
    auto q = std::make_shared<Aligned<float>>(rows * kHeads * kDim);
    auto out = std::make_shared<Aligned<float>>(q->size());
    Aligned<float> k32(kTokens * kKvHeads * kDim), v32(k32.size());
    fill_normal(*q, rng);
    fill_normal(k32, rng);
    fill_normal(v32, rng);
    auto k = std::make_shared<Aligned<std::uint16_t>>(bf16 ? k32.size() : 0);
    auto v = std::make_shared<Aligned<std::uint16_t>>(bf16 ? v32.size() : 0);
    auto kf = std::make_shared<Aligned<float>>(bf16 ? 0 : k32.size());
    auto vf = std::make_shared<Aligned<float>>(bf16 ? 0 : v32.size());
    if (bf16) {
        check(kvfuse_f32_to_bf16(k32.data(), k->data(), k32.size()), "kvfuse_f32_to_bf16");
        check(kvfuse_f32_to_bf16(v32.data(), v->data(), v32.size()), "kvfuse_f32_to_bf16");
    } else {
        std::copy_n(k32.data(), k32.size(), kf->data());
        std::copy_n(v32.data(), v32.size(), vf->data());
    }
    auto args = std::make_shared<kvfuse_attention_args>();
#if BA_VERSIONED_STRUCTS
    kvfuse_attention_args_init(args.get());
#else
    std::memset(args.get(), 0, sizeof *args);
#endif
    args->queries = q->data();
    args->rows = rows;
    args->query_heads = kHeads;
    args->head_dim = kDim;
    args->query_row_stride = kHeads * kDim;
    args->positions = positions->data();
    args->keys = bf16 ? static_cast<const void*>(k->data()) : kf->data();
    args->values = bf16 ? static_cast<const void*>(v->data()) : vf->data();
    args->kv_dtype = bf16 ? KVFUSE_DTYPE_BF16 : KVFUSE_DTYPE_F32;
    args->kv_tokens = kTokens;
    args->kv_heads = kKvHeads;
    args->kv_token_stride = kKvHeads * kDim;
    args->scale = 1.0f / std::sqrt(static_cast<float>(kDim));
    args->out = out->data();
    args->out_row_stride = kHeads * kDim;

    Row r;
    r.name = std::string("attention/") + (bf16 ? "bf16" : "f32") + "/T:4096/n:614/H:32/Hkv:8/D:128";
    r.threads = threads;
    double visible = 0;
    for (std::size_t i = 0; i < rows; ++i) visible += static_cast<double>((*positions)[i] + 1);
    r.work = 4.0 * kDim * kHeads * visible;
    r.unit = "GFLOP/s";
    r.unit_scale = 1e9;
    std::uint64_t h = fnv1a(positions->data(), positions->bytes());
    h = fnv1a(q->data(), q->bytes(), h);
    h = bf16 ? fnv1a(v->data(), v->bytes(), fnv1a(k->data(), k->bytes(), h))
             : fnv1a(vf->data(), vf->bytes(), fnv1a(kf->data(), kf->bytes(), h));
    r.input_hash = h;
    r.owned = {positions, q, out, k, v, kf, vf, args};
    r.call = [=] { check(kvfuse_sparse_attention(args.get()), "kvfuse_sparse_attention"); };
    r.output_sum = [=] { return sum_of(out->data(), out->size()); };
    return r;
}

// In place, one delta for the chunk, the sign alternating so the keys stay bounded.
Row rope_row(int threads) {
    constexpr std::size_t kTokens = 128, kHeads = 8;
    constexpr int kDim = 128;
    const std::size_t stride = kHeads * kDim, count = kTokens * stride;
    auto keys = std::make_shared<Aligned<float>>(count);
    std::mt19937 rng(1);
    fill_normal(*keys, rng);
    auto config = std::make_shared<kvfuse_rope_config>();
    kvfuse_rope_config_init(config.get(), kDim);
    auto delta = std::make_shared<std::int64_t>(4097);
    Row r;
    r.name = "rope/f32/128x8x128/l2";
    r.threads = threads;
    r.work = 2.0 * count * sizeof(float);
    r.unit = "GB/s";
    r.unit_scale = 1e9;
    r.input_hash = fnv1a(keys->data(), keys->bytes());
    r.call = [=] {
        *delta = -*delta;
        check(kvfuse_rope_rotate_span(config.get(), KVFUSE_DTYPE_F32, keys->data(), kTokens, kHeads, stride, *delta),
              "kvfuse_rope_rotate_span");
    };
    r.output_sum = [=] { return sum_of(keys->data(), keys->size()); };
    return r;
}

Row topk_row(std::size_t k, int threads) {
    constexpr std::size_t kN = 131072;
    auto scores = std::make_shared<Aligned<float>>(kN);
    std::mt19937 rng(5);
    fill_normal(*scores, rng);
    auto out = std::make_shared<Aligned<std::int64_t>>(k);
    Row r;
    r.name = "topk/n:131072/k:" + std::to_string(k);
    r.threads = threads;
    r.work = static_cast<double>(kN);
    r.unit = "Mscores/s";
    r.unit_scale = 1e6;
    r.input_hash = fnv1a(scores->data(), scores->bytes());
    r.call = [=] {
        std::size_t count = 0;
        check(kvfuse_topk(scores->data(), kN, k, KVFUSE_TOPK_BY_POSITION, out->data(), &count), "kvfuse_topk");
        if (count != k) {
            std::fprintf(stderr, "before_after: kvfuse_topk returned %zu indices, expected %zu\n", count, k);
            std::exit(1);
        }
    };
    r.output_sum = [=] {
        double s = 0;
        for (std::size_t i = 0; i < out->size(); ++i) s += static_cast<double>((*out)[i]);
        return s;
    };
    return r;
}

Row relevance_row(bool int8, int threads) {
    constexpr std::size_t kTokens = 32768, kHeads = 32, kKvHeads = 8, kRows = 32, kDim = 128;
    std::mt19937 rng(7);
    auto q = std::make_shared<Aligned<float>>(kRows * kHeads * kDim);
    auto k = std::make_shared<Aligned<float>>(kTokens * kKvHeads * kDim);
    fill_normal(*q, rng);
    fill_normal(*k, rng);
    auto q8 = std::make_shared<Aligned<std::int8_t>>(int8 ? q->size() : 0);
    auto k8 = std::make_shared<Aligned<std::int8_t>>(int8 ? k->size() : 0);
    auto qs = std::make_shared<Aligned<float>>(kRows * kHeads);
    auto ks = std::make_shared<Aligned<float>>(kTokens * kKvHeads);
    Aligned<float> means(kKvHeads * kDim);
    auto out = std::make_shared<Aligned<float>>(kTokens - kRows);
    auto args = std::make_shared<kvfuse_relevance_args>();
#if BA_VERSIONED_STRUCTS
    kvfuse_relevance_args_init(args.get());
#else
    std::memset(args.get(), 0, sizeof *args);
#endif
    args->question_rows = kRows;
    args->candidates = kTokens;
    args->query_heads = kHeads;
    args->kv_heads = kKvHeads;
    args->head_dim = kDim;
    args->smoothing = 1;
    args->out = out->data();
    std::uint64_t h;
    if (int8) {
        check(kvfuse_quantize_rows_i8(q->data(), kRows, kHeads, kDim, kHeads * kDim, q8->data(), qs->data()),
              "kvfuse_quantize_rows_i8");
        check(kvfuse_quantize_keys_i8(k->data(), kTokens, kKvHeads, kDim, kKvHeads * kDim, k8->data(), ks->data(),
                                      means.data()),
              "kvfuse_quantize_keys_i8");
        args->queries_i8 = q8->data();
        args->query_scales = qs->data();
        args->keys_i8 = k8->data();
        args->key_scales = ks->data();
        h = fnv1a(q8->data(), q8->bytes());
        h = fnv1a(qs->data(), qs->bytes(), h);
        h = fnv1a(k8->data(), k8->bytes(), h);
        h = fnv1a(ks->data(), ks->bytes(), h);
    } else {
        args->queries_f32 = q->data();
        args->keys_f32 = k->data();
        h = fnv1a(k->data(), k->bytes(), fnv1a(q->data(), q->bytes()));
    }
    Row r;
    r.name = std::string("a3_relevance/") + (int8 ? "int8" : "f32") + "/T:32768/H:32/Hkv:8/D:128/M:32";
    r.threads = threads;
    r.work = 2.0 * kRows * kTokens * kHeads * kDim;
    r.unit = "GOP/s";
    r.unit_scale = 1e9;
    r.input_hash = h;
    r.owned = {q, k, q8, k8, qs, ks, out, args};
    r.call = [=] { check(kvfuse_a3_relevance(args.get()), "kvfuse_a3_relevance"); };
    r.output_sum = [=] { return sum_of(out->data(), out->size()); };
    return r;
}

struct PackedDeleter {
    void operator()(kvfuse_packed_weights* p) const { kvfuse_packed_weights_free(p); }
};

// bench_gemm's gate_up layer at n = 512 (a prefill of 512 tokens), f32 weights.
Row gemm_row(int threads) {
    constexpr std::size_t kN = 512, kOut = 2816, kIn = 1024;
    auto uniform = [](std::size_t count, unsigned seed) {
        auto v = std::make_shared<Aligned<float>>(count);
        std::mt19937 rng(seed);
        std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
        for (std::size_t i = 0; i < count; ++i) (*v)[i] = dist(rng);
        return v;
    };
    auto a = uniform(kN * kIn, 1);
    auto w = uniform(kOut * kIn, 2);
    auto c = std::make_shared<Aligned<float>>(kN * kOut);
    kvfuse_packed_weights* raw = nullptr;
    check(kvfuse_pack_weights(KVFUSE_DTYPE_F32, w->data(), kOut, kIn, kIn, KVFUSE_DTYPE_F32, &raw), "kvfuse_pack_weights");
    std::shared_ptr<kvfuse_packed_weights> packed(raw, PackedDeleter{});
    Row r;
    r.name = "gemm/f32/gate_up/n:512/out:2816/in:1024";
    r.threads = threads;
    r.work = 2.0 * kN * kOut * kIn;
    r.unit = "GFLOP/s";
    r.unit_scale = 1e9;
    r.input_hash = fnv1a(w->data(), w->bytes(), fnv1a(a->data(), a->bytes()));
    r.call = [=] {
        check(kvfuse_gemm(packed.get(), a->data(), kN, kIn, 0.0f, c->data(), kOut, threads), "kvfuse_gemm");
    };
    r.output_sum = [=] { return sum_of(c->data(), c->size()); };
    return r;
}

struct RowSpec {
    std::string name;  // for --filter and --list (the row's name without threads)
    std::function<Row(int)> make;
};

std::vector<RowSpec> all_rows() {
    return {
        {"attention/f32/T:4096/n:614/H:32/Hkv:8/D:128", [](int t) { return attention_row(false, t); }},
        {"attention/bf16/T:4096/n:614/H:32/Hkv:8/D:128", [](int t) { return attention_row(true, t); }},
        {"rope/f32/128x8x128/l2", [](int t) { return rope_row(t); }},
        {"topk/n:131072/k:19660", [](int t) { return topk_row(131072 * 15 / 100, t); }},
        {"topk/n:131072/k:1310", [](int t) { return topk_row(131072 / 100, t); }},
        {"a3_relevance/f32/T:32768/H:32/Hkv:8/D:128/M:32", [](int t) { return relevance_row(false, t); }},
        {"a3_relevance/int8/T:32768/H:32/Hkv:8/D:128/M:32", [](int t) { return relevance_row(true, t); }},
        {"gemm/f32/gate_up/n:512/out:2816/in:1024", [](int t) { return gemm_row(t); }},
    };
}

struct Options {
    int min_samples = 15;
    double min_seconds = 1.0;
    int warmup = 3;
    std::vector<std::string> filters;
    bool list = false;
};

struct Result {
    double median_s, min_s, max_s;
    int samples, batch;
};

Result measure(Row& row, const Options& opt) {
    using clock = std::chrono::steady_clock;
    auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
    // Warm-up: at least `warmup` calls and 0.1 s; its calls also size the batch.
    int calls = 0;
    const auto warm_start = clock::now();
    while (calls < opt.warmup || seconds_since(warm_start) < 0.1) {
        row.call();
        ++calls;
    }
    const double per_call = seconds_since(warm_start) / calls;
    const int batch = static_cast<int>(std::max(1.0, std::ceil(1e-3 / std::max(per_call, 1e-9))));
    std::vector<double> samples;
    const auto start = clock::now();
    while (static_cast<int>(samples.size()) < opt.min_samples || seconds_since(start) < opt.min_seconds) {
        const auto t = clock::now();
        for (int i = 0; i < batch; ++i) row.call();
        samples.push_back(seconds_since(t) / batch);
        if (samples.size() >= 100000) break;
    }
    return {median(samples), *std::min_element(samples.begin(), samples.end()),
            *std::max_element(samples.begin(), samples.end()), static_cast<int>(samples.size()), batch};
}

bool selected(const std::string& name, const Options& opt) {
    if (opt.filters.empty()) return true;
    for (const std::string& f : opt.filters)
        if (name.find(f) != std::string::npos) return true;
    return false;
}

[[noreturn]] void usage_error(const std::string& message) {
    std::fprintf(stderr,
                 "before_after: %s\nusage: before_after [--min-samples N] [--min-seconds S] [--warmup N] "
                 "[--filter A,B,...] [--list]\n",
                 message.c_str());
    std::exit(2);
}

long parse_int(const char* text, const char* flag, long lo, long hi) {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi)
        usage_error(std::string(flag) + " wants an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                    "], got '" + text + "'");
    return v;
}

Options parse(int argc, char** argv) {
    Options opt;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) usage_error(arg + " needs a value");
            return argv[++i];
        };
        if (arg == "--min-samples") {
            opt.min_samples = static_cast<int>(parse_int(value(), "--min-samples", 1, 1000000));
        } else if (arg == "--warmup") {
            opt.warmup = static_cast<int>(parse_int(value(), "--warmup", 1, 1000000));
        } else if (arg == "--min-seconds") {
            const char* text = value();
            char* end = nullptr;
            opt.min_seconds = std::strtod(text, &end);
            if (end == text || *end || !(opt.min_seconds >= 0) || opt.min_seconds > 3600)
                usage_error(std::string("--min-seconds wants a number in [0, 3600], got '") + text + "'");
        } else if (arg == "--filter") {
            std::string list = value();
            std::size_t pos = 0;
            while (pos <= list.size()) {
                const std::size_t comma = std::min(list.find(',', pos), list.size());
                if (comma > pos) opt.filters.push_back(list.substr(pos, comma - pos));
                pos = comma + 1;
            }
            if (opt.filters.empty()) usage_error("--filter wants at least one name part");
        } else if (arg == "--list") {
            opt.list = true;
        } else {
            usage_error("unknown argument '" + arg + "'");
        }
    }
    return opt;
}

std::string json_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        if (static_cast<unsigned char>(c) < 0x20) continue;
        out += c;
    }
    return out;
}

// A double as JSON (null when not finite, which JSON cannot hold).
std::string json_number(double v) {
    if (!std::isfinite(v)) return "null";
    char text[40];
    std::snprintf(text, sizeof text, "%.17g", v);
    return text;
}

}  // namespace

int main(int argc, char** argv) {
    const Options opt = parse(argc, argv);
    const std::vector<RowSpec> specs = all_rows();
    if (opt.list) {
        for (const RowSpec& s : specs) std::printf("%s\n", s.name.c_str());
        return 0;
    }
    std::size_t matched = 0;
    for (const RowSpec& s : specs) matched += selected(s.name, opt);
    if (matched == 0) usage_error("--filter matches no row (--list lists them)");

    kvfuse_isa isa;
    check(kvfuse_active_isa(&isa), "kvfuse_active_isa");
#if BA_VERSIONED_STRUCTS
    kvfuse_tuning tuning;
    kvfuse_tuning_init(&tuning);
    check(kvfuse_get_tuning(&tuning), "kvfuse_get_tuning");
#else
    kvfuse_tuning tuning;
    kvfuse_get_tuning(&tuning);
#endif
    std::printf("{\n  \"kvfuse_version\": \"%s\",\n  \"versioned_structs\": %d,\n  \"active_isa\": \"%s\",\n",
                json_escape(kvfuse_version_string()).c_str(), BA_VERSIONED_STRUCTS, kvfuse_isa_name(isa));
    std::printf("  \"profile\": \"%s\",\n", json_escape(kvfuse_profile_status()).c_str());
    std::printf("  \"tuning\": {\"attention_key_tile\": %u, \"attention_row_block\": %u, \"score_query_rows\": %u, "
                "\"topk_sample\": %u, \"rope_parallel_work\": %llu, \"attention_parallel_work\": %llu, "
                "\"score_parallel_work\": %llu},\n",
                tuning.attention_key_tile, tuning.attention_row_block, tuning.score_query_rows, tuning.topk_sample,
                static_cast<unsigned long long>(tuning.rope_parallel_work),
                static_cast<unsigned long long>(tuning.attention_parallel_work),
                static_cast<unsigned long long>(tuning.score_parallel_work));
    std::printf("  \"min_samples\": %d,\n  \"min_seconds\": %g,\n  \"rows\": [", opt.min_samples, opt.min_seconds);
    bool first = true;
    for (const RowSpec& spec : specs) {
        if (!selected(spec.name, opt)) continue;
        for (int threads : {1, 2}) {
            omp_set_num_threads(threads);
            Row row = spec.make(threads);
            // The checksum of exactly one call from the initial inputs, before any timing.
            row.call();
            row.checksum = row.output_sum();
            const Result res = measure(row, opt);
            std::fprintf(stderr, "%-52s threads:%d  %12.3f us  %10.4g %s  (%d samples x %d)\n", row.name.c_str(), threads,
                         res.median_s * 1e6, row.work / res.median_s / row.unit_scale, row.unit.c_str(), res.samples,
                         res.batch);
            std::printf("%s\n    {\"name\": \"%s/threads:%d\", \"kernel\": \"%s\", \"threads\": %d, \"median_s\": %.9g, "
                        "\"min_s\": %.9g, \"max_s\": %.9g, \"samples\": %d, \"batch\": %d, \"rate\": %.6g, "
                        "\"unit\": \"%s\", \"input_hash\": \"%016llx\", \"checksum\": %s}",
                        first ? "" : ",", json_escape(row.name).c_str(), threads, json_escape(spec.name).c_str(), threads,
                        res.median_s, res.min_s, res.max_s, res.samples, res.batch, row.work / res.median_s / row.unit_scale,
                        row.unit.c_str(), static_cast<unsigned long long>(row.input_hash), json_number(row.checksum).c_str());
            first = false;
        }
    }
    std::printf("\n  ]\n}\n");
    return 0;
}
