#include "model/chat_template.h"

#include <stdexcept>

namespace kvfuse::model {

ChatFormat detect_chat_format(const std::string& t) {
    auto has = [&](const char* marker) { return t.find(marker) != std::string::npos; };
    // Most specific markers first: a ChatML template may also mention [INST] in a comment, none
    // of the others writes <|start_header_id|>.
    if (has("<|start_header_id|>")) return ChatFormat::llama3;
    if (has("<|im_start|>")) return ChatFormat::chatml;
    if (has("<start_of_turn>")) return ChatFormat::gemma;
    if (has("<|assistant|>") && has("<|end|>")) return ChatFormat::phi3;
    if (has("[INST]")) return ChatFormat::mistral;
    return ChatFormat::none;
}

const char* chat_format_name(ChatFormat format) {
    switch (format) {
        case ChatFormat::llama3: return "llama3";
        case ChatFormat::chatml: return "chatml";
        case ChatFormat::mistral: return "mistral";
        case ChatFormat::phi3: return "phi3";
        case ChatFormat::gemma: return "gemma";
        case ChatFormat::none: break;
    }
    return "none";
}

ChatTurn user_turn(ChatFormat format) {
    switch (format) {
        case ChatFormat::llama3:
            return {"<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"};
        case ChatFormat::chatml: return {"<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"};
        case ChatFormat::mistral: return {"[INST] ", " [/INST]"};
        case ChatFormat::phi3: return {"<|user|>\n", "<|end|>\n<|assistant|>\n"};
        case ChatFormat::gemma: return {"<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n"};
        case ChatFormat::none: break;
    }
    throw std::invalid_argument("the model's tokenizer.chat_template is missing or of no known family "
                                "(llama3, chatml, mistral, phi3, gemma)");
}

}  // namespace kvfuse::model
