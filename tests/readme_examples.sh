#!/usr/bin/env bash
# The README's C and C++ examples compile as written (warnings are errors) and run: every
# ```c and ```cpp block of README.md is a whole program, built against the public headers and
# the shared library.
# Usage: readme_examples.sh README.md libkvfuse.so include_dir...
# EXAMPLE_FLAGS (environment) is added to every compile and link: a sanitizer build passes its
# -fsanitize flags, since a sanitized library needs the sanitizer runtime first in the program.
set -euo pipefail
readme=$1
library=$2
shift 2
includes=()
for dir in "$@"; do includes+=(-I "$dir"); done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Block n of language L goes to $work/example_n.L.
awk -v dir="$work" '
    /^```(c|cpp)$/ { lang = substr($0, 4); n++; file = dir "/example_" n "." lang; next }
    /^```/ { file = ""; next }
    file != "" { print > file }' "$readme"
count_c=$(find "$work" -name '*.c' | wc -l)
count_cpp=$(find "$work" -name '*.cpp' | wc -l)
if ((count_c == 0 || count_cpp == 0)); then
    echo "$readme: expected a C and a C++ example, found $count_c and $count_cpp" >&2
    exit 1
fi
libdir=$(dirname "$library")
for source in "$work"/*.c "$work"/*.cpp; do
    case $source in
        *.c) cc -std=c99 -Wall -Wextra -pedantic -Werror "${includes[@]}" "$source" -o "$source.bin" \
                 -L "$libdir" -lkvfuse "-Wl,-rpath,$libdir" ${EXAMPLE_FLAGS:-} ;;
        *.cpp) c++ -std=c++17 -Wall -Wextra -Werror "${includes[@]}" "$source" -o "$source.bin" \
                   -L "$libdir" -lkvfuse "-Wl,-rpath,$libdir" ${EXAMPLE_FLAGS:-} ;;
    esac
    "$source.bin"
done
echo "$count_c C and $count_cpp C++ README examples built and ran"
