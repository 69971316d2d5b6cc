#!/usr/bin/env python3
"""Copies the parts of ../shared/fixtures/quants that kvfuse's tests use into tests/data/quants.

The source folder holds GGUF files quantized by llama.cpp's own tool and, in expected.json, the
values llama.cpp's Python dequantizer produced for them (see its README). A user's clone has no
../shared, so the tests read this copy:

* the stories260K files (the bundled model quantized to Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) are
  copied whole: the perplexity test runs them;
* each synth256 file (Q2_K ... Q6_K, IQ4_XS, the Q4_K_M mix) is cut down to two of its tensors,
  blk.0.attn_k.weight whole (rows of one 256-value block) and the first 32 rows of
  blk.0.ffn_down.weight (rows of three blocks), their bytes copied unchanged into a new GGUF;
* expected.json keeps, for every tensor copied, what applies to the rows copied (for the
  stories260K files the first rows of four tensors, the row sums and totals of all).

Usage: tools/trim_quant_fixtures.py SOURCE_DIR DEST_DIR
"""
import json
import os
import shutil
import struct
import sys

TRIMMED = {"blk.0.attn_k.weight": None, "blk.0.ffn_down.weight": 32}  # name -> rows kept (None: all)
# Value-by-value checks of the stories260K files for these tensors (every type of each file);
# every other tensor is checked by its row sums and totals.
FIRST_ROWS_KEPT = {"token_embd.weight", "output.weight", "blk.0.attn_q.weight", "blk.4.ffn_down.weight"}
BLOCK = {  # ggml type id -> (elements, bytes) for the types these files hold
    0: (1, 4), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 10: (256, 84),
    11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 20: (32, 18), 23: (256, 136),
}
SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        value = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return value[0]

    def string(self):
        n = self.take("Q")
        s = self.data[self.at:self.at + n].decode()
        self.at += n
        return s

    def value(self, kind):
        if kind == 8:
            return self.string()
        if kind == 9:
            inner, count = self.take("I"), self.take("Q")
            return [self.value(inner) for _ in range(count)]
        return self.take(SCALAR[kind])


def read_gguf(path):
    data = open(path, "rb").read()
    r = Reader(data)
    assert r.take("I") == 0x46554747 and r.take("I") == 3
    tensors, kvs = r.take("Q"), r.take("Q")
    meta = {}
    for _ in range(kvs):
        key = r.string()
        meta[key] = r.value(r.take("I"))
    table = []
    for _ in range(tensors):
        name = r.string()
        dims = [r.take("Q") for _ in range(r.take("I"))]
        table.append((name, dims, r.take("I"), r.take("Q")))
    align = meta.get("general.alignment", 32)
    start = (r.at + align - 1) // align * align
    return data, start, table


def write_gguf(path, source_name, tensors):
    def s(text):
        b = text.encode()
        return struct.pack("<Q", len(b)) + b

    head = struct.pack("<IIQQ", 0x46554747, 3, len(tensors), 1)
    head += s("kvfuse.fixture.source") + struct.pack("<I", 8) + s(source_name)
    payload, offsets = b"", []
    for name, dims, kind, raw in tensors:
        offsets.append(len(payload))
        payload += raw + b"\0" * (-len(raw) % 32)
    for (name, dims, kind, raw), offset in zip(tensors, offsets):
        head += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", kind, offset)
    head += b"\0" * (-len(head) % 32)
    open(path, "wb").write(head + payload)


def main(source, dest):
    os.makedirs(dest, exist_ok=True)
    expected = json.load(open(os.path.join(source, "expected.json")))
    out = {}
    for name in sorted(expected):
        if name.startswith("stories260K-"):
            shutil.copyfile(os.path.join(source, name), os.path.join(dest, name))
            out[name] = {}
            for tname, e in expected[name].items():
                e = dict(e)
                if tname not in FIRST_ROWS_KEPT:  # row sums and totals still cover every value
                    del e["first_rows"]
                out[name][tname] = e
            continue
        data, start, table = read_gguf(os.path.join(source, name))
        kept, out[name] = [], {}
        for tname, dims, kind, offset in table:
            if tname not in TRIMMED:
                continue
            rows = TRIMMED[tname] or dims[1]
            elements, nbytes = BLOCK[kind]
            row_bytes = dims[0] // elements * nbytes
            raw = data[start + offset:start + offset + rows * row_bytes]
            kept.append((tname, [dims[0], rows], kind, raw))
            e = dict(expected[name][tname])
            e["shape_ggml"] = [dims[0], rows]
            e["row_sums"] = e["row_sums"][:rows]
            if rows != dims[1]:  # whole-tensor sums no longer apply to the rows kept
                del e["sum"], e["sum_squares"]
            out[name][tname] = e
        write_gguf(os.path.join(dest, name), name, kept)
    # Nine significant digits hold an f32 value exactly and a float64 sum to ~1e-9, well inside
    # the tolerances the tests use; the full repr would double the copy's size.
    def shorten(v):
        if isinstance(v, float):
            return float(f"{v:.9g}")
        if isinstance(v, list):
            return [shorten(x) for x in v]
        if isinstance(v, dict):
            return {k: shorten(x) for k, x in v.items()}
        return v
    json.dump(shorten(out), open(os.path.join(dest, "expected.json"), "w"), separators=(",", ":"))
    shutil.copyfile(os.path.join(source, "perplexity.json"), os.path.join(dest, "perplexity.json"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
