#!/usr/bin/env bash
# Fails if an ISA's kernel object defines code that another object could also define: a weak or
# unique function outside the object's own namespace (kvfuse::<isa>::). Such an inline function
# (a destructor, a template instantiation) is emitted in every object that uses it, compiled
# with that object's ISA flags, and the linker keeps one copy for all of them: an AVX-512 copy
# kept for the AVX2 kernels crashes every AVX2-only CPU. Weak data (the personality routine's
# reference) carries no instructions and is allowed.
#   check_isa_objects.sh OBJECT...   (objects named <kernel>_<isa>.cpp.o, as CMake builds them)
set -euo pipefail
bad=0
checked=0
for obj in "$@"; do
    base=$(basename "$obj")
    base=${base%.cpp.o}
    base=${base%.o}
    isa=${base#*_}  # attention_avx512_vnni -> avx512_vnni
    [[ -f $obj ]] || { echo "check_isa_objects: no object $obj" >&2; exit 2; }
    symbols=$(nm -C --defined-only "$obj") || { echo "check_isa_objects: nm cannot read $obj" >&2; exit 2; }
    # Weak (W), unique (u) and indirect (i) functions; V is weak data.
    offenders=$(echo "$symbols" | awk '$2 == "W" || $2 == "u" || $2 == "i" { $1 = ""; $2 = ""; print substr($0, 3) }' |
                grep -v "^kvfuse::${isa}::" || true)
    if [[ -n $offenders ]]; then
        echo "code another object may also define, in $obj (isa $isa):" >&2
        echo "$offenders" | head -10 >&2
        bad=1
    fi
    checked=$((checked + 1))
done
[[ $checked -gt 0 ]] || { echo "check_isa_objects: no objects given" >&2; exit 2; }
[[ $bad -eq 0 ]] && echo "checked $checked ISA kernel objects: no shared inline code"
exit "$bad"
