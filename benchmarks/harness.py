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
- **Memory**: host peak RSS and torch's CUDA peak (``m2det.benchmarks.memory``).
- **Accuracy**: COCO AP/AP50/AP75 from ``m2det.coco_eval.evaluate_coco`` at batch 1, the exact call
  ``m2det-eval`` makes, so both report the same AP for the same artifact and data.

Variants are made from a checkpoint (or seeded random weights when only speed is measured) by
``m2det.benchmarks.variants``; timing lives in ``m2det.benchmarks.timing``, the image pool in
``m2det.benchmarks.image_pool``, the machine record in ``m2det.benchmarks.environment``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m2det.benchmarks.environment import environment
from m2det.benchmarks.image_pool import POOL_IMAGE_SIZE, folder_pool, synthetic_pool
from m2det.benchmarks.memory import peak_memory
from m2det.benchmarks.timing import time_batches, time_paper
from m2det.benchmarks.variants import Variant
from m2det.engines.base import Runner
from m2det.errors import M2DetError

PROTOCOLS = ("standard", "paper")
ACCURACY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ----------------------------------------------------------------------------- settings
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
    #: OpenVINO: "latency" (one request) or "throughput" (multi-stream requests per batch).
    ov_mode: str = "latency"
    #: A checkout of the official M2Det code (``official`` variants), and where to compile its
    #: Cython soft-NMS (default: a temporary folder).
    official: Path | None = None
    work: Path | None = None

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


# ----------------------------------------------------------------------------- image pool


def make_pool(settings: BenchSettings) -> tuple[list[np.ndarray], str]:
    """(images, description): the evaluation folder's images when given, else synthetic ones."""
    if settings.images is not None:
        return folder_pool(settings.images, settings.pool), f"images of {settings.images}"
    pool = synthetic_pool(settings.pool)
    return pool, f"synthetic shapes images {POOL_IMAGE_SIZE}x{POOL_IMAGE_SIZE}"


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
    if variant.backend == "official":
        from m2det.benchmarks.official import OfficialRunner

        if settings.official is None:
            raise M2DetError("the official pipeline needs its checkout (--official DIR)")
        return OfficialRunner(settings.official, variant.artifact, nms, work=settings.work)
    kw: dict[str, Any] = {}
    if variant.backend in ("onnxruntime", "openvino") and settings.threads:
        kw["threads"] = settings.threads
    if variant.backend == "openvino":
        kw.update(backend="openvino", ov_precision=variant.ov_precision or "f32",
                  mode=settings.ov_mode)  # fmt: skip
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
    settings_of = getattr(runner, "settings", None)
    base = {"backend": variant.backend, "label": runner.name,
            "backend_settings": settings_of() if callable(settings_of) else None,
            "precision": runner.precision, "config": variant.config,
            "input_size": variant.input_size, "device": variant.device,
            "weights": variant.weights, "artifact": str(variant.artifact),
            "source": variant.source, "protocol": settings.protocol,
            "accuracy": metrics, **mem.to_dict()}  # fmt: skip
    return [{**base, **row} for row in rows]


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
        "side_by_side": side_by_side(rows),
    }  # fmt: skip


# ----------------------------------------------------------------------------- ratios
def side_by_side(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed ratios within this run: for each config and batch, every row's p50 total (and
    network) latency against the official pipeline's row and against ONNX Runtime INT8's, where
    those were measured (ratio > 1: faster than the reference). Empty without a reference."""
    out = []
    for row in rows:
        same = [r for r in rows if r["config"] == row["config"] and r["batch"] == row["batch"]
                and r["protocol"] == row["protocol"]]  # fmt: skip
        refs = {"official": [r for r in same if r["backend"] == "official"],
                "onnxruntime_int8": [r for r in same if r["backend"] == "onnxruntime"
                                     and r["precision"] == "int8"]}  # fmt: skip
        entry: dict[str, Any] = {"label": row["label"], "config": row["config"],
                                 "batch": row["batch"],
                                 "total_p50_ms": row["latency_ms"]["total"]["p50"],
                                 "network_p50_ms": row["latency_ms"]["network"]["p50"]}  # fmt: skip
        for name, ref in refs.items():
            if ref:
                lat = ref[0]["latency_ms"]
                entry[f"speedup_vs_{name}"] = _ratio(lat["total"]["p50"],
                                                     row["latency_ms"]["total"]["p50"])
                entry[f"network_speedup_vs_{name}"] = _ratio(lat["network"]["p50"],
                                                             row["latency_ms"]["network"]["p50"])
        if any(refs.values()):
            out.append(entry)
    return out


def _ratio(reference_ms: float, ms: float) -> float | None:
    return round(reference_ms / ms, 3) if ms > 0 else None


def format_side_by_side(results: dict[str, Any]) -> str:
    """The speed-up table of :func:`side_by_side` (empty string without a reference row)."""
    entries = results.get("side_by_side") or []
    if not entries:
        return ""
    head = ["variant", "config", "batch", "total p50 ms", "x vs official", "x vs ORT INT8",
            "network x vs official"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for e in entries:
        cells = [e["label"], e["config"], str(e["batch"]), _fmt(e["total_p50_ms"]),
                 _fmt(e.get("speedup_vs_official"), 2),
                 _fmt(e.get("speedup_vs_onnxruntime_int8"), 2),
                 _fmt(e.get("network_speedup_vs_official"), 2)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- table
def _fmt(v: float | None, digits: int = 1, spec: str = "f") -> str:
    return "-" if v is None else f"{v:.{digits}{spec}}"


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of the rows: backend, precision, size, batch, p50 latencies, FPS (end to
    end and network + NMS), peak host RSS, AP, AP50."""
    head = ["backend", "precision", "size", "batch", "weights", "pre p50 ms", "net p50 ms",
            "nms p50 ms", "total p50 ms", "FPS (img/s)", "FPS net+NMS", "peak RSS MB", "AP",
            "AP50"]
    clients = any("concurrency" in r for r in results["rows"])  # m2det-bench --triton
    if clients:
        head.insert(4, "clients")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results["rows"]:
        lat, acc = r["latency_ms"], r["accuracy"] or {}
        precision = r["precision"]
        if r["backend"] == "openvino":  # + the inference precision: int8-f32, fp32-auto(bf16)
            precision = r.get("label", "").removeprefix("openvino-") or precision
        cells = [r["backend"], precision, str(r["input_size"]), str(r["batch"]),
                 r["weights"], _fmt(lat["preprocess"]["p50"], 2), _fmt(lat["network"]["p50"]),
                 _fmt(lat["nms"]["p50"], 2), _fmt(lat["total"]["p50"]), _fmt(r["fps"], 2),
                 _fmt(r["fps_network_nms"], 2), _fmt(r["host_peak_rss_mb"], 0),
                 _fmt(acc.get("AP"), 3, "g"),
                 _fmt(acc.get("AP50"), 3, "g")]  # fmt: skip
        if clients:
            cells.insert(4, str(r.get("concurrency", 1)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
