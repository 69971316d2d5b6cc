// libFuzzer target: the tokenizers (driver/model/tokenizer.cpp, pretokenizer.cpp).
// The first input byte picks the mode:
//   even: the rest is text for the bundled stories260K vocabulary (every byte has a byte token
//         there), which must round-trip: decode(encode(t)) == " " + t with U+2581 read as a
//         space (SentencePiece's leading space and its space symbol); the same bytes read as
//         token ids must decode without fault;
//   3 mod 4: byte-level BPE on GPT-2's vocabulary (tests/data/tokenizer): the next byte picks a
//         cut, the rest is text; decode(encode(t)) == t for any bytes (invalid UTF-8 included),
//         special tokens parsed or not, and the seam rule: encode_parts of the text cut in two
//         joins to encode of the whole;
//   1 mod 4: the rest is a vocabulary (pieces separated by '\n', each "type score piece" where the
//         type and score are one byte each) then text after a NUL: arbitrary vocabularies,
//         byte-token pieces like "<0xZZ>", duplicate pieces, must encode and decode any text.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_support.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#ifndef KVFUSE_FUZZ_BPE_VOCAB
#error "KVFUSE_FUZZ_BPE_VOCAB must name a byte-level BPE vocabulary (GGUF)"
#endif
#ifndef KVFUSE_FUZZ_VOCAB_MODEL
#error "KVFUSE_FUZZ_VOCAB_MODEL must name the GGUF file whose vocabulary the target uses"
#endif

namespace {

using kvfuse::model::Tokenizer;

const Tokenizer& bundled_tokenizer() {
    static const std::unique_ptr<Tokenizer> tokenizer = [] {
        auto file = kvfuse::model::GgufFile::open(KVFUSE_FUZZ_VOCAB_MODEL);
        return std::make_unique<Tokenizer>(*file);
    }();
    return *tokenizer;
}

const Tokenizer& bpe_tokenizer() {
    static const std::unique_ptr<Tokenizer> tokenizer = [] {
        auto file = kvfuse::model::GgufFile::open(KVFUSE_FUZZ_BPE_VOCAB);
        return std::make_unique<Tokenizer>(*file);
    }();
    return *tokenizer;
}

void fuzz_byte_level(std::string_view input) {
    if (input.empty()) return;
    const Tokenizer& tokenizer = bpe_tokenizer();
    const std::string text(input.substr(1));
    const std::vector<std::int32_t> ids = tokenizer.encode(text);
    for (std::int32_t id : ids)
        if (id < 0 || static_cast<std::size_t>(id) >= tokenizer.vocab_size())
            kvfuse::fuzz::property_failed("encode produced an id outside the vocabulary", std::to_string(id));
    if (tokenizer.decode(ids) != text) kvfuse::fuzz::property_failed("byte-level decode(encode(text)) != text");
    (void)tokenizer.encode(text, true);
    const std::size_t cut = text.empty() ? 0 : static_cast<unsigned char>(input[0]) % (text.size() + 1);
    const std::vector<std::string> parts{text.substr(0, cut), text.substr(cut)};
    const auto split = tokenizer.encode_parts(parts, false);
    std::vector<std::int32_t> joined = split[0];
    joined.insert(joined.end(), split[1].begin(), split[1].end());
    if (joined != ids) kvfuse::fuzz::property_failed("seam rule: encode_parts joined != encode of the whole");
}

std::string expected_round_trip(std::string_view text) {
    std::string out = " ";
    for (std::size_t i = 0; i < text.size();) {
        if (text.compare(i, 3, "\xE2\x96\x81") == 0) {
            out.push_back(' ');
            i += 3;
        } else {
            out.push_back(text[i++]);
        }
    }
    return out;
}

std::vector<std::int32_t> as_ids(std::string_view bytes) {
    std::vector<std::int32_t> ids(bytes.size() / 4);
    if (!ids.empty()) std::memcpy(ids.data(), bytes.data(), ids.size() * 4);
    return ids;
}

void fuzz_bundled_vocabulary(std::string_view text) {
    const Tokenizer& tokenizer = bundled_tokenizer();
    const std::vector<std::int32_t> ids = tokenizer.encode(text);
    for (std::int32_t id : ids)
        if (id < 0 || static_cast<std::size_t>(id) >= tokenizer.vocab_size())
            kvfuse::fuzz::property_failed("encode produced an id outside the vocabulary", std::to_string(id));
    if (!text.empty()) {
        const std::string decoded = tokenizer.decode(ids);
        if (decoded != expected_round_trip(text)) kvfuse::fuzz::property_failed("decode(encode(text)) != text");
    }
    (void)tokenizer.decode(as_ids(text));
    for (std::int32_t id : as_ids(text)) (void)tokenizer.piece(id);
}

void fuzz_own_vocabulary(std::string_view input) {
    const std::size_t split = input.find('\0');
    const std::string_view vocabulary = input.substr(0, split);
    const std::string_view text = split == std::string_view::npos ? std::string_view() : input.substr(split + 1);
    std::vector<std::string> pieces;
    std::vector<float> scores;
    std::vector<int> types;
    for (std::size_t at = 0; at < vocabulary.size();) {
        std::size_t end = vocabulary.find('\n', at);
        if (end == std::string_view::npos) end = vocabulary.size();
        const std::string_view line = vocabulary.substr(at, end - at);
        at = end + 1;
        if (line.size() < 2) continue;
        types.push_back(static_cast<unsigned char>(line[0]) % 8);
        scores.push_back(static_cast<float>(static_cast<signed char>(line[1])));
        pieces.emplace_back(line.substr(2));
    }
    if (pieces.size() < 3) return;
    Tokenizer tokenizer(pieces, scores, types, 1, 2);
    const std::vector<std::int32_t> ids = tokenizer.encode(text);
    for (std::int32_t id : ids)
        if (id < 0 || static_cast<std::size_t>(id) >= tokenizer.vocab_size())
            kvfuse::fuzz::property_failed("encode produced an id outside the vocabulary", std::to_string(id));
    (void)tokenizer.decode(ids);
    (void)tokenizer.decode(as_ids(text));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    (void)bundled_tokenizer();  // load once, outside the timed inputs
    (void)bpe_tokenizer();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
    if (data[0] % 2 == 0)
        fuzz_bundled_vocabulary(rest);
    else if (data[0] % 4 == 3)
        fuzz_byte_level(rest);
    else
        fuzz_own_vocabulary(rest);
    return 0;
}
