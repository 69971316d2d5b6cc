#!/usr/bin/env python3
"""ctest `perf_report`: tools/perf_report.py on recorded JSON, no benchmark run.

The fixtures in tests/data/perf_report/ are a real `tools/report.sh --quick` run, trimmed (fewer
benchmarks and aggregates; the `mean` rows of bench_rope.json doubled, so that taking the mean
instead of the median shows), so their format is exactly what the benchmarks write;
bench_gemm.json is two rows of a real bench_gemm run (Zen 5 VM, loaded machine);
serve_bundled.json is a real `tools/serve_load.py --stores fs,redis --clients 2 --requests 8
--pool 8 --json-out` run (loaded machine). Checks that
the report has every table with figures taken from the JSON, that charts are drawn when gnuplot
exists (skipped otherwise) and that the tables are still written without it, and that bad input
fails with one clear line, a non-zero status, and no file replaced.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATOR = os.path.join(HERE, "..", "tools", "perf_report.py")
FIXTURES = os.path.join(HERE, "data", "perf_report")


def run(results, out, *extra, env=None):
    return subprocess.run([sys.executable, GENERATOR, "--results", results, "--out", out, *extra],
                          capture_output=True, text=True, timeout=120, env=env)


class PerfReportTest(unittest.TestCase):
    def setUp(self):
        self.temp = tempfile.mkdtemp(prefix="perf-report-test-")
        self.results = os.path.join(self.temp, "raw")
        shutil.copytree(FIXTURES, self.results)
        self.out = os.path.join(self.temp, "out")

    def tearDown(self):
        shutil.rmtree(self.temp, ignore_errors=True)

    def report(self):
        with open(os.path.join(self.out, "PERFORMANCE.md"), encoding="utf-8") as handle:
            return handle.read()

    def counter(self, name, benchmark_prefix, counter):
        with open(os.path.join(self.results, name), encoding="utf-8") as handle:
            for row in json.load(handle)["benchmarks"]:
                if row["name"].startswith(benchmark_prefix):
                    return row[counter]
        raise KeyError(benchmark_prefix)

    def test_tables_from_the_json(self):
        result = run(self.results, self.out, "--no-charts")
        self.assertEqual(result.returncode, 0, result.stderr)
        text = self.report()
        self.assertNotIn("{{", text)
        for header in (
                "| kernel | benchmark | figure | % of roofline | x baseline | tuned ÷ default | threads |",
                "| benchmark | median time | GB/s | copy GB/s | % of copy |",
                "| benchmark | median time | Mscores/s | floor Mscores/s | % of floor | baseline Mscores/s | x baseline |",
                "| benchmark | median time | GFLOP/s | FMA peak GFLOP/s | % of peak | reference GFLOP/s | x reference |",
                "| benchmark | median time | GOP/s | int8 peak GOP/s | % of int8 peak | f32 GOP/s | x f32 |",
                "| benchmark | median time (tuned) | tuned | default | tuned ÷ default speed |",
                "| method | ratio | recompute | TTFT ms | x full | load ms | rotate ms | full layers ms |",
                "| ratio | recompute | TTFT ms | x full |",
                "| document tokens | T | rounds | full ms (x full) |",
                "| document tokens | tokens/s | dense GFLOP/s | dense % of peak |",
                "| kernel (2 threads) | FLOP (OP) per byte | GFLOP/s (GOP/s) |",
                "| step | wall s | CPU s | load average at its end | command |",
                "| target (issues 2, 3, 6) | this run |  |",
                "| tune | "):
            self.assertIn(header, text)
        for method in ("full", "reuse", "epic", "cacheblend", "a3"):
            self.assertRegex(text, rf"\n\| {method} \| ")
        # Figures are this run's: the a3 TTFT and the attention rate as the JSON has them.
        a3_ms = self.counter("ttft_main.json", "ttft/ctx:1024", "a3_ms")
        self.assertIn(f"| {a3_ms:.0f} |", text)
        gflops = self.counter("bench_attention.json", "attention/avx2/f32", "GFLOP/s")
        self.assertIn(f"| {gflops:.1f} |", text)
        # The dense-layer rows of the summary, f32 and bf16 weights, against OpenBLAS.
        for dtype in ("f32", "bf16"):
            gemm = self.counter("bench_gemm.json", f"gemm/avx512/{dtype}/gate_up", "GFLOP/s")
            self.assertRegex(text, rf"\| dense layer \(GEMM\), {dtype} weights \| `gemm/avx512/{dtype}/gate_up/[^`]*` \| {gemm:.1f} GFLOP/s \|")
        # The median of the repetitions, not the mean listed before it in the file.
        median = self.counter("bench_rope.json", "rope/avx2/f32/32768x8x128/dram/threads:2/iterations:30/manual_time_median", "GB/s")
        self.assertIn(f"| {median:.1f} |", text)
        # Every context length of both files, the quick-mode warning, no absolute result paths.
        for context in ("512", "1024", "2048"):
            self.assertRegex(text, rf"\n\| {context} \| \d+ \| 1 \| ")
        self.assertIn("quick pipeline check", text)
        self.assertNotIn("raw.partial", text)
        self.assertIn("charts not requested", text)

    def test_engine_section(self):
        """Tiny calls, quantizers and per-request selection from their JSON; a run without
        them (an older raw directory) says so instead of failing."""
        result = run(self.results, self.out, "--no-charts")
        self.assertEqual(result.returncode, 0, result.stderr)
        text = self.report()
        for header in ("| benchmark | how | µs per call | target |",
                       "| benchmark | median time | Mrows/s | f32 Mrows/s | x f32 |"):
            self.assertIn(header, text)
        x = self.counter("bench_select.json", "select/avx512/int8_vs_f32", "x_baseline")
        self.assertIn(f"| {x:.2f} |", text)
        for name in ("bench_context", "bench_quantize", "bench_select"):
            os.remove(os.path.join(self.results, name + ".json"))
        result = run(self.results, self.out, "--no-charts")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Not in this run", self.report())

    def test_weights_section(self):
        """The weight-type table from ttft_weights_<type>.json (a real quick run: the small model
        as Q4_K_M): file, prefill, a3, KV and peak RSS as the JSON has them; a run without the
        files says so."""
        result = run(self.results, self.out, "--no-charts")
        self.assertEqual(result.returncode, 0, result.stderr)
        text = self.report()
        self.assertIn("| weights | file MiB | full prefill ms | tokens/s | a3 TTFT ms | a3 x full | KV MiB | "
                      "peak RSS MiB | RSS ÷ (file + KV) |", text)
        get = lambda counter: self.counter("ttft_weights_q4_k_m.json", "ttft/ctx:512", counter)
        rss, file_mib, kv = get("peak_rss_MiB"), get("model_file_MiB"), get("kv_MiB")
        self.assertRegex(text, rf"\n\| q4_k_m \| [^|]+ \| [^|]+ \| [^|]+ \| [^|]+ \| {get('a3_x'):.2f} \| [^|]+ \| "
                               rf"[^|]+ \| {rss / (file_mib + kv):.2f} \|")
        os.remove(os.path.join(self.results, "ttft_weights_q4_k_m.json"))
        result = run(self.results, self.out, "--no-charts")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("### By weight type", self.report())
        self.assertRegex(self.report(), r"RSS ≤ 1\.3 × \(file \+ KV\) for a quantized file\.\n\nNot measured in this run\.")

    def test_serving_section(self):
        """The load test's table from serve_load.py's JSON; a run without it says so, and a
        file that is not serve_load output fails clearly."""
        result = run(self.results, self.out, "--no-charts")
        self.assertEqual(result.returncode, 0, result.stderr)
        text = self.report()
        self.assertIn("| store | method | requests | errors | req/s | TTFT p50 ms |", text)
        with open(os.path.join(self.results, "serve_bundled.json"), encoding="utf-8") as handle:
            rows = json.load(handle)["rows"]
        for row in rows:
            self.assertIn(f"| {row['store']} | {row['method']} | {row['requests']} | {row['errors']} | "
                          f"{row['throughput']:.1f} | {row['ttft_p50']:.2f} |", text)
        self.assertIn("TTFT p50, full ÷ a3: fs ", text)
        with open(os.path.join(self.results, "serve_bundled.json"), "w", encoding="utf-8") as handle:
            json.dump({"rows": rows}, handle)
        result = run(self.results, self.out, "--no-charts")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("not a serve_load result", result.stderr)
        os.remove(os.path.join(self.results, "serve_bundled.json"))
        result = run(self.results, self.out, "--no-charts")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("no serve_model.json or serve_bundled.json", self.report())

    def test_charts(self):
        if shutil.which("gnuplot") is None:
            self.skipTest("gnuplot not installed (tools/setup.sh --report)")
        result = run(self.results, self.out)
        self.assertEqual(result.returncode, 0, result.stderr)
        text = self.report()
        for chart in ("roofline", "ttft_methods", "ttft_context", "ttft_ratio"):
            self.assertIn(f"(perf/{chart}.png)", text)
            with open(os.path.join(self.out, "perf", chart + ".png"), "rb") as handle:
                self.assertEqual(handle.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertEqual([f for f in os.listdir(os.path.join(self.out, "perf")) if ".tmp" in f], [])

    def test_without_gnuplot_the_tables_are_still_written(self):
        env = dict(os.environ, PATH=self.temp)  # a PATH where no gnuplot can be found
        result = run(self.results, self.out, env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("gnuplot not found", result.stderr)
        text = self.report()
        self.assertIn("No chart: gnuplot not found", text)
        self.assertIn("| method | ratio | recompute | TTFT ms |", text)

    def expect_failure(self, message):
        os.makedirs(self.out, exist_ok=True)
        previous = os.path.join(self.out, "PERFORMANCE.md")
        with open(previous, "w", encoding="utf-8") as handle:
            handle.write("the previous report\n")
        result = run(self.results, self.out)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn(message, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(self.report(), "the previous report\n")
        self.assertFalse(os.path.exists(os.path.join(self.out, "perf")), "charts drawn from bad input")

    def test_missing_file(self):
        os.remove(os.path.join(self.results, "bench_topk.json"))
        self.expect_failure("bench_topk.json: missing")

    def test_truncated_json(self):
        path = os.path.join(self.results, "bench_score.json")
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text[: len(text) // 2])
        self.expect_failure("bench_score.json: not readable JSON")

    def test_not_benchmark_json(self):
        with open(os.path.join(self.results, "ttft_main.json"), "w", encoding="utf-8") as handle:
            json.dump({"hello": 1}, handle)
        self.expect_failure("not Google Benchmark JSON")

    def test_missing_counter(self):
        path = os.path.join(self.results, "bench_attention.json")
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        del data["benchmarks"][0]["x_reference"]
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        self.expect_failure("lacks counter 'x_reference'")

    def test_missing_machine_record(self):
        os.remove(os.path.join(self.results, "machine.txt"))
        self.expect_failure("machine.txt")

    def test_unknown_placeholder(self):
        template = os.path.join(self.temp, "template.md")
        with open(template, "w", encoding="utf-8") as handle:
            handle.write("# x\n{{summary}}\n{{no_such_table}}\n")
        result = run(self.results, self.out, "--template", template)
        self.assertEqual(result.returncode, 1)
        self.assertIn("no_such_table", result.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.out, "PERFORMANCE.md")))

    def test_results_directory_missing(self):
        result = run(os.path.join(self.temp, "nowhere"), self.out)
        self.assertEqual(result.returncode, 1)
        self.assertIn("not a directory", result.stderr)

    def test_report_sh_refuses_bad_arguments_before_doing_anything(self):
        script = os.path.join(HERE, "..", "tools", "report.sh")
        for args in (["--bogus"], ["--ttft-rounds", "0"], ["--out"]):
            result = subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=30)
            self.assertEqual(result.returncode, 2, args)
            self.assertIn("report:", result.stderr)
            self.assertNotIn("setup:", result.stdout + result.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
