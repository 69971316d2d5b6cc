#include "fusion/chunk_source.h"

#include <chrono>
#include <cstring>
#include <optional>
#include <stdexcept>

#include "store/chunk_store.h"
#include "store/chunk_stream.h"

namespace kvfuse::fusion {

namespace {

// Stored alongside K and V of layer 0: the position of the chunk's first row when it was
// computed (1: after its own BOS), which re-rotation needs.
constexpr const char* kStartSection = "start_position";

std::span<const std::byte> bytes_of(std::span<const float> v) {
    return std::as_bytes(std::span<const float>(v));
}

// Per layer, the keys quantized for the scoring kernel (QuantizedKeys in pipeline.h).
constexpr const char* kKeysI8 = "k_i8";
constexpr const char* kKeysI8Scales = "k_i8_scale";
constexpr const char* kKeysI8Means = "k_i8_mean";
constexpr const char* kKeysI4 = "k_i4";  // two per byte, (head_dim + 1) / 2 bytes per (token, KV head)
constexpr const char* kKeysI4Scales = "k_i4_scale";
constexpr const char* kKeysI4Means = "k_i4_mean";

void add_quantized_sections(const ModelShape& s, std::size_t tokens, const QuantizedKeys& q,
                            kvfuse::store::LayerInput& layer) {
    using kvfuse::store::DType;
    const std::uint64_t T = tokens, Hkv = static_cast<std::uint64_t>(s.kv_heads),
                        D = static_cast<std::uint64_t>(s.head_dim);
    layer.extra_sections.push_back({kKeysI8, DType::i8, {T, Hkv, D}, std::as_bytes(std::span(q.i8))});
    layer.extra_sections.push_back({kKeysI8Scales, DType::f32, {T, Hkv}, std::as_bytes(std::span(q.i8_scales))});
    layer.extra_sections.push_back({kKeysI8Means, DType::f32, {Hkv, D}, std::as_bytes(std::span(q.i8_means))});
    layer.extra_sections.push_back({kKeysI4, DType::u8, {T, Hkv, (D + 1) / 2}, std::as_bytes(std::span(q.i4))});
    layer.extra_sections.push_back({kKeysI4Scales, DType::f32, {T, Hkv}, std::as_bytes(std::span(q.i4_scales))});
    layer.extra_sections.push_back({kKeysI4Means, DType::f32, {Hkv, D}, std::as_bytes(std::span(q.i4_means))});
}

// The quantized keys of one stored layer, or nullopt when a section is missing or of the wrong
// size (a file written before they were stored, or by another writer): then the chunk is
// recomputed rather than trusted.
std::optional<QuantizedKeysView> quantized_sections(const kvfuse::store::ChunkView& view, std::uint32_t layer,
                                                    const ModelShape& s) {
    const std::size_t T = view.token_count(), Hkv = static_cast<std::size_t>(s.kv_heads),
                      D = static_cast<std::size_t>(s.head_dim);
    auto section = [&](const char* name) { return view.find_section(layer, name); };
    const auto *i8 = section(kKeysI8), *i8s = section(kKeysI8Scales), *i8m = section(kKeysI8Means), *i4 = section(kKeysI4),
               *i4s = section(kKeysI4Scales), *i4m = section(kKeysI4Means);
    if (!i8 || !i8s || !i8m || !i4 || !i4s || !i4m) return std::nullopt;
    if (i8->as_i8().size() != T * Hkv * D || i8s->as_f32().size() != T * Hkv || i8m->as_f32().size() != Hkv * D ||
        i4->as_u8().size() != T * Hkv * ((D + 1) / 2) || i4s->as_f32().size() != T * Hkv || i4m->as_f32().size() != Hkv * D)
        return std::nullopt;
    return QuantizedKeysView{i8->as_i8().data(), i8s->as_f32().data(), i8m->as_f32().data(),
                             i4->as_u8().data(), i4s->as_f32().data(), i4m->as_f32().data()};
}

// A streamed chunk's layers, for the pipeline: the stream and the view it handed out, kept
// alive together with the request's Held.
struct StreamedChunk final : LayerArrival {
    std::shared_ptr<kvfuse::store::ChunkStream> stream;
    kvfuse::store::ChunkView view;
    StreamedChunk(std::shared_ptr<kvfuse::store::ChunkStream> s, kvfuse::store::ChunkView v)
        : stream(std::move(s)), view(std::move(v)) {}
    bool wait(int layer) const override { return stream->wait_layer(static_cast<std::uint32_t>(layer)); }
};

}  // namespace

ChunkSource::ChunkSource(const FusionModel& model, kvfuse::store::ChunkBackend* store) : model_(model), store_(store) {}

ChunkSource::Held ChunkSource::compute_and_store(std::span<const std::int32_t> tokens) {
    auto computed = std::make_shared<ChunkKv>(compute_chunk_kv(model_, tokens, kernels_, threads_));
    if (store_ != nullptr) {
        const ModelShape& s = model_.shape();
        kvfuse::store::StoredChunk chunk;
        chunk.layout.layers = static_cast<std::uint32_t>(s.layers);
        chunk.layout.kv_heads = static_cast<std::uint32_t>(s.kv_heads);
        chunk.layout.head_dim = static_cast<std::uint32_t>(s.head_dim);
        chunk.layout.kv_dtype = kvfuse::store::DType::f32;
        const std::int32_t start = static_cast<std::int32_t>(computed->start_position);
        for (int l = 0; l < s.layers; ++l) {
            kvfuse::store::LayerInput layer;
            layer.keys = bytes_of(computed->cache.k[static_cast<std::size_t>(l)]);
            layer.values = bytes_of(computed->cache.v[static_cast<std::size_t>(l)]);
            if (l == 0)
                layer.extra_sections.push_back({kStartSection, kvfuse::store::DType::i32, {1},
                                                std::as_bytes(std::span<const std::int32_t>(&start, 1))});
            add_quantized_sections(s, computed->cache.tokens, computed->quantized[static_cast<std::size_t>(l)], layer);
            chunk.layers.push_back(std::move(layer));
        }
        const auto key = kvfuse::store::make_chunk_key(model_.fingerprint(), tokens);
        // A failed put only costs a recompute next time: reported through the store's warning
        // hook, not thrown (the request itself has what it needs).
        const kvfuse::store::Status stored = store_->put(key, chunk);
        if (!stored.ok())
            store_->warn(kvfuse::store::Status(stored.code(), stored.message() + "; the chunk is recomputed next time"));
    }
    Held held;
    held.view = computed->view();
    held.owner = computed;
    return held;
}

std::optional<ChunkSource::Held> ChunkSource::from_store(std::span<const std::int32_t> tokens, bool streamed) {
    const auto key = kvfuse::store::make_chunk_key(model_.fingerprint(), tokens);
    std::optional<kvfuse::store::ChunkView> view;
    std::shared_ptr<kvfuse::store::ChunkStream> stream;
    if (streamed) {
        stream = store_->get_streamed(key);
        view = stream->header();
        // Layer 0 holds the start position, which the checks below read.
        if (view && !stream->wait_layer(0)) view.reset();
    } else {
        view = store_->get(key);
    }
    if (!view) return std::nullopt;
    const ModelShape& s = model_.shape();
    const auto& layout = view->layout();
    // The store checked the file against itself (checksums, sizes, key); this checks it against
    // what this model needs. A file that fails is erased, so that the recomputed chunk can take
    // its place (put() keeps a sound file it already has), and reported.
    std::string problem;
    const auto* start_section = view->find_section(0, kStartSection);
    if (layout.layers != static_cast<std::uint32_t>(s.layers) || layout.kv_heads != static_cast<std::uint32_t>(s.kv_heads) ||
        layout.head_dim != static_cast<std::uint32_t>(s.head_dim) || layout.kv_dtype != kvfuse::store::DType::f32) {
        problem = "layout (" + std::to_string(layout.layers) + " layers, " + std::to_string(layout.kv_heads) + " KV heads, head dim " +
                  std::to_string(layout.head_dim) + ", " + std::string(kvfuse::store::dtype_name(layout.kv_dtype)) +
                  ") is not this model's";
    } else if (start_section == nullptr || start_section->as_i32().size() != 1) {
        problem = "no start_position section";
    } else {
        const std::int64_t start = start_section->as_i32()[0];
        const std::int64_t end = start + static_cast<std::int64_t>(view->token_count());
        if (start < 0 || (s.context > 0 && end > s.context))
            problem = "start_position " + std::to_string(start) + " is outside the model's context";
    }
    Held held;
    if (problem.empty()) {
        std::shared_ptr<const kvfuse::store::ChunkView> shared;
        if (stream && stream->layers_ready() < layout.layers) {
            // Still arriving: the pipeline waits for each layer through the arrival.
            auto streamed_chunk = std::make_shared<StreamedChunk>(stream, *view);
            held.view.arrival = streamed_chunk.get();
            shared = std::shared_ptr<const kvfuse::store::ChunkView>(streamed_chunk, &streamed_chunk->view);
        } else {
            shared = std::make_shared<kvfuse::store::ChunkView>(*view);
        }
        held.view.start_position = start_section->as_i32()[0];
        held.view.tokens = view->token_count();
        for (int l = 0; l < s.layers; ++l) {
            const auto layer = static_cast<std::uint32_t>(l);
            held.view.k.push_back(shared->keys(layer).as_f32().data());
            held.view.v.push_back(shared->values(layer).as_f32().data());
            if (auto quantized = quantized_sections(*shared, layer, s)) held.view.quantized.push_back(*quantized);
        }
        // Without quantized keys: a file written by an older kvfuse, or damaged by a writer.
        if (held.view.quantized.size() != static_cast<std::size_t>(s.layers))
            problem = "quantized keys missing or of the wrong size";
        held.owner = shared;
        held.from_store = true;
    }
    if (problem.empty()) return held;
    held = Held();
    stream.reset();  // its reader stops before the chunk's keys go
    store_->warn(kvfuse::store::Status(kvfuse::store::StatusCode::mismatch,
                                       store_->location_of(key) + ": " + problem + "; erased and recomputed"));
    const kvfuse::store::Status erased = store_->erase(key);
    if (!erased.ok()) store_->warn(erased);
    return std::nullopt;
}

std::optional<ChunkSource::Held> ChunkSource::find(std::span<const std::int32_t> tokens, double* load_ms) {
    if (load_ms) *load_ms = 0.0;
    if (store_ == nullptr) return std::nullopt;
    const auto start = std::chrono::steady_clock::now();
    std::optional<Held> held = from_store(tokens, streaming_);
    if (held && load_ms) *load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return held;
}

ChunkSource::Held ChunkSource::get(std::span<const std::int32_t> tokens, double* load_ms) {
    if (auto held = find(tokens, load_ms)) return std::move(*held);
    return compute_and_store(tokens);
}

ChunkSource::Loaded ChunkSource::get_all(const Request& request) {
    Loaded out;
    for (const auto& chunk : request.chunks) {
        double ms = 0.0;
        out.held.push_back(get(chunk, &ms));
        out.views.push_back(out.held.back().view);
        out.load_ms += ms;
    }
    return out;
}

ChunkSource::Held ChunkSource::get_whole(std::span<const std::int32_t> tokens) {
    if (store_ != nullptr)
        if (auto held = from_store(tokens, /*streamed=*/false)) return std::move(*held);
    return compute_and_store(tokens);
}

std::size_t ChunkSource::run(const Request& request, Loaded& loaded, const FusionOptions& options, FusionRun& run,
                             bool store_only) {
    for (std::size_t restarts = 0;; ++restarts) {
        try {
            run_request(model_, request, loaded.views, options, run);
            return restarts;
        } catch (const ChunkLayerUnavailable& gone) {
            if (store_only || gone.chunk >= loaded.held.size() || restarts > loaded.held.size()) throw;
            // The cause was reported by the store already (which deleted a damaged chunk's keys).
            if (store_ != nullptr)
                store_->warn(kvfuse::store::Status(kvfuse::store::StatusCode::ok,
                                                   std::string(gone.what()) + "; recomputed, the request run again"));
            loaded.held[gone.chunk] = compute_and_store(request.chunks[gone.chunk]);
            loaded.views[gone.chunk] = loaded.held[gone.chunk].view;
        }
    }
}

std::size_t ChunkSource::precompute(std::span<const Request> requests) {
    std::size_t computed = 0;
    for (const Request& r : requests)
        for (const auto& chunk : r.chunks) {
            // Stored means usable by this model: a file from_store() rejects is computed again.
            if (store_ != nullptr && from_store(chunk, /*streamed=*/false)) continue;
            compute_and_store(chunk);
            ++computed;
        }
    return computed;
}

}  // namespace kvfuse::fusion
