"""The runner protocol every backend implements (the shape of Polygraphy's ``BaseRunner``).

A runner is constructed from an artifact (checkpoint, ``.onnx`` or ``.plan``), acquires device
resources on ``__enter__`` (or lazily on first call) and releases them on ``__exit__``. Calling it
on a preprocessed batch (``m2det.preprocess``: [B,3,S,S] float32 BGR 0-255) returns
``Detections`` with boxes normalized to the input. Benchmarks and evaluation only use this.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from m2det.config import M2DetConfig
from m2det.detections import Detections
from m2det.nms import NMSParams


@dataclass
class Timing:
    """Milliseconds spent in the last call: ``network`` (incl. device transfers) and ``nms``
    (post-processing; 0 when the NMS runs inside the network, as in an NMS graph or plan)."""

    network: float = 0.0
    nms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class Runner(abc.ABC):
    """Base class: subclasses implement ``activate``, ``infer`` and optionally ``deactivate``."""

    backend: str = "?"  # "torch" | "onnxruntime" | "openvino" | "tensorrt"

    def __init__(self, config: M2DetConfig, nms: NMSParams, precision: str = "fp32") -> None:
        self.config = config
        self.nms = nms
        self.precision = precision
        self.last_timing = Timing()
        self._active = False

    # ----- properties every backend exposes
    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def batch_range(self) -> tuple[int, int]:
        """(min, max) batch this artifact accepts."""
        return (1, 1 << 30)

    @property
    def preferred_batch(self) -> int:
        """Images worth passing per call for folder and batch work (a runner that spreads a batch
        over parallel requests says how many); 1 by default."""
        return 1

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"

    # ----- lifecycle
    def activate(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (load the artifact, allocate device memory)."""

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def __enter__(self) -> Runner:
        if not self._active:
            self.activate()
            self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._active:
            self.deactivate()
            self._active = False

    # ----- inference
    @abc.abstractmethod
    def infer(self, images: Any) -> Detections:
        """images [B,3,S,S] float32 (numpy, or a torch tensor on the runner's device) -> Detections;
        sets ``self.last_timing``."""

    def __call__(self, images: Any) -> Detections:
        if not self._active:
            self.__enter__()
        return self.infer(images)

    def synchronize(self) -> None:  # noqa: B027 - optional hook
        """Wait for device work (GPU runners); host clocks are read after this."""


def now_ms() -> float:
    return time.perf_counter() * 1e3


def check_batch(images: np.ndarray | Any, size: int) -> None:
    from m2det.errors import M2DetError

    shape = tuple(images.shape)
    if len(shape) != 4 or shape[1:] != (3, size, size):
        raise M2DetError(f"expected images [B,3,{size},{size}], got {list(shape)}")
