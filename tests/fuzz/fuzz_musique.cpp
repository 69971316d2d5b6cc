// libFuzzer target: the MuSiQue / CacheBlend-format QA loader (driver/fusion/musique.cpp), which
// reads a JSON file given by path, then the request builder that tokenizes what it read. Any
// input must give items or a std::runtime_error naming the file; an item always has at least
// one context, and the request built from it one chunk per context.
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include "fuzz_support.h"
#include "fusion/musique.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#ifndef KVFUSE_FUZZ_VOCAB_MODEL
#error "KVFUSE_FUZZ_VOCAB_MODEL must name the GGUF file whose vocabulary the target uses"
#endif

namespace {

using kvfuse::fusion::PromptTemplate;

const kvfuse::model::Tokenizer& bundled_tokenizer() {
    static const std::unique_ptr<kvfuse::model::Tokenizer> tokenizer = [] {
        auto file = kvfuse::model::GgufFile::open(KVFUSE_FUZZ_VOCAB_MODEL);
        return std::make_unique<kvfuse::model::Tokenizer>(*file);
    }();
    return *tokenizer;
}

kvfuse::fuzz::InputFile& input_file() {
    static kvfuse::fuzz::InputFile file;
    return file;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    (void)bundled_tokenizer();
    (void)input_file();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    // The first byte picks the template and the chunk limit, the rest is the file.
    const PromptTemplate prompt_template = data[0] & 1 ? PromptTemplate::raw : PromptTemplate::cacheblend;
    const std::size_t max_chunks = 1 + (data[0] >> 1) % 8;
    const std::string& path = input_file().write(data + 1, size - 1);
    std::vector<kvfuse::fusion::QaItem> items;
    try {
        items = kvfuse::fusion::load_qa_file(path, prompt_template, max_chunks);
    } catch (const std::runtime_error& e) {
        if (std::string_view(e.what()).find(path) == std::string_view::npos)
            kvfuse::fuzz::property_failed("the loader's error does not name the file", e.what());
        return 0;
    }
    for (const auto& item : items)
        if (item.chunk_texts.empty() || item.chunk_texts.size() > max_chunks)
            kvfuse::fuzz::property_failed("an item with no contexts or more than the limit");
    const auto& tokenizer = bundled_tokenizer();
    const auto requests = kvfuse::fusion::qa_requests(
        items, [&](std::string_view text) { return tokenizer.encode(text); }, tokenizer.bos(), prompt_template);
    if (requests.size() != items.size()) kvfuse::fuzz::property_failed("one request per item");
    for (std::size_t i = 0; i < items.size(); ++i)
        if (requests[i].chunks.size() != items[i].chunk_texts.size())
            kvfuse::fuzz::property_failed("one chunk per context");
    return 0;
}
