"""``m2det-build``: an ONNX file written by m2det-export -> a TensorRT or TensorRT-RTX plan +
``<plan>.json``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from m2det.cli import make_parser, run_cli
from m2det.engines.batch_profile import BatchProfile
from m2det.engines.builder import build_engine
from m2det.engines.plan_sidecar import read_sidecar, sidecar_path
from m2det.engines.trt_target import DEFAULT_RTX_COMPUTE_CAPABILITIES, NAMES, TARGETS

PROG = "m2det-build"


def _parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Build a TensorRT or TensorRT-RTX plan (+ <plan>.json metadata) from "
                    "an ONNX file written by m2det-export (raw or NMS graph, fp32/fp16/int8). "
                    "TensorRT needs a GPU; TensorRT-RTX builds without one.",
                    argparse.HelpFormatter)  # fmt: skip
    p.add_argument("--onnx", required=True, type=Path, help="exported ONNX file")
    p.add_argument("--target", choices=TARGETS, help="library to build with (default: "
                   "tensorrt when installed, else tensorrt-rtx)")  # fmt: skip
    default_cc = ",".join(c.replace(".", "") for c in DEFAULT_RTX_COMPUTE_CAPABILITIES)
    p.add_argument("--compute-capability", metavar="LIST", help="tensorrt-rtx: GPUs the plan "
                   f"targets, e.g. 75,86,89,120 (default {default_cc})")  # fmt: skip
    p.add_argument("--out", type=Path, help="plan to write (default: the ONNX path with .plan)")
    p.add_argument("--batch", default="1:1:1", help="batch profile MIN:OPT:MAX (default 1:1:1)")
    p.add_argument("--workspace", type=float, default=4.0, help="workspace limit in GiB (4)")
    p.add_argument("--plugin-lib", type=Path, help="soft-NMS plugin library (libm2det_plugins.so); "
                   "default $M2DET_PLUGIN_LIB; needed for NMS graphs")  # fmt: skip
    p.add_argument("--timing-cache", type=Path, help="tensorrt: timing cache file (default: "
                   "under ~/.cache/m2det, per TensorRT version and GPU arch)")  # fmt: skip
    p.add_argument("--version-compatible", action="store_true", help="tensorrt: build a "
                   "version-compatible plan with the plugin library inside it")  # fmt: skip
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 math for FP32 layers (faster, ~1e-3 relative error)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    return p


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    plan = build_engine(args.onnx, args.out, batch=args.batch, workspace_gib=args.workspace,
                        timing_cache=args.timing_cache, plugin_lib=args.plugin_lib,
                        version_compatible=args.version_compatible, tf32=args.tf32,
                        progress=not args.no_progress, verbose=args.verbose,
                        target=args.target,
                        compute_capabilities=args.compute_capability)  # fmt: skip
    meta = read_sidecar(plan)
    print(f"wrote {plan} ({meta['precision']}, {meta['graph']} graph, batch "
          f"{BatchProfile(**meta['batch'])}, {NAMES[meta['library']]} {meta['library_version']} "
          f"for compute capability {','.join(meta['compute_capabilities'])}, "
          f"{meta['build_seconds']} s) and {sidecar_path(plan).name}")  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``m2det-build``: exit 0 on success, 2 with one line on a user error."""
    return run_cli(PROG, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
