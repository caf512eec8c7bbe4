"""An ONNX Runtime ``InferenceSession`` for an exported file, with the knobs the project uses
(threads, providers, graph-optimization level, optimizers turned off) and one-line errors for
unusable files.

Every session turns off ONNX Runtime's ``WeightBiasQuantization`` graph transformer by default
(:data:`SPEC_DISABLED_OPTIMIZERS`). On a Q/DQ file whose Conv biases are float (ModelOpt's INT8
files) it rounds each bias to an int32 on the grid ``x_scale * w_scale`` before the Conv, which
the ONNX graph does not say and TensorRT does not do (TensorRT runs DQ -> Conv as an INT8
convolution with exact int32 accumulation and adds the float bias in its FP32 epilogue). On
``m2det_tiny`` that rounding alone moved the INT8 scores by up to 0.08 (``tensorrt`` placement) and
0.22 (``cpu``) against ``ORT_DISABLE_ALL``; with only this transformer off, every other level-1..3
optimization stays on and the scores equal ``ORT_DISABLE_ALL``'s bit for bit (export/README.md).
It is a no-op on files whose biases are already int32 (ONNX Runtime's own quantizer) or float
graphs. Pass ``disabled_optimizers=()`` to get ONNX Runtime's full defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from m2det.errors import M2DetError

#: ORT graph transformers every session turns off unless told otherwise (see the module doc).
SPEC_DISABLED_OPTIMIZERS: tuple[str, ...] = ("WeightBiasQuantization",)
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def ort_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                optimization: str = "all",
                disabled_optimizers: Sequence[str] = SPEC_DISABLED_OPTIMIZERS) -> Any:
    """An onnxruntime InferenceSession (CPU unless ``providers`` says otherwise); ``optimization``
    one of :data:`OPTIMIZATION_LEVELS`, ``disabled_optimizers`` ORT transformer names."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    kwargs = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    try:
        return ort.InferenceSession(str(path), opts,
                                    providers=providers or ["CPUExecutionProvider"], **kwargs)
    except Exception as e:  # noqa: BLE001 - ORT raises plain RuntimeErrors for unusable files
        raise M2DetError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0]}") from None
