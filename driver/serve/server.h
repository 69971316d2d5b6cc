// `kvfuse serve`: one model held by a long-lived HTTP server, chunk caches in a store (a
// directory, Redis, or a directory in front of Redis) shared by every request and, through
// Redis, by every server of a fleet. API, settings and guarantees: docs/SERVING.md.
//
// Policy: requests are served one at a time on the model (one engine thread owns the model and
// its reused buffers; the pipeline's kernels use every core for one request), in arrival order,
// from a bounded queue. A request that finds the queue full gets 503 at once with Retry-After;
// /health and /metrics never wait for the queue. SIGTERM or SIGINT: stop accepting, answer
// what is queued and running (its store writes complete: a file is renamed into place or not at
// all, a Redis chunk is visible only once its manifest is written), then exit 0.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "fusion/pipeline.h"
#include "serve/api.h"

namespace kvfuse::serve {

struct ServeOptions {
    std::string model;          // GGUF path; empty: the bundled model
    std::string host = "127.0.0.1";
    int port = 8080;            // 0: any free port (the one chosen is printed)
    std::string store;          // directory or redis://host:port/db; empty: the default directory
    std::string local_cache;    // with a redis:// store: a directory in front of it
    std::uint64_t store_limit = 0;  // bytes of chunk files the directory (store or local tier) keeps; 0: no limit
    bool no_store = false;      // chunks in memory only, per request
    bool store_only = false;    // requests that do not say store_only get this
    bool no_stream = false;     // read stored chunks whole before a request starts (default: per layer)
    std::size_t queue_capacity = 16;
    std::size_t max_body_bytes = std::size_t{1} << 20;
    std::size_t http_threads = 0;  // 0: queue_capacity + 4
    std::chrono::milliseconds redis_connect_timeout{500};
    std::chrono::milliseconds redis_command_timeout{2000};
    std::uint64_t redis_ttl_seconds = 0;
    ApiLimits limits;
    kvfuse::fusion::FusionOptions fusion;  // defaults for what a request does not set
};

// Runs until SIGTERM / SIGINT; returns the process exit status (non-zero when the model or the
// store cannot be opened or the address cannot be bound, with the reason on stderr).
int serve(const ServeOptions& options);

}  // namespace kvfuse::serve
