#!/usr/bin/env python3
"""Writes docs/PERFORMANCE.md and its charts from one run's benchmark JSON (tools/report.sh).

Usage: perf_report.py --results DIR --out DIR [--template FILE] [--no-charts]

--results holds what tools/report.sh recorded: machine.txt, kvfuse_info.txt, steps.tsv and the
Google Benchmark JSON of bench_rope, bench_topk, bench_attention, bench_score, bench_tuning,
bench_chunk_store, bench_gemm, bench_ttft (ttft_main.json: the realistic request with the ratio sweep;
ttft_context_*.json: the other context lengths). Writes OUT/PERFORMANCE.md and OUT/perf/*.png.

Every figure in the output comes from those files; the template (tools/PERFORMANCE.template.md)
holds only prose and {{placeholders}}. Medians: the `median` aggregate of a benchmark run with
repetitions, else its single run (bench_ttft takes its own medians over rounds).
Exit status: 0 written, 1 bad or missing input (nothing written), 2 bad usage.
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

KERNEL_FILES = ["bench_rope", "bench_topk", "bench_attention", "bench_score", "bench_tuning",
                "bench_chunk_store", "bench_gemm"]
# Stages of bench_ttft in pipeline order, with the counter suffix each one has.
STAGES = [("load", "load_ms"), ("rotate", "rotate_ms"), ("full layers", "full_layers_ms"),
          ("select", "select_ms"), ("recompute", "recompute_ms"), ("logits", "logits_ms"),
          ("other", "other_ms")]
MAIN_METHODS = ["full", "reuse", "epic", "cacheblend", "a3"]
# The target for a3 at r = 0.15, L = 16 (a goal to compare with, not a measurement).
A3_TARGET_X = 3.5


class InputError(Exception):
    """Bad or missing input: reported in one line, nothing is written."""


# ---------------------------------------------------------------------------------------------
# Reading

def read_any_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: missing (did its benchmark run? tools/report.sh writes it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not readable JSON: {error}") from None


def read_json(path):
    data = read_any_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list) \
            or not isinstance(data.get("context"), dict):
        raise InputError(f"{path}: not Google Benchmark JSON (no 'context' and 'benchmarks')")
    return data


def clean_name(name):
    """The benchmark's name without Google Benchmark's bookkeeping suffixes."""
    name = re.sub(r"/manual_time$", "", name)
    return re.sub(r"/iterations:\d+", "", name)


class BenchFile:
    """One benchmark program's results: per benchmark the median row (or the single run)."""

    def __init__(self, path):
        self.path = path
        data = read_json(path)
        self.context = data["context"]
        runs = data["benchmarks"]
        has_aggregates = any(r.get("run_type") == "aggregate" for r in runs)
        self.rows = {}      # clean name -> row, in file order
        self.skipped = {}   # clean name -> message
        for run in runs:
            if not isinstance(run, dict) or "name" not in run:
                raise InputError(f"{path}: a benchmark entry without a name")
            name = clean_name(run.get("run_name", run["name"]))
            if run.get("error_occurred"):
                self.skipped[name] = run.get("error_message", "skipped")
                continue
            if has_aggregates and run.get("aggregate_name") != "median":
                continue
            if "real_time" not in run:
                raise InputError(f"{path}: benchmark {name} has no real_time")
            self.rows[name] = run
        if not self.rows and not self.skipped:
            raise InputError(f"{path}: no benchmark results")

    def need(self, name, counter):
        row = self.rows[name]
        value = row.get(counter)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise InputError(f"{self.path}: benchmark {name} lacks counter '{counter}'")
        return float(value)

    def get(self, name, counter):
        value = self.rows[name].get(counter)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def matching(self, pattern):
        return [n for n in self.rows if re.search(pattern, n)]


def read_machine(results):
    path = os.path.join(results, "machine.txt")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise InputError(f"{path}: {error.strerror or error}") from None
    machine = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            machine[key.strip()] = value.strip()
    for key in ("date", "commit", "cpu", "mode"):
        if key not in machine:
            raise InputError(f"{path}: no '{key}:' line")
    return machine


def read_text(path, default=""):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return default


# ---------------------------------------------------------------------------------------------
# Formatting

def fmt(value, digits=3):
    """Significant digits without scientific notation for the magnitudes of these tables."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}".replace(",", " ") if abs(value) >= 10000 else f"{value:.{decimals}f}"


def pct(value):
    return "-" if value is None else f"{value:.0f} %"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def time_of(row):
    return f"{fmt(float(row['real_time']))} {row.get('time_unit', 'ns')}"


def isa_of(name):
    parts = name.split("/")
    return parts[1] if len(parts) > 1 else ""


def threads_of(name):
    """Threads of a benchmark; those without threads:N in their name (top-k) run on one."""
    match = re.search(r"threads:(\d+)", name)
    return int(match.group(1)) if match else 1


def fmt_ratio(value):
    return "-" if value is None else f"{value:g}"


def rounds_text(n):
    return f"{n} round" if n == 1 else f"{n} rounds"


def portable(text):
    """Paths of the run's results as the committed tree has them (perf/raw/...), not this run's
    absolute (and temporary: raw.partial) location."""
    return re.sub(r"\S*/perf/raw(?:\.partial)?/", "perf/raw/", text)


def skipped_note(bench):
    if not bench.skipped:
        return ""
    items = "; ".join(f"`{n}`: {m}" for n, m in bench.skipped.items())
    return f"\n\nSkipped in this run: {items}."


def best_isa(bench, names):
    """The last ISA in registration order (scalar, avx2, avx512 / neon) that produced results."""
    isas = [isa_of(n) for n in names if isa_of(n) != "scalar"]
    return isas[-1] if isas else (isa_of(names[0]) if names else "")


# ---------------------------------------------------------------------------------------------
# Kernel sections

def rope_section(b):
    rows = [[f"`{n}`", time_of(r), fmt(b.need(n, "GB/s")), fmt(b.need(n, "baseline_GB/s")),
             pct(100 * b.need(n, "x_baseline"))] for n, r in b.rows.items()]
    return table(["benchmark", "median time", "GB/s", "copy GB/s", "% of copy"], rows) + skipped_note(b)


def topk_section(b):
    # floor_* and pct_floor are absent from runs recorded before the floor was measured.
    rows = [[f"`{n}`", time_of(r), fmt(b.need(n, "Mscores/s")), fmt(b.get(n, "floor_Mscores/s")),
             pct(b.get(n, "pct_floor")), fmt(b.need(n, "baseline_Mscores/s")), fmt(b.need(n, "x_baseline"))]
            for n, r in b.rows.items()]
    return table(["benchmark", "median time", "Mscores/s", "floor Mscores/s", "% of floor", "baseline Mscores/s",
                  "x baseline"], rows) + skipped_note(b)


def attention_section(b):
    rows = [[f"`{n}`", time_of(r), fmt(b.need(n, "GFLOP/s")), fmt(b.get(n, "peak_GFLOP/s")),
             pct(b.get(n, "pct_peak")), fmt(b.need(n, "reference_GFLOP/s")), fmt(b.need(n, "x_reference"))]
            for n, r in b.rows.items()]
    text = table(["benchmark", "median time", "GFLOP/s", "FMA peak GFLOP/s", "% of peak", "reference GFLOP/s",
                  "x reference"], rows) + skipped_note(b)
    return text + attention_head_dim_table(b) + attention_paged_table(b)


def attention_paged_table(b):
    """Paged K/V (16-token blocks, shuffled) against the contiguous call of the same shape, ISA
    and threads in the same run (issue 14: paged within 10 % of contiguous)."""
    rows = []
    for n in b.matching(r"/paged:"):
        contiguous = re.sub(r"/paged:[0-9]+", "", n)
        if contiguous in b.rows:
            paged_rate, contiguous_rate = b.need(n, "GFLOP/s"), b.need(contiguous, "GFLOP/s")
            rows.append([f"`{n}`", fmt(paged_rate), fmt(contiguous_rate), f"{paged_rate / contiguous_rate:.2f}"])
    if not rows:
        return ""
    return ("\n\nPaged K/V (the same K/V in shuffled 16-token blocks read through a block table) against the "
            "contiguous call:\n\n" + table(["benchmark", "paged GFLOP/s", "contiguous GFLOP/s", "paged ÷ contiguous"], rows))


def attention_head_dim_table(b):
    """f32 GFLOP/s per head dimension and ISA, and each ISA against the narrowest SIMD ISA of the
    run at the same shape: no ISA may be slower than a narrower one (issue 16)."""
    figures = {}  # (D, threads) -> {isa: GFLOP/s}
    order = []
    for n in b.matching(r"^attention/[^/]+/f32/T:"):
        s = shape_of(n)
        key = (s.get("D"), threads_of(n))
        if key[0] is None:
            continue
        figures.setdefault(key, {})[isa_of(n)] = b.need(n, "GFLOP/s")
        if isa_of(n) not in order:
            order.append(isa_of(n))
    if len(order) < 2 or not figures:
        return ""
    narrowest = order[0]
    rows = []
    for (dim, threads), by_isa in sorted(figures.items()):
        cells = [fmt(by_isa.get(isa)) if isa in by_isa else "-" for isa in order]
        ratios = [f"{by_isa[isa] / by_isa[narrowest]:.2f}×" if isa in by_isa and narrowest in by_isa else "-"
                  for isa in order[1:]]
        rows.append([str(dim), str(threads)] + cells + ratios)
    header = ["D", "threads"] + [f"{isa} GFLOP/s" for isa in order] + [f"{isa} ÷ {narrowest}" for isa in order[1:]]
    return "\n\nf32 K/V by head dimension (the same T, n, H and Hkv):\n\n" + table(header, rows)


def score_section(b):
    rows = []
    for n, r in b.rows.items():
        kind = r.get("label", "").replace("int8 peak: ", "") or "-"
        rows.append([f"`{n}`", time_of(r), fmt(b.need(n, "GOP/s")), f"{fmt(b.get(n, 'int8_peak_GOP/s'))} ({kind})",
                     pct(b.get(n, "pct_int8_peak")), fmt(b.need(n, "baseline_GOP/s")), fmt(b.need(n, "x_baseline")),
                     pct(b.get(n, "pct_f32_peak"))])
    return table(["benchmark", "median time", "GOP/s", "int8 peak GOP/s", "% of int8 peak", "f32 GOP/s", "x f32",
                  "f32 % of FMA peak"], rows) + skipped_note(b)


def store_section(b):
    rows = [[f"`{n}`", time_of(r), fmt(b.need(n, "GB/s")), fmt(b.need(n, "baseline_GB/s")),
             fmt(b.need(n, "x_baseline"))] for n, r in b.rows.items()]
    return table(["benchmark", "median time", "GB/s", "baseline GB/s", "x baseline"], rows) + skipped_note(b)


# Engine-facing benchmarks (issue 14), optional: a report made from an older run has none.
ENGINE_FILES = ["bench_context", "bench_quantize", "bench_select"]
TINY_CALL_TARGET_US = 5.0


def engine_section(results):
    """The fixed cost of tiny calls, the quantizers against copy, and per-request selection
    (quantize + score + top-k in one call) with int8/int4 keys against f32."""
    present = {name: BenchFile(os.path.join(results, name + ".json")) for name in ENGINE_FILES
               if os.path.exists(os.path.join(results, name + ".json"))}
    if not present:
        return "*(Not in this run: its raw data has no bench_context, bench_quantize or bench_select.)*"
    parts = []
    if "bench_context" in present:
        b = present["bench_context"]
        rows = []
        for n, r in b.rows.items():
            unit = r.get("time_unit", "ns")
            scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}.get(unit, 1e-3)
            us = float(r["real_time"]) * scale
            rows.append([f"`{n}`", r.get("label", ""), f"{us:.2f}",
                         "met" if us <= TINY_CALL_TARGET_US else "missed"])
        parts.append("Fixed cost of a tiny call (1-row × 16-key attention, 4-row × 60-candidate relevance, top-k "
                     f"64 of 1024, a 1-token RoPE), target ≤ {TINY_CALL_TARGET_US:g} µs:\n\n"
                     + table(["benchmark", "how", "µs per call", "target"], rows) + skipped_note(b))
    if "bench_quantize" in present:
        b = present["bench_quantize"]
        rows = [[f"`{n}`", time_of(r), fmt(b.need(n, "GB/s")), fmt(b.need(n, "baseline_GB/s")),
                 pct(100 * b.need(n, "x_baseline"))] for n, r in b.rows.items()]
        parts.append("Key and query quantizers against a copy of their f32 input (target ≥ 50 % of copy):\n\n"
                     + table(["benchmark", "median time", "GB/s", "copy GB/s", "% of copy"], rows) + skipped_note(b))
    if "bench_select" in present:
        b = present["bench_select"]
        rows = [[f"`{n}`", time_of(r), fmt(b.need(n, "Mrows/s")), fmt(b.need(n, "baseline_Mrows/s")),
                 fmt(b.need(n, "x_baseline"))] for n, r in b.rows.items()]
        parts.append("Per-request A³ selection through `kvfuse_select_rows` (4 stored chunks × 512 tokens in their own "
                     "frame + a 32-token question; int8/int4 keys quantized inside the call) against the f32 call in "
                     "the same iterations (target: x f32 > 1):\n\n"
                     + table(["benchmark", "median time", "Mrows/s", "f32 Mrows/s", "x f32"], rows) + skipped_note(b))
    return "\n\n".join(parts)


# The serving load test (issue 17), optional: tools/serve_load.py --json-out, one file a model.
SERVING_FILES = [("serve_model", "a `make-model` model"), ("serve_bundled", "the bundled stories260K")]


def serving_section(results):
    """`kvfuse serve` under concurrent clients: throughput, TTFT and hit rate for full prefill
    and a3 with each chunk store, one table a model."""
    parts = []
    for name, what in SERVING_FILES:
        path = os.path.join(results, name + ".json")
        if not os.path.exists(path):
            continue
        data = read_any_json(path)
        try:
            settings, rows = data["settings"], data["rows"]
            body = []
            ttft = {}
            for r in rows:
                figure = lambda value, digits: "-" if value is None else f"{value:.{digits}f}"
                hit = "-" if r["method"] == "full" or r["hit_rate"] is None else f"{100 * r['hit_rate']:.1f} %"
                body.append([r["store"], r["method"], str(r["requests"]), str(r["errors"]), figure(r["throughput"], 1),
                             figure(r["ttft_p50"], 2), figure(r["ttft_p99"], 2), figure(r["load_p50"], 2),
                             figure(r["lat_p50"], 1), figure(r["lat_p99"], 1), hit])
                if r["ttft_p50"] is not None:
                    ttft[(r["store"], r["method"])] = r["ttft_p50"]
            how = (f"{settings['clients']} clients, {settings['requests']} requests of {settings['chunks_per_request']} "
                   f"chunks drawn from a pool of {settings['pool']} (Zipf {settings['zipf']:.2f}), max_tokens "
                   f"{settings['max_tokens']}, ratio {settings['ratio']:.2f}, at most {settings['time_limit']:g} s a run")
            model = settings["model"]
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{path}: not a serve_load result ({error})") from None
        speedups = [f"{store} {ttft[(store, 'full')] / ttft[(store, 'a3')]:.2f}×"
                    for store in dict.fromkeys(s for s, _ in ttft)
                    if (store, "full") in ttft and (store, "a3") in ttft and ttft[(store, "a3")] > 0]
        text = (f"{what.capitalize()} (`{model}`); {how}:\n\n"
                + table(["store", "method", "requests", "errors", "req/s", "TTFT p50 ms", "TTFT p99 ms",
                         "of which KV load p50 ms", "latency p50 ms", "latency p99 ms", "chunk hit rate"], body))
        if speedups:
            text += "\n\nTTFT p50, full ÷ a3: " + ", ".join(speedups) + "."
        parts.append(text)
    if not parts:
        return "*(Not in this run: its raw data has no serve_model.json or serve_bundled.json.)*"
    return "\n\n".join(parts)


def rate_unit(bench, name):
    for unit in ("GB/s", "Mscores/s", "GFLOP/s", "GOP/s"):
        if bench.get(name, unit) is not None:
            return unit
    raise InputError(f"{bench.path}: benchmark {name} has no rate counter")


def tuning_section(b):
    rows = []
    for n, r in b.rows.items():
        unit = rate_unit(b, n)
        rows.append([f"`{n}`", time_of(r), f"{fmt(b.need(n, unit))} {unit}", f"{fmt(b.need(n, 'baseline_' + unit))} {unit}",
                     fmt(b.need(n, "x_baseline"))])
    profile = portable(str(b.context.get("tuning", "not recorded")))
    kernel_isa = str(b.context.get("kernel_isa", "not recorded"))
    return (f"Profile in force: {profile}.\n\nISA per kernel (tuned; the default runs each on the active ISA): "
            f"{kernel_isa}.\n\n" +
            table(["benchmark", "median time (tuned)", "tuned", "default", "tuned ÷ default speed"], rows) +
            skipped_note(b))


def headline(bench, pattern, threads):
    """The benchmark a kernel is summarised by: its main shape, the best ISA, `threads`."""
    names = [n for n in bench.matching(pattern) if threads_of(n) == threads]
    isa = best_isa(bench, names)
    names = [n for n in names if isa_of(n) == isa]
    return names[0] if names else None


def summary_section(k):
    """One row per kernel: figure, % of its roofline, x baseline, tuned ÷ default."""
    tune = k["bench_tuning"]

    def tuned(pattern):
        names = tune.matching(pattern)
        value = tune.get(names[0], "x_baseline") if names else None
        return f"{value:.2f}" if value is not None else "-"

    specs = [
        ("RoPE re-rotation, f32, DRAM", k["bench_rope"], r"^rope/.*/f32/.*/dram/", 2, "GB/s",
         lambda b, n: 100 * b.need(n, "x_baseline"), "copy bandwidth", "x_baseline", "copy", r"^tuning/rope/f32/8192"),
        ("RoPE re-rotation, f32, one chunk in L2", k["bench_rope"], r"^rope/.*/f32/.*/l2/", 2, "GB/s",
         lambda b, n: 100 * b.need(n, "x_baseline"), "copy bandwidth", "x_baseline", "copy", r"^tuning/rope/f32/64x"),
        ("top-k, k = 15 %", k["bench_topk"], r"^topk/.*/k:19660/vs:nth_element", 1, "Mscores/s",
         lambda b, n: b.get(n, "pct_floor"), "read + write floor", "x_baseline", "nth_element", r"^tuning/topk/"),
        ("sparse attention, f32", k["bench_attention"], r"^attention/[^/]+/f32/T:.*/D:128/", 2, "GFLOP/s",
         lambda b, n: b.get(n, "pct_peak"), "f32 FMA peak", "x_reference", "reference", r"^tuning/attention/"),
        ("A³ scoring, int8 keys", k["bench_score"], r"^a3_relevance/.*/int8_.*/D:128/", 2, "GOP/s",
         lambda b, n: b.get(n, "pct_int8_peak"), "int8 peak", "x_baseline", "f32", r"^tuning/a3_relevance/int8"),
        ("A³ scoring, int4 keys", k["bench_score"], r"^a3_relevance/.*/int4_.*/D:128/", 2, "GOP/s",
         lambda b, n: b.get(n, "pct_int8_peak"), "int8 peak", "x_baseline", "f32", None),
        ("dense layer (GEMM), f32 weights", k["bench_gemm"], r"^gemm/.*/f32/gate_up/", 2, "GFLOP/s",
         lambda b, n: b.get(n, "pct_peak"), "f32 FMA peak", "x_baseline", "OpenBLAS", None),
        ("dense layer (GEMM), bf16 weights", k["bench_gemm"], r"^gemm/.*/bf16/gate_up/", 2, "GFLOP/s",
         lambda b, n: b.get(n, "pct_peak"), "f32 FMA peak", "x_baseline", "OpenBLAS f32", None),
        # Quantized weights (int8 activations): their roofline is the int8 dot's peak.
        ("dense layer (GEMM), q8 weights", k["bench_gemm"], r"^gemm/.*/q8/gate_up/", 2, "GFLOP/s",
         lambda b, n: b.get(n, "pct_int8_peak"), "int8 peak", "x_baseline", "OpenBLAS f32", None),
        ("dense layer (GEMM), q4 weights", k["bench_gemm"], r"^gemm/.*/q4/gate_up/", 2, "GFLOP/s",
         lambda b, n: b.get(n, "pct_int8_peak"), "int8 peak", "x_baseline", "OpenBLAS f32", None),
    ]
    rows = []
    for title, bench, pattern, threads, unit, roof, roof_name, xname, base_name, tune_pattern in specs:
        n = headline(bench, pattern, threads)
        if n is None:
            rows.append([title, "not measured", "-", "-", "-", "-", "-"])
            continue
        roof_pct = roof(bench, n) if roof else None
        rows.append([title, f"`{n}`", f"{fmt(bench.need(n, unit))} {unit}",
                     f"{pct(roof_pct)} of {roof_name}" if roof_pct is not None else "-",
                     f"{fmt(bench.need(n, xname))} ({base_name})",
                     tuned(tune_pattern) if tune_pattern else "-", f"{threads}"])
    text = table(["kernel", "benchmark", "figure", "% of roofline", "x baseline", "tuned ÷ default", "threads"], rows)
    kernel_isa = tune.context.get("kernel_isa")
    if kernel_isa:
        text += (f"\n\nISA each kernel runs on after `kvfuse tune` (profile of this run; the tuner keeps a "
                 f"narrower ISA only where it measured it faster by more than its margin): {kernel_isa}.")
    return text


def targets_section(k, main):
    """The issues' targets (goals, written here) against this run's figures (read from the JSON)."""
    rows = []

    def add(goal, value, shown, ok):
        rows.append([goal, shown if value is not None else "not measured",
                     "-" if value is None else ("met" if ok(value) else "missed")])

    rope, topk, att, score = k["bench_rope"], k["bench_topk"], k["bench_attention"], k["bench_score"]
    for dtype in ("f32", "bf16"):
        for threads in (1, 2):
            n = headline(rope, rf"^rope/.*/{dtype}/.*/dram/", threads)
            v = 100 * rope.need(n, "x_baseline") if n else None
            add(f"RoPE {dtype} out of cache, {threads} thread(s): ≥ 80 % of the copy bandwidth", v, pct(v),
                lambda x: x >= 80)
    n = headline(topk, r"^topk/.*/k:19660/vs:nth_element", 1)
    v = topk.need(n, "x_baseline") if n else None
    add("top-k, k = 15 %: ≥ 20× `std::nth_element`", v, f"{fmt(v)}×" if v else "", lambda x: x >= 20)
    t_us = None
    if n:
        row = topk.rows[n]
        scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}.get(row.get("time_unit", "ns"), 1e-3)
        t_us = float(row["real_time"]) * scale
    add("top-k, N = 131072, k = 15 %: ≤ 25 µs", t_us, f"{fmt(t_us)} µs" if t_us else "", lambda x: x <= 25)
    floor = topk.get(n, "pct_floor") if n else None
    if floor is not None and t_us:
        # Whether the target can be met here at all: no top-k moves less data than the floor.
        f_us = t_us * floor / 100
        add("(reachable?) its read + write floor in the same iterations: ≤ 25 µs", f_us, f"{fmt(f_us)} µs",
            lambda x: x <= 25)
    n = headline(att, r"^attention/[^/]+/f32/T:.*/D:128/", 2)
    v = att.get(n, "pct_peak") if n else None
    add("sparse attention f32, 2 threads: ≥ 50 % of the FMA peak", v, pct(v), lambda x: x >= 50)
    n = headline(score, r"^a3_relevance/.*/int8_.*/D:128/", 2)
    v = score.get(n, "pct_int8_peak") if n else None
    add("scoring int8, 2 threads: ≥ 50 % of the int8 peak", v, pct(v), lambda x: x >= 50)
    v = score.need(n, "x_baseline") if n else None
    add("scoring int8, 2 threads: ≥ 3× the f32 path", v, f"{fmt(v)}×" if v else "", lambda x: x >= 3)
    v = main.x("a3") if "a3" in main.methods else None
    add(f"TTFT, a3 at r = 0.15, {main.context} document tokens: ≥ {A3_TARGET_X}× full prefill", v,
        f"{v:.2f}×" if v else "", lambda x: x >= A3_TARGET_X)
    return table(["target (issues 2, 3, 6)", "this run", ""], rows)


# ---------------------------------------------------------------------------------------------
# Roofline chart: every point from this run's rates; arithmetic intensity from each benchmark's
# shape (work over the minimum bytes it must move: every input read once, every output written).

def shape_of(name):
    return {key: int(value) for key, value in re.findall(r"(\w+):(\d+)", name)}


def roofline_points(k):
    points = []
    rope = k["bench_rope"]
    for dtype, size in (("f32", 4), ("bf16", 2)):
        n = headline(rope, rf"^rope/.*/{dtype}/.*/dram/", 2)
        if n:
            # 6 FLOPs per rotated pair (4 multiplies, 2 adds), every element read and written.
            intensity = 3.0 / (2 * size)
            points.append((f"RoPE {dtype}", intensity, rope.need(n, "GB/s") * intensity))
    att = k["bench_attention"]
    for dtype, size in (("f32", 4), ("bf16", 2)):
        n = headline(att, rf"^attention/[^/]+/{dtype}/T:.*/D:128/", 2)
        if n:
            s = shape_of(n)
            T, rows, H, Hkv, D = s["T"], s["n"], s["H"], s["Hkv"], s["D"]
            # Rows at uniformly random positions see (T + 1) / 2 keys on average.
            flops = 4.0 * D * H * rows * (T + 1) / 2
            bytes_moved = 2.0 * T * Hkv * D * size + 2.0 * rows * H * D * 4
            points.append((f"attention {dtype}", flops / bytes_moved, att.need(n, "GFLOP/s")))
    score = k["bench_score"]
    for keys, size in (("int8", 1.0), ("int4", 0.5)):
        n = headline(score, rf"^a3_relevance/.*/{keys}_.*/D:128/", 2)
        if n:
            s = shape_of(n)
            T, H, Hkv, D, M = s["T"], s["H"], s["Hkv"], s["D"], s["M"]
            ops = 2.0 * M * T * H * D
            bytes_moved = T * Hkv * D * size + 4.0 * T * Hkv + M * H * D + 4.0 * M * H + 4.0 * T
            points.append((f"scoring {keys}", ops / bytes_moved, score.need(n, "GOP/s")))
    return points


def roofline_ceilings(k):
    """Memory: the DRAM copy of bench_rope (2 threads). Compute: the FMA and int8 peaks."""
    ceilings = {}
    n = headline(k["bench_rope"], r"^rope/.*/f32/.*/dram/", 2)
    if n:
        ceilings["copy GB/s"] = k["bench_rope"].need(n, "baseline_GB/s")
    n = headline(k["bench_attention"], r"^attention/[^/]+/f32/T:.*/D:128/", 2)
    if n and k["bench_attention"].get(n, "peak_GFLOP/s"):
        ceilings["f32 FMA peak"] = k["bench_attention"].get(n, "peak_GFLOP/s")
    n = headline(k["bench_score"], r"^a3_relevance/.*/int8_.*/D:128/", 2)
    if n and k["bench_score"].get(n, "int8_peak_GOP/s"):
        ceilings["int8 peak"] = k["bench_score"].get(n, "int8_peak_GOP/s")
    return ceilings


def roofline_table(points, ceilings):
    rows = [[p[0], fmt(p[1]), fmt(p[2])] for p in points]
    text = table(["kernel (2 threads)", "FLOP (OP) per byte", "GFLOP/s (GOP/s)"], rows)
    text += "\n\nCeilings measured in this run: " + ", ".join(
        f"{name} {fmt(value)}" for name, value in ceilings.items()) + "."
    return text


# ---------------------------------------------------------------------------------------------
# TTFT

class TtftContext:
    """One `ttft/ctx:N` benchmark: every method's medians and breakdown."""

    def __init__(self, bench, name):
        self.bench, self.name = bench, name
        self.row = bench.rows[name]
        self.context = shape_of(name).get("ctx")
        if self.context is None:
            raise InputError(f"{bench.path}: {name} is not a ttft/ctx:N benchmark")
        self.total = int(bench.need(name, "T"))
        self.rounds = int(self.row.get("iterations", 0))
        methods = [c[:-len("_recompute")] for c in self.row if c.endswith("_recompute") and not c.endswith("_recompute_ms")]
        if "full" not in methods:
            raise InputError(f"{bench.path}: {name} has no full-prefill counters")
        main = [m for m in MAIN_METHODS if m in methods]
        extra = sorted((m for m in methods if m not in MAIN_METHODS), key=lambda m: self.ratio(m) or 0)
        self.methods = main + extra

    def v(self, method, counter):
        return self.bench.need(self.name, f"{method}_{counter}")

    def ratio(self, method):
        return self.bench.get(self.name, f"{method}_ratio")

    def x(self, method):
        return 1.0 if method == "full" else self.v(method, "x")


def read_ttft(results):
    main_path = os.path.join(results, "ttft_main.json")
    main_bench = BenchFile(main_path)
    mains = [TtftContext(main_bench, n) for n in main_bench.rows]
    if not mains:
        raise InputError(f"{main_path}: bench_ttft reported no result ({'; '.join(main_bench.skipped.values())})")
    # The main request: the context with the ratio sweep (most variants), else the first.
    main = max(mains, key=lambda c: len(c.methods))
    by_context = {c.context: c for c in mains}
    for entry in sorted(os.listdir(results)):
        if re.fullmatch(r"ttft_context_.*\.json", entry):
            bench = BenchFile(os.path.join(results, entry))
            for n in bench.rows:
                c = TtftContext(bench, n)
                if c.context not in by_context or c.rounds > by_context[c.context].rounds:
                    by_context[c.context] = c
    return main, [by_context[k] for k in sorted(by_context)]


WEIGHT_TYPES = ("f32", "bf16", "q4_k_m")


def weights_section(results):
    """The same request on one model shape stored as f32, bf16 and Q4_K_M weights (issue 15):
    full prefill and a3 TTFT, the model file, the KV held and the peak resident set of each
    run (ttft_weights_<type>.json, one bench_ttft process each)."""
    rows, shapes = [], []
    for dtype in WEIGHT_TYPES:
        path = os.path.join(results, f"ttft_weights_{dtype}.json")
        if not os.path.exists(path):
            continue
        bench = BenchFile(path)
        if not bench.rows:
            raise InputError(f"{path}: bench_ttft reported no result ({'; '.join(bench.skipped.values())})")
        c = TtftContext(bench, next(iter(bench.rows)))
        rss, file_mib, kv = (bench.need(c.name, k) for k in ("peak_rss_MiB", "model_file_MiB", "kv_MiB"))
        a3 = [fmt(c.v("a3", "ms")), f"{c.x('a3'):.2f}"] if "a3" in c.methods else ["-", "-"]
        rows.append([dtype, fmt(file_mib), fmt(c.v("full", "ms")), fmt(bench.need(c.name, "full_tokens_per_s"))] + a3 +
                    [fmt(kv), fmt(rss), f"{rss / (file_mib + kv):.2f}"])
        shapes.append(f"{dtype}: {c.row.get('label', '(not recorded)')}, T = {c.total}, {rounds_text(c.rounds)}")
    if not rows:
        return "Not measured in this run."
    return (table(["weights", "file MiB", "full prefill ms", "tokens/s", "a3 TTFT ms", "a3 x full", "KV MiB",
                   "peak RSS MiB", "RSS ÷ (file + KV)"], rows) +
            "\n\nRuns: " + "; ".join(shapes) + ".")


def ttft_main_table(c):
    rows = []
    for m in c.methods:
        if "@" in m:
            continue
        r = c.ratio(m)
        rows.append([m, fmt_ratio(r), f"{c.v(m, 'recompute'):.3f}", fmt(c.v(m, "ms")),
                     f"{c.x(m):.2f}"] + [fmt(c.v(m, suffix)) for _, suffix in STAGES])
    return table(["method", "ratio", "recompute", "TTFT ms", "x full"] + [f"{s} ms" for s, _ in STAGES], rows)


def prefill_sentence(c):
    b, n = c.bench, c.name
    peak = b.get(n, "peak_GFLOP/s")
    return (f"Full prefill of the {c.total} tokens: {fmt(b.need(n, 'full_tokens_per_s'))} tokens/s. Its dense layers "
            f"(kvfuse_gemm and their norms, RoPE, SiLU) run at {fmt(b.need(n, 'dense_GFLOP/s'))} GFLOP/s, "
            f"{pct(b.get(n, 'dense_pct_peak'))} of the f32 FMA peak measured in the same run ({fmt(peak)} GFLOP/s); "
            f"the whole prefill (dense + causal attention FLOPs over its TTFT) {fmt(b.need(n, 'prefill_GFLOP/s'))} "
            f"GFLOP/s, {pct(b.get(n, 'prefill_pct_peak'))}.")


def a3_verdict(c):
    if "a3" not in c.methods:
        return "a3 was not measured in this run."
    x = c.x("a3")
    verdict = "met" if x >= A3_TARGET_X else "missed"
    return (f"**Target (a3 ≥ {A3_TARGET_X}× full prefill at r = {fmt_ratio(c.ratio('a3'))}): {verdict}, "
            f"{x:.2f}×** at {c.context} document tokens, median of {rounds_text(c.rounds)}.")


def ratio_table(c):
    methods = [m for m in c.methods if m.startswith("a3") and c.ratio(m) is not None]
    if len(methods) < 2:
        return "No ratio sweep in this run (bench_ttft `--ratios=`)."
    methods.sort(key=c.ratio)
    rows = [[fmt_ratio(c.ratio(m)), f"{c.v(m, 'recompute'):.3f}", fmt(c.v(m, "ms")), f"{c.x(m):.2f}"] +
            [fmt(c.v(m, s)) for _, s in STAGES] for m in methods]
    return (f"a3 at {c.context} document tokens (T = {c.total}), same run and rounds as the table above.\n\n" +
            table(["ratio", "recompute", "TTFT ms", "x full"] + [f"{s} ms" for s, _ in STAGES], rows))


def context_tables(contexts):
    methods = [m for m in MAIN_METHODS if all(m in c.methods for c in contexts)]
    rows = [[str(c.context), str(c.total), str(c.rounds)] + [f"{fmt(c.v(m, 'ms'))} ({c.x(m):.2f}×)" for m in methods]
            for c in contexts]
    text = table(["document tokens", "T", "rounds"] + [f"{m} ms (x full)" for m in methods], rows)
    if "a3" in methods:
        rows = [[str(c.context)] + [fmt(c.v("a3", s)) for _, s in STAGES] + [fmt(c.v("a3", "ms"))] for c in contexts]
        text += "\n\na3 (r = 0.15) breakdown by context length, ms:\n\n" + table(
            ["document tokens"] + [s for s, _ in STAGES] + ["TTFT"], rows)
    rows = [[str(c.context)] + [fmt(c.v("full", s)) for _, s in STAGES] + [fmt(c.v("full", "ms"))] for c in contexts]
    text += "\n\nFull prefill breakdown by context length, ms:\n\n" + table(
        ["document tokens"] + [s for s, _ in STAGES] + ["TTFT"], rows)
    rows = []
    for c in contexts:
        b, n = c.bench, c.name
        rows.append([str(c.context), fmt(b.need(n, "full_tokens_per_s")), fmt(b.need(n, "dense_GFLOP/s")),
                     pct(b.get(n, "dense_pct_peak")), fmt(b.need(n, "prefill_GFLOP/s")), pct(b.get(n, "prefill_pct_peak")),
                     fmt(b.get(n, "peak_GFLOP/s"))])
    text += "\n\nFull-prefill throughput by context length:\n\n" + table(
        ["document tokens", "tokens/s", "dense GFLOP/s", "dense % of peak", "prefill GFLOP/s", "prefill % of peak",
         "FMA peak GFLOP/s"], rows)
    return text


# ---------------------------------------------------------------------------------------------
# Charts (gnuplot). Each PNG is drawn under a temporary name and renamed into place.

def find_gnuplot():
    path = shutil.which("gnuplot")
    if not path:
        return None, None
    try:
        terminals = subprocess.run([path, "-e", "set terminal"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None, None
    listing = terminals.stdout + terminals.stderr
    if re.search(r"^\s*pngcairo\s", listing, re.M):
        return path, "pngcairo size 900,560 font 'sans,10'"
    if re.search(r"^\s*png\s", listing, re.M):
        return path, "png size 900,560"
    return None, None


def plot(gnuplot, terminal, script, data, out_png, work):
    for name, text in data.items():
        with open(os.path.join(work, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    temp_png = out_png + f".tmp{os.getpid()}"
    full = f"set terminal {terminal}\nset output '{temp_png}'\ncd '{work}'\n{script}\nunset output\n"
    result = subprocess.run([gnuplot], input=full, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not os.path.exists(temp_png) or os.path.getsize(temp_png) == 0:
        if os.path.exists(temp_png):
            os.remove(temp_png)
        raise RuntimeError(f"gnuplot failed for {os.path.basename(out_png)}: {result.stderr.strip()[:500]}")
    os.replace(temp_png, out_png)


def quote(text):
    return '"' + text.replace('"', "'") + '"'


def draw_charts(gnuplot, terminal, charts_dir, k, main, contexts, machine):
    points, ceilings = roofline_points(k), roofline_ceilings(k)
    title_tail = f"{machine.get('cpu', '')}, {machine.get('commit', '')[:9]}"
    drawn, failed = {}, {}

    def attempt(key, script, data):
        # One chart's failure costs that chart only; the report says why in its place.
        try:
            plot(gnuplot, terminal, script, data, os.path.join(charts_dir, key + ".png"), work)
            drawn[key] = key + ".png"
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            failed[key] = str(error)
            print(f"perf_report: {error}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="kvfuse-report-") as work:
        # Roofline.
        if points and "copy GB/s" in ceilings:
            bw = ceilings["copy GB/s"]
            lines = [f"set title {quote('Roofline, 2 threads: ' + title_tail)}",
                     "set logscale xy 2", "set format x '%g'", "set format y '%g'",
                     "set xlabel 'arithmetic intensity (FLOP or int8 OP per byte)'",
                     "set ylabel 'GFLOP/s (GOP/s for int8 scoring)'", "set key outside right top", "set grid",
                     "set xrange [0.125:2048]", "set samples 400"]
            top = max([v for n, v in ceilings.items() if n != "copy GB/s"] + [max(p[2] for p in points)])
            lines.append(f"set yrange [*:{top * 4}]")
            # The memory roof stops where the highest compute roof begins, as in a roofline.
            plots = [f"{bw} * x < {top} ? {bw} * x : 1/0 w l lw 2 lc rgb '#555555' "
                     f"t {quote(f'copy bandwidth {fmt(bw)} GB/s')}"]
            colors = ["#d62728", "#1f77b4"]
            for (name, peak), color in zip(((n, v) for n, v in ceilings.items() if n != "copy GB/s"), colors):
                plots.append(f"(({bw} * x) < {peak} ? {bw} * x : {peak}) w l lw 2 dt 2 lc rgb '{color}' "
                             f"t {quote(f'{name} {fmt(peak)}')}")
            # One block and one key entry per kernel: text labels collide where kernels sit close.
            data = "\n\n\n".join(f"{p[1]} {p[2]}" for p in points) + "\n"  # blocks: two blank lines
            point_types = [7, 5, 9, 11, 13, 15, 4, 6]
            for i, p in enumerate(points):
                plots.append(f"'points.dat' index {i} using 1:2 w p pt {point_types[i % len(point_types)]} ps 1.6 "
                             f"t {quote(f'{p[0]}: {fmt(p[2])}')}")
            script = "\n".join(lines) + "\nplot " + ", \\\n  ".join(plots)
            attempt("roofline", script, {"points.dat": data})
        # TTFT by method: stacked stages.
        methods = [m for m in main.methods if "@" not in m]
        data = "method " + " ".join(quote(s) for s, _ in STAGES) + "\n"
        data += "".join(quote(m) + " " + " ".join(f"{max(0.0, main.v(m, s)):.6g}" for _, s in STAGES) + "\n" for m in methods)
        script = "\n".join([
            f"set title {quote(f'TTFT by method, {main.context} document tokens + question (T = {main.total}): ' + title_tail)}",
            "set style data histograms", "set style histogram rowstacked", "set style fill solid 0.85 border -1",
            "set boxwidth 0.6", "set ylabel 'TTFT, ms (median round)'", "set key outside right top", "set grid y",
            "set yrange [0:*]",
            "plot " + ", ".join(f"'ttft.dat' using {i + 2}:xtic(1) t columnheader({i + 2})" for i in range(len(STAGES)))])
        attempt("ttft_methods", script, {"ttft.dat": data})
        # TTFT by context length.
        if len(contexts) >= 2:
            methods = [m for m in MAIN_METHODS if all(m in c.methods for c in contexts)]
            # Seconds on a base-10 axis: spanning seconds to minutes, ms in powers of 2 read badly.
            data = "".join(f"{c.context} " + " ".join(f"{c.v(m, 'ms') / 1e3:.6g}" for m in methods) + "\n"
                           for c in contexts)
            script = "\n".join([
                f"set title {quote('TTFT by context length (+ 32-token question): ' + title_tail)}",
                "set logscale x 2", "set logscale y 10", "set format x '%g'", "set format y '%g'",
                "set xlabel 'document tokens'", "set ylabel 'TTFT, s (median)'", "set key top left", "set grid",
                "set xtics (" + ", ".join(f"'{c.context}' {c.context}" for c in contexts) + ")",
                # A margin on both sides, or the tic at the range's end can be dropped.
                f"set xrange [{contexts[0].context / 1.3}:{contexts[-1].context * 1.3}]",
                "plot " + ", ".join(f"'ctx.dat' using 1:{i + 2} w lp lw 2 pt 7 t {quote(m)}" for i, m in enumerate(methods))])
            attempt("ttft_context", script, {"ctx.dat": data})
        # TTFT by ratio (a3).
        sweep = sorted((m for m in main.methods if m.startswith("a3") and main.ratio(m) is not None), key=main.ratio)
        if len(sweep) >= 2:
            data = "".join(f"{main.ratio(m)} {main.v(m, 'ms'):.6g} {main.x(m):.6g}\n" for m in sweep)
            script = "\n".join([
                f"set title {quote(f'a3 TTFT by ratio, {main.context} document tokens: ' + title_tail)}",
                "set xlabel 'ratio of recomputed rows'", "set ylabel 'TTFT, ms (median)'", "set y2label 'x full prefill'",
                "set ytics nomirror", "set y2tics", "set grid", "set key top center", "set yrange [0:*]", "set y2range [0:*]",
                "plot 'ratio.dat' using 1:2 w lp lw 2 pt 7 t 'TTFT ms', "
                "'ratio.dat' using 1:3 axes x1y2 w lp lw 2 pt 5 dt 2 t 'x full prefill'"])
            attempt("ttft_ratio", script, {"ratio.dat": data})
    return drawn, failed


# ---------------------------------------------------------------------------------------------
# The report

def machine_section(machine, info, build_type):
    keys = [("date", "date (UTC)"), ("commit", "commit"), ("dirty", "uncommitted changes"), ("cpu", "CPU"),
            ("cores", "cores"), ("caches", "caches"), ("kernel", "kernel"), ("compiler", "compiler"),
            ("openmp threads", "OpenMP threads"), ("tuning profile", "tuning profile"), ("mode", "mode"),
            ("load before", "load average before"), ("load after", "load average after")]
    rows = [[label, machine[key].replace("|", "/")] for key, label in keys if key in machine]
    if build_type:
        rows.append(["Google Benchmark library", f"{build_type} build (its own bookkeeping only; the timed code is "
                     "kvfuse's Release build)"])
    text = table(["", "this run"], rows)
    if info.strip():
        text += "\n\n`kvfuse info`:\n\n```\n" + portable(info.strip()) + "\n```"
    return text


def steps_section(results):
    rows = []
    for line in read_text(os.path.join(results, "steps.tsv")).splitlines():
        parts = line.split("\t")
        # name, wall seconds, CPU seconds, load average at the end, command; older runs lack the
        # load (4 fields) or the CPU time too (3 fields).
        if len(parts) == 5:
            rows.append([parts[0], parts[1], parts[2], parts[3], f"`{parts[4]}`"])
        elif len(parts) == 4:
            rows.append([parts[0], parts[1], parts[2], "-", f"`{parts[3]}`"])
        elif len(parts) == 3:
            rows.append([parts[0], parts[1], "-", "-", f"`{parts[2]}`"])
    return (table(["step", "wall s", "CPU s", "load average at its end", "command"], rows) if rows
            else "Step times were not recorded.")


def chart_md(drawn, failed, key, alt, missing):
    if key in drawn:
        return f"![{alt}](perf/{drawn[key]})"
    if key in failed:
        return f"*(No chart: gnuplot failed: {failed[key]})*"
    return f"*(No chart: {missing}.)*"


def build(results, template_path, out_dir, charts):
    machine = read_machine(results)
    kernels = {name: BenchFile(os.path.join(results, name + ".json")) for name in KERNEL_FILES}
    main, contexts = read_ttft(results)

    values = {
        "machine": machine_section(machine, read_text(os.path.join(results, "kvfuse_info.txt")),
                                   kernels["bench_rope"].context.get("library_build_type")),
        "steps": steps_section(results),
        "summary": summary_section(kernels),
        "targets": targets_section(kernels, main),
        "rope": rope_section(kernels["bench_rope"]),
        "topk": topk_section(kernels["bench_topk"]),
        "attention": attention_section(kernels["bench_attention"]),
        "score": score_section(kernels["bench_score"]),
        "tuning": tuning_section(kernels["bench_tuning"]),
        "store": store_section(kernels["bench_chunk_store"]),
        "engine": engine_section(results),
        "serving": serving_section(results),
        "roofline_table": roofline_table(roofline_points(kernels), roofline_ceilings(kernels)),
        "ttft_model": main.row.get("label", "(not recorded)"),
        "ttft_request": f"BOS + {main.context // 512} chunks × 512 tokens + a 32-token question (T = {main.total}), "
                        f"median of {rounds_text(main.rounds)}",
        "ttft_table": ttft_main_table(main),
        "ttft_prefill": prefill_sentence(main),
        "ttft_verdict": a3_verdict(main),
        "ratio_table": ratio_table(main),
        "context_tables": context_tables(contexts),
        "weights_table": weights_section(results),
        "mode_note": ("**This is a quick pipeline check (`tools/report.sh --quick`): small shapes, the small model, "
                      "one or two repetitions. Its figures say nothing about performance.**\n\n"
                      if machine.get("mode") == "quick" else ""),
    }

    # The template is checked before any chart is drawn, so bad input replaces no file.
    try:
        with open(template_path, encoding="utf-8") as handle:
            template = handle.read()
    except OSError as error:
        raise InputError(f"{template_path}: {error.strerror or error}") from None
    chart_keys = {"chart_roofline", "chart_ttft_methods", "chart_ttft_context", "chart_ttft_ratio"}
    unknown = set(re.findall(r"\{\{(\w+)\}\}", template)) - set(values) - chart_keys
    if unknown:
        raise InputError(f"{template_path}: unknown placeholders {sorted(unknown)}")

    missing_why = "gnuplot not found (`tools/setup.sh --report` installs it)"
    drawn, failed = {}, {}
    charts_dir = os.path.join(out_dir, "perf")
    if charts:
        gnuplot, terminal = find_gnuplot()
        if gnuplot is None:
            print(f"perf_report: {missing_why}; writing the tables without charts", file=sys.stderr)
        else:
            os.makedirs(charts_dir, exist_ok=True)
            drawn, failed = draw_charts(gnuplot, terminal, charts_dir, kernels, main, contexts, machine)
            missing_why = "no data for it in this run"
    else:
        missing_why = "charts not requested (--no-charts)"
    # A chart not drawn in this run must not survive from an earlier one beside the new tables.
    for key in ("roofline", "ttft_methods", "ttft_context", "ttft_ratio"):
        stale = os.path.join(charts_dir, key + ".png")
        if key not in drawn and os.path.exists(stale):
            os.remove(stale)
    values["chart_roofline"] = chart_md(drawn, failed, "roofline", "roofline", missing_why)
    values["chart_ttft_methods"] = chart_md(drawn, failed, "ttft_methods", "TTFT by method", missing_why)
    values["chart_ttft_context"] = chart_md(drawn, failed, "ttft_context", "TTFT by context length",
                                            missing_why if len(contexts) >= 2 else "fewer than two context lengths")
    values["chart_ttft_ratio"] = chart_md(drawn, failed, "ttft_ratio", "a3 TTFT by ratio", missing_why)

    text = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)
    return text


def write_atomically(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".perf_report.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="the run's raw results (machine.txt, *.json)")
    parser.add_argument("--out", required=True, help="writes OUT/PERFORMANCE.md and OUT/perf/*.png")
    parser.add_argument("--template", default=os.path.join(here, "PERFORMANCE.template.md"))
    parser.add_argument("--no-charts", action="store_true", help="tables only")
    args = parser.parse_args()
    if not os.path.isdir(args.results):
        print(f"perf_report: error: {args.results}: not a directory", file=sys.stderr)
        return 1
    try:
        text = build(args.results, args.template, args.out, not args.no_charts)
        write_atomically(os.path.join(args.out, "PERFORMANCE.md"), text)
    except InputError as error:
        print(f"perf_report: error: {error}", file=sys.stderr)
        return 1
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        # JSON of the right overall form but not of these benchmarks (a renamed counter, a
        # hand-edited file): one line, not a traceback.
        print(f"perf_report: error: malformed results in {args.results}: {type(error).__name__}: {error}",
              file=sys.stderr)
        return 1
    print(f"perf_report: wrote {os.path.join(args.out, 'PERFORMANCE.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
