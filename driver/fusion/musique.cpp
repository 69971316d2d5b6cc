#include "fusion/musique.h"

#include <cctype>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "model/regular_file.h"

namespace kvfuse::fusion {

namespace {

// CacheBlend's evaluation prompt (blend_musique), kept word for word so results compare.
constexpr std::string_view kInstruction =
    "You will be asked a question after reading several passages. Please directly answer the "
    "question based on the given passages. Do NOT repeat the question. The answer should be "
    "within 5 words..\nPassages:\n";
constexpr std::string_view kQuestionLead =
    "\n\nAnswer the question directly based on the given passages. Do NOT repeat the question. "
    "The answer should be within 5 words. \nQuestion:";

// As CacheBlend: a question ends with '?' and starts lower case inside the prompt.
std::string normalize_question(std::string q) {
    if (q.empty()) return q;
    if (q.back() != '?') q.push_back('?');
    q[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(q[0])));
    return q;
}

}  // namespace

PromptTemplate parse_prompt_template(std::string_view name) {
    if (name == "cacheblend") return PromptTemplate::cacheblend;
    if (name == "raw") return PromptTemplate::raw;
    throw std::invalid_argument("unknown prompt template '" + std::string(name) + "' (use cacheblend or raw)");
}

std::vector<QaItem> load_qa_file(const std::string& path, PromptTemplate prompt_template, std::size_t max_chunks) {
    const std::string text = kvfuse::model::read_regular_file(path);
    nlohmann::json doc;
    try {
        doc = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error(path + ": not valid JSON (" + e.what() + ")");
    }
    if (!doc.is_array()) throw std::runtime_error(path + ": expected a JSON list of items");
    // An empty list would evaluate nothing and print a table of zeros as if it had.
    if (doc.empty()) throw std::runtime_error(path + ": the list of items is empty");
    std::vector<QaItem> items;
    for (std::size_t i = 0; i < doc.size(); ++i) {
        const auto& entry = doc[i];
        const std::string where = path + ": item " + std::to_string(i);
        if (!entry.is_object() || !entry.contains("ctxs") || !entry["ctxs"].is_array() ||
            !entry.contains("question") || !entry["question"].is_string())
            throw std::runtime_error(where + " needs \"ctxs\" (a list) and \"question\" (a string)");
        QaItem item;
        for (const auto& ctx : entry["ctxs"]) {
            if (item.chunk_texts.size() == max_chunks) break;
            if (!ctx.is_object() || !ctx.contains("text") || !ctx["text"].is_string())
                throw std::runtime_error(where + ": every context needs a \"text\" string");
            const std::string title = ctx.contains("title") && ctx["title"].is_string() ? ctx["title"].get<std::string>() : "";
            const std::string text = ctx["text"].get<std::string>();
            if (text.find_first_not_of(" \t\r\n") == std::string::npos)
                throw std::runtime_error(where + ": context " + std::to_string(item.chunk_texts.size()) + " has an empty \"text\"");
            item.chunk_texts.push_back(prompt_template == PromptTemplate::cacheblend ? title + "\n\n" + text + "\n\n" : text);
        }
        if (item.chunk_texts.empty()) throw std::runtime_error(where + " has no contexts");
        item.question = entry["question"].get<std::string>();
        if (item.question.find_first_not_of(" \t\r\n") == std::string::npos)
            throw std::runtime_error(where + " has an empty \"question\"");
        if (entry.contains("answers")) {
            if (!entry["answers"].is_array()) throw std::runtime_error(where + ": \"answers\" must be a list");
            for (const auto& a : entry["answers"]) {
                // Skipping a non-string answer would score the item against fewer answers.
                if (!a.is_string()) throw std::runtime_error(where + ": every answer must be a string");
                item.answers.push_back(a.get<std::string>());
            }
        }
        items.push_back(std::move(item));
    }
    return items;
}

std::vector<Request> qa_requests(const std::vector<QaItem>& items, const Tokenize& tokenize, std::int32_t bos,
                                 PromptTemplate prompt_template) {
    std::vector<Request> out;
    for (std::size_t i = 0; i < items.size(); ++i) {
        const QaItem& item = items[i];
        Request r;
        r.id = "qa-" + std::to_string(i);
        r.kind = "musique";
        r.prefix = {bos};
        if (prompt_template == PromptTemplate::cacheblend) {
            const TokenIds instruction = tokenize(kInstruction);
            r.prefix.insert(r.prefix.end(), instruction.begin(), instruction.end());
            r.question = tokenize(std::string(kQuestionLead) + normalize_question(item.question) + "\nAnswer:");
        } else {
            r.question = tokenize(item.question);
        }
        for (const auto& text : item.chunk_texts) r.chunks.push_back(tokenize(text));
        r.answers = item.answers;
        out.push_back(std::move(r));
    }
    return out;
}

}  // namespace kvfuse::fusion
