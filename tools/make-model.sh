#!/usr/bin/env bash
# Writes a random-weight llama GGUF model: builds the kvfuse program (release, driver only) if
# needed and runs `kvfuse make-model` with the arguments given, e.g.
#   tools/make-model.sh --out /tmp/llama-1024x16.gguf            # the realistic default shape
#   tools/make-model.sh --out /tmp/small.gguf --dim 256 --heads 4 --kv-heads 1 --hidden 704 --vocab 8000 --dtype bf16
# `kvfuse make-model --help` lists every option.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${KVFUSE_BUILD_DIR:-$root/build/release}
if [[ ! -f $build/CMakeCache.txt ]]; then
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DKVFUSE_BUILD_TESTS=OFF -DKVFUSE_BUILD_BENCH=OFF >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target kvfuse_cli >/dev/null
exec "$build/driver/kvfuse" make-model "$@"
