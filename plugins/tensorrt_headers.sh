#!/usr/bin/env bash
# Find (or unpack) TensorRT headers for the compile checks of plugins/ and engines/cpp/, which
# need NvInfer*.h but neither TensorRT's libraries nor a GPU. Prints the include folder.
#
#   plugins/tensorrt_headers.sh                   $TENSORRT_INCLUDE_DIR (or $TensorRT_INCLUDE_DIR),
#                                                 else the newest folder unpacked earlier
#   plugins/tensorrt_headers.sh INCLUDE_DIR       a folder that holds NvInfer.h (e.g. the include/
#                                                 of a TensorRT tarball or /usr/include/x86_64-linux-gnu)
#   plugins/tensorrt_headers.sh GIT_DIR [REF]     a clone or bare mirror of github.com/NVIDIA/TensorRT:
#                                                 its include/ at REF (default HEAD) is unpacked once
#                                                 into ${XDG_CACHE_HOME:-~/.cache}/tensorrt-oss/<commit>
#   plugins/tensorrt_headers.sh GIT_DIR REF:PATH  the headers in folder PATH of REF of any git dir, e.g.
#                                                 TensorRT-RTX's in a clone of rustnn/trtx-rs:
#                                                 HEAD:trtx-sys/TensorRT-Headers/TRT-RTX-1.6, unpacked once
#                                                 into ${XDG_CACHE_HOME:-~/.cache}/tensorrt-rtx/<PATH's last part>
#
# The headers are NVIDIA's and stay outside this repository. Exit 0 with the folder on stdout;
# exit 2 with one line on stderr when no headers can be found.
set -euo pipefail
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tensorrt-oss"

fail() { echo "tensorrt_headers: $*" >&2; exit 2; }

trt_version() {  # "11.1.0" from NvInferVersion.h (TensorRT 10, 11 and RTX spell the macros differently)
  awk '/^#define (NV_TENSORRT|TRT)_(MAJOR|MINOR|PATCH)(_ENTERPRISE|_RTX)? [0-9]+/ { v[$2] = $3 }
       END { for (k in v) if (k ~ /MAJOR/) M = v[k]; else if (k ~ /MINOR/) m = v[k]; else p = v[k];
             if (M != "") printf "%s.%s.%s", M, m, p }' "$1/NvInferVersion.h" 2>/dev/null || true
}

report() {  # the folder on stdout, what it is on stderr
  local library=TensorRT
  grep -q '^#define TRT_MAJOR_RTX' "$1/NvInferVersion.h" 2>/dev/null && library=TensorRT-RTX
  echo "tensorrt_headers: $library $(trt_version "$1") headers in $1" >&2
  echo "$1"
}

if [ $# -eq 0 ]; then
  env_dir=${TENSORRT_INCLUDE_DIR:-${TensorRT_INCLUDE_DIR:-}}
  if [ -n "$env_dir" ]; then
    [ -f "$env_dir/NvInfer.h" ] || fail "no NvInfer.h in \$TENSORRT_INCLUDE_DIR ($env_dir)"
    report "$env_dir"; exit 0
  fi
  newest=$(ls -dt "$cache"/*/include 2>/dev/null | head -n 1 || true)
  [ -n "$newest" ] && [ -f "$newest/NvInfer.h" ] \
    || fail "no headers: pass a folder with NvInfer.h or a NVIDIA/TensorRT git directory, or set TENSORRT_INCLUDE_DIR"
  report "$newest"; exit 0
fi

source_dir=$1
ref=${2:-HEAD}
if [ -f "$source_dir/NvInfer.h" ]; then
  report "$(cd "$source_dir" && pwd)"; exit 0
fi
gitdir=$source_dir
[ -d "$gitdir/.git" ] && gitdir="$gitdir/.git"
if [[ "$ref" == *:* ]]; then  # REF:PATH - a header folder anywhere in a repository
  path=${ref#*:}
  path=${path%/}
  dest="${XDG_CACHE_HOME:-$HOME/.cache}/tensorrt-rtx/$(basename "$path")/include"
  if [ ! -f "$dest/NvInfer.h" ]; then
    git --git-dir="$gitdir" cat-file -e "${ref%%:*}:$path/NvInfer.h" 2>/dev/null \
      || fail "$source_dir has no $path/NvInfer.h at ${ref%%:*}"
    tmp=$(mktemp -d "$dest.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$dest")"; mktemp -d "$dest.tmp.XXXXXX"; })
    trap 'rm -rf "$tmp"' EXIT
    git --git-dir="$gitdir" archive "${ref%%:*}" "$path" \
      | tar -x -C "$tmp" --strip-components="$(tr -cd / <<<"$path/" | wc -c)"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    trap - EXIT
  fi
  report "$dest"; exit 0
fi
commit=$(git --git-dir="$gitdir" rev-parse --verify -q "$ref^{commit}" 2>/dev/null) \
  || fail "$source_dir is neither a folder with NvInfer.h nor a git directory with $ref"
dest="$cache/${commit:0:8}"
if [ ! -f "$dest/include/NvInfer.h" ]; then
  git --git-dir="$gitdir" cat-file -e "$commit:include/NvInfer.h" 2>/dev/null \
    || fail "$source_dir at $ref has no include/NvInfer.h (not a NVIDIA/TensorRT repository?)"
  tmp=$(mktemp -d "$cache.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$cache")"; mktemp -d "$cache.tmp.XXXXXX"; })
  trap 'rm -rf "$tmp"' EXIT
  git --git-dir="$gitdir" archive "$commit" include | tar -x -C "$tmp"
  mkdir -p "$cache"
  rm -rf "$dest"
  mv "$tmp" "$dest"  # whole or not at all: a half-unpacked folder is never left under its name
  trap - EXIT
fi
report "$dest/include"
