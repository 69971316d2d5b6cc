// The Redis backend: chunk images kept in Redis (or Valkey, the same protocol) through hiredis,
// so that a fleet of servers computes each chunk once. Layout and guarantees: docs/STORE.md
// ("Redis").
//
// Keys carry the model (XXH3 of its fingerprint) and the chunk's content key (its SHA-256):
//   kvfuse:chunk:v1:<model 16 hex>:{<digest 64 hex>}:layer:<l>  layer l's bytes of the image
//   kvfuse:chunk:v1:<model 16 hex>:{<digest 64 hex>}:manifest  the image's header, each layer's
//                                                              offset, size and XXH3, a checksum
// ({...}: the Redis Cluster hash tag, so one chunk's keys share a slot.)
// A put writes every layer, then the manifest: a reader that finds the manifest finds a chunk
// whose layers were all written. A get verifies the manifest, every layer against it, then the
// whole image as ChunkStore verifies a file; a missing layer (evicted by maxmemory), a value of
// the wrong size, a checksum mismatch or another chunk's bytes is a miss, reported, and the
// chunk's keys are deleted so that the recomputed chunk is stored again. Redis unreachable (down,
// timed out, refusing commands) is a miss too; the backend reconnects when it comes back, trying
// at most once per retry interval so that requests do not each wait for a connect timeout.
//
// Redis Cluster: a node that answers `cluster_enabled:1` to INFO cluster makes the backend a
// cluster client (hiredis 0.14 is a single-node client, so the cluster logic is here): the slot
// map from CLUSTER SLOTS, each key sent to the node owning its slot (CRC16 of the `{digest}`
// tag, so one chunk is one node), a connection per node, MOVED (the slot's owner updated, the
// map refreshed) and ASK (ASKING, then the command on the importing node) followed at most
// max_redirects times per command. A node that cannot be reached is a miss for its slots only.
// Guarantees and set-up: docs/SERVING.md ("Redis Cluster").
#pragma once

#include "store/chunk_store.h"

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvfuse::store {

struct RedisOptions {
    std::string host = "127.0.0.1";
    int port = 6379;
    int db = 0;
    // Further nodes to try, in order, after host:port when looking for the cluster (the URL's
    // seed list: redis://h1:p1,h2:p2). Any reachable one that is a cluster node will do.
    std::vector<std::pair<std::string, int>> more_seeds;
    // MOVED/ASK redirects followed for one command before it is given up (a miss, or a failed put).
    uint32_t max_redirects = 5;
    // AUTH after connecting when the password is not empty (user: Redis 6 ACL user, empty for
    // the default user). open_backend reads them from KVFUSE_REDIS_USER and
    // KVFUSE_REDIS_PASSWORD: never from the URL, which ends up in logs and process lists.
    std::string user;
    std::string password;
    std::chrono::milliseconds connect_timeout{500};
    std::chrono::milliseconds command_timeout{2000};  // per command (send or receive)
    std::chrono::milliseconds retry_interval{1000};   // after a failed connect
    // Seconds a stored chunk lives (0: until Redis evicts it under maxmemory).
    uint64_t ttl_seconds = 0;
    // Largest chunk image accepted from a manifest: a bound on what one get() allocates.
    uint64_t max_image_bytes = uint64_t{16} << 30;
    // Streamed reads (get_streamed): layer GETs kept in flight on the reader's connection.
    uint32_t stream_in_flight = 4;
    // Test hook: called by a streamed read once it has published the chunk's header and before
    // it asks for any layer (e.g. to delete or damage a layer "mid-stream").
    std::function<void(const ChunkKey&)> stream_hook_for_testing;
    // As ChunkStoreOptions::warning (default: one line on stderr).
    std::function<void(const Status&)> warning;
};

// "redis://host[:port][,host[:port]...][/db]" (port 6379 and db 0 by default; more than one
// host: a cluster's seed list, db 0 only) into options; invalid_argument naming what is wrong
// otherwise.
Result<RedisOptions> parse_redis_url(std::string_view url);

// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of the key, or of its hash tag (what
// lies between the first '{' and the next '}', when that is not empty), modulo 16384.
uint16_t redis_cluster_slot(std::string_view key);

class RedisChunkBackend final : public ChunkBackend {
public:
    // Connects once to check the address; a Redis that cannot be reached now is reported
    // through the warning hook and retried later (a server may start before its Redis).
    explicit RedisChunkBackend(RedisOptions options);
    ~RedisChunkBackend() override;
    RedisChunkBackend(const RedisChunkBackend&) = delete;
    RedisChunkBackend& operator=(const RedisChunkBackend&) = delete;

    std::optional<ChunkView> get(const ChunkKey& key) override;
    // A reader thread per stream on a connection of its own (idle ones are kept for the next),
    // the manifest first, then the layers with stream_in_flight GETs pipelined, each verified
    // against the manifest (size, XXH3) as it arrives.
    std::shared_ptr<ChunkStream> get_streamed(const ChunkKey& key) override;
    Status put(const ChunkKey& key, const StoredChunk& chunk) override;
    Status erase(const ChunkKey& key) override;
    // SCAN over every model's manifests.
    Result<std::vector<ChunkDigest>> list() override;
    std::optional<std::vector<int32_t>> tokens_of(const ChunkDigest& digest,
                                                  std::string_view model_fingerprint) override;
    void warn(const Status& status) const override;
    std::string location() const override;
    std::string location_of(const ChunkKey& key) const override;
    std::vector<BackendStats> backend_stats() const override;

    // True when a connection is up (or could be made now).
    bool available();
    // True once a node answered that it is a Redis Cluster node.
    bool is_cluster();

    // The keys of a chunk, for tests and tools.
    static std::string manifest_key(const ChunkKey& key);
    static std::string layer_key(const ChunkKey& key, uint32_t layer);

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace kvfuse::store
