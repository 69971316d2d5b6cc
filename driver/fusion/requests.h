// Fusion requests: prefix ‖ chunk_1 ‖ … ‖ chunk_n ‖ question as token ids, and the builders of
// the evaluation sets. Tokenization is passed in, so any tokenizer (or pre-tokenized input) fits.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace kvfuse::fusion {

using TokenIds = std::vector<std::int32_t>;

struct Request {
    std::string id;
    std::string kind;                  // "continuous", "mixed", "musique", "user"
    TokenIds prefix;                   // usually just BOS; never a selection candidate
    std::vector<TokenIds> chunks;      // each computed alone and stored
    TokenIds question;                 // always recomputed
    std::vector<std::string> answers;  // reference answers, for QA data
    int target_chunk = -1;             // mixed: the chunk the question continues

    std::size_t total_tokens() const;
    TokenIds full_prompt() const;  // the concatenation a full prefill sees
};

// Text to token ids without BOS (the tokenizer's own leading-space convention applies).
using Tokenize = std::function<TokenIds(std::string_view)>;

// Paragraphs of a text: runs of non-blank lines, trimmed, separated by blank lines.
std::vector<std::string> split_paragraphs(std::string_view text);

struct StoryRequestOptions {
    std::size_t count = 100;
    std::size_t min_chunks = 4, max_chunks = 6;
    std::size_t chunk_tokens = 64;     // tokens per chunk
    std::size_t question_tokens = 32;  // tokens of the question (the continuation)
    std::size_t max_total_tokens = 512;
    std::int32_t bos = 1;
    std::uint32_t seed = 1234;
};

// Continuous: one passage of consecutive paragraphs cut into n chunks; the question is the text
// that follows. Restores what a chunk lost by not attending to the chunks before it.
std::vector<Request> continuous_requests(const std::vector<std::string>& paragraphs,
                                         const Tokenize& tokenize, const StoryRequestOptions& options);

// Mixed: each chunk is the opening of a different story (a paragraph beginning "Once upon a
// time" and the paragraphs up to the next such one); the question continues one of them, chosen
// uniformly (not always the last).
std::vector<Request> mixed_requests(const std::vector<std::string>& paragraphs,
                                    const Tokenize& tokenize, const StoryRequestOptions& options);

}  // namespace kvfuse::fusion
