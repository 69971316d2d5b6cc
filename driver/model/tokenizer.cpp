#include "model/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <queue>
#include <stdexcept>
#include <type_traits>

#include "model/pretokenizer.h"

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

// The length of the UTF-8 character at `at`: a lead byte takes only the continuation bytes
// (10xxxxxx) that follow it, so invalid UTF-8 never swallows the next character.
std::size_t char_length(std::string_view s, std::size_t at) {
    std::size_t n = std::min(utf8_length(static_cast<unsigned char>(s[at])), s.size() - at);
    for (std::size_t k = 1; k < n; ++k)
        if ((static_cast<unsigned char>(s[at + k]) & 0xC0) != 0x80) return k;
    return n;
}

// The pair merging of both tokenizers: `text` cut into its UTF-8 characters, then, again and
// again, the adjacent pair of pieces with the highest priority merged into one (on equal
// priorities the leftmost), until no adjacent pair has one. `pair_priority(left, right)` (two
// pieces that stand side by side in `text`) gives a std::optional, empty when the pair does not
// merge. Calls `emit` with each piece left, in order.
template <class PairPriority, class Emit>
void merge_pairs(std::string_view text, PairPriority pair_priority, Emit emit) {
    if (text.empty()) return;
    // Symbols as a linked list of byte ranges, one UTF-8 character each to start with.
    struct Symbol {
        std::size_t begin, length;
        int prev, next;
    };
    std::vector<Symbol> symbols;
    for (std::size_t at = 0; at < text.size();) {
        const std::size_t n = char_length(text, at);
        symbols.push_back({at, n, static_cast<int>(symbols.size()) - 1, static_cast<int>(symbols.size()) + 1});
        at += n;
    }
    symbols.back().next = -1;
    using Priority = typename std::invoke_result_t<PairPriority&, std::string_view, std::string_view>::value_type;
    struct Bigram {
        int left, right;
        Priority priority;
        std::size_t length;
        bool operator<(const Bigram& o) const { return priority < o.priority || (priority == o.priority && left > o.left); }
    };
    std::priority_queue<Bigram> queue;
    auto view = [&](int i) { return text.substr(symbols[i].begin, symbols[i].length); };
    auto try_pair = [&](int left, int right) {
        if (left < 0 || right < 0) return;
        if (const auto priority = pair_priority(view(left), view(right)))
            queue.push({left, right, *priority, symbols[left].length + symbols[right].length});
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
    for (int i = 0; i != -1; i = symbols[i].next)
        if (symbols[i].length != 0) emit(view(i));
}

std::string utf8_of(std::uint32_t cp) {
    std::string out;
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    return out;
}

// GPT-2's table: printable Latin-1 bytes stand for themselves, the other 68 bytes for U+0100
// onwards in byte order.
struct Gpt2Alphabet {
    std::string chars[256];
    std::unordered_map<std::string, unsigned char> bytes;
    Gpt2Alphabet() {
        std::uint32_t next = 256;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            chars[b] = utf8_of(printable ? static_cast<std::uint32_t>(b) : next++);
            bytes.emplace(chars[b], static_cast<unsigned char>(b));
        }
    }
};

const Gpt2Alphabet& gpt2_alphabet() {
    static const Gpt2Alphabet alphabet;
    return alphabet;
}

bool get_bool_or(const GgufFile& file, const std::string& key, bool fallback) {
    const GgufValue* value = file.find(key);
    if (value == nullptr) return fallback;
    if (const bool* b = std::get_if<bool>(value)) return *b;
    throw GgufError(file.path() + ": " + key + " is not a boolean");
}

// The end-of-turn markers llama.cpp stops generation at, found by their text.
constexpr std::string_view kEndOfTurnPieces[] = {"<|eot_id|>", "<|im_end|>",      "<|end|>", "<end_of_turn>",
                                                 "<|endoftext|>", "<|end_of_text|>", "<|eom_id|>"};

}  // namespace

const std::string& byte_to_gpt2_char(unsigned char byte) { return gpt2_alphabet().chars[byte]; }

bool gpt2_chars_to_bytes(std::string_view text, std::string& out) {
    const auto& bytes = gpt2_alphabet().bytes;
    for (std::size_t at = 0; at < text.size();) {
        const std::size_t n = char_length(text, at);
        auto it = bytes.find(std::string(text.substr(at, n)));
        if (it == bytes.end()) return false;
        out.push_back(static_cast<char>(it->second));
        at += n;
    }
    return true;
}

Tokenizer::Tokenizer(const GgufFile& file) {
    const std::string model = file.get_string("tokenizer.ggml.model");
    if (model == "llama") {
        kind_ = Kind::sentencepiece;
    } else if (model == "gpt2") {
        kind_ = Kind::byte_bpe;
    } else {
        throw GgufError(file.path() + ": tokenizer '" + model + "' is not supported (SentencePiece 'llama' and byte-level BPE 'gpt2' are)");
    }
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
    if (kind_ == Kind::byte_bpe) {
        const std::string pre = file.has("tokenizer.ggml.pre") ? file.get_string("tokenizer.ggml.pre") : "";
        if (pre.empty())
            throw GgufError(file.path() + ": byte-level BPE vocabulary without tokenizer.ggml.pre (known: " +
                            PreTokenizer::known_names() + ")");
        try {
            pre_ = std::make_unique<PreTokenizer>(pre);
        } catch (const std::invalid_argument& e) {
            throw GgufError(file.path() + ": tokenizer.ggml.pre: " + e.what());
        }
        const std::vector<std::string>& merges = file.get_strings("tokenizer.ggml.merges");
        if (merges.size() > static_cast<std::size_t>(std::numeric_limits<int>::max()))
            throw GgufError(file.path() + ": tokenizer.ggml.merges holds too many merges");
        for (std::size_t rank = 0; rank < merges.size(); ++rank) {
            const std::string& merge = merges[rank];
            // "left right", split at the first space after the first byte (llama.cpp's rule).
            const std::size_t space = merge.size() > 1 ? merge.find(' ', 1) : std::string::npos;
            if (space == std::string::npos)
                throw GgufError(file.path() + ": tokenizer.ggml.merges[" + std::to_string(rank) + "] is not 'left right'");
            merge_ranks_.emplace(merge, static_cast<int>(rank));
        }
        // llama.cpp's defaults for BPE: no BOS unless the pre-tokenizer's family wants one.
        add_bos_ = pre_->ignore_merges();
        add_space_prefix_ = false;
        bos_ = static_cast<std::int32_t>(file.get_uint_in_or("tokenizer.ggml.bos_token_id", std::min<std::uint64_t>(11, last), 0, last));
        eos_ = static_cast<std::int32_t>(file.get_uint_in_or("tokenizer.ggml.eos_token_id", std::min<std::uint64_t>(11, last), 0, last));
        unknown_ = static_cast<std::int32_t>(file.get_uint_in_or("tokenizer.ggml.unknown_token_id", 0, 0, last));
    } else {
        bos_ = static_cast<std::int32_t>(file.get_uint_in_or("tokenizer.ggml.bos_token_id", 1, 0, last));
        eos_ = static_cast<std::int32_t>(file.get_uint_in_or("tokenizer.ggml.eos_token_id", 2, 0, last));
        unknown_ = static_cast<std::int32_t>(file.get_uint_in_or("tokenizer.ggml.unknown_token_id", 0, 0, last));
    }
    add_bos_ = get_bool_or(file, "tokenizer.ggml.add_bos_token", add_bos_);
    add_space_prefix_ = get_bool_or(file, "tokenizer.ggml.add_space_prefix", add_space_prefix_);
    if (file.has("tokenizer.chat_template")) chat_template_ = file.get_string("tokenizer.chat_template");
    index();
    end_of_generation_.insert(eos_);
    if (file.has("tokenizer.ggml.eot_token_id"))
        end_of_generation_.insert(static_cast<std::int32_t>(file.get_uint_in("tokenizer.ggml.eot_token_id", 0, last)));
    // Phi-3's special tokens swallow the spaces after them (llama.cpp sets this by model name;
    // the GGUF file does not carry it).
    std::string name = file.has("general.name") ? file.get_string("general.name") : "";
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
        for (std::int32_t id : special_tokens_) strip_right_[static_cast<std::size_t>(id)] = true;
        for (const char* keep : {"<unk>", "<s>", "<|endoftext|>"})
            if (std::int32_t id = find(keep); id >= 0) strip_right_[static_cast<std::size_t>(id)] = false;
        if (std::int32_t id = find("</s>"); id >= 0) strip_right_[static_cast<std::size_t>(id)] = true;
    }
}

Tokenizer::Tokenizer(std::vector<std::string> pieces, std::vector<float> scores, std::vector<int> token_types,
                     std::int32_t bos, std::int32_t eos)
    : pieces_(std::move(pieces)), scores_(std::move(scores)), types_(std::move(token_types)), bos_(bos), eos_(eos) {
    if (scores_.size() != pieces_.size() || types_.size() != pieces_.size())
        throw std::invalid_argument("tokenizer: pieces, scores and types differ in length");
    index();
    end_of_generation_.insert(eos_);
}

Tokenizer::~Tokenizer() = default;

const std::string& Tokenizer::pre_tokenizer() const {
    static const std::string none;
    return pre_ ? pre_->name() : none;
}

void Tokenizer::index() {
    for (auto& b : byte_token_) b = -1;
    strip_right_.assign(pieces_.size(), false);
    for (std::size_t i = 0; i < pieces_.size(); ++i) {
        const std::string& p = pieces_[i];
        const auto id = static_cast<std::int32_t>(i);
        if (types_[i] == kTokenByte) {
            // Exactly two hex digits: sscanf's %X also takes a sign ("<0x-1>" read as 2^32 - 1,
            // an index far past the table; found by fuzz_gguf).
            auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
            if (p.size() == 6 && p.rfind("<0x", 0) == 0 && hex(p[3]) && hex(p[4]) && p[5] == '>')
                byte_token_[static_cast<std::size_t>(std::stoi(p.substr(3, 2), nullptr, 16))] = id;
            continue;
        }
        ids_.emplace(p, id);  // the first of duplicated pieces wins
        if ((types_[i] == kTokenControl || types_[i] == kTokenUserDefined || types_[i] == kTokenUnknown) && !p.empty())
            special_tokens_.push_back(id);
        if (types_[i] == kTokenControl || types_[i] == kTokenUserDefined)
            for (std::string_view marker : kEndOfTurnPieces)
                if (p == marker) end_of_generation_.insert(id);
    }
    std::stable_sort(special_tokens_.begin(), special_tokens_.end(), [&](std::int32_t a, std::int32_t b) {
        return pieces_[static_cast<std::size_t>(a)].size() > pieces_[static_cast<std::size_t>(b)].size();
    });
}

std::int32_t Tokenizer::find(std::string_view piece) const {
    auto it = ids_.find(std::string(piece));
    return it == ids_.end() ? -1 : it->second;
}

std::vector<Tokenizer::Fragment> Tokenizer::partition(std::string_view text, bool parse_special, const Ranges* special_in) const {
    // A control or unknown token matched only wholly inside an allowed range (user-defined
    // tokens are always text's own).
    const auto allowed = [&](std::size_t i, std::size_t begin, std::size_t end) {
        if (special_in == nullptr || types_[i] == kTokenUserDefined) return true;
        for (const auto& [from, to] : *special_in)
            if (begin >= from && end <= to) return true;
        return false;
    };
    std::vector<Fragment> fragments{{false, -1, 0, text.size()}};
    for (std::int32_t id : special_tokens_) {
        const std::size_t i = static_cast<std::size_t>(id);
        if (!parse_special && types_[i] != kTokenUserDefined) continue;
        const std::string& marker = pieces_[i];
        std::vector<Fragment> next;
        for (const Fragment& f : fragments) {
            if (f.is_token) {
                next.push_back(f);
                continue;
            }
            std::size_t begin = f.begin;
            while (begin < f.end) {
                std::size_t match = text.substr(0, f.end).find(marker, begin);
                while (match != std::string_view::npos && !allowed(i, match, match + marker.size()))
                    match = text.substr(0, f.end).find(marker, match + 1);
                if (match == std::string_view::npos) break;
                if (match > begin) next.push_back({false, -1, begin, match});
                next.push_back({true, id, match, match + marker.size()});
                begin = match + marker.size();
                if (strip_right_[i])
                    while (begin < f.end && std::isspace(static_cast<unsigned char>(text[begin]))) ++begin;
            }
            if (begin < f.end) next.push_back({false, -1, begin, f.end});
        }
        fragments = std::move(next);
    }
    return fragments;
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
    return encode_impl(text, parse_special, add_space_prefix_, nullptr);
}

std::vector<std::int32_t> Tokenizer::encode_impl(std::string_view text, bool parse_special, bool space_prefix,
                                                 std::vector<std::size_t>* starts, const Ranges* special_in) const {
    std::vector<std::int32_t> out;
    if (text.empty()) return out;
    // SentencePiece prefixes a space at the start and after each special token (llama.cpp).
    bool after_special = true;
    for (const Fragment& f : partition(text, parse_special, special_in)) {
        if (f.is_token) {
            out.push_back(f.token);
            if (starts) starts->push_back(f.begin);
            after_special = true;
            continue;
        }
        const std::size_t first = out.size();
        const std::string_view part = text.substr(f.begin, f.end - f.begin);
        const bool prefixed = kind_ == Kind::sentencepiece && space_prefix && after_special;
        if (kind_ == Kind::byte_bpe) {
            encode_bpe(part, out);
        } else {
            std::string normalized;
            if (prefixed) normalized = kSpace;
            for (char ch : part) {
                if (ch == ' ')
                    normalized += kSpace;
                else
                    normalized.push_back(ch);
            }
            encode_sentencepiece(normalized, out);
        }
        if (starts) {
            // Each token starts where the bytes of those before it end; the prefixed space is
            // not in the text. A token that spells no bytes (unknown) gets SIZE_MAX: the caller
            // cannot place it.
            std::size_t at = f.begin;
            bool skip_prefix = prefixed;
            for (std::size_t k = first; k < out.size(); ++k) {
                const std::int32_t id = out[k];
                std::size_t length = decode(std::span<const std::int32_t>(&id, 1)).size();
                if (length == 0) {
                    starts->push_back(SIZE_MAX);
                    continue;
                }
                starts->push_back(at);
                if (skip_prefix) {
                    --length;
                    skip_prefix = false;
                }
                at += length;
            }
            if (at != f.end) starts->push_back(SIZE_MAX);  // bytes and text disagree
        }
        after_special = false;
    }
    return out;
}

std::vector<std::vector<std::int32_t>> Tokenizer::encode_parts(std::span<const std::string> parts, bool parse_special) const {
    return encode_parts(parts, std::vector<bool>(parts.size(), parse_special));
}

std::vector<std::vector<std::int32_t>> Tokenizer::encode_parts(std::span<const std::string> parts,
                                                                const std::vector<bool>& parse_special) const {
    if (parse_special.size() != parts.size()) throw std::invalid_argument("encode_parts: one parse_special flag per part");
    std::string whole;
    std::vector<std::size_t> ends;
    Ranges special_in;
    bool any_special = false;
    for (std::size_t p = 0; p < parts.size(); ++p) {
        if (parse_special[p]) special_in.emplace_back(whole.size(), whole.size() + parts[p].size()), any_special = true;
        whole += parts[p];
        ends.push_back(whole.size());
    }
    std::vector<std::vector<std::int32_t>> out(parts.size());
    std::vector<std::size_t> starts;
    const std::vector<std::int32_t> ids = encode_impl(whole, any_special, add_space_prefix_, &starts, &special_in);
    const bool placed = starts.size() == ids.size() &&
                        std::none_of(starts.begin(), starts.end(), [](std::size_t s) { return s == SIZE_MAX; });
    if (placed) {
        std::size_t part = 0;
        for (std::size_t k = 0; k < ids.size(); ++k) {
            while (part + 1 < parts.size() && starts[k] >= ends[part]) ++part;
            out[part].push_back(ids[k]);
        }
        return out;
    }
    for (std::size_t p = 0; p < parts.size(); ++p)
        out[p] = encode_impl(parts[p], parse_special[p], add_space_prefix_ && p == 0, nullptr);
    return out;
}

void Tokenizer::encode_sentencepiece(std::string_view normalized, std::vector<std::int32_t>& out) const {
    // Best-scoring adjacent pair first.
    auto score_of_pair = [&](std::string_view left, std::string_view right) -> std::optional<float> {
        const std::string merged(left.data(), left.size() + right.size());  // side by side in `normalized`
        auto it = ids_.find(merged);
        if (it == ids_.end()) return std::nullopt;
        return scores_[static_cast<std::size_t>(it->second)];
    };
    merge_pairs(normalized, score_of_pair, [&](std::string_view merged_piece) {
        const std::string piece(merged_piece);
        if (auto it = ids_.find(piece); it != ids_.end()) {
            out.push_back(it->second);
            return;
        }
        for (unsigned char byte : piece) out.push_back(byte_token_[byte] >= 0 ? byte_token_[byte] : unknown_);
    });
}

int Tokenizer::merge_rank(std::string_view left, std::string_view right) const {
    std::string key;
    key.reserve(left.size() + 1 + right.size());
    key.append(left).append(1, ' ').append(right);
    auto it = merge_ranks_.find(key);
    return it == merge_ranks_.end() ? -1 : it->second;
}

void Tokenizer::encode_bpe(std::string_view text, std::vector<std::int32_t>& out) const {
    for (std::string_view word : pre_->split(text)) {
        std::string encoded;
        for (unsigned char byte : word) encoded += byte_to_gpt2_char(byte);
        encode_bpe_word(encoded, out);
    }
}

void Tokenizer::encode_bpe_word(const std::string& word, std::vector<std::int32_t>& out) const {
    if (word.empty()) return;
    if (pre_->ignore_merges()) {
        if (auto it = ids_.find(word); it != ids_.end()) {
            out.push_back(it->second);
            return;
        }
    }
    // Lowest merge rank first: the priority is the rank negated.
    auto priority_of_pair = [&](std::string_view left, std::string_view right) -> std::optional<int> {
        const int rank = merge_rank(left, right);
        if (rank < 0) return std::nullopt;
        return -rank;
    };
    merge_pairs(word, priority_of_pair, [&](std::string_view piece) {
        if (auto it = ids_.find(std::string(piece)); it != ids_.end()) {
            out.push_back(it->second);
            return;
        }
        // Not a token (a vocabulary without every byte): each character alone if it is one,
        // else dropped, as llama.cpp.
        for (std::size_t at = 0; at < piece.size();) {
            const std::size_t n = char_length(piece, at);
            if (auto it = ids_.find(std::string(piece.substr(at, n))); it != ids_.end()) out.push_back(it->second);
            at += n;
        }
    });
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
        if (types_[i] == kTokenControl || types_[i] == kTokenUnknown) continue;  // BOS, EOS, markers
        const std::string& p = pieces_[i];
        if (types_[i] == kTokenByte && p.size() == 6) {
            unsigned value = 0;
            if (std::sscanf(p.c_str() + 3, "%2X", &value) == 1) out.push_back(static_cast<char>(value));
            continue;
        }
        if (kind_ == Kind::byte_bpe) {
            // User-defined pieces are stored as plain text; normal ones in GPT-2's alphabet.
            std::string bytes;
            out += types_[i] != kTokenUserDefined && gpt2_chars_to_bytes(p, bytes) ? bytes : p;
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
