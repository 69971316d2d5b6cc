// The store's backend layer (driver/store): the chunk image codec is the chunk-file format byte
// for byte, its layer ranges tile the payload, a decoded image is verified like a file; the
// directory lists its chunks and resolves a digest to its tokens; a directory in front of another backend copies hits into itself;
// Redis URLs are parsed or refused with the reason; a Redis that cannot be reached is a quick
// miss and a clear put error, never a hang. (Redis itself: tests/serve_test.py.)
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <cstring>
#include <random>
#include <unistd.h>

#include "store/chunk_codec.h"
#include "store/chunk_stream.h"
#include "store/open_backend.h"
#include "store/redis_backend.h"
#include "store/tiered_backend.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "random_chunk.h"
#include "scratch_files.h"

namespace {

// A fresh directory for one test, removed after it.
class Scratch {
public:
    explicit Scratch(const std::string& name) : path_(kvfuse::testing::fresh_scratch_dir("backend", name)) {}
    ~Scratch() { std::filesystem::remove_all(path_); }
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

void write_text(const std::filesystem::path& path, const std::string& text) { std::ofstream(path) << text; }

using namespace kvfuse::store;
namespace fs = std::filesystem;

using kvfuse::testing::OwnedChunk;

// An odd-sized extra section in every layer, so that layers are padded to the next 64-byte boundary.
OwnedChunk make_chunk(uint64_t seed, uint32_t layers = 3, uint32_t tokens = 7) {
    return kvfuse::testing::random_chunk("test-model", seed, 131, layers, tokens, 8, [](uint32_t l) { return 5 + l; });
}

ChunkStore open_directory(const fs::path& directory) {
    ChunkStoreOptions options;
    options.sync_writes = false;
    options.warning = [](const Status&) {};
    Result<ChunkStore> store = ChunkStore::open(directory, options);
    EXPECT_TRUE(store.ok()) << store.status().to_string();
    return std::move(store).value();
}

std::vector<std::byte> read_whole(const fs::path& path) {
    const std::string text = kvfuse::testing::read_whole_file(path);
    std::vector<std::byte> bytes(text.size());
    std::memcpy(bytes.data(), text.data(), text.size());
    return bytes;
}

TEST(ChunkCodec, ImageIsTheChunkFileByteForByte) {
    Scratch scratch("codec");
    ChunkStore store = open_directory(scratch.path());
    const OwnedChunk chunk = make_chunk(1);
    ASSERT_TRUE(store.put(chunk.key, chunk.chunk).ok());
    Result<EncodedChunk> encoded = encode_chunk(chunk.key, chunk.chunk);
    ASSERT_TRUE(encoded.ok()) << encoded.status().to_string();
    EXPECT_EQ(encoded.value().image, read_whole(store.path_of(chunk.key)));
}

TEST(ChunkCodec, LayerRangesTileThePayloadAndMatchADecodedView) {
    const OwnedChunk chunk = make_chunk(2, 4);
    Result<EncodedChunk> encoded = encode_chunk(chunk.key, chunk.chunk);
    ASSERT_TRUE(encoded.ok());
    const EncodedChunk& image = encoded.value();
    ASSERT_EQ(image.layers.size(), 4u);
    uint64_t at = image.header_bytes;
    for (const ByteRange& range : image.layers) {
        EXPECT_EQ(range.offset, at);
        EXPECT_GT(range.bytes, 0u);
        at += range.bytes;
    }
    EXPECT_EQ(at, image.image.size());

    Result<ChunkImageBuffer> buffer = ChunkImageBuffer::allocate(image.image.size());
    ASSERT_TRUE(buffer.ok());
    std::memcpy(buffer.value().bytes().data(), image.image.data(), image.image.size());
    Result<ChunkView> view = std::move(buffer).value().finish(chunk.key, true);
    ASSERT_TRUE(view.ok()) << view.status().to_string();
    const std::vector<ByteRange> ranges = layer_ranges(view.value());
    ASSERT_EQ(ranges.size(), image.layers.size());
    for (size_t l = 0; l < ranges.size(); ++l) {
        EXPECT_EQ(ranges[l].offset, image.layers[l].offset) << "layer " << l;
        EXPECT_EQ(ranges[l].bytes, image.layers[l].bytes) << "layer " << l;
    }
    for (uint32_t l = 0; l < 4; ++l) {
        const auto keys = view.value().keys(l).bytes;
        ASSERT_EQ(keys.size(), chunk.chunk.layers[l].keys.size());
        EXPECT_EQ(std::memcmp(keys.data(), chunk.chunk.layers[l].keys.data(), keys.size()), 0);
    }
    // stored_chunk_of gives back what was put: encoding it again is the same image.
    Result<EncodedChunk> again = encode_chunk(chunk.key, stored_chunk_of(view.value()));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again.value().image, image.image);
}

TEST(ChunkCodec, DecodingRefusesADamagedOrForeignImage) {
    const OwnedChunk chunk = make_chunk(3), other = make_chunk(4);
    std::vector<std::byte> image = encode_chunk(chunk.key, chunk.chunk).value().image;
    auto decode = [&](const std::vector<std::byte>& bytes, const ChunkKey& key) {
        Result<ChunkImageBuffer> buffer = ChunkImageBuffer::allocate(bytes.size());
        EXPECT_TRUE(buffer.ok());
        std::memcpy(buffer.value().bytes().data(), bytes.data(), bytes.size());
        return std::move(buffer).value().finish(key, true).status();
    };
    EXPECT_TRUE(decode(image, chunk.key).ok());
    EXPECT_EQ(decode(image, other.key).code(), StatusCode::mismatch);
    std::vector<std::byte> flipped = image;
    flipped[flipped.size() - 3] ^= std::byte{1};
    EXPECT_EQ(decode(flipped, chunk.key).code(), StatusCode::corrupt);
    std::vector<std::byte> truncated(image.begin(), image.end() - 64);
    EXPECT_EQ(decode(truncated, chunk.key).code(), StatusCode::corrupt);
}

TEST(ChunkBackendDirectory, ListsItsChunksAndNothingElse) {
    Scratch scratch("list");
    ChunkStore store = open_directory(scratch.path());
    const OwnedChunk a = make_chunk(5), b = make_chunk(6);
    ASSERT_TRUE(store.put(a.key, a.chunk).ok());
    ASSERT_TRUE(store.put(b.key, b.chunk).ok());
    write_text(scratch.path() / "notes.txt", "not a chunk");
    write_text(scratch.path() / (std::string(64, 'z') + ".kvchunk"), "not hex");
    Result<std::vector<ChunkDigest>> listed = store.list();
    ASSERT_TRUE(listed.ok());
    std::vector<ChunkDigest> expected = {a.key.digest, b.key.digest};
    std::sort(expected.begin(), expected.end());
    std::sort(listed.value().begin(), listed.value().end());
    EXPECT_EQ(listed.value(), expected);
}

TEST(ChunkBackendDirectory, ResolvesADigestToItsTokensOnlyWhenTheyHashToIt) {
    Scratch scratch("tokens-of");
    ChunkStore store = open_directory(scratch.path());
    const OwnedChunk a = make_chunk(9), b = make_chunk(10);
    ASSERT_TRUE(store.put(a.key, a.chunk).ok());
    std::optional<std::vector<int32_t>> tokens = store.tokens_of(a.key.digest, "test-model");
    ASSERT_TRUE(tokens.has_value());
    EXPECT_EQ(*tokens, a.key.tokens);
    EXPECT_FALSE(store.tokens_of(a.key.digest, "another-model").has_value());
    EXPECT_FALSE(store.tokens_of(b.key.digest, "test-model").has_value()) << "absent";
    // A sound file of chunk a under b's name: its tokens do not hash to b's digest.
    fs::copy_file(store.path_of(a.key), store.path_of(b.key));
    EXPECT_FALSE(store.tokens_of(b.key.digest, "test-model").has_value());
}

TEST(ChunkBackendTiered, RemoteHitsAreCopiedIntoTheLocalTier) {
    Scratch local_dir("tier-local"), remote_dir("tier-remote");
    auto remote = std::make_unique<ChunkStore>(open_directory(remote_dir.path()));
    const OwnedChunk chunk = make_chunk(7);
    ASSERT_TRUE(remote->put(chunk.key, chunk.chunk).ok());
    auto local = std::make_unique<ChunkStore>(open_directory(local_dir.path()));
    ChunkStore* local_view = local.get();
    TieredChunkBackend tiered(std::move(local), std::move(remote));
    ASSERT_FALSE(fs::exists(local_view->path_of(chunk.key)));
    std::optional<ChunkView> first = tiered.get(chunk.key);
    ASSERT_TRUE(first.has_value());
    EXPECT_TRUE(fs::exists(local_view->path_of(chunk.key)));
    const std::vector<BackendStats> stats = tiered.backend_stats();
    ASSERT_EQ(stats.size(), 2u);
    EXPECT_EQ(stats[0].misses, 1u);
    EXPECT_EQ(stats[1].hits, 1u);
    ASSERT_TRUE(tiered.get(chunk.key).has_value());
    EXPECT_EQ(tiered.backend_stats()[0].hits, 1u);
    EXPECT_EQ(tiered.backend_stats()[1].hits, 1u);  // the second read never left this machine
    ASSERT_TRUE(tiered.erase(chunk.key).ok());
    EXPECT_FALSE(tiered.get(chunk.key).has_value());
}

TEST(ChunkStreamDefault, TheDirectoryStreamIsItsWholeGetEveryLayerReadyAtOnce) {
    Scratch dir("stream-default");
    ChunkStore store = open_directory(dir.path());
    const OwnedChunk chunk = make_chunk(11, 4);
    std::shared_ptr<ChunkStream> absent = store.get_streamed(chunk.key);
    EXPECT_FALSE(absent->header().has_value());
    EXPECT_FALSE(absent->wait_layer(0));
    EXPECT_FALSE(absent->wait_all().has_value());
    ASSERT_TRUE(store.put(chunk.key, chunk.chunk).ok());
    std::shared_ptr<ChunkStream> stream = store.get_streamed(chunk.key);
    ASSERT_TRUE(stream->header().has_value());
    EXPECT_EQ(stream->layers_ready(), 4u);
    for (uint32_t l = 0; l < 4; ++l) EXPECT_TRUE(stream->wait_layer(l)) << l;
    EXPECT_FALSE(stream->wait_layer(4)) << "a layer the chunk does not have never arrives";
    std::optional<ChunkView> whole = stream->wait_all();
    ASSERT_TRUE(whole.has_value());
    const std::vector<std::byte> image = encode_chunk(chunk.key, chunk.chunk).value().image;
    ASSERT_EQ(whole->image().size(), image.size());
    EXPECT_EQ(std::memcmp(whole->image().data(), image.data(), image.size()), 0);
    bool completed = false;
    stream->on_complete([&](const ChunkView& view) { completed = view.image().size() == image.size(); });
    EXPECT_TRUE(completed) << "a callback given after completion runs at once";
}

TEST(ChunkStreamDefault, LayersPublishedInOrderAndAFailureEndsTheRest) {
    Scratch dir("stream-publish");
    ChunkStore store = open_directory(dir.path());
    const OwnedChunk chunk = make_chunk(12, 3);
    ASSERT_TRUE(store.put(chunk.key, chunk.chunk).ok());
    auto stream = std::make_shared<ChunkStream>();
    int completions = 0;
    stream->on_complete([&](const ChunkView&) { ++completions; });
    stream->start_reader([&](ChunkStream& s) {
        s.publish_header(*store.get(chunk.key));
        s.publish_layers(1);
        s.fail(Status(StatusCode::corrupt, "layer 1 damaged"));
        s.publish_layers(3);  // after the end: ignored
    });
    ASSERT_TRUE(stream->header().has_value());
    EXPECT_TRUE(stream->wait_layer(0));
    EXPECT_FALSE(stream->wait_layer(1));
    EXPECT_FALSE(stream->wait_layer(2));
    EXPECT_FALSE(stream->wait_all().has_value());
    EXPECT_EQ(stream->failure().code(), StatusCode::corrupt);
    stream.reset();  // joins the reader
    EXPECT_EQ(completions, 0) << "nothing is done with a chunk that never arrived whole";
}

TEST(RedisUrl, ParsesHostPortAndDatabase) {
    Result<RedisOptions> full = parse_redis_url("redis://cache.example:6380/3");
    ASSERT_TRUE(full.ok()) << full.status().to_string();
    EXPECT_EQ(full.value().host, "cache.example");
    EXPECT_EQ(full.value().port, 6380);
    EXPECT_EQ(full.value().db, 3);
    Result<RedisOptions> bare = parse_redis_url("redis://10.0.0.2");
    ASSERT_TRUE(bare.ok());
    EXPECT_EQ(bare.value().port, 6379);
    EXPECT_EQ(bare.value().db, 0);
    EXPECT_TRUE(bare.value().more_seeds.empty());
}

TEST(RedisUrl, ParsesAClusterSeedList) {
    Result<RedisOptions> seeds = parse_redis_url("redis://a:7000,b,c.example:7002/0");
    ASSERT_TRUE(seeds.ok()) << seeds.status().to_string();
    EXPECT_EQ(seeds.value().host, "a");
    EXPECT_EQ(seeds.value().port, 7000);
    const std::vector<std::pair<std::string, int>> more = {{"b", 6379}, {"c.example", 7002}};
    EXPECT_EQ(seeds.value().more_seeds, more);
}

// The slots Redis itself gives (CLUSTER KEYSLOT), and its hash tag rules.
TEST(RedisClusterSlot, IsRedisCrc16OfTheHashTag) {
    EXPECT_EQ(redis_cluster_slot("123456789"), 0x31C3);  // the CRC16-CCITT (XMODEM) check value
    EXPECT_EQ(redis_cluster_slot("foo"), 12182);
    EXPECT_EQ(redis_cluster_slot("somekey"), 11058);
    EXPECT_EQ(redis_cluster_slot(""), 0);
    EXPECT_EQ(redis_cluster_slot("{user1000}.following"), redis_cluster_slot("user1000"));
    EXPECT_EQ(redis_cluster_slot("foo{bar}{zap}"), redis_cluster_slot("bar"));
    EXPECT_EQ(redis_cluster_slot("foo{{bar}}zap"), redis_cluster_slot("{bar"));
    EXPECT_NE(redis_cluster_slot("{}a"), redis_cluster_slot("{}b")) << "an empty tag: the whole key is hashed";
    // Every key of one chunk is in one slot: its digest's.
    const ChunkKey key = make_chunk_key("slot-test-model", std::vector<int32_t>{1, 2, 3});
    const uint16_t slot = redis_cluster_slot(key.hex());
    EXPECT_EQ(redis_cluster_slot(RedisChunkBackend::manifest_key(key)), slot);
    for (uint32_t layer : {0u, 1u, 17u, 65535u}) EXPECT_EQ(redis_cluster_slot(RedisChunkBackend::layer_key(key, layer)), slot);
}

TEST(RedisUrl, RefusesWhatItCannotUseSayingWhy) {
    const std::pair<const char*, const char*> cases[] = {
        {"http://host:1", "redis://"},     {"redis://", "no host"},
        {"redis://h:0", "port"},           {"redis://h:70000", "port"},
        {"redis://h:12x", "port"},         {"redis://h:", "no port"},
        {"redis://h:1/", "database"},      {"redis://h:1/x", "database"},
        {"redis://u:p@h:1", "credentials"},
        {"redis://h:1,", "no host"},       {"redis://h:1,,k", "no host"},
        {"redis://h:1,k:0", "port"},       {"redis://h:1,k:2/3", "database 0 only"},
    };
    for (const auto& [url, words] : cases) {
        Result<RedisOptions> parsed = parse_redis_url(url);
        ASSERT_FALSE(parsed.ok()) << url;
        EXPECT_EQ(parsed.status().code(), StatusCode::invalid_argument) << url;
        EXPECT_NE(parsed.status().message().find(words), std::string::npos)
            << url << ": " << parsed.status().message();
    }
}

// A loopback port nothing listens on: connections are refused at once.
int closed_port() {
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

TEST(RedisBackend, UnreachableIsAQuickMissAndAClearPutError) {
    RedisOptions options;
    options.port = closed_port();
    options.retry_interval = std::chrono::milliseconds(50);
    std::vector<Status> warnings;
    options.warning = [&](const Status& status) { warnings.push_back(status); };
    const auto start = std::chrono::steady_clock::now();
    RedisChunkBackend backend(options);
    const OwnedChunk chunk = make_chunk(8);
    for (int i = 0; i < 5; ++i) EXPECT_FALSE(backend.get(chunk.key).has_value());
    const Status put = backend.put(chunk.key, chunk.chunk);
    EXPECT_EQ(put.code(), StatusCode::io_error);
    EXPECT_NE(put.message().find("redis://127.0.0.1:"), std::string::npos) << put.message();
    EXPECT_FALSE(backend.list().ok());
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
    ASSERT_FALSE(warnings.empty());
    EXPECT_EQ(warnings.size(), 1u) << "one warning per outage, not one per call";
    const std::vector<BackendStats> stats = backend.backend_stats();
    EXPECT_EQ(stats[0].tier, "redis");
    EXPECT_EQ(stats[0].misses, 5u);
    EXPECT_GE(stats[0].unavailable, 1u);
}

TEST(OpenBackend, ChoosesByTheStoreValue) {
    Scratch scratch("open"), cache("open-cache");
    BackendOptions quiet;
    quiet.directory.warning = [](const Status&) {};
    quiet.redis.warning = [](const Status&) {};
    Result<std::unique_ptr<ChunkBackend>> directory = open_backend(scratch.path().string(), quiet);
    ASSERT_TRUE(directory.ok());
    EXPECT_EQ(directory.value()->backend_stats()[0].tier, "fs");
    BackendOptions tiered = quiet;
    tiered.local_cache = cache.path();
    Result<std::unique_ptr<ChunkBackend>> both =
        open_backend("redis://127.0.0.1:" + std::to_string(closed_port()), tiered);
    ASSERT_TRUE(both.ok());
    ASSERT_EQ(both.value()->backend_stats().size(), 2u);
    EXPECT_EQ(both.value()->backend_stats()[1].tier, "redis");
    EXPECT_FALSE(open_backend("redis://h:bad", quiet).ok());
    EXPECT_FALSE(open_backend(scratch.path().string(), tiered).ok()) << "a local cache in front of a directory";
}

}  // namespace
