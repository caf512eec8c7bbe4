"""``m2det-bench``: latency (preprocess / network / NMS), FPS, memory and COCO AP of M2Det
artifacts through the runner protocol, as JSON, a table and FPS-vs-AP plots.

Artifacts: one ``--ckpt`` (torch; with ``--backends onnxruntime[,openvino][,tensorrt]`` also
exported to ONNX FP32/FP16/INT8, run by ONNX Runtime and OpenVINO, and built into plans), one
``--onnx`` file (``--backends onnxruntime,openvino``), one ``--engine`` plan or a ``--triton``
server; or ``--sweep 320,512,800``: the paper's VGG presets at each size, from ``--ckpt``'s weights
or from seeded random weights (speed only; said so in the output and the JSON). ``--official DIR``
adds the official M2Det pipeline (its code from that checkout) on the same weights and images, and
the results hold every row's speed-up against it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from m2det.benchmarks import harness, image_pool
from m2det.benchmarks.harness import BenchSettings
from m2det.benchmarks.variants import (
    BACKENDS,
    SWEEP_PRESETS,
    Variant,
    VariantPlan,
    checkpoint_at,
    checkpoint_weights,
    make_variants,
    random_checkpoint,
)
from m2det.cli import Console, make_parser, parse_device, run_cli
from m2det.contract import PRECISIONS
from m2det.errors import M2DetError
from m2det.export.calibration import read_calibration_images
from m2det.export.precision import PLACEMENTS, recipe

PROG = "m2det-bench"
NMS_CHOICES = ("official", "soft", "hard", "paper")


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: "1,8,32" -> (1, 8, 32)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers a,b,c; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip().lower() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Measure latency (preprocess, network, NMS), FPS, memory and COCO AP of "
                    "M2Det artifacts: a checkpoint (also exported to ONNX and built into TensorRT "
                    "plans with --backends), an ONNX file, a plan, or a --sweep of the paper's "
                    "VGG presets. Prints a table; --json and --plot write the results.")
    a = p.add_argument_group("artifact (default: the bundled m2det_tiny checkpoint)")
    one = a.add_mutually_exclusive_group()
    one.add_argument("--ckpt", type=Path, help="Checkpoint (.pth).")
    one.add_argument("--onnx", type=Path, help="An exported ONNX file (ONNX Runtime; "
                     "--backends onnxruntime,openvino).")
    one.add_argument("--engine", type=Path, help="A TensorRT plan (.plan or .engine).")
    one.add_argument("--triton", metavar="HOST:PORT", help="A Triton server serving an "
                     "m2det-triton repository (grpc://HOST:PORT for gRPC).")
    a.add_argument("--triton-model", default="m2det_net", help="The model --triton measures.")
    a.add_argument("--config", help="Preset of a checkpoint that records none, or of an ONNX "
                                    "file whose metadata was stripped.")
    a.add_argument("--sweep", type=int_list, metavar="S,S,...",
                   help="Input sizes of the VGG presets (320, 512, 800): --ckpt's weights at each "
                        "size, or random weights (speed only) without --ckpt.")  # fmt: skip
    a.add_argument("--backends", type=_names, default=("torch",), metavar="B,B",
                   help=f"Backends for a checkpoint or sweep: {', '.join(BACKENDS)}.")
    a.add_argument("--precisions", type=_names, default=None, metavar="P,P",
                   help=f"Precisions for a checkpoint or sweep: {', '.join(PRECISIONS)} "
                        "(default: fp32).")  # fmt: skip
    a.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N.")
    a.add_argument("--fp16", action="store_true", help="Shorthand for --precisions fp16.")
    a.add_argument("--calib", type=Path, metavar="DIR",
                   help="INT8 calibration images (default: --images, else synthetic shapes).")
    a.add_argument("--calib-count", type=int, default=16, metavar="N",
                   help="INT8 calibration images used.")
    a.add_argument("--calib-method", default="entropy", choices=("entropy", "max", "percentile"),
                   help="How INT8 activation ranges are chosen.")
    a.add_argument("--qdq-placement", default="auto", choices=("auto", *PLACEMENTS),
                   help="INT8 recipe (as m2det-export --qdq-placement); auto: onnxruntime on a "
                        "CPU, tensorrt when TensorRT or CUDA runs the file.")  # fmt: skip
    a.add_argument("--ov-precision", type=_names, default=("f32",), metavar="P,P",
                   help="OpenVINO inference precisions, one row each: f32, bf16, auto (OpenVINO's "
                        "choice: bf16 on CPUs with AVX512-BF16/AMX).")  # fmt: skip
    a.add_argument("--ov-mode", choices=("latency", "throughput"), default="latency",
                   help="OpenVINO: one request per call, or a batch spread over parallel "
                        "multi-stream requests.")  # fmt: skip
    a.add_argument("--official", type=Path, metavar="DIR",
                   help="A checkout of github.com/qijiezhao/M2Det: also time the official "
                        "pipeline (its FP32 PyTorch model and Cython soft-NMS; needs Cython) on "
                        "the same weights and images; ratios against it in the results.")
    a.add_argument("--work", type=Path, metavar="DIR",
                   help="Keep the exported files here (default: a temporary folder).")
    a.add_argument("--seed", type=int, default=0, help="Seed of random weights.")
    m = p.add_argument_group("measurement")
    m.add_argument("--protocol", choices=harness.PROTOCOLS, default="standard",
                   help="standard: mean and percentiles over --iters at each --batch; paper: "
                        "batch 1, (network + NMS) time summed over the --pool images divided by "
                        "their number.")
    m.add_argument("--batch", type=int_list, default=(1,), metavar="N,N", help="Batch sizes.")
    m.add_argument("--iters", type=int, default=50, help="Timed iterations per batch size.")
    m.add_argument("--warmup", type=int, default=5, help="Untimed iterations first.")
    m.add_argument("--pool", type=int, default=16,
                   help="Different images the iterations rotate through.")
    m.add_argument("--concurrency", type=int_list, default=None, metavar="N,N",
                   help="With --triton: concurrent clients, as perf_analyzer's concurrency mode "
                        "(default: 1).")  # fmt: skip
    m.add_argument("--threads", type=int,
                   help="CPU threads of torch, ONNX Runtime and OpenVINO.")
    m.add_argument("--nms", choices=NMS_CHOICES, default="official", help="NMS preset.")
    m.add_argument("--score-threshold", type=float, metavar="F",
                   help="Override the preset's score threshold.")
    e = p.add_argument_group("accuracy (COCO AP, as m2det-eval)")
    e.add_argument("--ann", type=Path, help="COCO-format annotation JSON.")
    e.add_argument("--images", type=Path, help="Folder of the annotated images.")
    e.add_argument("--limit", type=int, metavar="N", help="Evaluate the first N images by id only.")
    o = p.add_argument_group("plots")
    o.add_argument("--plot", type=Path, metavar="OUT.png",
                   help="Write the FPS-vs-AP plot (and .svg, and OUT_latency.png/.svg with the "
                        "latency breakdown).")
    return p


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    s = BenchSettings(batches=args.batch, iters=args.iters, warmup=args.warmup,
                      protocol=args.protocol, nms=args.nms, threads=args.threads, ann=args.ann,
                      images=args.images, limit=args.limit, pool=args.pool,
                      progress=not args.quiet, ov_mode=args.ov_mode, official=args.official,
                      nms_overrides={"score_threshold": args.score_threshold})  # fmt: skip
    s.check()
    return s


def _precisions(args: argparse.Namespace) -> tuple[str, ...]:
    if args.fp16 and args.precisions is not None:
        raise M2DetError("use --fp16 or --precisions, not both")
    if args.fp16:
        return ("fp16",)
    return args.precisions or ("fp32",)


def _artifact_variants(path: Path, args: argparse.Namespace,
                       settings: BenchSettings) -> list[Variant]:
    """The variants of an ``--onnx`` file (one per ``--backends`` onnxruntime/openvino and OpenVINO
    precision) or ``--engine`` plan (config read from the file)."""
    from m2det.engines.registry import ONNX_BACKENDS, load_runner

    onnx_backends = tuple(b for b in args.backends if b in ONNX_BACKENDS)
    if args.onnx is not None and args.backends != ("torch",) and onnx_backends == args.backends:
        backends: tuple[str | None, ...] = onnx_backends
    elif args.backends != ("torch",):
        raise M2DetError("--backends applies to checkpoints, and to ONNX files as "
                         "onnxruntime,openvino")  # fmt: skip
    else:
        backends = (None,)
    if args.sweep or args.precisions or args.fp16 or args.official:
        raise M2DetError("--sweep/--precisions/--fp16/--official apply to checkpoints: an ONNX "
                         "file or plan has one precision")  # fmt: skip
    variants = []
    for backend in backends:
        runner = load_runner(path, config=args.config, nms=settings.nms_params(),
                             device=args.device, backend=backend)  # fmt: skip
        for ov in args.ov_precision if backend == "openvino" else (None,):
            variants.append(Variant(path, runner.backend, runner.precision, runner.config.name,
                                    runner.input_size, "given", str(path), args.device, ov))
    return variants


def _calibration_images(args: argparse.Namespace, console: Console) -> list[Any]:
    if args.calib is not None:
        found = read_calibration_images(args.calib, args.calib_count)
        if found.skipped:
            console.warn(f"calibration folder {args.calib}: {found.skipped_line()}")
        return found.images
    if args.images is not None:
        return image_pool.folder_pool(args.images, args.calib_count)
    return image_pool.synthetic_pool(args.calib_count, seed=1)


def _checkpoints(args: argparse.Namespace, work: Path,
                 console: Console) -> tuple[list[tuple[Path, str]], list[str]]:
    """[(checkpoint, weights)] to make variants from, and notes for the results."""
    from m2det.checkpoint import read_checkpoint, resolve_config
    from m2det.engines.registry import default_checkpoint

    if args.sweep:
        bad = [s for s in args.sweep if s not in SWEEP_PRESETS]
        if bad:
            valid = ", ".join(str(s) for s in SWEEP_PRESETS)
            raise M2DetError(f"--sweep size {bad[0]} has no VGG preset; valid: {valid}")
        presets = [SWEEP_PRESETS[s] for s in args.sweep]
        if args.ckpt is None:
            console.info(f"--sweep without --ckpt: seeded random weights (seed {args.seed}), "
                         "speed only")  # fmt: skip
            return [(random_checkpoint(name, work / f"{name}_random.pth", args.seed),
                     "random") for name in presets], [f"random weights, seed {args.seed}"]
        weights = checkpoint_weights(args.ckpt)
        return [(checkpoint_at(args.ckpt, name, work / f"{name}.pth"), weights)
                for name in presets], [f"weights of {args.ckpt} at every size"]  # fmt: skip
    ckpt = args.ckpt or default_checkpoint()
    cfg = resolve_config(read_checkpoint(ckpt), args.config, str(ckpt))
    weights = checkpoint_weights(ckpt)
    return [(checkpoint_at(ckpt, cfg.name, work / f"{cfg.name}.pth"), weights)], []


def _bench(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    console = Console.from_args(PROG, args)
    parse_device(args.device)
    for flag, what in (("ckpt", "checkpoint"), ("onnx", "ONNX file"), ("engine", "plan")):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise M2DetError(f"{what} not found: {path}")
    if args.calib_count < 1:
        raise M2DetError(f"--calib-count must be >= 1, got {args.calib_count}")
    settings = settings_from_args(args)
    command = [PROG, *(sys.argv[1:] if argv is None else argv)]
    if args.triton is not None or args.concurrency is not None:
        from m2det.benchmarks.triton_load import run_triton_benchmark

        if args.triton is None:
            raise M2DetError("--concurrency applies to --triton")
        if (args.sweep or args.precisions or args.fp16 or args.backends != ("torch",)
                or args.official):  # fmt: skip
            raise M2DetError("--sweep/--backends/--precisions/--fp16/--official apply to "
                             "checkpoints")  # fmt: skip
        return _report(run_triton_benchmark(args.triton, settings, args.concurrency or (1,),
                                            command, args.triton_model), args, console)  # fmt: skip
    artifact = args.onnx or args.engine
    if artifact is not None:
        variants = _artifact_variants(artifact, args, settings)
        results = harness.run_benchmark(variants, settings, command, log=console.line)
        return _report(results, args, console)
    plan = VariantPlan(backends=args.backends, precisions=_precisions(args), device=args.device,
                       max_batch=max(settings.batches), calib_method=args.calib_method,
                       qdq_placement=args.qdq_placement, ov_precisions=args.ov_precision,
                       official=args.official)  # fmt: skip
    plan.check()
    with tempfile.TemporaryDirectory(prefix="m2det-bench-") as tmp:
        work = args.work or Path(tmp)
        settings = dataclasses.replace(settings, work=work)
        sources, notes = _checkpoints(args, work, console)
        if "int8" in plan.precisions and set(plan.backends) - {"torch"}:
            plan.calib_images = _calibration_images(args, console)
            notes.append(f"INT8: {args.calib_method} calibration on "
                         f"{len(plan.calib_images)} images, recipe "
                         f"{recipe(plan.placement)}")  # fmt: skip
        variants, skipped = [], []
        for ckpt, weights in sources:
            made, why = make_variants(ckpt, weights, plan, work, log=console.line)
            variants += made
            skipped += why
        for s in skipped:
            console.info(f"skipped {s['backend']} {s['precision']}: {s['reason']}")
        if not variants:
            raise M2DetError("no backend/precision combination can run here: "
                             + "; ".join(f"{s['backend']} {s['precision']}: {s['reason']}"
                                         for s in skipped))  # fmt: skip
        results = harness.run_benchmark(variants, settings, command, skipped, notes,
                                        log=console.line)  # fmt: skip
    return _report(results, args, console)


def _report(results: dict[str, Any], args: argparse.Namespace, console: Console) -> int:
    from m2det.benchmarks.plots import plot_all

    console.result(f"m2det-bench on {results['device']} ({results['settings']['protocol']} "
                   f"protocol, NMS {results['settings']['nms']}):")  # fmt: skip
    for note in results["notes"]:
        console.result(f"note: {note}")
    console.result(harness.format_table(results))
    ratios = harness.format_side_by_side(results)
    if ratios:
        console.result(f"\nspeed-up within this run (p50 latency ratios; {results['device']}, "
                       f"ISA {results['cpu_isa']['best']}):\n{ratios}")  # fmt: skip
    console.write_json(results)
    if args.json is not None and not console.json_to_stdout:
        console.result(f"wrote {args.json}")
    if args.plot is not None:
        for path in plot_all(results, args.plot):
            console.result(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-bench``."""
    return run_cli(PROG, _bench, argv)
