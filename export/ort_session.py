"""An ONNX Runtime ``InferenceSession`` for an exported file, with the knobs the project uses
(threads, providers, graph-optimization level) and one-line errors for unusable files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m2det.errors import M2DetError


def ort_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                optimization: str = "all") -> Any:
    """An onnxruntime InferenceSession (CPU unless ``providers`` says otherwise)."""
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
    try:
        return ort.InferenceSession(str(path), opts,
                                    providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises plain RuntimeErrors for unusable files
        raise M2DetError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0]}") from None
