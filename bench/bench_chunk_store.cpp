// The chunk store's cost of fetching and of storing one chunk, against the same bytes handled
// without the store, timed in the same iterations.
//   store/get_disk/<verify|noverify>[_mapped]: LRU miss: open + read into memory (the default;
//     _mapped: mmap, ChunkStoreOptions::map_files) + (checksum) + copying every K/V section out
//     (what the fusion code does with it); baseline: copying the same bytes from an in-memory
//     buffer. The file is in the page cache: this is the store's overhead, not the disk's.
//     Read against mapped, in one run, is what surviving a truncation under a reader costs.
//   store/get_memory: LRU hit + the same copy; baseline: the copy.
//   store/put/<sync|nosync>: erase + put (temp file, write, checksum, [fsync file+dir],
//     rename); baseline: write() of the same bytes to a file, no checksum, no fsync.
//   store/xxh3: the payload checksum alone; baseline: a copy of the same bytes.
// Shapes: Llama-3.2-1B-like (16 layers × 8 KV heads × 64, bf16) at 512 and 64 tokens.
// GB/s: chunk file bytes per second (median); x_baseline = baseline time / store time.
// The directory is $KVFUSE_BENCH_DIR or a fresh one under the temp directory.
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "store/chunk_store.h"

namespace {

namespace fs = std::filesystem;
using namespace kvfuse::store;

constexpr ChunkLayout kLlama1B{16, 8, 64, DType::bf16};

struct BenchChunk {
    std::vector<int32_t> tokens;
    std::vector<std::vector<std::byte>> buffers;
    StoredChunk chunk;
    uint64_t kv_bytes = 0;
};

BenchChunk make_bench_chunk(uint32_t tokens) {
    BenchChunk c;
    for (uint32_t t = 0; t < tokens; ++t) c.tokens.push_back(static_cast<int32_t>(t * 7 + 11));
    c.chunk.layout = kLlama1B;
    const size_t bytes = size_t{tokens} * kLlama1B.kv_heads * kLlama1B.head_dim * 2;
    std::mt19937_64 random(tokens);
    for (uint32_t l = 0; l < 2 * kLlama1B.layers; ++l) {
        std::vector<std::byte> buffer(bytes);
        for (std::byte& b : buffer) b = static_cast<std::byte>(random());
        c.buffers.push_back(std::move(buffer));
    }
    for (uint32_t l = 0; l < kLlama1B.layers; ++l) {
        c.chunk.layers.push_back({c.buffers[2 * l], c.buffers[2 * l + 1], {}});
    }
    c.kv_bytes = 2 * kLlama1B.layers * bytes;
    return c;
}

fs::path bench_directory() {
    static const fs::path directory = [] {
        if (const char* given = std::getenv("KVFUSE_BENCH_DIR")) return fs::path(given);
        std::string pattern = (fs::temp_directory_path() / "kvfuse-bench-store-XXXXXX").string();
        if (::mkdtemp(pattern.data()) == nullptr) std::abort();
        return fs::path(pattern);
    }();
    return directory;
}

ChunkStore open_or_die(ChunkStoreOptions options) {
    Result<ChunkStore> store = ChunkStore::open(bench_directory(), std::move(options));
    if (!store.ok()) {
        std::fprintf(stderr, "%s\n", store.status().to_string().c_str());
        std::abort();
    }
    return std::move(store).value();
}

// Copies every K and V section of a view out, as the fusion code reads them.
void copy_out(const ChunkView& view, std::byte* destination) {
    for (uint32_t l = 0; l < view.layout().layers; ++l) {
        for (const SectionView* section : {&view.keys(l), &view.values(l)}) {
            std::memcpy(destination, section->bytes.data(), section->bytes.size());
            destination += section->bytes.size();
        }
    }
}

void copy_baseline(const BenchChunk& c, std::byte* destination) {
    for (const std::vector<std::byte>& buffer : c.buffers) {
        std::memcpy(destination, buffer.data(), buffer.size());
        destination += buffer.size();
    }
}

void get_from_disk(benchmark::State& state, uint32_t tokens, bool verify, bool mapped) {
    BenchChunk c = make_bench_chunk(tokens);
    ChunkStoreOptions options;
    options.verify_payload = verify;
    options.map_files = mapped;
    ChunkStore store = open_or_die(options);
    const ChunkKey key = make_chunk_key("bench-model", c.tokens);
    if (!store.put(key, c.chunk).ok()) std::abort();
    std::vector<std::byte> destination(c.kv_bytes);
    uint64_t file_bytes = 0;
    kvfuse::bench::run_side_by_side(
        state,
        [&] {
            store.clear_memory_cache();
            std::optional<ChunkView> view = store.get(key);
            if (!view) std::abort();
            file_bytes = view->file_bytes();
            copy_out(*view, destination.data());
        },
        [&] { copy_baseline(c, destination.data()); }, double(c.kv_bytes), "GB/s", 1e9);
    state.counters["file_MiB"] = double(file_bytes) / (1 << 20);
}

void get_from_memory(benchmark::State& state, uint32_t tokens) {
    BenchChunk c = make_bench_chunk(tokens);
    ChunkStore store = open_or_die({});
    const ChunkKey key = make_chunk_key("bench-model", c.tokens);
    if (!store.put(key, c.chunk).ok() || !store.get(key)) std::abort();
    std::vector<std::byte> destination(c.kv_bytes);
    kvfuse::bench::run_side_by_side(
        state,
        [&] {
            std::optional<ChunkView> view = store.get(key);
            if (!view) std::abort();
            copy_out(*view, destination.data());
        },
        [&] { copy_baseline(c, destination.data()); }, double(c.kv_bytes), "GB/s", 1e9);
}

void put(benchmark::State& state, uint32_t tokens, bool sync) {
    BenchChunk c = make_bench_chunk(tokens);
    ChunkStoreOptions options;
    options.sync_writes = sync;
    ChunkStore store = open_or_die(options);
    const ChunkKey key = make_chunk_key("bench-model", c.tokens);
    const fs::path plain = bench_directory() / "plain-write-baseline";
    kvfuse::bench::run_side_by_side(
        state,
        [&] {
            if (!store.erase(key).ok() || !store.put(key, c.chunk).ok()) std::abort();
        },
        [&] {
            const int fd = ::open(plain.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            for (const std::vector<std::byte>& buffer : c.buffers) {
                if (::write(fd, buffer.data(), buffer.size()) != ssize_t(buffer.size())) std::abort();
            }
            ::close(fd);
        },
        double(c.kv_bytes), "GB/s", 1e9);
    fs::remove(plain);
}

void xxh3(benchmark::State& state, uint32_t tokens) {
    BenchChunk c = make_bench_chunk(tokens);
    std::vector<std::byte> all(c.kv_bytes), destination(c.kv_bytes);
    copy_baseline(c, all.data());
    uint64_t sink = 0;
    kvfuse::bench::run_side_by_side(
        state, [&] { sink += XXH3_64bits(all.data(), all.size()); },
        [&] { std::memcpy(destination.data(), all.data(), all.size()); }, double(c.kv_bytes),
        "GB/s", 1e9);
    benchmark::DoNotOptimize(sink);
}

void register_all() {
    for (uint32_t tokens : {512u, 64u}) {
        const std::string shape = "/llama1b_bf16_" + std::to_string(tokens) + "tok";
        for (const bool mapped : {false, true}) {
            const std::string how = mapped ? "_mapped" : "";
            benchmark::RegisterBenchmark(("store/get_disk/verify" + how + shape).c_str(),
                                         [=](benchmark::State& s) { get_from_disk(s, tokens, true, mapped); })
                ->UseManualTime();
            benchmark::RegisterBenchmark(("store/get_disk/noverify" + how + shape).c_str(),
                                         [=](benchmark::State& s) { get_from_disk(s, tokens, false, mapped); })
                ->UseManualTime();
        }
        benchmark::RegisterBenchmark(("store/get_memory" + shape).c_str(),
                                     [=](benchmark::State& s) { get_from_memory(s, tokens); })
            ->UseManualTime();
        benchmark::RegisterBenchmark(("store/put/sync" + shape).c_str(),
                                     [=](benchmark::State& s) { put(s, tokens, true); })
            ->UseManualTime();
        benchmark::RegisterBenchmark(("store/put/nosync" + shape).c_str(),
                                     [=](benchmark::State& s) { put(s, tokens, false); })
            ->UseManualTime();
        benchmark::RegisterBenchmark(("store/xxh3" + shape).c_str(),
                                     [=](benchmark::State& s) { xxh3(s, tokens); })
            ->UseManualTime();
    }
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    if (const int status = kvfuse::bench::run_benchmarks(argc, argv); status != 0) return status;
    if (std::getenv("KVFUSE_BENCH_DIR") == nullptr) fs::remove_all(bench_directory());
    return 0;
}
