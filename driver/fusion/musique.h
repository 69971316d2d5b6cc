// QA requests from a file in CacheBlend's format: a JSON list of
// {"ctxs": [{"title", "text"}], "question", "answers"}. Each context is one chunk.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "fusion/requests.h"

namespace kvfuse::fusion {

enum class PromptTemplate {
    cacheblend,  // CacheBlend's instruction prefix, "title\n\ntext\n\n" chunks, question suffix
    raw,         // BOS, the chunk texts and the question exactly as given
};

// "cacheblend" or "raw"; throws std::invalid_argument naming the accepted values.
PromptTemplate parse_prompt_template(std::string_view name);

struct QaItem {
    std::vector<std::string> chunk_texts;
    std::string question;
    std::vector<std::string> answers;
};

// Reads and checks the file; throws std::runtime_error naming the file and what is wrong
// (unreadable, not JSON, an item without ctxs/question/answers, ...).
std::vector<QaItem> load_qa_file(const std::string& path, PromptTemplate prompt_template,
                                 std::size_t max_chunks = 6);

// Tokenizes items into requests: prefix = BOS (+ the template's instruction), one chunk per
// context, question = the template's question part.
std::vector<Request> qa_requests(const std::vector<QaItem>& items, const Tokenize& tokenize,
                                 std::int32_t bos, PromptTemplate prompt_template);

}  // namespace kvfuse::fusion
