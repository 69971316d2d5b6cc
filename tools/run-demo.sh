#!/usr/bin/env bash
# The main job: install what is missing, build, and run the kvfuse demo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup.sh"
build=$root/build/release
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DKVFUSE_BUILD_TESTS=OFF -DKVFUSE_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target kvfuse_cli
"$build/driver/kvfuse" info
"$build/driver/kvfuse" rope-demo
