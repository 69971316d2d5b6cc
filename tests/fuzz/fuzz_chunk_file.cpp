// libFuzzer target: the chunk-file reader (driver/store/chunk_file_format.cpp), which parses a
// mapped file before anything in it is used. Its header checksum would stop almost every
// mutation at the first check, so each input is parsed twice: as given (the checksum must
// reject a damaged file), and with both checksums re-sealed over the mutated bytes, so that the
// bounds checks behind them are reached (the crafted-file case docs/STORE.md guards against).
// Every accepted file is then read through the views a reader uses.
#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "fuzz_support.h"
#include "store/chunk_file_format.h"

namespace {

namespace format = kvfuse::store::format;
using kvfuse::fuzz::property_failed;

// Reads every byte a consumer of the parsed file may read, so ASan sees any view that points
// outside the input.
void touch_parsed(const format::ParsedChunkFile& parsed, std::span<const std::byte> file) {
    auto inside = [&](const void* p, std::size_t bytes) {
        const auto* b = static_cast<const std::byte*>(p);
        return bytes == 0 || (b >= file.data() && b + bytes <= file.data() + file.size());
    };
    if (!inside(parsed.tokens.data(), parsed.tokens.size_bytes()) ||
        !inside(parsed.model_fingerprint.data(), parsed.model_fingerprint.size()))
        property_failed("tokens or fingerprint outside the file");
    if (parsed.layer_first.size() != parsed.layout.layers + std::size_t{1})
        property_failed("layer index of the wrong length");
    std::uint64_t sum = 0;
    for (std::int32_t t : parsed.tokens) sum += static_cast<std::uint32_t>(t);
    for (char c : parsed.model_fingerprint) sum += static_cast<unsigned char>(c);
    for (const auto& section : parsed.sections) {
        if (!inside(section.bytes.data(), section.bytes.size()) ||
            !inside(section.shape.data(), section.shape.size_bytes()))
            property_failed("section outside the file", std::string(section.name));
        if (section.element_count() == 0 && !section.bytes.empty() && section.dtype != kvfuse::store::DType::i4)
            property_failed("bytes for an empty shape", std::string(section.name));
        for (std::byte b : section.bytes) sum += static_cast<unsigned>(b);
        (void)section.as_f32();
        (void)section.as_bf16_bits();
        (void)section.as_i8();
        (void)section.as_u8();
        (void)section.as_i32();
    }
    for (std::uint32_t l = 0; l < parsed.layout.layers; ++l) {
        if (parsed.layer_first[l] > parsed.layer_first[l + 1] || parsed.keys_index[l] >= parsed.sections.size() ||
            parsed.values_index[l] >= parsed.sections.size())
            property_failed("layer index outside the section table");
    }
    // Keep the reads from being optimised away.
    volatile std::uint64_t sink = sum;
    (void)sink;
}

void parse_and_check(std::span<const std::byte> file) {
    for (bool verify_payload : {false, true}) {
        auto parsed = format::parse_chunk_file(file, verify_payload);
        if (parsed.ok()) {
            touch_parsed(parsed.value(), file);
            kvfuse::store::ChunkKey key;
            key.model_fingerprint = std::string(parsed.value().model_fingerprint);
            key.tokens.assign(parsed.value().tokens.begin(), parsed.value().tokens.end());
            key.digest = parsed.value().digest;
            if (!format::check_key_matches(parsed.value(), key).ok())
                property_failed("a parsed file does not match its own key");
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // The reader needs an 8-byte aligned file, as a mapping is: copy into aligned storage of
    // exactly the input's size (new[] of std::uint64_t), so ASan flags a read past its end.
    const std::size_t words = (size + 7) / 8;
    std::vector<std::uint64_t> storage(words);
    // The vector may hold up to 7 bytes more than the input; keep the span at `size`.
    if (size > 0) std::memcpy(storage.data(), data, size);
    std::span<std::byte> file(reinterpret_cast<std::byte*>(storage.data()), size);
    parse_and_check(file);

    // Re-seal: payload checksum over [header_bytes, size), header checksum over [24, header_bytes),
    // when the header-size field leaves room for both.
    if (size >= format::kFixedHeaderBytes) {
        std::uint32_t header_bytes = 0;
        std::memcpy(&header_bytes, file.data() + format::field::header_bytes, 4);
        if (header_bytes >= format::kFixedHeaderBytes && header_bytes <= size) {
            const std::uint64_t file_bytes = size;
            std::memcpy(file.data() + format::field::file_bytes, &file_bytes, 8);
            const std::uint64_t payload = XXH3_64bits(file.data() + header_bytes, size - header_bytes);
            format::seal_header(file.first(header_bytes), payload);
            parse_and_check(file);
        }
    }
    return 0;
}
