"""``Detections``: the batched result every runner returns, laid out as TensorRT's EfficientNMS
outputs (and our NMS graph's) so a plan's outputs map onto it without conversion."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from m2det.contract import NMS_OUTPUTS


@dataclass
class Detections:
    """Per-image detections, padded to K.

    num [B] int32; boxes [B,K,4] float32 x1,y1,x2,y2 (normalized to the network input unless
    scaled); scores [B,K] float32 (descending within an image); classes [B,K] int32 contiguous
    foreground labels (0 = first non-background class). Entries past ``num[b]`` are padding.
    """

    num: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.num.shape[0])

    def image(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes [n,4], scores [n], classes [n]) of image ``b`` without padding."""
        n = int(self.num[b])
        return self.boxes[b, :n], self.scores[b, :n], self.classes[b, :n]

    @classmethod
    def from_nms_outputs(cls, outputs: Mapping[str, np.ndarray]) -> Detections:
        """An NMS graph's or plan's outputs by name (``contract.NMS_OUTPUTS``: num_detections
        [B,1], detection_boxes [B,K,4], detection_scores [B,K], detection_classes [B,K])."""
        num, boxes, scores, classes = (outputs[name] for name in NMS_OUTPUTS)
        return cls(num.reshape(-1).astype(np.int32), boxes.astype(np.float32),
                   scores.astype(np.float32), classes.astype(np.int32))  # fmt: skip

    @classmethod
    def from_lists(
        cls,
        per_image: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        max_detections: int | None = None,
    ) -> Detections:
        """Pad per-image (boxes [n,4], scores [n], classes [n]) to one batch."""
        k = max([len(s) for _, s, _ in per_image] + [0])
        if max_detections is not None:
            k = max_detections
        b = len(per_image)
        out = cls(
            np.zeros(b, np.int32),
            np.zeros((b, k, 4), np.float32),
            np.zeros((b, k), np.float32),
            np.zeros((b, k), np.int32),
        )
        for i, (bx, sc, cl) in enumerate(per_image):
            n = min(len(sc), k)
            out.num[i] = n
            out.boxes[i, :n], out.scores[i, :n], out.classes[i, :n] = bx[:n], sc[:n], cl[:n]
        return out

    @classmethod
    def concatenate(cls, parts: list[Detections]) -> Detections:
        """One batch of ``parts`` (in order), padded to the largest K."""
        if len(parts) == 1:
            return parts[0]
        k = max(p.boxes.shape[1] for p in parts)

        def pad(a: np.ndarray) -> np.ndarray:
            return np.pad(a, [(0, 0), (0, k - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

        return cls(np.concatenate([p.num for p in parts]),
                   np.concatenate([pad(p.boxes) for p in parts]),
                   np.concatenate([pad(p.scores) for p in parts]),
                   np.concatenate([pad(p.classes) for p in parts]))  # fmt: skip

    def scaled(self, sizes: list[tuple[int, int]]) -> Detections:
        """Boxes in pixels of each original image, ``sizes[b] = (width, height)``."""
        wh = np.array([[w, h, w, h] for w, h in sizes], np.float32)[:, None, :]
        return Detections(self.num, self.boxes * wh, self.scores, self.classes)

    def to_json(self, b: int, labels: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        boxes, scores, classes = self.image(b)
        return [
            {"box": [round(float(v), 2) for v in bx], "score": round(float(s), 5),
             "class": int(c), **({"label": labels[int(c)]} if labels else {})}
            for bx, s, c in zip(boxes, scores, classes, strict=True)
        ]  # fmt: skip
