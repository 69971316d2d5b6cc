#!/usr/bin/env bash
# The example engine (examples/) built as an outside engine builds it, against an install of
# this build: with CMake's find_package(kvfuse), and with pkg-config and a bare compiler; each
# program run. The example checks itself (bit-for-bit layouts, straightforward math, allocations,
# threads) and exits non-zero on a mismatch.
# Usage: example_engine.sh build_dir examples_src
# EXAMPLE_FLAGS (environment) is added to every compile and link: a sanitizer build passes its
# -fsanitize flags, since a sanitized library needs the sanitizer runtime first in the program;
# with them only the find_package build is made and run (two requests).
set -euo pipefail
build_dir=$1
examples=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
libdir=$(dirname "$(find "$work/prefix" -name 'libkvfuse.so' | head -1)")
flags=${EXAMPLE_FLAGS:-}

cmake -S "$examples" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$work/prefix" \
    -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" >/dev/null
cmake --build "$work/cmake-build" >/dev/null
# Under the sanitizers two requests: the third (the first request's chunk order again) exists for
# the allocation count of RoPE calls at positions seen before, which a sanitizer's malloc skips.
requests=()
if [[ -n $flags ]]; then requests=(--requests 2); fi
LD_LIBRARY_PATH=$libdir "$work/cmake-build/fused_request" "${requests[@]}"
echo "find_package build of examples/ ran"
# Under the sanitizers the one build shows what they check (the code, not the packaging): the
# pkg-config build adds minutes there and is built and run in every plain build.
if [[ -n $flags ]]; then exit 0; fi

export PKG_CONFIG_PATH=$libdir/pkgconfig
# shellcheck disable=SC2046,SC2086  # pkg-config's output and the flags are word lists
c++ -std=c++17 -O2 -Wall -Wextra -Werror $flags "$examples"/*.cpp -o "$work/fused_request_pc" \
    $(pkg-config --cflags kvfuse) $(pkg-config --libs kvfuse) -pthread
LD_LIBRARY_PATH=$libdir "$work/fused_request_pc" --requests 2 --workers 1
echo "pkg-config build of examples/ ran"
