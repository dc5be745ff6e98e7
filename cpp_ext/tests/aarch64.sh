#!/usr/bin/env bash
# Cross-build the native core and its unit tests for aarch64 (Jetson) and run them under qemu user emulation.
# Usage: aarch64.sh SOURCE_DIR BUILD_DIR. Exit 77 (ctest: skipped) with the reason when the tools are missing and
# cannot be installed here (no apt-get, or not root).
set -euo pipefail
src=$1 out=$2
cxx=aarch64-linux-gnu-g++

find_qemu() { command -v qemu-aarch64-static || command -v qemu-aarch64 || true; }

if ! command -v "$cxx" >/dev/null || [ -z "$(find_qemu)" ]; then
  if ! command -v apt-get >/dev/null; then
    echo "SKIPPED: needs $cxx and qemu-aarch64(-static); apt-get is not available to install them" >&2
    exit 77
  fi
  if [ "$(id -u)" = 0 ]; then sudo=""
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"
  else
    echo "SKIPPED: needs $cxx and qemu-aarch64(-static); installing them with apt-get needs root" >&2
    exit 77
  fi
  echo "installing g++-aarch64-linux-gnu and qemu-user-static with apt-get (once)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    g++-aarch64-linux-gnu qemu-user-static >/dev/null
fi
qemu=$(find_qemu)

mkdir -p "$out"
# Same flags as the native build (CMakeLists.txt, setup.py), warnings as errors; static, so qemu needs no sysroot.
"$cxx" -std=c++17 -O3 -Wall -Wextra -Werror -ffp-contract=off -fno-trapping-math -fno-math-errno \
  -I"$src/cpp_ext/include" -I"$src/cpp_ext/src" -I"$src/cpp_ext/third_party/onnxruntime" \
  "$src/cpp_ext/tests/test_native.cpp" "$src"/cpp_ext/src/*.cpp -static -o "$out/test_native"
machine=$(od -An -tx1 -j18 -N2 "$out/test_native" | tr -d ' \n')  # ELF e_machine: 0xb7 is EM_AARCH64
[ "$machine" = b700 ] || { echo "the test binary is not aarch64 (e_machine $machine)" >&2; exit 1; }
"$qemu" "$out/test_native"
