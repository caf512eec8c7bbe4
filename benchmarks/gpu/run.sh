#!/usr/bin/env bash
# The GPU script of issue #21: soft-NMS kernel build, tests, fuzzing and timing, end-to-end FPS at
# 320/512/800 and the official pipeline side by side, all within 8 minutes on one CUDA GPU.
#
#   benchmarks/gpu/run.sh OUT_DIR [suite options]      on a CUDA machine: OUT_DIR/gpu.json
#   benchmarks/gpu/run.sh --dry-run [OUT_DIR] [...]    CPU only, tiny sizes: OUT_DIR/gpu.dry-run.json
#
# Suite options (python -m m2det.benchmarks.gpu.suite --help): --official DIR (prepared copy of
# the official code, default gpu-carry/official-m2det), --images DIR, --budget-s S, --debug.
# The package is installed offline (pip -e, no index) when it is not importable; wheels found in
# gpu-carry/wheels/ are installed into a temporary folder first. Exit: 0 all steps ok, 1 a step
# failed or was skipped, 2 usage error, 124 killed at the 8-minute limit (gpu.json keeps what was
# measured until then).
set -euo pipefail
export M2DET_GPU_T0="${M2DET_GPU_T0:-$(date +%s)}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
prog="run.sh"

dry=()
out=""
rest=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=(--dry-run) ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) rest+=("$arg") ;;
    *) if [[ -z "$out" ]]; then out="$arg"; else rest+=("$arg"); fi ;;
  esac
done
if [[ -z "$out" ]]; then
  if [[ ${#dry[@]} -eq 0 ]]; then
    echo "$prog: error: OUT_DIR is required (usage: run.sh OUT_DIR | run.sh --dry-run [OUT_DIR])" >&2
    exit 2
  fi
  out="$(mktemp -d "${TMPDIR:-/tmp}/m2det-gpu-dry-run.XXXXXX")"
fi
if [[ ${#dry[@]} -gt 0 ]]; then
  export CUDA_VISIBLE_DEVICES=""  # the dry run never touches a GPU
fi

if compgen -G "gpu-carry/wheels/*.whl" > /dev/null; then
  site="${TMPDIR:-/tmp}/m2det-gpu-site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" gpu-carry/wheels/*.whl >&2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

if ! "$py" -c "import m2det.benchmarks.gpu.suite" 2> /dev/null; then
  echo "[gpu] installing the package (pip install -e . offline)" >&2
  if ! "$py" -m pip install -q --no-index --no-deps --no-build-isolation -e . >&2; then
    # No usable setuptools: lay the installed namespace out as links (m2det.export -> export/, ...).
    ns="${TMPDIR:-/tmp}/m2det-gpu-ns"
    rm -rf "$ns" && mkdir -p "$ns/m2det"
    for f in "$root"/m2det/*; do ln -s "$f" "$ns/m2det/"; done
    for d in export engines benchmarks; do ln -s "$root/$d" "$ns/m2det/$d"; done
    export PYTHONPATH="$ns${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$py" -c "import m2det.benchmarks.gpu.suite" || { echo "$prog: error: cannot import m2det" >&2; exit 2; }
fi

set +e
timeout --foreground -k 10 480 "$py" -m m2det.benchmarks.gpu.suite "$out" "${dry[@]}" "${rest[@]}"
rc=$?
set -e
if [[ $rc -eq 124 ]]; then
  echo "[gpu] stopped at the 8-minute limit; $out keeps what was measured" >&2
fi
exit $rc
