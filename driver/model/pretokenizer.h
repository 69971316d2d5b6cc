// The pre-tokenizers of byte-level BPE vocabularies (tokenizer.ggml.pre): regular expressions
// with Unicode classes (\p{L}, \p{N}, ...) run by PCRE2 in UTF + UCP mode, cutting text into
// the words BPE merges within. Each expression of a list cuts every piece the previous one left,
// and text between two matches stays a piece of its own (as llama.cpp's unicode_regex_split).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kvfuse::model {

class PreTokenizer {
   public:
    // `name` is the GGUF tokenizer.ggml.pre value; throws std::invalid_argument for a name
    // this driver does not know (the message lists the known ones).
    explicit PreTokenizer(const std::string& name);
    ~PreTokenizer();
    PreTokenizer(const PreTokenizer&) = delete;
    PreTokenizer& operator=(const PreTokenizer&) = delete;

    // The words of `text`, in order; their concatenation is `text`. Invalid UTF-8 never matches
    // a letter or digit class: such bytes end up in pieces of their own.
    std::vector<std::string_view> split(std::string_view text) const;

    const std::string& name() const { return name_; }
    // A whole word found in the vocabulary is taken as one token before any merge (Llama 3 and
    // Tekken vocabularies hold words their merges cannot build).
    bool ignore_merges() const { return ignore_merges_; }
    // The names `PreTokenizer` accepts, comma separated (for error messages).
    static const char* known_names();

   private:
    struct Compiled;
    std::string name_;
    bool ignore_merges_ = false;
    std::vector<std::unique_ptr<Compiled>> expressions_;
};

}  // namespace kvfuse::model
