"""What a Triton model repository needs to know about the artifact it serves: an exported ONNX file
(its ``m2det.*`` metadata) or a TensorRT plan (its ``<plan>.json`` sidecar)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2det import contract
from m2det.errors import M2DetError

ONNX, PLAN = "onnx", "plan"


@dataclass(frozen=True)
class Artifact:
    """An ONNX file or plan, described for serving.

    ``config``: the M2DetConfig dict it was exported from; ``graph``: a ``contract.GRAPH_KINDS``
    value; ``anchors`` A and ``classes`` C: the raw outputs' [A,4] / [A,C]; ``keep`` K: an NMS
    graph's detections per image (-1 for raw graphs); ``nms``: the NMS an NMS graph runs (None
    for raw graphs); ``batch``: (min, opt, max) batch it runs, max None when unbounded;
    ``tensorrt``: a plan's sidecar (TensorRT version, plugin, version compatibility), else None.
    """

    kind: str
    path: Path
    sha256: str
    config: dict[str, Any]
    input_size: int
    precision: str
    graph: str
    anchors: int
    classes: int
    keep: int
    nms: dict[str, Any] | None
    batch: tuple[int, int, int | None]
    tensorrt: dict[str, Any] | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        from m2det.config import M2DetConfig

        return M2DetConfig.from_dict(self.config).labels


def _outputs_of(config: dict[str, Any]) -> tuple[int, int]:
    """(A priors, C foreground classes) of a config dict."""
    from m2det.config import M2DetConfig
    from m2det.priors import make_priors

    cfg = M2DetConfig.from_dict(config)
    return int(make_priors(cfg).shape[0]), cfg.num_classes - 1


def _keep(graph: str, nms: dict[str, Any] | None, source: str) -> int:
    if graph == contract.GRAPH_RAW:
        return -1
    k = int((nms or {}).get("max_detections", 0))
    if k < 1:
        raise M2DetError(f"{source}: NMS graph without a fixed max_detections (K) in its metadata")
    return k


def describe_onnx(path: str | Path) -> Artifact:
    """An exported ONNX file; M2DetError for a file ``m2det-export`` did not write, a TensorRT
    plugin graph (ONNX Runtime cannot run it) or a fixed batch other than 1."""
    from m2det.engines.onnx_info import inspect_onnx

    info = inspect_onnx(path)
    if info.plugin:
        raise M2DetError(f"{info.path.name} contains the TensorRT plugin op {contract.PLUGIN_NAME}"
                         ", which ONNX Runtime cannot run: build a plan (m2det-build) and pass "
                         "--engine, or export with --nms-graph none or onnx-hard")  # fmt: skip
    if info.batch_dim not in (None, 1):
        raise M2DetError(f"{info.path.name} has a fixed batch of {info.batch_dim}; Triton batches "
                         "requests from 1 up: export with --dynamic (or --batch 1)")
    anchors, classes = _outputs_of(info.config)
    max_batch = 1 if info.batch_dim == 1 else None
    return Artifact(ONNX, info.path, info.sha256, info.config, info.input_size, info.precision,
                    info.graph, anchors, classes, _keep(info.graph, info.nms, str(info.path)),
                    info.nms, (1, 1, max_batch))  # fmt: skip


def describe_plan(path: str | Path) -> Artifact:
    """A TensorRT plan with its sidecar (``m2det-build`` writes both)."""
    from m2det.engines.onnx_info import file_sha256
    from m2det.engines.plan_sidecar import read_sidecar

    path = Path(path)
    if not path.is_file():
        raise M2DetError(f"plan not found: {path}")
    meta = read_sidecar(path)
    try:
        config = meta["config"]
        size = int(meta["input_size"])
        graph = meta["graph"]
        profile = meta["batch"]
        batch = (int(profile["min"]), int(profile["opt"]), int(profile["max"]))
    except (KeyError, TypeError, ValueError) as e:
        raise M2DetError(f"{path}: plan sidecar lacks {e} (rebuild with m2det-build)") from None
    if graph not in contract.GRAPH_KINDS:
        raise M2DetError(f"{path}: unknown graph kind {graph!r} in the sidecar")
    anchors, classes = _outputs_of(config)
    trt = {"tensorrt_version": meta.get("tensorrt_version"),
           "version_compatible": bool(meta.get("version_compatible")),
           "plugin": meta.get("plugin"), "gpu": meta.get("gpu")}  # fmt: skip
    return Artifact(PLAN, path, file_sha256(path), config, size, meta.get("precision", "fp32"),
                    graph, anchors, classes, _keep(graph, meta.get("nms"), str(path)),
                    meta.get("nms"), batch, trt)  # fmt: skip
