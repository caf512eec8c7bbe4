#!/usr/bin/env bash
# Compile-check the C++ runtime (library, example, moved-from test) against TensorRT headers,
# without libnvinfer: configures engines/cpp with -DM2DET_COMPILE_ONLY=ON (object libraries,
# nothing is linked) and -Wall -Wextra -Werror on our targets, once with OpenCV (if found) and
# once without.
#   usage: engines/cpp/check_compile.sh [INCLUDE_DIR | TENSORRT_GIT_DIR [REF]]
#   (the headers are found by plugins/tensorrt_headers.sh: same arguments; none: $TENSORRT_INCLUDE_DIR
#    or the newest unpacked copy). M2DET_CHECK_OPENCV="ON" or "OFF" checks one configuration only.
#   Exit 0: clean; 1: errors or warnings; 3: no headers found.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
inc=$("$here/../../plugins/tensorrt_headers.sh" "$@") || exit 3
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
