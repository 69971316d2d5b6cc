// Prompt formats of instruct models, recognised from the GGUF key tokenizer.chat_template (a
// Jinja template we do not run: each family is known by the markers its template writes) and
// written out by our own code for one user turn followed by the assistant's turn.
#pragma once

#include <string>

namespace kvfuse::model {

enum class ChatFormat { none, llama3, chatml, mistral, phi3, gemma };

// The family whose markers `chat_template` contains; none for an empty or unknown template.
ChatFormat detect_chat_format(const std::string& chat_template);
const char* chat_format_name(ChatFormat format);

// One user turn, split around its content: the prompt is before + content + after, `after`
// ending with the assistant's header (the generation prompt). BOS is not included (the
// tokenizer's add_bos says whether the model wants it). Markers are special tokens: tokenize
// both with parse_special. Throws std::invalid_argument for ChatFormat::none.
struct ChatTurn {
    std::string before, after;
};
ChatTurn user_turn(ChatFormat format);

}  // namespace kvfuse::model
