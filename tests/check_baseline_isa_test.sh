#!/usr/bin/env bash
# Proves check_baseline_isa.sh catches what it must: compiles tiny objects with the given C++
# compiler and expects the plain x86-64 one to pass, a VEX-128 one (-mavx: vaddps on xmm, no
# ymm register anywhere) and an EVEX-128 one (-mavx512vl: vprord on xmm, no zmm or mask
# register) to be rejected.
#   check_baseline_isa_test.sh <c++ compiler>
set -euo pipefail
cxx=$1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/sse.cpp" <<'SRC'
#include <immintrin.h>
__m128 add(__m128 a, __m128 b) { return _mm_add_ps(a, b); }
SRC
cat >"$work/evex.cpp" <<'SRC'
#include <immintrin.h>
__m128i rotate(__m128i a) { return _mm_ror_epi32(a, 3); }
SRC
"$cxx" -O1 -c "$work/sse.cpp" -o "$work/plain.o"
"$cxx" -O1 -mavx -c "$work/sse.cpp" -o "$work/vex128.o"
"$cxx" -O1 -mavx512f -mavx512vl -c "$work/evex.cpp" -o "$work/evex128.o"
status=0
"$here/check_baseline_isa.sh" "$work/plain.o" >/dev/null || { echo "FAIL: plain x86-64 object rejected" >&2; status=1; }
for obj in vex128 evex128; do
    if objdump -d "$work/$obj.o" | grep -Eq '%[yz]mm[0-9]|%k[0-7]\b'; then
        echo "FAIL: $obj.o uses a ymm/zmm/mask register; the test needs an xmm-only form" >&2
        status=1
    fi
    if "$here/check_baseline_isa.sh" "$work/$obj.o" 2>/dev/null; then
        echo "FAIL: $obj.o accepted" >&2
        status=1
    else
        echo "$obj.o rejected as it must be"
    fi
done
exit "$status"
