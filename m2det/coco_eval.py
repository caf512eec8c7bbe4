"""COCO-style bbox evaluation of any detector that follows the runner protocol.

``evaluate_coco`` reads the images of a COCO-format annotation file, preprocesses them with the one
definition in ``m2det.preprocess``, calls ``predict`` (a runner, or any callable
``[B,3,S,S] float32 -> Detections`` with normalized boxes), scales the boxes back to each original
image, and scores them with pycocotools' ``COCOeval``. Contiguous label ``i`` is the file's
``i``-th category in ascending ``category_id`` order (so COCO's 80 ids map onto labels 0..79).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m2det.cli import progress_bar
from m2det.detections import Detections
from m2det.errors import M2DetError
from m2det.io import atomic_write_json
from m2det.predictor import Predictor
from m2det.preprocess import preprocess, read_image

#: COCOeval.stats in order; -1 means "no ground truth in that area range" (pycocotools' convention).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")  # fmt: skip
# (IoU, area, maxDets) of each stat, for the table.
_STAT_LINES = [("0.50:0.95", "all", 100), ("0.50", "all", 100), ("0.75", "all", 100)] + [
    ("0.50:0.95", area, 100) for area in ("small", "medium", "large")
] + [("0.50:0.95", "all", d) for d in (1, 10, 100)] + [
    ("0.50:0.95", area, 100) for area in ("small", "medium", "large")
]



def load_coco_annotations(ann_file: str | Path) -> Any:
    """A pycocotools ``COCO`` for ``ann_file``; anything that is not a COCO detection file is an
    M2DetError. Missing ``area``/``iscrowd`` fields get COCO's defaults (box area, 0)."""
    from pycocotools.coco import COCO

    path = Path(ann_file)
    if not path.is_file():
        raise M2DetError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise M2DetError(f"{path} is not a COCO annotation file (not JSON: {e})") from None
    _check_coco_layout(data, path)
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    ann_ids = [a.get("id") for a in data["annotations"]]
    if None in ann_ids or len(set(ann_ids)) != len(ann_ids):  # pycocotools needs unique ids
        for i, ann in enumerate(data["annotations"]):
            ann["id"] = i + 1
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_coco_layout(data: Any, path: Path) -> None:
    required = {"images": ("id", "file_name"), "annotations": ("image_id", "category_id", "bbox"),
                "categories": ("id", "name")}  # fmt: skip
    if not isinstance(data, dict):
        raise M2DetError(f"{path} is not a COCO annotation file (top level is not an object)")
    for key, fields in required.items():
        items = data.get(key)
        if not isinstance(items, list):
            raise M2DetError(f"{path} is not a COCO annotation file (no {key!r} list)")
        bad = next((x for x in items if not isinstance(x, dict) or any(f not in x for f in fields)),
                   None)  # fmt: skip
        if bad is not None:
            raise M2DetError(f"{path}: every entry of {key!r} needs {', '.join(fields)}")
    if any(not _is_box(a["bbox"]) for a in data["annotations"]):
        raise M2DetError(f"{path}: every annotation bbox must be [x, y, width, height]")
    if not data["categories"]:
        raise M2DetError(f"{path} has no categories")
    if not data["annotations"]:
        raise M2DetError(f"{path} has no annotations: nothing to evaluate against")


def _is_box(b: Any) -> bool:
    return isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)


def category_ids(coco: Any) -> list[int]:
    """Contiguous label i -> category id (the file's ids, ascending)."""
    return sorted(int(c) for c in coco.getCatIds())


def detections_to_coco(dets: Detections, image_ids: Sequence[int], sizes: Sequence[tuple[int, int]],
                       cat_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Normalized ``dets`` (batch of len(image_ids)) -> COCO results: boxes scaled to each image's
    (width, height), clipped to the image, as [x, y, w, h]."""
    scaled = dets.scaled(list(sizes))
    out: list[dict[str, Any]] = []
    for b, (image_id, (w, h)) in enumerate(zip(image_ids, sizes, strict=True)):
        boxes, scores, classes = scaled.image(b)
        if len(scores) and int(classes.max()) >= len(cat_ids):
            raise M2DetError(f"predicted class {int(classes.max())} but the annotation file has "
                             f"{len(cat_ids)} categories")  # fmt: skip
        x1 = np.clip(boxes[:, 0], 0, w)
        y1 = np.clip(boxes[:, 1], 0, h)
        x2 = np.clip(boxes[:, 2], 0, w)
        y2 = np.clip(boxes[:, 3], 0, h)
        for i in range(len(scores)):
            out.append({
                "image_id": int(image_id), "category_id": int(cat_ids[int(classes[i])]),
                "bbox": [round(float(v), 3) for v in (x1[i], y1[i], x2[i] - x1[i], y2[i] - y1[i])],
                "score": round(float(scores[i]), 5),
            })  # fmt: skip
    return out


def _results_coco(gt: Any, results: list[dict[str, Any]]) -> Any:
    """What ``COCO.loadRes`` builds for bbox results, but also for an empty list (loadRes fails)."""
    from pycocotools.coco import COCO

    res = COCO()
    anns = []
    for i, r in enumerate(results):
        w, h = r["bbox"][2], r["bbox"][3]
        anns.append({**r, "area": w * h, "id": i + 1, "iscrowd": 0})
    res.dataset = {"images": list(gt.dataset["images"]),
                   "categories": list(gt.dataset["categories"]), "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def run_cocoeval(gt: Any, results: list[dict[str, Any]], image_ids: Sequence[int],
                 per_class: bool = False) -> dict[str, Any]:
    """COCOeval (bbox) on ``image_ids`` -> {stat: value} (+ ``per_class`` {name: {AP, AP50}})."""
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(gt, _results_coco(gt, results), "bbox")
    ev.params.imgIds = sorted(int(i) for i in image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = zip(STAT_NAMES, ev.stats, strict=True)
    metrics: dict[str, Any] = {k: round(float(v), 6) for k, v in stats}
    if per_class:
        precision = ev.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]
        names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
        metrics["per_class"] = {
            names[cid]: {"AP": _mean_valid(precision[:, :, k, 0, -1]),
                         "AP50": _mean_valid(precision[0, :, k, 0, -1])}
            for k, cid in enumerate(ev.params.catIds)
        }  # fmt: skip
    return metrics


def _mean_valid(p: np.ndarray) -> float:
    valid = p[p > -1]
    return round(float(valid.mean()), 6) if valid.size else -1.0


def evaluate_coco(predict: Predictor, ann_file: str | Path, image_dir: str | Path, *,
                  config_labels: Sequence[str] | None = None, limit: int | None = None,
                  batch: int = 1, out_json: str | Path | None = None, per_class: bool = False,
                  progress: bool = True) -> dict[str, Any]:
    """Run ``predict`` over the images of ``ann_file`` (under ``image_dir``) and COCO-score it.

    ``predict``: a :class:`m2det.predictor.Predictor` (every runner is one): [B,3,S,S] float32 BGR
    0-255 -> Detections (boxes normalized), S its ``input_size``. ``config_labels`` (the model's
    foreground names) is checked against the file's category count. ``limit``: first N images by
    id. Unreadable images are skipped and listed under ``"skipped"``. ``out_json``: the COCO
    results list, written atomically. Returns ``{"AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", ..., "num_images", "num_detections", "skipped"}`` (+ ``"per_class"``).
    """
    size = predict.input_size
    if batch < 1:
        raise M2DetError(f"batch must be >= 1, got {batch}")
    if limit is not None and limit < 1:
        raise M2DetError(f"limit must be >= 1, got {limit}")
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise M2DetError(f"image folder not found: {image_dir}")
    gt = load_coco_annotations(ann_file)
    cat_ids = category_ids(gt)
    if config_labels is not None and len(config_labels) != len(cat_ids):
        raise M2DetError(f"{ann_file} has {len(cat_ids)} categories but the model predicts "
                         f"{len(config_labels)} classes")  # fmt: skip
    ids = sorted(int(i) for i in gt.getImgIds())[:limit]
    min_batch = predict.batch_range[0]

    results: list[dict[str, Any]] = []
    evaluated: list[int] = []
    skipped: list[str] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        images = [img for _, img in pending]
        x = preprocess(images, size)
        if len(images) < min_batch:  # engines with a fixed batch: pad, drop the extra outputs
            x = np.concatenate([x, np.zeros((min_batch - len(images), *x.shape[1:]), x.dtype)])
        dets = predict(x)
        sizes = [(img.shape[1], img.shape[0]) for img in images]
        results.extend(detections_to_coco(_first(dets, len(images)), [i for i, _ in pending],
                                          sizes, cat_ids))  # fmt: skip
        evaluated.extend(i for i, _ in pending)
        pending.clear()

    bar = progress_bar(ids, desc="eval", unit="img", enabled=progress)
    for image_id in bar:
        file_name = gt.imgs[image_id]["file_name"]
        try:
            pending.append((image_id, read_image(image_dir / file_name)))
        except M2DetError:
            skipped.append(str(file_name))
            continue
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    bar.close()
    if not evaluated:
        raise M2DetError(f"none of the {len(ids)} images of {ann_file} could be read from "
                         f"{image_dir}")  # fmt: skip
    if out_json is not None:
        atomic_write_json(out_json, results)
    metrics = run_cocoeval(gt, results, evaluated, per_class=per_class)
    metrics.update(num_images=len(evaluated), num_detections=len(results), skipped=skipped)
    return metrics


def _first(dets: Detections, n: int) -> Detections:
    if len(dets) == n:
        return dets
    return Detections(dets.num[:n], dets.boxes[:n], dets.scores[:n], dets.classes[:n])


def coco_table(metrics: dict[str, Any]) -> str:
    """pycocotools' summary lines for the stats present in ``metrics`` (+ a per-class table)."""
    lines = []
    for name, (iou, area, dets) in zip(STAT_NAMES, _STAT_LINES, strict=True):
        if name in metrics:
            kind = "Average Precision  (AP)" if name[1] == "P" else "Average Recall     (AR)"
            lines.append(f" {kind} @[ IoU={iou:<9} | area={area:>6} | "
                         f"maxDets={dets:>3} ] = {metrics[name]:0.3f}")  # fmt: skip
    per_class = metrics.get("per_class")
    if per_class:
        width = max(len(n) for n in per_class)
        lines.append("")
        lines.append(f" {'class':<{width}}     AP   AP50")
        for name, ap in per_class.items():
            lines.append(f" {name:<{width}}  {ap['AP']:0.3f}  {ap['AP50']:0.3f}")
    return "\n".join(lines)
