"""CPU post-processing speed, side by side with the official M2Det code, in one run.

  python -m m2det.benchmarks.nms_cpu --official PATH [--threads N] [--out FILE]

PATH is the user's own checkout of qijiezhao/M2Det (nothing of it ships with this package): its
Cython ``cpu_soft_nms`` is compiled in a temporary folder (needs Cython and a C compiler), as
released and with the "+1" pixel convention removed (benchmarks/official_nms.py). Every figure
times ours and the official code interleaved (call after call, alternating the order) on the
same inputs; a ratio is the official median time over ours (> 1: ours is faster).

1. One class (``soft_nms``): 100 / 500 / 2,000 / 5,000 candidates, clustered (jittered copies of a
   few objects) and uniform (small scattered boxes, nearly all emitted), in pixels of a 512 image;
   keep 50 per class (what the official pipeline keeps: it runs to completion, then slices) and
   run to completion. Ours must keep the same boxes with the same scores as the "+1"-removed build
   (the order may differ only among exactly tied scores).
2. Whole post-processing of one image (decode, threshold, soft-NMS, 80 classes): M2Det-320 / 512
   / 800 outputs (benchmarks/detector_outputs.py) through the official ``Detect`` + pixel scaling +
   ``nms_process`` against ours (``m2det.postprocess.decode_nms`` + scaling), on one thread and on
   ``--threads``. The kept detections are compared on the official decoded boxes.
3. Batch 32 (M2Det-320): ours at 1, 2, 4, ... threads (images per second).

Without ``--official`` only our figures are measured. The JSON (machine, versions, command, every
figure, the targets and whether they hold) goes to ``--out``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2det import postprocess
from m2det.benchmarks.detector_outputs import detector_outputs
from m2det.benchmarks.environment import environment
from m2det.benchmarks.official_nms import OfficialCode, load_official, official_image
from m2det.cli import make_parser, run_cli
from m2det.detections import Detections
from m2det.errors import M2DetError
from m2det.io import atomic_write_json
from m2det.nms import NMSParams, batched_nms, get_nms_params, soft_nms

PROG = "python -m m2det.benchmarks.nms_cpu"
DEFAULT_OUT = Path(__file__).parent / "results" / "nms_cpu.json"
SIZES = (100, 500, 2000, 5000)
IMAGE_SIZES = (320, 512, 800)
PIXELS = 512.0  # single-class boxes are in pixels of a 512 image, as the official code sees them
TARGETS = {"single_class": 1.0, "image": 5.0}


# ---------------------------------------------------------------------------------------------
# Candidates of one class

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


LAYOUTS = {"clustered": clustered_boxes, "uniform": uniform_boxes}


# ---------------------------------------------------------------------------------------------
# Timing

def interleaved(fns: dict[str, Callable[[], Any]], repeats: int | None = None,
                budget_s: float = 1.5, bounds: tuple[int, int] = (5, 41)) -> dict[str, dict]:
    """Median and min milliseconds of each callable, called in turn (the order rotating each
    round) after one warm-up call each. ``repeats`` None: as many rounds as fit ``budget_s``
    (judged by the warm-up), within ``bounds``."""
    warm = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        warm[name] = time.perf_counter() - t0
    if repeats is None:
        repeats = int(np.clip(budget_s / max(sum(warm.values()), 1e-6), *bounds))
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {n: {"median_ms": statistics.median(t), "min_ms": min(t), "repeats": len(t)}
            for n, t in times.items()}


def _ratio(official: dict, ours: dict) -> float:
    return official["median_ms"] / ours["median_ms"]


# ---------------------------------------------------------------------------------------------
# 1. One class

def _official_single(cpu_soft_nms: Callable[..., list[int]], boxes: np.ndarray,
                     scores: np.ndarray, keep: int) -> np.ndarray:
    """The official per-class step of ``nms_process``: dets [n,5], cpu_soft_nms (linear, sigma
    0.45 = the config's iou, Nt 0.3, threshold 0.001), slice to keep."""
    dets = np.hstack((boxes, scores[:, None])).astype(np.float32, copy=False)
    kept = cpu_soft_nms(dets, 0.45, method=1)
    return dets[kept[:keep] if keep else kept]


def agreement(ours_boxes: np.ndarray, ours_scores: np.ndarray, official: np.ndarray) -> str:
    """"identical", "tie order" (same boxes and score sequence, order differs only among equal
    scores) or "different"."""
    theirs = official[:, 4]
    if len(theirs) != len(ours_scores) or not np.array_equal(theirs, ours_scores):
        return "different"
    if np.array_equal(official[:, :4], ours_boxes):
        return "identical"
    a = np.lexsort((*ours_boxes.T[::-1], ours_scores))
    b = np.lexsort((*official[:, :4].T[::-1], theirs))
    return "tie order" if np.array_equal(ours_boxes[a], official[b, :4]) else "different"


def single_class_rows(code: OfficialCode | None, seed: int) -> list[dict[str, Any]]:
    rows = []
    for layout, make in LAYOUTS.items():
        for n in SIZES:
            boxes, scores = make(n, np.random.default_rng(seed + n))
            boxes = boxes * np.float32(PIXELS)
            for keep in (50, 0):
                # the official pipeline has no candidate cap: neither has ours here
                params = get_nms_params("official", keep_per_class=keep, max_candidates=n)
                idx, kept_scores = soft_nms(boxes, scores, params, backend="compiled")
                fns: dict[str, Callable[[], Any]] = {
                    "ours": partial(soft_nms, boxes, scores, params, backend="compiled")}
                row: dict[str, Any] = {"case": "one class", "layout": layout, "candidates": n,
                                       "keep": keep or "all", "kept": len(idx)}
                if code is not None:
                    exact = _official_single(code.cpu_soft_nms_exact, boxes, scores, keep)
                    row["agreement"] = agreement(boxes[idx], kept_scores, exact)
                    fns["official"] = partial(_official_single, code.cpu_soft_nms, boxes,
                                              scores, keep)
                    fns["official_exact"] = partial(_official_single, code.cpu_soft_nms_exact,
                                                    boxes, scores, keep)
                t = interleaved(fns)
                row.update({f"{k}_ms": v["median_ms"] for k, v in t.items()})
                row["repeats"] = t["ours"]["repeats"]
                if code is not None:
                    row["ratio"] = _ratio(t["official"], t["ours"])
                    row["ratio_exact"] = _ratio(t["official_exact"], t["ours"])
                rows.append(row)
                _print_row(row)
    return rows


# ---------------------------------------------------------------------------------------------
# 2. One image, 3. batch 32

def _ours_image(outputs: Any, i: int, params: NMSParams, scale: tuple[int, int],
                threads: int) -> Detections:
    """Ours from the same network outputs: decode + threshold + soft-NMS in one call, then boxes
    in pixels."""
    dets = postprocess.decode_nms(outputs.loc[i:i + 1], outputs.priors, outputs.variance,
                                  outputs.conf[i:i + 1, :, 1:], params, threads=threads)
    return dets.scaled([scale])


def image_agreement(code: OfficialCode, outputs: Any, params: NMSParams) -> dict[str, Any]:
    """Ours (compiled ``batched_nms``) against the official "+1"-removed ``nms_process`` on the
    official decoded boxes of image 0, per class; and how far our decoding is from torch's."""
    boxes, scores = code.detect.forward((outputs.loc[:1], outputs.conf[0]), outputs.priors)
    official = code.nms_process_exact(scores[0].numpy(), boxes[0].numpy())
    ours = batched_nms(boxes.numpy(), scores[..., 1:].numpy(), params, backend="compiled")
    verdicts = {"identical": 0, "tie order": 0, "different": 0}
    for j in range(1, scores.shape[-1]):
        mine = ours.classes[0, :ours.num[0]] == j - 1
        theirs = np.asarray(official[j][0], np.float32).reshape(-1, 5)
        if len(theirs) or mine.any():
            verdicts[agreement(ours.boxes[0, :ours.num[0]][mine],
                               ours.scores[0, :ours.num[0]][mine], theirs)] += 1
    decoded = postprocess.decode_nms(outputs.loc[:1], outputs.priors, outputs.variance,
                                     outputs.conf[:1, :, 1:], params)
    return {"classes": verdicts, "kept": int(ours.num[0]),
            "kept_with_our_decoding": int(decoded.num[0])}


class _TorchThreads:
    """Torch's intra-op threads set to ``n`` inside the block (the official decode is torch).
    Set once per block: changing them call by call would slow torch itself down."""

    def __init__(self, n: int) -> None:
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


def image_rows(code: OfficialCode | None, threads: int, seed: int) -> list[dict[str, Any]]:
    """Whole post-processing of one image, ours and the official with the same thread count
    (torch's intra-op threads for the official decode): 1 and ``threads``."""
    rows = []
    params = get_nms_params("official")
    counts = sorted({1, threads})
    for size in IMAGE_SIZES:
        outputs = detector_outputs(size, 1, seed)
        scale_wh = (640, 480)  # the original image the boxes are scaled to
        scale = torch.tensor([*scale_wh, *scale_wh], dtype=torch.float32)
        candidates = int((outputs.conf[0, :, 1:] > params.score_threshold).sum())
        row: dict[str, Any] = {"case": "image", "model": f"M2Det-{size}",
                               "anchors": int(outputs.priors.shape[0]), "candidates": candidates}
        if code is not None:
            row["agreement"] = image_agreement(code, outputs, params)
        for t in counts:  # ours and the official on t threads, interleaved
            fns: dict[str, Callable[[], Any]] = {
                f"ours_{t}t": partial(_ours_image, outputs, 0, params, scale_wh, t)}
            if code is not None:
                fns[f"official_{t}t"] = partial(official_image, code, outputs.loc[:1],
                                                outputs.conf[0], outputs.priors, scale)
            with _TorchThreads(t):
                t_ms = interleaved(fns)
            row.update({f"{k}_ms": v["median_ms"] for k, v in t_ms.items()})
            row[f"repeats_{t}t"] = t_ms[f"ours_{t}t"]["repeats"]
        if code is not None:
            for t in counts:
                row[f"ratio_{t}t"] = row[f"official_{t}t_ms"] / row[f"ours_{t}t_ms"]
            row["ratio"] = min(row[f"ratio_{t}t"] for t in counts)
        rows.append(row)
        _print_row(row)
    return rows


def batch_rows(code: OfficialCode | None, max_threads: int, seed: int) -> list[dict[str, Any]]:
    outputs = detector_outputs(320, 32, seed)
    params = get_nms_params("official")
    counts = [t for t in (1, 2, 4, 8, 16, 32, 64) if t < max_threads] + [max_threads]
    fns: dict[str, Callable[[], Any]] = {
        f"ours_{t}": partial(postprocess.decode_nms, outputs.loc, outputs.priors,
                             outputs.variance, outputs.conf[..., 1:], params, threads=t)
        for t in counts}
    scale = torch.ones(4)
    if code is not None:  # the official pipeline goes image by image
        fns["official"] = lambda: [official_image(code, outputs.loc[i:i + 1], outputs.conf[i],
                                                  outputs.priors, scale) for i in range(32)]
    with _TorchThreads(max_threads):
        t = interleaved(fns, bounds=(3, 21))
    one = t["ours_1"]["median_ms"]
    rows = []
    for name, v in t.items():
        row = {"case": "batch 32", "model": "M2Det-320", "variant": name,
               "threads": int(name.split("_")[1]) if name != "official" else max_threads,
               "ms": v["median_ms"], "images_per_s": 32e3 / v["median_ms"],
               "speedup_vs_1_thread": one / v["median_ms"] if name != "official" else None}
        rows.append(row)
        _print_row(row)
    return rows


# ---------------------------------------------------------------------------------------------

def _print_row(row: dict[str, Any]) -> None:
    keys = [k for k in row if k not in ("case", "agreement")]
    text = ", ".join(f"{k}={row[k]:.3f}" if isinstance(row[k], float) else f"{k}={row[k]}"
                     for k in keys)
    print(f"{row['case']}: {text}" + (f", agreement={row['agreement']}"
                                      if "agreement" in row else ""), flush=True)


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each target and whether every measured ratio meets it."""
    single = [r["ratio"] for r in rows if r["case"] == "one class" and "ratio" in r]
    image = [r["ratio"] for r in rows if r["case"] == "image" and "ratio" in r]
    agree = all(r.get("agreement") in (None, "identical", "tie order")
                for r in rows if r["case"] == "one class")
    return {"one class: ours / official >= 1.0 at every size, layout and keep":
            bool(single) and min(single) >= TARGETS["single_class"],
            "one class: same kept boxes as the official code with '+1' removed": agree,
            "image: ours / official >= 5.0 for M2Det-320/512/800":
            bool(image) and min(image) >= TARGETS["image"],
            "smallest one-class ratio": min(single) if single else None,
            "smallest image ratio": min(image) if image else None}


def _main(argv: Sequence[str] | None) -> int:
    p = make_parser(PROG, __doc__.split("\n\n")[0])
    p.add_argument("--official", type=Path, metavar="PATH",
                   help="a checkout of qijiezhao/M2Det to build and time beside ours")
    p.add_argument("--threads", type=int, default=postprocess.default_threads(),
                   help="threads of our post-processing for the image cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = p.parse_args(argv)
    if args.threads < 1:
        raise M2DetError(f"--threads must be >= 1, got {args.threads}")
    if args.official is not None and not args.official.is_dir():
        raise M2DetError(f"--official {args.official}: no such directory")
    if not postprocess.available():
        raise M2DetError("the compiled post-processing is not built: pip install -e .")
    with tempfile.TemporaryDirectory(prefix="m2det-official-") as tmp:
        code = load_official(args.official.resolve(), Path(tmp)) if args.official else None
        rows = (single_class_rows(code, args.seed) + image_rows(code, args.threads, args.seed)
                + batch_rows(code, args.threads, args.seed))
    result = {
        "benchmark": "CPU post-processing: m2det.postprocess (compiled) vs the official M2Det "
                     "code, interleaved in one run",
        "environment": environment([PROG, *(argv if argv is not None else sys.argv[1:])],
                                   threads=args.threads),
        "official": None if code is None else {
            "checkout_commit": code.commit, "cython": code.cython, "test_cfg": code.test_cfg},
        "units": "milliseconds per call, median of the interleaved repeats; ratio = official / "
                 "ours (> 1: ours faster); official_exact: the official Cython with '+1' "
                 "removed",
        "seed": args.seed, "results": rows,
        "targets": targets(rows) if code is not None else "not checked: no --official"}
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
