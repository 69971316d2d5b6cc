// Opens the backend a `--store` value names: a directory (the filesystem ChunkStore) or
// redis://host[:port][,host[:port]...][/db] (RedisChunkBackend: one Redis, or a Redis Cluster
// through any of its nodes), the latter optionally behind a local directory as a cache tier
// (TieredChunkBackend).
#pragma once

#include "store/chunk_store.h"
#include "store/redis_backend.h"

#include <filesystem>
#include <memory>
#include <string_view>

namespace kvfuse::store {

struct BackendOptions {
    ChunkStoreOptions directory;  // for the directory and the local tier
    RedisOptions redis;           // timeouts, TTL; hosts, ports and db come from the URL
    // With a Redis URL: a directory kept in front of Redis (empty: none).
    std::filesystem::path local_cache;
};

bool is_redis_url(std::string_view store);

// An empty `store` is the default directory. A Redis password (and ACL user) comes from
// options.redis or else from the environment: KVFUSE_REDIS_PASSWORD, KVFUSE_REDIS_USER. Errors: a bad URL, a directory that cannot be
// opened, a local cache given without a Redis URL.
Result<std::unique_ptr<ChunkBackend>> open_backend(std::string_view store, BackendOptions options);

}  // namespace kvfuse::store
