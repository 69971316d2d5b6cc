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

kvfuse::fusion::TokenIds until_end_of_turn(const kvfuse::fusion::TokenIds& tokens, const kvfuse::model::Tokenizer& tokenizer) {
    kvfuse::fusion::TokenIds out;
    for (std::int32_t id : tokens) {
        if (tokenizer.is_end_of_generation(id)) break;
        out.push_back(id);
    }
    return out;
}

}  // namespace kvfuse::cli
