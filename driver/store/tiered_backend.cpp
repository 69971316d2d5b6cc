#include "store/tiered_backend.h"

#include "store/chunk_codec.h"
#include "store/chunk_stream.h"

namespace kvfuse::store {

TieredChunkBackend::TieredChunkBackend(std::unique_ptr<ChunkBackend> local,
                                       std::unique_ptr<ChunkBackend> remote)
    : local_(std::move(local)), remote_(std::move(remote)) {}

std::optional<ChunkView> TieredChunkBackend::get(const ChunkKey& key) {
    if (auto view = local_->get(key)) return view;
    std::optional<ChunkView> view = remote_->get(key);
    if (view) {
        // Verified by the remote tier: kept locally for the next request on this machine.
        Status copied = local_->put(key, stored_chunk_of(*view));
        if (!copied.ok()) local_->warn(copied);
    }
    return view;
}

std::shared_ptr<ChunkStream> TieredChunkBackend::get_streamed(const ChunkKey& key) {
    if (auto view = local_->get(key)) return ChunkStream::complete(std::move(view));
    std::shared_ptr<ChunkStream> stream = remote_->get_streamed(key);
    // Kept locally only once every layer has arrived and been verified (on the remote reader's
    // thread, after the request could use the last layer): a stream that ends early leaves
    // nothing behind.
    ChunkBackend* local = local_.get();
    stream->on_complete([local, key](const ChunkView& view) {
        Status copied = local->put(key, stored_chunk_of(view));
        if (!copied.ok()) local->warn(copied);
    });
    return stream;
}

Status TieredChunkBackend::put(const ChunkKey& key, const StoredChunk& chunk) {
    Status local = local_->put(key, chunk);
    Status remote = remote_->put(key, chunk);
    if (remote.ok() || !local.ok()) {
        if (!local.ok()) local_->warn(local);
        return remote;
    }
    // Kept on this machine: not an error for the caller, but the fleet does not have it.
    remote_->warn(Status(remote.code(), remote.message() + "; kept in the local tier only"));
    return Status::success();
}

Status TieredChunkBackend::erase(const ChunkKey& key) {
    Status local = local_->erase(key);
    Status remote = remote_->erase(key);
    return local.ok() ? remote : local;
}

Result<std::vector<ChunkDigest>> TieredChunkBackend::list() { return remote_->list(); }

std::optional<std::vector<int32_t>> TieredChunkBackend::tokens_of(const ChunkDigest& digest,
                                                                   std::string_view model_fingerprint) {
    if (auto tokens = local_->tokens_of(digest, model_fingerprint)) return tokens;
    return remote_->tokens_of(digest, model_fingerprint);
}

void TieredChunkBackend::warn(const Status& status) const { remote_->warn(status); }

std::string TieredChunkBackend::location() const {
    return local_->location() + " in front of " + remote_->location();
}

std::string TieredChunkBackend::location_of(const ChunkKey& key) const {
    return local_->location_of(key) + " / " + remote_->location_of(key);
}

std::vector<BackendStats> TieredChunkBackend::backend_stats() const {
    std::vector<BackendStats> stats = local_->backend_stats();
    for (BackendStats& s : remote_->backend_stats()) stats.push_back(std::move(s));
    return stats;
}

}  // namespace kvfuse::store
