// A local backend (the filesystem store) in front of a shared one (Redis): a chunk is looked up
// locally first, then remotely, and a remote hit is copied into the local tier; a put goes to
// both. The local tier makes a machine's repeated chunks cost a local read, the remote one
// makes a chunk computed by any machine of the fleet a hit on every other.
#pragma once

#include "store/chunk_store.h"

#include <memory>

namespace kvfuse::store {

class TieredChunkBackend final : public ChunkBackend {
public:
    TieredChunkBackend(std::unique_ptr<ChunkBackend> local, std::unique_ptr<ChunkBackend> remote);

    std::optional<ChunkView> get(const ChunkKey& key) override;
    // A local hit is complete at once; a local miss streams from the remote tier, and the local
    // copy is written once that stream is complete (never from a stream that ends early).
    std::shared_ptr<ChunkStream> get_streamed(const ChunkKey& key) override;
    // Written to both. Fails only when neither tier took it; a failure of one tier is passed
    // to the warning hook.
    Status put(const ChunkKey& key, const StoredChunk& chunk) override;
    Status erase(const ChunkKey& key) override;
    Result<std::vector<ChunkDigest>> list() override;  // the remote tier's
    std::optional<std::vector<int32_t>> tokens_of(const ChunkDigest& digest,
                                                  std::string_view model_fingerprint) override;
    void warn(const Status& status) const override;
    std::string location() const override;
    std::string location_of(const ChunkKey& key) const override;
    std::vector<BackendStats> backend_stats() const override;

private:
    std::unique_ptr<ChunkBackend> local_, remote_;
};

}  // namespace kvfuse::store
