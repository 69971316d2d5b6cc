#!/usr/bin/env python3
"""Loopback load test of `kvfuse serve`: N concurrent clients replaying RAG requests over a fixed
pool of chunks with Zipf popularity, against a fresh server per (store, method) with a fresh
store, reporting throughput, TTFT (server-side: store reads + fusion or prefill + first logits)
p50/p99, request latency p50/p99 (client-side, queueing and decoding included) and the chunk hit
rate. Bounded in requests and in time; starts its own redis-server on a free loopback port for
the redis runs (the helpers of tests/serve_test.py). Prints a Markdown table.

  tools/serve_load.py --kvfuse build/release/driver/kvfuse [--model M.gguf] [--stores fs,redis,redis+fs]
                      [--methods full,a3] [--clients 4] [--requests 200] [--pool 32] [--zipf 1.1]
                      [--json-out FILE]

--json-out also writes the rows and the settings as JSON (what tools/report.sh records and
tools/perf_report.py turns into the report's serving table).
"""
import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import serve_test  # noqa: E402  (Redis and Server helpers)


def percentile(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100.0 * (len(ordered) - 1))))]


def chunk_pool(size, chars, seed):
    with open(os.path.join(ROOT, "driver", "data", "tinystories_val.txt")) as f:
        paragraphs = [p.strip().replace("\n", " ") for p in f.read().split("\n\n") if len(p.strip()) > chars // 2]
    random.Random(seed).shuffle(paragraphs)
    if len(paragraphs) < size + 50:
        sys.exit("serve_load: the bundled text has too few paragraphs for a pool of %d" % size)
    cut = lambda text: text[:chars].rsplit(" ", 1)[0]
    return [cut(p) for p in paragraphs[:size]], [" ".join(p.split()[:8]) for p in paragraphs[size:size + 50]]


def workload(args):
    pool, questions = chunk_pool(args.pool, args.chunk_chars, args.seed)
    weights = [1.0 / (i + 1) ** args.zipf for i in range(len(pool))]
    rng = random.Random(args.seed + 1)
    requests = []
    for _ in range(args.requests):
        picked = []
        while len(picked) < args.chunks_per_request:
            i = rng.choices(range(len(pool)), weights)[0]
            if i not in picked:
                picked.append(i)
        requests.append({"chunks": [pool[i] for i in picked], "question": rng.choice(questions),
                         "max_tokens": args.max_tokens, "ratio": args.ratio})
    return requests


def run_one(args, workdir, redis, store, method, requests):
    if store in ("redis", "redis+fs"):
        redis.command("FLUSHALL")
        server_args = ["--store", "redis://127.0.0.1:%d/0" % redis.port]
        if store == "redis+fs":  # a local directory in front of Redis, as a fleet runs
            server_args += ["--local-cache", tempfile.mkdtemp(prefix="cache-", dir=workdir)]
    else:
        server_args = ["--store", tempfile.mkdtemp(prefix="store-", dir=workdir)]
    if args.model:
        server_args += ["--model", args.model]
    server = serve_test.Server("load-%s-%s" % (store, method), workdir, *server_args, "--queue", str(args.clients + 1))
    try:
        results, lock, next_index = [], threading.Lock(), [0]
        deadline = time.time() + args.time_limit

        def client():
            while time.time() < deadline:
                with lock:
                    if next_index[0] >= len(requests):
                        return
                    body = dict(requests[next_index[0]], method=method)
                    next_index[0] += 1
                started = time.time()
                status, text, _ = server.request("/v1/completions", body)
                latency = (time.time() - started) * 1000
                with lock:
                    results.append((status, text, latency))

        started = time.time()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - started
    finally:
        server.stop()
    import json
    ok = [(json.loads(text), latency) for status, text, latency in results if status == 200]
    errors = len(results) - len(ok)
    for status, text, _ in [r for r in results if r[0] != 200][:3]:
        print("serve_load: %s %s: status %d: %s" % (store, method, status, text[:300]), file=sys.stderr, flush=True)
    hits = sum(c["hit"] for answer, _ in ok for c in answer["chunks"])
    looked_up = sum(len(answer["chunks"]) for answer, _ in ok)
    ttft = [answer["ttft_ms"] for answer, _ in ok]
    load = [answer["stages"]["kv_load"] for answer, _ in ok]
    latency = [lat for _, lat in ok]
    return {"store": store, "method": method, "requests": len(ok), "errors": errors,
            "throughput": len(ok) / wall if wall > 0 else 0.0,
            "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99), "load_p50": percentile(load, 50),
            "lat_p50": percentile(latency, 50), "lat_p99": percentile(latency, 99),
            "hit_rate": hits / looked_up if looked_up else float("nan")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kvfuse", required=True, help="the kvfuse binary")
    parser.add_argument("--model", default="", help="GGUF model (default: the bundled stories260K)")
    parser.add_argument("--stores", default="fs,redis,redis+fs", help="fs, redis, redis+fs (a directory in front of Redis)")
    parser.add_argument("--methods", default="full,a3")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--pool", type=int, default=32, help="chunks in the pool")
    parser.add_argument("--chunks-per-request", type=int, default=4)
    parser.add_argument("--chunk-chars", type=int, default=400, help="characters per chunk (cut at a word)")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of chunk popularity")
    parser.add_argument("--ratio", type=float, default=0.15)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=120, help="seconds per run at most")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out", default="", help="also write the rows and settings to this JSON file")
    args = parser.parse_args()
    serve_test.KVFUSE = os.path.abspath(args.kvfuse)
    stores, methods = args.stores.split(","), args.methods.split(",")
    for store in stores:
        if store not in ("fs", "redis", "redis+fs"):
            sys.exit("serve_load: unknown store '%s' (fs, redis, redis+fs)" % store)
    requests = workload(args)
    workdir = tempfile.mkdtemp(prefix="kvfuse-serve-load-")
    redis = serve_test.Redis(workdir) if any(s.startswith("redis") for s in stores) else None
    rows = []
    try:
        for store in stores:
            for method in methods:
                rows.append(run_one(args, workdir, redis, store, method, requests))
                print("done: %s %s" % (store, method), file=sys.stderr, flush=True)
    finally:
        if redis:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("| store | method | requests | errors | req/s | TTFT p50 ms | TTFT p99 ms | of which KV load p50 ms "
          "| latency p50 ms | latency p99 ms | chunk hit rate |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        hit = "-" if r["method"] == "full" else "%.1f %%" % (100 * r["hit_rate"])
        print("| %s | %s | %d | %d | %.1f | %.2f | %.2f | %.2f | %.1f | %.1f | %s |" % (
            r["store"], r["method"], r["requests"], r["errors"], r["throughput"], r["ttft_p50"], r["ttft_p99"],
            r["load_p50"], r["lat_p50"], r["lat_p99"], hit))
    print("\n%d clients, %d requests of %d chunks drawn from a pool of %d (Zipf %.2f), max_tokens %d, ratio %.2f" % (
        args.clients, args.requests, args.chunks_per_request, args.pool, args.zipf, args.max_tokens, args.ratio))
    if args.json_out:
        import json
        settings = {name: getattr(args, name) for name in ("clients", "requests", "chunks_per_request", "pool",
                                                           "chunk_chars", "zipf", "ratio", "max_tokens", "time_limit")}
        settings["model"] = os.path.basename(args.model) if args.model else "stories260K (bundled)"
        # Written whole or not at all: a reader never sees half a file.
        partial = args.json_out + ".partial"
        with open(partial, "w") as handle:
            # Plain JSON: an undefined figure (no chunk looked up, no request answered) is null.
            plain = [{key: (None if isinstance(value, float) and value != value else value) for key, value in r.items()}
                     for r in rows]
            json.dump({"settings": settings, "rows": plain}, handle, indent=1, allow_nan=False)
        os.replace(partial, args.json_out)


if __name__ == "__main__":
    main()
