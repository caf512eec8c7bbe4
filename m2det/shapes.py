"""Synthetic-shapes detection dataset in COCO format (the ``m2det_tiny`` preset's task).

Each image has 1-6 crisp, solid-coloured shapes (circle, square, triangle, ellipse, cross;
category ids 1..5 in ``SHAPES_CLASSES`` order) from tiny (8-12 px, ~15% of objects) to large
(~70% of the image side), rotated where that changes the shape, on a textured background
(gradient, smooth noise, pixel noise, soft blobs and thin lines as distractors). Objects may
overlap, but box IoU between any two is at most ``MAX_IOU`` and every object keeps at least
``MIN_VISIBLE`` of its pixels visible; each box is the tight box of the object's visible pixels.
Every image is generated from its own seed (seed, split, index), so the output is a pure
function of the arguments.

``m2det-shapes --out DIR --train N --val M [--seed S] [--size PX]`` writes
``DIR/{train,val}/*.jpg`` and ``DIR/annotations/{train,val}.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from m2det.cli import Console, make_parser, progress_bar, remove_on_failure, run_cli
from m2det.config import SHAPES_CLASSES
from m2det.errors import M2DetError
from m2det.io import atomic_write_json

MAX_OBJECTS = 6
TINY_FRACTION = 0.15  # share of objects drawn 8-12 px
TINY_RANGE = (8, 12)
MAX_SIZE_FRACTION = 0.7  # largest object side / image side
MAX_IOU = 0.5
MIN_VISIBLE = 0.7  # fraction of an object's pixels that later objects may not cover
MIN_CONTRAST = 90.0  # BGR distance between an object and (almost all) pixels it covers
PLACEMENT_TRIES = 30
JPEG_QUALITY = 95
SPLITS = ("train", "val")


@dataclass
class ShapeObject:
    """One drawn shape: category index into SHAPES_CLASSES, colour BGR, mask [H,W] bool."""

    label: int
    color: tuple[int, int, int]
    mask: np.ndarray


def _polygon(rng: np.random.Generator, cx: float, cy: float, radius: float,
             corners: int, rotation_period: float) -> np.ndarray:
    """Regular polygon [corners,2] int32 (cv2 fill coordinates) with random rotation."""
    angle = rng.uniform(0, rotation_period)
    t = angle + np.arange(corners) * 2 * math.pi / corners
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1).round().astype(np.int32)


def _shape_mask(rng: np.random.Generator, label: int, size: int, extent: float,
                cx: float, cy: float) -> np.ndarray:
    """Mask [size,size] bool of shape ``label`` about ``extent`` px across, centred at cx,cy."""
    mask = np.zeros((size, size), np.uint8)
    r = extent / 2
    name = SHAPES_CLASSES[label]
    if name == "circle":
        cv2.circle(mask, (round(cx), round(cy)), max(3, round(r)), 1, -1)
    elif name == "square":
        cv2.fillPoly(mask, [_polygon(rng, cx, cy, r, 4, math.pi / 2)], 1)
    elif name == "triangle":
        cv2.fillPoly(mask, [_polygon(rng, cx, cy, r * 1.1, 3, 2 * math.pi)], 1)
    elif name == "ellipse":
        axes = (max(3, round(r)), max(2, round(r * rng.uniform(0.4, 0.65))))
        cv2.ellipse(mask, (round(cx), round(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    else:  # cross: a plus sign, rotated
        arm = max(1.5, r * rng.uniform(0.25, 0.35))
        angle = rng.uniform(0, math.pi / 2)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        for half in ((r, arm), (arm, r)):
            corners = np.array([[-half[0], -half[1]], [half[0], -half[1]],
                                [half[0], half[1]], [-half[0], half[1]]])
            pts = corners @ rot.T + (cx, cy)
            cv2.fillPoly(mask, [pts.round().astype(np.int32)], 1)
    return mask.astype(bool)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured BGR uint8 [size,size,3]: gradient + smooth noise + pixel noise + soft
    distractors (blurred blobs without crisp edges, thin lines)."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = (np.cos(theta) * xx + np.sin(theta) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    cells = int(rng.integers(3, 9))
    smooth = cv2.resize(rng.normal(0, 1, (cells, cells, 3)), (size, size),
                        interpolation=cv2.INTER_CUBIC)
    img += smooth * rng.uniform(5, 25)
    img = img.clip(0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 4))):  # soft blobs
        blob = np.zeros((size, size), np.float32)
        centre = (int(rng.integers(size)), int(rng.integers(size)))
        axes = (int(rng.integers(4, size // 4)), int(rng.integers(4, size // 4)))
        cv2.ellipse(blob, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        blob = cv2.GaussianBlur(blob, (0, 0), max(axes) / 2)[..., None] * rng.uniform(0.3, 0.6)
        img = (img * (1 - blob) + rng.uniform(0, 255, 3) * blob).astype(np.uint8)
    for _ in range(int(rng.integers(0, 5))):  # thin lines
        p0 = tuple(int(v) for v in rng.integers(0, size, 2))
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.line(img, p0, p1, color, 1, cv2.LINE_AA)
    noise = rng.normal(0, rng.uniform(2, 8), img.shape)
    return (img + noise).clip(0, 255).astype(np.uint8)


def _extent(rng: np.random.Generator, size: int) -> float:
    """Object size in px: tiny with probability TINY_FRACTION, else log-uniform up to 70%."""
    if rng.random() < TINY_FRACTION:
        return float(rng.uniform(*TINY_RANGE))
    low, high = TINY_RANGE[1] + 2, MAX_SIZE_FRACTION * size
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight continuous box x1,y1,x2,y2 (x2 exclusive) of a non-empty mask [H,W]."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _contrasting_color(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int] | None:
    """A BGR colour at least MIN_CONTRAST away from 98% of the pixels ``under`` [n,3]."""
    for _ in range(20):
        color = rng.integers(0, 256, 3)
        dist = np.linalg.norm(under.astype(np.float32) - color, axis=1)
        if np.quantile(dist, 0.02) >= MIN_CONTRAST:
            return int(color[0]), int(color[1]), int(color[2])
    return None


def _fits(mask: np.ndarray, placed: list[ShapeObject]) -> bool:
    """True when drawing ``mask`` on top keeps every box IoU <= MAX_IOU and every placed
    object at least MIN_VISIBLE visible."""
    box = _box(mask)
    for obj in placed:
        if _box_iou(box, _box(obj.mask)) > MAX_IOU:
            return False
    covered = np.zeros_like(mask)
    for obj in reversed(placed):
        visible = obj.mask & ~(covered | mask)
        if visible.sum() < MIN_VISIBLE * obj.mask.sum():
            return False
        covered |= obj.mask
    return True


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[ShapeObject]]:
    """One image BGR uint8 [size,size,3] and its objects (masks are the visible pixels)."""
    image = _background(rng, size)
    placed: list[ShapeObject] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _ in range(PLACEMENT_TRIES):
            label = int(rng.integers(len(SHAPES_CLASSES)))
            extent = _extent(rng, size)
            margin = extent / 2
            cx, cy = rng.uniform(margin - 2, size - margin + 2, 2)
            mask = _shape_mask(rng, label, size, extent, cx, cy)
            if mask.sum() < 20 or not _fits(mask, placed):
                continue
            color = _contrasting_color(rng, image[mask])
            if color is None:
                continue
            image[mask] = color
            placed.append(ShapeObject(label, color, mask))
            break
    for i, obj in enumerate(placed):  # objects drawn later hide part of earlier ones
        for later in placed[i + 1:]:
            obj.mask = obj.mask & ~later.mask
    return image, placed


def _coco_annotations(objects: list[ShapeObject], image_id: int,
                      first_id: int) -> list[dict[str, Any]]:
    anns = []
    for k, obj in enumerate(objects):
        x1, y1, x2, y2 = _box(obj.mask)
        anns.append({
            "id": first_id + k, "image_id": image_id, "category_id": obj.label + 1,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(obj.mask.sum()), "iscrowd": 0,
            "color": list(obj.color),
        })
    return anns


def _write_image(path: Path, image: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix == ".jpg" else []
    ok, data = cv2.imencode(path.suffix, image, params)
    if not ok:
        raise M2DetError(f"cannot encode {path}")
    path.write_bytes(data.tobytes())


def _replace_dir(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` folder to ``target``, replacing an older one."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def generate_split(out: Path, split: str, count: int, seed: int, size: int,
                   image_format: str = "jpg", progress: bool = False) -> dict[str, Path]:
    """Write ``count`` images to ``out/split`` and ``out/annotations/split.json``."""
    split_code = SPLITS.index(split)
    staging = out / f".{split}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    try:
        for i in progress_bar(range(count), desc=f"shapes {split}", enabled=progress,
                              unit="img"):
            rng = np.random.default_rng([seed, split_code, i])
            image, objects = render_image(rng, size)
            name = f"{split}_{i:06d}.{image_format}"
            _write_image(staging / name, image)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
            annotations += _coco_annotations(objects, i + 1, len(annotations) + 1)
        _replace_dir(staging, out / split)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    ann_file = out / "annotations" / f"{split}.json"
    atomic_write_json(ann_file, {
        "info": {"description": "m2det synthetic shapes", "seed": seed, "size": size},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"}
                       for k, n in enumerate(SHAPES_CLASSES)],
    })
    return {f"{split}_images": out / split, f"{split}_json": ann_file}


def generate(out: str | Path, train: int, val: int, seed: int = 0, size: int = 160,
             image_format: str = "jpg", progress: bool = False) -> dict[str, Path]:
    """Write the train and val splits under ``out``; returns the paths written
    (keys ``train_images``, ``train_json``, ``val_images``, ``val_json``)."""
    if train < 0 or val < 0 or train + val == 0:
        raise M2DetError(f"need a positive number of images (got train={train}, val={val})")
    if size < 32:
        raise M2DetError(f"image size must be at least 32 px (got {size})")
    if image_format not in ("jpg", "png"):
        raise M2DetError(f"image format must be jpg or png (got {image_format!r})")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for split, count in zip(SPLITS, (train, val), strict=True):
            paths.update(generate_split(out, split, count, seed, size, image_format, progress))
    except OSError as e:
        raise M2DetError(f"cannot write {out}: {e.strerror or e}") from None
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("m2det-shapes", "Write a deterministic synthetic-shapes detection "
                         "dataset: OUT/{train,val}/*.jpg and OUT/annotations/{train,val}.json "
                         "(COCO format, 5 classes).")
    parser.add_argument("--out", required=True, type=Path, help="Output folder.")
    parser.add_argument("--train", required=True, type=int, help="Number of training images.")
    parser.add_argument("--val", required=True, type=int, help="Number of validation images.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed.")
    parser.add_argument("--size", type=int, default=160, help="Image side in pixels.")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", help="Image format.")
    return parser


def _shapes(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    console = Console.from_args("m2det-shapes", args)
    with remove_on_failure(args.out):
        paths = generate(args.out, args.train, args.val, args.seed, args.size, args.format,
                         progress=not args.quiet)
    for key, path in paths.items():
        console.result(f"{key}: {path}")
    console.write_json({key: str(path) for key, path in paths.items()})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-shapes``."""
    return run_cli("m2det-shapes", _shapes, argv)


if __name__ == "__main__":
    sys.exit(main())
