// The bundled stories260K model reproduces its known behaviour (driver/models/PROVENANCE.md)
// on every ISA: the tokenizer's ids, the top next-token logit, the greedy continuation; and
// the fusion identities hold on this real model too.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>

#include "fusion/chunk_source.h"
#include "fusion/evaluation.h"
#include "fusion/loaded_model.h"
#include "fusion/requests.h"
#include "model/tokenizer.h"
#include "fusion/metrics.h"
#include "fusion/pipeline.h"
#include "isa_test_support.h"
#include "model/llama_model.h"
#include "store/chunk_store.h"
#include "store/chunk_stream.h"

#include <chrono>
#include <thread>

namespace {

using namespace kvfuse::fusion;

const LoadedModel& bundled() {
    static const LoadedModel loaded = load_model(bundled_model_path());
    return loaded;
}

class ModelTest : public kvfuse::testing::IsaTest {};
KVFUSE_INSTANTIATE_ISA_TESTS(ModelTest);

TEST(Tokenizer, EncodesAndDecodesLikeSentencePiece) {
    const LoadedModel& m = bundled();
    EXPECT_EQ(m.tokenize("Once upon a time"), (TokenIds{403, 407, 261, 378}));
    EXPECT_EQ(m.detokenize(TokenIds{1, 403, 407, 261, 378}), " Once upon a time");
    // Characters outside the vocabulary fall back to their UTF-8 bytes and decode back.
    const std::string unusual = "caf\xC3\xA9 \xE2\x9C\x93!";
    const TokenIds ids = m.tokenize(unusual);
    EXPECT_EQ(m.detokenize(ids), " " + unusual);
    // Invalid UTF-8 (found by fuzz_tokenizer): a lead byte without its continuation bytes used
    // to take the space after it into one byte-fallback symbol, which decoded as U+2581.
    for (const std::string bad : {"stray \xF5 bytes", "\xE6 x", "\xF0\x9F a", "\xC3 \xFF\xFE end", "\xE2\x96"})
        EXPECT_EQ(m.detokenize(m.tokenize(bad)), " " + bad);
    EXPECT_TRUE(m.tokenize("").empty());
}

// A byte piece must be "<0x" two hex digits ">": "<0x-1>" (sscanf's %X takes a sign) indexed
// the byte table at 2^32 - 1 (found by fuzz_gguf); now it is an ordinary, unused piece.
TEST(Tokenizer, BytePiecesNeedTwoHexDigits) {
    const kvfuse::model::Tokenizer t({"<unk>", "<0x-1>", "<0x+4>", "<0x41>", "\xE2\x96\x81" "b"}, {0, 0, 0, 0, 0},
                                     {2, 6, 6, 6, 1}, 0, 0);
    // " A": the three bytes of U+2581 have no byte piece (unknown each), then A is <0x41>.
    EXPECT_EQ(t.encode("A"), (std::vector<std::int32_t>{0, 0, 0, 3}));
}

TEST_P(ModelTest, KnownLogitAndGreedyContinuation) {
    const LoadedModel& m = bundled();
    Request r;
    r.prefix = {m.model->bos()};
    r.question = m.tokenize("Once upon a time");
    FusionOptions full;
    full.method = Method::full;
    FusionRun run = run_request(*m.model, r, {}, full);
    const std::size_t vocab = 512;
    const auto last = std::span<const float>(run.logits).subspan(3 * vocab, vocab);
    const std::size_t best = argmax(last);
    EXPECT_EQ(m.detokenize(TokenIds{static_cast<std::int32_t>(best)}), ",");
    EXPECT_NEAR(last[best], 17.80, 0.01);
    const auto tokens = greedy_decode(*m.model, run.cache, static_cast<std::int32_t>(best), 40, run.kernels.request());
    const std::string text = "Once upon a time" + m.detokenize(tokens);
    const std::string known =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw "
        "a big, red ball.";
    EXPECT_EQ(text.substr(0, known.size()), known);
}

// The identities of ALGORITHMS.md on the real model (the tiny random model tests them too).
TEST_P(ModelTest, FusionIdentitiesHold) {
    const LoadedModel& m = bundled();
    const FusionModel& model = *m.model;
    Request r;
    r.prefix = {model.bos()};
    for (const char* text : {"Tom had a red kite.", "The sun was hot and the sky was blue.", "Lily saw a big dog."})
        r.chunks.push_back(m.tokenize(text));
    r.question = m.tokenize("Then Tom and Lily went to the park");
    std::vector<ChunkKv> stored;
    std::vector<ChunkKvView> views;
    for (const auto& c : r.chunks) stored.push_back(compute_chunk_kv(model, c));
    for (const auto& s : stored) views.push_back(s.view());
    FusionOptions full;
    full.method = Method::full;
    const FusionRun reference = run_request(model, r, {}, full);
    FusionOptions all;
    all.method = Method::a3;
    all.ratio = 1.0;
    EXPECT_EQ(run_request(model, r, views, all).logits, reference.logits);
    FusionOptions reuse;
    reuse.method = parse_method("reuse");
    FusionOptions reuse_no_layer0 = reuse;
    reuse_no_layer0.recompute_layer0 = false;
    const auto a = run_request(model, r, views, reuse).logits;
    const auto b = run_request(model, r, views, reuse_no_layer0).logits;
    for (std::size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-3);
    // One chunk holding the whole document, fused by full reuse, is the full prefill.
    Request one = r;
    one.chunks = {r.chunks[0]};
    for (std::size_t c = 1; c < r.chunks.size(); ++c) one.chunks[0].insert(one.chunks[0].end(), r.chunks[c].begin(), r.chunks[c].end());
    const ChunkKv whole = compute_chunk_kv(model, one.chunks[0]);
    const std::vector<ChunkKvView> whole_view = {whole.view()};
    const auto fused = run_request(model, one, whole_view, reuse).logits;
    const auto exact = run_request(model, one, {}, full).logits;
    for (std::size_t i = 0; i < fused.size(); ++i) ASSERT_NEAR(fused[i], exact[i], 1e-3);
}

}  // namespace

// kvfuse eval's per-layer KV deviation on the bundled model: layer 0's K/V depend only on token
// and position, so every fused cache equals full prefill's there (deviation exactly 0); reuse
// deviates in every later layer; the per-layer values average to the reported mean.
TEST(Evaluation, PerLayerKvDeviation) {
    const LoadedModel& m = bundled();
    std::ifstream in(kvfuse::fusion::bundled_text_path());
    ASSERT_TRUE(in) << kvfuse::fusion::bundled_text_path();
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    kvfuse::fusion::StoryRequestOptions ro;
    ro.count = 2;
    ro.bos = m.model->bos();
    const auto requests = kvfuse::fusion::continuous_requests(kvfuse::fusion::split_paragraphs(text), m.tokenize, ro);
    ASSERT_EQ(requests.size(), 2u);
    kvfuse::fusion::ChunkSource chunks(*m.model, nullptr);
    kvfuse::fusion::EvalOptions options;
    options.methods = {kvfuse::fusion::parse_method("reuse"), kvfuse::fusion::Method::a3};
    options.ratios = {0.15};
    options.decode_tokens = 2;
    const auto result = kvfuse::fusion::evaluate(m, requests, chunks, options, nullptr);
    const std::size_t layers = static_cast<std::size_t>(m.model->shape().layers);
    ASSERT_EQ(result.summaries.size(), 2u);
    for (const auto& measurement : result.measurements) {
        ASSERT_EQ(measurement.kv_deviation_layers.size(), layers);
        EXPECT_EQ(measurement.kv_deviation_layers[0], 0.0) << measurement.method;
        double sum = 0;
        for (double d : measurement.kv_deviation_layers) sum += d;
        EXPECT_NEAR(sum / static_cast<double>(layers), measurement.kv_deviation, 1e-12);
        if (measurement.method == "reuse") {
            for (std::size_t l = 1; l < layers; ++l) EXPECT_GT(measurement.kv_deviation_layers[l], 0.0) << l;
        }
    }
    for (const auto& s : result.summaries) ASSERT_EQ(s.kv_deviation_layers.size(), layers);
    EXPECT_NE(kvfuse::fusion::format_table(result, false).find("KV deviation per layer"), std::string::npos);
}

namespace {

// Chunks go into the store with their quantized keys and come back with the same bytes; a file
// stored without them (an older kvfuse) is replaced rather than used.
TEST(ChunkSourceStore, QuantizedKeysRoundTripAndOldFilesAreReplaced) {
    const LoadedModel& m = bundled();
    const auto dir = std::filesystem::temp_directory_path() / ("kvfuse-test-source-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    kvfuse::store::ChunkStoreOptions options;
    options.sync_writes = false;
    auto opened = kvfuse::store::ChunkStore::open(dir, options);
    ASSERT_TRUE(opened.ok()) << opened.status().to_string();
    kvfuse::store::ChunkStore& store = opened.value();
    const TokenIds tokens = m.tokenize("Once upon a time there was a little dog who liked to run in the park.");
    const ModelShape& s = m.model->shape();
    const std::size_t elements = tokens.size() * s.kv_row();

    ChunkSource source(*m.model, &store);
    const auto computed = source.get(tokens);
    ASSERT_FALSE(computed.from_store);
    ASSERT_EQ(computed.view.quantized.size(), static_cast<std::size_t>(s.layers));
    const auto loaded = source.get(tokens);
    ASSERT_TRUE(loaded.from_store);
    ASSERT_EQ(loaded.view.quantized.size(), static_cast<std::size_t>(s.layers));
    for (int l = 0; l < s.layers; ++l) {
        const auto& a = computed.view.quantized[static_cast<std::size_t>(l)];
        const auto& b = loaded.view.quantized[static_cast<std::size_t>(l)];
        EXPECT_TRUE(std::equal(a.i8, a.i8 + elements, b.i8)) << l;
        EXPECT_TRUE(std::equal(a.i4, a.i4 + tokens.size() * s.kv_heads * ((s.head_dim + 1) / 2), b.i4)) << l;
        EXPECT_TRUE(std::equal(a.i8_scales, a.i8_scales + tokens.size() * s.kv_heads, b.i8_scales)) << l;
        EXPECT_TRUE(std::equal(a.i4_means, a.i4_means + s.kv_row(), b.i4_means)) << l;
    }

    // An older file: K, V and the start position only.
    const auto key = kvfuse::store::make_chunk_key(m.model->fingerprint(), tokens);
    ASSERT_TRUE(store.erase(key).ok());
    store.clear_memory_cache();
    kvfuse::store::StoredChunk old;
    old.layout = {static_cast<std::uint32_t>(s.layers), static_cast<std::uint32_t>(s.kv_heads),
                  static_cast<std::uint32_t>(s.head_dim), kvfuse::store::DType::f32};
    const std::int32_t start = 1;
    for (int l = 0; l < s.layers; ++l) {
        kvfuse::store::LayerInput layer;
        layer.keys = std::as_bytes(std::span<const float>(computed.view.k[static_cast<std::size_t>(l)], elements));
        layer.values = std::as_bytes(std::span<const float>(computed.view.v[static_cast<std::size_t>(l)], elements));
        if (l == 0)
            layer.extra_sections.push_back({"start_position", kvfuse::store::DType::i32, {1},
                                            std::as_bytes(std::span<const std::int32_t>(&start, 1))});
        old.layers.push_back(std::move(layer));
    }
    ASSERT_TRUE(store.put(key, old).ok());
    store.clear_memory_cache();
    EXPECT_FALSE(source.get(tokens).from_store);  // recomputed, and stored again in full
    store.clear_memory_cache();
    const auto again = source.get(tokens);
    EXPECT_TRUE(again.from_store);
    EXPECT_EQ(again.view.quantized.size(), static_cast<std::size_t>(s.layers));
    std::filesystem::remove_all(dir);
}

// A directory store whose streamed reads hand out layers one at a time, a little apart, as a
// remote store's do; with `break_at` set, the stream of the chunk `broken` ends at that layer
// (and the chunk is erased, as Redis deletes a damaged chunk's keys).
class SlowStreamStore final : public kvfuse::store::ChunkBackend {
   public:
    explicit SlowStreamStore(kvfuse::store::ChunkStore& inner) : inner_(inner) {}
    std::optional<kvfuse::store::ChunkView> get(const kvfuse::store::ChunkKey& key) override { return inner_.get(key); }
    std::shared_ptr<kvfuse::store::ChunkStream> get_streamed(const kvfuse::store::ChunkKey& key) override {
        auto stream = std::make_shared<kvfuse::store::ChunkStream>();
        const bool breaks = broken.has_value() && key.digest == broken->digest;
        stream->start_reader([this, key, breaks](kvfuse::store::ChunkStream& s) {
            std::optional<kvfuse::store::ChunkView> view = inner_.get(key);
            if (!view) return s.fail(kvfuse::store::Status(kvfuse::store::StatusCode::ok, "absent"));
            s.publish_header(*view);
            for (std::uint32_t l = 0; l < view->layout().layers; ++l) {
                // Held after layer 0 while the test asks: otherwise a descheduled test thread can
                // find the whole chunk arrived, which it rightly takes as a whole (no arrival).
                while (l == 1 && hold_after_first_layer.load() && !s.cancelled())
                    std::this_thread::sleep_for(std::chrono::milliseconds(1));
                if (s.cancelled()) return s.fail(kvfuse::store::Status(kvfuse::store::StatusCode::ok, "cancelled"));
                std::this_thread::sleep_for(std::chrono::milliseconds(2));
                if (breaks && l == break_at) {
                    (void)inner_.erase(key);
                    return s.fail(kvfuse::store::Status(kvfuse::store::StatusCode::corrupt, "layer gone"));
                }
                s.publish_layers(l + 1);
            }
        });
        ++streams;
        return stream;
    }
    kvfuse::store::Status put(const kvfuse::store::ChunkKey& key, const kvfuse::store::StoredChunk& chunk) override {
        return inner_.put(key, chunk);
    }
    kvfuse::store::Status erase(const kvfuse::store::ChunkKey& key) override { return inner_.erase(key); }
    kvfuse::store::Result<std::vector<kvfuse::store::ChunkDigest>> list() override { return inner_.list(); }
    std::optional<std::vector<std::int32_t>> tokens_of(const kvfuse::store::ChunkDigest& d, std::string_view f) override {
        return inner_.tokens_of(d, f);
    }
    void warn(const kvfuse::store::Status& status) const override { inner_.warn(status); }
    std::string location() const override { return inner_.location(); }
    std::string location_of(const kvfuse::store::ChunkKey& key) const override { return inner_.location_of(key); }
    std::vector<kvfuse::store::BackendStats> backend_stats() const override { return inner_.backend_stats(); }

    std::optional<kvfuse::store::ChunkKey> broken;
    std::uint32_t break_at = 0;
    int streams = 0;
    std::atomic<bool> hold_after_first_layer{false};

   private:
    kvfuse::store::ChunkStore& inner_;
};

// Streamed chunks (layers arriving while earlier layers are computed) give the answer of
// chunks read whole, bit for bit, for every method; a stream that breaks off mid-request makes
// that chunk a miss: recomputed and the request run again, same answer, or (store-only) an error.
TEST(ChunkSourceStore, StreamedChunksGiveTheWholeChunksAnswerAndABrokenStreamIsRecomputed) {
    const LoadedModel& m = bundled();
    const auto dir = std::filesystem::temp_directory_path() / ("kvfuse-test-stream-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    kvfuse::store::ChunkStoreOptions options;
    options.sync_writes = false;
    options.memory_cache_bytes = 0;
    options.warning = [](const kvfuse::store::Status&) {};
    auto opened = kvfuse::store::ChunkStore::open(dir, options);
    ASSERT_TRUE(opened.ok()) << opened.status().to_string();
    kvfuse::store::ChunkStore& directory = opened.value();
    SlowStreamStore store(directory);
    Request r;
    r.prefix = {m.model->bos()};
    r.chunks = {m.tokenize("Once upon a time there was a little dog who liked to run in the park."),
                m.tokenize("Lily had a red ball. She threw it high and her cat ran after it."),
                m.tokenize("The sun was warm and the birds sang in the big green tree.")};
    r.question = m.tokenize("What did the dog like?");
    const int L = m.model->shape().layers;
    ASSERT_GE(L, 3);

    ChunkSource cold(*m.model, nullptr);  // every chunk computed for the request
    ChunkSource whole(*m.model, &store), streamed(*m.model, &store);
    whole.set_streaming(false);
    ASSERT_EQ(whole.precompute(std::span<const Request>(&r, 1)), r.chunks.size());
    for (Method method : fused_methods()) {
        FusionOptions o;
        o.method = method;
        o.ratio = 0.3;
        FusionRun expected, got_whole, got_streamed, got_broken;
        ChunkSource::Loaded computed = cold.get_all(r);
        cold.run(r, computed, o, expected);
        ChunkSource::Loaded read = whole.get_all(r);
        for (const auto& held : read.held) ASSERT_TRUE(held.from_store && held.view.arrival == nullptr);
        EXPECT_EQ(whole.run(r, read, o, got_whole), 0u);
        store.hold_after_first_layer = true;
        ChunkSource::Loaded streaming = streamed.get_all(r);
        for (const auto& held : streaming.held) EXPECT_TRUE(held.from_store && held.view.arrival != nullptr);
        store.hold_after_first_layer = false;
        EXPECT_EQ(streamed.run(r, streaming, o, got_streamed), 0u);
        EXPECT_EQ(got_whole.logits, expected.logits) << method_name(method);
        EXPECT_EQ(got_streamed.logits, expected.logits) << method_name(method);
        EXPECT_EQ(got_streamed.selected, expected.selected) << method_name(method);

        // Chunk 1's stream breaks off at its last layer: recomputed, the request run again.
        store.broken = kvfuse::store::make_chunk_key(m.model->fingerprint(), r.chunks[1]);
        store.break_at = static_cast<std::uint32_t>(L - 1);
        ChunkSource::Loaded breaking = streamed.get_all(r);
        ASSERT_TRUE(breaking.held[1].from_store);
        EXPECT_EQ(streamed.run(r, breaking, o, got_broken), 1u) << method_name(method);
        EXPECT_FALSE(breaking.held[1].from_store);
        EXPECT_TRUE(breaking.held[0].from_store && breaking.held[2].from_store);
        EXPECT_EQ(got_broken.logits, expected.logits) << method_name(method);

        // Store-only: the same break is an error, never an answer.
        ChunkSource::Loaded refused = streamed.get_all(r);  // chunk 1 was stored again above
        FusionRun unused;
        EXPECT_THROW(streamed.run(r, refused, o, unused, /*store_only=*/true), ChunkLayerUnavailable) << method_name(method);
        store.broken.reset();
        ASSERT_EQ(whole.precompute(std::span<const Request>(&r, 1)), 1u) << "the broken chunk was erased";
    }
    std::filesystem::remove_all(dir);
}

// A stored file that is sound (checksums, key) but that this model cannot use -- no start
// position, a start position outside the context, another layout -- is reported, erased and
// replaced by the recomputed chunk, and precompute() does not count it as stored.
TEST(ChunkSourceStore, FilesTheModelCannotUseAreReplacedAndNotCountedAsStored) {
    const LoadedModel& m = bundled();
    const auto dir = std::filesystem::temp_directory_path() / ("kvfuse-test-reject-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::vector<std::string> warnings;
    kvfuse::store::ChunkStoreOptions options;
    options.sync_writes = false;
    options.warning = [&](const kvfuse::store::Status& s) { warnings.push_back(s.to_string()); };
    auto opened = kvfuse::store::ChunkStore::open(dir, options);
    ASSERT_TRUE(opened.ok()) << opened.status().to_string();
    kvfuse::store::ChunkStore& store = opened.value();
    const TokenIds tokens = m.tokenize("The cat sat on the warm mat and looked at the bird.");
    const ModelShape& s = m.model->shape();
    const auto key = kvfuse::store::make_chunk_key(m.model->fingerprint(), tokens);
    Request request;
    request.prefix = {m.model->bos()};
    request.chunks = {tokens};
    request.question = m.tokenize("Where?");

    struct Case {
        const char* name;
        std::uint32_t layers;
        std::optional<std::int32_t> start;
        const char* expected;
    };
    const Case cases[] = {
        {"no start position", static_cast<std::uint32_t>(s.layers), std::nullopt, "no start_position section"},
        {"negative start", static_cast<std::uint32_t>(s.layers), -7, "start_position -7 is outside"},
        {"start past the context", static_cast<std::uint32_t>(s.layers), s.context, "is outside the model's context"},
        {"other layer count", static_cast<std::uint32_t>(s.layers) + 1, 1, "is not this model's"},
    };
    const std::size_t elements = tokens.size() * s.kv_row();
    const std::vector<float> zeros(elements, 0.0f);
    for (const Case& c : cases) {
        SCOPED_TRACE(c.name);
        ASSERT_TRUE(store.erase(key).ok());
        kvfuse::store::StoredChunk bad;
        bad.layout = {c.layers, static_cast<std::uint32_t>(s.kv_heads), static_cast<std::uint32_t>(s.head_dim),
                      kvfuse::store::DType::f32};
        const std::int32_t start = c.start.value_or(0);
        for (std::uint32_t l = 0; l < c.layers; ++l) {
            kvfuse::store::LayerInput layer;
            layer.keys = std::as_bytes(std::span<const float>(zeros));
            layer.values = std::as_bytes(std::span<const float>(zeros));
            if (l == 0 && c.start)
                layer.extra_sections.push_back({"start_position", kvfuse::store::DType::i32, {1},
                                                std::as_bytes(std::span<const std::int32_t>(&start, 1))});
            bad.layers.push_back(std::move(layer));
        }
        ASSERT_TRUE(store.put(key, bad).ok());
        store.clear_memory_cache();
        warnings.clear();
        ChunkSource source(*m.model, &store);
        EXPECT_EQ(source.precompute(std::span<const Request>(&request, 1)), 1u) << "an unusable file counted as stored";
        ASSERT_EQ(warnings.size(), 1u);
        EXPECT_NE(warnings[0].find(c.expected), std::string::npos) << warnings[0];
        EXPECT_NE(warnings[0].find("erased and recomputed"), std::string::npos) << warnings[0];
        store.clear_memory_cache();
        EXPECT_TRUE(source.get(tokens).from_store) << "the recomputed chunk replaced the file";
        EXPECT_EQ(source.precompute(std::span<const Request>(&request, 1)), 0u);
    }
    std::filesystem::remove_all(dir);
}

// A put that fails (a non-empty directory in the chunk's way) costs a recompute, and is
// reported through the store's warning hook rather than dropped.
TEST(ChunkSourceStore, FailedPutIsReported) {
    const LoadedModel& m = bundled();
    const auto dir = std::filesystem::temp_directory_path() / ("kvfuse-test-putfail-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::vector<std::string> warnings;
    kvfuse::store::ChunkStoreOptions options;
    options.sync_writes = false;
    options.warning = [&](const kvfuse::store::Status& s) { warnings.push_back(s.to_string()); };
    auto opened = kvfuse::store::ChunkStore::open(dir, options);
    ASSERT_TRUE(opened.ok()) << opened.status().to_string();
    kvfuse::store::ChunkStore& store = opened.value();
    const TokenIds tokens = m.tokenize("A small bird sang in the tall green tree.");
    const auto path = store.path_of(kvfuse::store::make_chunk_key(m.model->fingerprint(), tokens));
    std::filesystem::create_directories(path / "in the way");
    ChunkSource source(*m.model, &store);
    EXPECT_FALSE(source.get(tokens).from_store);
    bool reported = false;
    for (const auto& w : warnings) reported = reported || w.find("a directory is in the way") != std::string::npos;
    EXPECT_TRUE(reported) << "warnings: " << ::testing::PrintToString(warnings);
    std::filesystem::remove_all(path);
    EXPECT_FALSE(source.get(tokens).from_store);  // the empty place is written now
    EXPECT_TRUE(source.get(tokens).from_store);
    std::filesystem::remove_all(dir);
}

}  // namespace
