// `--chat`: a request put in the model's chat format (tokenizer.chat_template): the prefix is
// BOS (when the model wants it) and the user turn's header, the chunks and question are the
// user's message, the question ends with the end of the turn and the assistant's header.
#pragma once

#include <string>
#include <vector>

#include "fusion/requests.h"
#include "model/tokenizer.h"

namespace kvfuse::cli {

// Throws std::invalid_argument when the model has no chat template of a known family.
// For requests that are token ids already (pre-tokenized, datasets): the header and footer are
// tokenized alone, which on a SentencePiece vocabulary can differ at the seams from the whole
// prompt's tokens (the first chunk's leading space).
void wrap_in_chat_turn(kvfuse::fusion::Request& request, const kvfuse::model::Tokenizer& tokenizer);

// For text: the turn's header, the chunks, the question and the footer tokenized as they sit in
// the whole prompt (the seam rule; special tokens parsed only in the header and footer), so
// the request's tokens are exactly those of the template applied by hand. Sets prefix (BOS when
// the model wants it, then the header), chunks and question.
void chat_request_from_text(kvfuse::fusion::Request& request, const std::vector<std::string>& chunks, const std::string& question,
                            const kvfuse::model::Tokenizer& tokenizer);

// The answer up to (not including) its first end-of-generation token (<|eot_id|>, EOS, ...):
// decoding runs a fixed number of tokens so that methods compare token by token, but what a
// chat model says after its turn ended is not its answer.
kvfuse::fusion::TokenIds until_end_of_turn(const kvfuse::fusion::TokenIds& tokens, const kvfuse::model::Tokenizer& tokenizer);

}  // namespace kvfuse::cli
