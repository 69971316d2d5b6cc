#include "fusion/requests.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <stdexcept>

namespace kvfuse::fusion {

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

void check(const StoryRequestOptions& o) {
    if (o.min_chunks == 0 || o.min_chunks > o.max_chunks)
        throw std::invalid_argument("chunk counts must satisfy 0 < min_chunks <= max_chunks");
    if (o.chunk_tokens == 0 || o.question_tokens == 0)
        throw std::invalid_argument("chunk_tokens and question_tokens must be positive");
    if (1 + o.max_chunks * o.chunk_tokens + o.question_tokens > o.max_total_tokens)
        throw std::invalid_argument("the largest request (" +
                                    std::to_string(1 + o.max_chunks * o.chunk_tokens + o.question_tokens) +
                                    " tokens) exceeds max_total_tokens (" + std::to_string(o.max_total_tokens) + ")");
}

bool opens_story(const std::string& paragraph) { return paragraph.rfind("Once upon a time", 0) == 0; }

std::string join(const std::vector<std::string>& paragraphs, std::size_t begin, std::size_t end) {
    std::string text;
    for (std::size_t i = begin; i < end; ++i) {
        if (!text.empty()) text += "\n\n";
        text += paragraphs[i];
    }
    return text;
}

}  // namespace

std::size_t Request::total_tokens() const {
    std::size_t n = prefix.size() + question.size();
    for (const auto& c : chunks) n += c.size();
    return n;
}

TokenIds Request::full_prompt() const {
    TokenIds out = prefix;
    for (const auto& c : chunks) out.insert(out.end(), c.begin(), c.end());
    out.insert(out.end(), question.begin(), question.end());
    return out;
}

std::vector<std::string> split_paragraphs(std::string_view text) {
    std::vector<std::string> out;
    std::string current;
    std::size_t pos = 0;
    while (pos <= text.size()) {
        const std::size_t end = std::min(text.find('\n', pos), text.size());
        const std::string_view line = trim(text.substr(pos, end - pos));
        if (line.empty()) {
            if (!current.empty()) out.push_back(std::move(current));
            current.clear();
        } else {
            if (!current.empty()) current += ' ';
            current += line;
        }
        pos = end + 1;
    }
    if (!current.empty()) out.push_back(std::move(current));
    return out;
}

std::vector<Request> continuous_requests(const std::vector<std::string>& paragraphs,
                                         const Tokenize& tokenize, const StoryRequestOptions& o) {
    check(o);
    std::mt19937 rng(o.seed);
    std::vector<Request> out;
    if (paragraphs.empty()) return out;
    std::uniform_int_distribution<std::size_t> start_of(0, paragraphs.size() - 1);
    std::uniform_int_distribution<std::size_t> chunks_of(o.min_chunks, o.max_chunks);
    // Give up after many draws: a text too short for any request yields fewer requests.
    for (std::size_t attempt = 0; out.size() < o.count && attempt < 20 * o.count + 100; ++attempt) {
        const std::size_t n = chunks_of(rng);
        const std::size_t needed = n * o.chunk_tokens + o.question_tokens;
        std::size_t begin = start_of(rng), end = begin;
        TokenIds tokens;
        while (tokens.size() < needed && end < paragraphs.size()) tokens = tokenize(join(paragraphs, begin, ++end));
        if (tokens.size() < needed) continue;
        Request r;
        r.id = "continuous-" + std::to_string(out.size());
        r.kind = "continuous";
        r.prefix = {o.bos};
        for (std::size_t c = 0; c < n; ++c)
            r.chunks.emplace_back(tokens.begin() + c * o.chunk_tokens, tokens.begin() + (c + 1) * o.chunk_tokens);
        r.question.assign(tokens.begin() + n * o.chunk_tokens, tokens.begin() + needed);
        out.push_back(std::move(r));
    }
    return out;
}

std::vector<Request> mixed_requests(const std::vector<std::string>& paragraphs,
                                    const Tokenize& tokenize, const StoryRequestOptions& o) {
    check(o);
    // Stories: an opening paragraph and what follows it up to the next opening.
    std::vector<std::pair<std::size_t, std::size_t>> stories;
    for (std::size_t i = 0; i < paragraphs.size(); ++i) {
        if (!opens_story(paragraphs[i])) continue;
        std::size_t end = i + 1;
        while (end < paragraphs.size() && !opens_story(paragraphs[end])) ++end;
        stories.emplace_back(i, end);
    }
    // Each story tokenized once; only those long enough to give a chunk AND a continuation.
    std::vector<TokenIds> usable;
    for (auto [begin, end] : stories) {
        TokenIds tokens = tokenize(join(paragraphs, begin, end));
        if (tokens.size() >= o.chunk_tokens + o.question_tokens) usable.push_back(std::move(tokens));
    }
    std::vector<Request> out;
    if (usable.size() < o.max_chunks) return out;
    std::mt19937 rng(o.seed);
    std::uniform_int_distribution<std::size_t> chunks_of(o.min_chunks, o.max_chunks);
    std::vector<std::size_t> order(usable.size());
    std::iota(order.begin(), order.end(), 0);
    for (std::size_t k = 0; k < o.count; ++k) {
        const std::size_t n = chunks_of(rng);
        std::shuffle(order.begin(), order.end(), rng);
        Request r;
        r.id = "mixed-" + std::to_string(k);
        r.kind = "mixed";
        r.prefix = {o.bos};
        r.target_chunk = static_cast<int>(std::uniform_int_distribution<std::size_t>(0, n - 1)(rng));
        for (std::size_t c = 0; c < n; ++c) {
            const TokenIds& story = usable[order[c]];
            r.chunks.emplace_back(story.begin(), story.begin() + o.chunk_tokens);
        }
        const TokenIds& target = usable[order[static_cast<std::size_t>(r.target_chunk)]];
        r.question.assign(target.begin() + o.chunk_tokens, target.begin() + o.chunk_tokens + o.question_tokens);
        out.push_back(std::move(r));
    }
    return out;
}

}  // namespace kvfuse::fusion
