#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then builds and runs a consumer against it
# twice: with CMake's find_package, and with pkg-config and a bare compiler.
set -euo pipefail
build_dir=$1
consumer_src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build_dir" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name 'libkvfuse.so*' -o -name 'libkvfuse.a' | head -1)")
cmake -S "$consumer_src" -B "$work/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/build" >/dev/null
LD_LIBRARY_PATH=$libdir "$work/build/consumer_cxx"
LD_LIBRARY_PATH=$libdir "$work/build/consumer_c"
export PKG_CONFIG_PATH=$libdir/pkgconfig
cc -std=c11 "$consumer_src/consumer.c" -o "$work/consumer_pc" $(pkg-config --cflags --libs kvfuse) -lm
LD_LIBRARY_PATH=$libdir "$work/consumer_pc"
echo "find_package and pkg-config consumers built and ran"
