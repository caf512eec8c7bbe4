"""Network outputs shaped like a trained M2Det's on a COCO-like image, for post-processing
benchmarks (no trained COCO weights ship with this package; the bundled model is m2det_tiny).

The priors are the preset's own (``m2det.priors``: 12,810 for M2Det-320, 32,760 for 512, 80,208
for 800). An image holds a few objects (2-15, some sharing a class) of COCO-like sizes; priors that
overlap an object (IoU >= 0.2) regress onto it with noise that shrinks with the overlap, and raise
its class (sometimes also a confusable second class) by a strength that grows with the overlap;
every other prior favours background; a few scattered priors fire on a random class. Scores are
the softmax over 81 logits, the background in column 0, as the official ``Detect`` receives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from m2det.box_utils import box_iou, encode, point_form
from m2det.config import get_config
from m2det.priors import make_priors

PRESETS = {320: "m2det320_vgg", 512: "m2det512_vgg", 800: "m2det800_vgg"}


@dataclass
class DetectorOutputs:
    """One batch: ``loc`` [B,A,4] offsets, ``conf`` [B,A,81] softmax (background first),
    ``priors`` [A,4] cx,cy,w,h, ``variance`` of the preset; ``size`` the input size."""

    loc: torch.Tensor
    conf: torch.Tensor
    priors: torch.Tensor
    variance: tuple[float, float]
    size: int


def _objects(rng: np.random.Generator, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [n,4] corner form in [0,1], classes [n]) of 2-15 COCO-like objects."""
    n = int(rng.integers(2, 16))
    classes = rng.choice(n_classes, n)
    for i in range(1, n):  # groups: half the objects repeat an earlier class
        if rng.random() < 0.5:
            classes[i] = classes[rng.integers(0, i)]
    side = np.exp(rng.uniform(np.log(0.04), np.log(0.6), n))
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n))
    wh = np.stack([side * np.sqrt(aspect), side / np.sqrt(aspect)], 1)
    centre = rng.uniform(0.1, 0.9, (n, 2))
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], 1).clip(0.0, 1.0)
    return boxes.astype(np.float32), classes


def image_outputs(priors: torch.Tensor, variance: tuple[float, float], rng: np.random.Generator,
                  n_classes: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc [A,4], conf [A,n_classes+1]) of one synthetic image against ``priors`` [A,4]."""
    a = priors.shape[0]
    boxes, classes = _objects(rng, n_classes)
    iou, best = box_iou(torch.from_numpy(boxes), point_form(priors)).max(0)  # [A]
    iou_np, best_np = iou.numpy().astype(np.float64), best.numpy()
    near = iou_np >= 0.2
    loc = rng.normal(0.0, 0.5, (a, 4))
    target = encode(torch.from_numpy(boxes)[best], priors, variance).numpy()
    noise = rng.normal(0.0, 1.0, (a, 4)) * (0.1 + 0.3 * (1.0 - iou_np))[:, None]
    loc[near] = target[near] + noise[near]
    logits = rng.normal(0.0, 0.7, (a, n_classes + 1))
    logits[:, 0] += np.where(near, 4.0 * (1.0 - iou_np), 6.0)
    strength = 9.0 * (iou_np - 0.2) / 0.8 + rng.normal(0.0, 1.0, a)
    rows = np.flatnonzero(near)
    logits[rows, 1 + classes[best_np[rows]]] += strength[rows]
    confused = rows[rng.random(len(rows)) < 0.3]  # a confusable second class, weaker
    logits[confused, 1 + rng.integers(0, n_classes, len(confused))] += 0.6 * strength[confused]
    stray = rng.choice(a, max(1, a // 500), replace=False)  # scattered false positives
    logits[stray, 1 + rng.integers(0, n_classes, len(stray))] += rng.uniform(4.0, 8.0, len(stray))
    logits -= logits.max(1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(1, keepdims=True)
    return (torch.from_numpy(loc.astype(np.float32)), torch.from_numpy(prob.astype(np.float32)))


def detector_outputs(size: int, batch: int, seed: int) -> DetectorOutputs:
    """A batch of ``batch`` synthetic images for M2Det-``size`` (320, 512 or 800)."""
    config = get_config(PRESETS[size])
    priors = make_priors(config)
    rng = np.random.default_rng(seed)
    images = [image_outputs(priors, config.variance, rng) for _ in range(batch)]
    return DetectorOutputs(torch.stack([lc for lc, _ in images]),
                           torch.stack([cf for _, cf in images]), priors,
                           tuple(config.variance), size)  # type: ignore[arg-type]
