#!/usr/bin/env bash
# Installs a build tree into a scratch prefix, then builds and runs the C and C++ consumers
# against it with CMake's find_package and with pkg-config and a bare compiler; checks that
# find_package refuses another minor version while 0.x, and that an installed bin/kvfuse starts
# with no LD_LIBRARY_PATH (its RUNPATH finds the library).
# Usage: run.sh build_dir consumer_src [static_build_dir]
#   static_build_dir: a -DBUILD_SHARED_LIBS=OFF build, consumed the same way (pkg-config --static).
set -euo pipefail
build_dir=$1
consumer_src=$2
static_build_dir=${3:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

consume() {  # prefix, kind (shared|static)
    local prefix=$1 kind=$2 libdir
    cmake --install "$build_dir_now" --prefix "$prefix" >/dev/null
    libdir=$(dirname "$(find "$prefix" -name 'libkvfuse.so' -o -name 'libkvfuse.a' | head -1)")
    cmake -S "$consumer_src" -B "$work/$kind-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
    cmake --build "$work/$kind-build" >/dev/null
    local pc=(--libs)
    [[ $kind == static ]] && pc=(--static --libs)
    export PKG_CONFIG_PATH=$libdir/pkgconfig
    cc -std=c11 -Wall -Wextra -pedantic "$consumer_src/consumer.c" -o "$work/$kind-consumer_pc_c" \
        $(pkg-config --cflags kvfuse) $(pkg-config "${pc[@]}" kvfuse) -lm
    c++ -std=c++17 -Wall -Wextra "$consumer_src/consumer.cpp" -o "$work/$kind-consumer_pc_cxx" \
        $(pkg-config --cflags kvfuse) $(pkg-config "${pc[@]}" kvfuse)
    for program in "$work/$kind-build/consumer_c" "$work/$kind-build/consumer_cxx" \
                   "$work/$kind-consumer_pc_c" "$work/$kind-consumer_pc_cxx"; do
        LD_LIBRARY_PATH=$libdir "$program"
        if [[ $kind == static ]] && ldd "$program" | grep -q libkvfuse; then
            echo "$program links libkvfuse.so although the package is static" >&2
            exit 1
        fi
    done
    echo "$kind: find_package and pkg-config consumers (C and C++) built and ran"
}

build_dir_now=$build_dir
consume "$work/prefix" shared
if [[ $(pkg-config --static --libs kvfuse) != *-lstdc++* ]]; then
    echo "pkg-config --static --libs kvfuse lacks -lstdc++: $(pkg-config --static --libs kvfuse)" >&2
    exit 1
fi

# find_package(kvfuse 0.M) accepts only 0.M while the major version is 0.
version=$(sed -n 's/^#define KVFUSE_VERSION_STRING "\(.*\)"/\1/p' "$work/prefix/include/kvfuse/version.h")
major=${version%%.*}
minor=${version#*.}
minor=${minor%%.*}
mkdir -p "$work/version"
cat > "$work/version/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(version_check NONE)
find_package(kvfuse ${WANT} CONFIG REQUIRED)
CMAKE
cmake -S "$work/version" -B "$work/version/ok" -DWANT="$major.$minor" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
if [[ $major == 0 ]]; then
    for other in "0.$((minor + 1))" ${minor:+$( ((minor > 0)) && echo "0.$((minor - 1))")}; do
        if cmake -S "$work/version" -B "$work/version/$other" -DWANT="$other" -DCMAKE_PREFIX_PATH="$work/prefix" \
            >/dev/null 2>&1; then
            echo "find_package(kvfuse $other) accepted kvfuse $version" >&2
            exit 1
        fi
    done
fi
echo "find_package(kvfuse $major.$minor) accepted; other minor versions refused"

# The installed program starts on its own (RUNPATH $ORIGIN/../lib).
if [[ -x $work/prefix/bin/kvfuse ]]; then
    readelf -d "$work/prefix/bin/kvfuse" | grep -q 'RUNPATH.*\$ORIGIN/\.\./lib' || {
        echo "bin/kvfuse has no RUNPATH \$ORIGIN/../lib:" >&2
        readelf -d "$work/prefix/bin/kvfuse" | grep -E 'RPATH|RUNPATH' >&2 || true
        exit 1
    }
    env -u LD_LIBRARY_PATH "$work/prefix/bin/kvfuse" --help >/dev/null
    echo "installed bin/kvfuse starts"
fi

if [[ -n $static_build_dir ]]; then
    build_dir_now=$static_build_dir
    consume "$work/static-prefix" static
fi
