"""CPU soft-NMS timing: ``m2det.nms`` against the original compiled ``cpu_soft_nms`` figures.

Run ``python -m m2det.benchmarks.nms_cpu [--repeats N] [--out PATH]``. Single-class cases time
``soft_nms`` on clustered boxes (jittered copies of a few objects, scores in (0.1, 1)) and on
uniformly placed small boxes (few overlaps, so nearly all are emitted when unlimited); the
full-image case times ``batched_nms`` on one image of 80 classes whose scores come from a softmax
over plausible logits. Each figure is the median of repeated runs; the JSON (machine, numpy
version, date, figures) goes to ``benchmarks/results/nms_cpu.json``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from m2det.errors import M2DetError
from m2det.io import atomic_write_json
from m2det.nms import NMSParams, batched_nms, get_nms_params, soft_nms

# The original Cython cpu_soft_nms (runs to completion, no keep cap) on N single-class boxes,
# milliseconds, as quoted in the issue for this machine class.
BASELINE_MS = {100: 0.3, 500: 2.3, 2000: 25.0, 5000: 126.0}
DEFAULT_OUT = Path(__file__).parent / "results" / "nms_cpu.json"


def clustered_boxes(n: int, rng: np.random.Generator, n_objects: int = 8,
                    spread: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """``n`` boxes [n,4] (normalized x1,y1,x2,y2) jittered around ``n_objects`` objects, plus
    scores [n] in (0.1, 1), higher for boxes closer to their object."""
    centers = rng.uniform(0.15, 0.85, (n_objects, 2))
    sizes = rng.uniform(0.05, 0.4, (n_objects, 2))
    obj = rng.integers(0, n_objects, n)
    jitter = rng.normal(0.0, spread, (n, 4))
    c = centers[obj] + jitter[:, :2] * sizes[obj]
    wh = sizes[obj] * np.exp(jitter[:, 2:])
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).clip(0.0, 1.0)
    closeness = np.exp(-np.square(jitter).sum(1) / (4 * spread**2))
    scores = 0.1 + 0.9 * closeness * rng.uniform(0.5, 1.0, n)
    return boxes.astype(np.float32), np.minimum(scores, 0.999).astype(np.float32)


def uniform_boxes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` boxes [n,4] placed uniformly (sides 0.01-0.1 of the image: few overlap), scores [n]
    in (0.1, 1): the sparse case where soft-NMS emits nearly every box."""
    xy = rng.uniform(0.0, 0.9, (n, 2))
    wh = rng.uniform(0.01, 0.1, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, rng.uniform(0.1, 1.0, n).astype(np.float32)


def image_case(rng: np.random.Generator, n_anchors: int = 12_810, n_classes: int = 80,
               n_objects: int = 8, near_fraction: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """One image as an SSD-style detector sees it: boxes [1,A,4] and softmax scores [1,A,C]
    (background column dropped). A = 12,810 is M2Det-320's prior count. ``n_objects`` objects of
    a few classes (some repeated); a ``near_fraction`` of the anchors regress onto an object
    (jittered box, logit of its class raised by a random strength), the rest see background."""
    obj_boxes, _ = clustered_boxes(n_objects, rng, n_objects=n_objects, spread=0.01)
    obj_class = rng.choice(rng.choice(n_classes, 4, replace=False), n_objects)
    near = rng.random(n_anchors) < near_fraction
    obj = rng.integers(0, n_objects, n_anchors)
    wh = (obj_boxes[:, 2:] - obj_boxes[:, :2])[obj]
    jitter = rng.normal(0.0, 0.12, (n_anchors, 4)) * np.concatenate([wh, wh], 1)
    random_boxes, _ = clustered_boxes(n_anchors, rng, n_objects=64, spread=0.5)
    boxes = np.where(near[:, None], (obj_boxes[obj] + jitter).clip(0, 1), random_boxes)
    logits = rng.normal(0.0, 1.0, (n_anchors, n_classes + 1))
    logits[:, 0] += 5.0  # background
    strength = rng.uniform(-1.0, 10.0, n_anchors) * np.exp(-np.abs(jitter).sum(1) / wh.sum(1))
    logits[near, 1 + obj_class[obj[near]]] += strength[near]
    logits -= logits.max(1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(1, keepdims=True)
    return boxes[None].astype(np.float32), prob[None, :, 1:].astype(np.float32)


def time_ms(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median, min) wall time of ``fn()`` in milliseconds over ``repeats`` runs after one
    warm-up (the min shows what a quiet machine gives when others share the cores)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def row(case: str, variant: str, n: int, kept: int, times: tuple[float, float],
        baseline: float | None) -> dict[str, Any]:
    med, best = times
    return {"case": case, "variant": variant, "candidates": n, "kept": kept, "median_ms": med,
            "min_ms": best, "baseline_ms": baseline,
            "speedup": None if baseline is None else baseline / med}


def single_class_rows(repeats: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    variants = {"official (keep 50)": get_nms_params("official"),
                "official, unlimited": get_nms_params("official", keep_per_class=0)}
    for layout, make in (("clustered", clustered_boxes), ("uniform", uniform_boxes)):
        for n, base in BASELINE_MS.items():
            boxes, scores = make(n, np.random.default_rng(seed + n))
            for name, params in variants.items():
                kept, _ = soft_nms(boxes, scores, params)
                times = time_ms(functools.partial(soft_nms, boxes, scores, params), repeats)
                rows.append(row(f"1 class, {n} {layout} boxes", name, n, len(kept), times, base))
    return rows


def image_rows(repeats: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    boxes, scores = image_case(np.random.default_rng(seed))
    for threshold in (0.1, 0.05):
        params: NMSParams = get_nms_params("official", score_threshold=threshold)
        n_cand = int((scores > np.float32(threshold)).sum())
        kept = int(batched_nms(boxes, scores, params).num[0])
        times = time_ms(functools.partial(batched_nms, boxes, scores, params), repeats)
        rows.append(row(f"image, 80 classes, score > {threshold}", "official (keep 50)", n_cand,
                        kept, times, None))
    return rows


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
            "python": platform.python_version(), "numpy": np.__version__}


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'case':<34} {'variant':<20} {'cand':>6} {'kept':>5} {'median ms':>9} "
            f"{'min ms':>8} {'orig ms':>8} {'ratio':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        base = f"{r['baseline_ms']:8.1f}" if r["baseline_ms"] else f"{'-':>8}"
        ratio = f"{r['speedup']:6.2f}x" if r["speedup"] else f"{'-':>7}"
        print(f"{r['case']:<34} {r['variant']:<20} {r['candidates']:>6} {r['kept']:>5} "
              f"{r['median_ms']:9.3f} {r['min_ms']:8.3f} {base} {ratio}")
    print("ratio = original Cython cpu_soft_nms ms (issue figures) / our median ms; > 1 is faster")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nms_cpu", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=21, help="timed runs per figure (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    args = ap.parse_args(argv)
    try:
        if args.repeats < 1:
            raise M2DetError("--repeats must be >= 1")
        rows = single_class_rows(args.repeats, args.seed) + image_rows(args.repeats, args.seed)
        print_table(rows)
        atomic_write_json(args.out, {
            "benchmark": "m2det.nms CPU soft-NMS", "date": datetime.datetime.now(
                datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "repeats": args.repeats, "seed": args.seed,
            "units": "milliseconds per call (median and min of the repeats)",
            "baseline": "original compiled Cython cpu_soft_nms, no keep cap (issue figures)",
            "results": rows})
        print(f"wrote {args.out}")
    except M2DetError as e:
        print(f"nms_cpu: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
