#include "store/redis_backend.h"

#include "store/chunk_codec.h"
#include "store/chunk_file_format.h"
#include "store/chunk_stream.h"

#include <hiredis/hiredis.h>
#include <xxhash.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <mutex>

namespace kvfuse::store {

namespace {

constexpr std::string_view kKeyPrefix = "kvfuse:chunk:v1:";
constexpr char kManifestMagic[8] = {'K', 'V', 'F', 'R', 'M', 'A', 'N', '1'};
constexpr uint32_t kManifestVersion = 1;
// magic, version, layer count, image bytes, header bytes
constexpr size_t kManifestFixedBytes = 8 + 4 + 4 + 8 + 8;
constexpr size_t kManifestLayerBytes = 3 * 8;  // offset, bytes, XXH3 of the layer's bytes
constexpr uint32_t kMaxLayers = 1u << 16;

std::string chunk_prefix(const ChunkKey& key) {
    char model[17];
    std::snprintf(model, sizeof model, "%016llx",
                  static_cast<unsigned long long>(
                      XXH3_64bits(key.model_fingerprint.data(), key.model_fingerprint.size())));
    // The digest in braces is the key's Redis Cluster hash tag: every key of one chunk lands on
    // one slot, so a cluster proxy can pipeline a chunk's layers to one node.
    std::string prefix(kKeyPrefix);
    prefix += model;
    prefix += ":{";
    prefix += key.hex();
    prefix += '}';
    return prefix;
}

std::string manifest_key_of(const ChunkKey& key) { return chunk_prefix(key) + ":manifest"; }

std::string layer_key_of(const ChunkKey& key, uint32_t layer) {
    return chunk_prefix(key) + ":layer:" + std::to_string(layer);
}

template <class T>
void append(std::string& out, T value) {
    out.append(reinterpret_cast<const char*>(&value), sizeof value);
}

template <class T>
T load(std::string_view bytes, size_t offset) {
    T value;
    std::memcpy(&value, bytes.data() + offset, sizeof value);
    return value;
}

struct Manifest {
    uint64_t image_bytes = 0;
    uint64_t header_bytes = 0;
    struct Layer {
        uint64_t offset = 0, bytes = 0, checksum = 0;
    };
    std::vector<Layer> layers;
    std::string_view header;  // points into the manifest value
};

std::string encode_manifest(const EncodedChunk& encoded) {
    std::string out;
    out.append(kManifestMagic, sizeof kManifestMagic);
    append<uint32_t>(out, kManifestVersion);
    append<uint32_t>(out, static_cast<uint32_t>(encoded.layers.size()));
    append<uint64_t>(out, encoded.image.size());
    append<uint64_t>(out, encoded.header_bytes);
    for (const ByteRange& layer : encoded.layers) {
        append<uint64_t>(out, layer.offset);
        append<uint64_t>(out, layer.bytes);
        append<uint64_t>(out, XXH3_64bits(encoded.image.data() + layer.offset, layer.bytes));
    }
    out.append(reinterpret_cast<const char*>(encoded.image.data()), encoded.header_bytes);
    append<uint64_t>(out, XXH3_64bits(out.data(), out.size()));
    return out;
}

Result<Manifest> decode_manifest(std::string_view value, uint64_t max_image_bytes) {
    auto corrupt = [](std::string what) { return Status(StatusCode::corrupt, "manifest " + what); };
    if (value.size() < kManifestFixedBytes + 8) return corrupt("truncated");
    const uint64_t stored_checksum = load<uint64_t>(value, value.size() - 8);
    if (XXH3_64bits(value.data(), value.size() - 8) != stored_checksum) {
        return corrupt("checksum mismatch");
    }
    if (std::memcmp(value.data(), kManifestMagic, sizeof kManifestMagic) != 0) {
        return corrupt("has a bad magic (not a kvfuse chunk)");
    }
    if (load<uint32_t>(value, 8) != kManifestVersion) {
        return Status(StatusCode::mismatch, "manifest version " +
                                                std::to_string(load<uint32_t>(value, 8)) +
                                                ", this build reads " +
                                                std::to_string(kManifestVersion));
    }
    Manifest manifest;
    const uint32_t layers = load<uint32_t>(value, 12);
    manifest.image_bytes = load<uint64_t>(value, 16);
    manifest.header_bytes = load<uint64_t>(value, 24);
    if (layers == 0 || layers > kMaxLayers) return corrupt("layer count out of range");
    if (manifest.image_bytes > max_image_bytes) {
        return corrupt("image of " + std::to_string(manifest.image_bytes) +
                       " bytes, above the limit of " + std::to_string(max_image_bytes));
    }
    const uint64_t expected = kManifestFixedBytes + uint64_t{layers} * kManifestLayerBytes +
                              manifest.header_bytes + 8;
    if (manifest.header_bytes == 0 || manifest.header_bytes > manifest.image_bytes ||
        expected != value.size()) {
        return corrupt("sizes do not add up");
    }
    uint64_t at = manifest.header_bytes;
    for (uint32_t l = 0; l < layers; ++l) {
        const size_t entry = kManifestFixedBytes + size_t{l} * kManifestLayerBytes;
        Manifest::Layer layer{load<uint64_t>(value, entry), load<uint64_t>(value, entry + 8),
                              load<uint64_t>(value, entry + 16)};
        if (layer.offset != at || layer.bytes > manifest.image_bytes - at) {
            return corrupt("layer " + std::to_string(l) + " does not follow the one before");
        }
        at += layer.bytes;
        manifest.layers.push_back(layer);
    }
    if (at != manifest.image_bytes) return corrupt("layers do not fill the image");
    manifest.header = value.substr(kManifestFixedBytes + size_t{layers} * kManifestLayerBytes,
                                   manifest.header_bytes);
    return manifest;
}

struct ReplyDeleter {
    void operator()(redisReply* reply) const { freeReplyObject(reply); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

timeval to_timeval(std::chrono::milliseconds ms) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>(ms.count() % 1000 * 1000);
    return tv;
}

}  // namespace

Result<RedisOptions> parse_redis_url(std::string_view url) {
    const std::string text(url);
    auto invalid = [&](const std::string& why) {
        return Status(StatusCode::invalid_argument,
                      "'" + text + "' is not a Redis URL (redis://host[:port][/db]): " + why);
    };
    constexpr std::string_view kScheme = "redis://";
    if (!url.starts_with(kScheme)) return invalid("it does not start with redis://");
    url.remove_prefix(kScheme.size());
    RedisOptions options;
    std::string_view db;
    if (const size_t slash = url.find('/'); slash != std::string_view::npos) {
        db = url.substr(slash + 1);
        url = url.substr(0, slash);
        if (db.empty()) return invalid("no database number after '/'");
    }
    if (url.find('@') != std::string_view::npos) {
        return invalid("credentials in the URL are not supported (set KVFUSE_REDIS_PASSWORD and, for an "
                       "ACL user, KVFUSE_REDIS_USER)");
    }
    std::string_view port;
    if (const size_t colon = url.rfind(':'); colon != std::string_view::npos) {
        port = url.substr(colon + 1);
        url = url.substr(0, colon);
        if (port.empty()) return invalid("no port after ':'");
    }
    if (url.empty()) return invalid("no host");
    options.host = std::string(url);
    auto number = [](std::string_view digits, int low, int high, int& out) {
        const char* end = digits.data() + digits.size();
        auto [ptr, error] = std::from_chars(digits.data(), end, out);
        return error == std::errc() && ptr == end && out >= low && out <= high;
    };
    if (!port.empty() && !number(port, 1, 65535, options.port)) {
        return invalid("port '" + std::string(port) + "' is not in 1..65535");
    }
    if (!db.empty() && !number(db, 0, 1 << 20, options.db)) {
        return invalid("database '" + std::string(db) + "' is not a number >= 0");
    }
    return options;
}

struct RedisChunkBackend::Impl {
    RedisOptions options;
    mutable std::mutex mutex;  // one connection, one command stream at a time
    redisContext* context = nullptr;
    // Idle connections of the streaming readers (each stream reads on one of its own, so that
    // its layers do not wait behind other commands); at most kStreamPool kept.
    static constexpr size_t kStreamPool = 4;
    std::vector<redisContext*> stream_pool;
    std::chrono::steady_clock::time_point next_connect{};
    bool reported_down = false;
    BackendStats stats;

    ~Impl() {
        if (context != nullptr) redisFree(context);
        for (redisContext* c : stream_pool) redisFree(c);
    }

    std::string location() const {
        return "redis://" + options.host + ":" + std::to_string(options.port) + "/" +
               std::to_string(options.db);
    }

    void warn(const Status& status) const {
        if (options.warning) {
            options.warning(status);
        } else {
            std::fprintf(stderr, "kvfuse store warning: %s\n", status.to_string().c_str());
        }
    }

    // A new connection, set up (timeouts, AUTH, SELECT): "" and `c`, or the problem (and `c`
    // whatever it got, for redisFree). Needs no lock: it reads only the options.
    std::string open_context(redisContext*& c) const {
        c = redisConnectWithTimeout(options.host.c_str(), options.port,
                                                  to_timeval(options.connect_timeout));
        std::string problem;
        if (c == nullptr) {
            problem = "cannot allocate a connection";
        } else if (c->err != 0) {
            problem = c->errstr;
        } else if (redisSetTimeout(c, to_timeval(options.command_timeout)) != REDIS_OK) {
            problem = "cannot set the command timeout";
        } else {
            redisEnableKeepAlive(c);
            if (!options.password.empty()) {
                // AUTH [user] password, as arguments: nothing of the password reaches a message.
                std::vector<const char*> argv = {"AUTH"};
                std::vector<size_t> lengths = {4};
                if (!options.user.empty()) {
                    argv.push_back(options.user.c_str());
                    lengths.push_back(options.user.size());
                }
                argv.push_back(options.password.c_str());
                lengths.push_back(options.password.size());
                Reply reply(static_cast<redisReply*>(
                    redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lengths.data())));
                if (!reply) {
                    problem = std::string("AUTH failed: ") + c->errstr;
                } else if (reply->type == REDIS_REPLY_ERROR) {
                    problem = "AUTH refused: " + std::string(reply->str, reply->len);
                }
            }
            if (problem.empty() && options.db != 0) {
                Reply reply(static_cast<redisReply*>(
                    redisCommand(c, "SELECT %d", options.db)));
                if (!reply) {
                    problem = std::string("SELECT failed: ") + c->errstr;
                } else if (reply->type == REDIS_REPLY_ERROR) {
                    problem = "SELECT " + std::to_string(options.db) + " refused: " +
                              std::string(reply->str, reply->len);
                }
            }
        }
        return problem;
    }

    // Under the lock. A connection, or an unavailable Status (reported once per outage).
    Status connect() {
        if (context != nullptr) return Status::success();
        const auto now = std::chrono::steady_clock::now();
        if (now < next_connect) {
            return {StatusCode::io_error, location() + ": unreachable (next retry within " +
                                              std::to_string(options.retry_interval.count()) +
                                              " ms)"};
        }
        redisContext* c = nullptr;
        std::string problem = open_context(c);
        if (!problem.empty()) {
            if (c != nullptr) redisFree(c);
            next_connect = now + options.retry_interval;
            ++stats.unavailable;
            Status status(StatusCode::io_error, location() + ": cannot connect: " + problem);
            if (!reported_down) {
                warn(Status(status.code(), status.message() +
                                               "; chunks are computed until it is back (retried "
                                               "every " +
                                               std::to_string(options.retry_interval.count()) +
                                               " ms)"));
                reported_down = true;
            }
            return status;
        }
        context = c;
        if (reported_down) {
            warn(Status(StatusCode::ok, location() + ": connected again"));
            reported_down = false;
        }
        return Status::success();
    }

    // Under the lock: the connection failed mid-command; the next call reconnects at once.
    Status drop(const std::string& during) {
        std::string why = context != nullptr && context->err != 0 ? context->errstr : "no reply";
        if (context != nullptr) redisFree(context);
        context = nullptr;
        next_connect = {};
        ++stats.unavailable;
        Status status(StatusCode::io_error, location() + ": " + during + " failed: " + why);
        if (!reported_down) {
            warn(Status(status.code(), status.message() + "; reconnecting"));
            reported_down = true;
        }
        return status;
    }

    // Under the lock: one command, argument by argument (binary-safe).
    Result<Reply> command(std::initializer_list<std::string_view> args, const std::string& what) {
        Status connected = connect();
        if (!connected.ok()) return connected;
        std::vector<const char*> argv;
        std::vector<size_t> lengths;
        for (std::string_view arg : args) {
            argv.push_back(arg.data());
            lengths.push_back(arg.size());
        }
        Reply reply(static_cast<redisReply*>(redisCommandArgv(
            context, static_cast<int>(argv.size()), argv.data(), lengths.data())));
        if (!reply) return drop(what);
        return reply;
    }

    // Under the lock: several commands sent at once, their replies in order.
    Result<std::vector<Reply>> pipeline(const std::vector<std::vector<std::string_view>>& commands,
                                        const std::string& what) {
        Status connected = connect();
        if (!connected.ok()) return connected;
        for (const auto& args : commands) {
            std::vector<const char*> argv;
            std::vector<size_t> lengths;
            for (std::string_view arg : args) {
                argv.push_back(arg.data());
                lengths.push_back(arg.size());
            }
            if (redisAppendCommandArgv(context, static_cast<int>(argv.size()), argv.data(),
                                       lengths.data()) != REDIS_OK) {
                return drop(what);
            }
        }
        std::vector<Reply> replies;
        for (size_t i = 0; i < commands.size(); ++i) {
            void* raw = nullptr;
            if (redisGetReply(context, &raw) != REDIS_OK || raw == nullptr) return drop(what);
            replies.emplace_back(static_cast<redisReply*>(raw));
        }
        return replies;
    }

    // Under the lock: deletes a chunk's keys, manifest first, so no reader finds a manifest
    // whose layers are going.
    Status erase_keys(const ChunkKey& key, uint32_t layers) {
        const std::string manifest = manifest_key(key);
        Result<Reply> reply = command({"DEL", manifest}, "DEL");
        if (!reply.ok()) return reply.status();
        if (layers == 0) {
            // Unknown layer count: every layer key of the chunk.
            std::string cursor = "0";
            const std::string pattern = chunk_prefix(key) + ":layer:*";
            do {
                Result<Reply> scanned = command({"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"},
                                                "SCAN");
                if (!scanned.ok()) return scanned.status();
                const redisReply* r = scanned.value().get();
                if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) break;
                cursor.assign(r->element[0]->str, r->element[0]->len);
                for (size_t i = 0; i < r->element[1]->elements; ++i) {
                    const redisReply* k = r->element[1]->element[i];
                    Result<Reply> deleted = command({"DEL", std::string_view(k->str, k->len)}, "DEL");
                    if (!deleted.ok()) return deleted.status();
                }
            } while (cursor != "0");
            return Status::success();
        }
        std::vector<std::string> keys;
        for (uint32_t l = 0; l < layers; ++l) keys.push_back(layer_key(key, l));
        std::vector<std::string_view> args = {"DEL"};
        for (const std::string& k : keys) args.push_back(k);
        Result<std::vector<Reply>> deleted = pipeline({args}, "DEL");
        return deleted.ok() ? Status::success() : deleted.status();
    }

    // A streaming reader's connection: an idle one, or a new one (nullptr and the problem, as
    // connect() reports it, when Redis cannot be reached now). `fresh` skips the pool.
    redisContext* stream_connection(bool fresh, Status& problem) {
        {
            std::lock_guard lock(mutex);
            if (!fresh && !stream_pool.empty()) {
                redisContext* c = stream_pool.back();
                stream_pool.pop_back();
                return c;
            }
            if (std::chrono::steady_clock::now() < next_connect) {
                ++stats.unavailable;
                problem = Status(StatusCode::io_error, location() + ": unreachable (next retry within " +
                                                           std::to_string(options.retry_interval.count()) + " ms)");
                return nullptr;
            }
        }
        redisContext* c = nullptr;
        const std::string why = open_context(c);
        if (why.empty()) return c;
        if (c != nullptr) redisFree(c);
        std::lock_guard lock(mutex);
        next_connect = std::chrono::steady_clock::now() + options.retry_interval;
        ++stats.unavailable;
        problem = Status(StatusCode::io_error, location() + ": cannot connect: " + why);
        if (!reported_down) {
            warn(Status(problem.code(), problem.message() + "; chunks are computed until it is back"));
            reported_down = true;
        }
        return nullptr;
    }

    void return_stream_connection(redisContext* c) {
        std::lock_guard lock(mutex);
        if (stream_pool.size() < kStreamPool) {
            stream_pool.push_back(c);
        } else {
            redisFree(c);
        }
    }

    // The streaming reader of one chunk (on the stream's thread): the manifest, then the layers
    // with a few GETs in flight on the reader's own connection, each checked against the
    // manifest's size and XXH3 and published as it arrives. Whatever goes wrong ends the stream
    // as a miss: reported, and (damage) the chunk's keys deleted as get() does.
    void stream_chunk(const ChunkKey& key, ChunkStream& stream) {
        const std::string manifest_name = manifest_key_of(key);
        redisContext* c = nullptr;
        auto miss = [&](Status why) {
            if (c != nullptr) redisFree(c);  // replies may be in flight: never back to the pool
            c = nullptr;
            {
                std::lock_guard lock(mutex);
                ++stats.misses;
            }
            stream.fail(std::move(why));
        };
        auto unreachable = [&](const std::string& during) {
            const std::string why = c != nullptr && c->err != 0 ? c->errstr : "no reply";
            Status status(StatusCode::io_error, location() + ": " + during + " failed: " + why);
            {
                std::lock_guard lock(mutex);
                ++stats.unavailable;
                if (!reported_down) {
                    warn(Status(status.code(), status.message() + "; read as a miss, reconnecting"));
                    reported_down = true;
                }
            }
            miss(status);
        };
        auto damaged = [&](const Status& problem, uint32_t layers) {
            Status status(problem.code(), manifest_name + ": " + problem.message() + "; read as a miss and deleted");
            {
                std::lock_guard lock(mutex);
                ++stats.corrupt;
                warn(status);
                Status erased = erase_keys(key, layers);
                if (!erased.ok()) warn(erased);
            }
            miss(status);
        };
        auto get = [&](std::string_view name) {
            const char* argv[2] = {"GET", name.data()};
            const size_t lengths[2] = {3, name.size()};
            return Reply(static_cast<redisReply*>(redisCommandArgv(c, 2, argv, lengths)));
        };

        Status problem;
        Reply reply;
        // A pooled connection may have died with a Redis restart: one more try on a new one.
        for (bool fresh : {false, true}) {
            c = stream_connection(fresh, problem);
            if (c == nullptr) return miss(problem);
            reply = get(manifest_name);
            if (reply) break;
            redisFree(c);
            c = nullptr;
        }
        if (!reply) return unreachable("GET of the manifest");
        if (reply->type == REDIS_REPLY_NIL) {
            return_stream_connection(c);
            c = nullptr;
            return miss(Status(StatusCode::ok, manifest_name + ": absent"));
        }
        if (reply->type != REDIS_REPLY_STRING) {
            const std::string error = reply->type == REDIS_REPLY_ERROR ? std::string(reply->str, reply->len) : std::string();
            if (reply->type == REDIS_REPLY_ERROR && !error.starts_with("WRONGTYPE")) {
                Status status(StatusCode::io_error, manifest_name + ": GET refused: " + error);
                {
                    std::lock_guard lock(mutex);
                    ++stats.unavailable;
                    warn(status);
                }
                return miss(status);
            }
            return damaged(Status(StatusCode::corrupt, "not a string value" + (error.empty() ? std::string() : " (" + error + ")")), 0);
        }
        Result<Manifest> decoded = decode_manifest(std::string_view(reply->str, reply->len), options.max_image_bytes);
        if (!decoded.ok()) return damaged(decoded.status(), 0);
        const Manifest& manifest = decoded.value();
        const auto layers = static_cast<uint32_t>(manifest.layers.size());
        Result<ChunkImageBuffer> buffer = ChunkImageBuffer::allocate(manifest.image_bytes);
        if (!buffer.ok()) {
            warn(Status(buffer.status().code(), manifest_name + ": " + buffer.status().message()));
            return miss(buffer.status());
        }
        std::memcpy(buffer.value().bytes().data(), manifest.header.data(), manifest.header.size());
        Result<ChunkImageBuffer::Streaming> started = std::move(buffer).value().start_streaming(key);
        if (!started.ok()) return damaged(started.status(), layers);
        if (started.value().view.layout().layers != layers)
            return damaged(Status(StatusCode::corrupt, "the manifest's layer count is not the header's"), layers);
        const std::span<std::byte> memory = started.value().memory;
        stream.publish_header(started.value().view);
        if (options.stream_hook_for_testing) options.stream_hook_for_testing(key);

        std::vector<std::string> names;
        for (uint32_t l = 0; l < layers; ++l) names.push_back(layer_key_of(key, l));
        uint32_t sent = 0;
        auto send_up_to = [&](uint32_t end) {
            for (; sent < std::min(end, layers); ++sent) {
                const char* argv[2] = {"GET", names[sent].data()};
                const size_t lengths[2] = {3, names[sent].size()};
                if (redisAppendCommandArgv(c, 2, argv, lengths) != REDIS_OK) return false;
            }
            return true;
        };
        const uint32_t in_flight = std::max<uint32_t>(1, options.stream_in_flight);
        if (!send_up_to(in_flight)) return unreachable("GET of the layers");
        for (uint32_t l = 0; l < layers; ++l) {
            if (stream.cancelled()) return miss(Status(StatusCode::ok, manifest_name + ": stream cancelled"));
            void* raw = nullptr;
            if (redisGetReply(c, &raw) != REDIS_OK || raw == nullptr) return unreachable("GET of layer " + std::to_string(l));
            const Reply value(static_cast<redisReply*>(raw));
            // The next GET goes out before this layer is checked and copied.
            if (!send_up_to(l + 1 + in_flight)) return unreachable("GET of the layers");
            const Manifest::Layer& expected = manifest.layers[l];
            const std::string where = "layer " + std::to_string(l) + " (" + names[l] + ")";
            if (value->type == REDIS_REPLY_NIL)
                return damaged(Status(StatusCode::corrupt, where + " is missing (evicted?)"), layers);
            if (value->type != REDIS_REPLY_STRING || value->len != expected.bytes)
                return damaged(Status(StatusCode::corrupt,
                                      where + " is " +
                                          (value->type == REDIS_REPLY_STRING
                                               ? std::to_string(value->len) + " bytes, the manifest says " + std::to_string(expected.bytes)
                                               : std::string("not a string"))),
                               layers);
            if (XXH3_64bits(value->str, value->len) != expected.checksum)
                return damaged(Status(StatusCode::corrupt, where + ": checksum mismatch"), layers);
            std::memcpy(memory.data() + expected.offset, value->str, value->len);
            if (l + 1 < layers) stream.publish_layers(l + 1);
        }
        seal_streamed_image(memory);
        return_stream_connection(c);
        c = nullptr;
        {
            std::lock_guard lock(mutex);
            ++stats.hits;
            stats.bytes_read += manifest.image_bytes;
        }
        stream.publish_layers(layers);  // complete: on_complete callbacks run here
    }
};

std::string RedisChunkBackend::manifest_key(const ChunkKey& key) { return manifest_key_of(key); }

std::string RedisChunkBackend::layer_key(const ChunkKey& key, uint32_t layer) { return layer_key_of(key, layer); }

std::shared_ptr<ChunkStream> RedisChunkBackend::get_streamed(const ChunkKey& key) {
    auto stream = std::make_shared<ChunkStream>();
    Impl* impl = impl_.get();
    stream->start_reader([impl, key](ChunkStream& s) { impl->stream_chunk(key, s); });
    return stream;
}

RedisChunkBackend::RedisChunkBackend(RedisOptions options) : impl_(std::make_unique<Impl>()) {
    impl_->options = std::move(options);
    std::lock_guard lock(impl_->mutex);
    (void)impl_->connect();  // reported through the warning hook when it fails
}

RedisChunkBackend::~RedisChunkBackend() = default;

bool RedisChunkBackend::available() {
    std::lock_guard lock(impl_->mutex);
    return impl_->connect().ok();
}

std::optional<ChunkView> RedisChunkBackend::get(const ChunkKey& key) {
    Impl& impl = *impl_;
    std::lock_guard lock(impl.mutex);
    const std::string manifest_name = manifest_key(key);
    auto miss = [&]() -> std::optional<ChunkView> {
        ++impl.stats.misses;
        return std::nullopt;
    };
    // A damaged chunk: reported, its keys deleted so that the recomputed chunk is stored anew.
    auto damaged = [&](const Status& problem, uint32_t layers) -> std::optional<ChunkView> {
        ++impl.stats.corrupt;
        impl.warn(Status(problem.code(), manifest_name + ": " + problem.message() +
                                             "; read as a miss and deleted"));
        Status erased = impl.erase_keys(key, layers);
        if (!erased.ok()) impl.warn(erased);
        return miss();
    };
    Result<Reply> fetched = impl.command({"GET", manifest_name}, "GET");
    if (!fetched.ok()) return miss();
    const redisReply* reply = fetched.value().get();
    if (reply->type == REDIS_REPLY_NIL) return miss();
    if (reply->type != REDIS_REPLY_STRING) {
        const std::string_view error = reply->type == REDIS_REPLY_ERROR ? std::string_view(reply->str, reply->len)
                                                                          : std::string_view();
        // WRONGTYPE: something else (a list, a hash) holds the key: foreign, replaced like damage.
        if (reply->type == REDIS_REPLY_ERROR && !error.starts_with("WRONGTYPE")) {
            ++impl.stats.unavailable;
            impl.warn(Status(StatusCode::io_error, manifest_name + ": GET refused: " +
                                                       std::string(reply->str, reply->len)));
            return miss();
        }
        return damaged(Status(StatusCode::corrupt, "not a string value" +
                                                       (error.empty() ? std::string() : " (" + std::string(error) + ")")),
                       0);
    }
    const std::string_view manifest_value(reply->str, reply->len);
    Result<Manifest> decoded = decode_manifest(manifest_value, impl.options.max_image_bytes);
    if (!decoded.ok()) return damaged(decoded.status(), 0);
    const Manifest& manifest = decoded.value();
    const auto layers = static_cast<uint32_t>(manifest.layers.size());

    std::vector<std::string> names;
    for (uint32_t l = 0; l < layers; ++l) names.push_back(layer_key(key, l));
    std::vector<std::vector<std::string_view>> commands;
    for (const std::string& name : names) commands.push_back({"GET", name});
    Result<std::vector<Reply>> values = impl.pipeline(commands, "GET of the layers");
    if (!values.ok()) return miss();

    Result<ChunkImageBuffer> buffer = ChunkImageBuffer::allocate(manifest.image_bytes);
    if (!buffer.ok()) {
        impl.warn(Status(buffer.status().code(), manifest_name + ": " + buffer.status().message()));
        return miss();
    }
    std::span<std::byte> image = buffer.value().bytes();
    std::memcpy(image.data(), manifest.header.data(), manifest.header.size());
    for (uint32_t l = 0; l < layers; ++l) {
        const redisReply* value = values.value()[l].get();
        const Manifest::Layer& expected = manifest.layers[l];
        const std::string where = "layer " + std::to_string(l) + " (" + names[l] + ")";
        if (value->type == REDIS_REPLY_NIL) {
            return damaged(Status(StatusCode::corrupt, where + " is missing (evicted?)"), layers);
        }
        if (value->type != REDIS_REPLY_STRING || value->len != expected.bytes) {
            return damaged(Status(StatusCode::corrupt,
                                  where + " is " +
                                      (value->type == REDIS_REPLY_STRING
                                           ? std::to_string(value->len) + " bytes, the manifest says " +
                                                 std::to_string(expected.bytes)
                                           : std::string("not a string"))),
                           layers);
        }
        if (XXH3_64bits(value->str, value->len) != expected.checksum) {
            return damaged(Status(StatusCode::corrupt, where + ": checksum mismatch"), layers);
        }
        std::memcpy(image.data() + expected.offset, value->str, value->len);
    }
    Result<ChunkView> view = std::move(buffer).value().finish(key, /*verify_payload=*/true);
    if (!view.ok()) return damaged(view.status(), layers);
    ++impl.stats.hits;
    impl.stats.bytes_read += manifest.image_bytes;
    return std::move(view).value();
}

Status RedisChunkBackend::put(const ChunkKey& key, const StoredChunk& chunk) {
    Result<EncodedChunk> encoded = encode_chunk(key, chunk);
    if (!encoded.ok()) return encoded.status();
    const EncodedChunk& image = encoded.value();
    const std::string manifest = encode_manifest(image);
    const std::string manifest_name = manifest_key(key);
    Impl& impl = *impl_;
    std::lock_guard lock(impl.mutex);

    Result<Reply> exists = impl.command({"EXISTS", manifest_name}, "EXISTS");
    if (!exists.ok()) return exists.status();
    if (exists.value()->type == REDIS_REPLY_INTEGER && exists.value()->integer == 1) {
        return Status::success();  // stored already (a damaged one is deleted by the get that finds it)
    }
    const std::string ttl = std::to_string(impl.options.ttl_seconds);
    std::vector<std::string> names;
    for (uint32_t l = 0; l < image.layers.size(); ++l) names.push_back(layer_key(key, l));
    std::vector<std::vector<std::string_view>> commands;
    for (size_t l = 0; l < image.layers.size(); ++l) {
        const ByteRange& range = image.layers[l];
        std::string_view bytes(reinterpret_cast<const char*>(image.image.data()) + range.offset,
                               range.bytes);
        if (impl.options.ttl_seconds > 0) {
            commands.push_back({"SET", names[l], bytes, "EX", ttl});
        } else {
            commands.push_back({"SET", names[l], bytes});
        }
    }
    auto refused = [&](const std::vector<Reply>& replies) -> std::string {
        for (const Reply& reply : replies) {
            if (reply->type == REDIS_REPLY_ERROR) return std::string(reply->str, reply->len);
        }
        return {};
    };
    Result<std::vector<Reply>> written = impl.pipeline(commands, "SET of the layers");
    if (!written.ok()) return written.status();
    if (std::string why = refused(written.value()); !why.empty()) {
        return {StatusCode::io_error, manifest_name + ": Redis refused a layer: " + why};
    }
    // The manifest last: only now is the chunk visible.
    Result<std::vector<Reply>> sealed =
        impl.options.ttl_seconds > 0
            ? impl.pipeline({{"SET", manifest_name, manifest, "EX", ttl}}, "SET of the manifest")
            : impl.pipeline({{"SET", manifest_name, manifest}}, "SET of the manifest");
    if (!sealed.ok()) return sealed.status();
    if (std::string why = refused(sealed.value()); !why.empty()) {
        return {StatusCode::io_error, manifest_name + ": Redis refused the manifest: " + why};
    }
    ++impl.stats.puts;
    impl.stats.bytes_written += image.image.size();
    return Status::success();
}

Status RedisChunkBackend::erase(const ChunkKey& key) {
    std::lock_guard lock(impl_->mutex);
    return impl_->erase_keys(key, 0);
}

Result<std::vector<ChunkDigest>> RedisChunkBackend::list() {
    std::lock_guard lock(impl_->mutex);
    std::vector<ChunkDigest> digests;
    std::string cursor = "0";
    const std::string pattern = std::string(kKeyPrefix) + "*:manifest";
    do {
        Result<Reply> scanned = impl_->command({"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"},
                                               "SCAN");
        if (!scanned.ok()) return scanned.status();
        const redisReply* r = scanned.value().get();
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            return Status(StatusCode::io_error, impl_->location() + ": unexpected SCAN reply");
        }
        cursor.assign(r->element[0]->str, r->element[0]->len);
        for (size_t i = 0; i < r->element[1]->elements; ++i) {
            std::string_view name(r->element[1]->element[i]->str, r->element[1]->element[i]->len);
            // <prefix><16 hex>:{<64 hex>}:manifest
            const size_t digest_at = kKeyPrefix.size() + 18;
            if (name.size() < digest_at + 64) continue;
            if (auto digest = parse_digest_hex(name.substr(digest_at, 64))) digests.push_back(*digest);
        }
    } while (cursor != "0");
    return digests;
}

std::optional<std::vector<int32_t>> RedisChunkBackend::tokens_of(const ChunkDigest& digest,
                                                                  std::string_view model_fingerprint) {
    ChunkKey probe;
    probe.digest = digest;
    probe.model_fingerprint = std::string(model_fingerprint);
    std::vector<int32_t> tokens;
    {
        std::lock_guard lock(impl_->mutex);
        Result<Reply> fetched = impl_->command({"GET", manifest_key(probe)}, "GET");
        if (!fetched.ok() || fetched.value()->type != REDIS_REPLY_STRING) return std::nullopt;
        Result<Manifest> manifest = decode_manifest(
            std::string_view(fetched.value()->str, fetched.value()->len), impl_->options.max_image_bytes);
        if (!manifest.ok()) return std::nullopt;  // reported by the get() that follows
        // The token ids sit in the header right after its fixed part (docs/STORE.md); the
        // manifest's checksum covers them, the digest check below and get() the rest.
        const std::string_view header = manifest.value().header;
        constexpr size_t kTokenCountAt = format::field::token_count, kTokensAt = format::kFixedHeaderBytes;
        if (header.size() < kTokensAt) return std::nullopt;
        const uint32_t count = load<uint32_t>(header, kTokenCountAt);
        if (count == 0 || (header.size() - kTokensAt) / 4 < count) return std::nullopt;
        tokens.resize(count);
        std::memcpy(tokens.data(), header.data() + kTokensAt, size_t{count} * 4);
    }
    ChunkKey key = make_chunk_key(model_fingerprint, tokens);
    if (key.digest != digest) return std::nullopt;
    // The whole chunk verified, so that an id resolves only to a chunk that can be used.
    if (!get(key)) return std::nullopt;
    return tokens;
}

void RedisChunkBackend::warn(const Status& status) const { impl_->warn(status); }

std::string RedisChunkBackend::location() const { return impl_->location(); }

std::string RedisChunkBackend::location_of(const ChunkKey& key) const {
    return location() + " " + manifest_key(key);
}

std::vector<BackendStats> RedisChunkBackend::backend_stats() const {
    std::lock_guard lock(impl_->mutex);
    BackendStats stats = impl_->stats;
    stats.tier = "redis";
    return {stats};
}

}  // namespace kvfuse::store
