"""``m2det-demo``: the whole toolkit on the bundled model in a few CPU minutes, no arguments needed.

1. the bundled ``m2det_tiny`` shapes checkpoint (or ``--ckpt``);
2. its synthetic val set regenerated (``m2det.shapes.generate`` with the seed and image size its
   JSON sidecar records) into a cache folder, plus a few train-split images for INT8 calibration;
3. FP32 / FP16 (AutoCast) / INT8 (ModelOpt Q/DQ) ONNX files exported with ``export``;
4. torch and ONNX Runtime runners measured by ``benchmarks.harness``: COCO AP on the val set and
   latency (preprocess / network / NMS) at batch 1 and 8; CUDA rows (torch, ONNX Runtime's CUDA
   provider) and TensorRT plans are added automatically where the machine has them;
5. the results as JSON, a Markdown table and FPS-vs-AP / latency plots (PNG + SVG) in ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.cli import int_list
from benchmarks.harness import BenchSettings, Variant, VariantPlan
from engines.cli import make_parser, run_cli
from m2det.errors import M2DetError
from m2det.io import atomic_write_bytes, atomic_write_json

PROG = "m2det-demo"
#: The val set used when a checkpoint's sidecar records none (m2det-shapes defaults).
DEFAULT_VAL = {"seed": 0, "size": 160}


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, __doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("m2det-demo-out"),
                   help="results folder (JSON, table, plots)")
    p.add_argument("--work", type=Path, help="cache folder: val set, ONNX files (default OUT/work)")
    p.add_argument("--ckpt", type=Path, help="checkpoint (default: the bundled m2det_tiny model)")
    p.add_argument("--val", type=int, default=100, metavar="N", help="val images evaluated")
    p.add_argument("--calib-count", type=int, default=32, metavar="N",
                   help="train-split images for INT8 calibration")
    p.add_argument("--batch", type=int_list, default=(1, 8), metavar="N,N",
                   help="batch sizes timed")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per batch size")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--threads", type=int, help="CPU threads of torch and ONNX Runtime")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@dataclasses.dataclass(frozen=True)
class ValSpec:
    """How to regenerate a shapes val set: ``m2det.shapes.generate(seed=, size=)``'s val split."""

    seed: int
    size: int
    source: str

    def matches(self, folder: Path, val: int, train: int) -> bool:
        """True when ``folder`` already holds this set with at least ``val``/``train`` images."""
        stamp = folder / "demo_spec.json"
        if not stamp.is_file():
            return False
        recorded = json.loads(stamp.read_text())
        return bool(recorded.get("seed") == self.seed and recorded.get("size") == self.size
                    and recorded.get("val", 0) >= val and recorded.get("train", 0) >= train)


def read_val_spec(ckpt: Path) -> ValSpec:
    """The val set recorded in the checkpoint's JSON sidecar (``<ckpt>.json``): the mapping that
    has ``seed`` and ``size`` under ``val_set``/``data``/``dataset``/``shapes``; else the
    ``m2det-shapes`` defaults."""
    sidecar = ckpt.with_suffix(".json")
    if sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        for key in ("val_set", "data", "dataset", "shapes"):
            spec = meta.get(key) if isinstance(meta, dict) else None
            if isinstance(spec, dict) and "seed" in spec and "size" in spec:
                return ValSpec(int(spec["seed"]), int(spec["size"]), f"{sidecar.name}:{key}")
    return ValSpec(DEFAULT_VAL["seed"], DEFAULT_VAL["size"], "m2det-shapes defaults")


def regenerate(spec: ValSpec, folder: Path, val: int, train: int) -> dict[str, Path]:
    """The shapes set of ``spec`` in ``folder`` (generated unless already there)."""
    from m2det.shapes import generate

    paths = {"val_json": folder / "annotations" / "val.json", "val_images": folder / "val",
             "train_images": folder / "train"}  # fmt: skip
    if spec.matches(folder, val, train):
        print(f"[demo] val set cached in {folder}")
        return paths
    print(f"[demo] regenerating the shapes set (seed {spec.seed}, {spec.size} px, from "
          f"{spec.source}): {val} val + {train} calibration images -> {folder}")  # fmt: skip
    generate(folder, train=train, val=val, seed=spec.seed, size=spec.size, progress=True)
    atomic_write_json(folder / "demo_spec.json", {"seed": spec.seed, "size": spec.size,
                                                  "val": val, "train": train})  # fmt: skip
    return paths


def accelerated_variants(cpu: Sequence[Variant], max_batch: int) -> list[Variant]:
    """CUDA rows where the machine has CUDA: torch and ONNX Runtime's CUDA provider on the same
    artifacts, TensorRT plans of the ONNX files where TensorRT is installed."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = [dataclasses.replace(v, device="cuda") for v in cpu if v.backend == "torch"]
    out += [dataclasses.replace(v, device="cuda", precision="fp16") for v in cpu
            if v.backend == "torch" and v.precision == "fp32"]  # fmt: skip
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        out += [dataclasses.replace(v, device="cuda") for v in cpu if v.backend == "onnxruntime"]
    from export.precision import tensorrt_usable

    if tensorrt_usable():
        for v in cpu:
            if v.backend == "onnxruntime":
                print(f"[demo] building the TensorRT plan of {v.artifact.name} ...")
                plan = harness.build_plan(v.artifact, max_batch)
                out.append(dataclasses.replace(v, artifact=plan, backend="tensorrt",
                                               device="cuda"))  # fmt: skip
    return out


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    """demo.json, demo_table.md, demo.png/.svg (FPS vs AP), demo_latency.png/.svg."""
    from benchmarks.plots import plot_all

    atomic_write_json(out / "demo.json", results)
    lines = [f"# m2det-demo results ({results['date']})", "",
             f"Device: {results['device']}; torch {results['versions']['torch']}, onnxruntime "
             f"{results['versions']['onnxruntime']}, threads {results['threads']}; "
             f"commit {results['git_commit']}.", "",
             f"Command: `{results['command']}`", "",
             harness.format_table(results), ""]  # fmt: skip
    lines += [f"- {note}" for note in results["notes"]]
    lines += [f"- skipped {s['backend']} {s['precision']}: {s['reason']}"
              for s in results["skipped"]]  # fmt: skip
    atomic_write_bytes(out / "demo_table.md", ("\n".join(lines) + "\n").encode())
    return [out / "demo.json", out / "demo_table.md", *plot_all(results, out / "demo.png")]


def _demo(argv: Sequence[str] | None) -> int:
    from engines.registry import default_checkpoint
    from m2det.checkpoint import read_checkpoint, resolve_config

    args = build_parser().parse_args(argv)
    if args.val < 1 or args.calib_count < 1:
        raise M2DetError("--val and --calib-count must be >= 1")
    out: Path = args.out
    work: Path = args.work or out / "work"
    ckpt = args.ckpt or default_checkpoint()
    cfg = resolve_config(read_checkpoint(ckpt), None, str(ckpt))
    print(f"[demo] 1/5 checkpoint {ckpt} (config {cfg.name}, {cfg.input_size} px input)")
    print("[demo] 2/5 data")
    data = regenerate(read_val_spec(ckpt), work / "shapes", args.val, args.calib_count)
    settings = BenchSettings(batches=args.batch, iters=args.iters, warmup=args.warmup,
                             threads=args.threads, ann=data["val_json"],
                             images=data["val_images"], limit=args.val, pool=16,
                             progress=not args.quiet,
                             eval_name=f"synthetic shapes val ({args.val} images)")  # fmt: skip
    settings.check()
    print("[demo] 3/5 exporting FP32 / FP16 / INT8 ONNX")
    plan = VariantPlan(backends=("torch", "onnxruntime"), precisions=harness.PRECISIONS,
                       max_batch=max(args.batch),
                       calib_images=harness.folder_pool(data["train_images"], args.calib_count))
    variants, skipped = harness.make_variants(ckpt, harness.checkpoint_weights(ckpt), plan,
                                              work / "onnx")  # fmt: skip
    variants += accelerated_variants(variants, max(args.batch))
    names = ", ".join(f"{v.backend} {v.precision} ({v.device})" for v in variants)
    print(f"[demo] 4/5 measuring AP on {args.val} val images and latency at batch "
          f"{', '.join(map(str, args.batch))}: {names}")  # fmt: skip
    command = [PROG, *(sys.argv[1:] if argv is None else argv)]
    results = harness.run_benchmark(variants, settings, command, skipped,
                                    notes=[f"AP on the regenerated synthetic shapes val set "
                                           f"({args.val} images), not COCO"])  # fmt: skip
    print(f"[demo] 5/5 results on {results['device']}:")
    print(harness.format_table(results))
    for path in write_outputs(results, out):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-demo``."""
    return run_cli(PROG, _demo, argv)
