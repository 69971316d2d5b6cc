// The on-disk format of one chunk file (specified in docs/STORE.md): building the header of a
// file to write, and parsing + validating a whole mapped file before anything in it is used.
// No I/O here: bytes in, bytes or a Status out.
#pragma once

#include "store/chunk_store.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace kvfuse::store::format {

inline constexpr std::array<char, 8> kMagic = {'K', 'V', 'F', 'C', 'H', 'N', 'K', '\0'};
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr size_t kFixedHeaderBytes = 128;
inline constexpr size_t kSectionEntryBytes = 96;
inline constexpr size_t kPayloadAlignment = 64;  // every section and the payload start
inline constexpr uint32_t kMaxSections = 1u << 20;

// Byte offsets inside the fixed header.
namespace field {
inline constexpr size_t magic = 0;
inline constexpr size_t version = 8;
inline constexpr size_t header_bytes = 12;
inline constexpr size_t header_checksum = 16;  // XXH3-64 of bytes [24, header_bytes)
inline constexpr size_t payload_checksum = 24; // XXH3-64 of bytes [header_bytes, file_bytes)
inline constexpr size_t file_bytes = 32;
inline constexpr size_t digest = 40;
inline constexpr size_t fingerprint_bytes = 72;
inline constexpr size_t token_count = 76;
inline constexpr size_t layer_count = 80;
inline constexpr size_t kv_heads = 84;
inline constexpr size_t head_dim = 88;
inline constexpr size_t kv_dtype = 92;
inline constexpr size_t section_count = 96;
inline constexpr size_t section_entry_bytes = 100;
inline constexpr size_t header_checked_from = 24;
}  // namespace field

// Offsets inside one section-table entry.
namespace entry {
inline constexpr size_t name = 0;  // 32 bytes, NUL padded
inline constexpr size_t layer = 32;
inline constexpr size_t dtype = 36;
inline constexpr size_t rank = 40;
inline constexpr size_t shape = 48;  // 4 × u64, unused dimensions 0
inline constexpr size_t offset = 80;
inline constexpr size_t bytes = 88;
}  // namespace entry

// One section of a file to write, in file order.
struct PlannedSection {
    std::string_view name;
    uint32_t layer = 0;
    DType dtype = DType::u8;
    std::vector<uint64_t> shape;
    std::span<const std::byte> bytes;
    uint64_t offset = 0;  // filled by plan_chunk_file
};

struct ChunkFilePlan {
    std::vector<std::byte> header;  // header_bytes long; both checksum fields still zero
    std::vector<PlannedSection> sections;
    uint64_t file_bytes = 0;
};

// Validates the chunk against the key (shapes, sizes, names, dtypes) and lays the file out.
Result<ChunkFilePlan> plan_chunk_file(const ChunkKey& key, const StoredChunk& chunk);

// Fills in the checksums of a planned header once the payload checksum is known.
void seal_header(std::span<std::byte> header, uint64_t payload_checksum);

struct ParsedSection {
    SectionView view;
    uint32_t layer = 0;
};

struct ParsedChunkFile {
    ChunkDigest digest{};
    std::string_view model_fingerprint;
    std::span<const int32_t> tokens;
    ChunkLayout layout;
    std::vector<SectionView> sections;  // grouped by layer, in file order
    std::vector<uint32_t> layer_first;  // sections of layer l: [layer_first[l], layer_first[l+1])
    std::vector<uint32_t> keys_index;   // index in sections of layer l's K
    std::vector<uint32_t> values_index;
    uint64_t header_bytes = 0;
    uint64_t file_bytes = 0;
};

// Parses a whole file. `file` must be 8-byte aligned (a mapping is). Every offset and size is
// checked before use; a damaged file gives StatusCode::corrupt, another format version
// StatusCode::mismatch. The message names the first problem found; the caller adds the path.
Result<ParsedChunkFile> parse_chunk_file(std::span<const std::byte> file, bool verify_payload);

// StatusCode::mismatch unless the parsed file holds exactly this key's chunk.
Status check_key_matches(const ParsedChunkFile& file, const ChunkKey& key);

}  // namespace kvfuse::store::format
