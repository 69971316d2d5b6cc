// SentencePiece-style tokenizer from a GGUF vocabulary (tokenizer.ggml.model = "llama"):
// a leading space and every space become U+2581, symbols are merged pairwise by the highest
// vocabulary score (leftmost first on ties), and any piece not in the vocabulary falls back
// to its UTF-8 bytes (<0xXX> tokens).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/gguf.h"

namespace kvfuse::model {

class Tokenizer {
   public:
    // Reads tokenizer.ggml.{model,tokens,scores,token_type,bos_token_id,eos_token_id}.
    explicit Tokenizer(const GgufFile& file);
    // From explicit pieces (tests); token_types: 1 normal, 2 unknown, 3 control, 6 byte.
    Tokenizer(std::vector<std::string> pieces, std::vector<float> scores, std::vector<int> token_types,
              std::int32_t bos, std::int32_t eos);

    // Text to ids, without BOS.
    std::vector<std::int32_t> encode(std::string_view text) const;
    // Ids to text: U+2581 -> space, byte tokens -> bytes, control tokens dropped.
    std::string decode(std::span<const std::int32_t> ids) const;
    std::string piece(std::int32_t id) const;

    std::int32_t bos() const { return bos_; }
    std::int32_t eos() const { return eos_; }
    std::size_t vocab_size() const { return pieces_.size(); }

   private:
    void index();
    std::vector<std::string> pieces_;
    std::vector<float> scores_;
    std::vector<int> types_;
    std::unordered_map<std::string, std::int32_t> ids_;
    std::int32_t byte_token_[256];
    std::int32_t bos_ = 1, eos_ = 2, unknown_ = 0;
};

}  // namespace kvfuse::model
