#include "store/chunk_file_format.h"

#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>
#include <unordered_set>

namespace kvfuse::store::format {
namespace {

// The format is little-endian and every platform kvfuse targets (x86-64, AArch64) is too, so
// fields are copied as they are.
static_assert(std::endian::native == std::endian::little, "chunk files are little-endian");

constexpr uint32_t kMaxFingerprintBytes = 1u << 16;

template <class T>
T load(std::span<const std::byte> bytes, size_t offset) {
    T value;
    std::memcpy(&value, bytes.data() + offset, sizeof(T));
    return value;
}

template <class T>
void store_at(std::span<std::byte> bytes, size_t offset, T value) {
    std::memcpy(bytes.data() + offset, &value, sizeof(T));
}

constexpr uint64_t round_up(uint64_t value, uint64_t alignment) {
    return (value + alignment - 1) / alignment * alignment;
}

Status corrupt(std::string message) { return {StatusCode::corrupt, std::move(message)}; }
Status invalid(std::string message) { return {StatusCode::invalid_argument, std::move(message)}; }

bool is_known_dtype(uint32_t value) { return dtype_bits(static_cast<DType>(value)) != 0; }
bool is_kv_dtype(DType dtype) { return dtype == DType::f32 || dtype == DType::bf16; }

// Product of a shape, or nullopt on overflow past 2^62 elements (more than any file can hold).
std::optional<uint64_t> element_count(std::span<const uint64_t> shape) {
    uint64_t count = 1;
    for (uint64_t dim : shape) {
        if (dim != 0 && count > (uint64_t{1} << 62) / dim) return std::nullopt;
        count *= dim;
    }
    return count;
}

// Size of everything before the payload, or nullopt on overflow of the 32-bit field.
std::optional<uint64_t> header_size(uint64_t fingerprint_bytes, uint64_t token_count,
                                    uint64_t section_count) {
    uint64_t size = kFixedHeaderBytes + token_count * 4 + fingerprint_bytes;
    size = round_up(size, 8) + section_count * kSectionEntryBytes;
    size = round_up(size, kPayloadAlignment);
    if (size > UINT32_MAX) return std::nullopt;
    return size;
}

uint64_t header_checksum(std::span<const std::byte> header) {
    return XXH3_64bits(header.data() + field::header_checked_from,
                       header.size() - field::header_checked_from);
}

Status check_input_section(std::string_view what, std::span<const std::byte> bytes, DType dtype,
                           std::span<const uint64_t> shape) {
    if (dtype_bits(dtype) == 0) {
        return invalid(std::string(what) + ": unknown dtype " +
                       std::to_string(static_cast<uint32_t>(dtype)));
    }
    if (shape.empty() || shape.size() > kMaxSectionRank) {
        return invalid(std::string(what) + ": rank " + std::to_string(shape.size()) +
                       " (must be 1.." + std::to_string(kMaxSectionRank) + ")");
    }
    std::optional<uint64_t> count = element_count(shape);
    if (!count) return invalid(std::string(what) + ": shape overflows");
    uint64_t expected = dtype_bytes(dtype, *count);
    if (bytes.size() != expected) {
        return invalid(std::string(what) + ": " + std::to_string(bytes.size()) +
                       " bytes given, shape and dtype need " + std::to_string(expected));
    }
    if (expected != 0 && bytes.data() == nullptr) return invalid(std::string(what) + ": null data");
    return Status::success();
}

}  // namespace

Result<ChunkFilePlan> plan_chunk_file(const ChunkKey& key, const StoredChunk& chunk) {
    const ChunkLayout& layout = chunk.layout;
    if (key.tokens.empty()) return invalid("a chunk needs at least one token");
    if (key.tokens.size() > UINT32_MAX) return invalid("too many tokens for one chunk");
    if (key.model_fingerprint.size() > kMaxFingerprintBytes) {
        return invalid("model fingerprint longer than " + std::to_string(kMaxFingerprintBytes) +
                       " bytes");
    }
    if (layout.layers == 0 || layout.kv_heads == 0 || layout.head_dim == 0) {
        return invalid("layout needs layers, kv_heads and head_dim > 0");
    }
    if (!is_kv_dtype(layout.kv_dtype)) return invalid("K/V dtype must be f32 or bf16");
    if (chunk.layers.size() != layout.layers) {
        return invalid("layout says " + std::to_string(layout.layers) + " layers, " +
                       std::to_string(chunk.layers.size()) + " given");
    }

    ChunkFilePlan plan;
    const std::vector<uint64_t> kv_shape = {key.tokens.size(), layout.kv_heads, layout.head_dim};
    for (uint32_t l = 0; l < layout.layers; ++l) {
        const LayerInput& layer = chunk.layers[l];
        const std::string where = "layer " + std::to_string(l);
        std::unordered_set<std::string_view> names;
        Status status = check_input_section(where + " K", layer.keys, layout.kv_dtype, kv_shape);
        if (!status.ok()) return status;
        status = check_input_section(where + " V", layer.values, layout.kv_dtype, kv_shape);
        if (!status.ok()) return status;
        plan.sections.push_back({kKeysSectionName, l, layout.kv_dtype, kv_shape, layer.keys});
        plan.sections.push_back({kValuesSectionName, l, layout.kv_dtype, kv_shape, layer.values});
        for (size_t s = 0; s < layer.extra_sections.size(); ++s) {
            const SectionInput& section = layer.extra_sections[s];
            const std::string what = where + " section '" + section.name + "'";
            if (section.name.empty() || section.name.size() > kMaxSectionNameBytes ||
                section.name.find('\0') != std::string::npos) {
                return invalid(what + ": name must be 1.." +
                               std::to_string(kMaxSectionNameBytes) + " bytes without NUL");
            }
            if (section.name == kKeysSectionName || section.name == kValuesSectionName) {
                return invalid(what + ": 'k' and 'v' are reserved for the layer's K and V");
            }
            if (!names.insert(section.name).second) {
                return invalid(what + ": name used twice in one layer");
            }
            status = check_input_section(what, section.bytes, section.dtype, section.shape);
            if (!status.ok()) return status;
            plan.sections.push_back({section.name, l, section.dtype, section.shape, section.bytes});
        }
    }
    if (plan.sections.size() > kMaxSections) return invalid("too many sections");

    std::optional<uint64_t> header_bytes =
        header_size(key.model_fingerprint.size(), key.tokens.size(), plan.sections.size());
    if (!header_bytes) return invalid("header too large");
    uint64_t offset = *header_bytes;
    for (PlannedSection& section : plan.sections) {
        offset = round_up(offset, kPayloadAlignment);
        section.offset = offset;
        offset += section.bytes.size();
    }
    plan.file_bytes = offset;

    std::vector<std::byte>& header = plan.header;
    header.assign(*header_bytes, std::byte{0});
    std::span<std::byte> h(header);
    std::memcpy(h.data() + field::magic, kMagic.data(), kMagic.size());
    store_at<uint32_t>(h, field::version, kFormatVersion);
    store_at<uint32_t>(h, field::header_bytes, static_cast<uint32_t>(*header_bytes));
    store_at<uint64_t>(h, field::file_bytes, plan.file_bytes);
    std::memcpy(h.data() + field::digest, key.digest.data(), key.digest.size());
    store_at<uint32_t>(h, field::fingerprint_bytes,
                       static_cast<uint32_t>(key.model_fingerprint.size()));
    store_at<uint32_t>(h, field::token_count, static_cast<uint32_t>(key.tokens.size()));
    store_at<uint32_t>(h, field::layer_count, layout.layers);
    store_at<uint32_t>(h, field::kv_heads, layout.kv_heads);
    store_at<uint32_t>(h, field::head_dim, layout.head_dim);
    store_at<uint32_t>(h, field::kv_dtype, static_cast<uint32_t>(layout.kv_dtype));
    store_at<uint32_t>(h, field::section_count, static_cast<uint32_t>(plan.sections.size()));
    store_at<uint32_t>(h, field::section_entry_bytes, kSectionEntryBytes);

    size_t at = kFixedHeaderBytes;
    std::memcpy(h.data() + at, key.tokens.data(), key.tokens.size() * 4);
    at += key.tokens.size() * 4;
    std::memcpy(h.data() + at, key.model_fingerprint.data(), key.model_fingerprint.size());
    at = round_up(at + key.model_fingerprint.size(), 8);
    for (const PlannedSection& section : plan.sections) {
        std::memcpy(h.data() + at + entry::name, section.name.data(), section.name.size());
        store_at<uint32_t>(h, at + entry::layer, section.layer);
        store_at<uint32_t>(h, at + entry::dtype, static_cast<uint32_t>(section.dtype));
        store_at<uint32_t>(h, at + entry::rank, static_cast<uint32_t>(section.shape.size()));
        for (size_t d = 0; d < section.shape.size(); ++d) {
            store_at<uint64_t>(h, at + entry::shape + 8 * d, section.shape[d]);
        }
        store_at<uint64_t>(h, at + entry::offset, section.offset);
        store_at<uint64_t>(h, at + entry::bytes, section.bytes.size());
        at += kSectionEntryBytes;
    }
    return plan;
}

void seal_header(std::span<std::byte> header, uint64_t payload_checksum) {
    store_at<uint64_t>(header, field::payload_checksum, payload_checksum);
    store_at<uint64_t>(header, field::header_checksum, header_checksum(header));
}

Result<ParsedChunkFile> parse_chunk_file(std::span<const std::byte> file, bool verify_payload) {
    const uint64_t size = file.size();
    if (size < kFixedHeaderBytes) {
        return corrupt("truncated: " + std::to_string(size) + " bytes, the fixed header alone is " +
                       std::to_string(kFixedHeaderBytes));
    }
    if (std::memcmp(file.data() + field::magic, kMagic.data(), kMagic.size()) != 0) {
        return corrupt("not a kvfuse chunk file (bad magic)");
    }
    const uint32_t version = load<uint32_t>(file, field::version);
    if (version != kFormatVersion) {
        return Status(StatusCode::mismatch, "format version " + std::to_string(version) +
                                                ", this build reads version " +
                                                std::to_string(kFormatVersion));
    }
    const uint64_t header_bytes = load<uint32_t>(file, field::header_bytes);
    const uint64_t file_bytes = load<uint64_t>(file, field::file_bytes);
    if (header_bytes < kFixedHeaderBytes || header_bytes > size) {
        return corrupt("header size " + std::to_string(header_bytes) + " does not fit the " +
                       std::to_string(size) + "-byte file");
    }
    if (file_bytes != size) {
        return corrupt("file is " + std::to_string(size) + " bytes, its header says " +
                       std::to_string(file_bytes) + " (truncated or extended)");
    }
    std::span<const std::byte> header = file.first(header_bytes);
    if (header_checksum(header) != load<uint64_t>(file, field::header_checksum)) {
        return corrupt("header checksum mismatch");
    }

    // The header is intact as written; still check every count against every size, so that a
    // writer bug or a crafted file cannot make the reader step outside the mapping.
    ParsedChunkFile parsed;
    parsed.file_bytes = size;
    parsed.header_bytes = header_bytes;
    std::memcpy(parsed.digest.data(), file.data() + field::digest, kChunkDigestBytes);
    const uint32_t fingerprint_bytes = load<uint32_t>(file, field::fingerprint_bytes);
    const uint32_t token_count = load<uint32_t>(file, field::token_count);
    const uint32_t section_count = load<uint32_t>(file, field::section_count);
    ChunkLayout& layout = parsed.layout;
    layout.layers = load<uint32_t>(file, field::layer_count);
    layout.kv_heads = load<uint32_t>(file, field::kv_heads);
    layout.head_dim = load<uint32_t>(file, field::head_dim);
    const uint32_t kv_dtype = load<uint32_t>(file, field::kv_dtype);
    layout.kv_dtype = static_cast<DType>(kv_dtype);
    if (load<uint32_t>(file, field::section_entry_bytes) != kSectionEntryBytes) {
        return corrupt("section entry size is not " + std::to_string(kSectionEntryBytes));
    }
    if (fingerprint_bytes > kMaxFingerprintBytes || token_count == 0 ||
        section_count > kMaxSections || layout.layers == 0 || layout.kv_heads == 0 ||
        layout.head_dim == 0 || !is_known_dtype(kv_dtype) || !is_kv_dtype(layout.kv_dtype)) {
        return corrupt("header counts out of range (fingerprint " +
                       std::to_string(fingerprint_bytes) + " B, " + std::to_string(token_count) +
                       " tokens, " + std::to_string(section_count) + " sections, " +
                       std::to_string(layout.layers) + " layers)");
    }
    if (section_count < 2 * uint64_t{layout.layers}) {
        return corrupt("fewer sections than K and V for every layer");
    }
    std::optional<uint64_t> expected_header = header_size(fingerprint_bytes, token_count,
                                                          section_count);
    if (!expected_header || *expected_header != header_bytes) {
        return corrupt("header size " + std::to_string(header_bytes) +
                       " does not match its counts");
    }
    parsed.tokens = {reinterpret_cast<const int32_t*>(file.data() + kFixedHeaderBytes),
                     token_count};
    const size_t fingerprint_at = kFixedHeaderBytes + size_t{token_count} * 4;
    parsed.model_fingerprint = {reinterpret_cast<const char*>(file.data() + fingerprint_at),
                                fingerprint_bytes};

    // Section table: every entry inside the payload, aligned, in order, not overlapping; every
    // layer with exactly one K and one V of the layout's shape; names unique per layer.
    const uint64_t kv_shape[3] = {token_count, layout.kv_heads, layout.head_dim};
    const uint64_t table_at = round_up(fingerprint_at + fingerprint_bytes, 8);
    uint64_t payload_end = header_bytes;
    uint32_t current_layer = 0;
    parsed.layer_first.assign(1, 0);
    parsed.keys_index.assign(layout.layers, UINT32_MAX);
    parsed.values_index.assign(layout.layers, UINT32_MAX);
    parsed.sections.reserve(section_count);
    std::unordered_set<std::string_view> layer_names;
    for (uint32_t s = 0; s < section_count; ++s) {
        const size_t at = table_at + size_t{s} * kSectionEntryBytes;
        const std::string where = "section " + std::to_string(s);
        const char* name = reinterpret_cast<const char*>(file.data() + at + entry::name);
        const size_t name_length = strnlen(name, kMaxSectionNameBytes + 1);
        if (name_length == 0 || name_length > kMaxSectionNameBytes) {
            return corrupt(where + ": name empty or not NUL-terminated");
        }
        for (size_t i = name_length; i < 32; ++i) {
            if (name[i] != '\0') return corrupt(where + ": name padding not zero");
        }
        const uint32_t layer = load<uint32_t>(file, at + entry::layer);
        const uint32_t dtype = load<uint32_t>(file, at + entry::dtype);
        const uint32_t rank = load<uint32_t>(file, at + entry::rank);
        const uint64_t offset = load<uint64_t>(file, at + entry::offset);
        const uint64_t bytes = load<uint64_t>(file, at + entry::bytes);
        if (layer >= layout.layers || layer < current_layer) {
            return corrupt(where + ": layer " + std::to_string(layer) + " out of order or range");
        }
        while (current_layer < layer) {
            parsed.layer_first.push_back(s);
            ++current_layer;
            layer_names.clear();
        }
        if (!is_known_dtype(dtype)) return corrupt(where + ": unknown dtype");
        if (rank == 0 || rank > kMaxSectionRank) return corrupt(where + ": bad rank");
        std::span<const uint64_t> shape(
            reinterpret_cast<const uint64_t*>(file.data() + at + entry::shape), rank);
        for (size_t d = rank; d < kMaxSectionRank; ++d) {
            if (load<uint64_t>(file, at + entry::shape + 8 * d) != 0) {
                return corrupt(where + ": unused shape dimensions not zero");
            }
        }
        std::optional<uint64_t> count = element_count(shape);
        if (!count || dtype_bytes(static_cast<DType>(dtype), *count) != bytes) {
            return corrupt(where + ": size does not match its shape and dtype");
        }
        if (offset % kPayloadAlignment != 0 || offset < payload_end || offset > size ||
            bytes > size - offset) {
            return corrupt(where + ": offset " + std::to_string(offset) + " + " +
                           std::to_string(bytes) + " bytes overlaps or points past the " +
                           std::to_string(size) + "-byte file");
        }
        payload_end = offset + bytes;
        const std::string_view name_view(name, name_length);
        if (!layer_names.insert(name_view).second) {
            return corrupt(where + ": name '" + std::string(name_view) + "' repeated");
        }
        const bool is_keys = name_view == kKeysSectionName;
        if (is_keys || name_view == kValuesSectionName) {
            if (static_cast<DType>(dtype) != layout.kv_dtype || rank != 3 ||
                !std::equal(shape.begin(), shape.end(), kv_shape)) {
                return corrupt(where + ": K/V shape or dtype differs from the layout");
            }
            (is_keys ? parsed.keys_index : parsed.values_index)[layer] = s;
        }
        parsed.sections.push_back({name_view, static_cast<DType>(dtype), shape,
                                   file.subspan(offset, bytes)});
    }
    while (parsed.layer_first.size() <= layout.layers) parsed.layer_first.push_back(section_count);
    for (uint32_t l = 0; l < layout.layers; ++l) {
        if (parsed.keys_index[l] == UINT32_MAX || parsed.values_index[l] == UINT32_MAX) {
            return corrupt("layer " + std::to_string(l) + " lacks its K or V section");
        }
    }
    if (payload_end != size) {
        return corrupt(std::to_string(size - payload_end) + " bytes after the last section");
    }
    if (verify_payload) {
        const uint64_t checksum = XXH3_64bits(file.data() + header_bytes, size - header_bytes);
        if (checksum != load<uint64_t>(file, field::payload_checksum)) {
            return corrupt("payload checksum mismatch");
        }
    }
    return parsed;
}

Status check_key_matches(const ParsedChunkFile& file, const ChunkKey& key) {
    if (file.model_fingerprint != key.model_fingerprint) {
        return {StatusCode::mismatch, "holds a chunk of another model fingerprint"};
    }
    if (!std::equal(file.tokens.begin(), file.tokens.end(), key.tokens.begin(), key.tokens.end())) {
        return {StatusCode::mismatch,
                "holds other token ids under the same digest (hash collision)"};
    }
    if (file.digest != key.digest) {
        return {StatusCode::mismatch, "header digest differs from the file's name"};
    }
    return Status::success();
}

}  // namespace kvfuse::store::format
