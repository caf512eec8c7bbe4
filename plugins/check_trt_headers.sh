#!/usr/bin/env bash
# Compile-check the TensorRT plugin sources (warnings are errors) against TensorRT or TensorRT-RTX
# headers, without TensorRT installed and without network access.
#   usage: plugins/check_trt_headers.sh [INCLUDE_DIR | TENSORRT_GIT_DIR [REF] | GIT_DIR REF:PATH]
# The headers are found by plugins/tensorrt_headers.sh (same arguments; none: $TENSORRT_INCLUDE_DIR
# or the newest unpacked copy). They always stay outside this repository; the build goes to a
# temporary folder.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
include=$("$here/tensorrt_headers.sh" "$@")

version=$(sed -n 's/^#define \(TRT_\(MAJOR\|MINOR\|PATCH\)_\(ENTERPRISE\|RTX\)\|NV_TENSORRT_\(MAJOR\|MINOR\|PATCH\)\) \([0-9][0-9]*\).*/\5/p' \
  "$include/NvInferVersion.h" | paste -sd.)
library=TensorRT
grep -q '^#define TRT_MAJOR_RTX' "$include/NvInferVersion.h" && library=TensorRT-RTX
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cmake -S "$here" -B "$build" -DTensorRT_INCLUDE_DIR="$include" -DTensorRT_LIBRARY=TensorRT_LIBRARY-NOTFOUND \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DM2DET_WARNINGS_AS_ERRORS=ON >"$build/configure.log" \
  || { cat "$build/configure.log"; exit 1; }
grep -q "TensorRT plugin library" "$build/configure.log" || { cat "$build/configure.log"; exit 1; }
rc=0
cmake --build "$build" --target m2det_plugin_objects -j "$(nproc)" >"$build/build.log" 2>&1 || rc=$?
grep -v '^\[' "$build/build.log" || true
if [ "$rc" != 0 ] || grep -qi "warning" "$build/build.log"; then
  echo "check_trt_headers: FAILED against $library ${version:-?} headers at $include" >&2
  exit 1
fi
echo "check_trt_headers: plugin compiles without warnings against $library ${version:-?} headers ($include)"
