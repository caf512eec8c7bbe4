"""``m2det-demo``: the whole toolkit on the bundled model in a few CPU minutes, no arguments needed.

1. the bundled ``m2det_tiny`` shapes checkpoint (or ``--ckpt``);
2. its synthetic val set regenerated (``m2det.shapes.generate`` with the seed and image size its
   JSON sidecar records) into a cache folder, plus a few train-split images for INT8 calibration;
3. FP32 / FP16 (AutoCast) / INT8 ONNX files exported with ``export`` (INT8: ONNX Runtime's
   recipe for the CPU rows, ModelOpt's TensorRT Q/DQ placement for TensorRT);
4. torch and ONNX Runtime runners measured by ``m2det.benchmarks.harness``: COCO AP on the
   val set and latency (preprocess / network / NMS) at batch 1 and 8; CUDA rows (torch, ONNX
   Runtime's CUDA provider) and TensorRT plans are added automatically where the machine has them;
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

from m2det.benchmarks import harness, image_pool
from m2det.benchmarks.cli import int_list
from m2det.benchmarks.harness import BenchSettings
from m2det.benchmarks.variants import VariantPlan, checkpoint_weights, make_variants
from m2det.cli import Console, make_parser, remove_on_failure, run_cli
from m2det.contract import PRECISIONS
from m2det.errors import M2DetError
from m2det.export.precision import recipe
from m2det.io import atomic_write_bytes, atomic_write_json

PROG = "m2det-demo"
#: The val set used when a checkpoint's sidecar records none (m2det-shapes defaults).
DEFAULT_VAL = {"seed": 0, "size": 160}
DEFAULT_VAL_IMAGES = 100


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "The whole toolkit on the bundled model in a few CPU minutes, no "
                    "arguments needed: its synthetic validation set regenerated, FP32, FP16 and "
                    "INT8 ONNX files exported, AP and latency of torch and ONNX Runtime measured "
                    "(CUDA and TensorRT rows where the machine has them), and the results "
                    "written as JSON, a Markdown table and plots.")
    p.add_argument("--out", type=Path, default=Path("m2det-demo-out"),
                   help="Results folder (JSON, table, plots).")
    p.add_argument("--work", type=Path,
                   help="Cache folder for the val set and the ONNX files (default: OUT/work).")
    p.add_argument("--ckpt", type=Path,
                   help="Checkpoint (default: the bundled m2det_tiny model).")
    p.add_argument("--val", type=int, metavar="N",
                   help="Val images evaluated (default: the checkpoint's recorded val set, else "
                        f"{DEFAULT_VAL_IMAGES}).")  # fmt: skip
    p.add_argument("--calib-count", type=int, default=32, metavar="N",
                   help="Train-split images for INT8 calibration.")
    p.add_argument("--batch", type=int_list, default=(1, 8), metavar="N,N",
                   help="Batch sizes timed.")
    p.add_argument("--iters", type=int, default=20, help="Timed iterations per batch size.")
    p.add_argument("--warmup", type=int, default=3, help="Untimed iterations first.")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of torch and ONNX Runtime (1 gives comparable figures on "
                        "a shared machine, where torch's OpenMP threads stall on busy cores).")
    return p


@dataclasses.dataclass(frozen=True)
class ValSpec:
    """The val set and NMS a checkpoint was evaluated with (its JSON sidecar ``<ckpt>.json``):
    ``m2det.shapes.generate(seed=, size=)``'s first ``images`` val images, NMS preset
    ``nms_preset`` with ``nms`` overrides; ``recorded``: the AP/AP50/AP75 the sidecar reports."""

    seed: int
    size: int
    images: int | None
    nms_preset: str
    nms: dict[str, Any]
    recorded: dict[str, float] | None
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
    """The sidecar's ``val_set`` ({seed, size, images}), ``nms_preset``/``nms`` and ``val``
    metrics; the ``m2det-shapes`` defaults when there is no sidecar."""
    sidecar = ckpt.with_suffix(".json")
    if not sidecar.is_file():
        return ValSpec(DEFAULT_VAL["seed"], DEFAULT_VAL["size"], None, "official", {}, None,
                       "m2det-shapes defaults (no sidecar)")  # fmt: skip
    try:
        meta = json.loads(sidecar.read_text())
        spec = meta["val_set"]
        val = meta.get("val")
        recorded = {k: float(val[k]) for k in ("AP", "AP50", "AP75")} if val else None
        return ValSpec(int(spec["seed"]), int(spec["size"]), spec.get("images"),
                       str(meta.get("nms_preset", "official")), dict(meta.get("nms") or {}),
                       recorded, str(sidecar))  # fmt: skip
    except (ValueError, KeyError, TypeError) as e:
        raise M2DetError(f"{sidecar}: no usable val_set record ({type(e).__name__}: {e})") from None


def regenerate(spec: ValSpec, folder: Path, val: int, train: int,
               console: Console | None = None) -> dict[str, Path]:
    """The shapes set of ``spec`` in ``folder`` (generated unless already there)."""
    from m2det.shapes import generate

    console = console or Console(PROG)
    paths = {"val_json": folder / "annotations" / "val.json", "val_images": folder / "val",
             "train_images": folder / "train"}  # fmt: skip
    if spec.matches(folder, val, train):
        console.info(f"val set cached in {folder}")
        return paths
    console.info(f"regenerating the shapes set (seed {spec.seed}, {spec.size} px, from "
                 f"{spec.source}): {val} val + {train} calibration images -> {folder}")
    generate(folder, train=train, val=val, seed=spec.seed, size=spec.size,
             progress=not console.quiet)
    atomic_write_json(folder / "demo_spec.json", {"seed": spec.seed, "size": spec.size,
                                                  "val": val, "train": train})  # fmt: skip
    return paths


def cuda_plan(cpu: VariantPlan) -> VariantPlan | None:
    """The CUDA rows where the machine has CUDA: torch (FP32, FP16 autocast), ONNX Runtime's CUDA
    provider where installed, TensorRT plans where TensorRT is (INT8 with TensorRT's Q/DQ
    placement); None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    import onnxruntime as ort

    from m2det.export.precision import tensorrt_usable

    backends = ["torch"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        backends.append("onnxruntime")
    if tensorrt_usable():
        backends.append("tensorrt")
    return dataclasses.replace(cpu, backends=tuple(backends), device="cuda")


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    """demo.json, demo_table.md, demo.png/.svg (FPS vs AP), demo_latency.png/.svg."""
    from m2det.benchmarks.plots import plot_all

    atomic_write_json(out / "demo.json", results)
    lines = [f"# m2det-demo results ({results['date']})", "",
             f"Device: {results['device']}; torch {results['versions']['torch']}, onnxruntime "
             f"{results['versions']['onnxruntime']}, threads {results['threads']}; "
             f"commit {results['git_commit']}.", "",
             f"Command: `{results['command']}`", "",
             "Latencies (p50, ms) are per call, i.e. per batch; FPS = images/s end to end "
             "(preprocess + network + NMS); FPS net+NMS = the paper's definition (no "
             "preprocessing); AP = COCO AP on the val set below.", "",
             harness.format_table(results), ""]  # fmt: skip
    lines += [f"- {note}" for note in results["notes"]]
    lines += [f"- skipped {s['backend']} {s['precision']}: {s['reason']}"
              for s in results["skipped"]]  # fmt: skip
    atomic_write_bytes(out / "demo_table.md", ("\n".join(lines) + "\n").encode())
    return [out / "demo.json", out / "demo_table.md", *plot_all(results, out / "demo.png")]


def _demo(argv: Sequence[str] | None) -> int:
    from m2det.checkpoint import read_checkpoint, resolve_config
    from m2det.engines.registry import default_checkpoint

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    console = Console.from_args(PROG, args)
    out: Path = args.out
    work: Path = args.work or out / "work"
    ckpt = args.ckpt or default_checkpoint()
    cfg = resolve_config(read_checkpoint(ckpt), None, str(ckpt))
    spec = read_val_spec(ckpt)
    val = args.val or spec.images or DEFAULT_VAL_IMAGES
    if val < 1 or args.calib_count < 1:
        raise M2DetError("--val and --calib-count must be >= 1")
    settings = BenchSettings(batches=args.batch, iters=args.iters, warmup=args.warmup,
                             threads=args.threads, limit=val, pool=16, progress=not args.quiet,
                             nms=spec.nms_preset, nms_overrides=spec.nms,
                             eval_name=f"synthetic shapes val ({val} images)")  # fmt: skip
    settings.check()  # every argument is checked before anything is generated
    with remove_on_failure(out, work, work / "shapes", work / "onnx", work / "onnx-cuda"):
        return _run_demo(args, console, ckpt, cfg, spec, val, settings, out, work)


def _run_demo(args: argparse.Namespace, console: Console, ckpt: Path, cfg: Any, spec: ValSpec,
              val: int, settings: BenchSettings, out: Path, work: Path) -> int:
    """The demo's steps once the arguments are known to be good (a failure removes what this run
    created: see :func:`_demo`)."""
    console.info(f"1/5 checkpoint {ckpt} (config {cfg.name}, {cfg.input_size} px input)")
    console.info("2/5 data")
    data = regenerate(spec, work / "shapes", val, args.calib_count, console)
    settings = dataclasses.replace(settings, ann=data["val_json"], images=data["val_images"])
    settings.check()
    console.info("3/5 exporting FP32 / FP16 / INT8 ONNX")
    plan = VariantPlan(backends=("torch", "onnxruntime"), precisions=PRECISIONS,
                       max_batch=max(args.batch),
                       calib_images=image_pool.folder_pool(data["train_images"], args.calib_count))
    weights = checkpoint_weights(ckpt)
    variants, skipped = make_variants(ckpt, weights, plan, work / "onnx", log=console.line)
    gpu = cuda_plan(plan)
    if gpu is not None:
        console.info(f"CUDA found: adding {', '.join(gpu.backends)} rows")
        more, _ = make_variants(ckpt, weights, gpu, work / "onnx-cuda", log=console.line)
        variants += more
    names = ", ".join(f"{v.backend} {v.precision} ({v.device})" for v in variants)
    console.info(f"4/5 measuring AP on {val} val images and latency at batch "
                 f"{', '.join(map(str, args.batch))}: {names}")  # fmt: skip
    notes = [f"AP on the synthetic shapes val set regenerated from {spec.source} (seed "
             f"{spec.seed}, {spec.size} px, {val} images), not COCO",
             f"INT8: entropy calibration on {args.calib_count} train-split images, recipe "
             f"{recipe(plan.placement)} (m2det-export --qdq-placement {plan.placement})"]
    if spec.recorded:
        notes.append("AP the checkpoint records for this val set (training run, torch): "
                     + ", ".join(f"{k} {v:.3g}" for k, v in spec.recorded.items()))
    command = [PROG, *args.argv]
    results = harness.run_benchmark(variants, settings, command, skipped, notes,
                                    log=console.line)  # fmt: skip
    console.info(f"5/5 results on {results['device']}:")
    console.result(harness.format_table(results))
    for note in results["notes"]:
        console.result(f"note: {note}")
    for path in write_outputs(results, out):
        console.result(f"wrote {path}")
    console.write_json(results)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-demo``."""
    return run_cli(PROG, _demo, argv)
