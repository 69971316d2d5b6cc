#include "model/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdexcept>

namespace kvfuse::model {

namespace {

// Unicode White_Space, what llama.cpp and Hugging Face mean by \s. PCRE2's own \s in UCP mode
// leaves out U+0085, so the class is spelled out: [\t-\r], U+0085 and the separators \p{Z}.
#define WS "\\t-\\r\\x{85}\\p{Z}"
#define CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

// GPT-2 (also the second step of SmolLM's): contractions, letters, digits, other symbols, each
// with at most one leading space; runs of spaces keep the last one for the next word.
constexpr const char* kGpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])";
// Llama 3: contractions in any case, a letter run led by one non-letter, digits in threes,
// symbols with their trailing newlines, newline runs, spaces.
constexpr const char* kLlama3 = CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|[" WS
                                             "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+";
// Qwen2: as Llama 3 with single digits.
constexpr const char* kQwen2 = CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|[" WS
                                            "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+";
// Tekken (Mistral-Nemo): the expression of its tokenizer.json, case-aware words (an upper-case
// run then lower case, or the reverse), single digits, symbols with a trailing '/'.
constexpr const char* kTekken =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^" WS
    "\\p{L}\\p{N}]+[\\r\\n/]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+";

#undef WS
#undef CONTRACTIONS

struct Definition {
    std::vector<const char*> expressions;
    bool ignore_merges;
};

Definition definition_of(const std::string& name) {
    if (name == "llama-bpe" || name == "llama3" || name == "llama-v3") return {{kLlama3}, true};
    if (name == "qwen2" || name == "deepseek-r1-qwen") return {{kQwen2}, false};
    if (name == "gpt-2" || name == "gpt2" || name == "phi-2") return {{kGpt2}, false};
    if (name == "smollm") return {{"\\p{N}", kGpt2}, false};  // every digit alone, then GPT-2's rules
    if (name == "tekken") return {{kTekken}, true};
    throw std::invalid_argument("pre-tokenizer '" + name + "' is not supported (known: " + PreTokenizer::known_names() + ")");
}

}  // namespace

struct PreTokenizer::Compiled {
    pcre2_code* code = nullptr;
    ~Compiled() { pcre2_code_free(code); }
};

const char* PreTokenizer::known_names() { return "llama-bpe, llama3, llama-v3, qwen2, deepseek-r1-qwen, gpt-2, phi-2, smollm, tekken"; }

PreTokenizer::PreTokenizer(const std::string& name) : name_(name) {
    const Definition definition = definition_of(name);
    ignore_merges_ = definition.ignore_merges;
    for (const char* pattern : definition.expressions) {
        int error = 0;
        PCRE2_SIZE error_offset = 0;
        auto compiled = std::make_unique<Compiled>();
        // MATCH_INVALID_UTF: text is whatever the user passed; invalid sequences simply never
        // match instead of failing the whole call.
        compiled->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &error_offset, nullptr);
        if (compiled->code == nullptr) {
            PCRE2_UCHAR message[256];
            pcre2_get_error_message(error, message, sizeof message);
            throw std::logic_error("pre-tokenizer '" + name + "': expression does not compile at " +
                                   std::to_string(error_offset) + ": " + reinterpret_cast<const char*>(message));
        }
        // The JIT is a speed-up only: without it (not built for this CPU) the interpreter runs.
        (void)pcre2_jit_compile(compiled->code, PCRE2_JIT_COMPLETE);
        expressions_.push_back(std::move(compiled));
    }
}

PreTokenizer::~PreTokenizer() = default;

std::vector<std::string_view> PreTokenizer::split(std::string_view text) const {
    std::vector<std::string_view> pieces;
    if (text.empty()) return pieces;
    pieces.push_back(text);
    for (const auto& expression : expressions_) {
        pcre2_match_data* match = pcre2_match_data_create_from_pattern(expression->code, nullptr);
        if (match == nullptr) throw std::bad_alloc();
        std::vector<std::string_view> next;
        for (std::string_view piece : pieces) {
            // Each piece is matched as a subject of its own, so a look-ahead sees the piece's end
            // as the end of text, as the reference implementation does.
            const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
            std::size_t done = 0, at = 0;
            while (at < piece.size()) {
                const int rc = pcre2_match(expression->code, subject, piece.size(), at, 0, match, nullptr);
                if (rc < 0) break;  // no match (or a match limit): the rest stays one piece
                const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
                const std::size_t begin = ovector[0], end = ovector[1];
                if (end <= begin) {  // an empty match cuts nothing; look again one byte on
                    at = begin + 1;
                    continue;
                }
                if (begin > done) next.push_back(piece.substr(done, begin - done));
                next.push_back(piece.substr(begin, end - begin));
                done = at = end;
            }
            if (done < piece.size()) next.push_back(piece.substr(done));
        }
        pcre2_match_data_free(match);
        pieces = std::move(next);
    }
    return pieces;
}

}  // namespace kvfuse::model
