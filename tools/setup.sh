#!/usr/bin/env bash
# Installs the Debian 12 packages kvfuse needs that this machine lacks.
#   tools/setup.sh          packages to build, run the demo and run the native tests
#   tools/setup.sh --cross  also the AArch64 cross compiler and qemu-user (NEON test lane)
#   tools/setup.sh --report also gnuplot, for the charts of tools/report.sh
#   tools/setup.sh --fuzz   also clang with its libFuzzer, sanitizer and OpenMP runtimes (fuzz lane)
# Flags combine (`--cross --report`); an unknown flag is an error, so a typo installs nothing.
set -euo pipefail

packages=(build-essential cmake pkg-config python3 libxsimd-dev libhwloc-dev libopenblas-openmp-dev
          libcli11-dev nlohmann-json3-dev libgtest-dev libbenchmark-dev libssl-dev libxxhash-dev
          libpcre2-dev libhiredis-dev libcpp-httplib-dev redis-server)
# hiredis, cpp-httplib, redis-server: kvfuse serve and its tests. Under systemd the redis-server
# package also starts a service on 127.0.0.1:6379; the tests never use it, they start their own
# on free loopback ports.
# npm (tools/fetch-tokenizers.sh) from Debian unless some npm is already on PATH (a NodeSource
# nodejs bundles its own, and Debian's npm package would conflict with it).
command -v npm >/dev/null || packages+=(npm)
for flag in "$@"; do
    case "$flag" in
        --cross) packages+=(g++-aarch64-linux-gnu qemu-user binutils) ;;
        # -nox: the report draws PNGs through cairo and needs no X11 or Qt.
        --report) packages+=(gnuplot-nox) ;;
        # clang 14: libFuzzer and the sanitizer runtimes are in libclang-rt-14-dev, clang's
        # OpenMP (libomp) in libomp-14-dev.
        --fuzz) packages+=(clang libclang-rt-14-dev libomp-14-dev) ;;
        *) echo "setup: unknown flag '$flag' (known: --cross, --report, --fuzz)" >&2; exit 2 ;;
    esac
done

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "setup: all ${#packages[@]} packages present"
    exit 0
fi

echo "setup: installing ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO=sudo
    else
        echo "setup: not root. Run this once, then retry:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
