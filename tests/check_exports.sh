#!/usr/bin/env bash
# The shared library's dynamic symbol table holds exactly the functions the C header declares
# (KVFUSE_API): no kvfuse::detail hook, no C++ template or inline code, no GNU-unique object
# (`u`, which would keep the library from ever being unloaded), and no declared function missing.
# Usage: check_exports.sh libkvfuse.so include/kvfuse/kvfuse.h
set -euo pipefail
library=$1
header=$2
declared=$(grep -o 'KVFUSE_API[^(]*\bkvfuse_[a-z0-9_]*(' "$header" | grep -o 'kvfuse_[a-z0-9_]*($' | tr -d '(' | sort -u)
[[ -n $declared ]] || { echo "no KVFUSE_API function found in $header" >&2; exit 1; }
# nm -D --defined-only: "<address> <type> <name>"; undefined imports (libc, libgomp) are not listed.
exported=$(nm -D --defined-only "$library" | awk '{print $3}' | sort -u)
status=0
extra=$(comm -13 <(echo "$declared") <(echo "$exported"))
missing=$(comm -23 <(echo "$declared") <(echo "$exported"))
if [[ -n $extra ]]; then
    echo "exported but not in the C API:" >&2
    nm -D --defined-only "$library" | grep -F -w -f <(echo "$extra") | c++filt >&2
    status=1
fi
if [[ -n $missing ]]; then
    echo "declared in $header but not exported:" >&2
    echo "$missing" >&2
    status=1
fi
unique=$(nm -D --defined-only "$library" | awk '$2 == "u"' || true)
if [[ -n $unique ]]; then
    echo "GNU-unique symbols (the library could not be unloaded):" >&2
    echo "$unique" | c++filt >&2
    status=1
fi
[[ $status == 0 ]] && echo "$(echo "$exported" | wc -l) symbols exported, all declared in the C API"
exit $status
