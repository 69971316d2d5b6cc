#!/usr/bin/env python3
"""Turns Google Benchmark JSON (run side by side via bench_support.h) into a Markdown table.

Usage: bench_to_markdown.py RESULT.json [--rate GB/s] [--baseline-name copy] [--roofline NAME=VALUE]
Uses the `median` aggregate of each benchmark when the run had repetitions, else the single run.
Columns: benchmark, median time, rate, baseline rate, x baseline (baseline time / kernel time),
and, for every --roofline given, the rate as a percentage of that roofline value.
"""
import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file")
    parser.add_argument("--rate", default="GB/s", help="counter holding the kernel's rate")
    parser.add_argument("--baseline-name", default="baseline", help="what the baseline is, for the header")
    parser.add_argument("--roofline", action="append", default=[], metavar="NAME=VALUE",
                        help="a roofline rate in the same unit, e.g. 'copy=36'")
    args = parser.parse_args()
    try:
        with open(args.json_file, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        print(f"bench_to_markdown: cannot read {args.json_file}: {error}", file=sys.stderr)
        return 1
    rooflines = []
    for item in args.roofline:
        name, _, value = item.partition("=")
        try:
            rooflines.append((name, float(value)))
        except ValueError:
            print(f"bench_to_markdown: bad --roofline {item!r}", file=sys.stderr)
            return 1

    runs = data.get("benchmarks", [])
    has_aggregates = any(run.get("run_type") == "aggregate" for run in runs)
    rows = []
    for run in runs:
        if run.get("error_occurred"):
            continue
        if has_aggregates and run.get("aggregate_name") != "median":
            continue
        name = run.get("run_name", run["name"])
        rows.append((name, run))

    rate = args.rate
    header = ["benchmark", "median time", rate, f"{args.baseline_name} {rate}", f"x {args.baseline_name}"]
    header += [f"% of {name}" for name, _ in rooflines]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, run in rows:
        time = f"{run['real_time']:.4g} {run.get('time_unit', 'ns')}"
        value = run.get(rate)
        base = run.get(f"baseline_{rate}")
        ratio = run.get("x_baseline")
        cells = [f"`{name}`", time,
                 f"{value:.4g}" if value is not None else "-",
                 f"{base:.4g}" if base is not None else "-",
                 f"{ratio:.3g}" if ratio is not None else "-"]
        cells += [f"{100 * value / roof:.0f} %" if value is not None else "-" for _, roof in rooflines]
        print("| " + " | ".join(cells) + " |")
    context = data.get("context", {})
    print(f"\n{len(rows)} benchmarks; {context.get('num_cpus', '?')} CPUs, "
          f"load average {context.get('load_avg', '?')}, run {context.get('date', '?')}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
