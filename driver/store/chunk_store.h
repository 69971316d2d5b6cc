// The chunk KV store: the precomputed KV cache of each RAG chunk, keyed by content (model
// fingerprint + token ids), kept as one checksummed file per chunk in a directory and read back
// into memory (or, on request, mapped), with an in-memory LRU of loaded chunks in front. File
// format and guarantees: docs/STORE.md.
//
// What a chunk holds: the KV cache of the chunk computed ALONE at positions 0..N-1. Per layer,
// K (already rotated by RoPE at those chunk-local positions: the fusion code re-rotates it by
// Δ = new_pos − old_pos with the RoPE kernel) and V, each tokens × kv_heads × head_dim in f32 or
// bf16, plus any number of named extra sections (quantized keys, scales, means, ...) whose
// meaning belongs to their writer. The store never interprets a payload.
//
// Thread safety: one ChunkStore may be used from several threads at once; several processes may
// share one directory (writes are atomic renames, readers see a whole file or none).
//
// ChunkStore is the filesystem ChunkBackend; the same chunk image (the file format, encoded and
// decoded by store/chunk_codec.h) is what the other backends keep.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace kvfuse::store {

// ---------------------------------------------------------------------------------- status --

enum class StatusCode {
    ok,
    invalid_argument,  // the caller's data does not describe a valid chunk
    io_error,          // a system call failed (message says which, on which path, errno text)
    not_writable,      // the store directory cannot be created or written
    corrupt,           // a file is damaged: truncated, bad magic, bad sizes, checksum mismatch
    mismatch,          // a sound file that is not this key's chunk: other format version,
                       // fingerprint or tokens (a hash collision), other layout
};

std::string_view status_code_name(StatusCode code);

class [[nodiscard]] Status {
public:
    Status() = default;
    Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
    static Status success() { return {}; }

    bool ok() const { return code_ == StatusCode::ok; }
    StatusCode code() const { return code_; }
    const std::string& message() const { return message_; }
    std::string to_string() const;  // "corrupt: /path/x.kvchunk: payload checksum ..."

private:
    StatusCode code_ = StatusCode::ok;
    std::string message_;
};

// A value or the Status that explains why there is none.
template <class T>
class [[nodiscard]] Result {
public:
    Result(T value) : state_(std::move(value)) {}
    Result(Status error) : state_(std::move(error)) {}

    bool ok() const { return std::holds_alternative<T>(state_); }
    T& value() & { return std::get<T>(state_); }
    T&& value() && { return std::get<T>(std::move(state_)); }
    const T& value() const& { return std::get<T>(state_); }
    // The error, or an ok Status when there is a value.
    Status status() const { return ok() ? Status::success() : std::get<Status>(state_); }

private:
    std::variant<T, Status> state_;
};

// ------------------------------------------------------------------------------ data types --

// Element types of sections. Values are part of the file format: never renumber.
enum class DType : uint32_t {
    f32 = 1,
    bf16 = 2,
    f16 = 3,
    i8 = 4,
    u8 = 5,
    i4 = 6,  // signed 4-bit, two per byte, element 2i in the low nibble of byte i
    i32 = 7,
};

std::string_view dtype_name(DType dtype);
// Bits per element; 0 for a value that is not a DType.
uint32_t dtype_bits(DType dtype);
// Bytes that `elements` elements of `dtype` occupy (i4 rounds up to whole bytes).
uint64_t dtype_bytes(DType dtype, uint64_t elements);

// The shape of the K and V of every layer: token_count × kv_heads × head_dim each, where
// token_count is the number of token ids in the chunk's key.
struct ChunkLayout {
    uint32_t layers = 0;
    uint32_t kv_heads = 0;
    uint32_t head_dim = 0;
    DType kv_dtype = DType::f32;  // f32 or bf16

    bool operator==(const ChunkLayout&) const = default;
};

inline constexpr size_t kMaxSectionNameBytes = 31;  // excluding the terminating NUL
inline constexpr size_t kMaxSectionRank = 4;
// Section names the store reserves for a layer's K and V.
inline constexpr std::string_view kKeysSectionName = "k";
inline constexpr std::string_view kValuesSectionName = "v";

// ------------------------------------------------------------------------------------ keys --

inline constexpr size_t kChunkDigestBytes = 32;
using ChunkDigest = std::array<uint8_t, kChunkDigestBytes>;

// The identity of a chunk: SHA-256 (OpenSSL libcrypto) over a domain tag, the model fingerprint
// and the token ids (framing in docs/STORE.md). It keeps the fingerprint and the tokens too, so
// that a file found under the digest is accepted only if it holds exactly these.
struct ChunkKey {
    ChunkDigest digest{};
    std::string model_fingerprint;
    std::vector<int32_t> tokens;

    std::string hex() const;  // the digest as 64 lowercase hex digits: the file's name
};

// 64 hex digits (either case) back to a digest; nullopt for anything else.
std::optional<ChunkDigest> parse_digest_hex(std::string_view hex);

// The model fingerprint is opaque to the store (e.g. the GGUF file's hash + rope settings +
// KV dtype): chunks of different fingerprints never match.
ChunkKey make_chunk_key(std::string_view model_fingerprint, std::span<const int32_t> tokens);

// Test hook: a key with a chosen digest, to force a hash collision between different contents.
ChunkKey make_chunk_key_with_digest_for_testing(std::string_view model_fingerprint,
                                                std::span<const int32_t> tokens,
                                                const ChunkDigest& digest);

// ------------------------------------------------------------------------- writing a chunk --

// Non-owning description of one extra section handed to put().
struct SectionInput {
    std::string name;              // 1..31 bytes, not "k" or "v", unique within its layer
    DType dtype = DType::u8;
    std::vector<uint64_t> shape;   // 1..4 dimensions; bytes.size() must equal dtype_bytes(prod)
    std::span<const std::byte> bytes;
};

struct LayerInput {
    std::span<const std::byte> keys;    // token_count × kv_heads × head_dim of layout.kv_dtype
    std::span<const std::byte> values;  // same shape and dtype
    std::vector<SectionInput> extra_sections;
};

// What put() stores: layers.size() must equal layout.layers.
struct StoredChunk {
    ChunkLayout layout;
    std::vector<LayerInput> layers;
};

// ------------------------------------------------------------------------- reading a chunk --

// One section inside a loaded chunk file. Its bytes start 64-byte aligned.
struct SectionView {
    std::string_view name;
    DType dtype = DType::u8;
    std::span<const uint64_t> shape;
    std::span<const std::byte> bytes;

    uint64_t element_count() const;
    // Typed access; an empty span when the dtype is not the one asked for.
    std::span<const float> as_f32() const;
    std::span<const uint16_t> as_bf16_bits() const;  // also for f16
    std::span<const int8_t> as_i8() const;
    std::span<const uint8_t> as_u8() const;
    std::span<const int32_t> as_i32() const;
};

struct MappedChunk;  // the file's bytes (read or mapped) and its parsed section table

// A verified chunk: its file's bytes, read into memory (or mapped, with
// ChunkStoreOptions::map_files). Copies are cheap and share the bytes, which stay valid as long
// as any view of them exists (even after LRU eviction, and even if another process replaces,
// removes or -- when read, not mapped -- truncates the file).
class ChunkView {
public:
    explicit ChunkView(std::shared_ptr<const MappedChunk> chunk) : chunk_(std::move(chunk)) {}

    const ChunkLayout& layout() const;
    uint32_t token_count() const;
    std::span<const int32_t> tokens() const;
    std::string_view model_fingerprint() const;

    const SectionView& keys(uint32_t layer) const;    // layer < layout().layers
    const SectionView& values(uint32_t layer) const;
    // Every section of a layer, K and V included, in file order.
    std::span<const SectionView> sections(uint32_t layer) const;
    // nullptr when the layer has no section of that name.
    const SectionView* find_section(uint32_t layer, std::string_view name) const;

    uint64_t file_bytes() const;
    // The whole chunk image (a chunk file's bytes) and the length of its header.
    std::span<const std::byte> image() const;
    uint64_t header_bytes() const;

    // Asks the kernel to read a layer's sections ahead (madvise WILLNEED), e.g. layer l+1's
    // while layer l is fused. Useful only for a mapped file with verify_payload off: verifying
    // reads the whole file at get(), and a file read into memory is all there already (true).
    // False if the kernel refused the advice (nothing else changes).
    bool will_need(uint32_t layer) const;

private:
    std::shared_ptr<const MappedChunk> chunk_;
};

// ------------------------------------------------------------------- the backend interface --

class ChunkStream;  // store/chunk_stream.h

// What one tier of a backend counted since it was opened.
struct BackendStats {
    std::string tier;            // "fs", "redis", ...
    uint64_t hits = 0;           // get() answered with a verified chunk
    uint64_t misses = 0;         // get() found nothing usable (absent, damaged, unreachable)
    uint64_t corrupt = 0;        // values found damaged or foreign (also counted as misses)
    uint64_t unavailable = 0;    // operations refused because the backend could not be reached
    uint64_t puts = 0;           // chunks written
    uint64_t bytes_read = 0;     // chunk bytes read by get()
    uint64_t bytes_written = 0;  // chunk bytes written by put()
    uint64_t redirects = 0;      // Redis Cluster MOVED/ASK redirects followed
};

// A place chunks live: a directory (ChunkStore below), Redis (store/redis_backend.h), or a local
// tier in front of a remote one (store/tiered_backend.h). Every backend gives the same
// guarantees: get() returns a chunk only after verifying its checksums and that it is exactly
// this key's chunk; anything else (absent, damaged, foreign, unreachable) is a miss, reported
// through warn(); a put() is visible to readers whole or not at all. Thread-safe.
class ChunkBackend {
public:
    virtual ~ChunkBackend() = default;

    virtual std::optional<ChunkView> get(const ChunkKey& key) = 0;
    // The same chunk, handed out before it has all arrived: its layers become readable one by
    // one, each verified (store/chunk_stream.h), so a caller can start on layer 0 while later
    // layers are read. A layer that turns out missing or damaged ends the stream (the chunk is
    // then a miss), never hands out its bytes. Default: get(), every layer ready at once. The
    // backend must outlive the streams it hands out.
    virtual std::shared_ptr<ChunkStream> get_streamed(const ChunkKey& key);
    virtual Status put(const ChunkKey& key, const StoredChunk& chunk) = 0;
    // Absent is not an error.
    virtual Status erase(const ChunkKey& key) = 0;
    // The digests of every chunk the backend holds (unverified: a listed chunk may still read
    // as a miss).
    virtual Result<std::vector<ChunkDigest>> list() = 0;

    // The token ids of the chunk stored under `digest` for this model fingerprint, read from
    // the stored chunk and verified (checksums, the fingerprint, and SHA-256 of fingerprint +
    // tokens equal to the digest); nullopt when there is none usable. Lets a server resolve a
    // chunk id that another server of its fleet handed out.
    virtual std::optional<std::vector<int32_t>> tokens_of(const ChunkDigest& digest,
                                                          std::string_view model_fingerprint) = 0;

    // Passes a problem to the backend's warning hook (callers handling one the way the backend
    // handles its own, e.g. a failed put() that only costs a recompute next time).
    virtual void warn(const Status& status) const = 0;
    // Where the backend keeps its chunks ("/dir", "redis://host:port/0"), and a key's place in
    // it, for messages.
    virtual std::string location() const = 0;
    virtual std::string location_of(const ChunkKey& key) const = 0;
    // One entry per tier, the nearest first.
    virtual std::vector<BackendStats> backend_stats() const = 0;
};

// -------------------------------------------------------------------------------- the store --

struct ChunkStoreOptions {
    // Bytes of loaded chunk files the in-memory LRU keeps (0 disables it). A chunk larger than
    // this is served but not kept.
    uint64_t memory_cache_bytes = uint64_t{1} << 30;
    // Check the payload checksum each time a file is loaded. Off saves one pass over the data
    // and trusts the filesystem; the header is always checked.
    bool verify_payload = true;
    // Map chunk files (mmap) instead of reading them into memory. Saves the copy (figures in
    // docs/STORE.md), but a file truncated in place while a view maps it kills the process with
    // SIGBUS on the next access: only for a directory that nothing else writes or truncates.
    // Off (the default): get() reads the file with pread, so no change to the file can reach a
    // view once it is returned.
    bool map_files = false;
    // fsync each new file and the directory before put() returns, so a stored chunk survives a
    // power loss. Off: writes stay atomic and reads stay verified (a file torn by a crash is
    // detected and recomputed); only durability is given up, for speed.
    bool sync_writes = true;
    // A store that never writes: put() fails, temporary files are left alone.
    bool read_only = false;
    // Most bytes of chunk files the directory keeps (0: no limit), e.g. for a machine's local
    // cache tier in front of Redis. After each put() that writes a file, the least recently
    // used chunk files are removed until the directory's chunk files total at most this; the
    // file just written is never removed (a chunk larger than the limit is kept alone). Recency
    // is the file's modification time, which put() sets and every get() hit refreshes, so
    // several processes sharing the directory evict by the same order. A removed file that a
    // view still holds stays readable through the view (read into memory, or mapped).
    uint64_t disk_limit_bytes = 0;
    // Temporary files older than this are a crashed writer's leftovers and are removed by open()
    // and remove_stale_temp_files(). Younger ones may belong to a live writer in another process.
    std::chrono::seconds stale_temp_age{600};
    // Called for every problem that the store handles by itself (a damaged or mismatched file
    // read as a miss, something in the way of a chunk file that it removed or could not
    // remove, a leftover it could not remove), and by callers through ChunkStore::warn().
    // Default: one line on stderr. May be called from several threads at once.
    std::function<void(const Status&)> warning;
};

struct ChunkStoreStats {
    uint64_t memory_hits = 0;  // get() served from the LRU
    uint64_t disk_hits = 0;    // get() served by reading (or mapping) and verifying a file
    uint64_t misses = 0;       // get() found nothing usable (absent, damaged or mismatched)
    uint64_t corrupt = 0;      // files found damaged (also counted in misses when read by get)
    uint64_t repaired = 0;     // unusable files (or empty directories) removed from chunk paths
    uint64_t mismatched = 0;   // sound files holding another chunk or another format version
    uint64_t io_errors = 0;    // reads that failed for a reason other than absence
    uint64_t puts = 0;         // files written
    uint64_t puts_skipped = 0; // put() of a chunk already stored and valid
    uint64_t bytes_written = 0;
    uint64_t bytes_mapped = 0;  // bytes of files read (or mapped) from disk by get()/put()
    uint64_t evictions = 0;
    uint64_t disk_evictions = 0;  // chunk files removed to keep under disk_limit_bytes
    uint64_t disk_bytes = 0;      // chunk files' bytes in the directory at the last limit check
    uint64_t cache_bytes = 0;   // now in the LRU
    uint64_t cache_entries = 0;
};

class ChunkStore final : public ChunkBackend {
public:
    // Opens (creating if needed) the store directory; an empty path means
    // default_chunk_directory(). Fails with not_writable when a writable store cannot write
    // there (checked by creating a probe file, so it also holds for root and read-only mounts).
    static Result<ChunkStore> open(const std::filesystem::path& directory,
                                   ChunkStoreOptions options = {});

    ChunkStore(ChunkStore&&) noexcept;
    ChunkStore& operator=(ChunkStore&&) noexcept;
    ~ChunkStore();

    // Stores a chunk under the key: validated, written to a temporary file in the same
    // directory, fsync'd, renamed over the final name, directory fsync'd. A chunk already stored
    // and valid is not rewritten. Whatever else is at the chunk's path (a damaged file, a FIFO,
    // an empty directory) is removed first; what cannot be removed (a non-empty directory) is
    // the error. On failure nothing is left behind.
    Status put(const ChunkKey& key, const StoredChunk& chunk) override;

    // The chunk, or nullopt when there is none usable: a damaged or mismatched file is reported
    // through the warning hook and read as a miss, never returned. A damaged file or anything
    // that is not a regular file at the chunk's path is removed (an empty directory too; a
    // warning says what could not be).
    std::optional<ChunkView> get(const ChunkKey& key) override;

    // Removes the key's file (and LRU entry). Absent is not an error.
    Status erase(const ChunkKey& key) override;
    // Every `<digest>.kvchunk` name in the directory.
    Result<std::vector<ChunkDigest>> list() override;
    std::optional<std::vector<int32_t>> tokens_of(const ChunkDigest& digest,
                                                  std::string_view model_fingerprint) override;

    // Number of leftover temporary files removed.
    size_t remove_stale_temp_files();

    // Passes a problem to the warning hook: for callers that handle one the way the store
    // handles its own (e.g. a failed put() that only costs a recompute next time).
    void warn(const Status& status) const override;
    void clear_memory_cache();

    ChunkStoreStats stats() const;
    const std::filesystem::path& directory() const;
    std::filesystem::path path_of(const ChunkKey& key) const;
    std::string location() const override { return directory().string(); }
    std::string location_of(const ChunkKey& key) const override { return path_of(key).string(); }
    std::vector<BackendStats> backend_stats() const override;

    struct Impl;

private:
    explicit ChunkStore(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// $XDG_CACHE_HOME/kvfuse/chunks when XDG_CACHE_HOME is an absolute path, else
// $HOME/.cache/kvfuse/chunks; an error when neither variable gives one.
Result<std::filesystem::path> default_chunk_directory();

}  // namespace kvfuse::store
