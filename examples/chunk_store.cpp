// chunk_store.h: the stored chunks, computed as a prefill of each chunk alone would leave them.
#include "chunk_store.h"

#include "status.h"

namespace {

// Evidence tokens: every 37th token of a chunk (offset by the chunk's index).
bool is_evidence(std::size_t index, std::size_t token) { return (token + 5 * index) % 37 == 0; }

// kvfuse_quantize_keys_i8_typed has no context form, and above 64 K values it runs on an OpenMP
// team of the thread's default context: one KV head at a time stays below that on the calling
// thread (a head's scales and mean do not depend on the other heads, so the result is the same).
void quantize_check_keys(const ModelShape& m, StoredChunk& chunk) {
    const std::size_t heads = m.kv_heads, dim = m.head_dim, tokens = chunk.tokens;
    const std::uint16_t* keys = chunk.layer_keys(m, m.check_layer);
    chunk.check_keys_i8.assign(tokens * heads * dim, 0);
    chunk.check_key_scales.assign(tokens * heads, 0.0f);
    chunk.check_key_means.assign(heads * dim, 0.0f);
    std::vector<std::int8_t> head_i8(tokens * dim);
    std::vector<float> head_scales(tokens);
    for (std::size_t h = 0; h < heads; ++h) {
        require(kvfuse_quantize_keys_i8_typed(KVFUSE_DTYPE_F16, keys + h * dim, tokens, 1, dim, m.token_elements(),
                                              head_i8.data(), head_scales.data(), chunk.check_key_means.data() + h * dim),
                "kvfuse_quantize_keys_i8_typed");
        for (std::size_t t = 0; t < tokens; ++t) {
            chunk.check_key_scales[t * heads + h] = head_scales[t];
            for (std::size_t d = 0; d < dim; ++d) chunk.check_keys_i8[(t * heads + h) * dim + d] = head_i8[t * dim + d];
        }
    }
}

}  // namespace

std::vector<float> question_topic(const ModelShape& m, std::uint64_t seed) {
    Random random(seed);
    std::vector<float> topic(m.token_elements());
    for (float& x : topic) x = random.uniform();
    return topic;
}

StoredChunk compute_chunk(const ModelShape& m, const kvfuse_rope_config& rope, kvfuse_context* context,
                          std::size_t index, std::size_t tokens, const std::vector<float>& topic) {
    StoredChunk chunk;
    chunk.tokens = tokens;
    const std::size_t row = m.token_elements(), layer_elements = tokens * row;
    chunk.keys.resize(m.layers * layer_elements);
    chunk.values.resize(m.layers * layer_elements);
    std::vector<float> keys(layer_elements), values(layer_elements);
    std::vector<std::int64_t> positions(tokens);
    for (std::size_t t = 0; t < tokens; ++t) positions[t] = static_cast<std::int64_t>(t);
    for (std::size_t layer = 0; layer < m.layers; ++layer) {
        Random random(seed_of(1, index, layer, 0));
        for (std::size_t t = 0; t < tokens; ++t)
            for (std::size_t e = 0; e < row; ++e) {
                // A shared offset per (head, dim) (what the quantizer's mean removes), noise, and
                // on evidence tokens the topic.
                const float offset = 0.5f * topic[(e * 7) % row];
                const float lean = is_evidence(index, t) ? 3.0f * topic[e] : 0.0f;
                keys[t * row + e] = offset + lean + 0.5f * random.uniform();
                values[t * row + e] = random.uniform();
            }
        // Keys after RoPE at the chunk's own positions 0..tokens-1, as its own prefill left them.
        require(kvfuse_ctx_rope_rotate(context, &rope, KVFUSE_DTYPE_F32, keys.data(), tokens, m.kv_heads, row,
                                       positions.data()),
                "kvfuse_ctx_rope_rotate");
        require(kvfuse_f32_to_f16(keys.data(), chunk.keys.data() + layer * layer_elements, layer_elements),
                "kvfuse_f32_to_f16");
        require(kvfuse_f32_to_f16(values.data(), chunk.values.data() + layer * layer_elements, layer_elements),
                "kvfuse_f32_to_f16");
    }
    quantize_check_keys(m, chunk);
    return chunk;
}
