#!/usr/bin/env python3
"""ctest `before_after_harness`: bench/before_after (tools/before_after.sh's harness) on this build.

    before_after_harness_test.py HARNESS

Runs the light rows (RoPE in L2, the two top-k) twice with one sample each and checks: status 0,
one JSON document with a row per kernel and thread count, positive times, the same input hash and
output checksum in both runs (the inputs are fixed, so the old and the new build time the same
bytes), and that tools/before_after_table.py reads the two runs. Bad options: status 2 and one
usage message, no JSON.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE = os.path.join(HERE, "..", "tools", "before_after_table.py")
HARNESS = None
LIGHT = ["--min-samples", "1", "--min-seconds", "0", "--warmup", "1", "--filter", "rope,topk"]


def run(*args):
    env = dict(os.environ, KVFUSE_PROFILE="none")
    return subprocess.run([HARNESS, *args], capture_output=True, text=True, timeout=300, env=env)


class BeforeAfterHarnessTest(unittest.TestCase):
    def test_light_rows_twice(self):
        runs = []
        for _ in range(2):
            r = run(*LIGHT)
            self.assertEqual(r.returncode, 0, r.stderr)
            runs.append((r.stdout, json.loads(r.stdout)))
        first, second = runs[0][1], runs[1][1]
        names = [row["name"] for row in first["rows"]]
        self.assertEqual(names, ["rope/f32/128x8x128/l2/threads:1", "rope/f32/128x8x128/l2/threads:2",
                                 "topk/n:131072/k:19660/threads:1", "topk/n:131072/k:19660/threads:2",
                                 "topk/n:131072/k:1310/threads:1", "topk/n:131072/k:1310/threads:2"])
        self.assertEqual(first["versioned_structs"], 1)
        for a, b in zip(first["rows"], second["rows"]):
            self.assertGreater(a["median_s"], 0)
            self.assertGreaterEqual(a["samples"], 1)
            self.assertEqual(a["input_hash"], b["input_hash"], a["name"])
            self.assertEqual(a["checksum"], b["checksum"], a["name"])
            self.assertIsNotNone(a["checksum"], a["name"])
        # The same inputs at 1 and 2 threads (one row, two thread counts).
        self.assertEqual(first["rows"][0]["input_hash"], first["rows"][1]["input_hash"])
        with tempfile.TemporaryDirectory() as d:
            paths = []
            for i, (text, _) in enumerate(runs):
                paths.append(os.path.join(d, f"{i}.json"))
                with open(paths[-1], "w", encoding="utf-8") as f:
                    f.write(text)
            t = subprocess.run([sys.executable, TABLE, "--old", *paths, "--new", *paths],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(t.returncode, 0, t.stderr)
            self.assertIn("| topk/n:131072/k:1310 | 2 |", t.stdout)
            self.assertIn("Slower beyond noise: none.", t.stdout)

    def test_list(self):
        r = run("--list")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.split()), 8)
        self.assertIn("gemm/f32/gate_up/n:512/out:2816/in:1024", r.stdout.split())

    def test_bad_options(self):
        for args, needle in [(["--min-samples", "x"], "--min-samples"), (["--min-seconds", "-1"], "--min-seconds"),
                             (["--warmup"], "needs a value"), (["--bogus"], "unknown argument"),
                             (["--filter", "nothing-matches"], "matches no row"), (["--filter", ","], "at least one")]:
            r = run(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(needle, r.stderr)
            self.assertIn("usage:", r.stderr)
            self.assertEqual(r.stdout, "")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: before_after_harness_test.py HARNESS")
    HARNESS = sys.argv.pop(1)
    unittest.main()
