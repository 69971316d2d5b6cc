#include "store/open_backend.h"

#include "store/tiered_backend.h"

#include <cstdlib>

namespace kvfuse::store {

bool is_redis_url(std::string_view store) { return store.starts_with("redis://"); }

Result<std::unique_ptr<ChunkBackend>> open_backend(std::string_view store, BackendOptions options) {
    auto open_directory = [&](const std::filesystem::path& directory)
        -> Result<std::unique_ptr<ChunkBackend>> {
        Result<ChunkStore> opened = ChunkStore::open(directory, options.directory);
        if (!opened.ok()) return opened.status();
        return std::unique_ptr<ChunkBackend>(
            std::make_unique<ChunkStore>(std::move(opened).value()));
    };
    if (!is_redis_url(store)) {
        if (!options.local_cache.empty()) {
            return Status(StatusCode::invalid_argument,
                          "a local cache tier goes in front of a redis:// store, not a directory");
        }
        return open_directory(std::filesystem::path(store));
    }
    Result<RedisOptions> url = parse_redis_url(store);
    if (!url.ok()) return url.status();
    RedisOptions redis = std::move(options.redis);
    redis.host = url.value().host;
    redis.port = url.value().port;
    redis.db = url.value().db;
    redis.more_seeds = url.value().more_seeds;
    if (!redis.warning) redis.warning = options.directory.warning;
    if (redis.password.empty()) {
        if (const char* password = std::getenv("KVFUSE_REDIS_PASSWORD")) redis.password = password;
        if (const char* user = std::getenv("KVFUSE_REDIS_USER")) redis.user = user;
    }
    if (options.local_cache.empty() && options.directory.disk_limit_bytes > 0) {
        return Status(StatusCode::invalid_argument,
                      "a disk limit bounds a directory: a redis:// store has one only with a local cache tier");
    }
    auto remote = std::make_unique<RedisChunkBackend>(std::move(redis));
    if (options.local_cache.empty()) return std::unique_ptr<ChunkBackend>(std::move(remote));
    Result<std::unique_ptr<ChunkBackend>> local = open_directory(options.local_cache);
    if (!local.ok()) return local.status();
    return std::unique_ptr<ChunkBackend>(
        std::make_unique<TieredChunkBackend>(std::move(local).value(), std::move(remote)));
}

}  // namespace kvfuse::store
