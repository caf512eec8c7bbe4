#!/usr/bin/env bash
# Compile-check the TensorRT plugin sources (warnings are errors) against TensorRT or TensorRT-RTX
# headers, without TensorRT installed and without network access.
#   usage: plugins/check_trt_headers.sh INCLUDE_DIR
#          plugins/check_trt_headers.sh TENSORRT_GIT_DIR [REF]
#          plugins/check_trt_headers.sh GIT_DIR REF:PATH
# INCLUDE_DIR holds NvInferRuntime.h.  TENSORRT_GIT_DIR is a clone or bare mirror of
# NVIDIA/TensorRT: its HEAD headers are extracted by ../shared/tools/trt-headers.sh (override with
# $TRT_HEADERS_TOOL), or those of REF (a tag such as v10.16) into ~/.cache/tensorrt-oss/REF.
# REF:PATH takes the headers in folder PATH of REF of any git dir, e.g. TensorRT-RTX's from a
# clone of rustnn/trtx-rs: HEAD:trtx-sys/TensorRT-Headers/TRT-RTX-1.6, extracted into
# ~/.cache/tensorrt-rtx/<last part of PATH>/include.
# Headers always stay outside this repository; the build goes to a temporary folder.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:?usage: check_trt_headers.sh INCLUDE_DIR | TENSORRT_GIT_DIR [REF]}
ref=${2:-}

if [ -f "$src/NvInferRuntime.h" ]; then
  include=$src
elif [[ "$ref" == *:* ]]; then
  gitdir=$src
  [ -d "$gitdir/objects" ] || gitdir="$src/.git"
  path=${ref#*:}
  path=${path%/}
  out="${XDG_CACHE_HOME:-$HOME/.cache}/tensorrt-rtx/$(basename "$path")/include"
  if [ ! -f "$out/NvInferRuntime.h" ]; then
    mkdir -p "$out"
    git --git-dir="$gitdir" archive "${ref%%:*}" "$path" | tar -x -C "$out" --strip-components="$(tr -cd / <<<"$path/" | wc -c)"
  fi
  include="$out"
elif [ -n "$ref" ]; then
  gitdir=$src
  [ -d "$gitdir/objects" ] || gitdir="$src/.git"
  out="${XDG_CACHE_HOME:-$HOME/.cache}/tensorrt-oss/$ref"
  if [ ! -f "$out/include/NvInferRuntime.h" ]; then
    mkdir -p "$out"
    git --git-dir="$gitdir" archive "$ref" include | tar -x -C "$out"
  fi
  include="$out/include"
else
  tool=${TRT_HEADERS_TOOL:-$here/../../shared/tools/trt-headers.sh}
  [ -x "$tool" ] || { echo "check_trt_headers: $tool not found (set TRT_HEADERS_TOOL)" >&2; exit 2; }
  include=$("$tool" "$src")
fi

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
