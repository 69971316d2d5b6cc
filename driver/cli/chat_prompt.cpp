#include "cli/chat_prompt.h"

#include "model/chat_template.h"

namespace kvfuse::cli {

void wrap_in_chat_turn(kvfuse::fusion::Request& request, const kvfuse::model::Tokenizer& tokenizer) {
    const kvfuse::model::ChatTurn turn = kvfuse::model::user_turn(kvfuse::model::detect_chat_format(tokenizer.chat_template()));
    // The markers are special tokens, so the seams next to them are token boundaries in the
    // whole prompt too: tokenizing the header and the footer alone gives the prompt's tokens.
    request.prefix.clear();
    if (tokenizer.add_bos()) request.prefix.push_back(tokenizer.bos());
    for (std::int32_t id : tokenizer.encode(turn.before, true)) request.prefix.push_back(id);
    for (std::int32_t id : tokenizer.encode(turn.after, true)) request.question.push_back(id);
}

void chat_request_from_text(kvfuse::fusion::Request& request, const std::vector<std::string>& chunks, const std::string& question,
                            const kvfuse::model::Tokenizer& tokenizer) {
    const kvfuse::model::ChatTurn turn = kvfuse::model::user_turn(kvfuse::model::detect_chat_format(tokenizer.chat_template()));
    std::vector<std::string> parts{turn.before};
    parts.insert(parts.end(), chunks.begin(), chunks.end());
    parts.push_back(question);
    parts.push_back(turn.after);
    std::vector<bool> special(parts.size(), false);
    special.front() = special.back() = true;
    std::vector<kvfuse::fusion::TokenIds> ids = tokenizer.encode_parts(parts, special);
    request.prefix.clear();
    if (tokenizer.add_bos()) request.prefix.push_back(tokenizer.bos());
    request.prefix.insert(request.prefix.end(), ids.front().begin(), ids.front().end());
    request.chunks.assign(ids.begin() + 1, ids.end() - 2);
    request.question = std::move(ids[ids.size() - 2]);
    request.question.insert(request.question.end(), ids.back().begin(), ids.back().end());
}

kvfuse::fusion::TokenIds until_end_of_turn(const kvfuse::fusion::TokenIds& tokens, const kvfuse::model::Tokenizer& tokenizer) {
    kvfuse::fusion::TokenIds out;
    for (std::int32_t id : tokens) {
        if (tokenizer.is_end_of_generation(id)) break;
        out.push_back(id);
    }
    return out;
}

}  // namespace kvfuse::cli
