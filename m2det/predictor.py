"""What COCO evaluation (``m2det.coco_eval.evaluate_coco``) runs: the typed :class:`Predictor`
protocol, which every runner of ``m2det.engines`` satisfies, and :class:`ModelPredictor`, an
in-memory M2Det (the trainer's evaluation) behind the same protocol."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from m2det.detections import Detections
from m2det.model import M2Det, M2DetInference
from m2det.nms import NMSParams, batched_nms

#: ``batch_range`` of a predictor that takes any batch size.
ANY_BATCH = (1, 1 << 30)


class Predictor(Protocol):
    """images [B,3,S,S] float32 BGR 0-255 (``m2det.preprocess``) -> Detections with boxes
    normalized to the input; S is ``input_size``, B within ``batch_range`` (min, max)."""

    @property
    def input_size(self) -> int: ...

    @property
    def batch_range(self) -> tuple[int, int]: ...

    def __call__(self, images: np.ndarray) -> Detections: ...


class ModelPredictor:
    """An M2Det module (eval mode, on ``device``) + the CPU reference post-processing."""

    batch_range = ANY_BATCH

    def __init__(self, model: M2Det, nms: NMSParams, device: torch.device) -> None:
        self._inference = M2DetInference(model).to(device).eval()
        self._nms, self._device = nms, device
        self.input_size = model.config.input_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> Detections:
        boxes, scores = self._inference(torch.from_numpy(images).to(self._device))
        return batched_nms(boxes.float().cpu(), scores.float().cpu(), self._nms)
