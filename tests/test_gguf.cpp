// The GGUF loader on hand-made files: well-formed ones parse, every kind of damage gives an
// error that names the problem, and F16/BF16/Q8_0 dequantize to hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>

#include <sys/stat.h>
#include <unistd.h>

#include "gguf_writer.h"
#include "model/gguf.h"
#include "fusion/pipeline.h"
#include "model/llama_model.h"

namespace {

using kvfuse::model::GgufError;
using kvfuse::model::GgufFile;
using kvfuse::testing::f32_bytes;
using kvfuse::testing::GgufWriter;

// Metadata of a 1-layer model (dim 4, 2 heads, `kv_heads` KV heads, ffn 8) with a 4-token
// vocabulary: enough for LlamaModel to read everything but the tensors. The key named `except`
// (without the architecture prefix) is left out, for a test to write its own value.
void add_tiny_model_metadata(GgufWriter& w, const std::string& architecture, std::uint32_t kv_heads,
                             const std::string& except = "", std::uint32_t layers = 1) {
    auto u32 = [&](const std::string& key, std::uint32_t value) {
        if (key != except) w.add_u32(architecture + "." + key, value);
    };
    w.add_string("general.architecture", architecture);
    u32("block_count", layers);
    u32("embedding_length", 4);
    u32("attention.head_count", 2);
    u32("attention.head_count_kv", kv_heads);
    u32("context_length", 16);
    u32("feed_forward_length", 8);
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_strings("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "a"});
    if (except != "tokenizer.ggml.scores") w.add_f32s("tokenizer.ggml.scores", {0, 0, 0, 0});
    if (except != "tokenizer.ggml.token_type") w.add_i32s("tokenizer.ggml.token_type", {2, 3, 3, 1});
}

// What LlamaModel says about a file ("no error" when it loads).
std::string model_error(const std::vector<std::uint8_t>& bytes) {
    try {
        kvfuse::model::LlamaModel model(GgufFile::parse(bytes, "model.gguf"));
    } catch (const GgufError& e) {
        return e.what();
    }
    return "no error";
}

// The tiny model (two layers: the pipeline needs a layer after the check layer) with one
// setting of a test's choosing, then its tensors (0.5 and norms of 1, or `weight` everywhere in
// blk.0.attn_q.weight).
GgufWriter tiny_model(const std::string& except, const std::function<void(GgufWriter&)>& add, float weight = 0.5f) {
    GgufWriter w;
    add_tiny_model_metadata(w, "llama", 1, except, 2);
    add(w);
    auto filled = [](std::size_t n, float value) { return f32_bytes(std::vector<float>(n, value)); };
    w.add_tensor("token_embd.weight", {4, 4}, 0, filled(16, 0.5f));
    w.add_tensor("output_norm.weight", {4}, 0, filled(4, 1.0f));
    for (int l = 0; l < 2; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        w.add_tensor(p + "attn_norm.weight", {4}, 0, filled(4, 1.0f));
        w.add_tensor(p + "attn_q.weight", {4, 4}, 0, filled(16, l == 0 ? weight : 0.5f));
        w.add_tensor(p + "attn_k.weight", {4, 2}, 0, filled(8, 0.5f));
        w.add_tensor(p + "attn_v.weight", {4, 2}, 0, filled(8, 0.5f));
        w.add_tensor(p + "attn_output.weight", {4, 4}, 0, filled(16, 0.5f));
        w.add_tensor(p + "ffn_norm.weight", {4}, 0, filled(4, 1.0f));
        w.add_tensor(p + "ffn_gate.weight", {4, 8}, 0, filled(32, 0.5f));
        w.add_tensor(p + "ffn_up.weight", {4, 8}, 0, filled(32, 0.5f));
        w.add_tensor(p + "ffn_down.weight", {8, 4}, 0, filled(32, 0.5f));
    }
    return w;
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
    EXPECT_EQ(error_of(bytes), "no error");
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
    // A type kvfuse does not read is no error in a tensor the model never reads, and an error
    // naming tensor and type in one it does.
    EXPECT_EQ(model_error(tiny_model("", [](GgufWriter& w) {
                  w.add_tensor("unused.weight", {256, 1}, 16, std::vector<std::uint8_t>(66));  // IQ2_XXS
              }).bytes()),
              "no error");
    GgufWriter used_unread_type;
    add_tiny_model_metadata(used_unread_type, "llama", 1, "", 1);
    used_unread_type.add_tensor("token_embd.weight", {4, 4}, 24, std::vector<std::uint8_t>(16));  // I8
    EXPECT_NE(model_error(used_unread_type.bytes()).find("tensor token_embd.weight has type I8, which kvfuse does not read"),
              std::string::npos)
        << model_error(used_unread_type.bytes());
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

// Mixtral's files are architecture "llama": refused as mixture-of-experts (by the key or by the
// expert tensors alone), not with the missing dense tensor a plain llama load would report.
TEST(Gguf, MixtureOfExpertsIsRefusedByName) {
    std::string e = model_error(tiny_model("", [](GgufWriter& w) { w.add_u32("llama.expert_count", 8); }).bytes());
    EXPECT_NE(e.find("mixture-of-experts models are not supported (architecture llama with llama.expert_count = 8"), std::string::npos) << e;
    e = model_error(tiny_model("", [](GgufWriter& w) {
                        w.add_tensor("blk.0.ffn_gate_exps.weight", {4, 8, 2}, 0, f32_bytes(std::vector<float>(64, 0.5f)));
                    }).bytes());
    EXPECT_NE(e.find("mixture-of-experts models are not supported (architecture llama with tensor blk.0.ffn_gate_exps.weight"),
              std::string::npos)
        << e;
    e = model_error(tiny_model("", [](GgufWriter& w) {
                        w.add_tensor("blk.0.ffn_gate_inp.weight", {4, 2}, 0, f32_bytes(std::vector<float>(8, 0.5f)));
                    }).bytes());
    EXPECT_NE(e.find("tensor blk.0.ffn_gate_inp.weight"), std::string::npos) << e;
    // expert_count = 0 is a dense model.
    EXPECT_EQ(model_error(tiny_model("", [](GgufWriter& w) { w.add_u32("llama.expert_count", 0); }).bytes()), "no error");
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
    kvfuse::Context context;  // the calling thread's default context
    model.project_qkv(context, 0, hidden.data(), 1, &position, q.data(), k.data(), v.data());
    EXPECT_EQ(q, (std::vector<float>{1, 2, 3, 4}));
    EXPECT_EQ(k, (std::vector<float>{5, 6}));
    EXPECT_EQ(v, (std::vector<float>{7, 8}));
}

}  // namespace

namespace {

// The tiny model itself loads: every test below changes one thing and must get its own error.
TEST(GgufValidation, TinyModelLoads) {
    EXPECT_EQ(model_error(tiny_model("", [](GgufWriter&) {}).bytes()), "no error");
}

TEST(GgufValidation, DuplicateMetadataKeysAreRefused) {
    GgufWriter w = small_file();
    w.add_u32("llama.block_count", 2);  // small_file() already says 1
    EXPECT_NE(error_of(w.bytes()).find("metadata key llama.block_count appears twice"), std::string::npos) << error_of(w.bytes());
}

// 64-bit values are range-checked before they become ints: 2^32 + 5 layers is not 5, a context
// of 2^32 is not 0 ("no limit"), and the message names the key and the value.
TEST(GgufValidation, SixtyFourBitSizesAreRangeChecked) {
    const std::uint64_t big = (std::uint64_t{1} << 32) + 5;
    std::string e = model_error(tiny_model("block_count", [&](GgufWriter& w) { w.add_u64("llama.block_count", big); }).bytes());
    EXPECT_NE(e.find("llama.block_count = 4294967301 is outside [1, 1000]"), std::string::npos) << e;
    e = model_error(tiny_model("block_count", [&](GgufWriter& w) { w.add_u64("llama.block_count", 5); }).bytes());
    EXPECT_NE(e.find("missing tensor blk.2.attn_norm.weight"), std::string::npos) << e;  // read as 5, not cut
    e = model_error(tiny_model("context_length", [](GgufWriter& w) { w.add_u64("llama.context_length", std::uint64_t{1} << 32); }).bytes());
    EXPECT_NE(e.find("llama.context_length = 4294967296 is outside"), std::string::npos) << e;
    e = model_error(tiny_model("context_length", [](GgufWriter& w) { w.add_u32("llama.context_length", 0); }).bytes());
    EXPECT_NE(e.find("llama.context_length = 0 is outside"), std::string::npos) << e;
    e = model_error(tiny_model("attention.head_count_kv", [](GgufWriter& w) { w.add_i32("llama.attention.head_count_kv", -2); }).bytes());
    EXPECT_NE(e.find("llama.attention.head_count_kv = -2 is outside [1, 2]"), std::string::npos) << e;
    e = model_error(tiny_model("", [](GgufWriter& w) { w.add_u64("tokenizer.ggml.bos_token_id", (std::uint64_t{1} << 32) + 1); }).bytes());
    EXPECT_NE(e.find("tokenizer.ggml.bos_token_id = 4294967297 is outside [0, 3]"), std::string::npos) << e;
    e = model_error(tiny_model("", [](GgufWriter& w) { w.add_u32("tokenizer.ggml.unknown_token_id", 4); }).bytes());
    EXPECT_NE(e.find("tokenizer.ggml.unknown_token_id = 4 is outside [0, 3]"), std::string::npos) << e;
}

TEST(GgufValidation, RmsEpsilonMustBeFiniteAndPositive) {
    for (float epsilon : {std::numeric_limits<float>::quiet_NaN(), -1e-5f, 0.0f, std::numeric_limits<float>::infinity()}) {
        const std::string e = model_error(
            tiny_model("", [&](GgufWriter& w) { w.add_f32("llama.attention.layer_norm_rms_epsilon", epsilon); }).bytes());
        EXPECT_NE(e.find("llama.attention.layer_norm_rms_epsilon = "), std::string::npos) << epsilon << ": " << e;
        EXPECT_NE(e.find("is not a finite number in"), std::string::npos) << epsilon << ": " << e;
    }
}

// What a command would refuse when it first rotates is refused at load, so `info` cannot
// describe a model that `generate` rejects.
TEST(GgufValidation, RopeConfigurationIsCheckedAtLoad) {
    std::string e = model_error(tiny_model("", [](GgufWriter& w) { w.add_f32("llama.rope.freq_base", 0.5f); }).bytes());
    EXPECT_NE(e.find("RoPE metadata (llama.rope.*) rejected"), std::string::npos) << e;
    EXPECT_NE(e.find("base"), std::string::npos) << e;
    e = model_error(tiny_model("", [](GgufWriter& w) { w.add_u32("llama.rope.dimension_count", 1); }).bytes());
    EXPECT_NE(e.find("must be even"), std::string::npos) << e;
    e = model_error(tiny_model("", [](GgufWriter& w) { w.add_u32("llama.rope.dimension_count", 3); }).bytes());
    EXPECT_NE(e.find("llama.rope.dimension_count = 3 is outside [1, 2]"), std::string::npos) << e;
    e = model_error(tiny_model("", [](GgufWriter& w) {
                        w.add_string("llama.rope.scaling.type", "linear");
                        w.add_f32("llama.rope.scaling.factor", -2.0f);
                    }).bytes());
    EXPECT_NE(e.find("scaling_factor"), std::string::npos) << e;
    e = model_error(tiny_model("", [](GgufWriter& w) {
                        w.add_string("llama.rope.scaling.type", "llama3");
                        w.add_f32("llama.rope.scaling.factor", 8.0f);
                        w.add_f32("llama.rope.scaling.low_freq_factor", 4.0f);
                        w.add_f32("llama.rope.scaling.high_freq_factor", 1.0f);
                    }).bytes());
    EXPECT_NE(e.find("low_freq_factor < high_freq_factor"), std::string::npos) << e;
}

// Float data that becomes an int or a float is checked first (an out-of-range cast is UB).
TEST(GgufValidation, TokenizerArraysAreChecked) {
    std::string e = model_error(
        tiny_model("tokenizer.ggml.token_type", [](GgufWriter& w) { w.add_f32s("tokenizer.ggml.token_type", {2, 3, 1e30f, 1}); }).bytes());
    EXPECT_NE(e.find("tokenizer.ggml.token_type[2] is not a token type"), std::string::npos) << e;
    e = model_error(
        tiny_model("tokenizer.ggml.token_type", [](GgufWriter& w) { w.add_f32s("tokenizer.ggml.token_type", {2, 3, 3, 1.5f}); }).bytes());
    EXPECT_NE(e.find("tokenizer.ggml.token_type[3] is not a token type"), std::string::npos) << e;
    e = model_error(tiny_model("tokenizer.ggml.scores", [](GgufWriter& w) {
                        w.add_f32s("tokenizer.ggml.scores", {0, std::numeric_limits<float>::quiet_NaN(), 0, 0});
                    }).bytes());
    EXPECT_NE(e.find("tokenizer.ggml.scores[1] is not a finite f32"), std::string::npos) << e;
}

// NaN weights load (they are data), but no command may answer from the NaN logits they give:
// greedy decoding would pick token 0 and print nothing, successfully.
TEST(GgufValidation, NonFiniteLogitsAreAnError) {
    const auto bytes = tiny_model("", [](GgufWriter&) {}, std::numeric_limits<float>::quiet_NaN()).bytes();
    const kvfuse::model::LlamaModel model(GgufFile::parse(bytes, "nan.gguf"));
    kvfuse::fusion::Request request;
    request.prefix = {1};
    request.question = {3, 3};
    kvfuse::fusion::FusionOptions full;
    full.method = kvfuse::fusion::Method::full;
    try {
        (void)kvfuse::fusion::run_request(model, request, {}, full);
        ADD_FAILURE() << "NaN weights gave an answer";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("non-finite logits (NaN for token 0 in row 0)"), std::string::npos) << e.what();
    }
    // The same model with finite weights answers.
    const auto good = tiny_model("", [](GgufWriter&) {}).bytes();
    const kvfuse::model::LlamaModel finite(GgufFile::parse(good, "good.gguf"));
    EXPECT_NO_THROW((void)kvfuse::fusion::run_request(finite, request, {}, full));
    std::vector<float> logits = {1.0f, std::numeric_limits<float>::infinity(), 2.0f};
    try {
        kvfuse::fusion::require_finite_logits(logits.data(), 1, 3);
        ADD_FAILURE() << "an infinite logit passed";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("infinity for token 1"), std::string::npos) << e.what();
    }
}

// A FIFO (or any non-regular file) given as the model is refused at once, not waited on.
TEST(GgufValidation, FifoAsModelDoesNotHang) {
    const std::string path = ::testing::TempDir() + "model-fifo-" + std::to_string(::getpid());
    ::unlink(path.c_str());
    ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
    ::alarm(30);  // a hang kills the test binary rather than the CI job's patience
    try {
        GgufFile::open(path);
        ADD_FAILURE() << "no error";
    } catch (const GgufError& e) {
        EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
    }
    ::alarm(0);
    ::unlink(path.c_str());
    try {
        GgufFile::open(::testing::TempDir());
        ADD_FAILURE() << "a directory opened as a model";
    } catch (const GgufError& e) {
        EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
    }
}

}  // namespace
