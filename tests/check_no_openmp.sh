#!/usr/bin/env bash
# check_no_openmp.sh LIB: LIB (libkvfuse.so built with KVFUSE_OPENMP=OFF) needs no OpenMP
# runtime (libgomp, libomp, libiomp) and references no OpenMP symbol. readelf reads any ELF
# machine, so the check also runs on the AArch64 cross build.
set -euo pipefail
lib=${1:?usage: check_no_openmp.sh LIB}
needed=$(readelf -d "$lib" | awk '/NEEDED/ {print $NF}')
[ -n "$needed" ] || { echo "check_no_openmp: readelf found no NEEDED entry in $lib" >&2; exit 1; }
if grep -Ei 'gomp|libomp|iomp' <<<"$needed"; then
    echo "check_no_openmp: $lib needs an OpenMP runtime (above)" >&2
    exit 1
fi
if readelf --dyn-syms -W "$lib" | awk '$7 == "UND" {print $8}' | grep -E '^(omp_|GOMP_|__kmpc_)'; then
    echo "check_no_openmp: $lib calls OpenMP (above)" >&2
    exit 1
fi
echo "check_no_openmp: $lib needs $(tr '\n' ' ' <<<"$needed")and no OpenMP runtime"
