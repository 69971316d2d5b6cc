// libFuzzer target: the GGUF reader (driver/model/gguf.cpp) and everything that loading a model
// reads from it (driver/model/llama_model.cpp: metadata, tokenizer, every tensor dequantized).
// Any input must give a model or a GgufError; a crash, a sanitizer report, a hang or another
// exception is a finding.
#include <cstdint>
#include <span>
#include <string>
#include <variant>

#include "fuzz_support.h"
#include "model/gguf.h"
#include "model/llama_model.h"

namespace {

using kvfuse::model::GgufError;
using kvfuse::model::GgufFile;

// Every typed getter on every key: each must return or throw GgufError, whatever the type.
void read_every_key(const GgufFile& file) {
    static const char* const kKeys[] = {"general.architecture", "general.alignment", "llama.block_count",
                                        "llama.context_length", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                        "tokenizer.ggml.token_type", "llama.rope.freq_base"};
    for (const char* key : kKeys) {
        try { (void)file.get_uint(key); } catch (const GgufError&) {}
        try { (void)file.get_float(key); } catch (const GgufError&) {}
        try { (void)file.get_string(key); } catch (const GgufError&) {}
        try { (void)file.get_strings(key); } catch (const GgufError&) {}
        try { (void)file.get_floats(key); } catch (const GgufError&) {}
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::shared_ptr<const GgufFile> file;
    try {
        file = GgufFile::parse(std::span<const std::uint8_t>(data, size), "fuzz.gguf");
    } catch (const GgufError&) {
        return 0;  // rejected with a message: the expected outcome for most inputs
    }
    read_every_key(*file);
    for (const auto& tensor : file->tensors()) {
        if (!tensor.readable()) continue;  // a type kvfuse does not read: never dereferenced
        // A validated tensor lies inside the input: dequantizing it reads only its bytes.
        if (tensor.data < data || tensor.data + tensor.bytes > data + size)
            kvfuse::fuzz::property_failed("tensor outside the file", tensor.name);
        (void)file->read_f32(tensor);
    }
    try {
        kvfuse::model::LlamaModel model(file);
        const auto& tokenizer = model.tokenizer();
        const auto ids = tokenizer.encode("Once upon a time");
        (void)tokenizer.decode(ids);
        (void)model.describe();
    } catch (const GgufError&) {
    }
    return 0;
}
