#!/usr/bin/env bash
# Fails if any given object file uses a YMM/ZMM register or an AVX-512 mask register: the
# ISA-neutral part of libkvfuse must run on a plain x86-64 CPU.
set -euo pipefail
bad=0
for obj in "$@"; do
    if objdump -d --no-show-raw-insn "$obj" | grep -Eq '%[yz]mm[0-9]|%k[0-7]\b'; then
        echo "AVX code in ISA-neutral object: $obj" >&2
        objdump -d --no-show-raw-insn "$obj" | grep -E '%[yz]mm[0-9]|%k[0-7]\b' | head -5 >&2
        bad=1
    fi
done
[ "$bad" -eq 0 ] && echo "checked $# ISA-neutral objects: no AVX instructions"
exit "$bad"
