#!/usr/bin/env bash
# Compile-check the C++ runtime (library, example, moved-from test) against TensorRT headers,
# without libnvinfer: configures engines/cpp with -DM2DET_COMPILE_ONLY=ON (object libraries,
# nothing is linked) and -Wall -Wextra -Werror on our targets, once with OpenCV (if found) and
# once without.
#   usage: engines/cpp/check_compile.sh [TENSORRT_INCLUDE_DIR]
#   (default: $TensorRT_INCLUDE_DIR, else the first ~/.cache/tensorrt-oss/*/include, as written by
#    shared/tools/trt-headers.sh). M2DET_CHECK_OPENCV="ON" or "OFF" checks one configuration only.
#   Exit 0: clean; 1: errors or warnings; 3: no headers found.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
inc=${1:-${TensorRT_INCLUDE_DIR:-}}
if [ -z "$inc" ]; then
  inc=$(ls -d "${XDG_CACHE_HOME:-$HOME/.cache}"/tensorrt-oss/*/include 2>/dev/null | head -n 1 || true)
fi
if [ -z "$inc" ] || [ ! -f "$inc/NvInfer.h" ]; then
  echo "check_compile: no TensorRT headers (pass a folder with NvInfer.h or set TensorRT_INCLUDE_DIR)" >&2
  exit 3
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for opencv in ${M2DET_CHECK_OPENCV:-ON OFF}; do
  build="$work/opencv-$opencv"
  cmake -S "$here" -B "$build" -DM2DET_COMPILE_ONLY=ON -DM2DET_WITH_OPENCV=$opencv \
    -DTensorRT_INCLUDE_DIR="$inc" -DCMAKE_BUILD_TYPE=Release >"$build.configure.log" 2>&1 \
    || { cat "$build.configure.log" >&2; exit 1; }
  grep -E "m2det_runtime:" "$build.configure.log" || true
  if ! cmake --build "$build" -j "${JOBS:-2}" >"$build.log" 2>&1; then
    cat "$build.log" >&2
    status=1
  elif grep -q "warning" "$build.log"; then
    grep -n "warning" "$build.log" >&2
    status=1
  fi
  objects=$(find "$build" -name '*.o' | wc -l)
  echo "check_compile: WITH_OPENCV=$opencv: $objects object files, status $status"
done
exit $status
