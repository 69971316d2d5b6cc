// `kvfuse serve`: the HTTP server (driver/serve, docs/SERVING.md).
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "cli/fusion_common.h"
#include "serve/server.h"

namespace kvfuse::cli {

void add_serve_command(CLI::App& app) {
    auto o = std::make_shared<kvfuse::serve::ServeOptions>();
    auto placement = std::make_shared<PlacementCliOptions>();
    CLI::App* cmd = app.add_subcommand("serve", "Serve fused and plain completions over HTTP (docs/SERVING.md)");
    cmd->add_option("--model", o->model, "GGUF model file (default: the bundled stories260K)");
    cmd->add_option("--host", o->host, "address to listen on (default 127.0.0.1)");
    cmd->add_option("--port", o->port, "port (0: any free port, printed at start)")->check(CLI::Range(0, 65535));
    cmd->add_option("--store", o->store,
                    "chunk store: a directory (default $XDG_CACHE_HOME/kvfuse/chunks), redis://host[:port][/db], or any node(s) of a Redis Cluster: redis://host:port[,host:port...] "
                    "(a password: KVFUSE_REDIS_PASSWORD in the environment)");
    cmd->add_option("--local-cache", o->local_cache, "with a redis:// store: a directory kept in front of it");
    cmd->add_option("--store-limit", o->store_limit,
                    "most bytes of chunk files the store directory (or the --local-cache tier) keeps, e.g. 20G; "
                    "the least recently used go first (default: no limit)")
        ->transform(CLI::AsSizeValue(false));
    cmd->add_flag("--no-store", o->no_store, "keep chunk caches in memory only, per request");
    cmd->add_flag("--no-stream", o->no_stream,
                  "read each stored chunk whole before the request starts (default: streamed, layer l+1 arriving while "
                  "layer l is computed)");
    cmd->add_flag("--store-only", o->store_only,
                  "never compute a chunk: one the store lacks is a 503 (a request may say \"store_only\": false)");
    cmd->add_option("--queue", o->queue_capacity, "requests waiting or running before new ones get 503")
        ->check(CLI::Range(1, 4096));
    cmd->add_option("--max-body", o->max_body_bytes, "largest request body in bytes (larger: 413)")
        ->check(CLI::Range(1024, 1 << 30));
    cmd->add_option("--max-tokens-limit", o->limits.max_new_tokens, "largest max_tokens a request may ask for")
        ->check(CLI::Range(1, 4096));
    cmd->add_option("--http-threads", o->http_threads, "connection threads (default: queue + 4)")->check(CLI::Range(0, 4096));
    cmd->add_option("--redis-timeout-ms", o->redis_command_timeout, "Redis command timeout in ms (connect: a quarter)")
        ->check(CLI::Range(10, 600000));
    cmd->add_option("--redis-ttl", o->redis_ttl_seconds, "seconds a chunk lives in Redis (0: until evicted)");
    add_placement_options(*cmd, *placement);
    cmd->callback([o, placement] {
        o->redis_connect_timeout = std::max(std::chrono::milliseconds(10), o->redis_command_timeout / 4);
        if (!apply_placement_reporting_on_stderr(*placement)) {
            g_exit_status = 2;
            return;
        }
        // --threads is also each kernel call's workers, as in run and eval.
        o->fusion.threads = placement->threads;
        g_exit_status = kvfuse::serve::serve(*o);
    });
}

}  // namespace kvfuse::cli
