#!/usr/bin/env bash
# tools/before_after.sh [options] OLD NEW: every kernel at its main shape, old build against new,
# side by side in one run (issue 14: "no kernel slower than before at its main shape").
#
# OLD and NEW are each a git ref of this repository (built Release, library only, in a detached
# worktree under the work directory) or an existing build directory of a kvfuse tree (one with
# CMakeCache.txt and a built libkvfuse.so; its source tree is read from the cache). The one
# harness source, bench/before_after.cpp of THIS checkout, is compiled against each build's
# headers and library; the two binaries then run alternately, OLD NEW OLD NEW ... (--rounds
# each), with the same environment (KVFUSE_PROFILE=none: built-in tuning on both sides), and
# tools/before_after_table.py prints the table (old, new, new/old, spread across rounds, verdict).
#
# Options:
#   --rounds N          rounds of each build (default 3, at least 2: the spread needs two)
#   --work DIR          keep worktrees, builds, binaries and results in DIR (reused by a later
#                       call); default: a temporary directory removed at exit
#   --build-only        build the two libraries and harness binaries, run nothing
#   --run-only          run binaries a --build-only call left in --work DIR (no compiler runs)
#   --json-out F        also write the table's figures as JSON to F
#   --harness-args "A"  passed to each harness run (e.g. "--min-samples 31 --filter topk")
#
# Builds run under `nice -n 19`. `quiet` (which SIGSTOPs every other nice-19 process) would stop
# them too, so under `quiet` build first, then time:
#   tools/before_after.sh --work /tmp/ba --build-only d181c6f main
#   quiet tools/before_after.sh --work /tmp/ba --run-only d181c6f main
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() { echo "before_after.sh: $*" >&2; exit 1; }

rounds=3 work="" mode=all json_out="" harness_args=""
refs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; rounds=$2; shift 2 ;;
        --work) [ $# -ge 2 ] || die "--work needs a value"; work=$2; shift 2 ;;
        --build-only) mode=build; shift ;;
        --run-only) mode=run; shift ;;
        --json-out) [ $# -ge 2 ] || die "--json-out needs a value"; json_out=$2; shift 2 ;;
        --harness-args) [ $# -ge 2 ] || die "--harness-args needs a value"; harness_args=$2; shift 2 ;;
        -h|--help) usage ;;
        -*) die "unknown option '$1' (--help lists them)" ;;
        *) refs+=("$1"); shift ;;
    esac
done
[ ${#refs[@]} -eq 2 ] || die "want exactly two builds, OLD and NEW (got ${#refs[@]}; --help)"
case "$rounds" in ''|*[!0-9]*) die "--rounds wants a whole number, got '$rounds'" ;; esac
[ "$rounds" -ge 2 ] || die "--rounds must be at least 2 (the spread across rounds needs two)"
[ "$mode" != run ] || [ -n "$work" ] || die "--run-only needs the --work DIR of a --build-only call"

here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here/.." rev-parse --show-toplevel) || die "not inside a git checkout of kvfuse"
harness="$repo/bench/before_after.cpp"
table="$repo/tools/before_after_table.py"
[ -f "$harness" ] || die "$harness is missing"

if [ -z "$work" ]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/kvfuse-before-after.XXXXXX")
    # Our worktrees go with the directory (git forgets them too).
    trap 'for t in "$work"/old-* "$work"/new-*; do [ -d "$t/.git" ] || [ -f "$t/.git" ] && git -C "$repo" worktree remove --force "$t" >/dev/null 2>&1; done; rm -rf "$work"; git -C "$repo" worktree prune' EXIT
fi
mkdir -p "$work"
work=$(cd "$work" && pwd)

# A source tree's build of the library: sets src and build for one side.
resolve() {
    local side=$1 ref=$2
    if [ -d "$ref" ] && [ -f "$ref/CMakeCache.txt" ]; then
        build=$(cd "$ref" && pwd)
        src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
        [ -d "$src/include/kvfuse" ] || die "$ref: its source tree '$src' has no include/kvfuse"
        return
    fi
    sha=$(git -C "$repo" rev-parse --verify --quiet "$ref^{commit}") ||
        die "'$ref' is neither a build directory (with CMakeCache.txt) nor a commit of $repo"
    src="$work/$side-${sha:0:12}"
    build="$src/build-lib"
}

build_side() {
    local side=$1 ref=$2
    resolve "$side" "$ref"
    if [ "$src/build-lib" = "$build" ]; then  # a ref: our own worktree and build
        if [ ! -d "$src" ]; then
            git -C "$repo" worktree add --detach "$src" "$sha" >/dev/null 2>&1 ||
                die "git worktree add $src $sha failed"
        fi
        if [ ! -f "$build/CMakeCache.txt" ]; then
            echo "== configure $side ($ref) in $build" >&2
            launcher=()
            if command -v ccache >/dev/null; then
                launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
            fi
            nice -n 19 cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" \
                -DKVFUSE_BUILD_TESTS=OFF -DKVFUSE_BUILD_BENCH=OFF -DKVFUSE_BUILD_DRIVER=OFF >"$work/$side-configure.log" 2>&1 ||
                { tail -20 "$work/$side-configure.log" >&2; die "configuring $side failed (log: $work/$side-configure.log)"; }
        fi
    fi
    echo "== build $side library ($build)" >&2
    nice -n 19 cmake --build "$build" --target kvfuse -j"$(nproc)" >"$work/$side-build.log" 2>&1 ||
        { tail -20 "$work/$side-build.log" >&2; die "building $side failed (log: $work/$side-build.log)"; }
    local lib version_h
    lib=$(find "$build" -name 'libkvfuse.so' -print -quit)
    [ -n "$lib" ] || die "$build: no libkvfuse.so (is it a shared-library build?)"
    version_h=$(find "$build" -path '*/include/kvfuse/version.h' -print -quit)
    [ -n "$version_h" ] || die "$build: no generated include/kvfuse/version.h"
    local libdir gen_include
    libdir=$(dirname "$lib")
    gen_include=$(dirname "$(dirname "$version_h")")
    echo "== compile the harness against $side" >&2
    nice -n 19 "${CXX:-c++}" -std=c++17 -O2 -fopenmp -I"$src/include" -I"$gen_include" "$harness" \
        -o "$work/before_after-$side" -L"$libdir" -lkvfuse -Wl,-rpath,"$libdir" ||
        die "compiling the harness against $side failed"
    # The binary must load this build's library, not an installed one.
    local loaded
    loaded=$(ldd "$work/before_after-$side")
    case "$loaded" in *"=> $libdir/libkvfuse.so"*) ;; *) die "before_after-$side does not load $libdir/libkvfuse.so" ;; esac
    printf '%s\n' "$ref" >"$work/before_after-$side.ref"
}

if [ "$mode" != run ]; then
    build_side old "${refs[0]}"
    build_side new "${refs[1]}"
fi
[ "$mode" != build ] || { echo "built: $work/before_after-old, $work/before_after-new" >&2; exit 0; }

for side in old new; do
    [ -x "$work/before_after-$side" ] || die "$work/before_after-$side is missing (run --build-only first)"
done
i=0
for side in old new; do
    [ "$(cat "$work/before_after-$side.ref")" = "${refs[$i]}" ] ||
        die "$work/before_after-$side was built from '$(cat "$work/before_after-$side.ref")', not '${refs[$i]}'"
    i=$((i + 1))
done

results="$work/results"
rm -rf "$results"
mkdir -p "$results"
read -r -a extra <<<"$harness_args"
for round in $(seq 1 "$rounds"); do
    for side in old new; do
        echo "== round $round/$rounds: $side" >&2
        KVFUSE_PROFILE=none "$work/before_after-$side" "${extra[@]}" >"$results/$side-$round.json" ||
            die "the $side harness failed in round $round"
    done
done
olds=() news=()
for round in $(seq 1 "$rounds"); do olds+=("$results/old-$round.json"); news+=("$results/new-$round.json"); done
table_args=(--old "${olds[@]}" --new "${news[@]}" --old-label "old (${refs[0]})" --new-label "new (${refs[1]})")
[ -z "$json_out" ] || table_args+=(--json-out "$json_out")
python3 "$table" "${table_args[@]}"
