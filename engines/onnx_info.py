"""What the builder and the TensorRT runner need to know about an exported M2Det ONNX file: its
metadata (``m2det.contract`` keys), input, outputs and NMS node."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2det import contract
from m2det.config import M2DetConfig, get_config
from m2det.errors import M2DetError


@dataclass(frozen=True)
class OnnxInfo:
    """What the builder needs to know about an exported ONNX file.

    ``batch_dim``: the input's batch dimension (None when dynamic); ``graph``: one of
    ``contract.GRAPH_KINDS`` (raw boxes/scores, or EfficientNMS-style outputs from the plugin node
    or from ONNX NMS ops); ``nms``: the NMS attributes (plugin node, else metadata), None for a
    raw graph or when unknown; ``plugin``: whether the graph has the soft-NMS plugin node.
    """

    path: Path
    sha256: str
    config: dict[str, Any]
    precision: str
    input_size: int
    batch_dim: int | None
    outputs: tuple[str, ...]
    graph: str
    nms: dict[str, Any] | None
    plugin: bool


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (recorded in the sidecar: which ONNX file a plan came from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _meta_key(name: str) -> str:
    return contract.META_PREFIX + name


def inspect_onnx(path: str | Path) -> OnnxInfo:
    """Read an exported M2Det ONNX file's metadata, input and NMS node; M2DetError (one line)
    for a missing/unreadable file or an ONNX file that ``m2det-export`` did not write."""
    import onnx
    from onnx import helper

    path = Path(path)
    if not path.is_file():
        raise M2DetError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad file
        raise M2DetError(f"{path} is not a readable ONNX file ({type(e).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    config_key = _meta_key(contract.META_CONFIG)
    if config_key not in meta:
        raise M2DetError(f"{path} is not an M2Det export (no {config_key!r} metadata); "
                         "export it with m2det-export")  # fmt: skip
    try:
        config = json.loads(meta[config_key])
        size = int(config["input_size"])
    except (ValueError, KeyError, TypeError):
        raise M2DetError(f"{path}: metadata {config_key!r} is not a config JSON") from None
    precision = meta.get(_meta_key(contract.META_PRECISION), "fp32")
    if precision not in contract.PRECISIONS:
        raise M2DetError(f"{path}: unknown precision {precision!r} in metadata")

    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if [v.name for v in inputs] != [contract.INPUT]:
        raise M2DetError(f"{path}: expected one input {contract.INPUT!r}, got "
                         f"{[v.name for v in inputs]}; not an M2Det export")  # fmt: skip
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != 4 or shape[1:] != [3, size, size]:
        raise M2DetError(f"{path}: input {contract.INPUT!r} has shape {shape}, expected "
                         f"[B,3,{size},{size}]")  # fmt: skip
    outputs = tuple(o.name for o in model.graph.output)
    if set(outputs) not in (set(contract.RAW_OUTPUTS), set(contract.NMS_OUTPUTS)):
        raise M2DetError(f"{path}: outputs {list(outputs)} are neither "
                         f"{list(contract.RAW_OUTPUTS)} nor {list(contract.NMS_OUTPUTS)}; "
                         "not an M2Det export")  # fmt: skip
    plugin = next((n for n in model.graph.node if n.op_type == contract.PLUGIN_NAME), None)
    nms: dict[str, Any] | None = None
    if plugin is not None:
        nms = {a.name: _plain(helper.get_attribute_value(a)) for a in plugin.attribute
               if not a.name.startswith("plugin_")}  # fmt: skip
    elif _meta_key(contract.META_NMS) in meta:
        nms = json.loads(meta[_meta_key(contract.META_NMS)])
    if set(outputs) == set(contract.RAW_OUTPUTS):
        graph, nms = contract.GRAPH_RAW, None
    else:
        graph = contract.GRAPH_NMS_PLUGIN if plugin is not None else contract.GRAPH_NMS_ONNX
    return OnnxInfo(path, file_sha256(path), config, precision, size, shape[0], outputs, graph,
                    nms, plugin is not None)


def _plain(value: Any) -> Any:
    """ONNX attribute value -> JSON-able (bytes -> str, repeated -> list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class GraphFacts:
    """What an M2Det ONNX graph says about itself without its metadata (which tools such as
    ``polygraphy surgeon sanitize`` drop): ``input_size`` S and ``batch_dim`` (None: dynamic) of
    ``images`` [B,3,S,S]; ``graph`` kind from the outputs (None when neither raw nor NMS);
    ``num_classes``: foreground classes C of a raw graph's ``scores`` [B,A,C] (None for NMS
    graphs); ``precision`` guessed from the ops (QuantizeLinear: int8, any float16 tensor: fp16);
    ``nms``: what an ONNX NMS graph's constants fix (score/IoU thresholds, keep per class,
    candidates per class, K)."""

    input_size: int | None
    batch_dim: int | None
    outputs: tuple[str, ...]
    graph: str | None
    num_classes: int | None
    precision: str
    nms: dict[str, Any] | None


def _shape(value: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim]  # fmt: skip


def graph_facts(model: Any) -> GraphFacts:
    """Read :class:`GraphFacts` from an ``onnx.ModelProto`` (its graph only, never metadata)."""
    from onnx import TensorProto

    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    shape = _shape(inputs[0]) if [v.name for v in inputs] == [contract.INPUT] else []
    size = None
    if len(shape) == 4 and shape[1] == 3 and shape[2] and shape[2] == shape[3]:
        size = shape[2]
    outputs = tuple(o.name for o in graph.output)
    ops = {n.op_type for n in graph.node}
    kind = None
    if outputs == contract.RAW_OUTPUTS:
        kind = contract.GRAPH_RAW
    elif outputs == contract.NMS_OUTPUTS:
        kind = (contract.GRAPH_NMS_PLUGIN if contract.PLUGIN_NAME in ops
                else contract.GRAPH_NMS_ONNX)  # fmt: skip
    classes = None
    if kind == contract.GRAPH_RAW:
        scores = _shape(graph.output[1])
        classes = scores[2] if len(scores) == 3 else None
    half = TensorProto.FLOAT16
    fp16 = any(t.data_type == half for t in graph.initializer) or any(
        v.type.tensor_type.elem_type == half for v in graph.value_info)
    precision = "int8" if "QuantizeLinear" in ops else "fp16" if fp16 else "fp32"
    nms = _onnx_nms_constants(model) if kind == contract.GRAPH_NMS_ONNX else None
    return GraphFacts(size, shape[0] if shape else None, outputs, kind, classes, precision, nms)


def _onnx_nms_constants(model: Any) -> dict[str, Any] | None:
    """score_threshold, iou_threshold, keep_per_class of the NonMaxSuppression node, the first
    TopK's k (max_candidates) and K (max_detections) of an ONNX NMS graph; None if absent."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nms = next((n for n in graph.node if n.op_type == "NonMaxSuppression"), None)
    topk = next((n for n in graph.node if n.op_type == "TopK"), None)
    if nms is None or len(nms.input) < 5 or not all(i in consts for i in nms.input[2:5]):
        return None

    def scalar(name: str) -> Any:
        return consts[name].reshape(-1)[0]

    def f32(name: str) -> float:  # the float32 in the graph, as its shortest decimal
        return float(str(np.float32(scalar(name))))

    out = {"keep_per_class": int(scalar(nms.input[2])), "iou_threshold": f32(nms.input[3]),
           "score_threshold": f32(nms.input[4])}  # fmt: skip
    if topk is not None and topk.input[1] in consts:
        out["max_candidates"] = int(scalar(topk.input[1]))
    k = _shape(graph.output[2])
    if len(k) == 2 and k[1]:
        out["max_detections"] = k[1]
    return out


def config_for_stripped(path: Path, facts: GraphFacts,
                         config: M2DetConfig | str | None) -> M2DetConfig:
    """The config of a file without ``m2det.*`` metadata: ``config`` (a preset), checked against
    what the graph says; a one-line M2DetError naming the missing piece otherwise."""
    if facts.input_size is None or facts.graph is None:
        raise M2DetError(f"{path.name} has no m2det metadata and its graph is not an M2Det export "
                         f"(input {contract.INPUT!r} [B,3,S,S] -> {list(contract.RAW_OUTPUTS)} or "
                         f"{list(contract.NMS_OUTPUTS)}); got outputs {list(facts.outputs)}")
    classes = "" if facts.num_classes is None else f", {facts.num_classes} classes"
    if config is None:
        raise M2DetError(f"{path.name} has no m2det metadata (a tool such as polygraphy surgeon "
                         f"sanitize dropped it): pass --config NAME, the preset it was exported "
                         f"from (its graph gives input {facts.input_size}x{facts.input_size}"
                         f"{classes})")  # fmt: skip
    cfg = get_config(config) if isinstance(config, str) else config
    if cfg.input_size != facts.input_size:
        raise M2DetError(f"{path.name} takes {facts.input_size}x{facts.input_size} images, config "
                         f"{cfg.name!r} {cfg.input_size}x{cfg.input_size}")  # fmt: skip
    if facts.num_classes is not None and facts.num_classes != cfg.num_classes - 1:
        raise M2DetError(f"{path.name} scores {facts.num_classes} classes, config {cfg.name!r} "
                         f"{cfg.num_classes - 1}")  # fmt: skip
    return cfg
