"""The GPU script's steps, in order, under one time budget (``benchmarks/gpu/run.sh`` runs this):

1. ``build``: the soft-NMS libraries for this GPU's architecture (sm_90 on an H200);
2. ``pytest_gpu``: ``pytest -m gpu`` on them;
3. ``fuzz``: >= 10,000 random cases, kernel against the C++ reference (``fuzz.py``);
4. ``candidates``: the calibrated seeded model per size on real images (``seeded_model.py``);
5. ``softnms_timing``: kernel against the CPU path on those outputs (``nms_timing.py``);
6. ``compute_floor``: network FLOPs over the measured FP16 matrix rate (``compute_floor.py``);
7. ``end_to_end``: ``FastPipeline`` at every size, batch 1 and 32 (``end_to_end.py``);
8. ``official_pipeline``: the official code's way on the same images and weights;
9. ``onnxruntime_cuda``: whether ONNX Runtime's CUDA provider is there (it is not carried).

Each step records its status and seconds in the report, which is rewritten after every step. A
step that fails is recorded (one line; the traceback with ``--debug``) and the others go on; a
step that would start past the deadline is recorded as skipped. ``--dry-run`` runs the same steps
on the CPU at the ``m2det_tiny`` size with stand-ins (see ``report.py``).

    python -m m2det.benchmarks.gpu.suite OUT_DIR [--dry-run] [--official DIR] [--images DIR]
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2det.cli import make_parser, run_cli
from m2det.errors import M2DetError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OFFICIAL = REPO / "gpu-carry" / "official-m2det"
SIZES = {320: "m2det320_vgg", 512: "m2det512_vgg", 800: "m2det800_vgg"}
DRY_SIZES = {160: "m2det_tiny"}
POOL = 8
#: step -> (cap seconds, seconds kept free for it while earlier steps run).
BUDGET = {"build": (150, 0), "pytest_gpu": (120, 0), "fuzz": (100, 0),
          "candidates": (60, 20), "softnms_timing": (75, 20), "compute_floor": (20, 5),
          "end_to_end": (150, 45), "official_pipeline": (100, 30), "onnxruntime_cuda": (10, 0)}


class Skip(Exception):
    """A step that cannot run here (recorded as skipped with this reason, not as a failure)."""


@dataclass
class Context:
    """What the steps share."""

    out_dir: Path
    dry_run: bool
    debug: bool
    deadline: float
    official: Path
    images_dir: Path | None
    fuzz_cases: int
    report: dict[str, Any]
    device: Any = None
    sizes: dict[int, str] = field(default_factory=dict)
    pool: list[Any] = field(default_factory=list)
    pool_paths: list[Path] = field(default_factory=list)
    models: dict[int, Any] = field(default_factory=dict)
    calibrations: dict[int, Any] = field(default_factory=dict)
    candidates: dict[int, Any] = field(default_factory=dict)
    selected: tuple[str, ...] = ()
    compile: bool = False
    step_deadline: float = 0.0

    def left(self) -> float:
        return self.step_deadline - time.monotonic()


# ------------------------------------------------------------------------------------ steps
def step_build(ctx: Context) -> None:
    import torch

    from m2det.benchmarks.gpu.build_step import build

    arch = None
    if not ctx.dry_run:
        major, minor = torch.cuda.get_device_capability()
        arch = f"{major}{minor}"
    name = "gpu-bench-dry-run" if ctx.dry_run else f"gpu-bench-sm{arch}"
    ctx.report["build"] = build(REPO / "plugins" / "build" / name, arch, ctx.left())


def step_pytest_gpu(ctx: Context) -> None:
    from m2det.benchmarks.gpu.build_step import run_gpu_tests

    result = run_gpu_tests(ctx.out_dir / "pytest-gpu.log", ctx.left())
    ctx.report["pytest_gpu"] = result
    if result["exit_code"] != 0:
        raise M2DetError(f"pytest -m gpu failed: {result['summary']}")


def step_fuzz(ctx: Context) -> None:
    from m2det.benchmarks.gpu import fuzz

    fuzz.require_reference()
    if ctx.dry_run:
        result = fuzz.run_fuzz(fuzz.numpy_candidate(), ctx.fuzz_cases, work=100_000,
                               full_every=0, deadline=time.monotonic() + ctx.left())
        ctx.report["dry_run_fuzz"] = {**result.to_dict(), "stand_in": (
            "dry run: the numpy specification (m2det.nms) checked against the C++ reference "
            "in place of the kernel")}
        return
    result = fuzz.run_fuzz(fuzz.cuda_candidate(), ctx.fuzz_cases,
                           deadline=time.monotonic() + ctx.left())
    kernel = ctx.report["softnms_kernel"]
    kernel.update(cases=result.cases, mismatches=result.mismatches, fuzz=result.to_dict())
    if result.mismatches:
        raise M2DetError(f"{result.mismatches} of {result.cases} fuzz cases differ from the "
                         "reference (first ones in softnms_kernel.fuzz.first_mismatches)")


def step_candidates(ctx: Context) -> None:
    import torch

    from m2det.benchmarks.gpu.seeded_model import calibrated_model
    from m2det.config import get_config
    from m2det.model import M2DetInference
    from m2det.preprocess import preprocess

    info = {}
    for size, name in ctx.sizes.items():
        cfg = get_config(name)
        x = torch.from_numpy(preprocess(ctx.pool, size)).to(ctx.device)
        model, calibration = calibrated_model(cfg, x[:4])
        with torch.inference_mode():
            net = M2DetInference(model).eval()
            outs = [net(x[i:i + 1]) for i in range(x.shape[0])]
        boxes = torch.cat([b for b, _ in outs]).float().contiguous()
        scores = torch.cat([s for _, s in outs]).float().contiguous()
        ctx.models[size], ctx.calibrations[size] = model, calibration
        ctx.candidates[size] = (boxes, scores)
        info[str(size)] = {"config": name, "anchors": int(boxes.shape[1]),
                           "calibration": calibration.to_dict()}
    ctx.report["candidates"] = {
        "weights": "seeded official-layout weights, conf head calibrated (seeded_model.py)",
        "images": _pool_description(ctx), "by_size": info}


def step_softnms_timing(ctx: Context) -> None:
    from m2det.benchmarks.gpu import nms_timing
    from m2det.nms import get_nms_params

    official = get_nms_params("official")
    params = {t: get_nms_params("official", score_threshold=t) for t in (0.1, 0.05)}
    rows: dict[int, dict[float, dict[str, Any]]] = {}
    for size, (boxes, scores) in ctx.candidates.items():
        rows[size] = {}
        for t, p in params.items():
            if ctx.left() < 0:
                raise M2DetError(f"out of time before size {size}, threshold {t}")
            rows[size][t] = nms_timing.time_size(boxes, scores, p, iters=3 if ctx.dry_run else 20,
                                                 cpu_repeats=1)
    summary = nms_timing.summarize(rows, official.score_threshold)
    summary["params"] = {"preset": "official", "thresholds": sorted(params),
                         **{k: v for k, v in official.attributes().items()
                            if k != "score_threshold"}}
    key = "dry_run_softnms_timing" if ctx.dry_run else "softnms_kernel"
    ctx.report.setdefault(key, {}).update(summary)


def step_compute_floor(ctx: Context) -> None:
    from m2det.benchmarks.gpu import compute_floor
    from m2det.benchmarks.gpu.report import ISSUE_FLOOR_MS
    from m2det.config import get_config

    tflops, how = compute_floor.matmul_tflops(ctx.device)
    configs = {s: get_config(n) for s, n in ctx.sizes.items()}
    floor = compute_floor.floor_ms(configs, tflops)
    detail = {"tflops": tflops, "rate_measured_as": how, "issue_figures_ms": ISSUE_FLOOR_MS,
              "gflops_per_image": {str(s): compute_floor.network_flops(c) / 1e9
                                   for s, c in configs.items()}}
    if ctx.dry_run:
        ctx.report["dry_run_compute_floor"] = {"ms": floor, **detail, "stand_in": how}
    else:
        ctx.report["compute_floor_ms"] = floor
        ctx.report["compute_floor"] = detail


def step_end_to_end(ctx: Context) -> None:
    from m2det.benchmarks.gpu import end_to_end
    from m2det.benchmarks.gpu.fast_pipeline import pin_images
    from m2det.nms import get_nms_params

    nms = get_nms_params("official")
    if ctx.device.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
    pool = pin_images(ctx.pool, ctx.device)
    batches = (1, 2) if ctx.dry_run else (1, 32)
    iters = {1: (3, 1), 2: (3, 1)} if ctx.dry_run else {1: (200, 20), 32: (20, 3)}
    floors = ctx.report.get("compute_floor_ms", {})
    rows = ctx.report.setdefault("end_to_end", [])
    for size in ctx.sizes:
        if ctx.left() < 0:
            raise M2DetError(f"out of time before size {size}")
        variants = {"best": end_to_end.VARIANTS["best"]} if ctx.dry_run else dict(
            end_to_end.VARIANTS)
        if ctx.compile and not ctx.dry_run:
            variants["fp16, torch.compile, graph"] = end_to_end.COMPILED
        rows += end_to_end.time_size(ctx.models[size], ctx.pool, pool, nms, ctx.device,
                                     batches, iters, floors.get(str(size)), variants)


def step_official_pipeline(ctx: Context) -> None:
    from m2det.benchmarks.gpu.official_code import build_cpu_nms, check_checkout, extension_path
    from m2det.benchmarks.gpu.official_pipeline import run_official

    if not ctx.official.is_dir():
        raise Skip(f"no official code at {ctx.official} (prepare it with python -m "
                   "m2det.benchmarks.gpu.official_code /path/to/M2Det)")
    root = check_checkout(ctx.official)
    if not ctx.pool_paths:
        raise Skip("the official pipeline reads image files, and no real images were found")
    try:
        built = f"built here: {build_cpu_nms(root).name}"
    except M2DetError as e:
        if not extension_path(root, abi3=True).is_file():
            raise
        built = f"prebuilt {extension_path(root, abi3=True).name} (building here failed: {e})"
    if ctx.dry_run:  # the official code has no tiny model: one 320 image, uncalibrated
        calibrations = {320: {"gain": 1.0, "offset": 0.0}}
    else:
        calibrations = {s: {"gain": c.gain, "offset": c.offset}
                        for s, c in ctx.calibrations.items()}
    iters, warmup = (1, 0) if ctx.dry_run else (30, 5)
    result = run_official(root, calibrations, ctx.pool_paths[:POOL], "cpu" if ctx.dry_run
                          else "cuda", iters, warmup, max(5.0, ctx.left()))
    rows = result["rows"]
    for row in rows:
        row["path"] = ("official qijiezhao/M2Det code: FP32 eager (autograd on, as its "
                       "image_forward runs the net), Detect, per-class Cython cpu_soft_nms")
        if ctx.dry_run:
            row["stand_in"] = "dry run: the official pipeline on the CPU, uncalibrated weights"
    key = "dry_run_official_pipeline" if ctx.dry_run else "official_pipeline"
    ctx.report[key] = rows
    ctx.report["official_code"] = {"root": str(root), "cpu_nms": built,
                                   "manifest": _manifest(root), "torch": result["torch"],
                                   "all_sizes_measured": result["complete"]}


def step_onnxruntime_cuda(ctx: Context) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        providers: list[str] = []
        version = None
    else:
        providers, version = list(ort.get_available_providers()), ort.__version__
    ctx.report["onnxruntime_cuda"] = {
        "onnxruntime": version, "providers": providers,
        "status": "not run",
        "reason": ("CUDAExecutionProvider is missing from this machine's onnxruntime, and "
                   "onnxruntime-gpu (about 244 MB for CPython 3.12) does not fit the 64 MiB "
                   "that can be carried" if "CUDAExecutionProvider" not in providers else
                   "the provider is present but this script has no ONNX Runtime step yet")}


STEPS: list[tuple[str, Callable[[Context], None], tuple[str, ...]]] = [
    ("build", step_build, ()),
    ("pytest_gpu", step_pytest_gpu, ("build",)),
    ("fuzz", step_fuzz, ("build",)),
    ("candidates", step_candidates, ()),
    ("softnms_timing", step_softnms_timing, ("build", "candidates")),
    ("compute_floor", step_compute_floor, ()),
    ("end_to_end", step_end_to_end, ("build", "candidates")),
    ("official_pipeline", step_official_pipeline, ("candidates",)),
    ("onnxruntime_cuda", step_onnxruntime_cuda, ()),
]


# ------------------------------------------------------------------------------------ helpers
def _manifest(root: Path) -> Any:
    import json

    path = root / "PREPARED.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _pool_description(ctx: Context) -> str:
    if ctx.pool_paths:
        return f"{len(ctx.pool)} images: " + ", ".join(p.name for p in ctx.pool_paths)
    return f"{len(ctx.pool)} synthetic shapes images (no real images were found)"


def load_pool(ctx: Context) -> None:
    """Real images: ``--images DIR``, else the official checkout's sample COCO images; else
    synthetic shapes images (recorded as such)."""
    from m2det.benchmarks.image_pool import synthetic_pool
    from m2det.preprocess import list_images, read_image

    if ctx.images_dir is not None:
        paths = list_images(ctx.images_dir)[:POOL]
    else:
        paths = sorted((ctx.official / "imgs").glob("COCO_*.jpg"))[:POOL]
    count = 4 if ctx.dry_run else POOL
    ctx.pool_paths = list(paths)[:count]
    ctx.pool = [read_image(p) for p in ctx.pool_paths] if paths else synthetic_pool(count)


def environment(ctx: Context, argv: Sequence[str]) -> None:
    import torch

    from m2det.benchmarks.environment import environment as env

    cuda = ctx.device.type == "cuda"
    ctx.report.update(gpu=torch.cuda.get_device_name() if cuda else None,
                      torch=torch.__version__, cuda=torch.version.cuda if cuda else None)
    try:
        ctx.report["environment"] = env(["benchmarks/gpu/run.sh", *argv],
                                        device="cuda" if cuda else "cpu")
    except Exception as e:  # the environment is a record; never a reason to stop
        ctx.report["environment"] = {"error": f"{type(e).__name__}: {e}"}
    ctx.report["environment_torch"] = {
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


def select_steps(spec: str | None) -> tuple[str, ...]:
    """Step names of ``--steps`` plus what they need, in run order (all when ``spec`` is None)."""
    names = [n for n, _, _ in STEPS]
    if spec is None:
        return tuple(names)
    wanted = {s.strip() for s in spec.split(",") if s.strip()}
    unknown = sorted(wanted - set(names))
    if unknown or not wanted:
        raise M2DetError(f"--steps: unknown step(s) {', '.join(unknown) or '(none given)'} "
                         f"(valid: {', '.join(names)})")
    needs = {n: deps for n, _, deps in STEPS}
    todo = list(wanted)
    while todo:
        for dep in needs[todo.pop()]:
            if dep not in wanted:
                wanted.add(dep)
                todo.append(dep)
    return tuple(n for n in names if n in wanted)


def run_steps(ctx: Context, write: Callable[[], None]) -> None:
    names = [name for name, _, _ in STEPS if name in ctx.selected]
    for i, (name, fn, needs) in enumerate(STEPS):
        if name not in ctx.selected:
            continue
        cap, _ = BUDGET[name]
        reserve = sum(BUDGET[n][1] for n in names[i + 1:])
        now = time.monotonic()
        ctx.step_deadline = min(now + cap, ctx.deadline - reserve)
        record: dict[str, Any] = {}
        failed = [n for n in needs if ctx.report["steps"].get(n, {}).get("status") != "ok"]
        if failed:
            record = {"status": "skipped", "reason": f"needs {', '.join(failed)}"}
        elif ctx.left() <= 0:
            record = {"status": "skipped", "reason": "out of time"}
        else:
            print(f"[gpu] {name} ...", file=sys.stderr, flush=True)
            try:
                fn(ctx)
                record = {"status": "ok"}
            except Skip as e:
                record = {"status": "skipped", "reason": str(e)}
            except Exception as e:  # recorded; the remaining steps still run
                record = {"status": "failed", "error": " ".join(f"{type(e).__name__}: {e}"
                                                                .split())}
                if ctx.debug:
                    traceback.print_exc()
            record["seconds"] = round(time.monotonic() - now, 2)
        ctx.report["steps"][name] = record
        print(f"[gpu] {name}: {record['status']} {record.get('seconds', '')} "
              f"{record.get('error', record.get('reason', ''))}", file=sys.stderr, flush=True)
        write()


def _main(argv: Sequence[str] | None) -> int:
    p = make_parser("gpu-bench", "Soft-NMS kernel correctness and speed, end-to-end FPS and the "
                    "official pipeline on one CUDA GPU (or --dry-run on the CPU).")
    p.add_argument("out_dir", type=Path, help="folder for gpu.json (gpu.dry-run.json) and logs")
    p.add_argument("--dry-run", action="store_true", help="CPU stand-ins, tiny sizes")
    p.add_argument("--official", type=Path, default=DEFAULT_OFFICIAL,
                   help="prepared copy of the official code (official_code.py)")
    p.add_argument("--images", type=Path, default=None, help="folder of real images")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="wall-clock budget counted from $M2DET_GPU_T0 (epoch seconds) if set")
    p.add_argument("--fuzz-cases", type=int, default=None, help="default 10000 (150 dry run)")
    p.add_argument("--steps", default=None, metavar="A,B",
                   help="run only these steps (and the steps they need); default: all of "
                   + ", ".join(n for n, _, _ in STEPS))
    p.add_argument("--compile", action="store_true",
                   help="also time a torch.compile variant at batch 1 (compiling takes minutes)")
    args = p.parse_args(argv)
    from m2det.benchmarks.gpu.report import evaluate_targets, new_report, write

    if args.budget_s <= 0:
        raise M2DetError("--budget-s must be > 0")
    if args.images is not None and not args.images.is_dir():
        raise M2DetError(f"--images: not a folder: {args.images}")
    cases = args.fuzz_cases if args.fuzz_cases is not None else (150 if args.dry_run else 10_000)
    if cases < 0:
        raise M2DetError("--fuzz-cases must be >= 0")
    selected = select_steps(args.steps)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise M2DetError("no CUDA device: run on a GPU machine, or pass --dry-run")
    if args.dry_run:  # tiny tensors: one thread (several spin against each other on few cores)
        torch.set_num_threads(1)
    started = float(os.environ.get("M2DET_GPU_T0") or time.time())
    deadline = time.monotonic() + args.budget_s - (time.time() - started)
    ctx = Context(args.out_dir, args.dry_run, args.debug, deadline, args.official, args.images,
                  cases, new_report(args.dry_run),
                  device=torch.device("cpu" if args.dry_run else "cuda"),
                  sizes=DRY_SIZES if args.dry_run else SIZES, selected=selected,
                  compile=args.compile)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    environment(ctx, list(argv or sys.argv[1:]))
    load_pool(ctx)

    def write_now() -> None:
        ctx.report["targets"] = evaluate_targets(ctx.report)
        ctx.report["elapsed_s"] = round(time.time() - started, 1)
        write(ctx.report, args.out_dir)

    write_now()
    run_steps(ctx, write_now)
    print(f"[gpu] wrote {args.out_dir}", file=sys.stderr)
    return 1 if any(r["status"] == "failed" for r in ctx.report["steps"].values()) else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("gpu-bench", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
