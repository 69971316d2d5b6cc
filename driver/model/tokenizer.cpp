#include "model/tokenizer.h"

#include <cctype>

#include <cmath>
#include <cstdio>
#include <limits>
#include <queue>
#include <stdexcept>

namespace kvfuse::model {

namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

std::size_t utf8_length(unsigned char lead) {
    if (lead < 0x80) return 1;
    if ((lead >> 5) == 0x6) return 2;
    if ((lead >> 4) == 0xE) return 3;
    if ((lead >> 3) == 0x1E) return 4;
    return 1;  // a stray continuation byte stands alone (and falls back to a byte token)
}

}  // namespace

Tokenizer::Tokenizer(const GgufFile& file) {
    const std::string model = file.get_string("tokenizer.ggml.model");
    if (model != "llama")
        throw GgufError(file.path() + ": tokenizer '" + model + "' is not supported (SentencePiece 'llama' is)");
    pieces_ = file.get_strings("tokenizer.ggml.tokens");
    if (pieces_.empty() || pieces_.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
        throw GgufError(file.path() + ": tokenizer.ggml.tokens holds " + std::to_string(pieces_.size()) + " tokens");
    const std::vector<double> scores = file.has("tokenizer.ggml.scores") ? file.get_floats("tokenizer.ggml.scores")
                                                                         : std::vector<double>(pieces_.size(), 0.0);
    const std::vector<double> types = file.has("tokenizer.ggml.token_type") ? file.get_floats("tokenizer.ggml.token_type")
                                                                            : std::vector<double>(pieces_.size(), 1.0);
    if (scores.size() != pieces_.size() || types.size() != pieces_.size())
        throw GgufError(file.path() + ": tokenizer scores/types do not match the number of tokens");
    // Checked before narrowing: a double out of float's (or int's) range cast is undefined, and
    // a NaN score would make the merge order depend on the comparison's accident.
    for (std::size_t i = 0; i < scores.size(); ++i) {
        if (!std::isfinite(scores[i]) || std::fabs(scores[i]) > std::numeric_limits<float>::max())
            throw GgufError(file.path() + ": tokenizer.ggml.scores[" + std::to_string(i) + "] is not a finite f32");
        scores_.push_back(static_cast<float>(scores[i]));
    }
    for (std::size_t i = 0; i < types.size(); ++i) {
        // GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        if (!(types[i] >= 0.0 && types[i] <= 6.0) || types[i] != std::floor(types[i]))
            throw GgufError(file.path() + ": tokenizer.ggml.token_type[" + std::to_string(i) + "] is not a token type (0 to 6)");
        types_.push_back(static_cast<int>(types[i]));
    }
    const std::uint64_t last = pieces_.size() - 1;
    bos_ = static_cast<std::int32_t>(file.get_uint_in_or("tokenizer.ggml.bos_token_id", 1, 0, last));
    eos_ = static_cast<std::int32_t>(file.get_uint_in_or("tokenizer.ggml.eos_token_id", 2, 0, last));
    unknown_ = static_cast<std::int32_t>(file.get_uint_in_or("tokenizer.ggml.unknown_token_id", 0, 0, last));
    if (static_cast<std::size_t>(bos_) >= pieces_.size() || static_cast<std::size_t>(eos_) >= pieces_.size())
        throw GgufError(file.path() + ": BOS/EOS ids are outside the vocabulary");
    index();
}

Tokenizer::Tokenizer(std::vector<std::string> pieces, std::vector<float> scores, std::vector<int> token_types,
                     std::int32_t bos, std::int32_t eos)
    : pieces_(std::move(pieces)), scores_(std::move(scores)), types_(std::move(token_types)), bos_(bos), eos_(eos) {
    if (scores_.size() != pieces_.size() || types_.size() != pieces_.size())
        throw std::invalid_argument("tokenizer: pieces, scores and types differ in length");
    index();
}

void Tokenizer::index() {
    for (auto& b : byte_token_) b = -1;
    for (std::size_t i = 0; i < pieces_.size(); ++i) {
        const std::string& p = pieces_[i];
        if (types_[i] == 6 && p.size() == 6 && p.rfind("<0x", 0) == 0) {
            // Exactly two hex digits: sscanf's %X also takes a sign ("<0x-1>" read as 2^32 - 1,
            // an index far past the table; found by fuzz_gguf).
            auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
            if (hex(p[3]) && hex(p[4]) && p[5] == '>')
                byte_token_[static_cast<std::size_t>(std::stoi(p.substr(3, 2), nullptr, 16))] = static_cast<std::int32_t>(i);
            continue;
        }
        if (types_[i] == 1 || types_[i] == 4) ids_.emplace(p, static_cast<std::int32_t>(i));  // normal, user-defined
    }
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text) const {
    std::vector<std::int32_t> out;
    if (text.empty()) return out;
    // SentencePiece's convention: a space before the text, every space as U+2581.
    std::string normalized(kSpace);
    for (char ch : text) {
        if (ch == ' ')
            normalized += kSpace;
        else
            normalized.push_back(ch);
    }
    // Symbols as a linked list of byte ranges, one UTF-8 character each to start with.
    struct Symbol {
        std::size_t begin, length;
        int prev, next;
    };
    std::vector<Symbol> symbols;
    for (std::size_t at = 0; at < normalized.size();) {
        std::size_t n = std::min(utf8_length(static_cast<unsigned char>(normalized[at])), normalized.size() - at);
        // A lead byte takes only the continuation bytes (10xxxxxx) that follow it: invalid UTF-8
        // must not swallow the next character (a space's U+2581 would decode as that symbol).
        for (std::size_t k = 1; k < n; ++k)
            if ((static_cast<unsigned char>(normalized[at + k]) & 0xC0) != 0x80) n = k;
        symbols.push_back({at, n, static_cast<int>(symbols.size()) - 1, static_cast<int>(symbols.size()) + 1});
        at += n;
    }
    symbols.back().next = -1;
    // Best-scoring adjacent pair first; on equal scores the leftmost.
    struct Bigram {
        int left, right;
        float score;
        std::size_t length;
        bool operator<(const Bigram& o) const { return score < o.score || (score == o.score && left > o.left); }
    };
    std::priority_queue<Bigram> queue;
    auto try_pair = [&](int left, int right) {
        if (left < 0 || right < 0) return;
        const std::string_view merged(normalized.data() + symbols[left].begin, symbols[left].length + symbols[right].length);
        auto it = ids_.find(std::string(merged));
        if (it == ids_.end()) return;
        queue.push({left, right, scores_[static_cast<std::size_t>(it->second)], merged.size()});
    };
    for (std::size_t i = 1; i < symbols.size(); ++i) try_pair(static_cast<int>(i) - 1, static_cast<int>(i));
    while (!queue.empty()) {
        const Bigram b = queue.top();
        queue.pop();
        Symbol& left = symbols[b.left];
        Symbol& right = symbols[b.right];
        // Stale entry: one side was merged away or grew since it was queued.
        if (left.length == 0 || right.length == 0 || left.length + right.length != b.length || left.next != b.right) continue;
        left.length += right.length;
        right.length = 0;
        left.next = right.next;
        if (right.next >= 0) symbols[right.next].prev = b.left;
        try_pair(left.prev, b.left);
        try_pair(b.left, left.next);
    }
    for (int i = 0; i != -1 && i < static_cast<int>(symbols.size()); i = symbols[i].next) {
        const Symbol& s = symbols[i];
        if (s.length == 0) continue;
        const std::string piece = normalized.substr(s.begin, s.length);
        if (auto it = ids_.find(piece); it != ids_.end()) {
            out.push_back(it->second);
            continue;
        }
        for (unsigned char byte : piece) out.push_back(byte_token_[byte] >= 0 ? byte_token_[byte] : unknown_);
    }
    return out;
}

std::string Tokenizer::piece(std::int32_t id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= pieces_.size()) return "";
    return pieces_[static_cast<std::size_t>(id)];
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids) const {
    std::string out;
    for (std::int32_t id : ids) {
        if (id < 0 || static_cast<std::size_t>(id) >= pieces_.size()) continue;
        const std::size_t i = static_cast<std::size_t>(id);
        if (types_[i] == 3 || types_[i] == 2) continue;  // control (BOS, EOS) and unknown
        const std::string& p = pieces_[i];
        if (types_[i] == 6 && p.size() == 6) {
            unsigned value = 0;
            if (std::sscanf(p.c_str() + 3, "%2X", &value) == 1) out.push_back(static_cast<char>(value));
            continue;
        }
        for (std::size_t at = 0; at < p.size();) {
            if (p.compare(at, kSpace.size(), kSpace) == 0) {
                out.push_back(' ');
                at += kSpace.size();
            } else {
                out.push_back(p[at++]);
            }
        }
    }
    return out;
}

}  // namespace kvfuse::model
