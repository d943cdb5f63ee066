#!/usr/bin/env bash
# Installs the onnxruntime CPU library from PyPI into a venv under target/ (never committed) and
# prints the path of libonnxruntime.so.*, for tests and benchmarks of the onnxruntime engine:
#   export ORT_DYLIB_PATH="$(bench/fetch-onnxruntime.sh)"
# The wheel is the only place a test may fetch it from (a package registry). A second call finds
# the venv and returns at once. Fails (exit 1, one line on stderr) when it cannot install.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${ORT_PYPI_VERSION:-1.31.1}"
venv="target/onnxruntime-venv-$version"
find_lib() {
  { find "$venv" -path '*onnxruntime/capi/libonnxruntime.so.*' -type f 2>/dev/null || true; } | sort | head -n 1
}
lib="$(find_lib)"
if [ -z "$lib" ]; then
  # One installer at a time: tests run in parallel threads and binaries.
  mkdir -p target
  exec 9>target/onnxruntime-venv.lock
  flock 9
  lib="$(find_lib)"
  if [ -z "$lib" ]; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >&2 ||
      ! "$venv/bin/pip" install --quiet --disable-pip-version-check "onnxruntime==$version" >&2; then
      echo "fetch-onnxruntime: cannot install onnxruntime==$version from PyPI into $venv (needs python3-venv and network to PyPI)" >&2
      exit 1
    fi
    lib="$(find_lib)"
  fi
fi
if [ -z "$lib" ]; then
  echo "fetch-onnxruntime: onnxruntime==$version installed, but no onnxruntime/capi/libonnxruntime.so.* in $venv" >&2
  exit 1
fi
realpath "$lib"
