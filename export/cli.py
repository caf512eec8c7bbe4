"""The arguments of ``m2det-export`` -> :class:`m2det.export.pipeline.ExportOptions`.

The console script itself (``m2det.engines.export_cli``) adds ``--engine``, which hands the last
file to the TensorRT builder: a command that composes two stages lives with the higher one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from m2det.cli import Console, make_parser
from m2det.contract import PLUGIN_NAME
from m2det.errors import M2DetError
from m2det.export import precision
from m2det.export.calibration import CALIB_METHODS
from m2det.export.pipeline import DEFAULT_TOLERANCE, NMS_GRAPHS, ExportOptions, ExportResult
from m2det.nms import get_nms_params

PROG = "m2det-export"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Export a checkpoint to an ONNX graph (and FP16, INT8 and NMS graphs), "
                    "each checked for parity with PyTorch or FP32. The files and the summary "
                    "JSON are described in export/README.md; a failed run writes nothing.")
    p.add_argument("--ckpt", required=True,
                   help="Checkpoint (.pth), in this project's or the official layout.")
    p.add_argument("--config", help="Preset name, needed when the checkpoint records none.")
    p.add_argument("--out", default=".", help="Output folder.")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--batch", type=int, metavar="N", help="Fixed batch size N.")
    b.add_argument("--dynamic", action="store_true",
                   help="Dynamic batch dimension (the default).")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset of every file, 17 to 20 (default: 17, and 19 for ModelOpt's "
                        "INT8 file, the least it writes).")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="Largest accepted |ORT - PyTorch| / max(1, |PyTorch|) of boxes and "
                        "scores.")  # fmt: skip
    q = p.add_argument_group("precision")
    q.add_argument("--fp16", action="store_true", help="Also write the FP16 (AutoCast) graph.")
    q.add_argument("--int8", action="store_true", help="Also write the INT8 Q/DQ graph.")
    q.add_argument("--calib", metavar="DIR", help="Calibration images for --int8.")
    q.add_argument("--calib-method", choices=CALIB_METHODS, default="entropy",
                   help="How activation ranges are chosen.")
    q.add_argument("--calib-count", type=int, default=64, metavar="N",
                   help="Calibration images used: a seeded subset when DIR has more; fewer "
                        "usable images is an error.")  # fmt: skip
    q.add_argument("--seed", type=int, default=0, help="Seed of the calibration subset.")
    q.add_argument("--qdq-placement", choices=precision.PLACEMENTS, default="tensorrt",
                   help="INT8 recipe. tensorrt: ModelOpt, Q/DQ on the inputs of weighted ops; "
                        "cpu: also on Conv outputs, so ONNX Runtime can fuse QLinearConv; "
                        "onnxruntime: ONNX Runtime's quantize_static (uint8 activations) "
                        "instead of ModelOpt.")
    n = p.add_argument_group("NMS graph")
    n.add_argument("--nms-graph", choices=NMS_GRAPHS, default=None,
                   help="none (the default): raw graphs only; soft (official linear soft-NMS) or "
                        f"hard: plugin node {PLUGIN_NAME} (TensorRT); onnx-hard: ONNX "
                        "NonMaxSuppression.")
    n.add_argument("--nms", choices=NMS_GRAPHS, default=None, help=argparse.SUPPRESS)  # deprecated
    n.add_argument("--score-threshold", type=float, help="Override the preset's score threshold.")
    n.add_argument("--iou-threshold", type=float, help="Override the preset's IoU threshold.")
    n.add_argument("--sigma", type=float, help="Override the preset's soft-NMS sigma.")
    n.add_argument("--keep-per-class", type=int,
                   help="Override the detections kept per class.")
    n.add_argument("--max-candidates", type=int,
                   help="Override the candidates per class that enter NMS.")
    n.add_argument("--max-det", type=int, default=100, help="Detections per image, K.")
    return p


def nms_graph_of(args: argparse.Namespace) -> str:
    """``--nms-graph``, or the deprecated ``--nms`` (with a one-line warning on stderr)."""
    if args.nms is not None:
        print(f"{PROG}: warning: --nms is deprecated and will be removed in the next release; "
              "use --nms-graph", file=sys.stderr)  # fmt: skip
        if args.nms_graph is not None and args.nms_graph != args.nms:
            raise M2DetError(f"--nms {args.nms} contradicts --nms-graph {args.nms_graph}")
        return str(args.nms)
    return args.nms_graph or "none"


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    kind = nms_graph_of(args)
    nms = None
    if kind != "none":
        nms = get_nms_params("official" if kind == "soft" else "hard",
                             score_threshold=args.score_threshold,
                             iou_threshold=args.iou_threshold, sigma=args.sigma,
                             keep_per_class=args.keep_per_class,
                             max_candidates=args.max_candidates, max_detections=args.max_det)
    return ExportOptions(
        checkpoint=Path(args.ckpt), out=Path(args.out), config=args.config, batch=args.batch,
        opset=args.opset, tolerance=args.tolerance, fp16=args.fp16, int8=args.int8,
        calib=Path(args.calib) if args.calib else None, calib_method=args.calib_method,
        calib_count=args.calib_count, seed=args.seed, qdq_placement=args.qdq_placement,
        nms_graph=kind, nms=nms,
    )  # fmt: skip


def report(result: ExportResult, console: Console) -> None:
    """The closing lines on stdout: every file written, then the summary (or it as JSON)."""
    for info in result.files.values():
        console.result(f"wrote {info.path} ({info.bytes / 1e6:.1f} MB, {info.precision}, "
                       f"{info.graph})")
    console.result(f"wrote {result.summary_path}")
    console.write_json(result.to_json())

