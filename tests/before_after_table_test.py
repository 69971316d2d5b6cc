#!/usr/bin/env python3
"""ctest `before_after_table`: tools/before_after_table.py on made-up rounds, no harness run.

Each case writes rounds as bench/before_after prints them and checks the verdicts: a row slower
in every round by more than the spread is "slower", one whose rounds overlap is within noise,
one faster is "faster"; a row whose inputs differ between the builds is flagged; bad input
(malformed JSON, rounds with different rows, a non-positive time) fails with one line and status
1; --json-out holds the figures.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE = os.path.join(HERE, "..", "tools", "before_after_table.py")


def doc(rows, version="0.1.0"):
    return {"kvfuse_version": version, "versioned_structs": 1, "active_isa": "avx2", "profile": "none",
            "tuning": {"attention_key_tile": 64}, "min_samples": 3, "min_seconds": 0,
            "rows": [{"name": f"{k}/threads:1", "kernel": k, "threads": 1, "median_s": t, "min_s": t, "max_s": t,
                      "samples": 3, "batch": 1, "rate": 1.0 / t if t else 0.0, "unit": "GB/s", "input_hash": h,
                      "checksum": c} for k, t, h, c in rows]}


class BeforeAfterTableTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="before-after-test-")

    def write(self, name, content):
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))
        return path

    def rounds(self, side, per_round):
        return [self.write(f"{side}-{i}.json", doc(rows)) for i, rows in enumerate(per_round)]

    def run_table(self, old, new, *extra):
        return subprocess.run([sys.executable, TABLE, "--old", *old, "--new", *new, *extra],
                              capture_output=True, text=True, timeout=60)

    def line_of(self, out, kernel):
        lines = [l for l in out.splitlines() if l.startswith(f"| {kernel} |")]
        self.assertEqual(len(lines), 1, out)
        return lines[0]

    def test_verdicts(self):
        # (kernel, old times per round, new times per round)
        cases = [("slow", [1.00, 1.01, 0.99], [1.20, 1.21, 1.19]),   # 20 % slower, 2 % spread
                 ("noisy", [1.00, 1.30, 0.90], [1.10, 1.20, 1.00]),  # ranges overlap
                 ("fast", [2.00, 2.02, 1.98], [1.00, 1.01, 0.99]),
                 ("near", [1.00, 1.05, 0.96], [1.06, 1.07, 1.065])]  # disjoint, but within the spread
        old = self.rounds("old", [[(k, o[i], "aa", 1.5) for k, o, _ in cases] for i in range(3)])
        new = self.rounds("new", [[(k, n[i], "aa", 1.5) for k, _, n in cases] for i in range(3)])
        json_out = os.path.join(self.dir, "out.json")
        r = self.run_table(old, new, "--json-out", json_out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("| slower |", self.line_of(r.stdout, "slow"))
        self.assertIn("| 1.200 |", self.line_of(r.stdout, "slow"))
        self.assertIn("same (within noise)", self.line_of(r.stdout, "noisy"))
        self.assertIn("| faster |", self.line_of(r.stdout, "fast"))
        self.assertIn("same (within noise)", self.line_of(r.stdout, "near"))
        self.assertIn("Slower beyond noise: slow threads:1.", r.stdout)
        self.assertIn("| equal |", self.line_of(r.stdout, "slow"))
        with open(json_out, encoding="utf-8") as f:
            figures = json.load(f)
        slow = [row for row in figures["rows"] if row["kernel"] == "slow"][0]
        self.assertAlmostEqual(slow["old_s"], 1.00)
        self.assertAlmostEqual(slow["new_s"], 1.20)
        self.assertAlmostEqual(slow["old_spread"], 0.02)
        self.assertEqual(slow["verdict"], "slower")
        self.assertEqual(set(figures["builds"]), {"old", "new"})

    def test_inputs_and_outputs_compared(self):
        old = self.rounds("old", [[("k", 1.0, "aa", 1.0), ("nan", 1.0, "bb", None)]] * 2)
        new = self.rounds("new", [[("k", 1.0, "ab", 1.0001), ("nan", 1.0, "bb", None)]] * 2)
        r = self.run_table(old, new)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("INPUTS DIFFER", self.line_of(r.stdout, "k"))
        self.assertIn("rel. diff 1.0e-04", self.line_of(r.stdout, "k"))
        self.assertIn("not finite", self.line_of(r.stdout, "nan"))
        self.assertIn("Inputs differ between the builds (not comparable): k/threads:1.", r.stdout)

    def test_bad_input(self):
        good = self.rounds("old", [[("k", 1.0, "aa", 1.0)]] * 2)
        other_rows = self.write("other.json", doc([("j", 1.0, "aa", 1.0)]))
        zero = self.write("zero.json", doc([("k", 0.0, "aa", 1.0)]))
        broken = self.write("broken.json", "{\"rows\": [")
        no_rows = self.write("norows.json", {"rows": []})
        missing = os.path.join(self.dir, "missing.json")
        for old, new, needle in [([broken], good, "broken.json"), ([no_rows], good, "no rows"),
                                 ([good[0], other_rows], good, "rows differ"), (good, [other_rows, other_rows],
                                                                                "different rows"),
                                 ([zero], good, "median_s must be > 0"), ([missing], good, "missing.json")]:
            out_json = os.path.join(self.dir, "never.json")
            r = self.run_table(old, new, "--json-out", out_json)
            self.assertEqual(r.returncode, 1, (needle, r.stdout, r.stderr))
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn(needle, r.stderr)
            self.assertEqual(r.stdout, "")
            self.assertFalse(os.path.exists(out_json))


if __name__ == "__main__":
    unittest.main()
