"""What every runner of an exported ``.onnx`` file shares, whatever library executes it (ONNX
Runtime, OpenVINO): the input checks, the graph kinds (``raw`` outputs go through the CPU
post-processing ``m2det.nms.batched_nms``, ``nms-onnx`` outputs are read as they are) and the
timing split. A subclass sets the attributes below in its constructor and executes the graph."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import numpy as np

from m2det import contract
from m2det.contract import NMS_OUTPUTS, RAW_OUTPUTS
from m2det.detections import Detections
from m2det.engines.base import Runner, Timing, check_batch, now_ms
from m2det.errors import M2DetError
from m2det.nms import batched_nms


class OnnxFileRunner(Runner):
    """A runner of one exported ONNX file.

    Subclasses set ``path``, ``graph`` (``contract.GRAPH_RAW`` or ``GRAPH_NMS_ONNX``),
    ``fixed_batch`` (None: dynamic) and ``threads`` (CPU threads, also of the post-processing),
    and implement :meth:`execute`.
    """

    path: Path
    graph: str
    fixed_batch: int | None
    threads: int | None

    @abc.abstractmethod
    def execute(self, x: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
        """Run the active graph on ``x`` [B,3,S,S] float32 (C-contiguous; B checked); return the
        outputs ``names`` (``RAW_OUTPUTS`` or ``NMS_OUTPUTS``, the graph's own) in that order."""

    @property
    def batch_range(self) -> tuple[int, int]:
        if self.fixed_batch:
            return (self.fixed_batch, self.fixed_batch)
        return super().batch_range

    def _run(self, images: Any, names: tuple[str, ...]) -> list[np.ndarray]:
        if not self._active:
            self.__enter__()
        check_batch(images, self.input_size)
        if self.fixed_batch and images.shape[0] != self.fixed_batch:
            raise M2DetError(f"{self.path.name} was exported for batch {self.fixed_batch}, "
                             f"got {images.shape[0]} images")  # fmt: skip
        if hasattr(images, "detach"):  # torch.Tensor
            images = images.detach().cpu().numpy()
        return self.execute(np.ascontiguousarray(images, dtype=np.float32), names)

    def raw(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """images [B,3,S,S] -> (boxes [B,A,4], scores [B,A,C]) of a raw graph, before NMS."""
        if self.graph != contract.GRAPH_RAW:
            raise M2DetError(f"{self.path.name} is an NMS graph: it has no raw boxes/scores")
        boxes, scores = self._run(images, RAW_OUTPUTS)
        return boxes, scores

    def infer(self, images: Any) -> Detections:
        """images [B,3,S,S] float32 BGR 0-255 -> Detections (normalized boxes)."""
        t0 = now_ms()
        if self.graph == contract.GRAPH_RAW:
            boxes, scores = self.raw(images)
            t1 = now_ms()
            dets = batched_nms(boxes, scores, self.nms, threads=self.threads)
            self.last_timing = Timing(network=t1 - t0, nms=now_ms() - t1)
            return dets
        outputs = dict(zip(NMS_OUTPUTS, self._run(images, NMS_OUTPUTS), strict=True))
        self.last_timing = Timing(network=now_ms() - t0, nms=0.0)
        return Detections.from_nms_outputs(outputs)

