#include "store/chunk_codec.h"

#include "store/chunk_file_format.h"
#include "store/mapped_chunk.h"

#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

namespace kvfuse::store {

// Anonymous memory for `size` bytes of file. From 2 MiB up it is 2 MiB-aligned and asked
// for transparent huge pages, then prefaulted in one call: a 4 KiB page fault per page made
// reading a 16 MiB chunk about 20x slower than mapping it on this VM (docs/STORE.md).
// Either advice may be refused (THP off, an older kernel): the memory works the same.
void* allocate_image_memory(size_t size, size_t& mapping_length) {
    constexpr size_t kHugePage = size_t{2} << 20;
    const int protection = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS;
    if (size < kHugePage) {
        mapping_length = size;
        void* base = ::mmap(nullptr, size, protection, flags, -1, 0);
        return base == MAP_FAILED ? nullptr : base;
    }
    // Whole 2 MiB extents get huge pages, the tail small ones: no zeroing of a mostly
    // unused last huge page.
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    mapping_length = (size + page - 1) / page * page;
    void* raw = ::mmap(nullptr, mapping_length + kHugePage, protection, flags, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const auto start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
    if (aligned > start) ::munmap(raw, aligned - start);
    const uintptr_t end = aligned + mapping_length, raw_end = start + mapping_length + kHugePage;
    if (raw_end > end) ::munmap(reinterpret_cast<void*>(end), raw_end - end);
    void* base = reinterpret_cast<void*>(aligned);
    ::madvise(base, mapping_length, MADV_HUGEPAGE);
#ifdef MADV_POPULATE_WRITE
    ::madvise(base, mapping_length, MADV_POPULATE_WRITE);
#endif
    return base;
}

Result<EncodedChunk> encode_chunk(const ChunkKey& key, const StoredChunk& chunk) {
    Result<format::ChunkFilePlan> planned = format::plan_chunk_file(key, chunk);
    if (!planned.ok()) return planned.status();
    format::ChunkFilePlan& plan = planned.value();
    EncodedChunk encoded;
    encoded.header_bytes = plan.header.size();
    encoded.image.assign(plan.file_bytes, std::byte{0});  // the padding between sections is zero
    for (const format::PlannedSection& section : plan.sections) {
        if (!section.bytes.empty()) {
            std::memcpy(encoded.image.data() + section.offset, section.bytes.data(),
                        section.bytes.size());
        }
        if (section.layer >= encoded.layers.size()) {
            encoded.layers.push_back({encoded.layers.empty() ? encoded.header_bytes : section.offset, 0});
        }
    }
    for (size_t l = 0; l < encoded.layers.size(); ++l) {
        const uint64_t end = l + 1 < encoded.layers.size() ? encoded.layers[l + 1].offset
                                                           : plan.file_bytes;
        encoded.layers[l].bytes = end - encoded.layers[l].offset;
    }
    const uint64_t payload_checksum =
        XXH3_64bits(encoded.image.data() + encoded.header_bytes,
                    encoded.image.size() - encoded.header_bytes);
    format::seal_header(plan.header, payload_checksum);
    std::memcpy(encoded.image.data(), plan.header.data(), plan.header.size());
    return encoded;
}

std::vector<ByteRange> layer_ranges(const ChunkView& view) {
    // Each layer starts at its first section, but layer 0 right after the header.
    std::vector<ByteRange> ranges;
    const std::byte* base = view.image().data();
    for (uint32_t l = 0; l < view.layout().layers; ++l) {
        const std::byte* first = view.sections(l).front().bytes.data();
        ranges.push_back({l == 0 ? view.header_bytes() : static_cast<uint64_t>(first - base), 0});
    }
    for (size_t l = 0; l < ranges.size(); ++l) {
        const uint64_t end = l + 1 < ranges.size() ? ranges[l + 1].offset : view.file_bytes();
        ranges[l].bytes = end - ranges[l].offset;
    }
    return ranges;
}

Result<ChunkImageBuffer> ChunkImageBuffer::allocate(uint64_t bytes) {
    ChunkImageBuffer buffer;
    if (bytes == 0) return Status(StatusCode::corrupt, "an empty chunk image");
    buffer.base_ = allocate_image_memory(static_cast<size_t>(bytes), buffer.mapping_length_);
    if (buffer.base_ == nullptr) {
        return Status(StatusCode::io_error, "cannot allocate " + std::to_string(bytes) +
                                                " bytes: " + std::strerror(errno));
    }
    buffer.length_ = static_cast<size_t>(bytes);
    return buffer;
}

ChunkImageBuffer::ChunkImageBuffer(ChunkImageBuffer&& other) noexcept
    : base_(other.base_), length_(other.length_), mapping_length_(other.mapping_length_) {
    other.base_ = nullptr;
}

ChunkImageBuffer& ChunkImageBuffer::operator=(ChunkImageBuffer&& other) noexcept {
    if (this != &other) {
        if (base_ != nullptr) ::munmap(base_, mapping_length_);
        base_ = other.base_;
        length_ = other.length_;
        mapping_length_ = other.mapping_length_;
        other.base_ = nullptr;
    }
    return *this;
}

ChunkImageBuffer::~ChunkImageBuffer() {
    if (base_ != nullptr) ::munmap(base_, mapping_length_);
}

std::span<std::byte> ChunkImageBuffer::bytes() {
    return {static_cast<std::byte*>(base_), length_};
}

Result<ChunkView> ChunkImageBuffer::finish(const ChunkKey& key, bool verify_payload) && {
    auto chunk = std::make_shared<MappedChunk>();
    chunk->base = base_;
    chunk->length = length_;
    chunk->mapping_length = mapping_length_;
    base_ = nullptr;  // the MappedChunk releases it from here on
    ::mprotect(const_cast<void*>(chunk->base), chunk->mapping_length, PROT_READ);
    Result<format::ParsedChunkFile> parsed = format::parse_chunk_file(
        {static_cast<const std::byte*>(chunk->base), chunk->length}, verify_payload);
    if (!parsed.ok()) return parsed.status();
    Status matches = format::check_key_matches(parsed.value(), key);
    if (!matches.ok()) return matches;
    chunk->parsed = std::move(parsed).value();
    return ChunkView(std::move(chunk));
}

Result<ChunkImageBuffer::Streaming> ChunkImageBuffer::start_streaming(const ChunkKey& key) && {
    auto chunk = std::make_shared<MappedChunk>();
    chunk->base = base_;
    chunk->length = length_;
    chunk->mapping_length = mapping_length_;
    base_ = nullptr;  // the MappedChunk releases it from here on
    const std::span<std::byte> memory(static_cast<std::byte*>(const_cast<void*>(chunk->base)), chunk->length);
    Result<format::ParsedChunkFile> parsed = format::parse_chunk_file(memory, /*verify_payload=*/false);
    if (!parsed.ok()) return parsed.status();
    Status matches = format::check_key_matches(parsed.value(), key);
    if (!matches.ok()) return matches;
    chunk->parsed = std::move(parsed).value();
    return Streaming{ChunkView(std::move(chunk)), memory};
}

void seal_streamed_image(std::span<std::byte> memory) {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    ::mprotect(memory.data(), (memory.size() + page - 1) / page * page, PROT_READ);
}

StoredChunk stored_chunk_of(const ChunkView& view) {
    StoredChunk chunk;
    chunk.layout = view.layout();
    for (uint32_t l = 0; l < chunk.layout.layers; ++l) {
        LayerInput layer;
        layer.keys = view.keys(l).bytes;
        layer.values = view.values(l).bytes;
        for (const SectionView& section : view.sections(l)) {
            if (section.name == kKeysSectionName || section.name == kValuesSectionName) continue;
            layer.extra_sections.push_back({std::string(section.name), section.dtype,
                                            {section.shape.begin(), section.shape.end()},
                                            section.bytes});
        }
        chunk.layers.push_back(std::move(layer));
    }
    return chunk;
}

}  // namespace kvfuse::store
