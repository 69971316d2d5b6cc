#!/usr/bin/env bash
# The main job: install what is missing, build, and run the kvfuse demo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup.sh"
build=$root/build/release
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DKVFUSE_BUILD_TESTS=OFF -DKVFUSE_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target kvfuse_cli
"$build/driver/kvfuse" info --model "$root/driver/models/stories260K.gguf"
echo
"$build/driver/kvfuse" generate -p "Once upon a time" -n 40
echo
# The main job: a TinyStories request fused by every method against full prefill on the
# bundled model. Chunk caches go to a scratch store so the run leaves nothing behind.
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
"$build/driver/kvfuse" run --demo --store "$store"
