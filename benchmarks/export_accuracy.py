"""Proof for the export stage: COCO AP of the FP32 / FP16 / INT8 ONNX files (and the PyTorch
checkpoint) on the synthetic-shapes val set, and ONNX Runtime CPU latency FP32 vs INT8 of the
full-size ``m2det320_vgg`` (random weights: speed does not depend on them).

Both parts run the files through the same runner and COCO evaluation as ``m2det-eval --onnx``.
Targets: FP16 within 0.1 AP point of FP32, INT8 within 1.0 AP point; INT8 >= 1.5x faster than
FP32 on the CPU. Results: ``benchmarks/results/export_accuracy.json`` (+ a table on stdout).

    python -m m2det.benchmarks.export_accuracy [--ckpt m2det/assets/m2det_tiny_shapes.pth]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import m2det
from m2det.coco_eval import evaluate_coco
from m2det.config import get_config
from m2det.contract import INPUT
from m2det.engines.base import Runner
from m2det.engines.onnx_runner import OnnxRunner
from m2det.engines.registry import BUNDLED_CHECKPOINT
from m2det.engines.torch_runner import TorchRunner
from m2det.export.ort_session import ort_session
from m2det.export.parity import random_images
from m2det.export.pipeline import ExportOptions, ExportResult, export_model
from m2det.nms import get_nms_params

RESULTS = Path(__file__).parent / "results" / "export_accuracy.json"
AP_TARGETS = {"fp16": 0.1, "int8": 1.0}  # max |AP - AP_fp32| in AP points (0-100 scale)
SPEED_TARGET = 1.5  # INT8 / FP32 throughput on the CPU


def _export(ckpt: Path, out: Path, **options: Any) -> ExportResult:
    """The export pipeline of ``m2det-export`` (``options``: ExportOptions fields)."""
    return export_model(ExportOptions(checkpoint=ckpt, out=out, **options))


def _shapes(folder: Path, calib: int, val: int, seed: int) -> dict[str, Path]:
    from m2det.shapes import generate

    return generate(folder, train=calib, val=val, seed=seed, size=160)


def accuracy(ckpt: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """AP of torch / fp32 / fp16 / int8 on the shapes val split (calibration: the train split)."""
    data = _shapes(work / "shapes", args.calib_count, args.val, args.seed)
    calib = {"calib": data["train_images"], "calib_method": args.calib_method,
             "calib_count": args.calib_count}
    summary = _export(ckpt, work / "tiny", fp16=True, int8=True, **calib)
    files = {k: str(summary.path(k)) for k in ("fp32", "fp16", "int8")}
    ort = _export(ckpt, work / "tiny_ort", int8=True, qdq_placement="onnxruntime", **calib)
    files["int8_onnxruntime"] = str(ort.path("int8"))
    nms = get_nms_params(args.nms)
    runners: dict[str, Runner] = {"torch": TorchRunner(ckpt, nms)}
    runners.update({k: OnnxRunner(path, nms, threads=args.threads) for k, path in files.items()})
    rows: dict[str, Any] = {}
    for key, runner in runners.items():
        with runner:
            t0 = time.perf_counter()
            m = evaluate_coco(runner, data["val_json"], data["val_images"],
                              config_labels=runner.config.labels, progress=False)  # fmt: skip
        rows[key] = {"AP": 100 * m["AP"], "AP50": 100 * m["AP50"], "AP75": 100 * m["AP75"],
                     "num_detections": m["num_detections"],
                     "eval_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        print(f"  {key:5s} AP {rows[key]['AP']:.2f}  AP50 {rows[key]['AP50']:.2f}", flush=True)
    for key in ("fp16", "int8", "int8_onnxruntime"):
        limit = AP_TARGETS[key.split("_")[0]]
        delta = rows[key]["AP"] - rows["fp32"]["AP"]
        rows[key].update({"delta_AP_vs_fp32": round(delta, 3), "target_abs_delta": limit,
                          "meets_target": abs(delta) <= limit})  # fmt: skip
    return {"checkpoint": str(ckpt), "config": summary.config, "nms_preset": args.nms,
            "val_images": args.val, "shapes_seed": args.seed,
            "calibration": summary.calibration, "parity": summary.parity,
            "file_bytes": {k: v.bytes for k, v in summary.files.items()},
            "ap_points": rows}  # fmt: skip


def _latency(path: str, size: int, threads: int | None, iters: int,
             warmup: int) -> dict[str, float]:
    # speed as ORT deploys the file: its full default optimizations (the `cpu` placement's
    # QLinearConv fusions need WeightBiasQuantization, which accuracy runs turn off)
    sess = ort_session(path, threads, disabled_optimizers=())
    x = random_images(1, size, 0)
    for _ in range(warmup):
        sess.run(None, {INPUT: x})
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, {INPUT: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": round(statistics.median(times), 2),
            "mean_ms": round(statistics.fmean(times), 2), "min_ms": round(min(times), 2),
            "iters": iters}  # fmt: skip


def latency(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """ORT CPU latency (batch 1) of the FP32 raw graph of ``args.latency_config`` and of its INT8
    files from every recipe of ``m2det.export.precision.PLACEMENTS``."""
    import torch

    from m2det.checkpoint import save_model as save_checkpoint
    from m2det.model import build_model

    cfg = get_config(args.latency_config)
    torch.manual_seed(0)
    ckpt = work / f"{cfg.name}_random.pth"
    save_checkpoint(build_model(cfg), ckpt)
    calib = _shapes(work / "calib320", 8, 0, args.seed)["train_images"]
    exports = {placement: _export(ckpt, work / f"big_{placement}", batch=1, int8=True,
                                  calib=calib, calib_method="max", calib_count=8,
                                  qdq_placement=placement)
               for placement in ("tensorrt", "cpu", "onnxruntime")}  # fmt: skip
    ckpt.unlink()
    summary = exports["tensorrt"]
    files = {"fp32": str(summary.path("fp32")),
             **{f"int8_{k}": str(r.path("int8")) for k, r in exports.items()}}
    rows: dict[str, list[dict[str, float]]] = {}
    # interleave the measurements so every file sees the same machine load
    for rnd in range(args.rounds):
        for key, path in files.items():
            r = _latency(path, cfg.input_size, args.threads, args.iters, args.warmup)
            rows.setdefault(key, []).append(r)
            print(f"  round {rnd} {key}: median {r['median_ms']:.1f} ms", flush=True)
    best = {k: min(v, key=lambda r: r["median_ms"]) for k, v in rows.items()}
    speedups = {k: round(best["fp32"]["median_ms"] / best[k]["median_ms"], 3)
                for k in files if k != "fp32"}  # fmt: skip
    speedup = max(speedups.values())
    return {"config": cfg.name, "weights": "random (speed does not depend on the values)",
            "batch": 1, "threads": args.threads or "onnxruntime default",
            "graph_optimization": "ORT_ENABLE_ALL", "rounds": rows,
            "best_median_ms": {k: v["median_ms"] for k, v in best.items()},
            "int8_speedup": speedups, "target_speedup": SPEED_TARGET,
            "meets_target": speedup >= SPEED_TARGET,
            "file_bytes": {k: Path(p).stat().st_size for k, p in files.items()},
            "calibration": summary.calibration}  # fmt: skip


def _machine() -> dict[str, Any]:
    import onnxruntime

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg_1min_at_start": load,
            "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "m2det": m2det.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m m2det.benchmarks.export_accuracy",
                                description=__doc__)
    p.add_argument("--ckpt", type=Path, default=BUNDLED_CHECKPOINT,
                   help="m2det_tiny shapes checkpoint (default: the bundled one)")
    p.add_argument("--val", type=int, default=200, help="val images generated (default 200)")
    p.add_argument("--seed", type=int, default=20261122, help="shapes generator seed")
    p.add_argument("--calib-count", type=int, default=64)
    p.add_argument("--calib-method", default="entropy", choices=("entropy", "max", "percentile"))
    p.add_argument("--nms", default="official", help="NMS preset of the evaluation")
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    p.add_argument("--latency-config", default="m2det320_vgg")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--note", default="", help="free text recorded in the results (e.g. weights)")
    args = p.parse_args(argv)
    result: dict[str, Any] = {"machine": _machine(), **({"note": args.note} if args.note else {})}
    with tempfile.TemporaryDirectory(prefix="m2det-export-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_accuracy:
            if not args.ckpt.is_file():
                raise SystemExit(f"checkpoint not found: {args.ckpt} (pass --ckpt)")
            print(f"accuracy: {args.ckpt} on {args.val} shapes val images", flush=True)
            result["accuracy"] = accuracy(args.ckpt, work, args)
        if not args.skip_latency:
            print(f"latency: {args.latency_config} FP32 vs INT8, ORT CPU", flush=True)
            result["latency"] = latency(work, args)
    from m2det.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1)[:4000])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
