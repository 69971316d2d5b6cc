#!/usr/bin/env python3
"""kvfuse serve end to end, on loopback only (ctest serve_*).

Starts its own redis-server on a free loopback port (missing redis-server is a failure: tools/
setup.sh installs it), then `kvfuse serve` processes on free ports, and checks:
  fleet      two servers with separate local caches on one Redis: a chunk computed by one is a
             hit on the other, with the answers of a cold server (no store) token for token;
  corrupt    a flipped byte, a truncated layer, another chunk's layer, an evicted layer and a
             foreign manifest in Redis: each detected (metrics), read as a miss, the answer
             unchanged, the chunk stored again;
  stream     streamed reads (the default) and --no-stream, two servers on one Redis: answers
             of a cold run either way; a layer deleted or damaged after the manifest (so the
             stream breaks off mid-request) is a recompute with the same answer, or with
             store_only a 503;
  evict      Redis under maxmemory + allkeys-lru evicting chunk values: every answer correct;
  outage     Redis killed and restarted during a run of requests: every answer correct (or,
             store_only, refused with a clear 503), hits again once Redis is back;
  cluster    a 3-master Redis Cluster of its own: two servers through different nodes (one
             with a seed list whose first host is down), chunks stored through one found
             through the other; a chunk's slot migrated between reads (ASK, then MOVED, on
             streamed and whole reads); a node killed: its chunks recomputed, the others hits,
             every answer the cold one, store_only a 503;
  bad        malformed JSON, unknown method, ratio out of range, empty question, oversized body,
             over the context, unknown chunk id, wrong endpoint: 4xx with a message, serving on;
  storeonly  --store-only: a missing chunk is a 503, never computed; a request may override;
  queue      a full queue answers 503 with Retry-After, the rest are served;
  shutdown   SIGTERM during requests: each answered or refused, exit 0, the store readable;
  startup    a bad Redis URL, a local cache without Redis, a missing model, a busy port: exit 1
             with the reason.
Usage: serve_test.py KVFUSE_BINARY [scenario ...]
"""
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

KVFUSE = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else None
SCENARIOS = sys.argv[2:] or ["fleet", "corrupt", "stream", "evict", "outage", "cluster", "bad", "storeonly", "storelimit", "queue",
                             "shutdown", "startup"]
TIMEOUT = 120  # seconds for any one HTTP answer (sanitizer builds are slow)

CHUNKS = [
    "Once upon a time there was a little girl named Lily. She loved to play in the garden.",
    "One day, a big dog came to the park. The dog was very friendly and wanted to play.",
    "Tom had a red ball. He threw the ball high in the sky and laughed with his mom.",
    "The sun was warm and the birds sang. Everyone was happy in the little town.",
    "Sue found a shiny stone near the river. She showed it to her best friend Max.",
]
QUESTION = "Then Lily said"


def fail(message):
    print("FAIL: " + message, flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A redis-server of our own on loopback, and a minimal RESP client (binary-safe)."""

    def __init__(self, workdir, *extra):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            fail("redis-server is not installed (tools/setup.sh installs it: apt-get install redis-server)")
        self.workdir = workdir
        self.port = free_port()
        self.extra = list(extra)
        self.process = None
        self.start()

    def start(self):
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.workdir, "--protected-mode", "yes", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Counted in tries, not in wall time: a run paused by SIGSTOP (tools' `quiet` stops
        # nice-19 processes) must not expire. Ours must answer, not another test's Redis that
        # took the port meanwhile (ours then exits).
        for _ in range(400):
            if self.process.poll() is not None:
                fail("redis-server exited at start (port %d taken?)" % self.port)
            try:
                if b"process_id:%d\r\n" % self.process.pid in self.command("INFO", "server"):
                    return
            except (OSError, RuntimeError):  # not listening yet, or LOADING
                pass
            time.sleep(0.05)
        fail("redis-server did not start on port %d" % self.port)

    def kill(self):
        self.process.kill()
        self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def command(self, *args):
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
            s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
            reader = s.makefile("rb")
            return self._read(reader)

    def _read(self, reader):
        line = reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError("redis: " + rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = reader.read(n + 2)
            return data[:-2]
        if kind == b"*":
            return [self._read(reader) for _ in range(int(rest))]
        raise RuntimeError("redis: unexpected reply %r" % line)

    def keys(self, pattern="kvfuse:*"):
        return sorted(k.decode() for k in self.command("KEYS", pattern))


class Server:
    """One `kvfuse serve` on a free loopback port."""

    def __init__(self, name, workdir, *args):
        self.name = name
        self.log = open(os.path.join(workdir, name + ".log"), "w+")
        self.process = subprocess.Popen([KVFUSE, "serve", "--host", "127.0.0.1", "--port", "0", *args],
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.url = None
        lines = queue.Queue()

        def read_stdout():  # also keeps draining it, so the server never blocks on a full pipe
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.time() + 120
        out = ""
        while time.time() < deadline and self.url is None:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            out += line
            if "listening on " in line:
                self.url = line.strip().split("listening on ")[1]
        if self.url is None:
            self.process.kill()
            fail("%s did not start: %s %s" % (name, out, self.stderr()))

    def stderr(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def request(self, path, body=None, raw=None, method=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method or ("POST" if data is not None else "GET"))
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)

    def complete(self, body, expect=200):
        status, text, _ = self.request("/v1/completions", body)
        check(status == expect, "%s: %s answered %d, expected %d: %s" % (self.name, json.dumps(body)[:200], status, expect, text))
        return json.loads(text)

    def metric(self, name, labels=""):
        status, text, _ = self.request("/metrics")
        check(status == 200, "%s: /metrics answered %d" % (self.name, status))
        for line in text.splitlines():
            if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
                return float(line.split()[-1])
        return 0.0

    def healthy(self):
        status, text, _ = self.request("/health")
        return status == 200 and json.loads(text)["status"] == "ok"

    def stop(self, sig=signal.SIGTERM):
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                fail("%s did not exit within 60 s of %s" % (self.name, sig.name))
        return self.process.returncode


def requests_set():
    """Fused requests over the chunk pool: several methods, chunk orders and ratios."""
    out = []
    for i, method in enumerate(["a3", "cacheblend", "reuse", "epic", "a3", "full"]):
        chunks = [CHUNKS[(i + j) % len(CHUNKS)] for j in range(3)]
        out.append({"chunks": chunks, "question": QUESTION, "method": method, "ratio": 0.2 + 0.1 * (i % 3),
                    "max_tokens": 12})
    return out


def cold_answers(workdir):
    cold = Server("cold", workdir, "--no-store")
    try:
        return [cold.complete(r)["tokens"] for r in requests_set()]
    finally:
        check(cold.stop() == 0, "cold server exit status")


def scenario_fleet(workdir, redis, reference):
    url = "redis://127.0.0.1:%d/0" % redis.port
    a = Server("fleet-a", workdir, "--store", url, "--local-cache", os.path.join(workdir, "cache-a"))
    b = Server("fleet-b", workdir, "--store", url, "--local-cache", os.path.join(workdir, "cache-b"))
    try:
        for i, body in enumerate(requests_set()):
            answer = a.complete(body)
            check(answer["tokens"] == reference[i], "fleet-a request %d differs from the cold answer" % i)
        check(a.metric("kvfuse_store_puts_total", '{tier="redis"}') == len(CHUNKS), "fleet-a stored every chunk in Redis")
        check(len([k for k in redis.keys() if k.endswith(":manifest")]) == len(CHUNKS), "one manifest per chunk in Redis")
        for i, body in enumerate(requests_set()):
            answer = b.complete(body)
            check(answer["tokens"] == reference[i], "fleet-b request %d differs from the cold answer" % i)
            if body["method"] != "full":
                check(all(c["hit"] for c in answer["chunks"]), "fleet-b request %d: every chunk a hit" % i)
        check(b.metric("kvfuse_store_hits_total", '{tier="redis"}') == len(CHUNKS), "fleet-b read each chunk from Redis once")
        check(b.metric("kvfuse_chunks_computed_total") == 0, "fleet-b computed no chunk")
        check(b.metric("kvfuse_store_hits_total", '{tier="fs"}') > 0, "fleet-b's later requests hit its local cache")
        # Chunk ids: /v1/chunks on b names a chunk that a later request refers to by id alone.
        status, text, _ = b.request("/v1/chunks", {"texts": CHUNKS[:2]})
        check(status == 200, "/v1/chunks answered %d: %s" % (status, text))
        ids = [c["id"] for c in json.loads(text)["chunks"]]
        check(all(c["stored"] for c in json.loads(text)["chunks"]), "/v1/chunks: already stored")
        by_id = b.complete({"chunks": [{"id": ids[0]}, {"id": ids[1]}, CHUNKS[2]], "question": QUESTION, "method": "a3",
                            "ratio": 0.2, "max_tokens": 12})
        check(by_id["tokens"] == reference[0], "a request naming chunks by id answers as by text")
        # ... and on another server of the fleet, which resolves the ids through Redis.
        c = Server("fleet-c", workdir, "--store", url)
        try:
            by_id = c.complete({"chunks": [{"id": ids[0]}, {"id": ids[1]}, CHUNKS[2]], "question": QUESTION,
                                "method": "a3", "ratio": 0.2, "max_tokens": 12})
            check(by_id["tokens"] == reference[0], "another server resolving ids through Redis answers as by text")
            check(all(ch["hit"] for ch in by_id["chunks"]), "ids resolved through Redis are hits")
            status, text, _ = c.request("/v1/completions", {"chunks": [{"id": "cd" * 32}], "question": QUESTION})
            check(status == 404 and "unknown chunk id" in text, "an id nobody stored: %d %s" % (status, text))
        finally:
            check(c.stop() == 0, "fleet-c exit status")
    finally:
        check(a.stop() == 0 and b.stop() == 0, "fleet servers exit 0 on SIGTERM")


def manifest_keys(redis):
    return [k for k in redis.keys() if k.endswith(":manifest")]


def scenario_corrupt(workdir, redis, reference):
    url = "redis://127.0.0.1:%d/0" % redis.port
    server = Server("corrupt", workdir, "--store", url)  # Redis alone: every request reads it
    try:
        body = requests_set()[0]
        server.complete(body)  # stored (or already there from the fleet)
        chunk_prefixes = sorted({k.rsplit(":", 1)[0] for k in redis.keys() if k.endswith(":manifest")})
        first = server.complete(body)
        check(all(c["hit"] for c in first["chunks"]), "before damage: hits")
        ids = [c["id"] for c in first["chunks"]]
        prefix = {p.split(":")[-1].strip("{}"): p for p in chunk_prefixes}
        target = prefix[ids[0]]
        other = prefix[ids[1]]

        def damage_and_check(what, damage):
            corrupt_before = server.metric("kvfuse_store_corrupt_total", '{tier="redis"}')
            damage()
            answer = server.complete(body)
            check(answer["tokens"] == reference[0], "%s: the answer changed" % what)
            check(not answer["chunks"][0]["hit"], "%s: the damaged chunk was used (hit)" % what)
            check(server.metric("kvfuse_store_corrupt_total", '{tier="redis"}') == corrupt_before + 1,
                  "%s: not counted as corrupt" % what)
            again = server.complete(body)
            check(all(c["hit"] for c in again["chunks"]), "%s: the chunk was not stored again" % what)
            check(again["tokens"] == reference[0], "%s: the answer after repair changed" % what)

        layer1 = target + ":layer:1"
        damage_and_check("flipped byte", lambda: redis.command(
            "SETRANGE", layer1, 100, bytes([redis.command("GET", layer1)[100] ^ 0x40])))
        damage_and_check("truncated layer", lambda: redis.command("SET", layer1, redis.command("GET", layer1)[:-64]))
        damage_and_check("another chunk's layer", lambda: redis.command("SET", layer1, redis.command("GET", other + ":layer:1")))
        damage_and_check("evicted layer", lambda: redis.command("DEL", target + ":layer:3"))
        damage_and_check("foreign manifest", lambda: redis.command("SET", target + ":manifest", redis.command("GET", other + ":manifest")))
        damage_and_check("garbage manifest", lambda: redis.command("SET", target + ":manifest", b"not a manifest"))
        damage_and_check("manifest of another type", lambda: (redis.command("DEL", target + ":manifest"),
                                                               redis.command("RPUSH", target + ":manifest", b"x")))
        check("checksum mismatch" in server.stderr(), "the warning names the checksum mismatch")
    finally:
        check(server.stop() == 0, "corrupt server exit status")


def scenario_stream(workdir, redis, reference):
    url = "redis://127.0.0.1:%d/0" % redis.port
    for key in redis.keys():  # a Redis of this scenario's own making
        redis.command("DEL", key)
    # Redis alone (no local tier), so that every request reads its chunks from Redis.
    on = Server("stream-on", workdir, "--store", url)
    off = Server("stream-off", workdir, "--store", url, "--no-stream")
    try:
        for rounds in range(2):  # the first computes (on one server or the other), the second reads
            for i, body in enumerate(requests_set()):
                for server in (on, off) if i % 2 == 0 else (off, on):
                    answer = server.complete(body)
                    check(answer["tokens"] == reference[i], "%s request %d (round %d) differs from the cold answer" %
                          (server.name, i, rounds))
                    if rounds == 1 and body["method"] != "full":
                        check(all(c["hit"] for c in answer["chunks"]), "%s request %d: every chunk a hit" % (server.name, i))
        check(on.metric("kvfuse_store_hits_total", '{tier="redis"}') > 0, "the streaming server read chunks from Redis")
        body = requests_set()[0]
        first = on.complete(body)
        target = [k for k in redis.keys() if k.endswith(":manifest") and first["chunks"][1]["id"] in k][0].rsplit(":", 1)[0]
        layers = sorted(int(k.rsplit(":", 1)[1]) for k in redis.keys() if k.startswith(target + ":layer:"))
        check(len(layers) >= 3, "a chunk has its layers in Redis: %s" % layers)
        last = target + ":layer:%d" % layers[-1]

        def damage_and_check(what, damage):
            corrupt_before = on.metric("kvfuse_store_corrupt_total", '{tier="redis"}')
            damage()
            answer = on.complete(body)
            check(answer["tokens"] == reference[0], "stream, %s: the answer changed" % what)
            check(not answer["chunks"][1]["hit"] and answer["chunks"][0]["hit"],
                  "stream, %s: the broken chunk (alone) is a miss: %s" % (what, answer["chunks"]))
            check(on.metric("kvfuse_store_corrupt_total", '{tier="redis"}') == corrupt_before + 1,
                  "stream, %s: not counted as corrupt" % what)
            again = off.complete(body)
            check(again["tokens"] == reference[0] and all(c["hit"] for c in again["chunks"]),
                  "stream, %s: stored again, read whole by the other server" % what)

        damage_and_check("last layer evicted", lambda: redis.command("DEL", last))
        check("recomputed, the request run again" in on.stderr(), "the break came mid-request (after layer 0 was handed out)")
        damage_and_check("last layer flipped", lambda: redis.command(
            "SETRANGE", last, 10, bytes([redis.command("GET", last)[10] ^ 0x01])))
        # Store-only: the broken chunk is refused, never answered from or recomputed.
        redis.command("DEL", last)
        refused = on.complete(dict(body, store_only=True), expect=503)
        check("did not arrive" in refused["error"]["message"] or "not in the store" in refused["error"]["message"],
              "store-only stream break message: %s" % refused)
        check(on.complete(body)["tokens"] == reference[0], "after the store-only refusal")
    finally:
        check(on.stop() == 0 and off.stop() == 0, "stream servers exit 0 on SIGTERM")


def scenario_outage(workdir, redis, reference):
    url = "redis://127.0.0.1:%d/0" % redis.port
    server = Server("outage", workdir, "--store", url, "--redis-timeout-ms", "400")
    try:
        redis.command("FLUSHALL")
        bodies = requests_set()
        results, refused = [], []
        stop = threading.Event()

        def client():
            i = 0
            while not stop.is_set():
                body = dict(bodies[i % len(bodies)])
                store_only = i % 4 == 3
                if store_only:
                    body["store_only"] = True
                status, text, _ = server.request("/v1/completions", body)
                results.append((i % len(bodies), store_only, status, text))
                i += 1

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(1.0)
        redis.kill()
        time.sleep(1.5)
        redis.start()
        time.sleep(2.0)  # the backend retries within its 1 s interval
        # At least 8 requests in all, however slow the machine (a loaded one managed 5 in the
        # 4.5 s above): the client keeps going until then, Redis back up.
        deadline = time.monotonic() + TIMEOUT
        while len(results) < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        thread.join(TIMEOUT)
        check(len(results) >= 8, "only %d requests ran during the outage test" % len(results))
        for index, store_only, status, text in results:
            if status == 200:
                check(json.loads(text)["tokens"] == reference[index], "request %d answered wrongly during the outage" % index)
            else:
                check(store_only and status == 503 and "store_only" in json.loads(text)["error"]["message"],
                      "request %d: status %d: %s" % (index, status, text))
        check(server.metric("kvfuse_store_unavailable_total", '{tier="redis"}') > 0, "the outage was not noticed")
        print("  outage: %d requests, %d answered, %d store_only refused" %
              (len(results), sum(r[2] == 200 for r in results), sum(r[2] == 503 for r in results)), flush=True)
        # Back: chunks are stored in the restarted Redis and read from it.
        body = bodies[1]
        server.complete(body)
        answer = server.complete(body)
        check(all(c["hit"] for c in answer["chunks"]), "no hits after Redis came back")
        check(answer["tokens"] == reference[1], "answer after the outage")
        check("connected again" in server.stderr() or "reconnect" in server.stderr(), "reconnection not reported")
    finally:
        check(server.stop() == 0, "outage server exit status")


def scenario_evict(workdir, redis, reference):
    """Redis under maxmemory with allkeys-lru evicting chunk values as requests run."""
    # Ten chunks of about 60 tokens (about 100 KiB of values each) against room for a few:
    # Redis must evict to take new ones. (Much smaller values against a much smaller room do not
    # work: the connection's buffers then take most of the room and Redis refuses writes, OOM.)
    pool = ["Part %d. " % i + " ".join(CHUNKS[(i + j) % len(CHUNKS)] for j in range(3)) for i in range(10)]
    # Two hot chunks in every request, one cold one each: LRU keeps the hot ones.
    bodies = [{"chunks": [pool[0], pool[1], pool[2 + r]], "question": QUESTION, "method": "a3",
               "ratio": 0.2, "max_tokens": 4} for r in range(8)]
    cold = Server("evict-cold", workdir, "--no-store")
    try:
        expected = [cold.complete(b)["tokens"] for b in bodies]
    finally:
        check(cold.stop() == 0, "evict-cold exit status")
    url = "redis://127.0.0.1:%d/0" % redis.port
    server = Server("evict", workdir, "--store", url)
    try:
        redis.command("FLUSHALL")
        used = int([line for line in redis.command("INFO", "memory").decode().splitlines()
                    if line.startswith("used_memory:")][0].split(":")[1])
        redis.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        redis.command("CONFIG", "SET", "maxmemory", str(used + 768 * 1024))
        for round_ in range(2):
            for i, body in enumerate(bodies):
                check(server.complete(body)["tokens"] == expected[i], "evict: round %d request %d answered wrongly" % (round_, i))
        evicted = int([line for line in redis.command("INFO", "stats").decode().splitlines()
                       if line.startswith("evicted_keys:")][0].split(":")[1])
        check(evicted > 0, "evict: Redis evicted nothing (maxmemory too large for the test)")
        # Redis's LRU clock ticks once a second, so within this short run it evicts almost at
        # random: hits are not required under pressure, only right answers. Once the pressure
        # ends, the chunks are stored whole again and read back.
        redis.command("CONFIG", "SET", "maxmemory", "0")
        server.complete(bodies[0])
        again = server.complete(bodies[0])
        check(again["tokens"] == expected[0] and all(c["hit"] for c in again["chunks"]),
              "evict: no hits once the pressure ended")
        print("  evict: %d keys evicted; %d hits, %d misses, of which %d chunks with a layer evicted" % (
            evicted, server.metric("kvfuse_store_hits_total", '{tier="redis"}'),
            server.metric("kvfuse_store_misses_total", '{tier="redis"}'),
            server.metric("kvfuse_store_corrupt_total", '{tier="redis"}')), flush=True)
    finally:
        redis.command("CONFIG", "SET", "maxmemory", "0")
        check(server.stop() == 0, "evict server exit status")


class RedisCluster:
    """Three redis-server masters of our own on loopback (ports and bus ports free), slots split
    in three with CLUSTER ADDSLOTSRANGE, joined with CLUSTER MEET. A node that goes down leaves
    the others serving their slots (cluster-require-full-coverage no)."""

    def __init__(self, workdir):
        self.nodes = []
        for i in range(3):
            directory = os.path.join(workdir, "cluster-%d" % i)
            os.makedirs(directory, exist_ok=True)
            bus = free_port()
            node = Redis(directory, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         "--cluster-port", str(bus), "--cluster-node-timeout", "2000",
                         "--cluster-require-full-coverage", "no")
            node.bus = bus
            self.nodes.append(node)
        for node, (first, last) in zip(self.nodes, [(0, 5460), (5461, 10922), (10923, 16383)]):
            node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
            node.id = node.command("CLUSTER", "MYID").decode()
        self.settle()

    def meet(self):
        for node in self.nodes[1:]:
            self.nodes[0].command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus)

    def settle(self, alive=None):
        """Waits until the nodes know all three, see the three slot ranges and say
        cluster_state:ok (the `alive` ones, when given: cluster_state:ok). Counted in tries, not wall time, and MEET sent again now and then: a
        run paused by SIGSTOP (`quiet`) can outlast a MEET's handshake, which Redis then drops,
        or leave the nodes briefly in cluster_state:fail when they resume."""
        for tries in range(801):
            if alive and all(b"cluster_state:ok\r\n" in n.command("CLUSTER", "INFO") for n in alive):
                return  # (once the dead node is marked failed, CLUSTER SLOTS may leave out its slots)
            if not alive and all(self.ready(n) for n in self.nodes):
                return
            if tries % 40 == 0 and alive is None:
                self.meet()  # to a known node: a handshake dropped as soon as its id is seen
            time.sleep(0.05)
        fail("the Redis Cluster did not form: %s" % [n.command("CLUSTER", "INFO") for n in (alive or self.nodes)])

    @staticmethod
    def ready(node):
        info = node.command("CLUSTER", "INFO").decode()
        return "cluster_state:ok" in info and "cluster_known_nodes:3" in info and len(node.command("CLUSTER", "SLOTS")) == 3

    def owner(self, slot, alive=None):
        """The node that serves `slot` as the alive nodes (all by default) see it."""
        for asking in alive or self.nodes:
            for first, last, master, *_ in asking.command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    return next(n for n in self.nodes if n.port == master[1])
        fail("no node serves slot %d" % slot)

    def keys(self, alive=None):
        return sorted(k for n in (alive or self.nodes) for k in n.keys())

    def stop(self):
        for node in self.nodes:
            node.stop()


def scenario_cluster(workdir, redis, reference):
    cluster = RedisCluster(workdir)
    first, second, third = cluster.nodes
    url = lambda node: "redis://127.0.0.1:%d" % node.port
    servers = []
    try:
        # Two servers through different nodes: a (with a local cache) computes, b (Redis alone,
        # streamed reads) and d (whole reads) read what a stored.
        a = Server("cluster-a", workdir, "--store", url(first), "--local-cache", os.path.join(workdir, "cluster-cache-a"))
        servers.append(a)
        for i, body in enumerate(requests_set()):
            check(a.complete(body)["tokens"] == reference[i], "cluster-a request %d differs from the cold answer" % i)
        manifests = [k for k in cluster.keys() if k.endswith(":manifest")]
        check(len(manifests) == len(CHUNKS), "one manifest per chunk in the cluster: %d" % len(manifests))
        holders = [n for n in cluster.nodes if any(k.endswith(":manifest") for k in n.keys())]
        check(len(holders) >= 2, "the chunks spread over the cluster's masters")
        for node in cluster.nodes:  # every key on the node serving its slot, a chunk on one node
            for k in node.keys():
                check(cluster.owner(node.command("CLUSTER", "KEYSLOT", k)) is node, "key %s on a node not serving its slot" % k)
        cluster.settle()
        b = Server("cluster-b", workdir, "--store", url(third))
        d = Server("cluster-d", workdir, "--store", url(second), "--no-stream")
        servers += [b, d]
        for server in (b, d):
            for i, body in enumerate(requests_set()):
                answer = server.complete(body)
                check(answer["tokens"] == reference[i], "%s request %d differs from the cold answer" % (server.name, i))
                if body["method"] != "full":
                    check(all(c["hit"] for c in answer["chunks"]), "%s request %d: every chunk a hit" % (server.name, i))
            check(server.metric("kvfuse_chunks_computed_total") == 0, "%s computed a chunk" % server.name)
            # Zero redirects: the server's slots (CRC16 of the {digest} tag) are the cluster's own.
            check(server.metric("kvfuse_store_redirects_total", '{tier="redis"}') == 0,
                  "%s was redirected: its key slots are not the cluster's" % server.name)
        # A seed list whose first host is down: the next one is asked.
        c = Server("cluster-c", workdir, "--store", "redis://127.0.0.1:%d,127.0.0.1:%d" % (free_port(), second.port))
        servers.append(c)
        answer = c.complete(requests_set()[0])
        check(answer["tokens"] == reference[0] and all(ch["hit"] for ch in answer["chunks"]), "seed list: hits, same answer")

        # The slot of request 0's first chunk moves to another node while b and d read it: first
        # half of its keys migrated (ASK for those), then all and the slot reassigned (MOVED).
        body = requests_set()[0]
        digest = a.complete(body)["chunks"][0]["id"]
        cluster.settle()
        keys = sorted(k for k in cluster.keys() if "{%s}" % digest in k)
        slot = first.command("CLUSTER", "KEYSLOT", keys[0])
        source = cluster.owner(slot)
        target = next(n for n in cluster.nodes if n is not source)
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
        moving = [k for k in keys if k.endswith(":manifest") or k.endswith(":layer:1") or k.endswith(":layer:3")]
        source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moving)
        for server in (b, d):
            before = server.metric("kvfuse_store_redirects_total", '{tier="redis"}')
            answer = server.complete(body)
            check(answer["tokens"] == reference[0] and all(ch["hit"] for ch in answer["chunks"]),
                  "%s during the migration: a miss or another answer" % server.name)
            check(server.metric("kvfuse_store_redirects_total", '{tier="redis"}') >= before + len(moving),
                  "%s during the migration: ASK not followed" % server.name)
        rest = [k for k in keys if k not in moving]
        source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *rest)
        for node in cluster.nodes:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target.id)
        check(sorted(target.keys("*{%s}*" % digest)) == keys, "every key of the chunk moved")
        for server in (b, d):
            before = server.metric("kvfuse_store_redirects_total", '{tier="redis"}')
            for _ in range(2):
                answer = server.complete(body)
                check(answer["tokens"] == reference[0] and all(ch["hit"] for ch in answer["chunks"]),
                      "%s after the migration: a miss or another answer" % server.name)
            moved = server.metric("kvfuse_store_redirects_total", '{tier="redis"}') - before
            check(moved >= 1, "%s after the migration: MOVED not seen" % server.name)
            # The map was refreshed: a third read goes straight to the new owner.
            server.complete(body)
            check(server.metric("kvfuse_store_redirects_total", '{tier="redis"}') - before == moved,
                  "%s keeps being redirected after MOVED (map not refreshed)" % server.name)

        # A node killed: the chunks it held are misses, recomputed (and not stored: their slots
        # have no node), the others' still hits; every answer the cold one; store_only a 503.
        victim = cluster.owner(slot)
        lost = {k.split("{")[1].split("}")[0] for k in victim.keys() if k.endswith(":manifest")}
        victim.kill()
        alive = [n for n in cluster.nodes if n is not victim]
        cluster.settle(alive)
        for server in (b, d):
            computed = server.metric("kvfuse_chunks_computed_total")
            for i, body in enumerate(requests_set()):
                answer = server.complete(body)
                check(answer["tokens"] == reference[i], "%s with a node down: request %d differs" % (server.name, i))
                if body["method"] != "full":
                    for ch in answer["chunks"]:
                        check(ch["hit"] == (ch["id"] not in lost),
                              "%s with a node down: chunk %s hit=%s" % (server.name, ch["id"][:8], ch["hit"]))
            check(server.metric("kvfuse_chunks_computed_total") > computed, "%s recomputed nothing" % server.name)
            check(server.healthy(), "%s stopped serving with a node down" % server.name)
        refused = b.complete(dict(requests_set()[0], store_only=True), expect=503)
        check("store_only" in refused["error"]["message"], "store-only with a node down: %s" % refused)
        print("  cluster: chunks on %d nodes, slot %d moved with %d keys, %d chunks lost with the killed node" %
              (len(holders), slot, len(keys), len(lost)), flush=True)
    finally:
        statuses = [s.stop() for s in servers]
        cluster.stop()
        check(all(code == 0 for code in statuses), "cluster servers exit 0 on SIGTERM: %s" % statuses)


def scenario_bad(workdir, redis, reference):
    server = Server("bad", workdir, "--store", os.path.join(workdir, "bad-store"), "--max-body", "65536")
    try:
        good = requests_set()[0]
        cases = [
            ("malformed JSON", b'{"chunks": ["a", "question": }', 400, "malformed JSON"),
            ("not an object", b'[1, 2]', 400, "JSON object"),
            ("invalid UTF-8", b'{"prompt": "\xff\xfe"}', 400, "malformed JSON"),
            ("unknown method", {"chunks": CHUNKS[:2], "question": QUESTION, "method": "magic"}, 400, "unknown method"),
            ("ratio above 1", {"chunks": CHUNKS[:2], "question": QUESTION, "ratio": 1.5}, 400, "ratio"),
            ("ratio zero", {"chunks": CHUNKS[:2], "question": QUESTION, "ratio": 0}, 400, "ratio"),
            ("ratio a string", {"chunks": CHUNKS[:2], "question": QUESTION, "ratio": "high"}, 400, "ratio"),
            ("empty question", {"chunks": CHUNKS[:2], "question": ""}, 400, "question"),
            ("no question", {"chunks": CHUNKS[:2]}, 400, "question"),
            ("no chunks", {"chunks": [], "question": QUESTION}, 400, "chunks"),
            ("chunk of wrong type", {"chunks": [7], "question": QUESTION}, 400, "chunks[0]"),
            ("token id outside the vocabulary", {"chunks": [{"tokens": [1, 99999]}], "question": QUESTION}, 400, "vocabulary"),
            ("max_tokens 0", {"prompt": "Once", "max_tokens": 0}, 400, "max_tokens"),
            ("sampling", {"prompt": "Once", "temperature": 0.8}, 400, "greedily"),
            ("unknown chunk id", {"chunks": [{"id": "ab" * 32}], "question": QUESTION}, 404, "unknown chunk id"),
            ("over the context", {"prompt": "Once upon a time " * 800, "max_tokens": 1}, 400, "context"),
            ("oversized body", b'{"prompt": "' + b"a" * 70000 + b'"}', 413, "too large"),
        ]
        for what, body, status_expected, words in cases:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            status, text, _ = server.request("/v1/completions", raw=raw)
            check(status == status_expected, "%s: status %d, expected %d: %s" % (what, status, status_expected, text))
            message = json.loads(text)["error"]["message"]
            check(words in message, "%s: the message %r does not say %r" % (what, message, words))
            check(server.healthy(), "%s: the server stopped serving" % what)
        status, text, _ = server.request("/v1/nothing")
        check(status == 404 and "error" in json.loads(text), "unknown endpoint: %d %s" % (status, text))
        status, text, _ = server.request("/v1/chunks", {"texts": [""]})
        check(status == 400, "/v1/chunks with an empty text: %d" % status)
        check(server.complete(good)["tokens"] == reference[0], "a good request after the bad ones")
        plain = server.complete({"prompt": "Once upon a time", "max_tokens": 8})
        check(plain["object"] == "text_completion" and isinstance(plain["choices"][0]["text"], str)
              and plain["usage"]["completion_tokens"] == 8, "plain completion shape: %s" % plain)
        check(server.metric("kvfuse_requests_total", '{endpoint="/v1/completions",code="400"}') >= 12, "400s counted")
    finally:
        check(server.stop() == 0, "bad server exit status")


def scenario_storeonly(workdir, redis, reference):
    """--store-only: a chunk the store lacks is a 503, never computed, unless the request says so."""
    server = Server("storeonly", workdir, "--store", os.path.join(workdir, "storeonly"), "--store-only")
    try:
        body = requests_set()[0]
        refused = server.complete(body, expect=503)
        check("store_only" in refused["error"]["message"], "store-only refusal message: %s" % refused)
        check(server.metric("kvfuse_chunks_computed_total") == 0, "store-only computed a chunk")
        check(server.complete(dict(body, store_only=False))["tokens"] == reference[0], "store_only false computes")
        answer = server.complete(body)
        check(answer["tokens"] == reference[0] and all(c["hit"] for c in answer["chunks"]), "store-only after storing")
    finally:
        check(server.stop() == 0, "storeonly server exit status")
    plain = Server("nostore-storeonly", workdir, "--no-store")
    try:
        refused = plain.complete(dict(requests_set()[0], store_only=True), expect=400)
        check("needs a store" in refused["error"]["message"], "store_only without a store: %s" % refused)
    finally:
        check(plain.stop() == 0, "nostore-storeonly server exit status")


def scenario_queue(workdir, redis, reference):
    server = Server("queue", workdir, "--no-store", "--queue", "1", "--max-tokens-limit", "512")
    try:
        body = {"chunks": CHUNKS, "question": QUESTION, "method": "full", "max_tokens": 400}
        results = []

        def client():
            results.append(server.request("/v1/completions", body))

        threads = [threading.Thread(target=client) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        statuses = sorted(r[0] for r in results)
        check(len(results) == 12 and set(statuses) <= {200, 503}, "queue: statuses %s" % statuses)
        check(200 in statuses and 503 in statuses, "queue of 1 under 12 clients: statuses %s" % statuses)
        print("  queue: %d answered, %d refused" % (statuses.count(200), statuses.count(503)), flush=True)
        for status, text, headers in results:
            if status == 503:
                check("queue is full" in json.loads(text)["error"]["message"] and headers.get("Retry-After") == "1",
                      "503 without its message or Retry-After: %s %s" % (text, headers))
        check(server.healthy(), "queue: the server stopped serving")
    finally:
        check(server.stop() == 0, "queue server exit status")


def scenario_shutdown(workdir, redis, reference):
    store = os.path.join(workdir, "shutdown-store")
    server = Server("shutdown", workdir, "--store", store)
    results = []

    def client(body):
        try:
            results.append(server.request("/v1/completions", body))
        except (urllib.error.URLError, ConnectionError) as e:  # refused once the listener closed
            results.append((None, str(e), {}))

    threads = [threading.Thread(target=client, args=(b,)) for b in requests_set()]
    for t in threads:
        t.start()
    time.sleep(0.05)
    status = server.stop(signal.SIGTERM)
    for t in threads:
        t.join(TIMEOUT)
    check(status == 0, "SIGTERM: exit status %s: %s" % (status, server.stderr()))
    for i, (code, text, _) in enumerate(results):
        check(code in (None, 200, 503), "shutdown: a request got %s: %s" % (code, text))
    check(not [f for f in os.listdir(store) if f.startswith(".tmp-")], "SIGTERM left a temporary file")
    print("  shutdown: %d answered, %d refused or not connected, %d chunk files" %
          (sum(r[0] == 200 for r in results), sum(r[0] != 200 for r in results),
           len([f for f in os.listdir(store) if f.endswith(".kvchunk")])), flush=True)
    # Whatever was stored is whole: a new server reads it and answers as the cold server.
    again = Server("after-shutdown", workdir, "--store", store)
    try:
        for i, body in enumerate(requests_set()):
            check(again.complete(body)["tokens"] == reference[i], "after SIGTERM: request %d" % i)
        check(again.metric("kvfuse_store_corrupt_total", '{tier="fs"}') == 0, "after SIGTERM: a damaged chunk file")
    finally:
        check(again.stop() == 0, "after-shutdown server exit status")


def scenario_storelimit(workdir, redis, reference):
    """--store-limit: the directory never keeps more chunk files than the limit (the least
    recently used go), answers stay the cold ones (an evicted chunk is recomputed), and a local
    cache tier in front of Redis is bounded the same way while Redis keeps everything."""
    directory = os.path.join(workdir, "limited")
    probe = Server("storelimit-probe", workdir, "--store", os.path.join(workdir, "probe"))
    try:
        probe.complete(requests_set()[0])
    finally:
        check(probe.stop() == 0, "storelimit probe exit status")
    sizes = [os.path.getsize(os.path.join(workdir, "probe", f)) for f in os.listdir(os.path.join(workdir, "probe"))
             if f.endswith(".kvchunk")]
    check(len(sizes) == 3, "probe stored its three chunks: %s" % sizes)
    limit = max(sizes) * 2 + max(sizes) // 2  # room for two chunk files

    def chunk_files(path):
        return [os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".kvchunk")]

    server = Server("storelimit", workdir, "--store", directory, "--store-limit", str(limit))
    try:
        for i, body in enumerate(requests_set()):
            check(server.complete(body)["tokens"] == reference[i], "storelimit request %d differs from the cold answer" % i)
            files = chunk_files(directory)
            check(sum(files) <= limit and len(files) <= 2, "request %d left %s bytes of chunk files (limit %d)" % (i, files, limit))
        check(server.metric("kvfuse_chunks_computed_total") > len(CHUNKS), "evicted chunks were computed again")
    finally:
        check(server.stop() == 0, "storelimit server exit status")
    redis.command("FLUSHALL")
    cache = os.path.join(workdir, "limited-cache")
    tiered = Server("storelimit-tiered", workdir, "--store", "redis://127.0.0.1:%d/0" % redis.port, "--local-cache", cache,
                    "--store-limit", str(limit))
    try:
        for i, body in enumerate(requests_set()):
            check(tiered.complete(body)["tokens"] == reference[i], "tiered storelimit request %d differs" % i)
            check(len(chunk_files(cache)) <= 2, "the local tier kept %d chunk files" % len(chunk_files(cache)))
        check(len(manifest_keys(redis)) == len(CHUNKS), "Redis keeps every chunk")
        check(tiered.metric("kvfuse_chunks_computed_total") == len(CHUNKS), "chunks evicted locally come back from Redis")
    finally:
        check(tiered.stop() == 0, "storelimit tiered server exit status")


def scenario_startup(workdir, redis, reference):
    """What cannot be served is refused at start, with the reason and status 1, never a hang."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = str(holder.getsockname()[1])
    cases = [
        (["--store", "redis://127.0.0.1:notaport"], "port"),
        (["--store", "redis://user:pw@127.0.0.1:6379"], "credentials"),
        (["--store", os.path.join(workdir, "s"), "--local-cache", os.path.join(workdir, "c")], "redis://"),
        (["--no-store", "--local-cache", os.path.join(workdir, "c")], "redis://"),
        (["--store", "redis://127.0.0.1:%d/0" % redis.port, "--store-limit", "1G"], "local cache tier"),
        (["--model", os.path.join(workdir, "missing.gguf"), "--no-store"], "cannot open"),
        (["--no-store", "--port", busy], "cannot listen"),
    ]
    try:
        for args, words in cases:
            port = [] if "--port" in args else ["--port", "0"]
            try:
                done = subprocess.run([KVFUSE, "serve", "--host", "127.0.0.1", *port, *args], capture_output=True,
                                      text=True, timeout=60)
            except subprocess.TimeoutExpired:
                fail("serve %s did not exit" % " ".join(args))
            check(done.returncode == 1 and words in done.stderr,
                  "serve %s: status %d, stderr %r (wanted %r)" % (" ".join(args), done.returncode, done.stderr, words))
    finally:
        holder.close()


def main():
    if KVFUSE is None or not os.access(KVFUSE, os.X_OK):
        fail("usage: serve_test.py KVFUSE_BINARY [scenario ...]")
    workdir = tempfile.mkdtemp(prefix="kvfuse-serve-test-")
    redis = None
    ok = False
    try:
        redis = Redis(workdir)
        reference = cold_answers(workdir)
        for name in SCENARIOS:
            started = time.time()
            globals()["scenario_" + name](workdir, redis, reference)
            print("ok: %s (%.1f s)" % (name, time.time() - started), flush=True)
        ok = True
    finally:
        if redis:
            redis.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("logs kept in " + workdir, flush=True)
    print("serve tests passed: " + " ".join(SCENARIOS))


if __name__ == "__main__":
    main()
