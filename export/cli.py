"""``m2det-export``: checkpoint -> raw ONNX graph (+ FP16, INT8, NMS graphs), parity-checked.

Files written to ``--out`` (``<c>`` = config name, ``_b<N>`` added for a fixed batch):

=============================  ==============================================================
``<c>.onnx``                   FP32 raw graph (``images`` -> ``boxes``, ``scores``)
``<c>_fp16.onnx``              ``--fp16``: AutoCast mixed precision (post-processing FP32)
``<c>_int8.onnx``              ``--int8``: explicit Q/DQ (post-processing unquantized)
``<c>[_fp16|_int8]_nms.onnx``  ``--nms soft|hard``: + ``M2Det_SoftNMS_TRT`` plugin node
``<c>[...]_onnxnms.onnx``      ``--nms onnx-hard``: + standard ONNX hard NMS (runs in ORT)
``<c>_export.json``            summary: files, sizes, parity, calibration, timings
=============================  ==============================================================
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

import m2det
from m2det.export import nms_graph, precision
from m2det.export.calibration import CALIB_METHODS, load_calibration_images
from m2det.export.onnx_export import (
    check_model,
    compare_onnx,
    compare_with_torch,
    export_raw,
    random_images,
    save_model,
    set_metadata,
)
from m2det.checkpoint import check_and_load, read_checkpoint, resolve_config
from m2det.cli import make_parser, run_cli
from m2det.config import M2DetConfig
from m2det.errors import M2DetError
from m2det.io import atomic_write_json
from m2det.model import M2Det, M2DetInference
from m2det.nms import NMSParams, get_nms_params

PROG = "m2det-export"
NMS_CHOICES = ("none", "soft", "hard", "onnx-hard")
#: Default max |difference| of boxes and scores between ORT and PyTorch (FP32 raw graph).
DEFAULT_TOLERANCE = 1e-4
#: Images compared for the FP16/INT8 parity figures (calibration images for INT8).
PARITY_IMAGES = 4


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, __doc__.splitlines()[0], argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint (.pth, project or official layout)")
    p.add_argument("--config", help="preset name (needed when the checkpoint records none)")
    p.add_argument("--out", default=".", help="output folder (default: .)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--batch", type=int, metavar="N", help="fixed batch size N")
    b.add_argument("--dynamic", action="store_true", help="dynamic batch dimension (default)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset of the FP32 graph (>= 17)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="max |ORT - PyTorch| / max(1, |PyTorch|) of boxes and scores "
                        f"(default {DEFAULT_TOLERANCE})")
    q = p.add_argument_group("precision")
    q.add_argument("--fp16", action="store_true", help="also write the FP16 (AutoCast) graph")
    q.add_argument("--int8", action="store_true", help="also write the INT8 Q/DQ graph")
    q.add_argument("--calib", metavar="DIR", help="calibration images for --int8")
    q.add_argument("--calib-method", choices=CALIB_METHODS, default="entropy")
    q.add_argument("--calib-count", type=int, default=64, metavar="N",
                   help="calibration images used (a seeded subset when DIR has more; default 64)")
    q.add_argument("--seed", type=int, default=0, help="seed of the calibration subset")
    q.add_argument("--qdq-placement", choices=precision.PLACEMENTS, default="tensorrt",
                   help="tensorrt: ModelOpt's placement (Q/DQ on inputs of weighted ops); cpu: "
                        "also on Conv outputs, so ONNX Runtime can fuse QLinearConv; "
                        "onnxruntime: ONNX Runtime's quantize_static (uint8 activations) "
                        "instead of ModelOpt")
    n = p.add_argument_group("NMS graph")
    n.add_argument("--nms", choices=NMS_CHOICES, default="none",
                   help="none: raw graphs only; soft (official linear soft-NMS) / hard: plugin "
                        "node M2Det_SoftNMS_TRT (TensorRT); onnx-hard: ONNX NonMaxSuppression")
    n.add_argument("--score-threshold", type=float)
    n.add_argument("--iou-threshold", type=float)
    n.add_argument("--sigma", type=float)
    n.add_argument("--keep-per-class", type=int)
    n.add_argument("--max-candidates", type=int)
    n.add_argument("--max-det", type=int, default=100, help="K detections per image (default 100)")
    p.add_argument("--engine", action="store_true",
                   help="also build a TensorRT plan of the last file (needs TensorRT)")
    p.add_argument("--version", action="version", version=f"%(prog)s {m2det.__version__}")
    return p


@dataclass
class Summary:
    """What the run wrote and measured (saved as ``<config>_export.json``)."""

    config: str
    checkpoint: str
    batch: int | str
    opset: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    nms: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


class _Step:
    """Progress line per slow step: ``[export] <what> ...`` then ``done (Xs)``; timings recorded."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, key: str, what: str, fn: Callable[[], Any]) -> Any:
        print(f"[export] {what} ...", end="", flush=True)
        t0 = time.perf_counter()
        result = fn()
        self.timings[key] = round(time.perf_counter() - t0, 3)
        print(f" done ({self.timings[key]:.1f} s)", flush=True)
        return result


def load_inference_model(ckpt: str | Path, config: str | None) -> M2DetInference:
    """Checkpoint (+ preset name when it records none) -> M2DetInference in eval mode."""
    state = read_checkpoint(ckpt)
    cfg = resolve_config(state, config, str(ckpt))
    model = M2Det(cfg)
    check_and_load(model, state["model"], source=f"checkpoint {ckpt} (config {cfg.name})")
    return M2DetInference(model.eval()).eval()


def nms_params(args: argparse.Namespace) -> NMSParams | None:
    if args.nms == "none":
        return None
    preset = "official" if args.nms == "soft" else "hard"
    return get_nms_params(preset, score_threshold=args.score_threshold,
                          iou_threshold=args.iou_threshold, sigma=args.sigma,
                          keep_per_class=args.keep_per_class, max_candidates=args.max_candidates,
                          max_detections=args.max_det)  # fmt: skip


def _check_args(args: argparse.Namespace) -> None:
    if args.batch is not None and args.batch < 1:
        raise M2DetError(f"--batch must be >= 1, got {args.batch}")
    if args.opset < 17:
        raise M2DetError(f"--opset must be >= 17, got {args.opset}")
    if args.int8 and not args.calib:
        raise M2DetError("--int8 needs --calib DIR (calibration images)")
    if args.calib and not args.int8:
        raise M2DetError("--calib is only used with --int8")
    if args.engine and args.int8 and args.qdq_placement == "onnxruntime":
        raise M2DetError("--qdq-placement onnxruntime writes uint8 activations, which TensorRT "
                         "does not take: use --qdq-placement tensorrt with --engine")
    if args.tolerance <= 0:
        raise M2DetError(f"--tolerance must be > 0, got {args.tolerance}")


def _writable_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise M2DetError(f"cannot create output folder {out}: {e.strerror or e}") from None
    probe = out / f".m2det-export-{time.time_ns()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise M2DetError(f"output folder {out} is not writable: {e.strerror or e}") from None
    return out


def run(args: argparse.Namespace) -> Summary:
    """The export pipeline for parsed arguments; returns the summary (already written)."""
    _check_args(args)
    params = nms_params(args)
    out = _writable_dir(args.out)
    step = _Step({})
    module = step("load", f"loading {args.ckpt}",
                  lambda: load_inference_model(args.ckpt, args.config))
    cfg: M2DetConfig = module.model.config
    calib = None
    if args.int8:  # read the images first: a bad folder should fail before minutes of work
        calib = step("calib_load", f"reading calibration images from {args.calib}",
                     lambda: load_calibration_images(args.calib, cfg.input_size,
                                                     args.calib_count, args.seed))  # fmt: skip
    batch = args.batch
    stem = cfg.name + (f"_b{batch}" if batch else "")
    summary = Summary(cfg.name, str(args.ckpt), batch or "dynamic", args.opset,
                      timings_s=step.timings, versions=_versions())
    written: dict[str, onnx.ModelProto] = {}

    def write(key: str, model: onnx.ModelProto, prec: str, graph: str,
              extra: dict[str, Any] | None = None) -> Path:
        set_metadata(model, cfg, prec, graph, batch, extra)
        check_model(model)
        path = out / f"{stem}{'' if key == 'fp32' else '_' + key}.onnx"
        size = save_model(model, path)
        summary.files[key] = {"path": str(path), "bytes": size, "precision": prec, "graph": graph}
        written[key] = model
        return path

    raw = step("export", f"exporting {cfg.name} (opset {args.opset}, batch {batch or 'dynamic'})",
               lambda: export_raw(module, batch, args.opset))  # fmt: skip
    fp32_path = write("fp32", raw, "fp32", "raw")
    batches = [batch] if batch else [1, 3]
    parity = step("parity", "ORT vs PyTorch parity",
                  lambda: compare_with_torch(fp32_path, module, batches))
    summary.parity["fp32_vs_torch"] = {**parity.to_dict(), "tolerance": args.tolerance}
    print(f"[export] parity fp32 vs torch: {parity.line()}")
    if parity.worst > args.tolerance:
        fp32_path.unlink()  # a file that failed its parity check is not left behind
        raise M2DetError(f"ONNX Runtime output differs from PyTorch by {parity.worst:.3g} > "
                         f"tolerance {args.tolerance:g} ({parity.line()})")  # fmt: skip

    probe = [random_images(batch or 1, cfg.input_size, 100 + i) for i in range(PARITY_IMAGES)]
    if args.fp16:
        fp16 = step("fp16", "FP16 mixed precision (ModelOpt AutoCast)",
                    lambda: precision.to_fp16(fp32_path))
        p16 = compare_onnx(write("fp16", fp16, "fp16", "raw"), fp32_path, probe)
        summary.parity["fp16_vs_fp32"] = p16.to_dict()
        print(f"[export] parity fp16 vs fp32: {p16.line()}")
    if args.int8:
        assert calib is not None
        i8 = step("int8", f"INT8 PTQ ({args.calib_method}, {len(calib)} images; ModelOpt)",
                  lambda: precision.to_int8(fp32_path, calib, args.calib_method,
                                            args.qdq_placement))  # fmt: skip
        q, dq = precision.count_qdq(i8)
        summary.calibration = {"folder": str(args.calib), "method": args.calib_method,
                               "images": len(calib), "seed": args.seed,
                               "qdq_placement": args.qdq_placement, "quantize_linear": q,
                               "dequantize_linear": dq}  # fmt: skip
        n = batch or 1
        real = [calib[i:i + n] for i in range(0, n * PARITY_IMAGES, n) if i + n <= len(calib)]
        real = real or probe
        p8 = compare_onnx(write("int8", i8, "int8", "raw"), fp32_path, real)
        summary.parity["int8_vs_fp32"] = {**p8.to_dict(), "inputs": "calibration images"}
        print(f"[export] parity int8 vs fp32 (calibration images): {p8.line()}")

    if params is not None:
        summary.nms = {"kind": args.nms, **params.attributes()}
        onnx_nms = args.nms == "onnx-hard"
        add = nms_graph.add_onnx_hard_nms if onnx_nms else nms_graph.add_plugin_nms
        graph, suffix = ("nms-onnx", "onnxnms") if onnx_nms else ("nms-plugin", "nms")
        for key in [k for k in ("fp32", "fp16", "int8") if k in written]:
            model = add(written[key], params)
            write(suffix if key == "fp32" else f"{key}_{suffix}", model, key, graph,
                  {"nms": params.attributes()})

    last = Path(list(summary.files.values())[-1]["path"])
    summary_path = out / f"{stem}_export.json"
    if args.engine:
        _build_engine(last, batch, summary)
    atomic_write_json(summary_path, _as_json(summary))
    for info in summary.files.values():
        print(f"wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB, {info['precision']}, "
              f"{info['graph']})")
    print(f"wrote {summary_path}")
    return summary


def _build_engine(onnx_path: Path, batch: int | None, summary: Summary) -> None:
    """Hand the last file to the TensorRT builder (``m2det.engines.build``) when TensorRT is installed."""
    if not precision.tensorrt_usable():
        print("[export] TensorRT is not installed: skipped the engine build (ONNX files written)")
        return
    build = importlib.import_module("m2det.engines.build")  # the one sanctioned export -> engines call
    plan = build.build_engine(onnx_path, batch=batch or (1, 1, 1))
    summary.files["engine"] = {"path": str(plan), "bytes": Path(plan).stat().st_size,
                               "precision": summary.files[list(summary.files)[-1]]["precision"],
                               "graph": "plan"}  # fmt: skip


def _versions() -> dict[str, str]:
    import modelopt
    import onnxruntime
    import onnxslim

    return {"m2det": m2det.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxslim": onnxslim.__version__,
            "modelopt": modelopt.__version__}  # fmt: skip


def _as_json(summary: Summary) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(summary)


def _main(argv: Sequence[str] | None) -> int:
    run(build_parser().parse_args(argv))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-export``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
