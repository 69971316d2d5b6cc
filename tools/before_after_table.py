#!/usr/bin/env python3
"""The before/after table from the rounds of bench/before_after (tools/before_after.sh runs them).

    before_after_table.py --old A1.json A2.json ... --new B1.json B2.json ... [--json-out F]

Each file is one run of the harness (one round). Per row (kernel, threads): the median over the
rounds of each round's median time, for the old and the new build; new/old (time: above 1 is
slower); the spread of each side across its rounds ((max - min) / median); and a verdict:
"slower" when every new round is slower than every old round AND new/old - 1 exceeds the larger
of the two spreads, "faster" the other way round, else "same (within noise)". It also checks that
both builds timed the same inputs (input_hash) and compares the first call's output (checksum).

Prints a Markdown table; --json-out also writes the figures as JSON (written to a temporary file
and renamed). Bad input (unreadable or malformed JSON, rows that differ between rounds) is one
error line and status 1. Python 3 standard library only.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile


class InputError(Exception):
    pass


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: {e}")
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or not doc["rows"]:
        raise InputError(f"{path}: not a before_after result (no rows)")
    rows = {}
    for r in doc["rows"]:
        try:
            name = r["name"]
            rows[name] = {"median_s": float(r["median_s"]), "input_hash": str(r["input_hash"]),
                          "checksum": r.get("checksum"), "rate": float(r["rate"]), "unit": str(r["unit"]),
                          "kernel": str(r["kernel"]), "threads": int(r["threads"])}
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: a row lacks or has a bad field: {e}")
        if not rows[name]["median_s"] > 0:
            raise InputError(f"{path}: row {name}: median_s must be > 0")
    doc["rows_by_name"] = rows
    return doc


def side(paths, label):
    docs = [load(p) for p in paths]
    names = list(docs[0]["rows_by_name"])
    for p, d in zip(paths[1:], docs[1:]):
        if list(d["rows_by_name"]) != names:
            raise InputError(f"{p}: its rows differ from those of {paths[0]} ({label} rounds must run the same rows)")
    return docs, names


def fmt_time(seconds):
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def spread(values):
    return (max(values) - min(values)) / statistics.median(values)


def compare(old_docs, new_docs, names):
    rows = []
    for name in names:
        old = [d["rows_by_name"][name]["median_s"] for d in old_docs]
        new = [d["rows_by_name"][name]["median_s"] for d in new_docs]
        o, n = statistics.median(old), statistics.median(new)
        ratio = n / o
        noise = max(spread(old), spread(new))
        if min(new) > max(old) and ratio - 1 > noise:
            verdict = "slower"
        elif max(new) < min(old) and 1 / ratio - 1 > noise:
            verdict = "faster"
        else:
            verdict = "same (within noise)"
        first_old, first_new = old_docs[0]["rows_by_name"][name], new_docs[0]["rows_by_name"][name]
        hashes = {d["rows_by_name"][name]["input_hash"] for d in old_docs + new_docs}
        co, cn = first_old["checksum"], first_new["checksum"]
        if co is None or cn is None:
            output = "not finite"
        elif co == cn:
            output = "equal"
        else:
            rel = abs(co - cn) / max(abs(co), abs(cn), 1e-30)
            output = f"rel. diff {rel:.1e}"
        rows.append({
            "name": name, "kernel": first_old["kernel"], "threads": first_old["threads"],
            "old_s": o, "new_s": n, "new_over_old": ratio,
            "old_rate": statistics.median(d["rows_by_name"][name]["rate"] for d in old_docs),
            "new_rate": statistics.median(d["rows_by_name"][name]["rate"] for d in new_docs),
            "unit": first_old["unit"], "old_rounds_s": old, "new_rounds_s": new,
            "old_spread": spread(old), "new_spread": spread(new), "verdict": verdict,
            "same_inputs": len(hashes) == 1, "output": output,
        })
    return rows


def markdown(rows, old_doc, new_doc, old_label, new_label, rounds):
    out = []
    for label, d in ((old_label, old_doc), (new_label, new_doc)):
        t = d.get("tuning", {})
        out.append(f"- {label}: kvfuse {d.get('kvfuse_version', '?')}, active ISA {d.get('active_isa', '?')}, "
                   f"profile: {d.get('profile', '?')}; tuning: " + ", ".join(f"{k} {v}" for k, v in t.items()))
    out.append(f"- {rounds[0]} rounds of {old_label} and {rounds[1]} of {new_label}, run alternately; each figure is "
               "the median over the rounds of each round's median time per call.")
    out.append("")
    out.append(f"| kernel | threads | {old_label} | {new_label} | new/old time | spread {old_label} | "
               f"spread {new_label} | verdict | output |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        verdict = r["verdict"] if r["same_inputs"] else r["verdict"] + "; INPUTS DIFFER"
        out.append(f"| {r['kernel']} | {r['threads']} | {fmt_time(r['old_s'])} ({r['old_rate']:.4g} {r['unit']}) | "
                   f"{fmt_time(r['new_s'])} ({r['new_rate']:.4g} {r['unit']}) | {r['new_over_old']:.3f} | "
                   f"{100 * r['old_spread']:.1f} % | {100 * r['new_spread']:.1f} % | {verdict} | {r['output']} |")
    slower = [f"{r['kernel']} threads:{r['threads']}" for r in rows if r["verdict"] == "slower"]
    out.append("")
    out.append(f"Slower beyond noise: {', '.join(slower) if slower else 'none'}.")
    differ = [r["name"] for r in rows if not r["same_inputs"]]
    if differ:
        out.append(f"Inputs differ between the builds (not comparable): {', '.join(differ)}.")
    return "\n".join(out) + "\n"


def write_atomically(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".before_after.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", nargs="+", required=True, help="the old build's rounds (JSON)")
    parser.add_argument("--new", nargs="+", required=True, help="the new build's rounds (JSON)")
    parser.add_argument("--old-label", default="old")
    parser.add_argument("--new-label", default="new")
    parser.add_argument("--json-out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        old_docs, old_names = side(args.old, args.old_label)
        new_docs, new_names = side(args.new, args.new_label)
        if old_names != new_names:
            raise InputError(f"the two builds ran different rows: {sorted(set(old_names) ^ set(new_names))}")
        rows = compare(old_docs, new_docs, old_names)
        text = markdown(rows, old_docs[0], new_docs[0], args.old_label, args.new_label,
                        (len(old_docs), len(new_docs)))
        if args.json_out:
            meta = {k: {key: d[key] for key in ("kvfuse_version", "active_isa", "profile", "tuning") if key in d}
                    for k, d in ((args.old_label, old_docs[0]), (args.new_label, new_docs[0]))}
            write_atomically(args.json_out, json.dumps({"builds": meta, "rows": rows}, indent=2) + "\n")
    except InputError as e:
        print(f"before_after_table: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"before_after_table: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
