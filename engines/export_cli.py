"""``m2det-export``: the export pipeline (``m2det.export``) and, with ``--engine``, a TensorRT
plan of the last file (``m2det.engines.builder``). The command composes two stages, so it lives
with the higher one; the export stage itself never imports the builder."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from m2det.cli import Console, run_cli
from m2det.errors import M2DetError
from m2det.export import cli as export_cli
from m2det.export.pipeline import ExportedFile, ExportResult, export_model, write_summary
from m2det.export.precision import tensorrt_usable


def _build_engine(result: ExportResult, batch: int | None, console: Console) -> None:
    """Hand the last file to the TensorRT builder when TensorRT is installed."""
    if not tensorrt_usable():
        console.warn("TensorRT is not installed: skipped the engine build (ONNX files written)")
        return
    from m2det.engines.builder import build_engine

    last = result.last()
    plan = Path(build_engine(last.path, batch=batch or (1, 1, 1)))
    result.files["engine"] = ExportedFile(str(plan), plan.stat().st_size, last.precision, "plan")
    write_summary(result)


def _main(argv: Sequence[str] | None) -> int:
    parser = export_cli.build_parser()
    parser.add_argument("--engine", action="store_true",
                        help="Also build a TensorRT plan of the last file (needs TensorRT).")
    args = parser.parse_args(argv)
    console = Console.from_args(export_cli.PROG, args)
    options = export_cli.options_from_args(args)
    if args.engine and options.int8 and options.qdq_placement == "onnxruntime":
        raise M2DetError("--qdq-placement onnxruntime writes uint8 activations, which TensorRT "
                         "does not take: use --qdq-placement tensorrt with --engine")
    options.check()
    result = export_model(options, log=None if args.quiet else console.line, warn=console.warn)
    if args.engine:
        _build_engine(result, options.batch, console)
    export_cli.report(result, console)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-export``."""
    return run_cli(export_cli.PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
