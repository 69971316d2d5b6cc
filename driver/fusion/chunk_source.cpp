#include "fusion/chunk_source.h"

#include <chrono>
#include <cstring>
#include <stdexcept>

#include "store/chunk_store.h"

namespace kvfuse::fusion {

namespace {

// Stored alongside K and V of layer 0: the position of the chunk's first row when it was
// computed (1: after its own BOS), which re-rotation needs.
constexpr const char* kStartSection = "start_position";

std::span<const std::byte> bytes_of(std::span<const float> v) {
    return std::as_bytes(std::span<const float>(v));
}

}  // namespace

ChunkSource::ChunkSource(const FusionModel& model, kvfuse::store::ChunkStore* store) : model_(model), store_(store) {}

ChunkSource::Held ChunkSource::compute_and_store(std::span<const std::int32_t> tokens) {
    auto computed = std::make_shared<ChunkKv>(compute_chunk_kv(model_, tokens));
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
            chunk.layers.push_back(std::move(layer));
        }
        const auto key = kvfuse::store::make_chunk_key(model_.fingerprint(), tokens);
        // A failed put only costs a recompute next time; the store reports it through its hook.
        (void)store_->put(key, chunk);
    }
    Held held;
    held.view = computed->view();
    held.owner = computed;
    return held;
}

ChunkSource::Held ChunkSource::get(std::span<const std::int32_t> tokens, double* load_ms) {
    if (load_ms) *load_ms = 0.0;
    if (store_ != nullptr) {
        const auto start = std::chrono::steady_clock::now();
        const auto key = kvfuse::store::make_chunk_key(model_.fingerprint(), tokens);
        if (auto view = store_->get(key)) {
            const ModelShape& s = model_.shape();
            const auto& layout = view->layout();
            const auto* start_section = view->find_section(0, kStartSection);
            if (layout.layers == static_cast<std::uint32_t>(s.layers) &&
                layout.kv_heads == static_cast<std::uint32_t>(s.kv_heads) &&
                layout.head_dim == static_cast<std::uint32_t>(s.head_dim) &&
                layout.kv_dtype == kvfuse::store::DType::f32 && start_section != nullptr &&
                start_section->as_i32().size() == 1) {
                auto shared = std::make_shared<kvfuse::store::ChunkView>(*view);
                Held held;
                held.view.start_position = start_section->as_i32()[0];
                held.view.tokens = view->token_count();
                for (int l = 0; l < s.layers; ++l) {
                    held.view.k.push_back(shared->keys(static_cast<std::uint32_t>(l)).as_f32().data());
                    held.view.v.push_back(shared->values(static_cast<std::uint32_t>(l)).as_f32().data());
                }
                held.owner = shared;
                held.from_store = true;
                if (load_ms) *load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
                return held;
            }
        }
    }
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

std::size_t ChunkSource::precompute(std::span<const Request> requests) {
    std::size_t computed = 0;
    for (const Request& r : requests)
        for (const auto& chunk : r.chunks) {
            if (store_ != nullptr && store_->get(kvfuse::store::make_chunk_key(model_.fingerprint(), chunk))) continue;
            compute_and_store(chunk);
            ++computed;
        }
    return computed;
}

}  // namespace kvfuse::fusion
