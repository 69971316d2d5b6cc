// The example's chunk store: the K/V of each document chunk computed alone, in its own frame
// (positions 0..tokens-1, keys after RoPE), kept as f16 as the engine's cache is, and the check
// layer's keys also quantized to int8 once at store time (kvfuse's quantizer: scales and the
// chunk's per-head mean), as a RAG store would keep them for A3 selection. No model: the
// "activations" are deterministic pseudo-random numbers, with a few evidence tokens per chunk
// whose keys point along the question's topic so that the selection has something to find.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <kvfuse/kvfuse.h>

// Deterministic numbers: splitmix64, uniform in [-1, 1).
struct Random {
    std::uint64_t state;
    explicit Random(std::uint64_t seed) : state(seed) {}
    std::uint64_t bits() {
        std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    float uniform() { return static_cast<float>(bits() >> 40) * (2.0f / 16777216.0f) - 1.0f; }
};

inline std::uint64_t seed_of(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t d) {
    Random r(((a * 1000003u + b) * 1000003u + c) * 1000003u + d);
    return r.bits();
}

struct ModelShape {
    std::size_t layers, check_layer, query_heads, kv_heads, head_dim;
    std::size_t token_elements() const { return kv_heads * head_dim; }
    std::size_t query_elements() const { return query_heads * head_dim; }
};

struct StoredChunk {
    std::size_t tokens = 0;
    std::vector<std::uint16_t> keys, values;  // [layers][tokens][kv_heads][head_dim], f16
    std::vector<std::int8_t> check_keys_i8;   // the check layer's keys, kvfuse_quantize_keys_i8_typed
    std::vector<float> check_key_scales;      // [tokens][kv_heads]
    std::vector<float> check_key_means;       // [kv_heads][head_dim]

    const std::uint16_t* layer_keys(const ModelShape& m, std::size_t layer) const {
        return keys.data() + layer * tokens * m.token_elements();
    }
    const std::uint16_t* layer_values(const ModelShape& m, std::size_t layer) const {
        return values.data() + layer * tokens * m.token_elements();
    }
};

// The question's topic per KV head (pre-RoPE); the question's queries lean on it.
std::vector<float> question_topic(const ModelShape& m, std::uint64_t seed);

// Computes chunk `index` of `tokens` tokens. RoPE runs on `context`.
StoredChunk compute_chunk(const ModelShape& m, const kvfuse_rope_config& rope, kvfuse_context* context,
                          std::size_t index, std::size_t tokens, const std::vector<float>& topic);
