// A chunk of random bytes for the store backends' tests (test_chunk_backend, test_redis_backend):
// what a backend stores and hands back bit for bit, whatever the bytes mean.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "store/chunk_store.h"

namespace kvfuse::testing {

struct OwnedChunk {
    kvfuse::store::ChunkKey key;
    std::vector<std::vector<std::byte>> buffers;
    kvfuse::store::StoredChunk chunk;
};

// `layers` layers of f32 K and V, 2 KV heads of `head_dim`, for `tokens` tokens (ids
// seed * id_step + t, keyed with `model`), each layer with a u8 section "extra" of
// extra_bytes(layer) bytes; the bytes drawn from `seed`.
template <class ExtraBytes>
OwnedChunk random_chunk(const std::string& model, std::uint64_t seed, std::uint64_t id_step, std::uint32_t layers,
                        std::uint32_t tokens, std::uint32_t head_dim, ExtraBytes extra_bytes) {
    using namespace kvfuse::store;
    OwnedChunk owned;
    std::vector<std::int32_t> ids;
    for (std::uint32_t t = 0; t < tokens; ++t) ids.push_back(static_cast<std::int32_t>(seed * id_step + t));
    owned.key = make_chunk_key(model, ids);
    owned.chunk.layout = {layers, 2, head_dim, DType::f32};
    owned.buffers.reserve(3 * layers);
    std::mt19937_64 random(seed);
    auto buffer = [&](std::size_t bytes) -> std::span<const std::byte> {
        owned.buffers.emplace_back(bytes);
        for (std::byte& b : owned.buffers.back()) b = static_cast<std::byte>(random());
        return owned.buffers.back();
    };
    for (std::uint32_t l = 0; l < layers; ++l) {
        LayerInput layer;
        layer.keys = buffer(tokens * 2 * head_dim * 4);
        layer.values = buffer(tokens * 2 * head_dim * 4);
        const std::uint32_t extra = extra_bytes(l);
        layer.extra_sections.push_back({"extra", DType::u8, {extra}, buffer(extra)});
        owned.chunk.layers.push_back(std::move(layer));
    }
    return owned;
}

}  // namespace kvfuse::testing
