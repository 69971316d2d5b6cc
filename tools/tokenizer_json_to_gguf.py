#!/usr/bin/env python3
"""Turns a Hugging Face byte-level BPE tokenizer.json (with its tokenizer_config.json) into a
vocabulary-only GGUF file, laid out as llama.cpp's converter writes one, so that kvfuse (and
llama.cpp) can load it: tokenizer.ggml.{model = "gpt2", pre, tokens, token_type, merges,
bos/eos ids, add_bos_token} and tokenizer.chat_template.

  tools/tokenizer_json_to_gguf.py tokenizer.json [--config tokenizer_config.json]
                                  [--pre llama-bpe|qwen2|gpt-2|smollm|tekken] -o vocab.gguf

Token types: added tokens marked "special" are control tokens (3), other added tokens
user-defined (4), ids missing from the file unused (5) as "[PAD<id>]", the rest normal (1).
The pre-tokenizer is recognised from the Split expression when --pre is not given."""
import argparse
import json
import struct
import sys

KNOWN_SPLITS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}
GGUF_UINT32, GGUF_INT32, GGUF_BOOL, GGUF_STRING, GGUF_ARRAY = 4, 5, 7, 8, 9


def fail(message):
    print(f"tokenizer_json_to_gguf: {message}", file=sys.stderr)
    sys.exit(1)


def split_expressions(node):
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [e for child in node.get("pretokenizers", []) for e in split_expressions(child)]
    if node.get("type") == "Split":
        return [node.get("pattern", {}).get("Regex", "")]
    return []


def text(value):
    if isinstance(value, dict):
        return value.get("content")
    return value


class Writer:
    def __init__(self):
        self.items = []

    @staticmethod
    def string(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def add(self, key, kind, payload):
        self.items.append(self.string(key) + struct.pack("<I", kind) + payload)

    def add_string(self, key, value):
        self.add(key, GGUF_STRING, self.string(value))

    def add_u32(self, key, value):
        self.add(key, GGUF_UINT32, struct.pack("<I", value))

    def add_bool(self, key, value):
        self.add(key, GGUF_BOOL, struct.pack("<B", 1 if value else 0))

    def add_strings(self, key, values):
        self.add(key, GGUF_ARRAY, struct.pack("<IQ", GGUF_STRING, len(values)) + b"".join(self.string(v) for v in values))

    def add_i32s(self, key, values):
        self.add(key, GGUF_ARRAY, struct.pack("<IQ", GGUF_INT32, len(values)) + struct.pack(f"<{len(values)}i", *values))

    def bytes(self):
        return b"GGUF" + struct.pack("<IQQ", 3, 0, len(self.items)) + b"".join(self.items)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_json")
    parser.add_argument("--config", help="tokenizer_config.json (BOS/EOS, add_bos_token, chat_template)")
    parser.add_argument("--pre", choices=["llama-bpe", "qwen2", "gpt-2", "smollm", "tekken"])
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    try:
        with open(args.tokenizer_json, encoding="utf-8") as f:
            tokenizer = json.load(f)
        config = {}
        if args.config:
            with open(args.config, encoding="utf-8") as f:
                config = json.load(f)
    except (OSError, ValueError) as e:
        fail(str(e))
    model = tokenizer.get("model") if isinstance(tokenizer, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        fail(f"{args.tokenizer_json}: not a BPE tokenizer.json (model.type must be BPE with a vocab)")
    pre = args.pre
    if pre is None:
        for expression in split_expressions(tokenizer.get("pre_tokenizer")):
            pre = pre or KNOWN_SPLITS.get(expression)
        if pre is None:
            fail(f"{args.tokenizer_json}: pre-tokenizer not recognised; name it with --pre")

    added = tokenizer.get("added_tokens") or []
    ids = {}
    for piece, i in model["vocab"].items():
        ids[i] = (piece, 1)
    for token in added:
        ids[token["id"]] = (token["content"], 3 if token.get("special") else 4)
    if not ids or min(ids) < 0:
        fail(f"{args.tokenizer_json}: token ids must be non-negative")
    size = max(ids) + 1
    pieces, types = [], []
    for i in range(size):
        piece, kind = ids.get(i, (f"[PAD{i}]", 5))
        pieces.append(piece)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    w = Writer()
    w.add_string("general.architecture", "llama")
    w.add_string("general.name", config.get("name_or_path", "") or args.tokenizer_json)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", pre)
    w.add_strings("tokenizer.ggml.tokens", pieces)
    w.add_i32s("tokenizer.ggml.token_type", types)
    w.add_strings("tokenizer.ggml.merges", merges)
    by_text = {p: i for i, p in enumerate(pieces)}
    for key, name in (("bos_token", "bos"), ("eos_token", "eos")):
        piece = text(config.get(key))
        if piece is not None:
            if piece not in by_text:
                fail(f"{key} '{piece}' is not in the vocabulary")
            w.add_u32(f"tokenizer.ggml.{name}_token_id", by_text[piece])
    if config.get("add_bos_token") is not None:
        w.add_bool("tokenizer.ggml.add_bos_token", bool(config["add_bos_token"]))
    if isinstance(config.get("chat_template"), str):
        w.add_string("tokenizer.chat_template", config["chat_template"])
    try:
        with open(args.output, "wb") as f:
            f.write(w.bytes())
    except OSError as e:
        fail(str(e))
    print(f"{args.output}: {size} tokens, {len(merges)} merges, pre-tokenizer {pre}")


if __name__ == "__main__":
    main()
