"""``m2det-export``: the export pipeline (``m2det.export``) and, with ``--engine``, a TensorRT
plan of the last file (``m2det.engines.builder``). The command composes two stages, so it lives
with the higher one; the export stage itself never imports the builder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from m2det.cli import Console, run_cli
from m2det.engines.plugin_library import resolve_plugin_library
from m2det.engines.trt_target import TARGETS, TrtTarget, installed_module, resolve_target
from m2det.errors import M2DetError
from m2det.export import cli as export_cli
from m2det.export.pipeline import (
    ExportedFile,
    ExportOptions,
    ExportResult,
    export_model,
    write_summary,
)


def _engine_target(args: argparse.Namespace, options: ExportOptions) -> TrtTarget | None:
    """The library ``--engine`` builds with (``--target``, else TensorRT, else TensorRT-RTX),
    checked against the export options before any work; None: neither is installed (the ONNX
    files are still written, with a warning)."""
    if not args.engine:
        if args.target is not None:
            raise M2DetError("--target applies to --engine")
        return None
    if options.int8 and options.qdq_placement == "onnxruntime":
        raise M2DetError("--qdq-placement onnxruntime writes uint8 activations, which TensorRT "
                         "does not take: use --qdq-placement tensorrt with --engine")
    if args.target is None and not any(installed_module(t) for t in TARGETS):
        return None
    target = resolve_target(args.target)
    if target.rtx and options.nms_graph == "onnx-hard":
        raise M2DetError("TensorRT-RTX has no NonMaxSuppression layer: with --engine use "
                         "--nms-graph soft or hard (the plugin), or none")  # fmt: skip
    if options.nms_graph in ("soft", "hard") and resolve_plugin_library(None) is None:
        raise M2DetError(f"--nms-graph {options.nms_graph} with --engine needs the soft-NMS "
                         "plugin library: build plugins/ (docs/tensorrt.md) and set "
                         "M2DET_PLUGIN_LIB, or build the plan later with m2det-build "
                         "--plugin-lib")  # fmt: skip
    return target


def _build_engine(result: ExportResult, batch: int | None, target: TrtTarget | None,
                  console: Console, progress: bool) -> None:
    """Hand the last file to the builder of ``target`` (None: warn that none is installed)."""
    if target is None:
        console.warn("neither TensorRT nor TensorRT-RTX is installed: skipped the engine build "
                     "(ONNX files written)")  # fmt: skip
        return
    from m2det.engines.builder import build_engine

    last = result.last()
    plan = Path(build_engine(last.path, batch=batch or (1, 1, 1), target=target.name,
                             progress=progress))  # fmt: skip
    result.files["engine"] = ExportedFile(str(plan), plan.stat().st_size, last.precision, "plan")
    write_summary(result)


def _main(argv: Sequence[str] | None) -> int:
    parser = export_cli.build_parser()
    parser.add_argument("--engine", action="store_true",
                        help="Also build a plan of the last file (TensorRT, or TensorRT-RTX "
                             "where only that is installed).")  # fmt: skip
    parser.add_argument("--target", choices=TARGETS,
                        help="With --engine: the library to build with (default: tensorrt "
                             "when it is installed, else tensorrt-rtx).")  # fmt: skip
    args = parser.parse_args(argv)
    console = Console.from_args(export_cli.PROG, args)
    options = export_cli.options_from_args(args)
    target = _engine_target(args, options)
    options.check()
    result = export_model(options, log=None if args.quiet else console.line, warn=console.warn)
    if args.engine:
        _build_engine(result, options.batch, target, console, progress=not args.quiet)
    export_cli.report(result, console)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-export``."""
    return run_cli(export_cli.PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
