// A model file opened for the fusion commands: the model, its tokenizer, and where the
// bundled example model lives.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>

#include "fusion/fusion_model.h"
#include "fusion/requests.h"
#include "model/tokenizer.h"

namespace kvfuse::fusion {

struct LoadedModel {
    std::shared_ptr<const FusionModel> model;
    Tokenize tokenize;  // text -> ids, no BOS
    std::function<std::string(std::span<const std::int32_t>)> detokenize;
    std::string description;  // one line: architecture, sizes
    // The model's tokenizer (shares the model's lifetime): special tokens, chat template, the
    // seam rule's encode_parts.
    std::shared_ptr<const kvfuse::model::Tokenizer> tokenizer;
};

// Opens a GGUF model; throws std::runtime_error naming the file and the problem.
LoadedModel load_model(const std::string& path);

// The bundled stories260K model and TinyStories text: the source tree's copies when running
// from a build tree, else the installed ones. Empty when neither exists.
std::string bundled_model_path();
std::string bundled_text_path();

}  // namespace kvfuse::fusion
