"""The command-line options that choose what runs an ONNX file, shared by ``m2det-detect`` and
``m2det-eval``: ``--backend``, ``--ov-precision``, ``--ov-mode``, ``--threads``."""

from __future__ import annotations

import argparse
from typing import Any

from m2det.errors import M2DetError

#: ``--ov-mode``: ``auto`` = throughput for folders and evaluation, latency for one image/video.
OV_MODE_CHOICES = ("auto", "latency", "throughput")


def add_backend_args(group: Any) -> None:
    """Add the options to ``group`` (an argparse parser or argument group)."""
    from m2det.engines.openvino_runner import OV_PRECISIONS
    from m2det.engines.registry import ONNX_BACKENDS

    group.add_argument("--backend", choices=ONNX_BACKENDS, default=None,
                       help="What runs --onnx (default onnxruntime); openvino needs "
                            "pip install 'm2det-deploy[openvino]'.")  # fmt: skip
    group.add_argument("--ov-precision", choices=OV_PRECISIONS, default="f32",
                       help="OpenVINO's inference precision for what the file leaves in float: "
                            "f32 (= ONNX Runtime's results), bf16, or auto (OpenVINO's choice: "
                            "bf16 on CPUs with bf16 instructions).")  # fmt: skip
    group.add_argument("--ov-mode", choices=OV_MODE_CHOICES, default="auto",
                       help="OpenVINO: latency (one request) or throughput (parallel "
                            "multi-stream requests); auto: throughput for folders and "
                            "evaluation.")  # fmt: skip
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads of ONNX Runtime / OpenVINO / torch (default: all).")


def backend_kwargs(args: argparse.Namespace, many: bool) -> dict[str, Any]:
    """``load_runner`` keywords for the parsed options; ``many``: the command runs a folder or a
    dataset (``--ov-mode auto`` then means throughput). Checks the combination first."""
    if args.threads is not None and args.threads < 1:
        raise M2DetError(f"--threads must be >= 1, got {args.threads}")
    if args.backend is not None and getattr(args, "onnx", None) is None:
        raise M2DetError(f"--backend {args.backend} runs an ONNX file: pass --onnx FILE")
    openvino = args.backend == "openvino"
    if not openvino and (args.ov_precision != "f32" or args.ov_mode != "auto"):
        raise M2DetError("--ov-precision/--ov-mode apply to --backend openvino")
    if args.threads is not None and not args.onnx:
        import torch

        torch.set_num_threads(args.threads)
    kw: dict[str, Any] = {}
    if args.backend is not None:
        kw["backend"] = args.backend
    if args.onnx is not None and args.threads is not None:
        kw["threads"] = args.threads
    if openvino:
        kw["ov_precision"] = args.ov_precision
        mode = args.ov_mode
        kw["mode"] = ("throughput" if many else "latency") if mode == "auto" else mode
    return kw
