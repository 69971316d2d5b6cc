// Writes the binary seed corpora of the fuzz targets with the project's own writers, so every
// seed is a valid file of the current format: small llama GGUF models (tests/gguf_writer.h)
// and chunk files written by the chunk store. Usage: make_fuzz_seeds <tests/fuzz/seeds>.
// The text seeds (tokenizer, musique, profile) and the C API seeds are committed as written.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gguf_writer.h"
#include "store/chunk_store.h"

namespace {

namespace fs = std::filesystem;
using kvfuse::testing::GgufWriter;

void write_file(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
    fs::create_directories(path.parent_path());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::vector<float> ramp(std::size_t n, float scale) {
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = scale * std::sin(0.7f * static_cast<float>(i) + 0.3f);
    return v;
}

std::vector<std::uint8_t> f16_bytes(const std::vector<float>& v) {
    std::vector<std::uint8_t> out;
    for (float x : v) {
        // Values here are small and normal: exponent and 10 mantissa bits, truncated.
        std::uint32_t bits;
        std::memcpy(&bits, &x, 4);
        const std::uint32_t sign = bits >> 31, exponent = (bits >> 23) & 0xff, mantissa = bits & 0x7fffff;
        std::uint16_t h = x == 0.0f ? 0 : static_cast<std::uint16_t>((sign << 15) | ((exponent - 112) << 10) | (mantissa >> 13));
        out.push_back(static_cast<std::uint8_t>(h));
        out.push_back(static_cast<std::uint8_t>(h >> 8));
    }
    return out;
}

std::vector<std::uint8_t> bf16_bytes(const std::vector<float>& v) {
    std::vector<std::uint8_t> out;
    for (float x : v) {
        std::uint32_t bits;
        std::memcpy(&bits, &x, 4);
        out.push_back(static_cast<std::uint8_t>(bits >> 16));
        out.push_back(static_cast<std::uint8_t>(bits >> 24));
    }
    return out;
}

enum class Weights { f32, f16, bf16 };

// A complete llama-family model the driver loads: dim 8, 2 heads, 1 KV head, ffn 16, one or
// two layers, a 12-piece vocabulary with scores and types.
std::vector<std::uint8_t> tiny_model(const std::string& arch, Weights weights, int layers, const std::string& scaling,
                                     bool with_bias, bool with_output, bool with_alignment) {
    GgufWriter w;
    const std::uint32_t dim = 8, ffn = 16, kv = 4;
    w.add_string("general.architecture", arch);
    if (with_alignment) w.add_u32("general.alignment", 64);
    w.add_u32(arch + ".block_count", static_cast<std::uint32_t>(layers));
    w.add_u32(arch + ".embedding_length", dim);
    w.add_u32(arch + ".attention.head_count", 2);
    w.add_u32(arch + ".attention.head_count_kv", 1);
    w.add_u32(arch + ".context_length", 64);
    w.add_u32(arch + ".feed_forward_length", ffn);
    w.add_f32(arch + ".attention.layer_norm_rms_epsilon", 1e-5f);
    w.add_f32(arch + ".rope.freq_base", 10000.0f);
    w.add_u32(arch + ".rope.dimension_count", 4);
    if (scaling != "none") {
        w.add_string(arch + ".rope.scaling.type", scaling);
        w.add_f32(arch + ".rope.scaling.factor", 8.0f);
        if (scaling == "llama3") w.add_u32(arch + ".rope.scaling.original_context_length", 32);
    }
    const std::vector<std::string> pieces = {"<unk>", "<s>", "</s>", "<0x41>", "\xE2\x96\x81", "O", "n", "c",
                                             "e", "\xE2\x96\x81O", "on", "\xE2\x96\x81Once"};
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_strings("tokenizer.ggml.tokens", pieces);
    w.add_f32s("tokenizer.ggml.scores", {0, 0, 0, 0, -1, -2, -2, -2, -2, -1.5f, -1.2f, -0.5f});
    w.add_i32s("tokenizer.ggml.token_type", {2, 3, 3, 6, 1, 1, 1, 1, 1, 1, 1, 1});
    w.add_u32("tokenizer.ggml.bos_token_id", 1);
    w.add_u32("tokenizer.ggml.eos_token_id", 2);
    const std::uint32_t vocab = static_cast<std::uint32_t>(pieces.size());
    auto tensor = [&](const std::string& name, std::vector<std::uint64_t> dims, float scale) {
        std::uint64_t n = 1;
        for (auto d : dims) n *= d;
        const std::vector<float> values = ramp(n, scale);
        switch (weights) {
            case Weights::f32: w.add_tensor(name, dims, 0, kvfuse::testing::f32_bytes(values)); break;
            case Weights::f16: w.add_tensor(name, dims, 1, f16_bytes(values)); break;
            case Weights::bf16: w.add_tensor(name, dims, 30, bf16_bytes(values)); break;
        }
    };
    tensor("token_embd.weight", {dim, vocab}, 1.0f);
    tensor("output_norm.weight", {dim}, 1.0f);
    if (with_output) tensor("output.weight", {dim, vocab}, 0.3f);
    for (int l = 0; l < layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        tensor(p + "attn_norm.weight", {dim}, 1.0f);
        tensor(p + "attn_q.weight", {dim, dim}, 0.3f);
        tensor(p + "attn_k.weight", {dim, kv}, 0.3f);
        tensor(p + "attn_v.weight", {dim, kv}, 0.3f);
        tensor(p + "attn_output.weight", {dim, dim}, 0.3f);
        tensor(p + "ffn_norm.weight", {dim}, 1.0f);
        tensor(p + "ffn_gate.weight", {dim, ffn}, 0.3f);
        tensor(p + "ffn_up.weight", {dim, ffn}, 0.3f);
        tensor(p + "ffn_down.weight", {ffn, dim}, 0.3f);
        if (with_bias) {
            tensor(p + "attn_q.bias", {dim}, 0.1f);
            tensor(p + "attn_k.bias", {kv}, 0.1f);
            tensor(p + "attn_v.bias", {kv}, 0.1f);
        }
    }
    // A Q8_0 tensor the model does not use: the dequantizer's seed (blocks of 32).
    std::vector<std::uint8_t> q8(34 * 2);
    for (std::size_t i = 0; i < q8.size(); ++i) q8[i] = static_cast<std::uint8_t>(i * 37);
    q8[0] = 0x00;
    q8[1] = 0x3c;  // scale 1.0
    q8[34] = 0x00;
    q8[35] = 0x38;  // scale 0.5
    w.add_tensor("extra.q8_0", {64}, 8, q8);
    return w.bytes();
}

std::vector<std::uint8_t> chunk_file(const fs::path& scratch, kvfuse::store::ChunkLayout layout, std::uint32_t tokens,
                                     bool extra_sections) {
    using namespace kvfuse::store;
    kvfuse::store::ChunkStoreOptions options;
    options.sync_writes = false;
    auto store = ChunkStore::open(scratch, options);
    if (!store.ok()) throw std::runtime_error(store.status().to_string());
    std::vector<std::int32_t> ids;
    for (std::uint32_t t = 0; t < tokens; ++t) ids.push_back(static_cast<std::int32_t>(100 + 7 * t));
    const ChunkKey key = make_chunk_key("gguf-0123456789abcdef", ids);
    const std::uint64_t kv_bytes = dtype_bytes(layout.kv_dtype, std::uint64_t{tokens} * layout.kv_heads * layout.head_dim);
    std::vector<std::vector<std::byte>> buffers;
    buffers.reserve(8 * layout.layers);
    auto buffer = [&](std::size_t bytes) -> std::span<const std::byte> {
        std::vector<std::byte> b(bytes);
        for (std::size_t i = 0; i < bytes; ++i) b[i] = static_cast<std::byte>(i * 13 + buffers.size());
        buffers.push_back(std::move(b));
        return buffers.back();
    };
    StoredChunk chunk;
    chunk.layout = layout;
    for (std::uint32_t l = 0; l < layout.layers; ++l) {
        LayerInput layer;
        layer.keys = buffer(kv_bytes);
        layer.values = buffer(kv_bytes);
        if (extra_sections) {
            const std::uint64_t n = std::uint64_t{tokens} * layout.kv_heads * layout.head_dim;
            layer.extra_sections.push_back({"keys_i8", DType::i8, {tokens, layout.kv_heads, layout.head_dim}, buffer(n)});
            layer.extra_sections.push_back(
                {"keys_i4", DType::i4, {tokens, layout.kv_heads, layout.head_dim}, buffer(dtype_bytes(DType::i4, n))});
            layer.extra_sections.push_back({"scales", DType::f32, {tokens, layout.kv_heads}, buffer(4ull * tokens * layout.kv_heads)});
            layer.extra_sections.push_back({"start", DType::i32, {1}, buffer(4)});
        }
        chunk.layers.push_back(std::move(layer));
    }
    if (Status s = store.value().put(key, chunk); !s.ok()) throw std::runtime_error(s.to_string());
    std::ifstream in(store.value().path_of(key), std::ios::binary);
    return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <seeds directory>\n", argv[0]);
        return 2;
    }
    try {
        const fs::path seeds = argv[1];
        const fs::path gguf = seeds / "gguf";
        write_file(gguf / "llama_f32.gguf", tiny_model("llama", Weights::f32, 1, "none", false, true, false));
        write_file(gguf / "llama_f16_tied.gguf", tiny_model("llama", Weights::f16, 1, "linear", false, false, false));
        write_file(gguf / "mistral_bf16_llama3.gguf", tiny_model("mistral", Weights::bf16, 2, "llama3", false, true, true));
        write_file(gguf / "qwen2_bias.gguf", tiny_model("qwen2", Weights::f32, 1, "none", true, true, false));

        const fs::path scratch = fs::temp_directory_path() / ("kvfuse-fuzz-seeds-" + std::to_string(::getpid()));
        using kvfuse::store::DType;
        const fs::path chunks = seeds / "chunk_file";
        write_file(chunks / "f32_1layer.kvchunk", chunk_file(scratch / "a", {1, 1, 4, DType::f32}, 2, false));
        write_file(chunks / "bf16_2layers_sections.kvchunk", chunk_file(scratch / "b", {2, 2, 4, DType::bf16}, 3, true));
        write_file(chunks / "f32_sections.kvchunk", chunk_file(scratch / "c", {1, 1, 8, DType::f32}, 1, true));
        fs::remove_all(scratch);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "make_fuzz_seeds: %s\n", e.what());
        return 1;
    }
    return 0;
}
