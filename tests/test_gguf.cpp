// The GGUF loader on hand-made files: well-formed ones parse, every kind of damage gives an
// error that names the problem, and F16/BF16/Q8_0 dequantize to hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "gguf_writer.h"
#include "model/gguf.h"
#include "model/llama_model.h"

namespace {

using kvfuse::model::GgufError;
using kvfuse::model::GgufFile;
using kvfuse::testing::f32_bytes;
using kvfuse::testing::GgufWriter;

// Metadata of a 1-layer model (dim 4, 2 heads, `kv_heads` KV heads, ffn 8) with a 4-token
// vocabulary: enough for LlamaModel to read everything but the tensors.
void add_tiny_model_metadata(GgufWriter& w, const std::string& architecture, std::uint32_t kv_heads) {
    w.add_string("general.architecture", architecture);
    w.add_u32(architecture + ".block_count", 1);
    w.add_u32(architecture + ".embedding_length", 4);
    w.add_u32(architecture + ".attention.head_count", 2);
    w.add_u32(architecture + ".attention.head_count_kv", kv_heads);
    w.add_u32(architecture + ".context_length", 16);
    w.add_u32(architecture + ".feed_forward_length", 8);
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_strings("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "a"});
    w.add_f32s("tokenizer.ggml.scores", {0, 0, 0, 0});
    w.add_i32s("tokenizer.ggml.token_type", {2, 3, 3, 1});
}

GgufWriter small_file() {
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    w.add_u32("llama.block_count", 1);
    w.add_tensor("a", {4, 2}, 0, f32_bytes({1, 2, 3, 4, 5, 6, 7, 8}));
    w.add_tensor("b", {4}, 0, f32_bytes({9, 10, 11, 12}));
    return w;
}

std::string error_of(const std::vector<std::uint8_t>& bytes) {
    try {
        GgufFile::parse(bytes, "test.gguf");
    } catch (const GgufError& e) {
        return e.what();
    }
    return "no error";
}

TEST(Gguf, WellFormedFileParses) {
    const auto bytes = small_file().bytes();
    const auto file = GgufFile::parse(bytes, "test.gguf");
    EXPECT_EQ(file->version(), 3u);
    EXPECT_EQ(file->get_string("general.architecture"), "llama");
    EXPECT_EQ(file->get_uint("llama.block_count"), 1u);
    ASSERT_NE(file->tensor("a"), nullptr);
    EXPECT_EQ(file->read_f32(*file->tensor("b")), (std::vector<float>{9, 10, 11, 12}));
    EXPECT_NE(std::string(error_of(bytes)), "x");
    EXPECT_THROW(file->get_uint("missing.key"), GgufError);
    EXPECT_THROW(file->get_uint("general.architecture"), GgufError);
    EXPECT_THROW(file->require_tensor("c"), GgufError);
}

TEST(Gguf, DamagedFilesNameTheProblem) {
    auto bytes = small_file().bytes();
    EXPECT_NE(error_of(small_file().bytes(3, 0x12345678)).find("bad magic"), std::string::npos);
    EXPECT_NE(error_of(small_file().bytes(7)).find("unsupported GGUF version 7"), std::string::npos);
    for (std::size_t cut : {std::size_t{3}, std::size_t{20}, std::size_t{40}, bytes.size() / 2, bytes.size() - 20}) {
        const std::vector<std::uint8_t> truncated(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(cut));
        EXPECT_NE(error_of(truncated).find("truncated"), std::string::npos) << "cut at " << cut << ": " << error_of(truncated);
    }
    GgufWriter unknown_type;
    unknown_type.add_tensor("q4", {32}, 2, std::vector<std::uint8_t>(18));
    EXPECT_NE(error_of(unknown_type.bytes()).find("unsupported type 2"), std::string::npos);
    GgufWriter overlap;
    overlap.add_tensor("x", {8}, 0, f32_bytes(std::vector<float>(8, 1)), 0);
    overlap.add_tensor("y", {8}, 0, f32_bytes(std::vector<float>(8, 2)), 0);
    EXPECT_NE(error_of(overlap.bytes()).find("overlap"), std::string::npos);
    GgufWriter past_end;
    past_end.add_tensor("x", {8}, 0, f32_bytes(std::vector<float>(8, 1)), 1 << 20);
    auto short_file = past_end.bytes();
    short_file.resize(short_file.size() - 4096);  // the offset now points past the end
    EXPECT_NE(error_of(short_file).find("past the end"), std::string::npos) << error_of(short_file);
    GgufWriter misaligned;
    misaligned.add_tensor("x", {2}, 0, f32_bytes({1, 2}), 4);
    EXPECT_NE(error_of(misaligned.bytes()).find("not aligned"), std::string::npos);
    GgufWriter duplicate;
    duplicate.add_tensor("x", {2}, 0, f32_bytes({1, 2}));
    duplicate.add_tensor("x", {2}, 0, f32_bytes({1, 2}));
    EXPECT_NE(error_of(duplicate.bytes()).find("twice"), std::string::npos);
    // Huge counts: the tensor count field says 2^40.
    auto huge = small_file().bytes();
    const std::uint64_t big = std::uint64_t{1} << 40;
    std::memcpy(huge.data() + 8, &big, 8);
    EXPECT_NE(error_of(huge).find("implausible"), std::string::npos);
    // A string whose length runs past the end of the file.
    auto long_string = small_file().bytes();
    const std::uint64_t length = 1u << 19;
    std::memcpy(long_string.data() + 24, &length, 8);
    EXPECT_NE(error_of(long_string).find("truncated"), std::string::npos);
    // An array whose count the rest of the file cannot hold (found by fuzz_gguf: 2^24 strings
    // made the loader reserve 512 MiB before reading the first one) is refused up front.
    for (std::uint32_t element_type : {8u, 4u, 12u}) {
        GgufWriter big_array;
        big_array.add_strings("k", {"a"});
        auto bytes = big_array.bytes();
        const std::uint64_t count = 1u << 24;
        std::memcpy(bytes.data() + 24 + 8 + 1 + 4, &element_type, 4);  // after the key "k" and type 9
        std::memcpy(bytes.data() + 24 + 8 + 1 + 4 + 4, &count, 8);
        EXPECT_NE(error_of(bytes).find("array of 16777216 elements of type " + std::to_string(element_type) + " needs"),
                  std::string::npos)
            << error_of(bytes);
    }
    GgufWriter zero_dim;
    zero_dim.add_tensor("z", {0}, 0, {});
    EXPECT_NE(error_of(zero_dim.bytes()).find("implausible dimension"), std::string::npos);
}

TEST(Gguf, DequantizationMatchesHandValues) {
    GgufWriter w;
    // F16: 1.0 = 0x3c00, -2.0 = 0xc000, 0.5 = 0x3800, 65504 = 0x7bff.
    w.add_tensor("h", {4}, 1, {0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38, 0xff, 0x7b});
    // BF16: 1.0 = 0x3f80, -3.5 = 0xc060.
    w.add_tensor("b", {2}, 30, {0x80, 0x3f, 0x60, 0xc0});
    // Q8_0: scale 0.5 (f16 0x3800), quants 0..31 with the sign alternating.
    std::vector<std::uint8_t> q8 = {0x00, 0x38};
    for (int j = 0; j < 32; ++j) q8.push_back(static_cast<std::uint8_t>(static_cast<std::int8_t>(j % 2 ? -j : j)));
    w.add_tensor("q", {32}, 8, q8);
    const auto bytes = w.bytes();
    const auto file = GgufFile::parse(bytes, "dequant.gguf");
    EXPECT_EQ(file->read_f32(*file->tensor("h")), (std::vector<float>{1.0f, -2.0f, 0.5f, 65504.0f}));
    EXPECT_EQ(file->read_f32(*file->tensor("b")), (std::vector<float>{1.0f, -3.5f}));
    const auto q = file->read_f32(*file->tensor("q"));
    for (int j = 0; j < 32; ++j) EXPECT_EQ(q[j], 0.5f * (j % 2 ? -j : j));
    EXPECT_EQ(kvfuse::model::half_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
    EXPECT_TRUE(std::isinf(kvfuse::model::half_to_float(0x7c00)));
}

TEST(Gguf, ModelLoaderNamesMissingPieces) {
    GgufWriter w;
    w.add_string("general.architecture", "gpt2");
    const auto bytes = w.bytes();
    EXPECT_THROW(
        {
            try {
                kvfuse::model::LlamaModel model(GgufFile::parse(bytes, "arch.gguf"));
            } catch (const GgufError& e) {
                EXPECT_NE(std::string(e.what()).find("architecture 'gpt2' is not supported"), std::string::npos);
                throw;
            }
        },
        GgufError);
    GgufWriter missing;
    add_tiny_model_metadata(missing, "llama", 2);
    const auto b2 = missing.bytes();
    try {
        kvfuse::model::LlamaModel model(GgufFile::parse(b2, "missing.gguf"));
        ADD_FAILURE() << "no error";
    } catch (const GgufError& e) {
        EXPECT_NE(std::string(e.what()).find("missing tensor token_embd.weight"), std::string::npos) << e.what();
    }
}

TEST(Gguf, OpenReportsFileProblems) {
    EXPECT_THROW(GgufFile::open("/nonexistent/model.gguf"), GgufError);
    const std::string path = ::testing::TempDir() + "tiny.gguf";
    std::ofstream(path) << "GGUF";
    try {
        GgufFile::open(path);
        ADD_FAILURE() << "no error";
    } catch (const GgufError& e) {
        EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos);
    }
}

}  // namespace

namespace {

// A one-layer qwen2 model whose weights are all zero but its Q/K/V biases: the projections of
// any token at position 0 (where RoPE is the identity) are exactly the biases, and RoPE is NeoX.
TEST(Gguf, Qwen2BiasesAreApplied) {
    GgufWriter w;
    add_tiny_model_metadata(w, "qwen2", 1);
    auto zeros = [](std::size_t n) { return f32_bytes(std::vector<float>(n, 0.0f)); };
    w.add_tensor("token_embd.weight", {4, 4}, 0, f32_bytes(std::vector<float>(16, 1.0f)));
    w.add_tensor("output_norm.weight", {4}, 0, f32_bytes(std::vector<float>(4, 1.0f)));
    w.add_tensor("blk.0.attn_norm.weight", {4}, 0, f32_bytes(std::vector<float>(4, 1.0f)));
    w.add_tensor("blk.0.attn_q.weight", {4, 4}, 0, zeros(16));
    w.add_tensor("blk.0.attn_k.weight", {4, 2}, 0, zeros(8));
    w.add_tensor("blk.0.attn_v.weight", {4, 2}, 0, zeros(8));
    w.add_tensor("blk.0.attn_q.bias", {4}, 0, f32_bytes({1, 2, 3, 4}));
    w.add_tensor("blk.0.attn_k.bias", {2}, 0, f32_bytes({5, 6}));
    w.add_tensor("blk.0.attn_v.bias", {2}, 0, f32_bytes({7, 8}));
    w.add_tensor("blk.0.attn_output.weight", {4, 4}, 0, zeros(16));
    w.add_tensor("blk.0.ffn_norm.weight", {4}, 0, f32_bytes(std::vector<float>(4, 1.0f)));
    w.add_tensor("blk.0.ffn_gate.weight", {4, 8}, 0, zeros(32));
    w.add_tensor("blk.0.ffn_up.weight", {4, 8}, 0, zeros(32));
    w.add_tensor("blk.0.ffn_down.weight", {8, 4}, 0, zeros(32));
    const auto bytes = w.bytes();
    const kvfuse::model::LlamaModel model(GgufFile::parse(bytes, "qwen2.gguf"));
    EXPECT_EQ(model.shape().rope.pairing, kvfuse::RopePairing::neox);
    std::vector<float> hidden(4);
    const std::int32_t token = 3;
    model.embed(std::span<const std::int32_t>(&token, 1), hidden.data());
    std::vector<float> q(4), k(2), v(2);
    const std::int64_t position = 0;
    model.project_qkv(0, hidden.data(), 1, &position, q.data(), k.data(), v.data());
    EXPECT_EQ(q, (std::vector<float>{1, 2, 3, 4}));
    EXPECT_EQ(k, (std::vector<float>{5, 6}));
    EXPECT_EQ(v, (std::vector<float>{7, 8}));
}

}  // namespace
