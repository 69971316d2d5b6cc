// The Redis backend against a live redis-server that the test starts on a free loopback port
// (absent: the test fails; tools/setup.sh installs it): round trip bit for bit, list, erase of
// every key, TTL on every key, a second put skipped, tokens_of, reconnection after a restart;
// a 3-master Redis Cluster of its own: chunks put through one node read through another, a
// node down a miss for its slots only (redirects: tests/serve_test.py, cluster).
// Damage, eviction and outages under a running server: tests/serve_test.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <arpa/inet.h>
#include <csignal>
#include <cstdarg>
#include <fcntl.h>
#include <cstring>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "store/chunk_codec.h"
#include "store/chunk_stream.h"
#include "store/tiered_backend.h"
#include "store/redis_backend.h"

#include "random_chunk.h"

extern char** environ;

namespace {

using namespace kvfuse::store;

int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
    socklen_t length = sizeof address;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    ::close(fd);
    return ntohs(address.sin_port);
}

// A redis-server of the test's own, no persistence, loopback only.
class RedisProcess {
public:
    explicit RedisProcess(std::string password = {}, std::vector<std::string> extra = {})
        : port_(free_port()), password_(std::move(password)), extra_(std::move(extra)) {}
    ~RedisProcess() { stop(); }

    // False (with the reason in `why`) when redis-server cannot be started.
    bool start(std::string* why) {
        const std::string port = std::to_string(port_);
        std::vector<const char*> argv = {"redis-server", "--port", port.c_str(), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"};
        if (!password_.empty()) {
            argv.push_back("--requirepass");
            argv.push_back(password_.c_str());
        }
        for (const std::string& arg : extra_) argv.push_back(arg.c_str());
        argv.push_back(nullptr);
        posix_spawn_file_actions_t quiet;  // its start-up banner and warnings to /dev/null
        posix_spawn_file_actions_init(&quiet);
        posix_spawn_file_actions_addopen(&quiet, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&quiet, 2, "/dev/null", O_WRONLY, 0);
        const int spawned = ::posix_spawnp(&pid_, "redis-server", &quiet, nullptr, const_cast<char**>(argv.data()), environ);
        posix_spawn_file_actions_destroy(&quiet);
        if (spawned != 0) {
            pid_ = -1;
            *why = "redis-server not found on PATH (tools/setup.sh installs it)";
            return false;
        }
        for (int i = 0; i < 200; ++i) {
            // Ours must still run: a port taken meanwhile by another test's Redis makes it exit,
            // and that other Redis must not be mistaken for it.
            if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
                pid_ = -1;
                *why = "redis-server exited at start (port " + port + " taken?)";
                return false;
            }
            if (redisReply* pong = command("PING")) {  // NOAUTH when a password is set: still up
                freeReplyObject(pong);
                return true;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(25));
        }
        *why = "redis-server did not answer on port " + port;
        return false;
    }

    void stop() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
            pid_ = -1;
        }
    }

    int port() const { return port_; }

    // One command on a fresh connection; nullptr when Redis does not answer. Caller frees.
    redisReply* command(const char* format, ...) {
        timeval timeout{1, 0};
        redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, timeout);
        if (c == nullptr || c->err != 0) {
            if (c != nullptr) redisFree(c);
            return nullptr;
        }
        va_list args;
        va_start(args, format);
        if (!password_.empty()) {
            if (auto* auth = static_cast<redisReply*>(redisCommand(c, "AUTH %s", password_.c_str())))
                freeReplyObject(auth);
        }
        auto* reply = static_cast<redisReply*>(redisvCommand(c, format, args));
        va_end(args);
        redisFree(c);
        return reply;
    }

    long long integer(const char* format, const std::string& key) {
        redisReply* reply = command(format, key.c_str());
        const long long value = reply != nullptr && reply->type == REDIS_REPLY_INTEGER ? reply->integer : -100;
        if (reply != nullptr) freeReplyObject(reply);
        return value;
    }

private:
    int port_;
    std::string password_;
    std::vector<std::string> extra_;
    pid_t pid_ = -1;
};

using kvfuse::testing::OwnedChunk;

OwnedChunk make_chunk(uint64_t seed, uint32_t layers = 4) {
    return kvfuse::testing::random_chunk("redis-test-model", seed, 1000, layers, 9, 16, [](uint32_t) { return 3u; });
}

class RedisBackendLive : public ::testing::Test {
protected:
    void SetUp() override {
        std::string why;
        ASSERT_TRUE(redis_.start(&why)) << why;
    }
    RedisOptions options(uint64_t ttl = 0) {
        RedisOptions o;
        o.port = redis_.port();
        o.ttl_seconds = ttl;
        o.retry_interval = std::chrono::milliseconds(50);
        o.warning = [this](const Status& status) { warnings_.push_back(status.to_string()); };
        return o;
    }
    RedisProcess redis_;
    std::vector<std::string> warnings_;
};

TEST_F(RedisBackendLive, RoundTripIsTheEncodedImageBitForBit) {
    RedisChunkBackend backend(options());
    const OwnedChunk chunk = make_chunk(1);
    EXPECT_FALSE(backend.get(chunk.key).has_value());
    ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
    std::optional<ChunkView> view = backend.get(chunk.key);
    ASSERT_TRUE(view.has_value());
    const std::vector<std::byte> image = encode_chunk(chunk.key, chunk.chunk).value().image;
    ASSERT_EQ(view->image().size(), image.size());
    EXPECT_EQ(std::memcmp(view->image().data(), image.data(), image.size()), 0);
    EXPECT_EQ(redis_.integer("EXISTS %s", RedisChunkBackend::manifest_key(chunk.key)), 1);
    for (uint32_t l = 0; l < 4; ++l)
        EXPECT_EQ(redis_.integer("EXISTS %s", RedisChunkBackend::layer_key(chunk.key, l)), 1) << l;
    const BackendStats stats = backend.backend_stats()[0];
    EXPECT_EQ(stats.hits, 1u);
    EXPECT_EQ(stats.misses, 1u);
    EXPECT_EQ(stats.puts, 1u);
    EXPECT_EQ(stats.bytes_written, image.size());
    EXPECT_EQ(stats.bytes_read, image.size());
    EXPECT_TRUE(warnings_.empty());
}

TEST_F(RedisBackendLive, SecondPutIsSkippedAndOtherModelsNeverMatch) {
    RedisChunkBackend backend(options());
    const OwnedChunk chunk = make_chunk(2);
    ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
    ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
    EXPECT_EQ(backend.backend_stats()[0].puts, 1u);
    const ChunkKey other_model = make_chunk_key("another-model", chunk.key.tokens);
    EXPECT_FALSE(backend.get(other_model).has_value());
}

TEST_F(RedisBackendLive, ListEraseAndTokensOf) {
    RedisChunkBackend backend(options());
    const OwnedChunk a = make_chunk(3), b = make_chunk(4);
    ASSERT_TRUE(backend.put(a.key, a.chunk).ok());
    ASSERT_TRUE(backend.put(b.key, b.chunk).ok());
    Result<std::vector<ChunkDigest>> listed = backend.list();
    ASSERT_TRUE(listed.ok());
    std::vector<ChunkDigest> expected = {a.key.digest, b.key.digest};
    std::sort(expected.begin(), expected.end());
    std::sort(listed.value().begin(), listed.value().end());
    EXPECT_EQ(listed.value(), expected);

    std::optional<std::vector<int32_t>> tokens = backend.tokens_of(a.key.digest, "redis-test-model");
    ASSERT_TRUE(tokens.has_value());
    EXPECT_EQ(*tokens, a.key.tokens);
    EXPECT_FALSE(backend.tokens_of(a.key.digest, "another-model").has_value());

    ASSERT_TRUE(backend.erase(a.key).ok());
    EXPECT_FALSE(backend.get(a.key).has_value());
    EXPECT_EQ(redis_.integer("EXISTS %s", RedisChunkBackend::manifest_key(a.key)), 0);
    for (uint32_t l = 0; l < 4; ++l)
        EXPECT_EQ(redis_.integer("EXISTS %s", RedisChunkBackend::layer_key(a.key, l)), 0) << l;
    EXPECT_TRUE(backend.get(b.key).has_value());
    EXPECT_TRUE(backend.erase(a.key).ok()) << "absent is not an error";
}

TEST_F(RedisBackendLive, TtlIsSetOnEveryKey) {
    RedisChunkBackend backend(options(/*ttl=*/600));
    const OwnedChunk chunk = make_chunk(5);
    ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
    const long long manifest_ttl = redis_.integer("TTL %s", RedisChunkBackend::manifest_key(chunk.key));
    EXPECT_GT(manifest_ttl, 590);
    EXPECT_LE(manifest_ttl, 600);
    for (uint32_t l = 0; l < 4; ++l)
        EXPECT_GT(redis_.integer("TTL %s", RedisChunkBackend::layer_key(chunk.key, l)), 590) << l;
}

TEST_F(RedisBackendLive, ReconnectsAfterARestart) {
    RedisChunkBackend backend(options());
    const OwnedChunk chunk = make_chunk(6);
    ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
    ASSERT_TRUE(backend.get(chunk.key).has_value());
    redis_.stop();
    EXPECT_FALSE(backend.get(chunk.key).has_value());
    EXPECT_FALSE(backend.put(chunk.key, chunk.chunk).ok());
    std::string why;
    ASSERT_TRUE(redis_.start(&why)) << why;  // same port, empty
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // past the retry interval
    EXPECT_FALSE(backend.get(chunk.key).has_value()) << "the restarted Redis is empty";
    ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
    EXPECT_TRUE(backend.get(chunk.key).has_value());
    ASSERT_GE(warnings_.size(), 2u);
    EXPECT_NE(warnings_.back().find("connected again"), std::string::npos) << warnings_.back();
}

// Streamed reads: layers verified one by one, never a damaged layer's bytes.
TEST_F(RedisBackendLive, AStreamedReadIsTheWholeGetBitForBit) {
    for (uint32_t in_flight : {1u, 4u, 64u}) {
        RedisOptions o = options();
        o.stream_in_flight = in_flight;
        RedisChunkBackend backend(o);
        const OwnedChunk chunk = make_chunk(20 + in_flight, 6);
        EXPECT_FALSE(backend.get_streamed(chunk.key)->header().has_value());
        ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
        std::shared_ptr<ChunkStream> stream = backend.get_streamed(chunk.key);
        ASSERT_TRUE(stream->header().has_value());
        for (uint32_t l = 0; l < 6; ++l) EXPECT_TRUE(stream->wait_layer(l)) << l;
        std::optional<ChunkView> streamed = stream->wait_all();
        std::optional<ChunkView> whole = backend.get(chunk.key);
        ASSERT_TRUE(streamed.has_value());
        ASSERT_TRUE(whole.has_value());
        ASSERT_EQ(streamed->image().size(), whole->image().size());
        EXPECT_EQ(std::memcmp(streamed->image().data(), whole->image().data(), whole->image().size()), 0);
        EXPECT_TRUE(stream->failure().ok());
        // Dropped before it is read: the reader stops, nothing breaks, the next read still works.
        for (int i = 0; i < 5; ++i) (void)backend.get_streamed(chunk.key);
        EXPECT_TRUE(backend.get_streamed(chunk.key)->wait_all().has_value());
        const BackendStats stats = backend.backend_stats()[0];
        EXPECT_EQ(stats.corrupt, 0u);
        EXPECT_GE(stats.hits, 3u);
    }
    EXPECT_TRUE(warnings_.empty()) << warnings_.front();
}

TEST_F(RedisBackendLive, ALayerDeletedOrDamagedMidStreamIsAMissNeverItsBytes) {
    struct Case {
        const char* what;
        std::function<void(RedisProcess&, const ChunkKey&)> damage;
    };
    const std::vector<Case> cases = {
        {"deleted (evicted)", [](RedisProcess& r, const ChunkKey& key) { freeReplyObject(r.command("DEL %s", RedisChunkBackend::layer_key(key, 2).c_str())); }},
        {"overwritten, same size", [](RedisProcess& r, const ChunkKey& key) {
             const std::string name = RedisChunkBackend::layer_key(key, 2);
             redisReply* old = r.command("GET %s", name.c_str());
             std::string bytes(old->str, old->len);
             freeReplyObject(old);
             bytes[bytes.size() / 2] ^= 1;
             freeReplyObject(r.command("SET %s %b", name.c_str(), bytes.data(), bytes.size()));
         }},
        {"truncated", [](RedisProcess& r, const ChunkKey& key) {
             freeReplyObject(r.command("SET %s %s", RedisChunkBackend::layer_key(key, 2).c_str(), "short"));
         }},
    };
    uint64_t seed = 30;
    for (const Case& c : cases) {
        const OwnedChunk chunk = make_chunk(seed++, 5);
        RedisOptions o = options();
        o.stream_hook_for_testing = [&](const ChunkKey& key) { c.damage(redis_, key); };
        RedisChunkBackend backend(o);
        ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
        std::shared_ptr<ChunkStream> stream = backend.get_streamed(chunk.key);
        ASSERT_TRUE(stream->header().has_value()) << c.what;
        EXPECT_TRUE(stream->wait_layer(0)) << c.what;
        EXPECT_TRUE(stream->wait_layer(1)) << c.what;
        EXPECT_FALSE(stream->wait_layer(2)) << c.what;
        EXPECT_FALSE(stream->wait_layer(4)) << c.what;
        EXPECT_EQ(stream->layers_ready(), 2u) << c.what;
        EXPECT_FALSE(stream->wait_all().has_value()) << c.what;
        EXPECT_EQ(stream->failure().code(), StatusCode::corrupt) << c.what << ": " << stream->failure().to_string();
        EXPECT_EQ(backend.backend_stats()[0].corrupt, 1u) << c.what;
        // Deleted so that the recomputed chunk is stored again.
        EXPECT_EQ(redis_.integer("EXISTS %s", RedisChunkBackend::manifest_key(chunk.key)), 0) << c.what;
        EXPECT_EQ(redis_.integer("EXISTS %s", RedisChunkBackend::layer_key(chunk.key, 0)), 0) << c.what;
    }
    ASSERT_EQ(warnings_.size(), cases.size());
}

TEST_F(RedisBackendLive, RedisDownMidStreamIsAMissAndStreamsReconnect) {
    const OwnedChunk chunk = make_chunk(40, 4);
    bool kill = false;
    RedisOptions o = options();
    o.stream_hook_for_testing = [&](const ChunkKey&) {
        if (kill) redis_.stop();
    };
    RedisChunkBackend backend(o);
    ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
    ASSERT_TRUE(backend.get_streamed(chunk.key)->wait_all().has_value());  // a pooled connection now
    kill = true;
    std::shared_ptr<ChunkStream> stream = backend.get_streamed(chunk.key);
    ASSERT_TRUE(stream->header().has_value());
    EXPECT_FALSE(stream->wait_layer(0));
    EXPECT_EQ(stream->failure().code(), StatusCode::io_error) << stream->failure().to_string();
    kill = false;
    EXPECT_FALSE(backend.get_streamed(chunk.key)->header().has_value()) << "Redis is down";
    std::string why;
    ASSERT_TRUE(redis_.start(&why)) << why;  // same port, empty
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // past the retry interval
    EXPECT_FALSE(backend.get_streamed(chunk.key)->header().has_value()) << "the restarted Redis is empty";
    EXPECT_FALSE(backend.get(chunk.key).has_value());  // the command connection finds out it was cut
    ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
    EXPECT_TRUE(backend.get_streamed(chunk.key)->wait_all().has_value());
}

TEST_F(RedisBackendLive, TheTieredStreamWritesItsLocalCopyOnlyWhenComplete) {
    const OwnedChunk good = make_chunk(50, 4), bad = make_chunk(51, 4);
    const std::string dir = ::testing::TempDir() + "kvfuse-stream-tier-" + std::to_string(::getpid());
    std::filesystem::remove_all(dir);
    RedisOptions o = options();
    o.stream_hook_for_testing = [&](const ChunkKey& key) {
        if (key.digest == bad.key.digest) freeReplyObject(redis_.command("DEL %s", RedisChunkBackend::layer_key(key, 3).c_str()));
    };
    auto remote = std::make_unique<RedisChunkBackend>(o);
    ASSERT_TRUE(remote->put(good.key, good.chunk).ok());
    ASSERT_TRUE(remote->put(bad.key, bad.chunk).ok());
    ChunkStoreOptions local_options;
    local_options.sync_writes = false;
    auto local = ChunkStore::open(dir, local_options);
    ASSERT_TRUE(local.ok()) << local.status().to_string();
    auto local_store = std::make_unique<ChunkStore>(std::move(local).value());
    ChunkStore* local_view = local_store.get();
    {
        TieredChunkBackend tiered(std::move(local_store), std::move(remote));
        std::shared_ptr<ChunkStream> stream = tiered.get_streamed(bad.key);
        EXPECT_TRUE(stream->wait_layer(2));
        EXPECT_FALSE(stream->wait_layer(3));
        stream.reset();
        EXPECT_FALSE(std::filesystem::exists(local_view->path_of(bad.key))) << "a broken stream leaves no local copy";
        stream = tiered.get_streamed(good.key);
        ASSERT_TRUE(stream->wait_all().has_value());
        stream.reset();  // the local put ran on the reader's thread, joined here
        EXPECT_TRUE(std::filesystem::exists(local_view->path_of(good.key)));
        EXPECT_EQ(tiered.get_streamed(good.key)->layers_ready(), 4u) << "a local hit is complete at once";
        EXPECT_EQ(tiered.backend_stats()[0].hits, 1u);
    }
    std::filesystem::remove_all(dir);
}

TEST_F(RedisBackendLive, ASingleRedisIsNotACluster) {
    RedisChunkBackend backend(options());
    EXPECT_FALSE(backend.is_cluster());
}

// Three masters of a Redis Cluster of the test's own: slots split in three (ADDSLOTSRANGE),
// joined by MEET, each node's cluster file in a directory of its own, removed at the end.
// cluster-require-full-coverage no: a node killed leaves the others serving their slots even
// once the cluster has marked it failed (a slow run under the sanitizers may outlast the
// 2 s node timeout).
class RedisClusterLive : public ::testing::Test {
protected:
    void SetUp() override {
        char pattern[] = "/tmp/kvfuse-redis-cluster-XXXXXX";
        ASSERT_NE(::mkdtemp(pattern), nullptr);
        directory_ = pattern;
        const int ranges[3][2] = {{0, 5460}, {5461, 10922}, {10923, 16383}};
        for (int i = 0; i < 3; ++i) {
            const std::string dir = directory_ + "/" + std::to_string(i);
            std::filesystem::create_directory(dir);
            bus_[i] = free_port();
            nodes_[i] = std::make_unique<RedisProcess>(
                std::string(), std::vector<std::string>{"--cluster-enabled", "yes", "--dir", dir, "--cluster-port",
                                                        std::to_string(bus_[i]), "--cluster-node-timeout", "2000",
                                                        "--cluster-require-full-coverage", "no"});
            std::string why;
            ASSERT_TRUE(nodes_[i]->start(&why)) << why;
            freeReplyObject(nodes_[i]->command("CLUSTER ADDSLOTSRANGE %d %d", ranges[i][0], ranges[i][1]));
        }
        // Counted in tries, not wall time, with MEET sent again now and then: a run paused by
        // SIGSTOP (`quiet` stops nice-19 processes) can outlast a MEET's handshake, which Redis
        // then drops (a MEET to a node already known is a handshake dropped once its id is seen).
        for (int tries = 0; tries < 800 && !formed(); ++tries) {
            if (tries % 40 == 0) {
                for (int i = 1; i < 3; ++i)
                    freeReplyObject(nodes_[0]->command("CLUSTER MEET 127.0.0.1 %d %d", nodes_[i]->port(), bus_[i]));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        ASSERT_TRUE(formed()) << "the cluster did not form";
    }
    void TearDown() override {
        for (auto& node : nodes_) node.reset();
        std::filesystem::remove_all(directory_);
    }
    bool formed() {
        for (auto& node : nodes_) {
            redisReply* info = node->command("CLUSTER INFO");
            const bool ok = info != nullptr && info->type == REDIS_REPLY_STRING &&
                            std::string_view(info->str, info->len).find("cluster_state:ok") != std::string_view::npos &&
                            std::string_view(info->str, info->len).find("cluster_known_nodes:3") != std::string_view::npos;
            if (info != nullptr) freeReplyObject(info);
            if (!ok) return false;
            // cluster_state:ok does not mean every slot's owner is known without full coverage.
            redisReply* slots = node->command("CLUSTER SLOTS");
            const bool all = slots != nullptr && slots->type == REDIS_REPLY_ARRAY && slots->elements == 3;
            if (slots != nullptr) freeReplyObject(slots);
            if (!all) return false;
        }
        return true;
    }
    RedisOptions options(int node) {
        RedisOptions o;
        o.port = nodes_[node]->port();
        o.retry_interval = std::chrono::milliseconds(50);
        o.warning = [this](const Status& status) { warnings_.push_back(status.to_string()); };
        return o;
    }
    // The nodes holding `key` (exactly one when it is stored, none after an erase).
    std::vector<int> holders(const std::string& key) {
        std::vector<int> out;
        for (int i = 0; i < 3; ++i) {
            if (nodes_[i]->integer("EXISTS %s", key) == 1) out.push_back(i);
        }
        return out;
    }
    std::string directory_;
    int bus_[3] = {};
    std::unique_ptr<RedisProcess> nodes_[3];
    std::vector<std::string> warnings_;
};

TEST_F(RedisClusterLive, ChunksStoredThroughOneNodeAreFoundThroughAnother) {
    RedisChunkBackend writer(options(0)), reader(options(2));
    EXPECT_TRUE(writer.is_cluster());
    std::vector<OwnedChunk> chunks;
    for (uint64_t seed = 0; seed < 12; ++seed) chunks.push_back(make_chunk(100 + seed));
    std::vector<int> per_node(3, 0);
    for (const OwnedChunk& chunk : chunks) {
        ASSERT_TRUE(writer.put(chunk.key, chunk.chunk).ok());
        const std::vector<int> at = holders(RedisChunkBackend::manifest_key(chunk.key));
        ASSERT_EQ(at.size(), 1u);
        ++per_node[static_cast<size_t>(at[0])];
        for (uint32_t l = 0; l < 4; ++l) EXPECT_EQ(holders(RedisChunkBackend::layer_key(chunk.key, l)), at) << "one chunk, one node";
    }
    EXPECT_EQ(std::count(per_node.begin(), per_node.end(), 0), 0) << "12 chunks on every one of the 3 masters";
    for (const OwnedChunk& chunk : chunks) {
        std::optional<ChunkView> view = reader.get(chunk.key);
        ASSERT_TRUE(view.has_value());
        const std::vector<std::byte> image = encode_chunk(chunk.key, chunk.chunk).value().image;
        ASSERT_EQ(view->image().size(), image.size());
        EXPECT_EQ(std::memcmp(view->image().data(), image.data(), image.size()), 0);
    }
    std::shared_ptr<ChunkStream> stream = reader.get_streamed(chunks[5].key);
    std::optional<ChunkView> streamed = stream->wait_all();
    ASSERT_TRUE(streamed.has_value());
    const std::vector<std::byte> image = encode_chunk(chunks[5].key, chunks[5].chunk).value().image;
    EXPECT_EQ(std::memcmp(streamed->image().data(), image.data(), image.size()), 0);
    stream.reset();

    Result<std::vector<ChunkDigest>> listed = reader.list();
    ASSERT_TRUE(listed.ok()) << listed.status().to_string();
    std::vector<ChunkDigest> expected;
    for (const OwnedChunk& chunk : chunks) expected.push_back(chunk.key.digest);
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(listed.value(), expected) << "every master scanned, each chunk once";
    EXPECT_EQ(reader.tokens_of(chunks[7].key.digest, "redis-test-model"), std::optional(chunks[7].key.tokens));
    ASSERT_TRUE(reader.erase(chunks[3].key).ok());
    EXPECT_TRUE(holders(RedisChunkBackend::manifest_key(chunks[3].key)).empty());
    for (uint32_t l = 0; l < 4; ++l) EXPECT_TRUE(holders(RedisChunkBackend::layer_key(chunks[3].key, l)).empty());
    EXPECT_FALSE(writer.get(chunks[3].key).has_value());
    const BackendStats stats = reader.backend_stats()[0];
    EXPECT_EQ(stats.redirects, 0u) << "the slot of every key is the cluster's own";
    EXPECT_EQ(stats.hits, 12u + 2u);  // the gets, the stream, tokens_of's verifying get
    EXPECT_TRUE(warnings_.empty()) << warnings_.front();
}

// A chunk's slot migrated from its node to another while it is read: ASK for the keys moved
// (followed: the chunk whole, bit for bit), then MOVED once the slot is reassigned (followed,
// the map updated: no redirect after); a client allowed no redirect gives up with a miss.
TEST_F(RedisClusterLive, AMigratingSlotIsFollowedThroughAskThenMovedWithinTheBound) {
    RedisChunkBackend backend(options(0));
    RedisOptions no_redirect = options(1);
    no_redirect.max_redirects = 0;
    RedisChunkBackend bounded(no_redirect);
    const OwnedChunk chunk = make_chunk(300);
    ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
    const std::string manifest = RedisChunkBackend::manifest_key(chunk.key);
    const int source = holders(manifest).at(0), target = (source + 1) % 3;
    const long long slot = nodes_[0]->integer("CLUSTER KEYSLOT %s", manifest);
    auto id = [&](int node) {
        redisReply* reply = nodes_[node]->command("CLUSTER MYID");
        std::string out = reply != nullptr && reply->type == REDIS_REPLY_STRING ? std::string(reply->str, reply->len) : "";
        freeReplyObject(reply);
        return out;
    };
    freeReplyObject(nodes_[target]->command("CLUSTER SETSLOT %lld IMPORTING %s", slot, id(source).c_str()));
    freeReplyObject(nodes_[source]->command("CLUSTER SETSLOT %lld MIGRATING %s", slot, id(target).c_str()));
    auto migrate = [&](const std::string& key) {
        redisReply* reply = nodes_[source]->command("MIGRATE 127.0.0.1 %d %s 0 5000", nodes_[target]->port(), key.c_str());
        ASSERT_NE(reply, nullptr);
        EXPECT_EQ(reply->type, REDIS_REPLY_STATUS) << (reply->type == REDIS_REPLY_ERROR ? reply->str : "");
        freeReplyObject(reply);
    };
    migrate(manifest);
    migrate(RedisChunkBackend::layer_key(chunk.key, 1));
    const std::vector<std::byte> image = encode_chunk(chunk.key, chunk.chunk).value().image;
    std::optional<ChunkView> view = backend.get(chunk.key);
    ASSERT_TRUE(view.has_value()) << "ASK followed";
    EXPECT_EQ(std::memcmp(view->image().data(), image.data(), image.size()), 0);
    EXPECT_EQ(backend.backend_stats()[0].redirects, 2u) << "the manifest and layer 1";
    std::optional<ChunkView> streamed = backend.get_streamed(chunk.key)->wait_all();
    ASSERT_TRUE(streamed.has_value());
    EXPECT_EQ(std::memcmp(streamed->image().data(), image.data(), image.size()), 0);
    EXPECT_EQ(backend.backend_stats()[0].redirects, 4u);
    EXPECT_FALSE(bounded.get(chunk.key).has_value()) << "no redirect allowed: a miss";
    ASSERT_FALSE(warnings_.empty());
    EXPECT_NE(warnings_.back().find("more than 0 redirects"), std::string::npos) << warnings_.back();

    for (uint32_t l : {0u, 2u, 3u}) migrate(RedisChunkBackend::layer_key(chunk.key, l));
    for (auto& node : nodes_) freeReplyObject(node->command("CLUSTER SETSLOT %lld NODE %s", slot, id(target).c_str()));
    EXPECT_EQ(holders(manifest), std::vector<int>{target});
    ASSERT_TRUE(backend.get(chunk.key).has_value()) << "MOVED followed";
    const uint64_t after_moved = backend.backend_stats()[0].redirects;
    EXPECT_GT(after_moved, 4u);
    ASSERT_TRUE(backend.get(chunk.key).has_value());
    ASSERT_TRUE(backend.get_streamed(chunk.key)->wait_all().has_value());
    EXPECT_EQ(backend.backend_stats()[0].redirects, after_moved) << "the map was updated";
    EXPECT_EQ(backend.backend_stats()[0].corrupt, 0u);
}

TEST_F(RedisClusterLive, ANodeDownIsAMissForItsSlotsOnly) {
    RedisChunkBackend backend(options(0));
    std::vector<OwnedChunk> chunks;
    for (uint64_t seed = 0; seed < 12; ++seed) chunks.push_back(make_chunk(200 + seed));
    for (const OwnedChunk& chunk : chunks) ASSERT_TRUE(backend.put(chunk.key, chunk.chunk).ok());
    std::vector<bool> on_last;
    for (const OwnedChunk& chunk : chunks) on_last.push_back(holders(RedisChunkBackend::manifest_key(chunk.key)) == std::vector<int>{2});
    nodes_[2]->stop();
    for (size_t i = 0; i < chunks.size(); ++i) {
        EXPECT_EQ(backend.get(chunks[i].key).has_value(), !on_last[i]) << i;
        std::shared_ptr<ChunkStream> stream = backend.get_streamed(chunks[i].key);
        EXPECT_EQ(stream->wait_all().has_value(), !on_last[i]) << i;
    }
    EXPECT_GT(std::count(on_last.begin(), on_last.end(), true), 0) << "some chunks were on the node killed";
    ASSERT_FALSE(warnings_.empty());
    EXPECT_NE(warnings_.front().find(std::to_string(nodes_[2]->port())), std::string::npos) << warnings_.front();
}

TEST(RedisBackendAuth, APasswordOpensARedisThatRequiresOneAndItsAbsenceIsAClearRefusal) {
    RedisProcess redis("kvfuse-test-secret");
    std::string why;
    ASSERT_TRUE(redis.start(&why)) << why;
    const OwnedChunk chunk = make_chunk(7);
    std::vector<std::string> warnings;
    RedisOptions options;
    options.port = redis.port();
    options.warning = [&](const Status& status) { warnings.push_back(status.to_string()); };
    {
        RedisChunkBackend without(options);
        EXPECT_FALSE(without.get(chunk.key).has_value());
        const Status put = without.put(chunk.key, chunk.chunk);
        EXPECT_FALSE(put.ok());
    }
    ASSERT_FALSE(warnings.empty());
    EXPECT_NE(warnings.front().find("NOAUTH"), std::string::npos) << warnings.front();
    options.password = "wrong";
    warnings.clear();
    {
        RedisChunkBackend wrong(options);
        EXPECT_FALSE(wrong.get(chunk.key).has_value());
    }
    ASSERT_FALSE(warnings.empty());
    EXPECT_NE(warnings.front().find("AUTH refused"), std::string::npos) << warnings.front();
    EXPECT_EQ(warnings.front().find("wrong"), std::string::npos) << "the password never appears in a message";
    options.password = "kvfuse-test-secret";
    warnings.clear();
    RedisChunkBackend with(options);
    ASSERT_TRUE(with.put(chunk.key, chunk.chunk).ok());
    EXPECT_TRUE(with.get(chunk.key).has_value());
    EXPECT_TRUE(warnings.empty());
}

}  // namespace
