#!/usr/bin/env bash
# Fails if any given object file holds a VEX- or EVEX-encoded instruction (AVX, AVX2, FMA, F16C,
# AVX-VNNI, AVX-512, and the VEX-128 / EVEX-128 forms that use only xmm registers): the
# ISA-neutral part of libkvfuse must run on a plain x86-64 CPU.
#
# It reads the encoding, not the register names: in 64-bit mode the bytes C4 and C5 (LES/LDS in
# 32-bit code) always start a VEX prefix and 62 (BOUND) always starts EVEX, so an instruction
# whose first byte after any segment or address-size prefix is C4, C5 or 62 is VEX/EVEX.
# --insn-width keeps every instruction's bytes on one line (objdump wraps long ones otherwise,
# and a continuation line would read as a new instruction).
#
# --functions REGEX: check only the functions whose (mangled) names match, in objects that may
# otherwise hold AVX code: the kernels' register_* functions, which start-up runs on every CPU.
set -euo pipefail
functions=
if [ "${1:-}" = "--functions" ]; then functions=$2; shift 2; fi
[ "$#" -gt 0 ] || { echo "usage: $0 [--functions REGEX] object..." >&2; exit 2; }
bad=0
for obj in "$@"; do
    [ -f "$obj" ] || { echo "no such object: $obj" >&2; exit 2; }
    hits=$(objdump -d --insn-width=16 "$obj" | awk -F'\t' -v only="$functions" '
        /^[0-9a-f]+ <.*>:$/ { name = $0; sub(/^[0-9a-f]+ </, "", name); sub(/>:$/, "", name); next }
        only != "" && name !~ only { next }
        NF >= 3 && $1 ~ /^ *[0-9a-f]+:$/ {
            n = split($2, bytes, " ")
            i = 1
            while (i <= n && bytes[i] ~ /^(26|2e|36|3e|64|65|67)$/) i++
            if (i <= n && bytes[i] ~ /^(c4|c5|62)$/) print $0
        }')
    if [ -n "$hits" ]; then
        echo "VEX/EVEX (AVX) code in ISA-neutral ${functions:+functions /$functions/ of the }object: $obj" >&2
        printf '%s\n' "$hits" | head -5 >&2
        bad=1
    fi
done
[ "$bad" -eq 0 ] && echo "checked $# objects${functions:+ (functions /$functions/)}: no VEX or EVEX instructions"
exit "$bad"
