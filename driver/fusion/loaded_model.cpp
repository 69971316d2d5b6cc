#include "fusion/loaded_model.h"

#include <filesystem>

#include "model/llama_model.h"

#ifndef KVFUSE_SOURCE_DIR
#define KVFUSE_SOURCE_DIR ""
#endif
#ifndef KVFUSE_DATA_DIR
#define KVFUSE_DATA_DIR ""
#endif

namespace kvfuse::fusion {

namespace {

// The first of the source tree's copy (a build tree) and the installed copy that exists.
std::string find_bundled(const char* relative_in_source, const char* relative_installed) {
    for (const std::string& candidate : {std::string(KVFUSE_SOURCE_DIR) + "/" + relative_in_source,
                                        std::string(KVFUSE_DATA_DIR) + "/" + relative_installed}) {
        std::error_code error;
        if (candidate.size() > 1 && std::filesystem::is_regular_file(candidate, error)) return candidate;
    }
    return "";
}

}  // namespace

LoadedModel load_model(const std::string& path) {
    auto file = kvfuse::model::GgufFile::open(path);
    auto model = std::make_shared<kvfuse::model::LlamaModel>(file);
    LoadedModel loaded;
    loaded.description = model->describe();
    loaded.tokenize = [model](std::string_view text) { return model->tokenizer().encode(text); };
    loaded.detokenize = [model](std::span<const std::int32_t> ids) { return model->tokenizer().decode(ids); };
    loaded.tokenizer = std::shared_ptr<const kvfuse::model::Tokenizer>(model, &model->tokenizer());
    loaded.model = model;
    return loaded;
}

std::string bundled_model_path() { return find_bundled("driver/models/stories260K.gguf", "models/stories260K.gguf"); }

std::string bundled_text_path() { return find_bundled("driver/data/tinystories_val.txt", "data/tinystories_val.txt"); }

}  // namespace kvfuse::fusion
