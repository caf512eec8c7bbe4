"""The measurement core of ``m2det-bench`` and ``m2det-demo``.

Everything is measured through the runner protocol (``m2det.engines.base.Runner``), one *variant*
(artifact + backend + precision + input size) at a time:

- **Latency**, split into preprocess (``m2det.preprocess.preprocess``: the resize of real BGR
  images), network and post-processing (NMS, from ``runner.last_timing``), with mean/p50/p90/p99
  over ``iters`` timed iterations after ``warmup`` untimed ones. Every iteration takes the next
  images of a pool of different images (never one cached buffer), and GPU runners are synchronized
  before the host clock is read. FPS at batch 1 and throughput (images/s) at larger batches are
  end-to-end (preprocess + network + NMS).
- ``protocol="paper"``: the M2Det paper's FPS: batch 1, every image of the set once, sum of
  network + NMS time divided by the number of images (preprocessing excluded).
- **Memory**: host peak RSS (``VmHWM``, reset per variant through ``/proc/self/clear_refs`` where
  Linux allows it, else the process-wide high-water mark) and, for torch on CUDA, the peak of
  ``torch.cuda.max_memory_allocated`` (null on CPU).
- **Accuracy**: COCO AP/AP50/AP75 from ``m2det.coco_eval.evaluate_coco`` at batch 1, the exact call
  ``m2det-eval`` makes, so both report the same AP for the same artifact and data.

Variants are made from a checkpoint (or seeded random weights when only speed is measured):
ONNX FP32/FP16/INT8 files by ``export`` (raw graph, AutoCast, ModelOpt Q/DQ) and TensorRT plans by
``m2det.engines.build`` where TensorRT is installed.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from m2det.engines.base import Runner, now_ms
from m2det.config import M2DetConfig, get_config
from m2det.errors import M2DetError
from m2det.preprocess import list_images, preprocess, read_image

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
PROTOCOLS = ("standard", "paper")
#: Sizes ``--sweep`` accepts: the paper's VGG presets.
SWEEP_PRESETS = {320: "m2det320_vgg", 512: "m2det512_vgg", 800: "m2det800_vgg"}
ACCURACY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
STAGES = ("preprocess", "network", "nms", "total")
#: Side of the synthetic shapes images of the default image pool (resized to S by preprocessing).
POOL_IMAGE_SIZE = 384


# ----------------------------------------------------------------------------- settings / variants
@dataclass(frozen=True)
class Variant:
    """One artifact to measure: ``backend`` runs ``artifact`` at ``precision``.

    ``weights``: "trained" (a real checkpoint: AP means something) or "random" (seeded random
    weights: speed only). ``source``: the checkpoint the artifact was made from."""

    artifact: Path
    backend: str
    precision: str
    config: str
    input_size: int
    weights: str
    source: str
    device: str = "cpu"

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} {self.input_size}"


@dataclass(frozen=True)
class BenchSettings:
    """How to measure. ``batches``: batch sizes timed per variant (``protocol="paper"``: batch 1
    over every pool image once). ``nms``: NMS preset (``m2det.nms.get_nms_params``). ``threads``:
    CPU threads for torch and ONNX Runtime alike (None: library defaults). ``ann``/``images``/
    ``limit``: COCO evaluation set (AP is skipped without ``ann``), ``eval_name`` its name in
    plots. ``pool``: number of different images the timed iterations rotate through."""

    batches: tuple[int, ...] = (1,)
    iters: int = 50
    warmup: int = 5
    protocol: str = "standard"
    nms: str = "official"
    threads: int | None = None
    ann: Path | None = None
    images: Path | None = None
    limit: int | None = None
    pool: int = 16
    progress: bool = True
    eval_name: str | None = None
    nms_overrides: dict[str, Any] = field(default_factory=dict)

    def nms_params(self) -> Any:
        """The ``NMSParams`` of preset ``nms`` with ``nms_overrides`` applied."""
        from m2det.nms import get_nms_params

        return get_nms_params(self.nms, **self.nms_overrides)

    @property
    def eval_label(self) -> str | None:
        """What the AP is measured on, for tables and plots (default: the annotation file)."""
        if self.ann is None:
            return None
        return self.eval_name or f"{Path(self.ann).name} ({self.images})"

    def check(self) -> None:
        """M2DetError for settings no measurement can use."""
        if self.protocol not in PROTOCOLS:
            raise M2DetError(f"unknown protocol {self.protocol!r}; valid: {', '.join(PROTOCOLS)}")
        if not self.batches or min(self.batches) < 1:
            raise M2DetError(f"batch sizes must be >= 1, got {list(self.batches)}")
        if self.iters < 1 or self.warmup < 0:
            raise M2DetError(f"need iters >= 1 and warmup >= 0 (got {self.iters}, {self.warmup})")
        if self.pool < 1:
            raise M2DetError(f"the image pool needs at least 1 image, got {self.pool}")
        if self.threads is not None and self.threads < 1:
            raise M2DetError(f"threads must be >= 1, got {self.threads}")
        if self.limit is not None and self.limit < 1:
            raise M2DetError(f"limit must be >= 1, got {self.limit}")
        if self.ann is not None and not Path(self.ann).is_file():
            raise M2DetError(f"annotation file not found: {self.ann}")
        if self.ann is not None and self.images is None:
            raise M2DetError("an annotation file needs its image folder (--images DIR)")
        if self.images is not None and not Path(self.images).is_dir():
            raise M2DetError(f"image folder not found: {self.images}")
        self.nms_params()


# ----------------------------------------------------------------------------- statistics
def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """mean/p50/p90/p99 (ms, linear-interpolated percentiles) of a non-empty sample list."""
    a = np.asarray(samples_ms, np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": round(float(a.mean()), 4), "p50": round(float(p50), 4),
            "p90": round(float(p90), 4), "p99": round(float(p99), 4)}  # fmt: skip


# ----------------------------------------------------------------------------- image pool
def synthetic_pool(count: int, seed: int = 0, size: int = POOL_IMAGE_SIZE) -> list[np.ndarray]:
    """``count`` different BGR uint8 [size,size,3] synthetic-shapes images (``m2det.shapes``)."""
    from m2det.shapes import render_image

    return [render_image(np.random.default_rng([seed, 7, i]), size)[0] for i in range(count)]


def folder_pool(folder: str | Path, count: int) -> list[np.ndarray]:
    """The first ``count`` readable images of ``folder`` (sorted by name), BGR uint8."""
    pool: list[np.ndarray] = []
    for path in list_images(folder):
        try:
            pool.append(read_image(path))
        except M2DetError:
            continue
        if len(pool) == count:
            break
    if not pool:
        raise M2DetError(f"no readable images in {folder}")
    return pool


def make_pool(settings: BenchSettings) -> tuple[list[np.ndarray], str]:
    """(images, description): the evaluation folder's images when given, else synthetic ones."""
    if settings.images is not None:
        return folder_pool(settings.images, settings.pool), f"images of {settings.images}"
    pool = synthetic_pool(settings.pool)
    return pool, f"synthetic shapes images {POOL_IMAGE_SIZE}x{POOL_IMAGE_SIZE}"


# ----------------------------------------------------------------------------- memory
def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (``VmHWM``: peak RSS, ``VmRSS``: current) in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_host_peak() -> bool:
    """Reset the kernel's RSS high-water mark of this process; False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_mb("VmHWM") is not None


def _ru_maxrss_mb() -> float:
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


@dataclass
class PeakMemory:
    """Host peak RSS (MB; ``host_start_mb``: the RSS when the block began, so the block's own
    growth is the difference) and device peak (MB, torch's CUDA allocator; None on CPU)."""

    host_mb: float | None = None
    host_start_mb: float | None = None
    host_scope: str = "variant"
    device_mb: float | None = None
    device_method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        def mb(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        return {"host_peak_rss_mb": mb(self.host_mb), "host_rss_start_mb": mb(self.host_start_mb),
                "host_peak_scope": self.host_scope, "device_peak_mb": mb(self.device_mb),
                "device_method": self.device_method}  # fmt: skip


@contextmanager
def peak_memory(device: str) -> Iterator[PeakMemory]:
    """Measure the peak host RSS (and torch CUDA allocation on ``device`` cuda) inside the block."""
    import torch

    mem = PeakMemory()
    scoped = _reset_host_peak()
    mem.host_start_mb = _proc_status_mb("VmRSS")
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield mem
    hwm = _proc_status_mb("VmHWM") if scoped else None
    mem.host_mb, mem.host_scope = (hwm, "variant") if hwm is not None else (_ru_maxrss_mb(),
                                                                            "process")
    if cuda:
        torch.cuda.synchronize()
        mem.device_mb = torch.cuda.max_memory_allocated() / 2**20
        mem.device_method = "torch.cuda.max_memory_allocated (torch allocations only)"


# ----------------------------------------------------------------------------- timing
def _batch_of(pool: Sequence[np.ndarray], start: int, batch: int) -> list[np.ndarray]:
    return [pool[(start + k) % len(pool)] for k in range(batch)]


def _timed_call(runner: Runner, images: list[np.ndarray]) -> tuple[float, float, float, float]:
    """Preprocess + run ``images``; (preprocess, network, nms, total) ms, device synchronized."""
    runner.synchronize()
    t0 = now_ms()
    x = preprocess(images, runner.input_size)
    t1 = now_ms()
    runner(x)
    runner.synchronize()
    t2 = now_ms()
    timing = runner.last_timing
    return t1 - t0, timing.network, timing.nms, t2 - t0


def time_batches(runner: Runner, pool: Sequence[np.ndarray], batch: int, iters: int, warmup: int,
                 desc: str = "", progress: bool = True) -> dict[str, Any]:
    """Latency of ``iters`` calls at ``batch`` after ``warmup`` untimed ones, images rotating
    through ``pool``. Returns ``latency_ms`` {stage: stats} (per call), ``fps`` (images/s end to
    end), ``fps_network_nms`` (images/s of network + NMS only)."""
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    bar = tqdm(total=warmup + iters, desc=desc, unit="it", file=sys.stderr, leave=False,
               disable=None if progress else True)  # fmt: skip
    for i in range(warmup + iters):
        measured = _timed_call(runner, _batch_of(pool, i * batch, batch))
        if i >= warmup:
            for stage, ms in zip(STAGES, measured, strict=True):
                samples[stage].append(ms)
        bar.update()
    bar.close()
    total = float(np.mean(samples["total"]))
    net_nms = float(np.mean(np.add(samples["network"], samples["nms"])))
    return {"latency_ms": {s: latency_stats(v) for s, v in samples.items()},
            "fps": round(1e3 * batch / total, 3),
            "fps_network_nms": round(1e3 * batch / net_nms, 3) if net_nms > 0 else None,
            "iters": iters, "warmup": warmup}  # fmt: skip


def time_paper(runner: Runner, pool: Sequence[np.ndarray], warmup: int, desc: str = "",
               progress: bool = True) -> dict[str, Any]:
    """The paper's FPS: batch 1, each pool image once after ``warmup`` untimed calls;
    ``fps`` = number of images / sum of (network + NMS) seconds."""
    for i in range(warmup):
        _timed_call(runner, [pool[i % len(pool)]])
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    for image in tqdm(pool, desc=desc, unit="img", file=sys.stderr, leave=False,
                      disable=None if progress else True):  # fmt: skip
        for stage, ms in zip(STAGES, _timed_call(runner, [image]), strict=True):
            samples[stage].append(ms)
    net_nms = float(np.sum(samples["network"]) + np.sum(samples["nms"]))
    fps = round(1e3 * len(pool) / net_nms, 3)
    return {"latency_ms": {s: latency_stats(v) for s, v in samples.items()}, "fps": fps,
            "fps_network_nms": fps, "iters": len(pool), "warmup": warmup}  # fmt: skip


# ----------------------------------------------------------------------------- accuracy
def accuracy(runner: Runner, ann: Path, images: Path, limit: int | None,
             progress: bool = True) -> dict[str, Any]:
    """COCO metrics of ``runner`` exactly as ``m2det-eval`` computes them (batch 1)."""
    from m2det.coco_eval import evaluate_coco

    metrics = evaluate_coco(runner, ann, images, config_labels=runner.config.labels, limit=limit,
                            batch=1, progress=progress)  # fmt: skip
    return {**{k: metrics[k] for k in ACCURACY_KEYS}, "num_images": metrics["num_images"],
            "num_detections": metrics["num_detections"]}  # fmt: skip


# ----------------------------------------------------------------------------- one variant
def open_runner(variant: Variant, settings: BenchSettings) -> Runner:
    """The runner for ``variant`` (registry dispatch by suffix), NMS and threads from settings."""
    from m2det.engines.registry import load_runner

    nms = settings.nms_params()
    kw: dict[str, Any] = {}
    if variant.backend == "onnxruntime" and settings.threads:
        kw["threads"] = settings.threads
    fp16 = variant.backend == "torch" and variant.precision == "fp16"
    return load_runner(variant.artifact, nms=nms, device=variant.device, fp16=fp16, **kw)


def bench_variant(variant: Variant, settings: BenchSettings,
                  pool: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Rows (one per batch size; one for ``protocol="paper"``) of ``variant``: latency, FPS,
    memory and, with ``settings.ann``, the COCO AP (shared by the variant's rows)."""
    runner = open_runner(variant, settings)
    low, high = runner.batch_range
    batches = (1,) if settings.protocol == "paper" else settings.batches
    rows = []
    with peak_memory(variant.device) as mem, runner:
        metrics = None
        if settings.ann is not None:
            assert settings.images is not None
            metrics = accuracy(runner, Path(settings.ann), Path(settings.images), settings.limit,
                               settings.progress)  # fmt: skip
        for batch in batches:
            if not low <= batch <= high:
                print(f"[bench] {variant.label}: batch {batch} outside the artifact's range "
                      f"{low}-{high}, skipped", file=sys.stderr)  # fmt: skip
                continue
            desc = f"{variant.label} b{batch}"
            if settings.protocol == "paper":
                timing = time_paper(runner, pool, settings.warmup, desc, settings.progress)
            else:
                timing = time_batches(runner, pool, batch, settings.iters, settings.warmup, desc,
                                      settings.progress)  # fmt: skip
            rows.append({"batch": batch, **timing})
    base = {"backend": variant.backend, "precision": runner.precision, "config": variant.config,
            "input_size": variant.input_size, "device": variant.device,
            "weights": variant.weights, "artifact": str(variant.artifact),
            "source": variant.source, "protocol": settings.protocol,
            "accuracy": metrics, **mem.to_dict()}  # fmt: skip
    return [{**base, **row} for row in rows]


# ----------------------------------------------------------------------------- making variants
@dataclass
class VariantPlan:
    """What to make from one checkpoint: backends x precisions at each config (all CPU/``device``).

    ``calibration``: preprocessed images [N,3,S,S] per input size S for INT8 (made on demand from
    ``calib_images`` BGR images)."""

    backends: tuple[str, ...] = ("torch",)
    precisions: tuple[str, ...] = ("fp32",)
    device: str = "cpu"
    max_batch: int = 1
    calib_images: list[np.ndarray] = field(default_factory=list)
    calib_method: str = "entropy"
    qdq_placement: str = "auto"

    @property
    def placement(self) -> str:
        """The INT8 recipe (``m2det.export.precision.PLACEMENTS``): "auto" is "onnxruntime" (ORT's own
        QDQ quantization, which its CPU provider fuses into integer convolutions) on a CPU, and
        "tensorrt" (ModelOpt's placement, what TensorRT fuses) on CUDA or for TensorRT."""
        if self.qdq_placement != "auto":
            return self.qdq_placement
        cpu = not self.device.startswith("cuda")
        return "onnxruntime" if cpu and "tensorrt" not in self.backends else "tensorrt"

    def check(self) -> None:
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise M2DetError(f"unknown backend {bad[0]!r}; valid: {', '.join(BACKENDS)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise M2DetError(f"unknown precision {bad[0]!r}; valid: {', '.join(PRECISIONS)}")
        if not self.backends or not self.precisions:
            raise M2DetError("need at least one backend and one precision")
        from m2det.export.precision import PLACEMENTS

        if self.qdq_placement not in ("auto", *PLACEMENTS):
            raise M2DetError(f"unknown INT8 recipe {self.qdq_placement!r}; valid: auto, "
                             f"{', '.join(PLACEMENTS)}")  # fmt: skip
        if "tensorrt" in self.backends:
            from m2det.engines.build import require_tensorrt

            require_tensorrt()


def supported(backend: str, precision: str, device: str) -> str | None:
    """None when ``backend`` can run ``precision`` on ``device``, else why not (one phrase)."""
    if backend == "torch" and precision == "int8":
        return "torch runs checkpoints in fp32 (fp16: CUDA autocast); INT8 is an ONNX/TensorRT path"
    if backend == "torch" and precision == "fp16" and not device.startswith("cuda"):
        return "torch fp16 (autocast) needs CUDA"
    if backend == "tensorrt" and not device.startswith("cuda"):
        return "TensorRT needs a CUDA device"
    return None


def random_checkpoint(config: str | M2DetConfig, path: Path, seed: int = 0) -> Path:
    """Write a checkpoint of ``config`` with seeded random weights (speed measurements only)."""
    import torch

    from m2det.checkpoint import save_model
    from m2det.model import build_model

    torch.manual_seed(seed)
    cfg = get_config(config) if isinstance(config, str) else config
    save_model(build_model(cfg).eval(), path, weights="random", seed=seed)
    return path


def checkpoint_at(ckpt: Path, config: str, path: Path) -> Path:
    """``ckpt``'s weights loaded into preset ``config`` (another input size of the same
    architecture), saved to ``path``; ``ckpt`` itself when it already is that config."""
    from m2det.checkpoint import check_and_load, read_checkpoint, save_model
    from m2det.model import M2Det

    state = read_checkpoint(ckpt)
    recorded = state.get("config")
    if isinstance(recorded, dict) and recorded.get("name") == config:
        return ckpt
    model = M2Det(get_config(config))
    check_and_load(model, state["model"], source=f"checkpoint {ckpt} loaded as {config}")
    save_model(model.eval(), path, source=str(ckpt), weights=checkpoint_weights(ckpt))
    return path


def checkpoint_weights(ckpt: Path) -> str:
    """"random" for a checkpoint :func:`random_checkpoint` wrote (it records so), else "given"."""
    from m2det.checkpoint import read_checkpoint

    return "random" if read_checkpoint(ckpt).get("weights") == "random" else "given"


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence ModelOpt's per-node INFO logs and the calibrators' prints and progress bars (shown
    anyway when the block fails)."""
    import contextlib
    import io
    import logging

    buf = io.StringIO()
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    except BaseException:
        sys.stderr.write(buf.getvalue())
        raise
    finally:
        logging.disable(logging.NOTSET)


def export_onnx(ckpt: Path, precisions: Sequence[str], out_dir: Path,
                calibration: np.ndarray | None, calib_method: str = "entropy",
                placement: str = "tensorrt", log: Any = print) -> dict[str, Path]:
    """``ckpt`` -> ``out_dir/<config>[_fp16|_int8].onnx`` (dynamic batch, raw graph) for each of
    ``precisions`` with the ``export`` package: FP32 by the raw export, FP16 by AutoCast and INT8
    by ModelOpt PTQ, both from the FP32 file. ``calibration``: [N,3,S,S] float32 images (INT8);
    ``placement``: the INT8 recipe (``m2det.export.precision.PLACEMENTS``: "onnxruntime" for ONNX
    Runtime on a CPU, "tensorrt" for TensorRT)."""
    import onnx

    from m2det.export import precision as prec
    from m2det.export.cli import load_inference_model
    from m2det.export.onnx_export import check_model, export_raw, save_model, set_metadata

    module = load_inference_model(ckpt, None)
    cfg = module.model.config
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = out_dir / f"{cfg.name}.onnx"
    log(f"[bench] exporting {cfg.name} FP32 ONNX -> {fp32}")
    model = export_raw(module, None)
    set_metadata(model, cfg, "fp32", "raw", None)
    check_model(model)
    save_model(model, fp32)
    paths = {"fp32": fp32}
    for precision in [p for p in precisions if p != "fp32"]:
        path = out_dir / f"{cfg.name}_{precision}.onnx"
        log(f"[bench] exporting {cfg.name} {precision.upper()} ONNX -> {path}")
        with _quiet():
            if precision == "fp16":
                model = prec.to_fp16(fp32)
            elif calibration is None:
                raise M2DetError("INT8 export needs calibration images")
            else:
                model = prec.to_int8(fp32, calibration, calib_method, placement)
        set_metadata(model, cfg, precision, "raw", None)
        onnx.checker.check_model(model)
        save_model(model, path)
        paths[precision] = path
    return paths


def build_plan(onnx_path: Path, max_batch: int) -> Path:
    """A TensorRT plan of ``onnx_path`` for batches 1..``max_batch`` (needs TensorRT and a GPU)."""
    from m2det.engines.build import build_engine

    return Path(build_engine(onnx_path, batch=(1, max_batch, max_batch)))


def make_variants(ckpt: Path, weights: str, plan: VariantPlan, work: Path,
                  log: Any = print) -> tuple[list[Variant], list[dict[str, str]]]:
    """Variants of ``ckpt`` for every supported backend x precision of ``plan`` (ONNX files and
    plans made in ``work``), and the skipped combinations ``{"backend", "precision", "config",
    "reason"}``."""
    from m2det.checkpoint import read_checkpoint, resolve_config

    cfg = resolve_config(read_checkpoint(ckpt), None, str(ckpt))
    wanted: list[tuple[str, str]] = []
    skipped: list[dict[str, str]] = []
    for backend in plan.backends:
        for precision in plan.precisions:
            why = supported(backend, precision, plan.device)
            if why is None:
                wanted.append((backend, precision))
            else:
                skipped.append({"backend": backend, "precision": precision, "config": cfg.name,
                                "reason": why})  # fmt: skip
    onnx_precisions = [p for p in plan.precisions if any(b != "torch" and q == p
                                                         for b, q in wanted)]  # fmt: skip
    onnx_files: dict[str, Path] = {}
    if onnx_precisions:
        calibration = _calibration(plan, cfg.input_size) if "int8" in onnx_precisions else None
        onnx_files = export_onnx(ckpt, onnx_precisions, work, calibration, plan.calib_method,
                                 plan.placement, log)  # fmt: skip
    variants = []
    for backend, precision in wanted:
        artifact = ckpt if backend == "torch" else onnx_files[precision]
        if backend == "tensorrt":
            log(f"[bench] building the TensorRT plan of {artifact.name} ...")
            artifact = build_plan(artifact, plan.max_batch)
        variants.append(Variant(artifact, backend, precision, cfg.name, cfg.input_size, weights,
                                str(ckpt), plan.device))  # fmt: skip
    return variants, skipped


def _calibration(plan: VariantPlan, size: int) -> np.ndarray:
    if not plan.calib_images:
        raise M2DetError("INT8 needs calibration images")
    return preprocess(plan.calib_images, size)


# ----------------------------------------------------------------------------- environment
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "m2det", "export", "engines", "benchmarks"],
                               capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that decide the figures (None: not installed)."""
    import importlib.metadata as md

    import cv2
    import torch

    import m2det

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    from m2det.export.precision import tensorrt_usable

    trt = None
    if tensorrt_usable():
        import tensorrt

        trt = str(tensorrt.__version__)
    return {"m2det": m2det.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__,
            "onnxruntime": version("onnxruntime") or version("onnxruntime-gpu"),
            "onnx": version("onnx"), "modelopt": version("nvidia-modelopt"),
            "opencv": cv2.__version__, "tensorrt": trt}  # fmt: skip


def environment(command: Sequence[str], device: str = "cpu",
                threads: int | None = None) -> dict[str, Any]:
    """Where and how the figures were measured: device, driver, versions, commit, command, date."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cpu = f"{_cpu_name()} ({os.cpu_count()} logical CPUs)"
    return {
        "device": gpu if device.startswith("cuda") and gpu else cpu,
        "cpu": cpu, "gpu": gpu, "driver": _nvidia_driver(),
        "cuda": torch.version.cuda if gpu else None,
        "threads": threads or torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "versions": library_versions(), "git_commit": _git_commit(),
        "command": " ".join(command),
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }  # fmt: skip


# ----------------------------------------------------------------------------- whole runs
def run_benchmark(variants: Sequence[Variant], settings: BenchSettings, command: Sequence[str],
                  skipped: Sequence[dict[str, str]] = (), notes: Sequence[str] = (),
                  log: Any = print) -> dict[str, Any]:
    """Measure every variant; the results document (``benchmarks/schema.json``)."""
    import torch

    settings.check()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    pool, pool_desc = make_pool(settings)
    device = "cuda" if any(v.device.startswith("cuda") for v in variants) else "cpu"
    env = environment(command, device, settings.threads)
    rows: list[dict[str, Any]] = []
    for variant in variants:
        log(f"[bench] {variant.label} ({variant.config}, {variant.weights} weights): "
            f"{variant.artifact}")  # fmt: skip
        rows.extend(bench_variant(variant, settings, pool))
    all_notes = list(notes)
    if any(v.weights == "random" for v in variants):
        all_notes.append("random weights: speed only (AP of random weights means nothing)")
    return {
        "schema": "m2det-bench/1", **env,
        "settings": {"protocol": settings.protocol, "batches": list(settings.batches),
                     "iters": settings.iters, "warmup": settings.warmup, "nms": settings.nms,
                     "nms_params": settings.nms_params().attributes(),
                     "pool": len(pool), "pool_images": pool_desc,
                     "ann": None if settings.ann is None else str(settings.ann),
                     "images": None if settings.images is None else str(settings.images),
                     "limit": settings.limit, "eval_set": settings.eval_label},
        "notes": all_notes, "skipped": list(skipped), "rows": rows,
    }  # fmt: skip


# ----------------------------------------------------------------------------- table
def _fmt(v: float | None, digits: int = 1, spec: str = "f") -> str:
    return "-" if v is None else f"{v:.{digits}{spec}}"


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of the rows: backend, precision, size, batch, p50 latencies, FPS (end to
    end and network + NMS), peak host RSS, AP, AP50."""
    head = ["backend", "precision", "size", "batch", "weights", "pre p50 ms", "net p50 ms",
            "nms p50 ms", "total p50 ms", "FPS (img/s)", "FPS net+NMS", "peak RSS MB", "AP",
            "AP50"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results["rows"]:
        lat, acc = r["latency_ms"], r["accuracy"] or {}
        cells = [r["backend"], r["precision"], str(r["input_size"]), str(r["batch"]),
                 r["weights"], _fmt(lat["preprocess"]["p50"], 2), _fmt(lat["network"]["p50"]),
                 _fmt(lat["nms"]["p50"], 2), _fmt(lat["total"]["p50"]), _fmt(r["fps"], 2),
                 _fmt(r["fps_network_nms"], 2), _fmt(r["host_peak_rss_mb"], 0),
                 _fmt(acc.get("AP"), 3, "g"),
                 _fmt(acc.get("AP50"), 3, "g")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
