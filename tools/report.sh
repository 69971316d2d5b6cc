#!/usr/bin/env bash
# The performance report in one command: installs what is missing (gnuplot included), builds
# Release with the benchmarks, records the machine, runs every kernel benchmark, bench_tuning,
# bench_ttft and the serving load test (tools/serve_load.py), and writes docs/PERFORMANCE.md with
# its charts (docs/perf/*.png) from this run's JSON alone (tools/perf_report.py).
#
#   tools/report.sh [--quick] [--out DIR] [--build DIR] [--ttft-rounds N]
#     --quick      tiny version of everything (small shapes, 1-2 repetitions, the small
#                  model): a couple of minutes, to test the pipeline; its figures mean nothing
#     --out DIR    writes DIR/PERFORMANCE.md and DIR/perf/ instead of docs/ (tests use it)
#     --build DIR  build directory (default build/report)
#     --ttft-rounds N  every bench_ttft step runs N rounds instead of its budgeted number (1 to
#                  time the steps, more for a longer and steadier run)
#
# Budget of the full run, measured on a 2-core Zen 4 VM (AVX-512) with a nice-19 CI run beside
# it (docs/perf/raw/steps.tsv has each step's time): 52 minutes with setup and build.
# `kvfuse tune` 9 s; the kernel benchmarks about 30 minutes (bench_gemm 8, bench_topk 6,
# bench_rope 5, bench_attention 3, bench_quantize 2.5, bench_score 2, the rest 4); bench_ttft
# about 10: the 8 x 512 + 32 request with every method and the ratio sweep, 3 rounds (3), 2K (1),
# 8K and 16K with 1 round (6); the 1B shape by weight type (f32 3.5, bf16 2, Q4_K_M 1.3); the
# serving load test 1.5.
# Run it on a quiet machine: every other process on it shows up in the figures.
#
# Results: DIR/perf/raw/ keeps the run's raw JSON, logs, machine record and step times, next to
# the report that was made from them (committed with it, so every figure can be traced). The run
# writes into DIR/perf/raw.partial and replaces raw/ only once the report is written: a failed
# or interrupted run leaves the previous report and its data as they were.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
quick=0
out=$root/docs
build=$root/build/report
ttft_rounds=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1; shift ;;
        --out) [[ $# -ge 2 ]] || { echo "report: --out needs a directory" >&2; exit 2; }; out=$2; shift 2 ;;
        --build) [[ $# -ge 2 ]] || { echo "report: --build needs a directory" >&2; exit 2; }; build=$2; shift 2 ;;
        --ttft-rounds)
            [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "report: --ttft-rounds needs a positive integer" >&2; exit 2; }
            ttft_rounds=$2; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "report: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

"$root/tools/setup.sh" --report

# Tests off: the report needs only the benchmarks and the CLI (for `kvfuse tune` and the model).
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVFUSE_BUILD_BENCH=ON \
      -DKVFUSE_BUILD_TESTS=OFF -DKVFUSE_BUILD_DRIVER=ON >/dev/null
benches=(bench_rope bench_topk bench_attention bench_score bench_tuning bench_chunk_store bench_gemm bench_ttft
         bench_context bench_quantize bench_select)
cmake --build "$build" -j "$(nproc)" --target kvfuse_cli "${benches[@]}"

raw=$out/perf/raw.partial
rm -rf "$raw"
mkdir -p "$raw"
kvfuse=$build/driver/kvfuse
threads=$(nproc)

# --- The machine and the tree, recorded before anything runs -------------------------------
dirty=$(git -C "$root" status --porcelain 2>/dev/null | wc -l)
compiler=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
lscpu_field() { lscpu | sed -n "s/^$1:[[:space:]]*//p" | head -1; }
# A cache size from lscpu, else from getconf (CPUID): some VMs expose no cache topology to lscpu.
cache_size() {  # cache_size LSCPU_NAME GETCONF_NAME
    local size
    size=$(lscpu_field "$1")
    if [[ -z $size ]]; then
        size=$(getconf "$2" 2>/dev/null || true)
        if [[ $size =~ ^[0-9]+$ && $size -gt 0 ]]; then size="$((size / 1024)) KiB (getconf: what CPUID reports, on a VM not always the host's)"; else size=unknown; fi
    fi
    echo "$size"
}
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
    if [[ $dirty -eq 0 ]]; then echo "dirty: no"; else echo "dirty: yes ($dirty files changed or untracked)"; fi
    echo "cpu: $(lscpu_field 'Model name') (family $(lscpu_field 'CPU family'), model $(lscpu_field 'Model'))"
    echo "cores: $threads online; $(lscpu_field 'Core(s) per socket') per socket, $(lscpu_field 'Thread(s) per core') thread(s) per core"
    echo "caches: L1d $(cache_size 'L1d cache' LEVEL1_DCACHE_SIZE), L2 $(cache_size 'L2 cache' LEVEL2_CACHE_SIZE), L3 $(cache_size 'L3 cache' LEVEL3_CACHE_SIZE)"
    echo "kernel: $(uname -sr)"
    echo "compiler: $("${compiler:-c++}" --version | head -1)"
    echo "openmp threads: $threads (bench_ttft); the kernel benchmarks set 1 or 2 themselves"
    echo "tuning profile: made by \`kvfuse tune$([[ $quick -eq 1 ]] && echo ' --quick')\` at the start of this run (perf/raw/profile.json)"
    echo "mode: $([[ $quick -eq 1 ]] && echo quick || echo full)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$raw/machine.txt"

# --- Steps, each timed; its console output goes to a log next to its JSON ------------------
: >"$raw/steps.tsv"
# CPU seconds (user + sys) of every child process so far, from bash's `times`, into REPLY.
# `times` must run in this shell, not in a pipeline or $(...) subshell that has no children.
children_cpu() {
    times >"$raw/.times"
    REPLY=$(awk 'NR == 2 { gsub(/[ms]/, " "); print $1 * 60 + $2 + $3 * 60 + $4 }' "$raw/.times")
    rm -f "$raw/.times"
}
step() {
    local name=$1 log=$raw/$1.log
    shift
    echo "report: $name ..." >&2
    local start end cpu_start cpu_end
    start=$(date +%s.%N)
    children_cpu
    cpu_start=$REPLY
    if ! "$@" >"$log" 2>&1; then
        echo "report: $name failed; its output is in $log (the previous report is unchanged)" >&2
        tail -5 "$log" >&2
        exit 1
    fi
    end=$(date +%s.%N)
    children_cpu
    cpu_end=$REPLY
    # The command as recorded: paths relative to the tree, so the committed file is portable.
    local shown="${*//$root\//}"
    shown="${shown//$out\//}"
    shown="${shown//raw.partial/raw}"
    local seconds cpu
    seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }')
    # CPU time as well as wall time: on a busy machine the wall time says little about a quiet one.
    cpu=$(awk -v a="$cpu_start" -v b="$cpu_end" 'BEGIN { printf "%.0f", b - a }')
    # The 1-minute load average at the step's end: how busy the machine was while it ran.
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$seconds" "$cpu" "$(cut -d' ' -f1 /proc/loadavg)" "$shown" >>"$raw/steps.tsv"
    echo "report: $name done in $seconds s" >&2
}

if [[ $quick -eq 1 ]]; then
    step tune "$kvfuse" tune --quick --out "$raw/profile.json"
else
    step tune "$kvfuse" tune --out "$raw/profile.json"
fi
# Every benchmark below runs with the profile just made: the figures are this machine's, tuned.
export KVFUSE_PROFILE=$raw/profile.json
"$kvfuse" info | sed "s|$root/||g" >"$raw/kvfuse_info.txt"

# Google Benchmark's JSON with the median aggregate of each benchmark (repetitions) or, where a
# benchmark fixes its iterations and one run is long, the run itself.
gbench() {  # gbench NAME REPETITIONS [extra flags...]
    local name=$1 reps=$2
    shift 2
    step "$name" "$build/bench/$name" --benchmark_out="$raw/$name.json" --benchmark_out_format=json \
        --benchmark_repetitions="$reps" --benchmark_report_aggregates_only=true "$@"
}
ttft() {  # ttft NAME ROUNDS [bench_ttft flags...]
    local name=$1 rounds=${ttft_rounds:-$2}
    shift 2
    step "$name" env OMP_NUM_THREADS="$threads" "$build/bench/bench_ttft" "$@" --rounds="$rounds" \
        --benchmark_out="$raw/$name.json" --benchmark_out_format=json
}

if [[ $quick -eq 1 ]]; then
    # Enough of every benchmark for the generator to see each table's real format.
    short=(--benchmark_min_time=0.01)
    gbench bench_rope 2 "${short[@]}" --benchmark_filter='-scalar|bf16'
    gbench bench_topk 2 "${short[@]}" --benchmark_filter='-scalar|k:1310/'
    gbench bench_attention 1 --benchmark_filter='f32/.*threads:2'
    gbench bench_score 1 --benchmark_filter='threads:2'
    gbench bench_tuning 2 "${short[@]}" --benchmark_filter='rope|topk'
    gbench bench_chunk_store 2 "${short[@]}" --benchmark_filter='64tok'
    gbench bench_gemm 1 --benchmark_filter='gate_up/n:512/.*threads:2'
    gbench bench_context 1 "${short[@]}"
    gbench bench_quantize 1 "${short[@]}" --benchmark_filter='keys_i8/.*/l3/threads:1'
    gbench bench_select 1 --benchmark_filter='(avx2|avx512|neon)/int8.*threads:1'
    ttft ttft_main 1 --size=small --contexts=1024 --ratios=0.05,0.5 --ratio-context=1024
    ttft ttft_context_a 1 --size=small --contexts=512,2048
    ttft ttft_weights_q4_k_m 1 --size=small --dtype=q4_k_m --contexts=512 --methods=full,a3
else
    # The scalar RoPE on the DRAM shapes takes minutes per call for a figure the L2 shapes give.
    gbench bench_rope 3 --benchmark_filter='-scalar/.*/dram'
    # Manual time counts only the kernel, but every iteration also runs the baseline (up to 60x
    # slower): the default 0.5 s of kernel time would cost minutes per benchmark.
    gbench bench_topk 5 --benchmark_min_time=0.05
    gbench bench_attention 3
    gbench bench_score 5
    gbench bench_tuning 3
    gbench bench_chunk_store 3
    # The dense layers: bench_ttft's two largest shapes (the scalar ISA has no row: OpenBLAS is
    # the baseline of every row).
    gbench bench_gemm 3 --benchmark_filter='gate_up|down'
    # The engine-facing figures (issue 14): tiny calls, quantizers, per-request selection.
    gbench bench_context 5
    gbench bench_quantize 3
    gbench bench_select 5 --benchmark_filter=-scalar
    ttft ttft_main 3 --contexts=4096 --ratios=0.05,0.1,0.25,0.5 --ratio-context=4096
    ttft ttft_context_a 3 --contexts=2048
    # One run for both: 16K's chunk caches extend 8K's instead of being computed again.
    ttft ttft_context_b 1 --contexts=8192,16384
    # Weight types (issue 15): Llama 3.2 1B's shape as f32, bf16 and Q4_K_M, a process each (its
    # own peak RSS); full prefill and a3 only, one round (a 4K full prefill of 1.2 G parameters
    # takes tens of seconds in f32).
    for weights in f32 bf16 q4_k_m; do
        ttft "ttft_weights_$weights" 1 --size=1b --dtype="$weights" --contexts=4096 --methods=full,a3
    done
fi

# Serving (issue 17): the loopback load test against `kvfuse serve`, every store, full and a3.
# The make-model model (31.8 M parameters, f32) is long enough per request to carry signal; on
# the bundled model a request is a few milliseconds. The model file stays in the build directory
# (perf/raw/ is committed); --force: a file left by an earlier run is written again (the same
# seed gives the same weights), not an error that stops the report at its last steps.
serve_load() {  # serve_load NAME [serve_load.py flags...]
    local name=$1
    shift
    step "$name" python3 "$root/tools/serve_load.py" --kvfuse "$kvfuse" --json-out "$raw/$name.json" "$@"
}
if [[ $quick -eq 1 ]]; then
    serve_load serve_bundled --stores fs,redis --clients 2 --requests 8 --pool 8
else
    serve_model=$build/serve-load-model.gguf
    step serve_model_file "$kvfuse" make-model --out "$serve_model" --force --dim 512 --layers 8 --heads 8 --kv-heads 4 \
        --hidden 1408 --vocab 8000 --context 4096
    serve_load serve_model --model "$serve_model" --clients 2 --requests 48 --pool 16
    serve_load serve_bundled --clients 4 --requests 100 --pool 32
fi

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$raw/machine.txt"

echo "report: writing $out/PERFORMANCE.md" >&2
python3 "$root/tools/perf_report.py" --results "$raw" --out "$out"
rm -rf "$out/perf/raw"
mv "$raw" "$out/perf/raw"
echo "report: done: $out/PERFORMANCE.md, charts in $out/perf/, raw data in $out/perf/raw/" >&2
