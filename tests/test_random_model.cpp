// `kvfuse make-model`: the files it writes load through the driver's own GGUF loader, hold
// what they claim (shape, scale, bf16 = rounded f32, deterministic per seed), tokenize text, and
// run through the fusion pipeline with finite outputs and the every-row identity. The program
// is run as users run it (its path comes from the build).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <iterator>
#include <string>
#include <vector>

#include "fusion/pipeline.h"
#include "kvfuse/kvfuse.hpp"
#include "model/llama_model.h"

namespace {

namespace fs = std::filesystem;
using namespace kvfuse::fusion;
using kvfuse::model::GgufFile;
using kvfuse::model::LlamaModel;

class RandomModel : public ::testing::Test {
   protected:
    void SetUp() override {
        std::string pattern = (fs::temp_directory_path() / "kvfuse-test-make-model-XXXXXX").string();
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
        dir_ = pattern;
    }
    void TearDown() override {
        std::error_code ignored;
        fs::remove_all(dir_, ignored);
    }
    // Runs `kvfuse make-model --out <dir>/<name> <args>`; returns the exit status.
    int make(const std::string& name, const std::string& args) const {
        const std::string command = std::string("'") + KVFUSE_CLI + "' make-model --out '" + path(name) + "' " + args + " >/dev/null 2>&1";
        const int status = std::system(command.c_str());
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
    }
    std::string path(const std::string& name) const { return (dir_ / name).string(); }
    static std::string read_bytes(const std::string& file) {
        std::ifstream in(file, std::ios::binary);
        return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    }
    bool has_temporary_files() const {
        for (const auto& entry : fs::directory_iterator(dir_))
            if (entry.path().filename().string().find(".tmp.") != std::string::npos) return true;
        return false;
    }
    fs::path dir_;
};

// Options may be given once each, so tests that vary one build the line from parts.
const std::string kShape = "--dim 64 --layers 3 --kv-heads 2 --hidden 160 --vocab 400 --context 1024";
const std::string kSmall = kShape + " --heads 4 --seed 5";

TEST_F(RandomModel, WritesWhatTheLoaderReads) {
    for (const std::string dtype : {"f32", "bf16"}) {
        ASSERT_EQ(make(dtype + ".gguf", kSmall + " --dtype " + dtype), 0) << dtype;
        const auto file = GgufFile::open(path(dtype + ".gguf"));
        const LlamaModel model(file);
        const ModelShape& s = model.shape();
        EXPECT_EQ(model.architecture(), "llama");
        EXPECT_EQ(s.layers, 3);
        EXPECT_EQ(s.dim, 64);
        EXPECT_EQ(s.heads, 4);
        EXPECT_EQ(s.kv_heads, 2);
        EXPECT_EQ(s.head_dim, 16);
        EXPECT_EQ(s.vocab, 400);
        EXPECT_EQ(s.context, 1024);
        EXPECT_EQ(model.hidden_size_ffn(), 160);
        EXPECT_EQ(model.bos(), 1);
        EXPECT_EQ(model.tokenizer().eos(), 2);
        const auto& q = file->require_tensor("blk.2.attn_q.weight");
        EXPECT_EQ(q.type, dtype == "bf16" ? kvfuse::model::GgmlType::bf16 : kvfuse::model::GgmlType::f32);
        EXPECT_EQ(static_cast<int>(file->require_tensor("blk.2.ffn_norm.weight").type), 0) << "norms stay f32";
        EXPECT_FALSE(has_temporary_files());
    }
}

double mean_of(const std::vector<float>& v) {
    double sum = 0;
    for (float x : v) sum += x;
    return sum / static_cast<double>(v.size());
}

double std_of(const std::vector<float>& v) {
    const double m = mean_of(v);
    double sum = 0;
    for (float x : v) sum += (x - m) * (x - m);
    return std::sqrt(sum / static_cast<double>(v.size()));
}

// Normal with deviation 1/sqrt(fan_in) for matrices, 1 for embeddings, norms exactly 1: the
// scale that keeps activations finite at any depth (checked in the forward test below).
TEST_F(RandomModel, WeightsHaveTheAdvertisedScale) {
    ASSERT_EQ(make("m.gguf", "--dim 128 --layers 2 --heads 4 --kv-heads 4 --hidden 320 --vocab 400"), 0);
    const auto file = GgufFile::open(path("m.gguf"));
    auto check = [&](const std::string& name, double expected_std) {
        const std::vector<float> w = file->read_f32(file->require_tensor(name));
        const double n = static_cast<double>(w.size());
        // Standard errors: of the mean sigma/sqrt(n), of the deviation about sigma/sqrt(2n).
        EXPECT_LT(std::fabs(mean_of(w)), 5.0 * expected_std / std::sqrt(n)) << name;
        EXPECT_NEAR(std_of(w), expected_std, 5.0 * expected_std / std::sqrt(2.0 * n)) << name;
    };
    check("blk.0.attn_q.weight", 1.0 / std::sqrt(128.0));
    check("blk.1.attn_k.weight", 1.0 / std::sqrt(128.0));
    check("blk.0.ffn_up.weight", 1.0 / std::sqrt(128.0));
    check("blk.1.ffn_down.weight", 1.0 / std::sqrt(320.0));
    check("output.weight", 1.0 / std::sqrt(128.0));
    check("token_embd.weight", 1.0);
    for (const std::string name : {"output_norm.weight", "blk.0.attn_norm.weight", "blk.1.ffn_norm.weight"})
        for (float x : file->read_f32(file->require_tensor(name))) ASSERT_EQ(x, 1.0f) << name;
    // Different tensors draw from different streams.
    EXPECT_NE(file->read_f32(file->require_tensor("blk.0.attn_q.weight")),
              file->read_f32(file->require_tensor("blk.1.attn_q.weight")));
}

// --random-codes: the quantized matrices are drawn as blocks (q4_k_m: Q4_K, Q6_K where llama.cpp's
// mix puts it), with mean 0 and the deviation the normal weights would have; the same seed gives
// the same bytes; any other type is refused; the model runs with finite logits.
TEST_F(RandomModel, RandomCodesAreBlocksOfTheAdvertisedScale) {
    const std::string shape = "--dim 256 --layers 8 --heads 4 --kv-heads 2 --hidden 512 --vocab 600 --dtype q4_k_m --random-codes";
    ASSERT_EQ(make("a.gguf", shape), 0);
    ASSERT_EQ(make("b.gguf", shape), 0);
    EXPECT_EQ(read_bytes(path("a.gguf")), read_bytes(path("b.gguf")));
    ASSERT_EQ(make("c.gguf", shape + " --seed 2"), 0);
    EXPECT_NE(read_bytes(path("a.gguf")), read_bytes(path("c.gguf")));
    const auto file = GgufFile::open(path("a.gguf"));
    using kvfuse::model::GgmlType;
    auto check = [&](const std::string& name, GgmlType type, double expected_std) {
        const auto& t = file->require_tensor(name);
        EXPECT_EQ(t.type, type) << name;
        const std::vector<float> w = file->read_f32(t);
        const double n = static_cast<double>(w.size());
        // Uniform codes: the mean's standard error is sigma/sqrt(n); the deviation is set
        // through a half-precision super-scale (relative error up to 2^-11, more when subnormal)
        // and varies with the drawn sub-block scales.
        EXPECT_LT(std::fabs(mean_of(w)), 5.0 * expected_std / std::sqrt(n) + 0.01 * expected_std) << name;
        EXPECT_NEAR(std_of(w), expected_std, 0.05 * expected_std) << name;
    };
    check("token_embd.weight", GgmlType::q4_k, 1.0);
    check("output.weight", GgmlType::q6_k, 1.0 / std::sqrt(256.0));
    check("blk.0.attn_q.weight", GgmlType::q4_k, 1.0 / std::sqrt(256.0));
    check("blk.0.attn_v.weight", GgmlType::q6_k, 1.0 / std::sqrt(256.0));  // layer 0: more bits
    check("blk.1.attn_v.weight", GgmlType::q4_k, 1.0 / std::sqrt(256.0));
    check("blk.0.ffn_down.weight", GgmlType::q6_k, 1.0 / std::sqrt(512.0));
    check("blk.1.ffn_down.weight", GgmlType::q4_k, 1.0 / std::sqrt(512.0));
    for (float x : file->read_f32(file->require_tensor("blk.0.ffn_norm.weight"))) ASSERT_EQ(x, 1.0f);
    EXPECT_NE(file->read_f32(file->require_tensor("blk.0.attn_q.weight")),
              file->read_f32(file->require_tensor("blk.1.attn_q.weight")));
    const LlamaModel model(file);
    std::vector<std::int32_t> tokens = {1, 17, 300, 5};
    std::vector<float> hidden(tokens.size() * 256), logits(tokens.size() * 600);
    model.embed(tokens, hidden.data());
    kvfuse::Context context;  // the calling thread's default context
    model.logits(context, hidden.data(), tokens.size(), logits.data());
    for (float x : logits) ASSERT_TRUE(std::isfinite(x));
    EXPECT_EQ(make("q6.gguf", "--dim 256 --layers 2 --heads 4 --kv-heads 2 --hidden 512 --vocab 600 --dtype q6_k --random-codes"), 0);
    EXPECT_NE(make("q8.gguf", "--dim 256 --layers 2 --heads 4 --kv-heads 2 --hidden 512 --vocab 600 --dtype q8_0 --random-codes"), 0);
}

TEST_F(RandomModel, Bf16IsTheF32ModelRoundedToNearest) {
    ASSERT_EQ(make("f32.gguf", kSmall + " --dtype f32"), 0);
    ASSERT_EQ(make("bf16.gguf", kSmall + " --dtype bf16"), 0);
    const auto f32 = GgufFile::open(path("f32.gguf"));
    const auto bf16 = GgufFile::open(path("bf16.gguf"));
    ASSERT_EQ(f32->tensors().size(), bf16->tensors().size());
    for (const auto& t : f32->tensors()) {
        const std::vector<float> exact = f32->read_f32(t);
        const std::vector<float> rounded_file = bf16->read_f32(bf16->require_tensor(t.name));
        // The library's own converter (round to nearest even) is the reference.
        std::vector<kvfuse::bf16> rounded(exact.size());
        ASSERT_TRUE(kvfuse::to_bf16(exact.data(), rounded.data(), exact.size()).ok());
        std::vector<float> expected(exact.size());
        ASSERT_TRUE(kvfuse::to_f32(rounded.data(), expected.data(), exact.size()).ok());
        ASSERT_EQ(rounded_file, expected) << t.name;
    }
}

// Every type the loader reads: the file holds the seed's f32 weights quantized by the type
// table's quantizer (so its values are exactly that quantizer's round trip), the model loads and
// its logits stay finite; a shape whose rows are not whole blocks is refused with the reason.
TEST_F(RandomModel, EveryTypeIsTheF32ModelQuantized) {
    const std::string shape = "--dim 256 --layers 2 --heads 4 --kv-heads 2 --hidden 512 --vocab 300 --context 256 --seed 9";
    ASSERT_EQ(make("f32.gguf", shape + " --dtype f32"), 0);
    const auto f32 = GgufFile::open(path("f32.gguf"));
    for (const auto& type : kvfuse::model::all_type_traits()) {
        if (!type.supported()) continue;
        SCOPED_TRACE(type.name);
        const std::string name = std::string(type.name) + ".gguf";
        ASSERT_EQ(make(name, shape + " --dtype " + type.name), 0);
        const auto file = GgufFile::open(path(name));
        const auto& q = file->require_tensor("blk.1.ffn_down.weight");
        EXPECT_EQ(q.type, type.type);
        const std::vector<float> exact = f32->read_f32(f32->require_tensor("blk.1.ffn_down.weight"));
        std::vector<std::uint8_t> blocks(*type.row_bytes(exact.size()));
        type.quantize_row(exact.data(), blocks.data(), exact.size());
        std::vector<float> expected(exact.size());
        type.dequantize_row(blocks.data(), expected.data(), expected.size());
        ASSERT_EQ(file->read_f32(q), expected);
        const LlamaModel model(file);
        std::vector<float> hidden(256), logits(300);
        const std::int32_t token = 7;
        model.embed({&token, 1}, hidden.data());
        kvfuse::Context context;  // the calling thread's default context
        model.logits(context, hidden.data(), 1, logits.data());
        for (float x : logits) ASSERT_TRUE(std::isfinite(x));
    }
    EXPECT_NE(make("partial.gguf", "--dim 64 --heads 4 --kv-heads 2 --hidden 160 --dtype q4_k"), 0);
    EXPECT_NE(make("unknown.gguf", "--dim 64 --heads 4 --kv-heads 2 --hidden 160 --dtype q7_x"), 0);
}

// llama.cpp's Q4_K_M mix (Q4_K and Q6_K) loads with every matrix packed (Q4_K and Q6_K each in
// its own compact form): nothing is left to dequantize a tile at a time, and the packed bytes are
// those of the two forms (4.75 and 6.625 bits a weight, whole panels of 32 rows).
TEST_F(RandomModel, Q4KMHoldsEveryMatrixPacked) {
    ASSERT_EQ(make("q4_k_m.gguf", "--dim 256 --layers 2 --heads 4 --kv-heads 2 --hidden 512 --vocab 300 --context 256 "
                                  "--seed 9 --dtype q4_k_m"),
              0);
    const auto file = GgufFile::open(path("q4_k_m.gguf"));
    std::size_t q6_tensors = 0;
    for (const auto& t : file->tensors()) q6_tensors += t.type == kvfuse::model::GgmlType::q6_k;
    EXPECT_GT(q6_tensors, 0u);
    const LlamaModel model(file);
    EXPECT_EQ(model.tiled_weight_bytes(), 0u);
    ::setenv("KVFUSE_DEQUANTIZED_GEMM", "1", 1);
    const LlamaModel dequantized(file);
    ::unsetenv("KVFUSE_DEQUANTIZED_GEMM");
    EXPECT_GT(dequantized.tiled_weight_bytes(), 0u);
    // The int8 products of both forms against the f32 products of the dequantized matrices.
    std::vector<float> hidden(256), logits(300), want(300);
    const std::int32_t token = 11;
    model.embed({&token, 1}, hidden.data());
    kvfuse::Context context;  // the calling thread's default context
    model.logits(context, hidden.data(), 1, logits.data());
    dequantized.logits(context, hidden.data(), 1, want.data());
    double error = 0.0, norm = 0.0;
    for (std::size_t v = 0; v < logits.size(); ++v) {
        error += (double(logits[v]) - want[v]) * (double(logits[v]) - want[v]);
        norm += double(want[v]) * want[v];
    }
    EXPECT_LT(std::sqrt(error / norm), 0.02);  // int8 activations: about 1 % per product
}

TEST_F(RandomModel, SameSeedSameBytesOtherSeedOtherWeights) {
    ASSERT_EQ(make("a.gguf", kSmall), 0);
    ASSERT_EQ(make("b.gguf", kSmall), 0);
    ASSERT_EQ(make("c.gguf", kShape + " --heads 4 --seed 6"), 0);
    EXPECT_EQ(read_bytes(path("a.gguf")), read_bytes(path("b.gguf")));
    const LlamaModel a(GgufFile::open(path("a.gguf"))), c(GgufFile::open(path("c.gguf")));
    EXPECT_NE(a.fingerprint(), c.fingerprint());
}

// Any text tokenizes (letters merge into vocabulary pieces, the rest falls back to bytes) and
// decodes back.
TEST_F(RandomModel, TokenizerRoundTripsText) {
    ASSERT_EQ(make("m.gguf", "--dim 64 --layers 2 --heads 4 --kv-heads 1 --hidden 64 --vocab 2000"), 0);
    const LlamaModel model(GgufFile::open(path("m.gguf")));
    const std::string text = "the quick brown fox, 42 times! caf\xC3\xA9";
    const auto ids = model.tokenizer().encode(text);
    EXPECT_EQ(model.tokenizer().decode(ids), " " + text) << "SentencePiece keeps the leading space it added";
    EXPECT_LT(ids.size(), text.size()) << "pieces longer than one byte are used";
    for (auto id : ids) EXPECT_GE(id, 3) << "no special token inside text";
}

// A forward pass of a deeper model stays finite and informative, and the pipeline's identity
// (every row selected = full prefill) holds on the generated weights, in f32 and bf16.
TEST_F(RandomModel, ForwardPassIsFiniteAndFusionMatchesFullPrefill) {
    for (const std::string dtype : {"f32", "bf16"}) {
        ASSERT_EQ(make(dtype + ".gguf", "--dim 64 --layers 8 --heads 4 --kv-heads 2 --hidden 160 --vocab 400 --dtype " + dtype), 0);
        const LlamaModel model(GgufFile::open(path(dtype + ".gguf")));
        std::mt19937 rng(3);
        std::uniform_int_distribution<int> token(3, 399);
        Request r;
        r.prefix = {model.bos()};
        for (int c = 0; c < 3; ++c) {
            TokenIds ids(16);
            for (auto& t : ids) t = token(rng);
            r.chunks.push_back(ids);
        }
        r.question.resize(8);
        for (auto& t : r.question) t = token(rng);
        std::vector<ChunkKv> stored;
        std::vector<ChunkKvView> views;
        for (const auto& c : r.chunks) stored.push_back(compute_chunk_kv(model, c));
        for (const auto& c : stored) views.push_back(c.view());

        FusionOptions full;
        full.method = Method::full;
        const FusionRun reference = run_request(model, r, {}, full);
        double sum = 0, sum2 = 0;
        for (float x : reference.logits) {
            ASSERT_TRUE(std::isfinite(x)) << dtype;
            sum += x;
            sum2 += static_cast<double>(x) * x;
        }
        const double n = static_cast<double>(reference.logits.size());
        const double spread = std::sqrt(sum2 / n - (sum / n) * (sum / n));
        // Unit-scale logits: neither collapsed to a constant nor blown up.
        EXPECT_GT(spread, 0.1) << dtype;
        EXPECT_LT(spread, 10.0) << dtype;

        FusionOptions every_row;
        every_row.method = Method::a3;
        every_row.ratio = 1.0;
        EXPECT_EQ(run_request(model, r, views, every_row).logits, reference.logits) << dtype;
        FusionOptions a3;
        a3.method = Method::a3;
        const FusionRun fused = run_request(model, r, views, a3);
        for (float x : fused.logits) ASSERT_TRUE(std::isfinite(x)) << dtype;
    }
}

// Memory that grows with the prompt but not with the model stays bounded: the feed-forward runs
// in blocks of rows (the same results whatever the block), and a run that wants only the cache
// (compute_chunk_kv) computes no logits but the same cache.
TEST_F(RandomModel, FeedForwardBlocksAndCacheOnlyRunsChangeNoResult) {
    ASSERT_EQ(make("m.gguf", "--dim 256 --layers 3 --heads 4 --kv-heads 2 --hidden 512 --vocab 400 --dtype q4_k_m --random-codes"), 0);
    LlamaModel model(GgufFile::open(path("m.gguf")));
    std::mt19937 rng(5);
    std::uniform_int_distribution<int> token(3, 399);
    Request r;
    r.prefix = {model.bos()};
    r.question.resize(100);
    for (auto& t : r.question) t = token(rng);
    FusionOptions full;
    full.method = Method::full;
    const FusionRun one_block = run_request(model, r, {}, full);
    ASSERT_GE(model.ffn_block_rows(), r.total_tokens());
    model.set_ffn_block_bytes(7 * 2 * 512 * sizeof(float));  // blocks of 7 rows: 15 blocks, the last of 3
    ASSERT_EQ(model.ffn_block_rows(), 7u);
    const FusionRun blocks = run_request(model, r, {}, full);
    EXPECT_EQ(blocks.logits, one_block.logits);
    for (int l = 0; l < 3; ++l) {
        EXPECT_EQ(blocks.cache.k[static_cast<std::size_t>(l)], one_block.cache.k[static_cast<std::size_t>(l)]);
        EXPECT_EQ(blocks.cache.v[static_cast<std::size_t>(l)], one_block.cache.v[static_cast<std::size_t>(l)]);
    }
    FusionOptions cache_only = full;
    cache_only.logits = false;
    const FusionRun no_logits = run_request(model, r, {}, cache_only);
    EXPECT_TRUE(no_logits.logits.empty());
    for (int l = 0; l < 3; ++l) EXPECT_EQ(no_logits.cache.k[static_cast<std::size_t>(l)], one_block.cache.k[static_cast<std::size_t>(l)]);
    // compute_chunk_kv is such a run: the chunk's rows of the full prefill's cache.
    const ChunkKv chunk = compute_chunk_kv(model, r.question);
    ASSERT_EQ(chunk.cache.tokens, r.question.size());
    for (int l = 0; l < 3; ++l) {
        const std::size_t row = one_block.cache.row;
        const auto& k = one_block.cache.k[static_cast<std::size_t>(l)];
        EXPECT_TRUE(std::equal(k.begin() + static_cast<std::ptrdiff_t>(row), k.begin() + static_cast<std::ptrdiff_t>(row * r.total_tokens()),
                               chunk.cache.k[static_cast<std::size_t>(l)].begin()));
    }
}

// A straightforward forward pass in double, written from the published architectures (not
// from the driver): RMSNorm, Q/K/V (+ qwen2 biases), qwen3 per-head RMSNorm of Q and K, RoPE
// (llama interleaved pairs, qwen NeoX halves, rope_freqs divisors), causal GQA attention with
// scale 1/sqrt(head_dim), SwiGLU; logits of every position.
struct ScalarSpec {
    std::string arch;
    int dim, heads, kv_heads, head_dim, hidden, vocab, layers;
    double base = 10000.0, epsilon = 1e-5;
};

std::vector<double> scalar_forward(const GgufFile& f, const ScalarSpec& s, const std::vector<std::int32_t>& tokens) {
    const auto weights = [&](const std::string& name) {
        const std::vector<float> w = f.read_f32(f.require_tensor(name));
        return std::vector<double>(w.begin(), w.end());
    };
    const auto optional = [&](const std::string& name) {
        return f.tensor(name) != nullptr ? weights(name) : std::vector<double>{};
    };
    const std::size_t T = tokens.size(), d = static_cast<std::size_t>(s.dim), D = static_cast<std::size_t>(s.head_dim),
                      H = static_cast<std::size_t>(s.heads), Hkv = static_cast<std::size_t>(s.kv_heads);
    auto matvec = [](const std::vector<double>& w, const std::vector<double>& x, std::size_t out) {
        std::vector<double> y(out, 0.0);
        const std::size_t in = x.size();
        for (std::size_t o = 0; o < out; ++o)
            for (std::size_t i = 0; i < in; ++i) y[o] += w[o * in + i] * x[i];
        return y;
    };
    auto rms = [&](const double* x, const double* w, std::size_t n, double* out) {
        double sum = 0;
        for (std::size_t i = 0; i < n; ++i) sum += x[i] * x[i];
        const double scale = 1.0 / std::sqrt(sum / static_cast<double>(n) + s.epsilon);
        for (std::size_t i = 0; i < n; ++i) out[i] = x[i] * scale * w[i];
    };
    const std::vector<double> freqs = optional("rope_freqs.weight");
    const bool neox = s.arch != "llama";
    auto rope = [&](double* head, std::size_t pos) {
        for (std::size_t i = 0; i < D / 2; ++i) {
            double theta = static_cast<double>(pos) * std::pow(s.base, -2.0 * static_cast<double>(i) / static_cast<double>(D));
            if (!freqs.empty()) theta /= freqs[i];
            const std::size_t a = neox ? i : 2 * i, b = neox ? i + D / 2 : 2 * i + 1;
            const double x1 = head[a], x2 = head[b];
            head[a] = x1 * std::cos(theta) - x2 * std::sin(theta);
            head[b] = x1 * std::sin(theta) + x2 * std::cos(theta);
        }
    };
    const std::vector<double> embd = weights("token_embd.weight");
    std::vector<std::vector<double>> h(T);
    for (std::size_t t = 0; t < T; ++t) h[t].assign(embd.begin() + tokens[t] * d, embd.begin() + (tokens[t] + 1) * d);
    for (int l = 0; l < s.layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        const auto attn_norm = weights(p + "attn_norm.weight"), wq = weights(p + "attn_q.weight"),
                   wk = weights(p + "attn_k.weight"), wv = weights(p + "attn_v.weight"), wo = weights(p + "attn_output.weight"),
                   ffn_norm = weights(p + "ffn_norm.weight"), wg = weights(p + "ffn_gate.weight"),
                   wu = weights(p + "ffn_up.weight"), wd = weights(p + "ffn_down.weight");
        const auto bq = optional(p + "attn_q.bias"), bk = optional(p + "attn_k.bias"), bv = optional(p + "attn_v.bias"),
                   qn = optional(p + "attn_q_norm.weight"), kn = optional(p + "attn_k_norm.weight");
        std::vector<std::vector<double>> q(T), k(T), v(T);
        for (std::size_t t = 0; t < T; ++t) {
            std::vector<double> x(d);
            rms(h[t].data(), attn_norm.data(), d, x.data());
            q[t] = matvec(wq, x, H * D);
            k[t] = matvec(wk, x, Hkv * D);
            v[t] = matvec(wv, x, Hkv * D);
            for (std::size_t i = 0; i < bq.size(); ++i) q[t][i] += bq[i];
            for (std::size_t i = 0; i < bk.size(); ++i) k[t][i] += bk[i];
            for (std::size_t i = 0; i < bv.size(); ++i) v[t][i] += bv[i];
            if (!qn.empty()) {
                for (std::size_t hh = 0; hh < H; ++hh) rms(&q[t][hh * D], qn.data(), D, &q[t][hh * D]);
                for (std::size_t hh = 0; hh < Hkv; ++hh) rms(&k[t][hh * D], kn.data(), D, &k[t][hh * D]);
            }
            for (std::size_t hh = 0; hh < H; ++hh) rope(&q[t][hh * D], t);
            for (std::size_t hh = 0; hh < Hkv; ++hh) rope(&k[t][hh * D], t);
        }
        for (std::size_t t = 0; t < T; ++t) {
            std::vector<double> attention(H * D, 0.0);
            for (std::size_t hh = 0; hh < H; ++hh) {
                const std::size_t g = hh / (H / Hkv);
                std::vector<double> score(t + 1);
                double top = -1e300;
                for (std::size_t j = 0; j <= t; ++j) {
                    double dot = 0;
                    for (std::size_t e = 0; e < D; ++e) dot += q[t][hh * D + e] * k[j][g * D + e];
                    score[j] = dot / std::sqrt(static_cast<double>(D));
                    top = std::max(top, score[j]);
                }
                double total = 0;
                for (double& x : score) total += (x = std::exp(x - top));
                for (std::size_t j = 0; j <= t; ++j)
                    for (std::size_t e = 0; e < D; ++e) attention[hh * D + e] += score[j] / total * v[j][g * D + e];
            }
            const auto out = matvec(wo, attention, d);
            for (std::size_t i = 0; i < d; ++i) h[t][i] += out[i];
            std::vector<double> x(d);
            rms(h[t].data(), ffn_norm.data(), d, x.data());
            auto gate = matvec(wg, x, static_cast<std::size_t>(s.hidden));
            const auto up = matvec(wu, x, static_cast<std::size_t>(s.hidden));
            for (std::size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
            const auto down = matvec(wd, gate, d);
            for (std::size_t i = 0; i < d; ++i) h[t][i] += down[i];
        }
    }
    const auto out_norm = weights("output_norm.weight"), out_w = weights("output.weight");
    std::vector<double> logits;
    for (std::size_t t = 0; t < T; ++t) {
        std::vector<double> x(d);
        rms(h[t].data(), out_norm.data(), d, x.data());
        const auto row = matvec(out_w, x, static_cast<std::size_t>(s.vocab));
        logits.insert(logits.end(), row.begin(), row.end());
    }
    return logits;
}

// Each architecture make-model writes (llama with a head size other than dim / heads and Llama
// 3.1's rope_freqs, qwen2 with biases, qwen3 with per-head norms and key_length) runs equal to
// the scalar forward pass above, and the fusion identities hold on it: every row selected by A3
// and full reuse at ratio 1 give the full prefill's logits.
#if defined(__SANITIZE_ADDRESS__)
constexpr int kArchitecturePrefix = 150;
#else
constexpr int kArchitecturePrefix = 1200;
#endif
TEST_F(RandomModel, ArchitecturesMatchAScalarForwardPass) {
    struct Case {
        std::string arch, args;
        int head_dim;
    };
    const std::vector<Case> cases = {
        {"llama", "--head-dim 24 --rope-freqs --rope-base 500000", 24},
        {"llama", "--rope-freqs", 16},
        {"qwen2", "", 16},
        {"qwen3", "--head-dim 24 --rope-base 1000000", 24},
    };
    int n = 0;
    for (const Case& c : cases) {
        const std::string name = c.arch + std::to_string(n++) + ".gguf";
        ASSERT_EQ(make(name, "--arch " + c.arch + " --dim 64 --layers 3 --heads 4 --kv-heads 2 --hidden 160 --vocab 400 " +
                                 "--context 4096 " + c.args), 0) << c.arch << " " << c.args;
        const auto file = GgufFile::open(path(name));
        const LlamaModel model(file);
        EXPECT_EQ(model.architecture(), c.arch);
        EXPECT_EQ(model.shape().head_dim, c.head_dim);
        EXPECT_EQ(model.shape().rope.freq_factors.empty(), c.args.find("--rope-freqs") == std::string::npos);
        std::mt19937 rng(static_cast<std::uint32_t>(n));
        std::uniform_int_distribution<int> token(3, 399);
        // A long prefix puts the chunks and question near position 1200: a missing rope_freqs
        // divisor changes the angles of the middle band (wavelengths 2K-8K) by radians there.
        // Under the sanitizers 150 tokens: the same code runs (every layer, head and method),
        // instrumented, on an eighth of the positions and 1/64 of the attention's work; the plain
        // builds make the rope_freqs check at 1200.
        Request r;
        r.prefix = {model.bos()};
        for (int k = 0; k < kArchitecturePrefix; ++k) r.prefix.push_back(token(rng));
        for (int k = 0; k < 2; ++k) {
            TokenIds ids(6);
            for (auto& t : ids) t = token(rng);
            r.chunks.push_back(ids);
        }
        r.question.resize(4);
        for (auto& t : r.question) t = token(rng);
        std::vector<std::int32_t> all = r.prefix;
        for (const auto& chunk : r.chunks) all.insert(all.end(), chunk.begin(), chunk.end());
        all.insert(all.end(), r.question.begin(), r.question.end());

        FusionOptions full;
        full.method = Method::full;
        const FusionRun run = run_request(model, r, {}, full);
        const ScalarSpec spec{c.arch, 64, 4, 2, c.head_dim, 160, 400, 3,
                              c.args.find("500000") != std::string::npos    ? 500000.0
                              : c.args.find("1000000") != std::string::npos ? 1000000.0
                                                                             : 10000.0};
        const std::vector<double> expected = scalar_forward(*file, spec, all);
        const std::size_t M = r.question.size(), V = 400, first = all.size() - M;
        ASSERT_EQ(run.logits.size(), M * V);
        double worst = 0;
        for (std::size_t m = 0; m < M; ++m)
            for (std::size_t v = 0; v < V; ++v) {
                const double want = expected[(first + m) * V + v];
                worst = std::max(worst, std::fabs(run.logits[m * V + v] - want));
                ASSERT_NEAR(run.logits[m * V + v], want, 1e-4 * std::max(1.0, std::fabs(want))) << c.arch << " m=" << m << " v=" << v;
            }
        std::printf("%s %s: max |logit - scalar| %.2e\n", c.arch.c_str(), c.args.c_str(), worst);

        std::vector<ChunkKv> stored;
        std::vector<ChunkKvView> views;
        for (const auto& chunk : r.chunks) stored.push_back(compute_chunk_kv(model, chunk));
        for (const auto& chunk : stored) views.push_back(chunk.view());
        FusionOptions every_row;
        every_row.method = Method::a3;
        every_row.ratio = 1.0;
        EXPECT_EQ(run_request(model, r, views, every_row).logits, run.logits) << c.arch;
    }
}

// make-model refuses what it cannot write; a chat template's markers become control tokens.
TEST_F(RandomModel, ArchitectureOptionsAndChatMarkers) {
    EXPECT_NE(make("bad_arch.gguf", kSmall + " --arch gemma"), 0);
    EXPECT_NE(make("bad_head.gguf", kSmall + " --head-dim 7"), 0);
    EXPECT_NE(make("bad_chat.gguf", kSmall + " --chat-template jinja"), 0);
    EXPECT_EQ(make("chat.gguf", kSmall + " --chat-template chatml"), 0);
    const LlamaModel chat(GgufFile::open(path("chat.gguf")));
    const std::vector<std::int32_t> ids = chat.tokenizer().encode("<|im_start|>user\nhi<|im_end|>", true);
    ASSERT_GE(ids.size(), 3u);
    EXPECT_EQ(ids.front(), 398) << "the markers are the last ids, read as control tokens";
    EXPECT_EQ(ids.back(), 399);
}

TEST_F(RandomModel, ReplacesAFileOnlyWhenForcedAndNeverLeavesTemporaries) {
    {
        std::ofstream(path("keep.gguf")) << "precious";
    }
    EXPECT_NE(make("keep.gguf", kSmall), 0);
    EXPECT_EQ(read_bytes(path("keep.gguf")), "precious");
    EXPECT_EQ(make("keep.gguf", kSmall + " --force"), 0);
    EXPECT_EQ(LlamaModel(GgufFile::open(path("keep.gguf"))).shape().dim, 64);
    EXPECT_NE(make("keep.gguf", kShape + " --heads 3 --force"), 0) << "a bad shape is refused before writing";
    EXPECT_EQ(LlamaModel(GgufFile::open(path("keep.gguf"))).shape().dim, 64);
    EXPECT_NE(make("no-such-dir/m.gguf", kSmall), 0);
    EXPECT_FALSE(has_temporary_files());
}

}  // namespace
