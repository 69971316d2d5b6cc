// The tokenizer of a GGUF vocabulary, as llama.cpp runs it:
// * SentencePiece (tokenizer.ggml.model = "llama"): spaces become U+2581, a space is prepended
//   when tokenizer.ggml.add_space_prefix says so (the default) at the start of the text and
//   after each special token, symbols merge pairwise by the highest score (leftmost first on
//   ties), and a piece not in the vocabulary falls back to its UTF-8 bytes (<0xXX> tokens);
// * byte-level BPE (tokenizer.ggml.model = "gpt2"): the text is cut into words by the
//   pre-tokenizer tokenizer.ggml.pre names (pretokenizer.h), each byte is mapped to GPT-2's
//   printable character for it, and pairs merge in the order of tokenizer.ggml.merges.
// Special tokens (control, user-defined, unknown) found verbatim in the text are cut out first,
// longest first, and become their own ids: user-defined ones always, control and unknown ones
// only when `parse_special` is set (a chat template's markers; never a user's document).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "model/gguf.h"

namespace kvfuse::model {

class PreTokenizer;

// GGUF token types.
enum TokenType : int { kTokenNormal = 1, kTokenUnknown = 2, kTokenControl = 3, kTokenUserDefined = 4, kTokenUnused = 5, kTokenByte = 6 };

class Tokenizer {
   public:
    enum class Kind { sentencepiece, byte_bpe };

    // Reads tokenizer.ggml.{model,pre,tokens,scores,token_type,merges,bos/eos/unknown/eot
    // ids,add_bos_token,add_space_prefix,chat_template}; throws GgufError naming the key.
    explicit Tokenizer(const GgufFile& file);
    // A SentencePiece vocabulary from explicit pieces (tests); token_types as TokenType.
    Tokenizer(std::vector<std::string> pieces, std::vector<float> scores, std::vector<int> token_types,
              std::int32_t bos, std::int32_t eos);
    ~Tokenizer();

    // Text to ids, without BOS; control tokens in the text are read as plain text.
    std::vector<std::int32_t> encode(std::string_view text) const { return encode(text, false); }
    // With `parse_special`, control tokens written in the text (<|im_start|>, ...) become their ids.
    std::vector<std::int32_t> encode(std::string_view text, bool parse_special) const;
    // The seam rule (docs/MODEL.md): the parts of one prompt tokenized as they sit in the whole,
    // not each alone. The concatenation is tokenized once and each part gets the tokens that
    // start inside it (a token across a seam belongs to the part it starts in), so the parts'
    // tokens joined are exactly the whole prompt's tokens. Where the tokens' bytes do not spell
    // the text (an unknown-token fallback), each part is tokenized alone instead, parts after
    // the first without SentencePiece's leading space.
    std::vector<std::vector<std::int32_t>> encode_parts(std::span<const std::string> parts, bool parse_special) const;
    // The same with special tokens parsed only inside the parts flagged (a chat turn's header
    // and footer, never the user's documents between them).
    std::vector<std::vector<std::int32_t>> encode_parts(std::span<const std::string> parts,
                                                        const std::vector<bool>& parse_special) const;
    // Ids to text: byte tokens -> bytes, control and unknown tokens dropped.
    std::string decode(std::span<const std::int32_t> ids) const;
    std::string piece(std::int32_t id) const;

    Kind kind() const { return kind_; }
    const std::string& pre_tokenizer() const;  // "" for SentencePiece
    std::int32_t bos() const { return bos_; }
    std::int32_t eos() const { return eos_; }
    // Whether the model expects BOS before a prompt (tokenizer.ggml.add_bos_token, else the
    // vocabulary type's default, as llama.cpp).
    bool add_bos() const { return add_bos_; }
    bool add_space_prefix() const { return add_space_prefix_; }
    // EOS, EOT and the end-of-turn markers of chat vocabularies (<|eot_id|>, <|im_end|>, ...).
    bool is_end_of_generation(std::int32_t id) const { return end_of_generation_.count(id) != 0; }
    // The id of a piece, or -1.
    std::int32_t find(std::string_view piece) const;
    const std::string& chat_template() const { return chat_template_; }
    std::size_t vocab_size() const { return pieces_.size(); }

   private:
    struct Fragment {
        bool is_token;
        std::int32_t token;
        std::size_t begin, end;
    };
    void index();
    // Byte ranges of the text where control tokens may be matched (null: everywhere).
    using Ranges = std::vector<std::pair<std::size_t, std::size_t>>;
    std::vector<Fragment> partition(std::string_view text, bool parse_special, const Ranges* special_in = nullptr) const;
    std::vector<std::int32_t> encode_impl(std::string_view text, bool parse_special, bool space_prefix,
                                          std::vector<std::size_t>* starts, const Ranges* special_in = nullptr) const;
    void encode_sentencepiece(std::string_view text, std::vector<std::int32_t>& out) const;
    void encode_bpe(std::string_view text, std::vector<std::int32_t>& out) const;
    void encode_bpe_word(const std::string& word, std::vector<std::int32_t>& out) const;
    int merge_rank(std::string_view left, std::string_view right) const;

    Kind kind_ = Kind::sentencepiece;
    std::vector<std::string> pieces_;
    std::vector<float> scores_;
    std::vector<int> types_;
    std::vector<bool> strip_right_;  // spaces after this special token are dropped (Phi-3)
    std::unordered_map<std::string, std::int32_t> ids_;
    std::unordered_map<std::string, int> merge_ranks_;  // "left right" -> rank
    std::vector<std::int32_t> special_tokens_;          // longest first
    std::unordered_set<std::int32_t> end_of_generation_;
    std::unique_ptr<PreTokenizer> pre_;
    std::string chat_template_;
    std::int32_t byte_token_[256];
    std::int32_t bos_ = 1, eos_ = 2, unknown_ = 0;
    bool add_bos_ = true, add_space_prefix_ = true;
};

// GPT-2's byte-level alphabet: each byte as a printable character (UTF-8), and back.
const std::string& byte_to_gpt2_char(unsigned char byte);
// Appends the bytes `text` (GPT-2 characters) stands for; false if a character is not one.
bool gpt2_chars_to_bytes(std::string_view text, std::string& out);

}  // namespace kvfuse::model
