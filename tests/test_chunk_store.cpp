// The chunk KV store (driver/store): round trips, LRU, every kind of damaged or mismatched file
// read as a miss, crashed writers' leftovers, several processes sharing one directory, and
// clear errors for directories that cannot be written.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <csignal>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "store/chunk_file_format.h"
#include "store/chunk_store.h"

namespace {

namespace fs = std::filesystem;
using namespace kvfuse::store;

// A chunk's data, owned, filled from a seed so that any two chunks differ everywhere.
struct OwnedChunk {
    std::vector<int32_t> tokens;
    std::vector<std::vector<std::byte>> buffers;
    StoredChunk chunk;
};

std::vector<std::byte> pattern_bytes(size_t bytes, uint64_t seed) {
    std::vector<std::byte> out(bytes);
    std::mt19937_64 random(seed);
    for (std::byte& b : out) b = static_cast<std::byte>(random());
    return out;
}

// A layout's K/V plus, when with_sections, a quantizer-like set of extras per layer:
// int8 keys, int4 keys, per-token f32 scales and per-head f32 means.
OwnedChunk make_chunk(ChunkLayout layout, uint32_t token_count, uint64_t seed,
                      bool with_sections = true) {
    OwnedChunk owned;
    for (uint32_t t = 0; t < token_count; ++t) {
        owned.tokens.push_back(static_cast<int32_t>((seed * 7919 + t * 31) % 128256));
    }
    owned.chunk.layout = layout;
    const uint64_t kv_elements = uint64_t{token_count} * layout.kv_heads * layout.head_dim;
    const uint64_t kv_bytes = dtype_bytes(layout.kv_dtype, kv_elements);
    owned.buffers.reserve(6 * layout.layers);
    auto buffer = [&](size_t bytes) -> std::span<const std::byte> {
        owned.buffers.push_back(pattern_bytes(bytes, seed * 1000003 + owned.buffers.size()));
        return owned.buffers.back();
    };
    for (uint32_t l = 0; l < layout.layers; ++l) {
        LayerInput layer;
        layer.keys = buffer(kv_bytes);
        layer.values = buffer(kv_bytes);
        if (with_sections) {
            const uint64_t t = token_count, h = layout.kv_heads, d = layout.head_dim;
            layer.extra_sections.push_back({"keys_i8", DType::i8, {t, h, d}, buffer(t * h * d)});
            layer.extra_sections.push_back(
                {"keys_i4", DType::i4, {t, h, d}, buffer(dtype_bytes(DType::i4, t * h * d))});
            layer.extra_sections.push_back({"key_scales", DType::f32, {t, h}, buffer(4 * t * h)});
            layer.extra_sections.push_back({"key_means", DType::f32, {h, d}, buffer(4 * h * d)});
        }
        owned.chunk.layers.push_back(std::move(layer));
    }
    return owned;
}

bool same_bytes(std::span<const std::byte> a, std::span<const std::byte> b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
}

// Whether a view holds exactly this chunk; the first difference in `why`.
bool view_matches(const ChunkView& view, const OwnedChunk& owned, std::string* why = nullptr) {
    auto fail = [&](std::string text) {
        if (why) *why = std::move(text);
        return false;
    };
    if (!(view.layout() == owned.chunk.layout)) return fail("layout");
    if (!std::equal(view.tokens().begin(), view.tokens().end(), owned.tokens.begin(),
                    owned.tokens.end())) {
        return fail("tokens");
    }
    for (uint32_t l = 0; l < owned.chunk.layout.layers; ++l) {
        const LayerInput& in = owned.chunk.layers[l];
        if (!same_bytes(view.keys(l).bytes, in.keys)) return fail("K of layer " + std::to_string(l));
        if (!same_bytes(view.values(l).bytes, in.values)) return fail("V of layer " + std::to_string(l));
        if (view.sections(l).size() != 2 + in.extra_sections.size()) return fail("section count");
        for (const SectionInput& section : in.extra_sections) {
            const SectionView* stored = view.find_section(l, section.name);
            if (stored == nullptr) return fail("missing section " + section.name);
            if (stored->dtype != section.dtype ||
                !std::equal(stored->shape.begin(), stored->shape.end(), section.shape.begin(),
                            section.shape.end()) ||
                !same_bytes(stored->bytes, section.bytes)) {
                return fail("section " + section.name + " of layer " + std::to_string(l));
            }
        }
    }
    return true;
}

std::vector<std::byte> read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> bytes(chars.size());
    std::memcpy(bytes.data(), chars.data(), chars.size());
    return bytes;
}

void write_file(const fs::path& path, std::span<const std::byte> bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

template <class T>
T load_field(std::span<const std::byte> file, size_t offset) {
    T value;
    std::memcpy(&value, file.data() + offset, sizeof(T));
    return value;
}

template <class T>
void store_field(std::span<std::byte> file, size_t offset, T value) {
    std::memcpy(file.data() + offset, &value, sizeof(T));
}

// Recomputes the header checksum, so that a test reaches the checks behind it.
void reseal_header(std::vector<std::byte>& file, size_t header_bytes) {
    const uint64_t payload = load_field<uint64_t>(file, format::field::payload_checksum);
    format::seal_header(std::span(file).first(header_bytes), payload);
}

constexpr ChunkLayout kSmallF32{3, 4, 8, DType::f32};
constexpr ChunkLayout kSmallBf16{2, 2, 64, DType::bf16};

class ChunkStoreTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string pattern = (fs::temp_directory_path() / "kvfuse-store-XXXXXX").string();
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
        root_ = pattern;
        directory_ = root_ / "chunks";
    }
    void TearDown() override {
        std::error_code ignored;
        fs::permissions(root_, fs::perms::owner_all, fs::perm_options::add, ignored);
        if (fs::exists(directory_)) {
            fs::permissions(directory_, fs::perms::owner_all, fs::perm_options::add, ignored);
        }
        fs::remove_all(root_, ignored);
    }

    ChunkStoreOptions options() {
        ChunkStoreOptions o;
        o.warning = [this](const Status& status) {
            std::lock_guard lock(warnings_mutex_);
            warnings_.push_back(status);
        };
        return o;
    }

    ChunkStore open_store(ChunkStoreOptions o) {
        Result<ChunkStore> store = ChunkStore::open(directory_, std::move(o));
        EXPECT_TRUE(store.ok()) << store.status().to_string();
        return std::move(store).value();
    }
    ChunkStore open_store() { return open_store(options()); }

    // Puts the chunk, damages its file with `damage`, and checks that a fresh read is a miss
    // reported with `expected_code` and a message containing `expected_text`.
    void expect_damage_is_a_miss(const std::function<void(std::vector<std::byte>&)>& damage,
                                 StatusCode expected_code, const std::string& expected_text) {
        OwnedChunk owned = make_chunk(kSmallF32, 5, 42);
        const ChunkKey key = make_chunk_key("model-a", owned.tokens);
        ChunkStore store = open_store();
        ASSERT_TRUE(store.put(key, owned.chunk).ok());
        std::vector<std::byte> file = read_file(store.path_of(key));
        damage(file);
        write_file(store.path_of(key), file);
        warnings_.clear();

        EXPECT_FALSE(store.get(key).has_value());
        ASSERT_EQ(warnings_.size(), 1u);
        EXPECT_EQ(warnings_[0].code(), expected_code) << warnings_[0].to_string();
        EXPECT_NE(warnings_[0].message().find(expected_text), std::string::npos)
            << warnings_[0].to_string();
        EXPECT_NE(warnings_[0].message().find(store.path_of(key).string()), std::string::npos);
        const ChunkStoreStats stats = store.stats();
        EXPECT_EQ(stats.misses, 1u);
        EXPECT_EQ(stats.corrupt + stats.mismatched, 1u);
        EXPECT_EQ(expected_code == StatusCode::corrupt ? stats.corrupt : stats.mismatched, 1u);

        // A damaged file is removed; any bad file is replaced by the next put.
        if (expected_code == StatusCode::corrupt) {
            EXPECT_FALSE(fs::exists(store.path_of(key)));
        }
        ASSERT_TRUE(store.put(key, owned.chunk).ok());
        std::optional<ChunkView> view = store.get(key);
        ASSERT_TRUE(view.has_value());
        EXPECT_TRUE(view_matches(*view, owned));
    }

    fs::path root_;
    fs::path directory_;
    std::mutex warnings_mutex_;
    std::vector<Status> warnings_;
};

// ----------------------------------------------------------------------------------- keys ---

TEST(ChunkKeyTest, IsSha256OfTheDocumentedFraming) {
    // Expected values from Python's hashlib over the framing of docs/STORE.md.
    const std::vector<int32_t> tokens = {1, 2, 3, -1, 128000};
    EXPECT_EQ(make_chunk_key("llama-3.2-1b:q8", tokens).hex(),
              "51fdfb40af2b43cd07dfcf158d0918d56a0daa86189ba947108b6333d40a913c");
    const std::vector<int32_t> seven = {7};
    EXPECT_EQ(make_chunk_key("", seven).hex(),
              "c98f35efb0a6f27b354ae0d5d0ca3788dd37c2e7a8506f46a8292ad8e9419264");
}

TEST(ChunkKeyTest, DependsOnFingerprintAndEveryToken) {
    std::vector<int32_t> tokens = {10, 20, 30};
    const ChunkKey base = make_chunk_key("m", tokens);
    EXPECT_EQ(base.tokens, tokens);
    EXPECT_EQ(base.model_fingerprint, "m");
    EXPECT_NE(make_chunk_key("n", tokens).digest, base.digest);
    for (size_t i = 0; i < tokens.size(); ++i) {
        std::vector<int32_t> changed = tokens;
        changed[i] ^= 1;
        EXPECT_NE(make_chunk_key("m", changed).digest, base.digest);
    }
    EXPECT_NE(make_chunk_key("m", std::span(tokens).first(2)).digest, base.digest);
    EXPECT_EQ(make_chunk_key("m", tokens).digest, base.digest);
}

// ----------------------------------------------------------------------------- round trip ---

TEST_F(ChunkStoreTest, RoundTripF32WithSectionsFromDiskAndMemory) {
    OwnedChunk owned = make_chunk(kSmallF32, 5, 1);
    const ChunkKey key = make_chunk_key("model-a", owned.tokens);
    ChunkStore store = open_store();
    EXPECT_FALSE(store.get(key).has_value());
    ASSERT_TRUE(store.put(key, owned.chunk).ok());
    EXPECT_TRUE(fs::exists(store.path_of(key)));

    std::optional<ChunkView> view = store.get(key);  // mapped from disk
    ASSERT_TRUE(view.has_value());
    std::string why;
    EXPECT_TRUE(view_matches(*view, owned, &why)) << why;
    EXPECT_EQ(view->token_count(), 5u);
    EXPECT_EQ(view->model_fingerprint(), "model-a");
    EXPECT_EQ(view->keys(0).as_f32().size(), 5u * 4 * 8);
    EXPECT_TRUE(view->keys(0).as_bf16_bits().empty());
    EXPECT_EQ(view->find_section(1, "no_such_section"), nullptr);
    EXPECT_EQ(view->find_section(2, "key_scales")->element_count(), 20u);
    for (uint32_t l = 0; l < 3; ++l) {
        for (const SectionView& section : view->sections(l)) {
            EXPECT_EQ(reinterpret_cast<uintptr_t>(section.bytes.data()) % 64, 0u) << section.name;
        }
    }

    for (uint32_t l = 0; l < 3; ++l) EXPECT_TRUE(view->will_need(l)) << "layer " << l;

    std::optional<ChunkView> again = store.get(key);  // from the LRU: the same mapping
    ASSERT_TRUE(again.has_value());
    EXPECT_EQ(again->keys(1).bytes.data(), view->keys(1).bytes.data());
    ChunkStoreStats stats = store.stats();
    EXPECT_EQ(stats.puts, 1u);
    EXPECT_EQ(stats.misses, 1u);
    EXPECT_EQ(stats.disk_hits, 1u);
    EXPECT_EQ(stats.memory_hits, 1u);
    EXPECT_EQ(stats.bytes_written, view->file_bytes());
    EXPECT_EQ(stats.cache_bytes, view->file_bytes());
    EXPECT_TRUE(warnings_.empty());

    // Another store on the same directory (another process, later) reads it too.
    ChunkStore reopened = open_store();
    std::optional<ChunkView> from_disk = reopened.get(key);
    ASSERT_TRUE(from_disk.has_value());
    EXPECT_TRUE(view_matches(*from_disk, owned, &why)) << why;
}

TEST_F(ChunkStoreTest, RoundTripBf16WithoutExtraSectionsOrSync) {
    OwnedChunk owned = make_chunk(kSmallBf16, 17, 2, /*with_sections=*/false);
    const ChunkKey key = make_chunk_key("model-b", owned.tokens);
    ChunkStoreOptions o = options();
    o.sync_writes = false;
    o.verify_payload = false;
    ChunkStore store = open_store(o);
    ASSERT_TRUE(store.put(key, owned.chunk).ok());
    store.clear_memory_cache();
    std::optional<ChunkView> view = store.get(key);
    ASSERT_TRUE(view.has_value());
    std::string why;
    EXPECT_TRUE(view_matches(*view, owned, &why)) << why;
    EXPECT_EQ(view->values(1).as_bf16_bits().size(), 17u * 2 * 64);
    EXPECT_TRUE(view->values(1).as_f32().empty());
    EXPECT_EQ(view->sections(0).size(), 2u);
    EXPECT_TRUE(view->will_need(1));
}

// Larger than several 4 MiB write blocks, and a header larger than one block (tens of
// thousands of sections): every path of the block writer.
TEST_F(ChunkStoreTest, RoundTripOfChunksLargerThanAWriteBlock) {
    OwnedChunk big = make_chunk({4, 8, 128, DType::f32}, 600, 12, /*with_sections=*/false);
    const ChunkKey big_key = make_chunk_key("m", big.tokens);

    OwnedChunk many = make_chunk({2, 1, 4, DType::bf16}, 3, 13, /*with_sections=*/false);
    for (uint32_t l = 0; l < 2; ++l) {
        for (int s = 0; s < 24000; ++s) {
            many.buffers.push_back(pattern_bytes(5, 100000 * l + s));
            std::string name = "s";  // not "s" + ...: GCC 12 -Wrestrict false positive
            name += std::to_string(s);
            many.chunk.layers[l].extra_sections.push_back(
                {name, DType::u8, {5}, many.buffers.back()});
        }
    }
    const ChunkKey many_key = make_chunk_key("m", many.tokens);

    ChunkStore store = open_store();
    ASSERT_TRUE(store.put(big_key, big.chunk).ok());
    ASSERT_TRUE(store.put(many_key, many.chunk).ok());
    store.clear_memory_cache();
    std::string why;
    std::optional<ChunkView> view = store.get(big_key);
    ASSERT_TRUE(view.has_value());
    EXPECT_GT(view->file_bytes(), 4 * (size_t{4} << 20));
    EXPECT_TRUE(view_matches(*view, big, &why)) << why;
    view = store.get(many_key);
    ASSERT_TRUE(view.has_value());
    EXPECT_GT(load_field<uint32_t>(read_file(store.path_of(many_key)), format::field::header_bytes),
              uint32_t{4} << 20);
    EXPECT_TRUE(view_matches(*view, many, &why)) << why;
    EXPECT_TRUE(warnings_.empty());
}

TEST_F(ChunkStoreTest, ViewOutlivesTheStoreAndEviction) {
    OwnedChunk owned = make_chunk(kSmallF32, 5, 3);
    const ChunkKey key = make_chunk_key("m", owned.tokens);
    std::optional<ChunkView> view;
    {
        ChunkStore store = open_store();
        ASSERT_TRUE(store.put(key, owned.chunk).ok());
        view = store.get(key);
        ASSERT_TRUE(view.has_value());
        store.clear_memory_cache();
        ASSERT_TRUE(store.erase(key).ok());  // the file is gone, the mapping is not
        EXPECT_FALSE(store.get(key).has_value());
    }
    EXPECT_TRUE(view_matches(*view, owned));
}

TEST_F(ChunkStoreTest, PutOfAStoredChunkIsSkipped) {
    OwnedChunk owned = make_chunk(kSmallF32, 5, 4);
    const ChunkKey key = make_chunk_key("m", owned.tokens);
    ChunkStore store = open_store();
    ASSERT_TRUE(store.put(key, owned.chunk).ok());
    ASSERT_TRUE(store.put(key, owned.chunk).ok());  // on disk, not in memory
    ASSERT_TRUE(store.get(key).has_value());
    ASSERT_TRUE(store.put(key, owned.chunk).ok());  // in memory
    const ChunkStoreStats stats = store.stats();
    EXPECT_EQ(stats.puts, 1u);
    EXPECT_EQ(stats.puts_skipped, 2u);
}

TEST_F(ChunkStoreTest, PutRejectsChunksThatDoNotFitTheirLayout) {
    ChunkStore store = open_store();
    auto expect_invalid = [&](const OwnedChunk& owned, const std::string& text) {
        const ChunkKey key = make_chunk_key("m", owned.tokens);
        Status status = store.put(key, owned.chunk);
        EXPECT_EQ(status.code(), StatusCode::invalid_argument) << text;
        EXPECT_NE(status.message().find(text), std::string::npos) << status.to_string();
        EXPECT_FALSE(fs::exists(store.path_of(key)));
    };
    OwnedChunk owned = make_chunk(kSmallF32, 5, 5);
    owned.chunk.layers[1].keys = owned.chunk.layers[1].keys.first(8);
    expect_invalid(owned, "layer 1 K: 8 bytes given");

    owned = make_chunk(kSmallF32, 5, 5);
    owned.chunk.layers.pop_back();
    expect_invalid(owned, "layout says 3 layers, 2 given");

    owned = make_chunk(kSmallF32, 5, 5);
    owned.chunk.layers[0].extra_sections[0].name = "k";
    expect_invalid(owned, "reserved");

    owned = make_chunk(kSmallF32, 5, 5);
    owned.chunk.layers[0].extra_sections[1].name = owned.chunk.layers[0].extra_sections[0].name;
    expect_invalid(owned, "used twice");

    owned = make_chunk(kSmallF32, 5, 5);
    owned.chunk.layers[2].extra_sections[0].name = std::string(32, 'x');
    expect_invalid(owned, "name must be");

    owned = make_chunk(kSmallF32, 5, 5);
    owned.chunk.layers[0].extra_sections[2].shape = {5, 4, 1, 1, 1};
    expect_invalid(owned, "rank 5");

    owned = make_chunk(kSmallF32, 5, 5);
    owned.chunk.layout.kv_dtype = DType::i8;
    expect_invalid(owned, "f32 or bf16");

    owned = make_chunk(kSmallF32, 5, 5);
    owned.tokens.clear();
    expect_invalid(owned, "at least one token");
}

// ---------------------------------------------------------------------------------- LRU ------

TEST_F(ChunkStoreTest, LruIsBoundedByBytesAndEvictsTheLeastRecentlyUsed) {
    std::vector<OwnedChunk> chunks;
    std::vector<ChunkKey> keys;
    for (uint64_t i = 0; i < 4; ++i) {
        chunks.push_back(make_chunk(kSmallF32, 5, 10 + i));
        keys.push_back(make_chunk_key("m", chunks.back().tokens));
    }
    uint64_t file_bytes;
    {
        ChunkStore probe = open_store();
        ASSERT_TRUE(probe.put(keys[0], chunks[0].chunk).ok());
        file_bytes = probe.get(keys[0])->file_bytes();  // every chunk here has the same size
    }
    ChunkStoreOptions o = options();
    o.memory_cache_bytes = file_bytes * 5 / 2;  // room for two
    ChunkStore store = open_store(o);
    for (size_t i = 1; i < 4; ++i) ASSERT_TRUE(store.put(keys[i], chunks[i].chunk).ok());

    std::optional<ChunkView> held = store.get(keys[0]);
    ASSERT_TRUE(store.get(keys[1]).has_value());
    ASSERT_TRUE(store.get(keys[0]).has_value());  // 0 is now more recent than 1
    ASSERT_TRUE(store.get(keys[2]).has_value());  // evicts 1
    ChunkStoreStats stats = store.stats();
    EXPECT_EQ(stats.evictions, 1u);
    EXPECT_EQ(stats.cache_entries, 2u);
    EXPECT_EQ(stats.cache_bytes, 2 * file_bytes);
    EXPECT_LE(stats.cache_bytes, o.memory_cache_bytes);
    EXPECT_EQ(stats.disk_hits, 3u);
    EXPECT_EQ(stats.memory_hits, 1u);

    ASSERT_TRUE(store.get(keys[0]).has_value());  // still cached
    EXPECT_EQ(store.stats().memory_hits, 2u);
    ASSERT_TRUE(store.get(keys[1]).has_value());  // was evicted: from disk, evicts 2
    EXPECT_EQ(store.stats().disk_hits, 4u);
    ASSERT_TRUE(store.get(keys[3]).has_value());  // evicts 0 while `held` still uses it
    EXPECT_EQ(store.stats().evictions, 3u);
    EXPECT_TRUE(view_matches(*held, chunks[0]));

    // A chunk larger than the whole cache is served but not kept.
    ChunkStoreOptions tiny = options();
    tiny.memory_cache_bytes = file_bytes - 1;
    ChunkStore small = open_store(tiny);
    ASSERT_TRUE(small.get(keys[0]).has_value());
    ASSERT_TRUE(small.get(keys[0]).has_value());
    EXPECT_EQ(small.stats().disk_hits, 2u);
    EXPECT_EQ(small.stats().cache_entries, 0u);
}

// The disk limit (a local cache tier's bound): past it, put() removes the chunk files used
// least recently -- by modification time, which every hit refreshes, from memory or from disk.
TEST_F(ChunkStoreTest, DiskLimitRemovesTheLeastRecentlyUsedFiles) {
    std::vector<OwnedChunk> chunks;
    std::vector<ChunkKey> keys;
    for (uint64_t i = 0; i < 5; ++i) {
        chunks.push_back(make_chunk(kSmallF32, 5, 20 + i));
        keys.push_back(make_chunk_key("m", chunks.back().tokens));
    }
    ChunkStoreOptions o = options();
    ChunkStore store = open_store(o);
    for (size_t i = 0; i < 3; ++i) ASSERT_TRUE(store.put(keys[i], chunks[i].chunk).ok());
    const uint64_t file_bytes = fs::file_size(store.path_of(keys[0]));  // every chunk here has the same size
    // Distinct ages, 0 the oldest, whatever the clock's resolution.
    const auto long_ago = fs::file_time_type::clock::now() - std::chrono::hours(3);
    for (size_t i = 0; i < 3; ++i) fs::last_write_time(store.path_of(keys[i]), long_ago + std::chrono::minutes(i));

    o.disk_limit_bytes = 3 * file_bytes + file_bytes / 2;  // room for three
    ChunkStore limited = open_store(o);
    ASSERT_TRUE(limited.get(keys[0]).has_value());  // from disk: 0 is now the most recent
    ASSERT_TRUE(limited.get(keys[0]).has_value());  // and from memory
    EXPECT_EQ(limited.stats().memory_hits, 1u);
    ASSERT_TRUE(limited.put(keys[3], chunks[3].chunk).ok());  // four files: 1, the oldest, goes
    EXPECT_TRUE(fs::exists(limited.path_of(keys[0])));
    EXPECT_FALSE(fs::exists(limited.path_of(keys[1])));
    EXPECT_TRUE(fs::exists(limited.path_of(keys[2])));
    EXPECT_TRUE(fs::exists(limited.path_of(keys[3])));
    EXPECT_EQ(limited.stats().disk_evictions, 1u);
    EXPECT_EQ(limited.stats().disk_bytes, 3 * file_bytes);
    EXPECT_FALSE(limited.get(keys[1]).has_value());  // a miss, not an error
    EXPECT_TRUE(warnings_.empty());

    // A memory hit refreshes the file too.
    ASSERT_TRUE(limited.get(keys[2]).has_value());           // from disk, now in memory
    std::optional<ChunkView> held = limited.get(keys[0]);  // 0's bytes, kept past its removal
    ASSERT_TRUE(held.has_value());
    fs::last_write_time(limited.path_of(keys[0]), long_ago + std::chrono::minutes(10));
    fs::last_write_time(limited.path_of(keys[3]), long_ago + std::chrono::minutes(11));
    fs::last_write_time(limited.path_of(keys[2]), long_ago + std::chrono::minutes(1));  // the oldest...
    ASSERT_TRUE(limited.get(keys[2]).has_value());  // ...until this memory hit
    EXPECT_EQ(limited.stats().memory_hits, 3u);
    ASSERT_TRUE(limited.put(keys[4], chunks[4].chunk).ok());  // 0 is the oldest now: it goes
    EXPECT_FALSE(fs::exists(limited.path_of(keys[0])));
    EXPECT_TRUE(fs::exists(limited.path_of(keys[2])));
    EXPECT_TRUE(fs::exists(limited.path_of(keys[3])));
    EXPECT_TRUE(fs::exists(limited.path_of(keys[4])));
    EXPECT_EQ(limited.stats().disk_evictions, 2u);
    EXPECT_TRUE(view_matches(*held, chunks[0]));  // a view outlives its file's removal

    // A chunk larger than the limit is kept alone: it is the one just written.
    ChunkStoreOptions tiny = options();
    tiny.disk_limit_bytes = file_bytes / 2;
    ChunkStore small = open_store(tiny);
    ASSERT_TRUE(small.put(keys[1], chunks[1].chunk).ok());
    EXPECT_TRUE(fs::exists(small.path_of(keys[1])));
    EXPECT_FALSE(fs::exists(small.path_of(keys[2])));
    EXPECT_FALSE(fs::exists(small.path_of(keys[3])));
    EXPECT_FALSE(fs::exists(small.path_of(keys[4])));
    EXPECT_EQ(small.stats().disk_bytes, file_bytes);
    ASSERT_TRUE(small.get(keys[1]).has_value());
}

// --------------------------------------------------------------------- damaged files ---------

TEST_F(ChunkStoreTest, FlippedPayloadByteIsAMiss) {
    expect_damage_is_a_miss([](std::vector<std::byte>& f) { f[f.size() - 3] ^= std::byte{0x10}; },
                            StatusCode::corrupt, "payload checksum mismatch");
}

TEST_F(ChunkStoreTest, FlippedPaddingByteIsAMiss) {
    // The zero padding between sections is covered by the payload checksum too. Layer 0 of
    // kSmallF32 × 5 tokens: K and V 640 B each, then keys_i8 (160 B) padded to 192 B.
    expect_damage_is_a_miss(
        [](std::vector<std::byte>& f) {
            const uint32_t header = load_field<uint32_t>(f, format::field::header_bytes);
            f[header + 640 + 640 + 160 + 10] ^= std::byte{1};
        },
        StatusCode::corrupt, "payload checksum mismatch");
}

TEST_F(ChunkStoreTest, FlippedHeaderByteIsAMiss) {
    expect_damage_is_a_miss(
        [](std::vector<std::byte>& f) { f[format::kFixedHeaderBytes + 2] ^= std::byte{4}; },
        StatusCode::corrupt, "header checksum mismatch");
}

TEST_F(ChunkStoreTest, TruncatedFileIsAMiss) {
    expect_damage_is_a_miss([](std::vector<std::byte>& f) { f.resize(f.size() / 2); },
                            StatusCode::corrupt, "truncated or extended");
}

TEST_F(ChunkStoreTest, FileShorterThanItsHeaderIsAMiss) {
    expect_damage_is_a_miss([](std::vector<std::byte>& f) { f.resize(100); },
                            StatusCode::corrupt, "truncated: 100 bytes");
}

TEST_F(ChunkStoreTest, EmptyFileIsAMiss) {
    expect_damage_is_a_miss([](std::vector<std::byte>& f) { f.clear(); }, StatusCode::corrupt,
                            "truncated: 0 bytes");
}

TEST_F(ChunkStoreTest, AppendedBytesAreAMiss) {
    expect_damage_is_a_miss([](std::vector<std::byte>& f) { f.resize(f.size() + 64); },
                            StatusCode::corrupt, "truncated or extended");
}

TEST_F(ChunkStoreTest, WrongMagicIsAMiss) {
    expect_damage_is_a_miss([](std::vector<std::byte>& f) { f[0] = std::byte{'X'}; },
                            StatusCode::corrupt, "bad magic");
}

TEST_F(ChunkStoreTest, OtherFormatVersionIsAMismatch) {
    expect_damage_is_a_miss(
        [](std::vector<std::byte>& f) { store_field<uint32_t>(f, format::field::version, 2); },
        StatusCode::mismatch, "format version 2");
}

TEST_F(ChunkStoreTest, HeaderSizePastTheEndIsAMiss) {
    expect_damage_is_a_miss(
        [](std::vector<std::byte>& f) {
            store_field<uint32_t>(f, format::field::header_bytes,
                                  static_cast<uint32_t>(f.size() + 64));
        },
        StatusCode::corrupt, "does not fit");
}

TEST_F(ChunkStoreTest, SectionPastTheEndIsAMissEvenWithAValidHeaderChecksum) {
    expect_damage_is_a_miss(
        [](std::vector<std::byte>& f) {
            const uint32_t header = load_field<uint32_t>(f, format::field::header_bytes);
            // The entry of section 0 follows tokens (5 × 4 B) and fingerprint ("model-a").
            const size_t entry0 = (format::kFixedHeaderBytes + 20 + 7 + 7) / 8 * 8;
            store_field<uint64_t>(f, entry0 + format::entry::offset,
                                  (f.size() + 4096) / 64 * 64);
            reseal_header(f, header);
        },
        StatusCode::corrupt, "points past");
}

TEST_F(ChunkStoreTest, SectionRunningPastTheEndIsAMissEvenWithAValidHeaderChecksum) {
    // The last section starts inside the file but its (shape-consistent) size runs past it.
    expect_damage_is_a_miss(
        [](std::vector<std::byte>& f) {
            const uint32_t header = load_field<uint32_t>(f, format::field::header_bytes);
            const uint32_t sections = load_field<uint32_t>(f, format::field::section_count);
            const size_t entry0 = (format::kFixedHeaderBytes + 20 + 7 + 7) / 8 * 8;
            const size_t last = entry0 + (sections - 1) * format::kSectionEntryBytes;
            const uint64_t rows = load_field<uint64_t>(f, last + format::entry::shape);
            const uint64_t bytes = load_field<uint64_t>(f, last + format::entry::bytes);
            store_field<uint64_t>(f, last + format::entry::shape, rows * 1000);
            store_field<uint64_t>(f, last + format::entry::bytes, bytes * 1000);
            reseal_header(f, header);
        },
        StatusCode::corrupt, "points past");
}

TEST_F(ChunkStoreTest, HugeTokenCountIsAMissEvenWithAValidHeaderChecksum) {
    expect_damage_is_a_miss(
        [](std::vector<std::byte>& f) {
            const uint32_t header = load_field<uint32_t>(f, format::field::header_bytes);
            store_field<uint32_t>(f, format::field::token_count, 0xfffffff0u);
            reseal_header(f, header);
        },
        StatusCode::corrupt, "does not match its counts");
}

TEST_F(ChunkStoreTest, SectionSizeDisagreeingWithShapeIsAMiss) {
    expect_damage_is_a_miss(
        [](std::vector<std::byte>& f) {
            const uint32_t header = load_field<uint32_t>(f, format::field::header_bytes);
            const size_t entry0 = (format::kFixedHeaderBytes + 20 + 7 + 7) / 8 * 8;
            store_field<uint64_t>(f, entry0 + format::entry::shape, 1u << 30);
            reseal_header(f, header);
        },
        StatusCode::corrupt, "size does not match its shape");
}

// Every single-bit flip of the header, with the header checksum recomputed (as a buggy or
// hostile writer would leave it), must give a miss or a structurally sound view: K and V of
// the layout's shape, every section inside the file. Most flips must be caught. Under ASan
// this also shows that no offset is followed before it is checked.
TEST_F(ChunkStoreTest, EveryResealedHeaderBitFlipIsAMissOrSound) {
    OwnedChunk owned = make_chunk(kSmallF32, 5, 6);
    const ChunkKey key = make_chunk_key("model-a", owned.tokens);
    ChunkStore store = open_store();
    ASSERT_TRUE(store.put(key, owned.chunk).ok());
    const std::vector<std::byte> original = read_file(store.path_of(key));
    const uint32_t header = load_field<uint32_t>(original, format::field::header_bytes);
    size_t flips = 0, misses = 0;
    for (size_t byte = 0; byte < header; ++byte) {
        if (byte >= format::field::header_checksum && byte < format::field::header_checksum + 8) {
            continue;
        }
        for (int bit = 0; bit < 8; ++bit) {
            std::vector<std::byte> file = original;
            file[byte] ^= std::byte(1u << bit);
            reseal_header(file, header);
            write_file(store.path_of(key), file);
            store.clear_memory_cache();
            ++flips;
            std::optional<ChunkView> view = store.get(key);
            if (!view) {
                ++misses;
                continue;
            }
            const std::byte* base = reinterpret_cast<const std::byte*>(view->tokens().data()) -
                                    format::kFixedHeaderBytes;
            const std::byte* end = base + view->file_bytes();
            EXPECT_EQ(view->file_bytes(), original.size());
            EXPECT_TRUE(view->layout() == kSmallF32) << "byte " << byte << " bit " << bit;
            for (uint32_t l = 0; l < view->layout().layers; ++l) {
                EXPECT_EQ(view->keys(l).bytes.size(), owned.chunk.layers[l].keys.size());
                EXPECT_EQ(view->values(l).bytes.size(), owned.chunk.layers[l].values.size());
                for (const SectionView& section : view->sections(l)) {
                    EXPECT_TRUE(section.bytes.data() >= base + format::kFixedHeaderBytes &&
                                section.bytes.data() + section.bytes.size() <= end)
                        << "byte " << byte << " bit " << bit;
                }
            }
        }
    }
    // What passes: flips in reserved or padding bytes, and flips that keep the file
    // self-consistent (i8 <-> u8 dtype), which only a writer can prevent.
    EXPECT_GT(misses, flips * 3 / 4) << misses << " of " << flips;
}

// ------------------------------------------------------------- mismatched (sound) files ------

TEST_F(ChunkStoreTest, WrongFingerprintUnderTheSameDigestIsAMiss) {
    OwnedChunk owned = make_chunk(kSmallF32, 5, 7);
    const ChunkDigest forced = make_chunk_key("x", owned.tokens).digest;
    const ChunkKey model_a = make_chunk_key_with_digest_for_testing("model-a", owned.tokens, forced);
    const ChunkKey model_b = make_chunk_key_with_digest_for_testing("model-b", owned.tokens, forced);
    ChunkStore store = open_store();
    ASSERT_TRUE(store.put(model_a, owned.chunk).ok());
    ASSERT_TRUE(store.get(model_a).has_value());
    EXPECT_FALSE(store.get(model_b).has_value());  // neither from the LRU
    store.clear_memory_cache();
    EXPECT_FALSE(store.get(model_b).has_value());  // nor from disk
    ASSERT_EQ(warnings_.size(), 2u);
    EXPECT_EQ(warnings_[1].code(), StatusCode::mismatch);
    EXPECT_NE(warnings_[1].message().find("another model fingerprint"), std::string::npos);
    EXPECT_EQ(store.stats().mismatched, 2u);
    EXPECT_TRUE(store.get(model_a).has_value());  // a sound file is not removed
}

TEST_F(ChunkStoreTest, TokenMismatchFromAForcedHashCollisionIsAMiss) {
    OwnedChunk owned = make_chunk(kSmallF32, 5, 8);
    std::vector<int32_t> other_tokens = owned.tokens;
    other_tokens.back() += 1;
    const ChunkDigest forced = make_chunk_key("m", owned.tokens).digest;
    const ChunkKey key = make_chunk_key("m", owned.tokens);
    const ChunkKey colliding = make_chunk_key_with_digest_for_testing("m", other_tokens, forced);
    ChunkStore store = open_store();
    ASSERT_TRUE(store.put(key, owned.chunk).ok());
    store.clear_memory_cache();
    EXPECT_FALSE(store.get(colliding).has_value());
    ASSERT_EQ(warnings_.size(), 1u);
    EXPECT_EQ(warnings_[0].code(), StatusCode::mismatch);
    EXPECT_NE(warnings_[0].message().find("hash collision"), std::string::npos);

    // The colliding chunk then takes the file over; the first one becomes a miss in its turn.
    OwnedChunk other = make_chunk(kSmallF32, 5, 9);
    other.tokens = other_tokens;
    ASSERT_TRUE(store.put(colliding, other.chunk).ok());
    std::optional<ChunkView> view = store.get(colliding);
    ASSERT_TRUE(view.has_value());
    EXPECT_TRUE(view_matches(*view, other));
    store.clear_memory_cache();
    EXPECT_FALSE(store.get(key).has_value());
}

TEST_F(ChunkStoreTest, FileUnderAnotherKeysNameIsAMiss) {
    OwnedChunk owned = make_chunk(kSmallF32, 5, 10);
    const ChunkKey key = make_chunk_key("m", owned.tokens);
    ChunkStore store = open_store();
    ASSERT_TRUE(store.put(key, owned.chunk).ok());
    ChunkKey renamed = key;
    renamed.digest[0] ^= 1;  // same contents, other name: the header's digest disagrees
    fs::copy_file(store.path_of(key), store.path_of(renamed));
    EXPECT_FALSE(store.get(renamed).has_value());
    ASSERT_EQ(warnings_.size(), 1u);
    EXPECT_NE(warnings_[0].message().find("digest differs"), std::string::npos);
}

// ------------------------------------------------------------ crashed writers, directories ----

TEST_F(ChunkStoreTest, CrashedWritersTemporaryFilesAreIgnoredAndCleaned) {
    OwnedChunk owned = make_chunk(kSmallF32, 5, 11);
    const ChunkKey key = make_chunk_key("m", owned.tokens);
    fs::create_directories(directory_);
    // A writer killed mid-write leaves a partial temporary file under a name get() never reads.
    const fs::path stale = directory_ / (".tmp-" + key.hex() + "-999999-1");
    const fs::path fresh = directory_ / (".tmp-" + key.hex() + "-999999-2");
    {
        ChunkStore writer = open_store();
        ASSERT_TRUE(writer.put(key, owned.chunk).ok());
        std::vector<std::byte> partial = read_file(writer.path_of(key));
        partial.resize(partial.size() / 3);
        write_file(stale, partial);
        write_file(fresh, partial);
        ASSERT_TRUE(writer.erase(key).ok());
    }
    const struct timespec old_times[2] = {{0, UTIME_OMIT}, {std::time(nullptr) - 3600, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, stale.c_str(), old_times, 0), 0);

    ChunkStore store = open_store();  // removes leftovers older than stale_temp_age (10 min)
    EXPECT_FALSE(fs::exists(stale));
    EXPECT_TRUE(fs::exists(fresh));  // may belong to a live writer in another process
    EXPECT_FALSE(store.get(key).has_value());
    EXPECT_TRUE(warnings_.empty());
    ASSERT_TRUE(store.put(key, owned.chunk).ok());
    std::optional<ChunkView> view = store.get(key);
    ASSERT_TRUE(view.has_value());
    EXPECT_TRUE(view_matches(*view, owned));

    ChunkStoreOptions impatient = options();
    impatient.stale_temp_age = std::chrono::seconds(0);
    ChunkStore cleaner = open_store(impatient);
    EXPECT_FALSE(fs::exists(fresh));
    for (const auto& entry : fs::directory_iterator(directory_)) {
        EXPECT_FALSE(entry.path().filename().string().starts_with(".tmp-")) << entry.path();
    }
}

// A writer process killed at a random point of its puts: readers see the old whole file or
// nothing, never a part, and its temporary file is cleaned once stale.
TEST_F(ChunkStoreTest, WriterKilledMidPutLeavesNoBadChunk) {
    OwnedChunk big = make_chunk({4, 8, 128, DType::f32}, 400, 14, /*with_sections=*/false);
    const ChunkKey key = make_chunk_key("m", big.tokens);
    fs::create_directories(directory_);
    for (int attempt = 0; attempt < 3; ++attempt) {
        const pid_t child = ::fork();
        ASSERT_GE(child, 0);
        if (child == 0) {
            ChunkStoreOptions o;
            o.sync_writes = false;
            Result<ChunkStore> store = ChunkStore::open(directory_, o);
            if (!store.ok()) ::_exit(1);
            for (;;) {  // rewrite the chunk until killed
                if (!store.value().erase(key).ok() || !store.value().put(key, big.chunk).ok()) {
                    ::_exit(2);
                }
            }
        }
        ::usleep(30000 + 20000 * attempt);
        ASSERT_EQ(::kill(child, SIGKILL), 0);
        int wait_status = 0;
        ASSERT_EQ(::waitpid(child, &wait_status, 0), child);
        ASSERT_TRUE(WIFSIGNALED(wait_status)) << "the writer stopped by itself: "
                                              << WEXITSTATUS(wait_status);

        ChunkStore store = open_store();
        std::optional<ChunkView> view = store.get(key);
        if (view) {
            std::string why;
            EXPECT_TRUE(view_matches(*view, big, &why)) << why;
        }
        EXPECT_TRUE(warnings_.empty()) << warnings_.front().to_string();
    }
    ChunkStoreOptions impatient = options();
    impatient.stale_temp_age = std::chrono::seconds(0);
    ChunkStore store = open_store(impatient);
    for (const auto& entry : fs::directory_iterator(directory_)) {
        EXPECT_FALSE(entry.path().filename().string().starts_with(".tmp-")) << entry.path();
    }
    ASSERT_TRUE(store.put(key, big.chunk).ok());
    std::optional<ChunkView> view = store.get(key);
    ASSERT_TRUE(view.has_value());
    EXPECT_TRUE(view_matches(*view, big));
}

TEST_F(ChunkStoreTest, NonWritableDirectoryGivesAClearError) {
    fs::create_directories(directory_);
    fs::permissions(root_, fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
    fs::permissions(directory_, fs::perms::owner_read | fs::perms::owner_exec |
                                    fs::perms::group_read | fs::perms::group_exec |
                                    fs::perms::others_read | fs::perms::others_exec);
    // Root ignores permission bits, so as root the check runs as user "nobody" in a child.
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(10);
        Result<ChunkStore> store = ChunkStore::open(directory_, {});
        if (store.ok()) ::_exit(11);
        const Status status = store.status();
        if (status.code() != StatusCode::not_writable) ::_exit(12);
        if (status.message().find("is not writable") == std::string::npos) ::_exit(13);
        if (status.message().find(directory_.string()) == std::string::npos) ::_exit(14);
        // Read-only access still works and refuses to put.
        ChunkStoreOptions read_only;
        read_only.read_only = true;
        Result<ChunkStore> reader = ChunkStore::open(directory_, read_only);
        if (!reader.ok()) ::_exit(15);
        const std::vector<int32_t> tokens = {1};
        if (reader.value().put(make_chunk_key("m", tokens), {}).code() != StatusCode::not_writable) {
            ::_exit(16);
        }
        ::_exit(0);
    }
    int wait_status = 0;
    ASSERT_EQ(::waitpid(child, &wait_status, 0), child);
    ASSERT_TRUE(WIFEXITED(wait_status));
    EXPECT_EQ(WEXITSTATUS(wait_status), 0) << "see the _exit codes in the child above";
}

TEST_F(ChunkStoreTest, DirectoryThatCannotBeCreatedGivesAClearError) {
    write_file(root_ / "a-file", pattern_bytes(4, 0));
    Result<ChunkStore> store = ChunkStore::open(root_ / "a-file" / "chunks", options());
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.status().code(), StatusCode::not_writable);
    EXPECT_NE(store.status().message().find("cannot create the store directory"),
              std::string::npos)
        << store.status().to_string();
}

TEST(ChunkStoreDirectoryTest, DefaultFollowsXdgThenHome) {
    const char* saved_xdg = std::getenv("XDG_CACHE_HOME");
    const char* saved_home = std::getenv("HOME");
    const std::string xdg = saved_xdg ? saved_xdg : "", home = saved_home ? saved_home : "";

    ::setenv("XDG_CACHE_HOME", "/var/cache/me", 1);
    ::setenv("HOME", "/home/me", 1);
    EXPECT_EQ(default_chunk_directory().value(), fs::path("/var/cache/me/kvfuse/chunks"));
    ::setenv("XDG_CACHE_HOME", "relative/ignored", 1);
    EXPECT_EQ(default_chunk_directory().value(), fs::path("/home/me/.cache/kvfuse/chunks"));
    ::unsetenv("XDG_CACHE_HOME");
    EXPECT_EQ(default_chunk_directory().value(), fs::path("/home/me/.cache/kvfuse/chunks"));
    ::unsetenv("HOME");
    EXPECT_EQ(default_chunk_directory().status().code(), StatusCode::invalid_argument);

    if (saved_xdg) ::setenv("XDG_CACHE_HOME", xdg.c_str(), 1);
    if (saved_home) ::setenv("HOME", home.c_str(), 1);
}

// ------------------------------------------------------------------------- concurrency ------

constexpr ChunkLayout kConcurrentLayout{4, 2, 64, DType::f32};
constexpr int kConcurrentChunks = 24;

OwnedChunk concurrent_chunk(int index) {
    return make_chunk(kConcurrentLayout, 24 + 8 * (index % 5), 1000 + index, index % 2 == 0);
}

// One process's share of the work: rounds over all chunks in its own order; every get must be a
// miss or exactly the chunk; a miss is followed by a put. Some processes also erase chunks so
// that files disappear and reappear under readers. Returns the number of bad reads.
int hammer_store(const fs::path& directory, int worker, int rounds,
                 const std::function<void()>& wait_for_all_rounds) {
    std::vector<OwnedChunk> chunks;
    std::vector<ChunkKey> keys;
    for (int i = 0; i < kConcurrentChunks; ++i) {
        chunks.push_back(concurrent_chunk(i));
        keys.push_back(make_chunk_key("concurrent-model", chunks.back().tokens));
    }
    int bad = 0;
    ChunkStoreOptions o;
    o.memory_cache_bytes = 64 << 10;  // small: most reads map the file again
    o.warning = [&bad](const Status&) { ++bad; };  // nothing may ever be damaged
    Result<ChunkStore> opened = ChunkStore::open(directory, o);
    if (!opened.ok()) return 1000;
    ChunkStore& store = opened.value();
    std::mt19937 random(static_cast<unsigned>(worker));
    std::vector<int> order(kConcurrentChunks);
    for (int i = 0; i < kConcurrentChunks; ++i) order[i] = i;
    for (int round = 0; round < rounds; ++round) {
        std::shuffle(order.begin(), order.end(), random);
        for (int i : order) {
            std::optional<ChunkView> view = store.get(keys[i]);
            if (view) {
                if (!view_matches(*view, chunks[i])) ++bad;
            } else if (!store.put(keys[i], chunks[i].chunk).ok()) {
                ++bad;
            }
            if (worker % 2 == 1 && random() % 8 == 0) {
                if (!store.erase(keys[order[random() % kConcurrentChunks]]).ok()) ++bad;
            }
        }
        store.clear_memory_cache();
    }
    // Once no process erases any more, leave every chunk present, as a program that needs them
    // all would.
    wait_for_all_rounds();
    for (int i = 0; i < kConcurrentChunks; ++i) {
        if (!store.get(keys[i]) && !store.put(keys[i], chunks[i].chunk).ok()) ++bad;
    }
    return bad;
}

TEST_F(ChunkStoreTest, SeveralProcessesWritingAndReadingLoseNothing) {
    constexpr int kProcesses = 4, kRounds = 12;
    fs::create_directories(directory_);
    // A barrier between the rounds (with erasing) and the final pass: each worker writes one
    // byte to `rounds_done` and then reads `all_done` until the parent closes it.
    int rounds_done[2], all_done[2];
    ASSERT_EQ(::pipe(rounds_done), 0);
    ASSERT_EQ(::pipe(all_done), 0);
    std::vector<pid_t> children;
    for (int worker = 0; worker < kProcesses; ++worker) {
        const pid_t child = ::fork();
        ASSERT_GE(child, 0);
        if (child == 0) {
            ::close(rounds_done[0]);
            ::close(all_done[1]);
            auto barrier = [&] {
                const char done = 1;
                char ignored;
                if (::write(rounds_done[1], &done, 1) != 1) ::_exit(101);
                while (::read(all_done[0], &ignored, 1) > 0) {
                }
            };
            ::_exit(std::min(hammer_store(directory_, worker, kRounds, barrier), 100));
        }
        children.push_back(child);
    }
    ::close(rounds_done[1]);
    ::close(all_done[0]);
    for (int worker = 0; worker < kProcesses; ++worker) {
        char done;
        ASSERT_EQ(::read(rounds_done[0], &done, 1), 1);
    }
    ::close(all_done[1]);
    ::close(rounds_done[0]);
    for (int worker = 0; worker < kProcesses; ++worker) {
        int wait_status = 0;
        ASSERT_EQ(::waitpid(children[worker], &wait_status, 0), children[worker]);
        ASSERT_TRUE(WIFEXITED(wait_status));
        EXPECT_EQ(WEXITSTATUS(wait_status), 0) << "bad reads or failed writes in worker " << worker;
    }
    ChunkStore store = open_store();
    for (int i = 0; i < kConcurrentChunks; ++i) {
        OwnedChunk expected = concurrent_chunk(i);
        std::optional<ChunkView> view = store.get(make_chunk_key("concurrent-model", expected.tokens));
        ASSERT_TRUE(view.has_value()) << "chunk " << i << " lost";
        std::string why;
        EXPECT_TRUE(view_matches(*view, expected, &why)) << "chunk " << i << ": " << why;
    }
    EXPECT_TRUE(warnings_.empty());
    for (const auto& entry : fs::directory_iterator(directory_)) {
        EXPECT_FALSE(entry.path().filename().string().starts_with(".tmp-")) << entry.path();
    }
}

TEST_F(ChunkStoreTest, ThreadsSharingOneStoreSeeWholeChunks) {
    ChunkStoreOptions o = options();
    o.memory_cache_bytes = 256 << 10;
    ChunkStore store = open_store(o);
    std::atomic<int> bad = 0;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937 random(static_cast<unsigned>(t));
            std::vector<OwnedChunk> chunks;
            for (int i = 0; i < 12; ++i) chunks.push_back(concurrent_chunk(i));
            for (int step = 0; step < 200; ++step) {
                const int i = static_cast<int>(random() % chunks.size());
                const ChunkKey key = make_chunk_key("threads", chunks[i].tokens);
                std::optional<ChunkView> view = store.get(key);
                if (view) {
                    if (!view_matches(*view, chunks[i])) ++bad;
                } else if (!store.put(key, chunks[i].chunk).ok()) {
                    ++bad;
                }
            }
        });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(bad.load(), 0);
    EXPECT_TRUE(warnings_.empty());
    EXPECT_LE(store.stats().cache_bytes, o.memory_cache_bytes);
}

// ------------------------------------------------------------- what is in a chunk's way ---

// A FIFO at a chunk's path would block open() forever: it is a miss at once, reported, removed.
TEST_F(ChunkStoreTest, FifoAtAChunkPathIsAMissNotAHang) {
    OwnedChunk owned = make_chunk(kSmallF32, 5, 7);
    const ChunkKey key = make_chunk_key("model-a", owned.tokens);
    ChunkStore store = open_store();
    ASSERT_EQ(::mkfifo(store.path_of(key).c_str(), 0600), 0);
    ::alarm(30);  // a hang kills the test binary instead of waiting for the ctest timeout
    EXPECT_FALSE(store.get(key).has_value());
    ::alarm(0);
    ASSERT_EQ(warnings_.size(), 1u);
    EXPECT_NE(warnings_[0].message().find("not a regular file (a FIFO)"), std::string::npos)
        << warnings_[0].to_string();
    EXPECT_FALSE(fs::exists(fs::symlink_status(store.path_of(key))));
    EXPECT_EQ(store.stats().repaired, 1u);
    // put() over a FIFO does not block either, and replaces it.
    ASSERT_EQ(::mkfifo(store.path_of(key).c_str(), 0600), 0);
    ::alarm(30);
    Status put = store.put(key, owned.chunk);
    ::alarm(0);
    ASSERT_TRUE(put.ok()) << put.to_string();
    std::optional<ChunkView> view = store.get(key);
    ASSERT_TRUE(view.has_value());
    EXPECT_TRUE(view_matches(*view, owned));
}

// A directory at a chunk's path: an empty one is removed (by get or put), a non-empty one is
// left and every attempt says so, instead of a silent recompute each run.
TEST_F(ChunkStoreTest, DirectoryAtAChunkPathIsRemovedOrReported) {
    OwnedChunk owned = make_chunk(kSmallF32, 5, 8);
    const ChunkKey key = make_chunk_key("model-a", owned.tokens);
    ChunkStore store = open_store();
    const fs::path path = store.path_of(key);
    fs::create_directory(path);
    EXPECT_FALSE(store.get(key).has_value());
    EXPECT_FALSE(fs::exists(path)) << "an empty directory in the way is removed";
    EXPECT_EQ(store.stats().repaired, 1u);

    fs::create_directory(path);
    write_file(path / "someone's file", std::as_bytes(std::span("data")));
    warnings_.clear();
    EXPECT_FALSE(store.get(key).has_value());
    ASSERT_EQ(warnings_.size(), 2u);
    EXPECT_NE(warnings_[0].message().find("not a regular file (a directory)"), std::string::npos)
        << warnings_[0].to_string();
    EXPECT_NE(warnings_[1].message().find("cannot remove the unusable directory"), std::string::npos)
        << warnings_[1].to_string();
    const Status put = store.put(key, owned.chunk);
    EXPECT_EQ(put.code(), StatusCode::io_error);
    EXPECT_NE(put.message().find(path.string() + ": a directory is in the way"), std::string::npos)
        << put.to_string();
    EXPECT_TRUE(fs::exists(path / "someone's file")) << "a non-empty directory is never deleted";
    EXPECT_EQ(std::distance(fs::directory_iterator(directory_), fs::directory_iterator()), 1)
        << "a failed put leaves nothing behind";

    // An empty directory is removed by put() itself.
    fs::remove(path / "someone's file");
    ASSERT_TRUE(store.put(key, owned.chunk).ok());
    std::optional<ChunkView> view = store.get(key);
    ASSERT_TRUE(view.has_value());
    EXPECT_TRUE(view_matches(*view, owned));
}

// A chunk file truncated in place while another process holds a view of it. Read into memory
// (the default), the view keeps its bytes and the process lives; the truncated file is a miss
// for the next reader, removed, and rewritten by the next put. Mapped (map_files), the same
// process dies of SIGBUS: the case the default exists for.
class TruncationUnderAReader : public ChunkStoreTest, public ::testing::WithParamInterface<bool> {};

TEST_P(TruncationUnderAReader, ReaderSurvivesUnlessMapped) {
    const bool mapped = GetParam();
    OwnedChunk owned = make_chunk(kSmallBf16, 200, 9);  // ~200 KiB: many pages past the cut
    const ChunkKey key = make_chunk_key("model-a", owned.tokens);
    {
        ChunkStore writer = open_store();
        ASSERT_TRUE(writer.put(key, owned.chunk).ok());
    }
    int ready[2], go[2];
    ASSERT_EQ(::pipe(ready), 0);
    ASSERT_EQ(::pipe(go), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ChunkStoreOptions o;
        o.map_files = mapped;
        Result<ChunkStore> store = ChunkStore::open(directory_, o);
        if (!store.ok()) ::_exit(4);
        std::optional<ChunkView> view = store.value().get(key);
        if (!view || !view_matches(*view, owned)) ::_exit(3);
        char byte = 'r';
        if (::write(ready[1], &byte, 1) != 1 || ::read(go[0], &byte, 1) != 1) ::_exit(5);
        ::_exit(view_matches(*view, owned) ? 0 : 2);
    }
    char byte = 0;
    ASSERT_EQ(::read(ready[0], &byte, 1), 1);
    const fs::path path = directory_ / (key.hex() + ".kvchunk");
    ASSERT_EQ(::truncate(path.c_str(), 64), 0);
    ASSERT_EQ(::write(go[1], &byte, 1), 1);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    for (int fd : {ready[0], ready[1], go[0], go[1]}) ::close(fd);
    if (mapped) {
        EXPECT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
            << "a mapped view read a truncated file without a fault: this test cannot see SIGBUS";
        EXPECT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << "the first read already failed";
    } else {
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
            << (WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                    : "exit status " + std::to_string(WEXITSTATUS(status)));
    }

    ChunkStore store = open_store();
    EXPECT_FALSE(store.get(key).has_value());
    ASSERT_EQ(warnings_.size(), 1u);
    EXPECT_NE(warnings_[0].message().find("truncated"), std::string::npos) << warnings_[0].to_string();
    EXPECT_FALSE(fs::exists(path)) << "the truncated file is removed";
    ASSERT_TRUE(store.put(key, owned.chunk).ok());
    std::optional<ChunkView> view = store.get(key);
    ASSERT_TRUE(view.has_value());
    EXPECT_TRUE(view_matches(*view, owned));
}

INSTANTIATE_TEST_SUITE_P(ReadOrMapped, TruncationUnderAReader, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                             return info.param ? std::string("Mapped") : std::string("Read");
                         });

// The mapped mode reads what the default reads.
TEST_F(ChunkStoreTest, MappedFilesRoundTrip) {
    OwnedChunk owned = make_chunk(kSmallF32, 9, 10);
    const ChunkKey key = make_chunk_key("model-a", owned.tokens);
    ChunkStoreOptions o = options();
    o.map_files = true;
    ChunkStore store = open_store(o);
    ASSERT_TRUE(store.put(key, owned.chunk).ok());
    store.clear_memory_cache();
    std::optional<ChunkView> view = store.get(key);
    ASSERT_TRUE(view.has_value());
    std::string why;
    EXPECT_TRUE(view_matches(*view, owned, &why)) << why;
    EXPECT_TRUE(view->will_need(2));
    EXPECT_TRUE(warnings_.empty());
}

}  // namespace
