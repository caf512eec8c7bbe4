"""Reduced-precision ONNX files (docs/design.md §3): FP16 by ModelOpt AutoCast, INT8 by ModelOpt
ONNX PTQ (explicit Q/DQ). The post-processing nodes (prior decode with its Exp, the softmax; tagged
``/postprocess/*`` by :mod:`m2det.export.onnx_export`) stay FP32 and unquantized in both.

Every file produced here runs in ONNX Runtime on the CPU, so its accuracy is measured before
TensorRT ever sees it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import multiprocessing
import os
import re
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx

from m2det.errors import M2DetError
from m2det.export.calibration import CALIB_METHODS
from m2det.export.onnx_export import INPUT, MODELOPT_INT8_MIN_OPSET, POSTPROCESS_PATTERN

T = TypeVar("T")

#: Ops ORT's quantizer must leave in float: OpenCV DNN (5.1) runs a quantized Sub or Div (DQ
#: inputs -> op -> QuantizeLinear) as an Add, so quantizing the graph's mean subtraction made
#: OpenCV compute ``x + mean`` and every output wrong (export/README.md). Add and Mul are fine.
OPENCV_UNSAFE_QUANTIZED_OPS = ("Sub", "Div")
#: Percentile of |activation| taken as the INT8 range by ``--calib-method percentile``.
PERCENTILE = 99.99


def tensorrt_usable() -> bool:
    """True when the real TensorRT Python package is importable (``tensorrt-stubs`` alone installs
    an empty ``tensorrt`` namespace package that imports fine but has no API)."""
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


@contextlib.contextmanager
def _quiet_tools() -> Iterator[None]:
    """The quantizers' own chatter, kept out of the user's terminal: ModelOpt's INFO/WARNING log
    lines (its handler writes to stdout), ONNX Runtime's calibration prints and root-logger
    warnings, and one progress bar per calibration batch. The project reports what matters
    itself (parity figures, calibration summary). Captured text is shown if the block fails."""
    buf = io.StringIO()
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in
                                      list(logging.root.manager.loggerDict)
                                      if name.startswith("modelopt"))]  # fmt: skip
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    except BaseException:
        sys.stderr.write(buf.getvalue())
        raise
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _modelopt_quiet() -> Iterator[None]:
    """ModelOpt with :func:`_quiet_tools`. Also: ModelOpt decides at import whether TensorRT is
    there by ``import tensorrt`` succeeding; with only the stubs installed it then calls
    ``trt.Logger`` and fails, so it is told the truth. Its patch of ONNX Runtime's histogram
    collector draws a tqdm bar per calibration batch: those bars are disabled."""
    import modelopt.onnx.quantization.ort_patching as ort_patching
    import modelopt.onnx.trt_utils as trt_utils
    from tqdm import tqdm

    saved = trt_utils.TRT_PYTHON_AVAILABLE, getattr(ort_patching, "tqdm", None)
    trt_utils.TRT_PYTHON_AVAILABLE = saved[0] and tensorrt_usable()
    if saved[1] is not None:
        ort_patching.tqdm = functools.partial(tqdm, disable=True)
    try:
        with _quiet_tools():
            yield
    finally:
        trt_utils.TRT_PYTHON_AVAILABLE = saved[0]
        if saved[1] is not None:
            ort_patching.tqdm = saved[1]


def to_fp16(raw_path: str | Path) -> onnx.ModelProto:
    """FP32 raw/NMS graph -> mixed precision (AutoCast, ``keep_io_types``): the network in FP16,
    the post-processing in FP32; inputs and outputs stay float32."""
    from modelopt.onnx.autocast import convert_to_mixed_precision

    with _modelopt_quiet():
        return convert_to_mixed_precision(
            str(raw_path), low_precision_type="fp16", nodes_to_exclude=[POSTPROCESS_PATTERN],
            keep_io_types=True, providers=["cpu"],
        )  # fmt: skip


#: INT8 recipes: ``tensorrt`` ModelOpt's placement (Q/DQ on the inputs of weighted ops);
#: ``cpu`` that plus the Conv outputs (ONNX Runtime's CPU EP fuses DQ->Conv->Q into QLinearConv);
#: ``onnxruntime`` ONNX Runtime's own ``quantize_static`` (uint8 asymmetric activations, so ORT
#: can also drop the ReLUs and fuse every Conv) instead of ModelOpt.
PLACEMENTS = ("tensorrt", "cpu", "onnxruntime")


def recipe(placement: str) -> str:
    """The INT8 recipe a placement runs, as reports name it."""
    return {"tensorrt": "ModelOpt Q/DQ, TensorRT placement",
            "cpu": "ModelOpt Q/DQ, CPU placement (quantized Conv outputs)",
            "onnxruntime": "ONNX Runtime quantize_static (QDQ, uint8 activations)"}[placement]


def to_int8(raw_path: str | Path, calibration: np.ndarray, method: str = "entropy",
            placement: str = "tensorrt", opset: int | None = None) -> onnx.ModelProto:
    """FP32 raw graph + calibration images [N,3,S,S] -> explicit Q/DQ INT8 graph (ModelOpt PTQ,
    per-channel weights, symmetric activations, ``high_precision_dtype`` fp32 so the unquantized
    parts stay FP32 for CPU execution). ``method``: entropy | max (ModelOpt's own calibrators) |
    percentile (ORT's percentile calibrator at :data:`PERCENTILE`, handed to ModelOpt as a
    calibration cache). ``placement``: one of :data:`PLACEMENTS`. ``opset``: the ModelOpt file's
    opset (None: the raw graph's, raised to :data:`MODELOPT_INT8_MIN_OPSET`; a lower value is an
    M2DetError); ORT's quantizer keeps the raw graph's opset."""
    from modelopt.onnx.quantization import quantize

    if method not in CALIB_METHODS:
        valid = ", ".join(CALIB_METHODS)
        raise M2DetError(f"unknown calibration method {method!r}; valid: {valid}")
    if placement not in PLACEMENTS:
        raise M2DetError(f"unknown Q/DQ placement {placement!r}; valid: {', '.join(PLACEMENTS)}")
    if placement == "onnxruntime":
        return _ort_int8(raw_path, calibration, method)
    if opset is not None and opset < MODELOPT_INT8_MIN_OPSET:
        raise M2DetError(f"ModelOpt writes INT8 Q/DQ at opset >= {MODELOPT_INT8_MIN_OPSET}, "
                         f"not {opset}")  # fmt: skip
    if opset is None:
        raw_opset = next(o.version for o in onnx.load(str(raw_path), load_external_data=False)
                         .opset_import if o.domain in ("", "ai.onnx"))  # fmt: skip
        opset = max(raw_opset, MODELOPT_INT8_MIN_OPSET)
    extra = {"op_types_needing_output_quant": ["Conv"]} if placement == "cpu" else {}
    with tempfile.TemporaryDirectory(prefix="m2det-int8-") as tmp, _modelopt_quiet():
        out = os.path.join(tmp, "int8.onnx")
        cache = None
        if method == "percentile":
            cache = os.path.join(tmp, "percentile.cache")
            write_calibration_cache(cache, percentile_ranges(raw_path, calibration, tmp))
        quantize(
            str(raw_path), quantize_mode="int8", calibration_data={INPUT: calibration},
            calibration_method="entropy" if method == "entropy" else "max",
            calibration_cache_path=cache, calibration_eps=["cpu"],
            nodes_to_exclude=[POSTPROCESS_PATTERN], high_precision_dtype="fp32",
            output_path=out, log_level="ERROR", opset=opset, **extra,
        )  # fmt: skip
        return onnx.load(out)


def _every_node(graph: onnx.GraphProto) -> list[str]:
    """Every node's name and op type: ORT reads ``op_types_to_calibrate`` as op types, ModelOpt's
    patch of ORT (active once ModelOpt has quantized in this process) as node names."""
    return [n.name for n in graph.node] + sorted({n.op_type for n in graph.node})


def _ort_int8(raw_path: str | Path, calibration: np.ndarray, method: str) -> onnx.ModelProto:
    """ONNX Runtime's ``quantize_static``: QDQ, per-channel int8 weights, uint8 asymmetric
    activations; ``method`` maps to ORT's Entropy/MinMax/Percentile. The detection head (its convs
    and the flatten/concat, ``/model/head/*``) is excluded with the post-processing: ORT quantizes
    every quantized op's output, which would put the box offsets and logits through 8 bits before
    the decode and the softmax. :data:`OPENCV_UNSAFE_QUANTIZED_OPS` (the mean subtraction) stay
    float too. Runs in a fresh interpreter (see :func:`_unpatched_ort`)."""
    with tempfile.TemporaryDirectory(prefix="m2det-int8-") as tmp:
        out = os.path.join(tmp, "int8.onnx")
        _unpatched_ort(_ort_quantize_static, str(raw_path), out, calibration, method)
        return onnx.load(out)


def _unpatched_ort(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a spawned interpreter. Once ModelOpt has quantized, it has replaced ONNX
    Runtime's calibrator methods process-wide: histograms are then merged batch by batch and
    widen with every new maximum (to hundreds of thousands of bins per tensor against ORT's 128),
    and ORT's entropy search over them practically never ends. ORT's own recipes must not inherit
    that, whatever ran before them in the caller's process."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def _ort_quantize_static(raw_path: str, out: str, calibration: np.ndarray, method: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(raw_path, load_external_data=False).graph
    keep_float = [n.name for n in graph.node
                  if re.match(POSTPROCESS_PATTERN, n.name) or n.name.startswith("/model/head/")
                  or n.op_type in OPENCV_UNSAFE_QUANTIZED_OPS]
    calibrate = {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax,
                 "percentile": CalibrationMethod.Percentile}[method]  # fmt: skip
    with _quiet_tools():
        quantize_static(
            raw_path, out, _Reader(calibration), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=_every_node(graph), nodes_to_exclude=keep_float,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=calibrate, extra_options={"CalibPercentile": PERCENTILE},
        )  # fmt: skip


def percentile_ranges(raw_path: str | Path, calibration: np.ndarray,
                      workdir: str) -> dict[str, float]:
    """Per-tensor symmetric range (the :data:`PERCENTILE` percentile of |x|) of every float tensor
    the ORT calibrator can observe, over ``calibration`` [N,3,S,S] fed one image at a time (in a
    fresh interpreter, see :func:`_unpatched_ort`)."""
    return _unpatched_ort(_percentile_ranges, str(raw_path), calibration, workdir)


def _percentile_ranges(raw_path: str, calibration: np.ndarray, workdir: str) -> dict[str, float]:
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    graph = onnx.load(raw_path, load_external_data=False).graph
    calibrator = create_calibrator(
        Path(raw_path), _every_node(graph),
        augmented_model_path=os.path.join(workdir, "augmented.onnx"),
        calibrate_method=CalibrationMethod.Percentile,
        extra_options={"percentile": PERCENTILE, "symmetric": True, "num_bins": 2048},
    )  # fmt: skip
    with _quiet_tools():
        calibrator.collect_data(_Reader(calibration))
        ranges = calibrator.compute_data()
    out = {}
    for name, data in ranges.data.items():
        lo, hi = (float(np.asarray(v).max()) for v in data.range_value)
        out[name] = max(abs(lo), abs(hi))
    return out


def write_calibration_cache(path: str, amax: dict[str, float]) -> None:
    """TensorRT calibration-cache text (what ModelOpt imports): ``name: <scale as big-endian
    float32 hex>`` per tensor, scale = amax / 127."""
    lines = ["TRT-8600-EntropyCalibration2"]
    for name, a in amax.items():
        scale = max(a, 1e-8) / 127.0
        lines.append(f"{name}: {struct.pack('!f', scale).hex()}")
    Path(path).write_text("\n".join(lines) + "\n")


class _Reader:
    """ORT CalibrationDataReader over an array of images, one image per step."""

    def __init__(self, images: np.ndarray) -> None:
        self._it = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {INPUT: x[None]}


def count_qdq(model: onnx.ModelProto) -> tuple[int, int]:
    """(QuantizeLinear, DequantizeLinear) node counts."""
    ops = [n.op_type for n in model.graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")
