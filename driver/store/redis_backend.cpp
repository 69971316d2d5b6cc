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
constexpr size_t kClusterSlots = 16384;

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

// An error reply other than WRONGTYPE (CLUSTERDOWN, LOADING, OOM, ...):
// Redis refused the command, the value is not known to be damaged. ok for any other reply.
Status refusal(const redisReply* reply, const std::string& where) {
    if (reply->type != REDIS_REPLY_ERROR) return Status::success();
    const std::string_view error(reply->str, reply->len);
    if (error.starts_with("WRONGTYPE")) return Status::success();
    return Status(StatusCode::io_error, where + ": GET refused: " + std::string(error));
}

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
                      "'" + text + "' is not a Redis URL (redis://host[:port][,host[:port]...][/db]): " + why);
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
    auto number = [](std::string_view digits, int low, int high, int& out) {
        const char* end = digits.data() + digits.size();
        auto [ptr, error] = std::from_chars(digits.data(), end, out);
        return error == std::errc() && ptr == end && out >= low && out <= high;
    };
    // host[:port], comma-separated: one node, or a cluster's seeds.
    std::vector<std::pair<std::string, int>> hosts;
    for (size_t start = 0;;) {
        const size_t comma = url.find(',', start);
        std::string_view host = url.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
        std::string_view port;
        if (const size_t colon = host.rfind(':'); colon != std::string_view::npos) {
            port = host.substr(colon + 1);
            host = host.substr(0, colon);
            if (port.empty()) return invalid("no port after ':'");
        }
        if (host.empty()) return invalid("no host");
        int number_port = 6379;
        if (!port.empty() && !number(port, 1, 65535, number_port)) {
            return invalid("port '" + std::string(port) + "' is not in 1..65535");
        }
        hosts.emplace_back(std::string(host), number_port);
        if (comma == std::string_view::npos) break;
        start = comma + 1;
    }
    options.host = hosts.front().first;
    options.port = hosts.front().second;
    options.more_seeds.assign(hosts.begin() + 1, hosts.end());
    if (!db.empty() && !number(db, 0, 1 << 20, options.db)) {
        return invalid("database '" + std::string(db) + "' is not a number >= 0");
    }
    if (!options.more_seeds.empty() && options.db != 0) {
        return invalid("several hosts name a Redis Cluster, which has database 0 only");
    }
    return options;
}

uint16_t redis_cluster_slot(std::string_view key) {
    if (const size_t open = key.find('{'); open != std::string_view::npos) {
        const size_t close = key.find('}', open + 1);
        if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
    }
    uint16_t crc = 0;  // CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0
    for (const char ch : key) {
        crc = static_cast<uint16_t>(crc ^ (static_cast<uint16_t>(static_cast<uint8_t>(ch)) << 8));
        for (int bit = 0; bit < 8; ++bit) {
            crc = (crc & 0x8000) != 0 ? static_cast<uint16_t>((crc << 1) ^ 0x1021) : static_cast<uint16_t>(crc << 1);
        }
    }
    return static_cast<uint16_t>(crc & (kClusterSlots - 1));
}

struct RedisChunkBackend::Impl {
    // One Redis node: its main connection (commands under the lock) and the idle connections of
    // the streaming readers (each stream reads on one of its own, so that its layers do not wait
    // behind other commands; at most kStreamPool kept).
    struct Node {
        std::string host;
        int port = 0;
        redisContext* context = nullptr;
        std::vector<redisContext*> stream_pool;
        std::chrono::steady_clock::time_point next_connect{};
        bool reported_down = false;
    };
    enum class Mode { unknown, single, cluster };
    static constexpr size_t kStreamPool = 4;

    RedisOptions options;
    mutable std::mutex mutex;  // every node's main connection, the map, the counters
    // The seeds first (nodes[0]: the URL's first host, the only node of a single Redis), then
    // the cluster's nodes as CLUSTER SLOTS or a redirect names them. Never shrinks: the Node
    // objects stay where they are while stream readers use them.
    std::vector<std::unique_ptr<Node>> nodes;
    size_t seeds = 1;
    Mode mode = Mode::unknown;  // asked of the first seed that answers (INFO cluster)
    std::vector<int32_t> slot_owner = std::vector<int32_t>(kClusterSlots, -1);  // index in nodes
    bool map_stale = true;
    std::chrono::steady_clock::time_point next_refresh{};
    BackendStats stats;

    ~Impl() {
        for (const auto& node : nodes) {
            if (node->context != nullptr) redisFree(node->context);
            for (redisContext* c : node->stream_pool) redisFree(c);
        }
    }

    std::string location() const {
        std::string hosts = options.host + ":" + std::to_string(options.port);
        for (const auto& [host, port] : options.more_seeds) hosts += "," + host + ":" + std::to_string(port);
        return "redis://" + hosts + "/" + std::to_string(options.db);
    }

    std::string location(const Node& node) const {
        return "redis://" + node.host + ":" + std::to_string(node.port) + "/" + std::to_string(options.db);
    }

    void warn(const Status& status) const {
        if (options.warning) {
            options.warning(status);
        } else {
            std::fprintf(stderr, "kvfuse store warning: %s\n", status.to_string().c_str());
        }
    }

    // Under the lock: the index of host:port in nodes, added when new.
    int32_t node_index(const std::string& host, int port) {
        for (size_t i = 0; i < nodes.size(); ++i) {
            if (nodes[i]->host == host && nodes[i]->port == port) return static_cast<int32_t>(i);
        }
        auto node = std::make_unique<Node>();
        node->host = host;
        node->port = port;
        nodes.push_back(std::move(node));
        return static_cast<int32_t>(nodes.size() - 1);
    }

    // A new connection to `node`, set up (timeouts, AUTH, SELECT): "" and `c`, or the problem
    // (and `c` whatever it got, for redisFree). Needs no lock: it reads only the options and
    // the node's address, which never change.
    std::string open_context(const Node& node, redisContext*& c) const {
        c = redisConnectWithTimeout(node.host.c_str(), node.port, to_timeval(options.connect_timeout));
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

    // Under the lock. A connection to `node`, or an unavailable Status (reported once per outage).
    Status connect(Node& node) {
        if (node.context != nullptr) return Status::success();
        const auto now = std::chrono::steady_clock::now();
        if (now < node.next_connect) {
            return {StatusCode::io_error, location(node) + ": unreachable (next retry within " +
                                              std::to_string(options.retry_interval.count()) +
                                              " ms)"};
        }
        redisContext* c = nullptr;
        std::string problem = open_context(node, c);
        if (!problem.empty()) {
            if (c != nullptr) redisFree(c);
            node.next_connect = now + options.retry_interval;
            ++stats.unavailable;
            map_stale = true;  // a cluster may have moved this node's slots to a replica
            Status status(StatusCode::io_error, location(node) + ": cannot connect: " + problem);
            if (!node.reported_down) {
                warn(Status(status.code(), status.message() +
                                               "; chunks are computed until it is back (retried "
                                               "every " +
                                               std::to_string(options.retry_interval.count()) +
                                               " ms)"));
                node.reported_down = true;
            }
            return status;
        }
        node.context = c;
        if (node.reported_down) {
            warn(Status(StatusCode::ok, location(node) + ": connected again"));
            node.reported_down = false;
        }
        return Status::success();
    }

    // Under the lock: the connection to `node` failed mid-command; the next call reconnects at once.
    Status drop(Node& node, const std::string& during) {
        std::string why = node.context != nullptr && node.context->err != 0 ? node.context->errstr : "no reply";
        if (node.context != nullptr) redisFree(node.context);
        node.context = nullptr;
        node.next_connect = {};
        ++stats.unavailable;
        map_stale = true;
        Status status(StatusCode::io_error, location(node) + ": " + during + " failed: " + why);
        if (!node.reported_down) {
            warn(Status(status.code(), status.message() + "; reconnecting"));
            node.reported_down = true;
        }
        return status;
    }

    // Under the lock: several commands sent to `node` at once (argument by argument,
    // binary-safe), their replies in order.
    Result<std::vector<Reply>> pipeline_on(Node& node, const std::vector<std::vector<std::string_view>>& commands,
                                           const std::string& what) {
        Status connected = connect(node);
        if (!connected.ok()) return connected;
        for (const auto& args : commands) {
            std::vector<const char*> argv;
            std::vector<size_t> lengths;
            for (std::string_view arg : args) {
                argv.push_back(arg.data());
                lengths.push_back(arg.size());
            }
            if (redisAppendCommandArgv(node.context, static_cast<int>(argv.size()), argv.data(),
                                       lengths.data()) != REDIS_OK) {
                return drop(node, what);
            }
        }
        std::vector<Reply> replies;
        for (size_t i = 0; i < commands.size(); ++i) {
            void* raw = nullptr;
            if (redisGetReply(node.context, &raw) != REDIS_OK || raw == nullptr) return drop(node, what);
            replies.emplace_back(static_cast<redisReply*>(raw));
        }
        return replies;
    }

    // Under the lock: one command on `node`; after ASKING when `asking` (an ASK redirect to
    // the node importing the key's slot).
    Result<Reply> command_on(Node& node, const std::vector<std::string_view>& args, const std::string& what,
                             bool asking = false) {
        std::vector<std::vector<std::string_view>> commands;
        if (asking) commands.push_back({"ASKING"});
        commands.push_back(args);
        Result<std::vector<Reply>> replies = pipeline_on(node, commands, what);
        if (!replies.ok()) return replies.status();
        return std::move(replies.value().back());
    }

    // Under the lock: one node or a cluster, asked once of the first seed that answers.
    Status resolve_mode() {
        if (mode != Mode::unknown) return Status::success();
        Status last;
        for (size_t i = 0; i < seeds; ++i) {
            Result<Reply> info = command_on(*nodes[i], {"INFO", "cluster"}, "INFO cluster");
            if (!info.ok()) {
                last = info.status();
                continue;
            }
            const redisReply* r = info.value().get();
            // A Redis that refuses INFO (renamed by its operator) is taken for a single node.
            if (r->type == REDIS_REPLY_STRING &&
                std::string_view(r->str, r->len).find("cluster_enabled:1") != std::string_view::npos) {
                mode = Mode::cluster;
                refresh_slots();
                return Status::success();
            }
            if (seeds > 1) {
                warn(Status(StatusCode::invalid_argument,
                            location(*nodes[i]) + " is not a Redis Cluster node: used alone, the other hosts ignored"));
            }
            std::swap(nodes[0], nodes[i]);  // a single Redis: nodes[0] serves every key
            mode = Mode::single;
            return Status::success();
        }
        return last;
    }

    // Under the lock: the slot map from CLUSTER SLOTS, asked of the connected nodes first, then
    // of the others; when none answers, the old map stays and the next try waits a retry
    // interval.
    void refresh_slots() {
        next_refresh = std::chrono::steady_clock::now() + options.retry_interval;
        std::vector<Node*> order;
        for (const auto& node : nodes) {
            if (node->context != nullptr) order.push_back(node.get());
        }
        for (const auto& node : nodes) {
            if (node->context == nullptr) order.push_back(node.get());
        }
        for (Node* asked : order) {
            Result<Reply> slots = command_on(*asked, {"CLUSTER", "SLOTS"}, "CLUSTER SLOTS");
            if (!slots.ok() || slots.value()->type != REDIS_REPLY_ARRAY) continue;
            const redisReply* r = slots.value().get();
            std::vector<int32_t> owner(kClusterSlots, -1);
            bool readable = true;
            // Each range: first slot, last slot, then the master [host, port, id, ...], then replicas.
            for (size_t i = 0; i < r->elements && readable; ++i) {
                const redisReply* range = r->element[i];
                readable = range->type == REDIS_REPLY_ARRAY && range->elements >= 3 &&
                           range->element[0]->type == REDIS_REPLY_INTEGER &&
                           range->element[1]->type == REDIS_REPLY_INTEGER &&
                           range->element[2]->type == REDIS_REPLY_ARRAY && range->element[2]->elements >= 2 &&
                           range->element[2]->element[0]->type == REDIS_REPLY_STRING &&
                           range->element[2]->element[1]->type == REDIS_REPLY_INTEGER;
                if (!readable) break;
                const long long first = range->element[0]->integer, last = range->element[1]->integer;
                const long long port = range->element[2]->element[1]->integer;
                readable = first >= 0 && first <= last && last < static_cast<long long>(kClusterSlots) && port > 0 &&
                           port <= 65535;
                if (!readable) break;
                std::string host(range->element[2]->element[0]->str, range->element[2]->element[0]->len);
                if (host.empty() || host == "?") host = asked->host;  // "the address you reached me at"
                const int32_t index = node_index(host, static_cast<int>(port));
                std::fill(owner.begin() + first, owner.begin() + last + 1, index);
            }
            if (!readable) {
                warn(Status(StatusCode::io_error, location(*asked) + ": unreadable CLUSTER SLOTS reply"));
                continue;
            }
            slot_owner = std::move(owner);
            map_stale = false;
            return;
        }
    }

    // Under the lock: the node that serves `key` (its slot's owner in a cluster), or nullptr
    // and the reason when none can be named now.
    Node* route(std::string_view key, Status& why) {
        if (Status resolved = resolve_mode(); !resolved.ok()) {
            why = resolved;
            return nullptr;
        }
        if (mode == Mode::single) return nodes[0].get();
        if (map_stale && std::chrono::steady_clock::now() >= next_refresh) refresh_slots();
        const uint16_t slot = redis_cluster_slot(key);
        if (slot_owner[slot] < 0) {
            ++stats.unavailable;
            map_stale = true;  // a hole in the map (a cluster still forming): read again (rate-limited)
            why = Status(StatusCode::io_error, location() + ": no node serves slot " + std::to_string(slot) +
                                                   " (CLUSTER SLOTS)");
            return nullptr;
        }
        return nodes[static_cast<size_t>(slot_owner[slot])].get();
    }

    // Under the lock: `reply` answered `args`; while it is a MOVED or an ASK redirect, the
    // command again on the node it names (after ASKING for ASK), at most max_redirects times.
    // MOVED also moves the slot in the map and has the whole map asked again.
    Result<Reply> follow(Reply reply, const std::vector<std::string_view>& args, const std::string& what) {
        for (uint32_t hops = 0;; ++hops) {
            if (reply->type != REDIS_REPLY_ERROR) return reply;
            const std::string error(reply->str, reply->len);
            const bool moved = error.starts_with("MOVED "), ask = error.starts_with("ASK ");
            if (!moved && !ask) return reply;
            if (hops == options.max_redirects) {
                ++stats.unavailable;
                Status status(StatusCode::io_error, location() + ": " + what + ": more than " +
                                                        std::to_string(options.max_redirects) +
                                                        " redirects (last: " + error + ")");
                warn(status);
                return status;
            }
            // "MOVED <slot> <host>:<port>", "ASK <slot> <host>:<port>"
            const size_t space = error.find(' ', moved ? 6 : 4), colon = error.rfind(':');
            int slot = -1, port = 0;
            const bool readable =
                space != std::string::npos && colon != std::string::npos && colon > space + 1 &&
                std::from_chars(error.data() + (moved ? 6 : 4), error.data() + space, slot).ec == std::errc() &&
                std::from_chars(error.data() + colon + 1, error.data() + error.size(), port).ec == std::errc() &&
                slot >= 0 && slot < static_cast<int>(kClusterSlots) && port > 0 && port <= 65535;
            if (!readable) {
                ++stats.unavailable;
                return Status(StatusCode::io_error, location() + ": " + what + ": unreadable redirect: " + error);
            }
            ++stats.redirects;
            const int32_t index = node_index(error.substr(space + 1, colon - space - 1), port);
            if (moved) {
                slot_owner[static_cast<size_t>(slot)] = index;
                map_stale = true;
            }
            Result<Reply> again = command_on(*nodes[static_cast<size_t>(index)], args, what, /*asking=*/ask);
            if (!again.ok()) return again.status();
            reply = std::move(again).value();
        }
    }

    // Under the lock: one command on the node serving its key (args[1]), redirects followed.
    Result<Reply> command(std::initializer_list<std::string_view> list, const std::string& what) {
        const std::vector<std::string_view> args(list);
        Status why;
        Node* node = route(args[1], why);
        if (node == nullptr) return why;
        Result<Reply> reply = command_on(*node, args, what);
        if (!reply.ok()) return reply;
        return follow(std::move(reply).value(), args, what);
    }

    // Under the lock: commands on keys of one slot (one chunk's) sent at once to the node
    // serving it, their replies in order; a redirected one is followed on its own.
    Result<std::vector<Reply>> pipeline(const std::vector<std::vector<std::string_view>>& commands,
                                        const std::string& what) {
        Status why;
        Node* node = route(commands.front()[1], why);
        if (node == nullptr) return why;
        Result<std::vector<Reply>> replies = pipeline_on(*node, commands, what);
        if (!replies.ok()) return replies;
        for (size_t i = 0; i < commands.size(); ++i) {
            Result<Reply> followed = follow(std::move(replies.value()[i]), commands[i], what);
            if (!followed.ok()) return followed.status();
            replies.value()[i] = std::move(followed).value();
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
            // Unknown layer count: every layer key of the chunk, on the node of its slot.
            Status why;
            Node* node = route(manifest, why);
            if (node == nullptr) return why;
            std::string cursor = "0";
            const std::string pattern = chunk_prefix(key) + ":layer:*";
            do {
                Result<Reply> scanned = command_on(*node, {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"}, "SCAN");
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
        // One DEL a key: a DEL of several keys fails (TRYAGAIN) while their slot migrates.
        std::vector<std::vector<std::string_view>> commands;
        for (const std::string& k : keys) commands.push_back({"DEL", k});
        Result<std::vector<Reply>> deleted = pipeline(commands, "DEL");
        return deleted.ok() ? Status::success() : deleted.status();
    }

    // A streaming reader's connection to `node`: an idle one, or a new one (nullptr and the
    // problem, as connect() reports it, when the node cannot be reached now). `fresh` skips the
    // pool.
    redisContext* stream_connection(Node& node, bool fresh, Status& problem) {
        {
            std::lock_guard lock(mutex);
            if (!fresh && !node.stream_pool.empty()) {
                redisContext* c = node.stream_pool.back();
                node.stream_pool.pop_back();
                return c;
            }
            if (std::chrono::steady_clock::now() < node.next_connect) {
                ++stats.unavailable;
                problem = Status(StatusCode::io_error, location(node) + ": unreachable (next retry within " +
                                                           std::to_string(options.retry_interval.count()) + " ms)");
                return nullptr;
            }
        }
        redisContext* c = nullptr;
        const std::string why = open_context(node, c);
        if (why.empty()) return c;
        if (c != nullptr) redisFree(c);
        std::lock_guard lock(mutex);
        node.next_connect = std::chrono::steady_clock::now() + options.retry_interval;
        ++stats.unavailable;
        map_stale = true;
        problem = Status(StatusCode::io_error, location(node) + ": cannot connect: " + why);
        if (!node.reported_down) {
            warn(Status(problem.code(), problem.message() + "; chunks are computed until it is back"));
            node.reported_down = true;
        }
        return nullptr;
    }

    void return_stream_connection(Node& node, redisContext* c) {
        std::lock_guard lock(mutex);
        if (node.stream_pool.size() < kStreamPool) {
            node.stream_pool.push_back(c);
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
        Node* node = nullptr;  // the node serving the chunk's slot
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
            Status status(StatusCode::io_error, location(*node) + ": " + during + " failed: " + why);
            {
                std::lock_guard lock(mutex);
                ++stats.unavailable;
                map_stale = true;
                if (!node->reported_down) {
                    warn(Status(status.code(), status.message() + "; read as a miss, reconnecting"));
                    node->reported_down = true;
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
        // A MOVED or ASK answer (the chunk's slot is moving between cluster nodes): the key
        // asked again of the node named, on that node's main connection.
        auto follow_redirect = [&](Reply& value, std::string_view name) -> Status {
            if (value->type != REDIS_REPLY_ERROR) return Status::success();
            std::lock_guard lock(mutex);
            Result<Reply> followed = follow(std::move(value), {"GET", name}, "GET");
            if (!followed.ok()) return followed.status();
            value = std::move(followed).value();
            return Status::success();
        };

        Status problem;
        {
            std::lock_guard lock(mutex);
            node = route(manifest_name, problem);
        }
        if (node == nullptr) return miss(problem);
        Reply reply;
        // A pooled connection may have died with a Redis restart: one more try on a new one.
        for (bool fresh : {false, true}) {
            c = stream_connection(*node, fresh, problem);
            if (c == nullptr) return miss(problem);
            reply = get(manifest_name);
            if (reply) break;
            redisFree(c);
            c = nullptr;
        }
        if (!reply) return unreachable("GET of the manifest");
        if (Status followed = follow_redirect(reply, manifest_name); !followed.ok()) return miss(followed);
        if (reply->type == REDIS_REPLY_NIL) {
            return_stream_connection(*node, c);
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
            Reply value(static_cast<redisReply*>(raw));
            // The next GET goes out before this layer is checked and copied.
            if (!send_up_to(l + 1 + in_flight)) return unreachable("GET of the layers");
            if (Status followed = follow_redirect(value, names[l]); !followed.ok()) return miss(followed);
            const Manifest::Layer& expected = manifest.layers[l];
            const std::string where = "layer " + std::to_string(l) + " (" + names[l] + ")";
            if (value->type == REDIS_REPLY_NIL)
                return damaged(Status(StatusCode::corrupt, where + " is missing (evicted?)"), layers);
            if (Status refused = refusal(value.get(), where); !refused.ok()) {
                {
                    std::lock_guard lock(mutex);
                    ++stats.unavailable;
                    warn(refused);
                }
                return miss(refused);
            }
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
        return_stream_connection(*node, c);
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
    impl_->node_index(impl_->options.host, impl_->options.port);
    for (const auto& [host, port] : impl_->options.more_seeds) impl_->node_index(host, port);
    impl_->seeds = impl_->nodes.size();
    (void)impl_->resolve_mode();  // reported through the warning hook when no seed answers
}

RedisChunkBackend::~RedisChunkBackend() = default;

bool RedisChunkBackend::available() {
    std::lock_guard lock(impl_->mutex);
    if (!impl_->resolve_mode().ok()) return false;
    if (impl_->mode == Impl::Mode::single) return impl_->connect(*impl_->nodes[0]).ok();
    for (const auto& node : impl_->nodes) {
        if (impl_->connect(*node).ok()) return true;
    }
    return false;
}

bool RedisChunkBackend::is_cluster() {
    std::lock_guard lock(impl_->mutex);
    (void)impl_->resolve_mode();
    return impl_->mode == Impl::Mode::cluster;
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
        if (Status refused = refusal(value, where); !refused.ok()) {
            ++impl.stats.unavailable;
            impl.warn(refused);
            return miss();
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
    Impl& impl = *impl_;
    std::lock_guard lock(impl.mutex);
    if (Status resolved = impl.resolve_mode(); !resolved.ok()) return resolved;
    // Every master of a cluster (a slot moving between two is scanned on both: duplicates dropped).
    std::vector<Impl::Node*> masters;
    if (impl.mode == Impl::Mode::single) {
        masters.push_back(impl.nodes[0].get());
    } else {
        if (impl.map_stale) impl.refresh_slots();
        std::vector<bool> owns(impl.nodes.size(), false);
        for (const int32_t owner : impl.slot_owner) {
            if (owner >= 0) owns[static_cast<size_t>(owner)] = true;
        }
        for (size_t i = 0; i < owns.size(); ++i) {
            if (owns[i]) masters.push_back(impl.nodes[i].get());
        }
        if (masters.empty()) return Status(StatusCode::io_error, impl.location() + ": no cluster node serves a slot");
    }
    std::vector<ChunkDigest> digests;
    const std::string pattern = std::string(kKeyPrefix) + "*:manifest";
    for (Impl::Node* node : masters) {
        std::string cursor = "0";
        do {
            Result<Reply> scanned = impl.command_on(*node, {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"}, "SCAN");
            if (!scanned.ok()) return scanned.status();
            const redisReply* r = scanned.value().get();
            if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
                return Status(StatusCode::io_error, impl.location(*node) + ": unexpected SCAN reply");
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
    }
    if (masters.size() > 1) {
        std::sort(digests.begin(), digests.end());
        digests.erase(std::unique(digests.begin(), digests.end()), digests.end());
    }
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
