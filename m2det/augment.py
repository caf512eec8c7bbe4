"""SSD training augmentation as the official M2Det code runs it (``data/data_augment.py``,
``preproc`` with p=0.6): IoU-constrained random crop, photometric distortion, zoom-out
(expand onto a mean-coloured canvas up to 4x), horizontal flip, resize to SxS with a random
interpolation. Output is BGR float32 0-255 *without* mean subtraction (the mean is inside the
model, docs/design.md §2).

All randomness comes from a ``numpy.random.Generator`` owned by the transform; call
``reseed(seed)`` per DataLoader worker and epoch to make runs reproducible.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from m2det.data import Sample
from m2det.preprocess import preprocess

Targets = np.ndarray  # [n,5] float32: normalized x1,y1,x2,y2, label

INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST,
                  cv2.INTER_LANCZOS4)
# (min IoU, max IoU) of the crop with every box; None = keep the whole image.
CROP_MODES: tuple[tuple[float, float] | None, ...] = (
    None, (0.1, math.inf), (0.3, math.inf), (0.5, math.inf), (0.7, math.inf), (0.9, math.inf),
    (-math.inf, math.inf),
)
MIN_BOX_SIDE = 0.01  # boxes thinner than this (normalized) after augmentation are dropped


def _iou_matrix(rois: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU [m,n] of pixel boxes rois [m,4] with boxes [n,4]."""
    lt = np.maximum(rois[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(rois[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_r = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area_r[:, None] + area_b[None, :] - inter)


def _targets(boxes: np.ndarray, labels: np.ndarray, width: int, height: int) -> Targets:
    out = np.empty((len(boxes), 5), np.float32)
    out[:, :4] = boxes / np.array([width, height, width, height], np.float32)
    out[:, 4] = labels
    return out


class TrainTransform:
    """Sample -> (image [3,S,S] float32 BGR 0-255, targets [n,5] float32 normalized + label).

    ``p`` is the probability of the zoom-out; ``photometric=False`` disables the colour
    distortion (geometry tests); ``crop=False`` the random crop. With ``p=0`` and both off only
    the flip is left (short from-scratch runs). A sample without boxes is only resized.
    """

    def __init__(self, size: int, mean: tuple[float, float, float] = (104, 117, 123),
                 p: float = 0.6, seed: int | None = None, photometric: bool = True,
                 crop: bool = True) -> None:
        self.size = size
        self.mean = mean
        self.p = p
        self.photometric = photometric
        self.use_crop = crop
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int | np.random.SeedSequence) -> None:
        """Restart the random stream (per worker and epoch, for reproducible runs)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: Sample) -> tuple[np.ndarray, Targets]:
        image, boxes, labels = sample.image, sample.boxes.astype(np.float32), sample.labels
        if len(boxes) == 0:
            return self._resize(image), np.zeros((0, 5), np.float32)
        image_t, boxes_t, labels_t = (self.crop(image, boxes, labels) if self.use_crop
                                      else (image, boxes, labels))
        if self.photometric:
            image_t = self.distort(image_t)
        image_t, boxes_t = self.expand(image_t, boxes_t)
        image_t, boxes_t = self.mirror(image_t, boxes_t)
        height, width = image_t.shape[:2]
        targets = _targets(boxes_t, labels_t, width, height)
        sides = np.minimum(targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1])
        targets = targets[sides > MIN_BOX_SIDE]
        if len(targets) == 0:  # every box was cropped away: fall back to the plain image
            height, width = image.shape[:2]
            return self._resize(image), _targets(boxes, labels, width, height)
        return self._resize(image_t), targets

    def _resize(self, image: np.ndarray) -> np.ndarray:
        interp = INTERPOLATIONS[self.rng.integers(len(INTERPOLATIONS))]
        resized = cv2.resize(image, (self.size, self.size), interpolation=interp)
        return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32)

    def crop(self, image: np.ndarray, boxes: np.ndarray,
             labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SSD random crop: a mode (min/max IoU of the crop with every box) is drawn, then up to
        50 crops of scale 0.3-1 and aspect 0.5-2 are tried; boxes whose centre falls inside the
        crop are kept and clipped to it. Draws a new mode when all 50 fail."""
        height, width = image.shape[:2]
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        while True:
            mode = CROP_MODES[self.rng.integers(len(CROP_MODES))]
            if mode is None:
                return image, boxes, labels
            rois = self._crop_candidates(width, height, 50)
            iou = _iou_matrix(rois, boxes)
            inside = ((rois[:, None, :2] < centers) & (centers < rois[:, None, 2:])).all(axis=2)
            ok = (iou.min(axis=1) >= mode[0]) & (iou.max(axis=1) <= mode[1]) & inside.any(axis=1)
            if not ok.any():
                continue
            k = int(ok.argmax())  # the first valid of the 50 tries, as the sequential loop
            left, top, right, bottom = rois[k].astype(int)
            kept = boxes[inside[k]].copy()
            kept[:, :2] = np.maximum(kept[:, :2], rois[k, :2]) - rois[k, :2]
            kept[:, 2:] = np.minimum(kept[:, 2:], rois[k, 2:]) - rois[k, :2]
            return image[top:bottom, left:right], kept, labels[inside[k]]

    def _crop_candidates(self, width: int, height: int, count: int) -> np.ndarray:
        """``count`` random crop windows [count,4] (pixel x1,y1,x2,y2, integral): scale
        0.3-1 of the side, aspect 0.5-2, inside the image."""
        scale = self.rng.uniform(0.3, 1.0, count)
        ratio = np.sqrt(self.rng.uniform(np.maximum(0.5, scale * scale),
                                         np.minimum(2.0, 1.0 / scale / scale)))
        w = np.maximum(1, (scale * ratio * width).astype(np.int64)).clip(max=width)
        h = np.maximum(1, (scale / ratio * height).astype(np.int64)).clip(max=height)
        left = (self.rng.random(count) * (width - w + 1)).astype(np.int64)
        top = (self.rng.random(count) * (height - h + 1)).astype(np.int64)
        return np.stack([left, top, left + w, top + h], axis=1).astype(np.float32)

    def distort(self, image: np.ndarray) -> np.ndarray:
        """Photometric distortion, each with probability 1/2: brightness +-32, contrast
        x0.5-1.5, hue +-18 (of 180), saturation x0.5-1.5."""
        rng = self.rng
        out = image.astype(np.float32)
        if rng.integers(2):
            out += rng.uniform(-32, 32)
        if rng.integers(2):
            out *= rng.uniform(0.5, 1.5)
        hsv = cv2.cvtColor(out.clip(0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV)
        if rng.integers(2):
            hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int32) + rng.integers(-18, 19)) % 180
        if rng.integers(2):
            hsv[:, :, 1] = (hsv[:, :, 1] * rng.uniform(0.5, 1.5)).clip(0, 255)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def expand(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Zoom out with probability ``p``: place the image on a mean-coloured canvas of
        1-4x its area (aspect jitter 0.5-2) at a random offset."""
        if self.rng.random() >= self.p:
            return image, boxes
        height, width, depth = image.shape
        scale = self.rng.uniform(1, 4)
        ratio = math.sqrt(self.rng.uniform(max(0.5, 1 / scale / scale), min(2, scale * scale)))
        w = max(width, int(scale * ratio * width))
        h = max(height, int(scale / ratio * height))
        left = int(self.rng.integers(w - width + 1))
        top = int(self.rng.integers(h - height + 1))
        canvas = np.empty((h, w, depth), image.dtype)
        canvas[:] = np.array(self.mean, np.float32).round().astype(image.dtype)
        canvas[top:top + height, left:left + width] = image
        return canvas, boxes + np.array([left, top, left, top], np.float32)

    def mirror(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Horizontal flip with probability 1/2."""
        if not self.rng.integers(2):
            return image, boxes
        width = image.shape[1]
        flipped = boxes.copy()
        flipped[:, 0] = width - boxes[:, 2]
        flipped[:, 2] = width - boxes[:, 0]
        return image[:, ::-1], flipped


class EvalTransform:
    """Sample -> (image [3,S,S] float32 BGR 0-255 resized by ``m2det.preprocess``, targets
    [n,5] float32 normalized + label)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, sample: Sample) -> tuple[np.ndarray, Targets]:
        height, width = sample.image.shape[:2]
        image = preprocess(sample.image, self.size)[0]
        return image, _targets(sample.boxes.astype(np.float32), sample.labels, width, height)
