"""``m2det-build``: an ONNX file written by m2det-export -> a TensorRT or TensorRT-RTX plan +
``<plan>.json``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from m2det.cli import Console, make_parser, run_cli
from m2det.engines.batch_profile import BatchProfile
from m2det.engines.builder import build_engine
from m2det.engines.plan_sidecar import read_sidecar, sidecar_path
from m2det.engines.trt_target import DEFAULT_RTX_COMPUTE_CAPABILITIES, NAMES, TARGETS
from m2det.errors import M2DetError

PROG = "m2det-build"


def _parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Build a TensorRT or TensorRT-RTX plan (and its <plan>.json metadata) "
                    "from an ONNX file written by m2det-export (raw or NMS graph; fp32, fp16 or "
                    "int8). TensorRT needs a GPU; TensorRT-RTX builds without one.")  # fmt: skip
    p.add_argument("--onnx", required=True, type=Path, help="The exported ONNX file.")
    p.add_argument("--target", choices=TARGETS, help="The library to build with (default: "
                   "tensorrt when it is installed, else tensorrt-rtx).")  # fmt: skip
    default_cc = ",".join(c.replace(".", "") for c in DEFAULT_RTX_COMPUTE_CAPABILITIES)
    p.add_argument("--compute-capability", metavar="LIST", help="For tensorrt-rtx: the GPUs the "
                   f"plan targets, e.g. 75,86,89,120 (default: {default_cc}).")  # fmt: skip
    p.add_argument("--out", type=Path,
                   help="Plan to write (default: the ONNX path with the suffix .plan).")
    p.add_argument("--batch", default="1:1:1", help="Batch profile MIN:OPT:MAX.")
    p.add_argument("--workspace", type=float, default=4.0, help="Workspace limit in GiB.")
    p.add_argument("--plugin-lib", type=Path, help="Soft-NMS plugin library "
                   "(libm2det_plugins.so), needed for NMS graphs (default: $M2DET_PLUGIN_LIB).")
    p.add_argument("--timing-cache", type=Path, help="For tensorrt: the timing cache file "
                   "(default: one under ~/.cache/m2det per TensorRT version and GPU "
                   "architecture).")  # fmt: skip
    p.add_argument("--version-compatible", action="store_true", help="For tensorrt: build a "
                   "version-compatible plan with the plugin library inside it.")  # fmt: skip
    p.add_argument("--tf32", action="store_true",
                   help="Allow TF32 math for FP32 layers (faster, about 1e-3 relative error).")
    p.add_argument("--verbose", action="store_true", help="Show TensorRT's verbose log.")
    return p


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    console = Console.from_args(PROG, args)
    if not args.onnx.is_file():
        raise M2DetError(f"ONNX file not found: {args.onnx}")
    BatchProfile.parse(args.batch)  # a bad profile fails before TensorRT is loaded
    if args.workspace <= 0:
        raise M2DetError(f"--workspace must be > 0, got {args.workspace}")
    plan = build_engine(args.onnx, args.out, batch=args.batch, workspace_gib=args.workspace,
                        timing_cache=args.timing_cache, plugin_lib=args.plugin_lib,
                        version_compatible=args.version_compatible, tf32=args.tf32,
                        progress=not args.quiet, verbose=args.verbose, target=args.target,
                        compute_capabilities=args.compute_capability)  # fmt: skip
    meta = read_sidecar(plan)
    console.result(f"wrote {plan} ({meta['precision']}, {meta['graph']} graph, batch "
                   f"{BatchProfile(**meta['batch'])}, {NAMES[meta['library']]} "
                   f"{meta['library_version']} for compute capability "
                   f"{','.join(meta['compute_capabilities'])}, {meta['build_seconds']} s) and "
                   f"{sidecar_path(plan).name}")  # fmt: skip
    console.write_json({"plan": str(plan), "sidecar": str(sidecar_path(plan)), **meta})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-build``."""
    return run_cli(PROG, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
