"""Parity of exported graphs: ONNX Runtime against PyTorch (the FP32 raw graph) and one ONNX file
against another (FP16/INT8 against FP32), as max/mean absolute differences of ``boxes`` and
``scores``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2det.contract import INPUT, RAW_OUTPUTS
from m2det.export.ort_session import SPEC_DISABLED_OPTIMIZERS, ort_session
from m2det.model import M2DetInference


@dataclass
class Parity:
    """Max/mean absolute difference of ``boxes`` and ``scores`` between two implementations, and
    ``worst``: the largest difference scaled as ``|a - b| / max(1, |b|)`` (absolute for values in
    [0,1] as a trained model's boxes and scores are; relative for the huge boxes an untrained
    full-size network's exp() produces)."""

    boxes_max: float
    boxes_mean: float
    scores_max: float
    scores_mean: float
    worst: float
    batches: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (f"boxes max {self.boxes_max:.2e} mean {self.boxes_mean:.2e}, "
                f"scores max {self.scores_max:.2e} mean {self.scores_mean:.2e}, "
                f"scaled max {self.worst:.2e} (batches {self.batches})")  # fmt: skip


def random_images(batch: int, size: int, seed: int) -> np.ndarray:
    """Uniform 0-255 BGR float32 images [batch,3,size,size] (deterministic per seed)."""
    return np.random.default_rng(seed).uniform(0, 255, (batch, 3, size, size)).astype(np.float32)


def compare_with_torch(path: str | Path, module: M2DetInference, batches: list[int],
                       seed: int = 0) -> Parity:
    """Run the raw graph at ``path`` in ORT (CPU) and ``module`` in PyTorch on the same random
    images, one call per entry of ``batches``; returns the differences."""
    sess = ort_session(path)
    size = module.model.config.input_size
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = []
    for i, b in enumerate(batches):
        x = random_images(b, size, seed + i)
        got = sess.run(list(RAW_OUTPUTS), {INPUT: x})
        with torch.no_grad():
            ref = [t.numpy() for t in module(torch.from_numpy(x))]
        pairs += zip(RAW_OUTPUTS, got, ref, strict=True)
    return _parity(pairs, batches)


def compare_onnx(path: str | Path, reference: str | Path, inputs: list[np.ndarray],
                 disabled_optimizers: Sequence[str] = SPEC_DISABLED_OPTIMIZERS) -> Parity:
    """Raw-graph outputs of ``path`` (e.g. the FP16/INT8 file) against ``reference`` (FP32), both
    in ORT (CPU), one call per array of ``inputs`` ([B,3,S,S] each). ``reference`` always runs
    with the ORT optimizers of :mod:`m2det.export.ort_session` turned off (what TensorRT and the
    ONNX graph compute); ``disabled_optimizers`` is for ``path`` (``()``: ORT's full defaults)."""
    a, b = ort_session(path, disabled_optimizers=disabled_optimizers), ort_session(reference)
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = []
    for x in inputs:
        pairs += zip(RAW_OUTPUTS, a.run(list(RAW_OUTPUTS), {INPUT: x}),
                     b.run(list(RAW_OUTPUTS), {INPUT: x}), strict=True)  # fmt: skip
    return _parity(pairs, [len(x) for x in inputs])


def _parity(pairs: list[tuple[str, np.ndarray, np.ndarray]], batches: list[int]) -> Parity:
    """(output name, got, reference) triples -> Parity."""
    diffs: dict[str, list[np.ndarray]] = {name: [] for name in RAW_OUTPUTS}
    worst = 0.0
    for name, got, ref in pairs:
        d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        diffs[name].append(d.ravel())
        worst = max(worst, float((d / np.maximum(1.0, np.abs(ref))).max()))
    bx, sc = (np.concatenate(diffs[name]) for name in RAW_OUTPUTS)
    return Parity(float(bx.max()), float(bx.mean()), float(sc.max()), float(sc.mean()), worst,
                  batches)
