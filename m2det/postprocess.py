"""Compiled CPU post-processing: the soft-NMS of ``m2det.nms`` (same detections; the numpy code
there is the executable spec), optionally with box decoding, in one call per batch into the
extension ``m2det._postprocess`` (built from plugins/postprocess/ at install time). A call releases
the GIL and runs images and classes on a thread pool of ``threads`` threads (default: the CPUs this
process may use).

Hard and linear soft-NMS give the numpy spec's detections bit for bit; gaussian differs only where
the C library's ``expf`` and numpy's float32 ``exp`` round differently (see m2det/nms.py). Decoding
follows ``m2det.box_utils.decode`` in float32, with the same ``exp`` caveat.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from m2det.detections import Detections
from m2det.errors import M2DetError

_ext: Any
try:
    _ext = importlib.import_module("m2det._postprocess")
except ImportError as _error:  # a source tree on sys.path that pip never built
    _ext = None
    _IMPORT_ERROR = str(_error)

__all__ = ["available", "batched_nms", "decode_nms", "default_threads", "extension",
           "extension_path", "soft_nms"]


class NMSAttributes(Protocol):
    """What is read of ``m2det.nms.NMSParams``: its 8 plugin attributes."""

    def attributes(self) -> dict[str, float | int]: ...


def available() -> bool:
    """Whether the extension is importable (pip builds it; a bare source tree has none)."""
    return _ext is not None


def default_threads() -> int:
    """Threads a call uses by default: the CPUs in this process's affinity mask."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def extension() -> Any:
    """The extension module ``m2det._postprocess``; M2DetError when it is not built."""
    if _ext is None:
        raise M2DetError(f"the compiled post-processing is not built ({_IMPORT_ERROR}); install "
                         "the package with pip (pip install -e .) or use backend='numpy'")
    return _ext


def extension_path() -> Path | None:
    """Where the extension was loaded from (pip puts the CUDA library in ``lib/`` beside it)."""
    return None if _ext is None else Path(_ext.__file__)


def _threads(threads: int | None) -> int:
    if threads is None:
        return default_threads()
    if int(threads) < 1:
        raise M2DetError(f"threads must be >= 1, got {threads}")
    return int(threads)


def _host_f32(a: Any, name: str, ndim: int) -> np.ndarray:
    """``a`` (numpy or torch, any device) as a float32 numpy array of ``ndim`` dims whose last axis
    is contiguous; other strides are kept, so a view such as ``softmax[..., 1:]`` is not copied."""
    if hasattr(a, "detach"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim != ndim:
        raise M2DetError(f"{name} must have {ndim} dimensions, got shape {list(arr.shape)}")
    if arr.size and arr.strides[-1] != arr.itemsize:
        arr = np.ascontiguousarray(arr)
    return arr


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as e:  # the extension's own checks (shapes, parameters)
        raise M2DetError(f"compiled post-processing: {e}") from None


def _run(boxes: np.ndarray, scores: np.ndarray, priors: np.ndarray | None,
         variance: tuple[float, float], params: NMSAttributes, threads: int | None) -> Detections:
    if boxes.shape[0] != scores.shape[0] or boxes.shape[1] != scores.shape[1] \
            or boxes.shape[2] != 4:
        raise M2DetError(f"expected boxes [B,A,4] and scores [B,A,C], got {list(boxes.shape)} "
                         f"and {list(scores.shape)}")
    if min(scores.shape) < 1:  # nothing to run: empty batch, no anchors or no classes
        b, k = scores.shape[0], int(params.attributes()["max_detections"])
        return Detections(np.zeros(b, np.int32), np.zeros((b, k, 4), np.float32),
                          np.zeros((b, k), np.float32), np.zeros((b, k), np.int32))
    a = params.attributes()
    num, out_boxes, out_scores, classes = _call(
        extension().batched_nms, boxes, scores, priors, float(variance[0]), float(variance[1]),
        a["method"], a["score_threshold"], a["iou_threshold"], a["sigma"], a["min_score"],
        a["max_candidates"], a["keep_per_class"], a["max_detections"], _threads(threads))
    return Detections(num, out_boxes, out_scores, classes)


def batched_nms(boxes: Any, scores: Any, params: NMSAttributes, *,
                threads: int | None = None) -> Detections:
    """``m2det.nms.batched_nms`` compiled: ``boxes`` [B,A,4] x1,y1,x2,y2, ``scores`` [B,A,C]
    (numpy or torch; a strided view is read in place) -> Detections (padded to max_detections if
    set, else to the largest image)."""
    return _run(_host_f32(boxes, "boxes", 3), _host_f32(scores, "scores", 3), None, (0.0, 0.0),
                params, threads)


def decode_nms(loc: Any, priors: Any, variance: tuple[float, float], scores: Any,
               params: NMSAttributes, *, threads: int | None = None) -> Detections:
    """Decoding plus ``batched_nms`` in one call: ``loc`` [B,A,4] offsets against ``priors``
    [A,4] (cx,cy,w,h) with ``variance`` (centre, size), ``scores`` [B,A,C] -> Detections of the
    decoded boxes. Only anchors with a score above the threshold are decoded."""
    p = np.ascontiguousarray(_host_f32(priors, "priors", 2))
    loc_f = _host_f32(loc, "loc", 3)
    if p.shape != (loc_f.shape[1], 4):
        raise M2DetError(f"expected priors [A,4] for loc {list(loc_f.shape)}, got "
                         f"{list(p.shape)}")
    return _run(loc_f, _host_f32(scores, "scores", 3), p, variance, params, threads)


def soft_nms(boxes: Any, scores: Any, params: NMSAttributes) -> tuple[np.ndarray, np.ndarray]:
    """``m2det.nms.soft_nms`` compiled: one class, ``boxes`` [N,4], ``scores`` [N] -> (kept
    indices int64 [k] in emission order, their scores float32 [k])."""
    b, s = _host_f32(boxes, "boxes", 2), _host_f32(scores, "scores", 1)
    if b.shape != (s.shape[0], 4):
        raise M2DetError(f"soft_nms expects boxes [N,4] and scores [N], got {list(b.shape)} "
                         f"and {list(s.shape)}")
    if not len(s):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    a = params.attributes()
    return _call(extension().soft_nms, b, s, a["method"], a["score_threshold"],
                 a["iou_threshold"], a["sigma"], a["min_score"], a["max_candidates"],
                 a["keep_per_class"])
