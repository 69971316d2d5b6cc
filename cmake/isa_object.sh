#!/bin/sh
# Compiler launcher of the per-ISA kernel objects (dispatch/CMakeLists.txt):
#   isa_object.sh OBJCOPY COMPILER ARGS...
# runs the compiler, then makes every symbol the object defines local except its
# kvfuse::<isa>::register_* entry points, and drops its COMDAT groups. An inline function or
# template instantiation outside the ISA's namespace (std::vector's members, std::sort's
# helpers, xsimd's exp, a kvfuse::detail constructor) is otherwise a weak symbol that every
# ISA's object defines, compiled with that object's flags, and the linker keeps one copy for
# all of them: an AVX-512 copy kept for the AVX2 kernels would crash every AVX2-only CPU. At
# -O3 GCC inlines most of them, at -O1 (the sanitizer lane) almost none. With this step each
# object keeps its own copy; tests/check_isa_objects.sh checks the result.
set -e
objcopy=$1
shift
"$@"
out=
previous=
for arg in "$@"; do
    [ "$previous" = "-o" ] && out=$arg
    previous=$arg
done
case $out in
    *.o) "$objcopy" --wildcard --keep-global-symbol='_ZN6kvfuse*register_*' --remove-section=.group "$out" ;;
esac
