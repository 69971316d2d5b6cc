#!/usr/bin/env python3
"""TTFT of fused requests whose chunks are all read from Redis, with streamed reads (the
default: a chunk's later layers arrive while its earlier layers are computed) and with
--no-stream (every chunk read whole before the request starts). Loopback only: starts its own
redis-server on a free port and two `kvfuse serve` processes on one Redis with no local tier, so
every request reads its chunks from Redis. The two servers are asked in turn, one request at a
time; answers must be equal token for token. Prints medians (server-side TTFT and its kv_load).
With --cluster: one server on a single Redis against one on a 3-master Redis Cluster of its own
(both streamed), the same way.

  tools/stream_ttft.py --kvfuse build/driver/kvfuse [--model M.gguf] [--requests 15]
                       [--chunks 4] [--chunk-chars 1500] [--method a3] [--cluster]
Run it under `quiet` for figures worth quoting.
"""
import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import serve_test  # noqa: E402  (Redis and Server helpers)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kvfuse", required=True)
    parser.add_argument("--model", default="")
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--chunk-chars", type=int, default=1500)
    parser.add_argument("--method", default="a3")
    parser.add_argument("--ratio", type=float, default=0.15)
    parser.add_argument("--cluster", action="store_true", help="one Redis against a 3-master Redis Cluster")
    args = parser.parse_args()
    serve_test.KVFUSE = os.path.abspath(args.kvfuse)
    workdir = tempfile.mkdtemp(prefix="kvfuse-stream-ttft-")
    with open(os.path.join(ROOT, "driver", "data", "tinystories_val.txt")) as f:
        paragraphs = [" ".join(p.split()) for p in f.read().split("\n\n") if len(p) > 200]
    text = " ".join(paragraphs)
    chunks = [text[i * args.chunk_chars:(i + 1) * args.chunk_chars].rsplit(" ", 1)[0] for i in range(args.chunks)]
    body = {"chunks": chunks, "question": "Then Lily said", "method": args.method, "ratio": args.ratio, "max_tokens": 1}
    redis = serve_test.Redis(workdir)
    url = "redis://127.0.0.1:%d/0" % redis.port
    model = ["--model", args.model] if args.model else []
    cluster = serve_test.RedisCluster(workdir) if args.cluster else None
    if cluster:
        servers = {"one Redis": serve_test.Server("single", workdir, "--store", url, *model),
                   "3-master cluster": serve_test.Server("cluster", workdir, "--store",
                                                         "redis://127.0.0.1:%d" % cluster.nodes[0].port, *model)}
    else:
        servers = {"streamed": serve_test.Server("stream-on", workdir, "--store", url, *model),
                   "whole (--no-stream)": serve_test.Server("stream-off", workdir, "--store", url, "--no-stream", *model)}
    try:
        first = None
        for server in servers.values():  # computes and stores every chunk (in each store)
            first = server.complete(body)
        prompt_tokens = first["prompt_tokens"]
        ttft = {name: [] for name in servers}
        load = {name: [] for name in servers}
        for _ in range(args.requests):
            for name, server in servers.items():
                answer = server.complete(body)
                serve_test.check(all(c["hit"] for c in answer["chunks"]), "%s: every chunk read from Redis" % name)
                serve_test.check(answer["tokens"] == first["tokens"], "%s: the answer differs" % name)
                ttft[name].append(answer["ttft_ms"])
                load[name].append(answer["stages"]["kv_load"])
        print("%d chunks, %d prompt tokens, method %s, %d requests each, medians:" %
              (args.chunks, prompt_tokens, args.method, args.requests))
        print("| %s | TTFT ms | kv_load ms (waited) |" % ("store" if cluster else "reads"))
        print("|---|---:|---:|")
        for name in servers:
            print("| %s | %.1f | %.1f |" % (name, statistics.median(ttft[name]), statistics.median(load[name])))
    finally:
        for server in servers.values():
            server.stop()
        redis.stop()
        if cluster:
            cluster.stop()


if __name__ == "__main__":
    main()
