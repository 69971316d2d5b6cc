#include "serve/server.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <pthread.h>
#include <thread>
#include <unordered_map>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "driver_errors.h"
#include "fusion/chunk_source.h"
#include "fusion/loaded_model.h"
#include "fusion/metrics.h"
#include "serve/serve_metrics.h"
#include "store/open_backend.h"

namespace kvfuse::serve {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace kvfuse::fusion;

// Generated text may end inside a UTF-8 sequence (a byte token): replaced by U+FFFD in the
// JSON rather than making dump() throw.
std::string to_text(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct Answer {
    int status = 200;
    std::string body;
};

Answer error_answer(int status, const std::string& message) {
    return {status, to_text(json{{"error", {{"code", status}, {"message", message}}}})};
}

// The bounded queue in front of the model: one engine thread takes jobs in arrival order.
class JobQueue {
public:
    explicit JobQueue(std::size_t capacity) : capacity_(capacity) {}

    // The job's answer to come, or nullopt when the queue is full or closed.
    std::optional<std::future<Answer>> submit(std::function<Answer()> work) {
        std::lock_guard lock(mutex_);
        if (closed_ || jobs_.size() + running_ >= capacity_) return std::nullopt;
        jobs_.push_back({std::move(work), {}});
        std::future<Answer> answer = jobs_.back().done.get_future();
        ready_.notify_one();
        return answer;
    }

    // The engine thread: runs jobs until the queue is closed and empty.
    void run() {
        for (;;) {
            Job job;
            {
                std::unique_lock lock(mutex_);
                ready_.wait(lock, [&] { return !jobs_.empty() || closed_; });
                if (jobs_.empty()) return;
                job = std::move(jobs_.front());
                jobs_.pop_front();
                ++running_;
            }
            job.done.set_value(job.work());  // the work catches its own exceptions
            std::lock_guard lock(mutex_);
            --running_;
        }
    }

    // No new job is accepted; the engine finishes the queued ones, then run() returns.
    void close() {
        std::lock_guard lock(mutex_);
        closed_ = true;
        ready_.notify_all();
    }

    bool closed() const {
        std::lock_guard lock(mutex_);
        return closed_;
    }
    std::size_t depth() const {
        std::lock_guard lock(mutex_);
        return jobs_.size() + running_;
    }
    std::size_t capacity() const { return capacity_; }

private:
    struct Job {
        std::function<Answer()> work;
        std::promise<Answer> done;
    };
    const std::size_t capacity_;
    mutable std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<Job> jobs_;
    std::size_t running_ = 0;
    bool closed_ = false;
};

// The model, its chunk source and its reused buffers: touched by the engine thread only.
class Engine {
public:
    Engine(LoadedModel loaded, std::unique_ptr<kvfuse::store::ChunkBackend> store, const ServeOptions& options,
           ServeMetrics& metrics)
        : loaded_(std::move(loaded)),
          store_(std::move(store)),
          source_(*loaded_.model, store_.get()),
          options_(options),
          metrics_(metrics) {
        source_.set_streaming(!options.no_stream);
        source_.set_threads(options.fusion.threads);
    }

    const LoadedModel& loaded() const { return loaded_; }
    const kvfuse::store::ChunkBackend* store() const { return store_.get(); }

    Answer complete(const CompletionRequest& request, Clock::time_point queued) {
        return guarded([&] { return complete_unguarded(request, ms_since(queued)); });
    }

    Answer precompute(const ChunksRequest& request) {
        return guarded([&] {
            json chunks = json::array();
            std::uint64_t hits = 0, computed = 0;
            for (std::size_t i = 0; i < request.chunks.size(); ++i) {
                const TokenIds tokens = tokens_of(request.chunks[i], i);
                const ChunkSource::Held held = source_.get_whole(tokens);  // "stored": every layer verified
                (held.from_store ? hits : computed) += 1;
                chunks.push_back({{"id", remember(tokens)}, {"tokens", tokens.size()}, {"stored", held.from_store}});
            }
            metrics_.count_chunks(hits, computed);
            return Answer{200, to_text(json{{"object", "kvfuse.chunks"}, {"chunks", chunks}})};
        });
    }

private:
    template <class Work>
    Answer guarded(Work&& work) {
        try {
            return work();
        } catch (const ApiError& e) {
            return error_answer(e.status, e.what());
        } catch (const std::invalid_argument& e) {
            return error_answer(400, e.what());
        } catch (const std::exception& e) {
            return error_answer(500, std::string("the request failed: ") + e.what());
        }
    }

    TokenIds checked_ids(const std::vector<std::int32_t>& ids, const std::string& where) const {
        const int vocab = loaded_.model->shape().vocab;
        for (std::int32_t id : ids)
            if (id < 0 || id >= vocab)
                throw ApiError(400, where + ": token id " + std::to_string(id) + " is outside the vocabulary of " +
                                        std::to_string(vocab));
        return ids;
    }

    TokenIds tokens_of(const ChunkRef& ref, std::size_t index) {
        const std::string where = "chunks[" + std::to_string(index) + "]";
        switch (ref.kind) {
            case ChunkRef::Kind::tokens: return checked_ids(ref.tokens, where);
            case ChunkRef::Kind::id: {
                auto known = known_chunks_.find(ref.id);
                if (known != known_chunks_.end()) return known->second;
                // Handed out by another server of the fleet: the store knows its tokens.
                if (store_ != nullptr) {
                    const auto digest = kvfuse::store::parse_digest_hex(ref.id);
                    if (auto tokens = store_->tokens_of(*digest, loaded_.model->fingerprint())) {
                        remember(*tokens);
                        return *tokens;
                    }
                }
                throw ApiError(404, where + ": unknown chunk id " + ref.id +
                                        " (not seen by this server and not in its store: send the chunk's text or tokens)");
            }
            case ChunkRef::Kind::text: break;
        }
        TokenIds tokens = loaded_.tokenize(ref.text);
        if (tokens.empty()) throw ApiError(400, where + ": the text has no tokens");
        return tokens;
    }

    // The chunk's id (its store digest), remembered so that a later request may name it.
    std::string remember(const TokenIds& tokens) {
        std::string id = kvfuse::store::make_chunk_key(loaded_.model->fingerprint(), tokens).hex();
        if (known_chunks_.emplace(id, tokens).second) {
            known_order_.push_back(id);
            if (known_order_.size() > kRememberedIds) {
                known_chunks_.erase(known_order_.front());
                known_order_.pop_front();
            }
        }
        return id;
    }

    Answer complete_unguarded(const CompletionRequest& in, double queue_ms) {
        const FusionModel& model = *loaded_.model;
        const ModelShape& shape = model.shape();
        Request request;
        request.id = "serve";
        request.kind = "user";
        request.prefix = {model.bos()};
        std::vector<std::string> ids;
        if (in.plain) {
            request.question = loaded_.tokenize(in.prompt);
            if (request.question.empty()) throw ApiError(400, "\"prompt\": the text has no tokens");
        } else {
            for (std::size_t i = 0; i < in.chunks.size(); ++i) {
                request.chunks.push_back(tokens_of(in.chunks[i], i));
                ids.push_back(remember(request.chunks.back()));
            }
            request.question = in.question_tokens.empty() ? loaded_.tokenize(in.question)
                                                          : checked_ids(in.question_tokens, "\"question_tokens\"");
            if (request.question.empty()) throw ApiError(400, "\"question\": the text has no tokens");
        }
        const std::size_t T = request.total_tokens(), M = request.question.size();
        if (shape.context > 0 && T > static_cast<std::size_t>(shape.context))
            throw ApiError(400, "the prompt has " + std::to_string(T) + " tokens (BOS, chunks and question); the model's context is " +
                                    std::to_string(shape.context));

        FusionOptions options = options_.fusion;
        options.method = in.method;
        options.ratio = in.ratio;
        const bool fused = method_info(in.method).where != SelectAt::nowhere;
        ChunkSource::Loaded loaded;
        json chunks = json::array();
        double load_ms = 0;
        std::uint64_t hits = 0, computed = 0;
        const bool store_only = in.store_only.value_or(options_.store_only);
        if (store_only && store_ == nullptr) throw ApiError(400, "store_only needs a store (this server runs with --no-store)");
        if (fused) {
            for (std::size_t i = 0; i < request.chunks.size(); ++i) {
                double ms = 0;
                std::optional<ChunkSource::Held> found = store_only ? source_.find(request.chunks[i], &ms)
                                                                       : std::optional(source_.get(request.chunks[i], &ms));
                if (!found)
                    throw ApiError(503, "chunks[" + std::to_string(i) + "] (" + ids[i] +
                                            ") is not in the store and store_only is set (absent, evicted, damaged, or the store is unreachable)");
                load_ms += ms;
                loaded.views.push_back(found->view);
                loaded.held.push_back(std::move(*found));
            }
        }
        try {
            // A streamed chunk whose later layers do not arrive is recomputed and the request
            // run again (ChunkSource::run); store-only, it is a 503 like a chunk not found.
            source_.run(request, loaded, options, run_, store_only);
        } catch (const ChunkLayerUnavailable& gone) {
            throw ApiError(503, "chunks[" + std::to_string(gone.chunk) + "] (" + ids[gone.chunk] + "): layer " +
                                    std::to_string(gone.layer) +
                                    " did not arrive from the store (evicted, damaged, or the store is unreachable) and store_only is set");
        }
        for (std::size_t i = 0; i < loaded.held.size(); ++i) {
            (loaded.held[i].from_store ? hits : computed) += 1;
            chunks.push_back({{"id", ids[i]}, {"tokens", request.chunks[i].size()}, {"hit", loaded.held[i].from_store}});
        }
        run_.times.kv_load += load_ms;  // reading the stored caches is part of the time to first token
        const std::size_t vocab = static_cast<std::size_t>(shape.vocab);
        require_finite_logits(run_.logits.data() + (M - 1) * vocab, 1, vocab);
        const double ttft_ms = run_.times.total();
        const auto decode_start = Clock::now();
        const std::int32_t first = argmax_row(run_.logits, M - 1, vocab);
        const std::vector<std::int32_t> tokens = greedy_decode(model, run_.cache, first, in.max_tokens, run_.kernels.request());
        const double decode_ms = ms_since(decode_start);
        const std::string text = loaded_.detokenize(tokens);
        metrics_.observe_ttft(ttft_ms / 1000.0);
        metrics_.count_chunks(hits, computed);
        metrics_.count_tokens(T, tokens.size());

        const StageTimes& st = run_.times;
        const json stages = {{"kv_load", st.kv_load},         {"rerotate", st.rerotate}, {"full_layers", st.full_layers},
                             {"selection", st.selection},     {"recompute", st.recompute}, {"logits", st.logits}};
        if (in.plain) {
            ++plain_serial_;
            json choice = {{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", "length"}};
            return {200, to_text(json{{"id", "cmpl-" + std::to_string(plain_serial_)},
                              {"object", "text_completion"},
                              {"created", static_cast<long long>(std::time(nullptr))},
                              {"model", options_.model.empty() ? std::string("stories260K") : options_.model},
                              {"choices", json::array({choice})},
                              {"usage", {{"prompt_tokens", T}, {"completion_tokens", tokens.size()}, {"total_tokens", T + tokens.size()}}},
                              {"kvfuse", {{"ttft_ms", ttft_ms}, {"stages", stages}, {"decode_ms", decode_ms}, {"queue_ms", queue_ms}}}})};
        }
        json answer = {{"object", "kvfuse.completion"},
                       {"method", method_name(in.method)},
                       {"text", text},
                       {"tokens", tokens},
                       {"prompt_tokens", T},
                       {"ttft_ms", ttft_ms},
                       {"stages", stages},
                       {"recompute_fraction", run_.recompute_fraction},
                       {"decode_ms", decode_ms},
                       {"queue_ms", queue_ms},
                       {"chunks", chunks}};
        if (method_info(in.method).takes_ratio) answer["ratio"] = in.ratio;
        return {200, to_text(answer)};
    }

    static constexpr std::size_t kRememberedIds = 1 << 16;
    LoadedModel loaded_;
    std::unique_ptr<kvfuse::store::ChunkBackend> store_;
    ChunkSource source_;
    FusionRun run_;  // kept across requests: no allocation once its buffers are large enough
    std::unordered_map<std::string, TokenIds> known_chunks_;
    std::deque<std::string> known_order_;
    std::uint64_t plain_serial_ = 0;
    const ServeOptions& options_;
    ServeMetrics& metrics_;
};

const char* status_text(int status) {
    switch (status) {
        case 400: return "bad request";
        case 404: return "no such endpoint or resource";
        case 405: return "method not allowed";
        case 413: return "request body too large";
        case 503: return "unavailable";
        default: return "error";
    }
}

}  // namespace

int serve(const ServeOptions& options) {
    // Blocked in every thread (inherited by those started below); one thread waits for them.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);  // a client gone mid-answer is an error return, not a kill

    const std::string model_path = options.model.empty() ? bundled_model_path() : options.model;
    if (model_path.empty()) {
        std::fprintf(stderr, "kvfuse serve: no --model given and the bundled model is missing\n");
        return 1;
    }
    std::unique_ptr<kvfuse::store::ChunkBackend> store;
    LoadedModel loaded;
    try {
        loaded = load_model(model_path);
        if (!options.no_store) {
            kvfuse::store::BackendOptions backend;
            backend.directory.sync_writes = false;  // atomic renames; a crash costs a recompute
            backend.directory.disk_limit_bytes = options.store_limit;
            backend.redis.connect_timeout = options.redis_connect_timeout;
            backend.redis.command_timeout = options.redis_command_timeout;
            backend.redis.ttl_seconds = options.redis_ttl_seconds;
            backend.local_cache = options.local_cache;
            auto opened = kvfuse::store::open_backend(options.store, std::move(backend));
            store = kvfuse::driver::value_or_throw(std::move(opened), "chunk store");
        } else if (!options.local_cache.empty()) {
            throw std::invalid_argument("--local-cache needs a redis:// store, not --no-store");
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "kvfuse serve: error: %s\n", e.what());
        return 1;
    }
    const std::string store_location = store ? store->location() : "none (--no-store)";
    ServeMetrics metrics;
    Engine engine(std::move(loaded), std::move(store), options, metrics);
    JobQueue queue(options.queue_capacity);

    httplib::Server server;
    const std::size_t threads = options.http_threads > 0 ? options.http_threads : options.queue_capacity + 4;
    server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server.set_payload_max_length(options.max_body_bytes);
    server.set_read_timeout(10);
    server.set_write_timeout(10);
    auto reply = [&](httplib::Response& res, const std::string& endpoint, const Answer& answer) {
        res.status = answer.status;
        res.set_content(answer.body, "application/json");
        if (answer.status == 503) res.set_header("Retry-After", "1");
        metrics.count_request(endpoint, answer.status);
    };
    // httplib's own refusals (413 over --max-body, 404, a malformed HTTP request) get a body too.
    server.set_error_handler([&](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return;
        std::string message = status_text(res.status);
        if (res.status == 413) message += " (over " + std::to_string(options.max_body_bytes) + " bytes, --max-body)";
        if (res.status == 404) message += ": " + req.method + " " + req.path;
        res.set_content(error_answer(res.status, message).body, "application/json");
        // Only the API's paths as labels: a client's arbitrary paths must not grow the metrics.
        const bool known = req.path == "/v1/completions" || req.path == "/v1/chunks" || req.path == "/health" ||
                           req.path == "/metrics";
        metrics.count_request(known ? req.path : std::string("other"), res.status);
    });
    // A handler that throws (it should not: every path answers its own errors) still answers
    // with the reason.
    server.set_exception_handler([&](const httplib::Request& req, httplib::Response& res, std::exception_ptr error) {
        std::string what = "unknown exception";
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            what = e.what();
        } catch (...) {
        }
        res.status = 500;
        res.set_content(error_answer(500, "internal error: " + what).body, "application/json");
        metrics.count_request(req.path == "/v1/completions" || req.path == "/v1/chunks" ? req.path : "other", 500);
    });
    auto queued = [&](httplib::Response& res, const std::string& endpoint, std::function<Answer()> work) {
        std::optional<std::future<Answer>> answer = queue.submit(std::move(work));
        if (!answer) {
            reply(res, endpoint,
                  error_answer(503, queue.closed() ? "the server is shutting down"
                                                   : "the queue is full (" + std::to_string(queue.capacity()) +
                                                         " requests waiting or running); retry later"));
            return;
        }
        reply(res, endpoint, answer->get());
    };
    server.Post("/v1/completions", [&](const httplib::Request& req, httplib::Response& res) {
        const std::string endpoint = "/v1/completions";
        CompletionRequest request;
        try {
            request = parse_completion_request(req.body, options.limits);
        } catch (const ApiError& e) {
            return reply(res, endpoint, error_answer(e.status, e.what()));
        }
        const auto arrived = Clock::now();
        queued(res, endpoint, [&engine, request = std::move(request), arrived] { return engine.complete(request, arrived); });
    });
    server.Post("/v1/chunks", [&](const httplib::Request& req, httplib::Response& res) {
        const std::string endpoint = "/v1/chunks";
        ChunksRequest request;
        try {
            request = parse_chunks_request(req.body, options.limits);
        } catch (const ApiError& e) {
            return reply(res, endpoint, error_answer(e.status, e.what()));
        }
        queued(res, endpoint, [&engine, request = std::move(request)] { return engine.precompute(request); });
    });
    server.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
        const bool stopping = queue.closed();
        reply(res, "/health",
              {stopping ? 503 : 200, json{{"status", stopping ? "stopping" : "ok"},
                                          {"model", engine.loaded().description},
                                          {"store", store_location},
                                          {"queue_depth", queue.depth()},
                                          {"queue_capacity", queue.capacity()}}
                                         .dump(-1, ' ', false, json::error_handler_t::replace)});
    });
    server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
        std::vector<kvfuse::store::BackendStats> tiers;
        if (engine.store() != nullptr) tiers = engine.store()->backend_stats();
        metrics.count_request("/metrics", 200);
        res.set_content(metrics.render(queue.depth(), queue.capacity(), tiers), "text/plain; version=0.0.4");
    });

    int port = options.port;
    if (port == 0) {
        port = server.bind_to_any_port(options.host);
    } else if (!server.bind_to_port(options.host, port)) {
        port = -1;
    }
    if (port <= 0) {
        std::fprintf(stderr, "kvfuse serve: error: cannot listen on %s:%d (%s)\n", options.host.c_str(), options.port,
                     std::strerror(errno));
        return 1;
    }
    std::printf("kvfuse serve: model %s\nkvfuse serve: store %s\nkvfuse serve: listening on http://%s:%d\n",
                engine.loaded().description.c_str(), store_location.c_str(), options.host.c_str(), port);
    std::fflush(stdout);

    std::thread worker([&] { queue.run(); });
    std::atomic<bool> listening_done{false};
    std::thread signals([&] {
        const timespec poll{0, 200'000'000};
        while (!listening_done.load()) {
            const int signal = sigtimedwait(&stop_signals, nullptr, &poll);
            if (signal == SIGTERM || signal == SIGINT) {
                std::fprintf(stderr, "kvfuse serve: %s: finishing %zu queued request(s), then exiting\n",
                             signal == SIGTERM ? "SIGTERM" : "SIGINT", queue.depth());
                queue.close();  // new requests: 503; queued ones are still answered
                // stop() does nothing before the listening loop runs: repeat until it returns.
                while (!listening_done.load()) {
                    server.stop();
                    std::this_thread::sleep_for(std::chrono::milliseconds(20));
                }
                return;
            }
        }
    });
    const bool listened = server.listen_after_bind();  // returns once stopped and every handler is done
    listening_done = true;
    signals.join();
    queue.close();
    worker.join();  // the engine has finished every job, store writes included
    std::fprintf(stderr, "kvfuse serve: stopped\n");
    return listened ? 0 : 1;
}

}  // namespace kvfuse::serve
