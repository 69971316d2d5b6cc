// The chunk image: a chunk's sections laid out in the chunk-file format (docs/STORE.md), built
// in memory and read back from memory. The filesystem backend streams the same format to a file
// (ChunkStore); backends that keep bytes elsewhere (Redis) keep this image, split per layer.
#pragma once

#include "store/chunk_store.h"

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace kvfuse::store {

struct ByteRange {
    uint64_t offset = 0;
    uint64_t bytes = 0;
};

struct EncodedChunk {
    std::vector<std::byte> image;  // header (checksums sealed) and payload: a whole chunk file
    uint64_t header_bytes = 0;     // image[0, header_bytes) is the header
    // Layer l's sections (with the padding before the next layer) are image[layers[l]]; the
    // ranges tile [header_bytes, image.size()) in order.
    std::vector<ByteRange> layers;
};

// Validates the chunk against the key (as ChunkStore::put does) and encodes it.
Result<EncodedChunk> encode_chunk(const ChunkKey& key, const StoredChunk& chunk);

// The layer ranges of a decoded chunk, as encode_chunk gave them.
std::vector<ByteRange> layer_ranges(const ChunkView& view);

// Memory an image is assembled in (e.g. from values fetched one per layer), then verified.
class ChunkImageBuffer {
public:
    // io_error when the memory cannot be had.
    static Result<ChunkImageBuffer> allocate(uint64_t bytes);
    ChunkImageBuffer(ChunkImageBuffer&&) noexcept;
    ChunkImageBuffer& operator=(ChunkImageBuffer&&) noexcept;
    ~ChunkImageBuffer();

    std::span<std::byte> bytes();

    // Parses and verifies the image (header checksum always, payload checksum when
    // `verify_payload`, every size) and checks that it is exactly `key`'s chunk: corrupt or
    // mismatch otherwise. The buffer becomes the view's memory.
    Result<ChunkView> finish(const ChunkKey& key, bool verify_payload) &&;

    // For an image whose layers arrive one by one (a streamed get): with the header already in
    // bytes(), parses and checks it (header checksum, every size, exactly `key`'s chunk) but
    // not the payload, which is not there yet. The view is handed out at once; `memory` is
    // where the writer puts each layer, which nothing may read before the writer has verified
    // it (ChunkStream::wait_layer). seal_streamed_image() makes it read-only once complete.
    struct Streaming {
        ChunkView view;
        std::span<std::byte> memory;
    };
    Result<Streaming> start_streaming(const ChunkKey& key) &&;

private:
    ChunkImageBuffer() = default;
    void* base_ = nullptr;
    size_t length_ = 0, mapping_length_ = 0;
};

// Makes a streamed image's memory read-only once every layer is in.
void seal_streamed_image(std::span<std::byte> memory);

// A stored chunk pointing into `view`'s sections: what put() needs to copy a chunk read from one
// backend into another. Valid as long as `view` is.
StoredChunk stored_chunk_of(const ChunkView& view);

}  // namespace kvfuse::store
