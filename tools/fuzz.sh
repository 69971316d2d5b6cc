#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang + ASan + UBSan), replays every committed seed
# and regression input, then fuzzes each target for a bounded time. Any crash, sanitizer report,
# timeout or out-of-memory fails the run, and the input is kept under the build directory.
#   tools/fuzz.sh                      the CI lane: 20 s per target
#   tools/fuzz.sh --seconds 3600 --runs 1000000 --jobs 2 --timeout 600 --report F.md
#                                      the long run: each target until 10^6 executions (or the
#                                      time limit), a Markdown table of its final stats in F.md
# Options: --build DIR (default build/fuzz), --targets "gguf chunk_file ...", --jobs N (targets
# fuzzed at once, default 1), --timeout S (one input running longer is a hang: default 25 s; on
# a machine shared with other work a stalled process can exceed that, so the long run uses
# more). Every build and fuzz process runs under `nice -n 19`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build/fuzz
seconds=20
runs=-1
report=
jobs=1
timeout=25
targets="gguf chunk_file tokenizer musique profile c_api"
while [[ $# -gt 0 ]]; do
    case $1 in
        --build) build=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --report) report=$2; shift 2 ;;
        --targets) targets=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        *) echo "fuzz.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
done
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (tools/setup.sh --fuzz installs it)" >&2; exit 1; }

# Release-like code with the sanitizers' line numbers: -O1 -g1, as the sanitizer lane. Static
# libraries, so every target carries its own instrumented copy of the code it fuzzes.
nice -n 19 cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1" \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DKVFUSE_FUZZ=ON -DBUILD_SHARED_LIBS=OFF \
    -DKVFUSE_BUILD_TESTS=OFF -DKVFUSE_BUILD_BENCH=OFF >/dev/null
nice -n 19 cmake --build "$build" -j "$(nproc)" --target $(printf 'fuzz_%s ' $targets)

# One OpenMP thread: the targets test parsing and argument checks, and on a shared machine a
# team of spinning worker threads only costs executions.
export OMP_NUM_THREADS=1
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fuzz_dir=$root/tests/fuzz
echo "=== replaying seeds and regression inputs"
for t in $targets; do
    nice -n 19 "$build/tests/fuzz/fuzz_$t" -runs=0 "$fuzz_dir/seeds/$t" "$fuzz_dir/regressions/$t" \
        >"$build/replay_$t.log" 2>&1 || { cat "$build/replay_$t.log"; echo "fuzz.sh: replay of $t failed" >&2; exit 1; }
done

declare -A max_len=([gguf]=16384 [chunk_file]=8192 [tokenizer]=4096 [musique]=8192 [profile]=4096 [c_api]=4096)
declare -A dict=([gguf]=gguf.dict [chunk_file]=chunk_file.dict [musique]=json.dict [profile]=json.dict)

fuzz_one() {  # target
    local t=$1
    local corpus=$build/corpus/$t crashes=$build/crashes/$t/ log=$build/fuzz_$t.log
    mkdir -p "$corpus" "$crashes"
    local args=(-max_total_time="$seconds" -runs="$runs" -timeout="$timeout" -rss_limit_mb=2560
                -max_len="${max_len[$t]}" -print_final_stats=1 -artifact_prefix="$crashes")
    [[ -n ${dict[$t]:-} ]] && args+=(-dict="$fuzz_dir/dictionaries/${dict[$t]}")
    local start=$SECONDS status=0
    nice -n 19 "$build/tests/fuzz/fuzz_$t" "${args[@]}" "$corpus" "$fuzz_dir/seeds/$t" >"$log" 2>&1 || status=$?
    echo "$t $status $((SECONDS - start))" >"$build/result_$t"
}

echo "=== fuzzing: $targets (at most ${seconds} s$([[ $runs -ge 0 ]] && echo " and $runs runs") per target, $jobs at once)"
running=0
for t in $targets; do
    fuzz_one "$t" &
    running=$((running + 1))
    if [[ $running -ge $jobs ]]; then wait -n || true; running=$((running - 1)); fi
done
wait

failed=0
table="| target | executions | exec/s | coverage (cov) | features (ft) | corpus | seconds | crashes |\n|---|---|---|---|---|---|---|---|\n"
for t in $targets; do
    read -r _ status elapsed <"$build/result_$t"
    log=$build/fuzz_$t.log
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(grep -oE 'corp: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    # Findings only: libFuzzer also leaves slow-unit-* files there, which are not failures.
    crashes=$(find "$build/crashes/$t" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
    table+="| $t | ${execs:-?} | ${speed:-?} | ${cov:-?} | ${ft:-?} | ${corpus:-?} | $elapsed | $crashes |\n"
    if [[ $status -ne 0 || $crashes -ne 0 ]]; then
        failed=1
        echo "--- $t FAILED (exit $status); its log ends:"
        tail -40 "$log"
        echo "--- inputs: $build/crashes/$t/ (add each to tests/fuzz/regressions/$t/ once fixed)"
    fi
done
printf "%b" "$table"
if [[ -n $report ]]; then
    {
        echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
        echo "commit $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- . ':!docs' || echo ' (tree modified)'), limits: ${seconds} s and ${runs} runs per target, $jobs at once, timeout ${timeout} s"
        echo
        printf "%b" "$table"
    } >"$report"
fi
[[ $failed -eq 0 ]] || { echo "fuzz.sh: a target failed" >&2; exit 1; }
echo "fuzz.sh: every target ran without a finding"
