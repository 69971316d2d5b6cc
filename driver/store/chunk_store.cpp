// The directory backend: one file per chunk, written by temp file + fsync + rename, read into
// memory with pread (or mapped, with ChunkStoreOptions::map_files) and verified before use,
// with a byte-bounded LRU of loaded chunks in front.
#include "store/chunk_store.h"

#include "store/block_writer.h"
#include "store/chunk_file_format.h"
#include "store/mapped_chunk.h"

#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <vector>

namespace kvfuse::store {

namespace fs = std::filesystem;

// ------------------------------------------------------------------------------- ChunkView --

const ChunkLayout& ChunkView::layout() const { return chunk_->parsed.layout; }
uint32_t ChunkView::token_count() const {
    return static_cast<uint32_t>(chunk_->parsed.tokens.size());
}
std::span<const int32_t> ChunkView::tokens() const { return chunk_->parsed.tokens; }
std::string_view ChunkView::model_fingerprint() const { return chunk_->parsed.model_fingerprint; }
uint64_t ChunkView::file_bytes() const { return chunk_->parsed.file_bytes; }
std::span<const std::byte> ChunkView::image() const {
    return {static_cast<const std::byte*>(chunk_->base), chunk_->length};
}
uint64_t ChunkView::header_bytes() const { return chunk_->parsed.header_bytes; }

const SectionView& ChunkView::keys(uint32_t layer) const {
    return chunk_->parsed.sections.at(chunk_->parsed.keys_index.at(layer));
}
const SectionView& ChunkView::values(uint32_t layer) const {
    return chunk_->parsed.sections.at(chunk_->parsed.values_index.at(layer));
}
std::span<const SectionView> ChunkView::sections(uint32_t layer) const {
    const format::ParsedChunkFile& parsed = chunk_->parsed;
    const uint32_t first = parsed.layer_first.at(layer);
    const uint32_t end = parsed.layer_first.at(layer + 1);
    return std::span<const SectionView>(parsed.sections).subspan(first, end - first);
}
bool ChunkView::will_need(uint32_t layer) const {
    std::span<const SectionView> layer_sections = sections(layer);
    if (!chunk_->mapped) return true;  // read into memory: nothing left to read ahead
    const auto* base = static_cast<const std::byte*>(chunk_->base);
    const std::byte* begin = layer_sections.front().bytes.data();
    const std::byte* end = layer_sections.back().bytes.data() + layer_sections.back().bytes.size();
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    const size_t first = static_cast<size_t>(begin - base) / page * page;
    return ::madvise(const_cast<std::byte*>(base) + first, static_cast<size_t>(end - base) - first,
                     MADV_WILLNEED) == 0;
}

const SectionView* ChunkView::find_section(uint32_t layer, std::string_view name) const {
    for (const SectionView& section : sections(layer)) {
        if (section.name == name) return &section;
    }
    return nullptr;
}

// ------------------------------------------------------------------------------- helpers ----

namespace {

constexpr std::string_view kTempPrefix = ".tmp-";
constexpr std::string_view kChunkSuffix = ".kvchunk";

std::string errno_text(int error) { return std::strerror(error); }

std::string file_kind(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    return "mode " + std::to_string(mode);
}

class FileDescriptor {
public:
    explicit FileDescriptor(int fd = -1) : fd_(fd) {}
    FileDescriptor(const FileDescriptor&) = delete;
    FileDescriptor& operator=(const FileDescriptor&) = delete;
    ~FileDescriptor() { reset(); }
    int get() const { return fd_; }
    // close() reports deferred write errors (NFS), so the writer checks it.
    int reset() {
        int result = 0;
        if (fd_ >= 0) result = ::close(fd_);
        fd_ = -1;
        return result;
    }

private:
    int fd_;
};

void default_warning(const Status& status) {
    std::fprintf(stderr, "kvfuse store warning: %s\n", status.to_string().c_str());
}

// What reading one chunk file gave.
struct LoadOutcome {
    std::shared_ptr<const MappedChunk> chunk;  // set when the file is sound and matches
    bool absent = false;
    Status problem;  // corrupt, mismatch or io_error, with the path in the message
    bool damaged = false;  // corrupt or no regular file: safe to remove
    struct stat identity {};
};

}  // namespace

// ------------------------------------------------------------------------------ the store ---

struct ChunkStore::Impl {
    fs::path directory;
    ChunkStoreOptions options;

    mutable std::mutex mutex;  // guards everything below
    struct CacheEntry {
        std::shared_ptr<const MappedChunk> chunk;
        std::list<ChunkDigest>::iterator recency;
    };
    std::map<ChunkDigest, CacheEntry> cache;
    std::list<ChunkDigest> recency;  // front: most recently used
    ChunkStoreStats stats;
    uint64_t temp_counter = 0;

    fs::path chunk_path(const ChunkKey& key) const {
        return directory / (key.hex() + std::string(kChunkSuffix));
    }

    fs::path temp_path(const ChunkKey* key) {
        uint64_t serial;
        {
            std::lock_guard lock(mutex);
            serial = ++temp_counter;
        }
        std::string name(kTempPrefix);
        name += key != nullptr ? key->hex() : std::string("probe");
        // Appended piece by piece: `"-" + std::string` trips a GCC 12 -Wrestrict false positive.
        name += '-';
        name += std::to_string(::getpid());
        name += '-';
        name += std::to_string(serial);
        return directory / name;
    }

    void warn(const Status& status) const {
        if (options.warning) {
            options.warning(status);
        } else {
            default_warning(status);
        }
    }

    // With `key` null, the file's own tokens and fingerprint are taken as its key (the caller
    // checks them).
    LoadOutcome load(const fs::path& path, const ChunkKey* key) const {
        LoadOutcome outcome;
        // O_NONBLOCK: a FIFO at the chunk's path must not block open() before fstat shows it
        // is no regular file. On a regular file the flag changes nothing, so it is kept.
        FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
        if (fd.get() < 0) {
            const int error = errno;
            if (error == ENOENT) {
                outcome.absent = true;
            } else {
                outcome.problem = {StatusCode::io_error,
                                   path.string() + ": open failed: " + errno_text(error)};
            }
            return outcome;
        }
        if (::fstat(fd.get(), &outcome.identity) != 0) {
            outcome.problem = {StatusCode::io_error,
                               path.string() + ": fstat failed: " + errno_text(errno)};
            return outcome;
        }
        if (!S_ISREG(outcome.identity.st_mode)) {
            outcome.problem = {StatusCode::corrupt,
                               path.string() + ": not a regular file (" +
                                   file_kind(outcome.identity.st_mode) + ")"};
            outcome.damaged = true;
            return outcome;
        }
        const uint64_t size = static_cast<uint64_t>(outcome.identity.st_size);
        auto chunk = std::make_shared<MappedChunk>();
        std::span<const std::byte> file;
        // A read file's payload is hashed block by block as it arrives (while in cache), and
        // compared below, after the parse has checked the header that holds the checksum.
        std::optional<uint64_t> read_payload_checksum;
        bool verify_in_parse = options.verify_payload;
        if (size > 0) {
            Status loaded = options.map_files
                                ? map_file(fd.get(), size, *chunk)
                                : read_file(fd.get(), size, *chunk,
                                            options.verify_payload ? &read_payload_checksum : nullptr);
            if (read_payload_checksum) verify_in_parse = false;
            if (!loaded.ok()) {
                outcome.damaged = loaded.code() == StatusCode::corrupt;
                outcome.problem = {loaded.code(), path.string() + ": " + loaded.message()};
                return outcome;
            }
            file = {static_cast<const std::byte*>(chunk->base), size};
        }
        Result<format::ParsedChunkFile> parsed = format::parse_chunk_file(file, verify_in_parse);
        if (!parsed.ok()) {
            const Status& status = parsed.status();
            outcome.damaged = status.code() == StatusCode::corrupt;
            outcome.problem = {status.code(), path.string() + ": " + status.message()};
            return outcome;
        }
        if (read_payload_checksum) {
            uint64_t stored;
            std::memcpy(&stored, file.data() + format::field::payload_checksum, sizeof stored);
            if (stored != *read_payload_checksum) {  // the same words as the parser's check
                outcome.damaged = true;
                outcome.problem = {StatusCode::corrupt, path.string() + ": payload checksum mismatch"};
                return outcome;
            }
        }
        Status matches = key != nullptr ? format::check_key_matches(parsed.value(), *key)
                                        : Status::success();
        if (!matches.ok()) {
            outcome.problem = {matches.code(), path.string() + ": " + matches.message()};
            return outcome;
        }
        chunk->parsed = std::move(parsed).value();
        outcome.chunk = std::move(chunk);
        return outcome;
    }

    static Status map_file(int fd, uint64_t size, MappedChunk& chunk) {
        void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) return {StatusCode::io_error, "mmap failed: " + errno_text(errno)};
        chunk.base = base;
        chunk.length = size;
        chunk.mapping_length = size;
        chunk.mapped = true;
        return Status::success();
    }

    // The whole file into anonymous memory (page-aligned, so every section keeps its 64-byte
    // alignment). A file that ends early -- truncated since fstat -- is damaged; one replaced
    // by rename meanwhile is not seen at all (this descriptor keeps the old inode). With
    // `payload_checksum`, the bytes from the header's header_bytes on are hashed as each block
    // arrives; left empty when the header size is unusable (the parse then reports it).
    static Status read_file(int fd, uint64_t size, MappedChunk& chunk,
                            std::optional<uint64_t>* payload_checksum) {
        size_t mapping_length = 0;
        void* base = allocate_image_memory(size, mapping_length);
        if (base == nullptr) {
            return {StatusCode::io_error,
                    "cannot allocate " + std::to_string(size) + " bytes: " + errno_text(errno)};
        }
        chunk.base = base;
        chunk.length = size;
        chunk.mapping_length = mapping_length;
        auto* bytes = static_cast<std::byte*>(base);
        // 256 KiB blocks: hashed while still in L2.
        constexpr uint64_t kBlock = uint64_t{256} << 10;
        std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(nullptr, &XXH3_freeState);
        uint64_t payload_from = 0;
        uint64_t done = 0;
        while (done < size) {
            const size_t step = static_cast<size_t>(std::min(size - done, kBlock));
            const ssize_t got = ::pread(fd, bytes + done, step, static_cast<off_t>(done));
            if (got < 0) {
                if (errno == EINTR) continue;
                return {StatusCode::io_error, "read failed: " + errno_text(errno)};
            }
            if (got == 0) {
                return {StatusCode::corrupt, "truncated while being read: " +
                                                 std::to_string(done) + " of " +
                                                 std::to_string(size) + " bytes"};
            }
            const uint64_t end = done + static_cast<uint64_t>(got);
            if (payload_checksum != nullptr && !state && end >= format::kFixedHeaderBytes) {
                uint32_t header_bytes;
                std::memcpy(&header_bytes, bytes + format::field::header_bytes, sizeof header_bytes);
                if (header_bytes >= format::kFixedHeaderBytes && header_bytes <= size) {
                    state.reset(XXH3_createState());
                    if (!state || XXH3_64bits_reset(state.get()) != XXH_OK) state.reset();
                    payload_from = header_bytes;
                    // What arrived before the hash could start.
                    if (state && end > payload_from) {
                        XXH3_64bits_update(state.get(), bytes + payload_from, end - payload_from);
                    }
                } else {
                    payload_checksum = nullptr;  // the parse reports the bad header size
                }
            } else if (state && end > payload_from) {
                const uint64_t from = std::max(done, payload_from);
                XXH3_64bits_update(state.get(), bytes + from, end - from);
            }
            done = end;
        }
        if (state) *payload_checksum = XXH3_64bits_digest(state.get());
        // Read-only from here on, as a mapping would be: a stray write through a view faults.
        ::mprotect(base, mapping_length, PROT_READ);
        return Status::success();
    }

    // Removes what made a chunk path unusable -- a damaged file, a FIFO, a socket, an empty
    // directory -- unless another writer has already renamed a new file over it. The check and
    // the removal are not one atomic step: in the rare race, a sound file is lost and
    // recomputed, never a damaged one kept. A non-empty directory is left (it may hold someone's
    // data) and reported: every put() of that chunk will fail until it is removed by hand.
    void remove_unusable(const fs::path& path, const struct stat& identity) {
        struct stat now {};
        if (::lstat(path.c_str(), &now) != 0 || now.st_dev != identity.st_dev ||
            now.st_ino != identity.st_ino) {
            return;
        }
        const bool directory = S_ISDIR(now.st_mode);
        if ((directory ? ::rmdir(path.c_str()) : ::unlink(path.c_str())) == 0) {
            std::lock_guard lock(mutex);
            ++stats.repaired;
            return;
        }
        const int error = errno;
        if (error == ENOENT) return;  // another process removed it first
        warn(Status(StatusCode::io_error,
                    path.string() + ": cannot remove the unusable " +
                        (directory ? "directory" : "file") + " in the way of this chunk (" +
                        errno_text(error) + "); remove it by hand, the chunk is recomputed " +
                        "until then"));
    }

    // Under the lock.
    std::shared_ptr<const MappedChunk> cached(const ChunkKey& key) {
        auto it = cache.find(key.digest);
        if (it == cache.end() || !format::check_key_matches(it->second.chunk->parsed, key).ok()) {
            return nullptr;
        }
        recency.splice(recency.begin(), recency, it->second.recency);
        return it->second.chunk;
    }

    // Under the lock.
    void remember(const ChunkKey& key, std::shared_ptr<const MappedChunk> chunk) {
        const uint64_t bytes = chunk->length;
        if (bytes > options.memory_cache_bytes) return;
        forget(key.digest);
        while (stats.cache_bytes + bytes > options.memory_cache_bytes && !recency.empty()) {
            forget(recency.back());
            ++stats.evictions;
        }
        recency.push_front(key.digest);
        cache.emplace(key.digest, CacheEntry{std::move(chunk), recency.begin()});
        stats.cache_bytes += bytes;
        stats.cache_entries = cache.size();
    }

    // Under the lock.
    void forget(const ChunkDigest& digest) {
        auto it = cache.find(digest);
        if (it == cache.end()) return;
        stats.cache_bytes -= it->second.chunk->length;
        recency.erase(it->second.recency);
        cache.erase(it);
        stats.cache_entries = cache.size();
    }

    // Marks a chunk file as just used (its modification time: the recency the disk limit
    // evicts by). Best effort: a file removed meanwhile, or a read-only mount, changes nothing.
    void touch(const fs::path& path) const {
        if (options.disk_limit_bytes == 0 || options.read_only) return;
        (void)::utimensat(AT_FDCWD, path.c_str(), nullptr, 0);
    }

    std::mutex eviction_mutex;  // one limit check at a time (they list the whole directory)

    // Removes the least recently used chunk files until they total at most the limit, never
    // `keep` (the file just written).
    void enforce_disk_limit(const fs::path& keep) {
        if (options.disk_limit_bytes == 0) return;
        std::lock_guard eviction(eviction_mutex);
        struct ChunkFile {
            fs::path path;
            ChunkDigest digest;
            uint64_t bytes;
            struct timespec used;
        };
        std::vector<ChunkFile> files;
        uint64_t total = 0;
        std::error_code error;
        for (fs::directory_iterator it(directory, error), end; !error && it != end; it.increment(error)) {
            const std::string name = it->path().filename().string();
            if (name.size() != 2 * kChunkDigestBytes + kChunkSuffix.size() || !name.ends_with(kChunkSuffix)) continue;
            std::optional<ChunkDigest> digest = parse_digest_hex(name.substr(0, 2 * kChunkDigestBytes));
            struct stat info;
            if (!digest || ::lstat(it->path().c_str(), &info) != 0 || !S_ISREG(info.st_mode)) continue;
            files.push_back({it->path(), *digest, static_cast<uint64_t>(info.st_size), info.st_mtim});
            total += static_cast<uint64_t>(info.st_size);
        }
        if (error) {
            warn(Status(StatusCode::io_error, directory.string() + ": listing for the disk limit failed: " +
                                                  error.message()));
            return;
        }
        uint64_t evicted = 0;
        if (total > options.disk_limit_bytes) {
            std::sort(files.begin(), files.end(), [](const ChunkFile& a, const ChunkFile& b) {
                return a.used.tv_sec != b.used.tv_sec ? a.used.tv_sec < b.used.tv_sec : a.used.tv_nsec < b.used.tv_nsec;
            });
            for (const ChunkFile& file : files) {
                if (total <= options.disk_limit_bytes) break;
                if (file.path == keep) continue;
                if (::unlink(file.path.c_str()) != 0) {
                    if (errno == ENOENT) {  // another process evicted it first
                        total -= file.bytes;
                        continue;
                    }
                    warn(Status(StatusCode::io_error, file.path.string() +
                                                          ": cannot remove it to keep the store under its disk limit: " +
                                                          errno_text(errno)));
                    continue;
                }
                total -= file.bytes;
                ++evicted;
                std::lock_guard lock(mutex);
                forget(file.digest);
            }
        }
        std::lock_guard lock(mutex);
        stats.disk_evictions += evicted;
        stats.disk_bytes = total;
    }

    Status write_file(const ChunkKey& key, format::ChunkFilePlan& plan, const fs::path& final_path) {
        const fs::path temp = temp_path(&key);
        FileDescriptor fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
        if (fd.get() < 0) {
            const int error = errno;
            return {error == EACCES || error == EROFS || error == EPERM ? StatusCode::not_writable
                                                                         : StatusCode::io_error,
                    temp.string() + ": cannot create: " + errno_text(error)};
        }
        auto fail = [&](std::string what, int error) {
            fd.reset();
            ::unlink(temp.c_str());
            return Status(StatusCode::io_error,
                          temp.string() + ": " + what + " failed: " + errno_text(error));
        };

        // Header (checksums zero for now), then the sections at their aligned offsets; the
        // payload checksum is accumulated on the way and the header completed at the end.
        BlockWriter writer(fd.get(), plan.header.size());
        if (!writer.append(plan.header)) return fail("write", errno);
        std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(),
                                                                        &XXH3_freeState);
        if (!state || XXH3_64bits_reset(state.get()) != XXH_OK) return fail("XXH3 state", ENOMEM);
        static constexpr std::byte kZeros[format::kPayloadAlignment] = {};
        uint64_t at = plan.header.size();
        for (const format::PlannedSection& section : plan.sections) {
            const size_t padding = section.offset - at;
            if (!writer.append_zeros(padding) || !writer.append(section.bytes)) {
                return fail("write", errno);
            }
            XXH3_64bits_update(state.get(), kZeros, padding);
            XXH3_64bits_update(state.get(), section.bytes.data(), section.bytes.size());
            at = section.offset + section.bytes.size();
        }
        format::seal_header(plan.header, XXH3_64bits_digest(state.get()));
        std::span<std::byte> header = writer.first_block_prefix(plan.header.size());
        std::memcpy(header.data(), plan.header.data(), header.size());
        if (!writer.finish()) return fail("write", errno);
        if (options.sync_writes && ::fsync(fd.get()) != 0) return fail("fsync", errno);
        if (fd.reset() != 0) return fail("close", errno);
        if (::rename(temp.c_str(), final_path.c_str()) != 0) {
            const int error = errno;
            ::unlink(temp.c_str());
            return {StatusCode::io_error, final_path.string() + ": rename from " + temp.string() +
                                              " failed: " + errno_text(error)};
        }
        // The rename is durable only once the directory is.
        if (!options.sync_writes) return Status::success();
        FileDescriptor directory_fd(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (directory_fd.get() < 0 || ::fsync(directory_fd.get()) != 0) {
            return {StatusCode::io_error,
                    directory.string() + ": fsync of the directory failed: " + errno_text(errno)};
        }
        return Status::success();
    }
};

ChunkStore::ChunkStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChunkStore::ChunkStore(ChunkStore&&) noexcept = default;
ChunkStore& ChunkStore::operator=(ChunkStore&&) noexcept = default;
ChunkStore::~ChunkStore() = default;

Result<ChunkStore> ChunkStore::open(const fs::path& directory, ChunkStoreOptions options) {
    auto impl = std::make_unique<Impl>();
    if (directory.empty()) {
        Result<fs::path> fallback = default_chunk_directory();
        if (!fallback.ok()) return fallback.status();
        impl->directory = fallback.value();
    } else {
        impl->directory = directory;
    }
    impl->options = std::move(options);
    const fs::path& path = impl->directory;

    std::error_code error;
    if (!impl->options.read_only) {
        fs::create_directories(path, error);
        if (error) {
            return Status(StatusCode::not_writable,
                          "cannot create the store directory " + path.string() + ": " +
                              error.message());
        }
    }
    if (!fs::is_directory(path, error)) {
        return Status(StatusCode::io_error, "store directory " + path.string() +
                                                " does not exist or is not a directory" +
                                                (error ? ": " + error.message() : std::string()));
    }
    if (!impl->options.read_only) {
        // Permission bits do not tell (root ignores them, a read-only mount ignores them): try.
        const fs::path probe = impl->temp_path(nullptr);
        FileDescriptor fd(::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
        if (fd.get() < 0) {
            return Status(StatusCode::not_writable,
                          "store directory " + path.string() +
                              " is not writable (creating a file there failed: " +
                              errno_text(errno) + "); open it read_only to only read");
        }
        fd.reset();
        ::unlink(probe.c_str());
    }
    ChunkStore store(std::move(impl));
    store.remove_stale_temp_files();
    return store;
}

Status ChunkStore::put(const ChunkKey& key, const StoredChunk& chunk) {
    Impl& impl = *impl_;
    if (impl.options.read_only) {
        return {StatusCode::not_writable, impl.directory.string() + ": store opened read_only"};
    }
    Result<format::ChunkFilePlan> plan = format::plan_chunk_file(key, chunk);
    if (!plan.ok()) return plan.status();

    const fs::path path = impl.chunk_path(key);
    {
        std::lock_guard lock(impl.mutex);
        if (impl.cached(key)) {
            ++impl.stats.puts_skipped;
            impl.touch(path);
            return Status::success();
        }
    }
    // A sound file already there is the same content (same key): keep it. A damaged one is
    // simply replaced below, so it is not reported here. A rename cannot replace a directory:
    // an empty one is removed first, a non-empty one makes the rename fail and is named in the
    // error.
    LoadOutcome existing = impl.load(path, &key);
    if (existing.chunk) {
        impl.touch(path);
        std::lock_guard lock(impl.mutex);
        ++impl.stats.puts_skipped;
        impl.stats.bytes_mapped += existing.chunk->length;
        return Status::success();
    }
    if (existing.damaged && S_ISDIR(existing.identity.st_mode)) {
        if (::rmdir(path.c_str()) == 0) {
            std::lock_guard lock(impl.mutex);
            ++impl.stats.repaired;
        } else if (errno != ENOENT) {
            return {StatusCode::io_error,
                    path.string() + ": a directory is in the way of this chunk and cannot be " +
                        "removed (" + errno_text(errno) + "); remove it by hand"};
        }
    }
    Status written = impl.write_file(key, plan.value(), path);
    if (!written.ok()) return written;
    {
        std::lock_guard lock(impl.mutex);
        ++impl.stats.puts;
        impl.stats.bytes_written += plan.value().file_bytes;
    }
    impl.enforce_disk_limit(path);
    return Status::success();
}

std::optional<ChunkView> ChunkStore::get(const ChunkKey& key) {
    Impl& impl = *impl_;
    std::shared_ptr<const MappedChunk> in_memory;
    {
        std::lock_guard lock(impl.mutex);
        in_memory = impl.cached(key);
        if (in_memory) ++impl.stats.memory_hits;
    }
    if (in_memory) {
        impl.touch(impl.chunk_path(key));
        return ChunkView(std::move(in_memory));
    }
    // Mapped and verified outside the lock: other threads' hits do not wait for this one.
    const fs::path path = impl.chunk_path(key);
    LoadOutcome outcome = impl.load(path, &key);
    if (!outcome.chunk) {
        if (!outcome.absent) {
            impl.warn(Status(outcome.problem.code(),
                             outcome.problem.message() + "; read as a miss"));
            if (outcome.damaged && !impl.options.read_only) {
                impl.remove_unusable(path, outcome.identity);
            }
        }
        std::lock_guard lock(impl.mutex);
        ++impl.stats.misses;
        switch (outcome.problem.code()) {
            case StatusCode::corrupt: ++impl.stats.corrupt; break;
            case StatusCode::mismatch: ++impl.stats.mismatched; break;
            case StatusCode::io_error: ++impl.stats.io_errors; break;
            default: break;
        }
        return std::nullopt;
    }
    impl.touch(path);
    std::lock_guard lock(impl.mutex);
    ++impl.stats.disk_hits;
    impl.stats.bytes_mapped += outcome.chunk->length;
    impl.remember(key, outcome.chunk);
    return ChunkView(std::move(outcome.chunk));
}

Status ChunkStore::erase(const ChunkKey& key) {
    Impl& impl = *impl_;
    if (impl.options.read_only) {
        return {StatusCode::not_writable, impl.directory.string() + ": store opened read_only"};
    }
    {
        std::lock_guard lock(impl.mutex);
        impl.forget(key.digest);
    }
    const fs::path path = impl.chunk_path(key);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        return {StatusCode::io_error, path.string() + ": unlink failed: " + errno_text(errno)};
    }
    return Status::success();
}

size_t ChunkStore::remove_stale_temp_files() {
    Impl& impl = *impl_;
    if (impl.options.read_only) return 0;
    const auto now = fs::file_time_type::clock::now();
    size_t removed = 0;
    std::error_code error;
    for (fs::directory_iterator it(impl.directory, error), end; !error && it != end;
         it.increment(error)) {
        const std::string name = it->path().filename().string();
        if (!name.starts_with(kTempPrefix)) continue;
        std::error_code entry_error;
        const auto modified = fs::last_write_time(it->path(), entry_error);
        if (entry_error || now - modified < impl.options.stale_temp_age) continue;
        if (::unlink(it->path().c_str()) == 0) {
            ++removed;
        } else if (errno != ENOENT) {  // ENOENT: another process cleaned it first
            impl.warn(Status(StatusCode::io_error, it->path().string() +
                                                       ": cannot remove leftover temporary file: " +
                                                       errno_text(errno)));
        }
    }
    if (error) {
        impl.warn(Status(StatusCode::io_error,
                         impl.directory.string() + ": listing failed: " + error.message()));
    }
    return removed;
}

Result<std::vector<ChunkDigest>> ChunkStore::list() {
    std::vector<ChunkDigest> digests;
    std::error_code error;
    for (fs::directory_iterator it(impl_->directory, error), end; !error && it != end;
         it.increment(error)) {
        const std::string name = it->path().filename().string();
        if (name.size() != 2 * kChunkDigestBytes + kChunkSuffix.size() ||
            !name.ends_with(kChunkSuffix)) {
            continue;
        }
        std::optional<ChunkDigest> digest = parse_digest_hex(name.substr(0, 2 * kChunkDigestBytes));
        if (digest) digests.push_back(*digest);
    }
    if (error) {
        return Status(StatusCode::io_error,
                      impl_->directory.string() + ": listing failed: " + error.message());
    }
    return digests;
}

std::optional<std::vector<int32_t>> ChunkStore::tokens_of(const ChunkDigest& digest,
                                                          std::string_view model_fingerprint) {
    ChunkKey probe;
    probe.digest = digest;
    const fs::path path = impl_->chunk_path(probe);
    LoadOutcome outcome = impl_->load(path, nullptr);
    if (!outcome.chunk) return std::nullopt;  // a damaged file is reported by the get() that follows
    const format::ParsedChunkFile& parsed = outcome.chunk->parsed;
    if (parsed.model_fingerprint != model_fingerprint) return std::nullopt;
    std::vector<int32_t> tokens(parsed.tokens.begin(), parsed.tokens.end());
    if (make_chunk_key(model_fingerprint, tokens).digest != digest) return std::nullopt;
    return tokens;
}

std::vector<BackendStats> ChunkStore::backend_stats() const {
    const ChunkStoreStats s = stats();
    BackendStats out;
    out.tier = "fs";
    out.hits = s.memory_hits + s.disk_hits;
    out.misses = s.misses;
    out.corrupt = s.corrupt + s.mismatched;
    out.unavailable = s.io_errors;
    out.puts = s.puts;
    out.bytes_read = s.bytes_mapped;
    out.bytes_written = s.bytes_written;
    return {out};
}

void ChunkStore::warn(const Status& status) const { impl_->warn(status); }

void ChunkStore::clear_memory_cache() {
    std::lock_guard lock(impl_->mutex);
    impl_->cache.clear();
    impl_->recency.clear();
    impl_->stats.cache_bytes = 0;
    impl_->stats.cache_entries = 0;
}

ChunkStoreStats ChunkStore::stats() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->stats;
}

const fs::path& ChunkStore::directory() const { return impl_->directory; }

fs::path ChunkStore::path_of(const ChunkKey& key) const { return impl_->chunk_path(key); }

Result<fs::path> default_chunk_directory() {
    // XDG Base Directory spec: a relative XDG_CACHE_HOME is invalid and must be ignored.
    const char* xdg = std::getenv("XDG_CACHE_HOME");
    if (xdg != nullptr && xdg[0] == '/') return fs::path(xdg) / "kvfuse" / "chunks";
    const char* home = std::getenv("HOME");
    if (home != nullptr && home[0] == '/') return fs::path(home) / ".cache" / "kvfuse" / "chunks";
    return Status(StatusCode::invalid_argument,
                  "no store directory given and neither XDG_CACHE_HOME nor HOME is an absolute "
                  "path");
}

}  // namespace kvfuse::store
