// Private to kvfuse_store: the memory behind a ChunkView, shared by every backend (a file read
// or mapped by ChunkStore, an image assembled from Redis values by RedisChunkBackend).
#pragma once

#include "store/chunk_file_format.h"

#include <cstddef>
#include <sys/mman.h>

namespace kvfuse::store {

// A verified chunk image's bytes: anonymous memory holding a private copy (`mapped` false: no
// later change to a file or a remote value can reach it), or a file's own pages (`mapped` true).
// Released when the last ChunkView and the LRU let go of it.
struct MappedChunk {
    const void* base = nullptr;
    size_t length = 0;          // the image's bytes
    size_t mapping_length = 0;  // what munmap releases (anonymous memory is rounded up)
    bool mapped = false;
    format::ParsedChunkFile parsed;

    MappedChunk() = default;
    MappedChunk(const MappedChunk&) = delete;
    MappedChunk& operator=(const MappedChunk&) = delete;
    ~MappedChunk() {
        if (base != nullptr) munmap(const_cast<void*>(base), mapping_length);
    }
};

// Anonymous, page-aligned memory for `size` bytes (so every section keeps its 64-byte
// alignment), huge pages asked for from 2 MiB up and prefaulted; nullptr on failure (errno set).
// `mapping_length` gets what munmap must release.
void* allocate_image_memory(size_t size, size_t& mapping_length);

}  // namespace kvfuse::store
