"""The raw ONNX graph (docs/design.md §2): ``images`` [B,3,S,S] float32 BGR 0-255 -> ``boxes``
[B,A,4] (decoded, normalized x1,y1,x2,y2) and ``scores`` [B,A,C] (softmax, background dropped).

Exported with the TorchScript exporter (``dynamo=False``) at opset 17, then simplified with
onnxslim. The dynamo exporter gives a graph of the same ops (224 vs 242 nodes after onnxslim for
``m2det_tiny``; the extra nodes are the Shape/Gather of the dynamic batch) but is much slower
and needs opset 18 (no Resize adapter down to 17); the TorchScript graph names every node after
its module scope, which is what lets the precision passes find the post-processing (below).

Post-processing nodes (the prior decode and the softmax, everything ``M2DetInference.forward``
adds on top of the network) are renamed ``/postprocess/<op>`` so the FP16 and INT8 passes can keep
them in FP32 by name (:data:`POSTPROCESS_PATTERN`). Priors are constants (initializers).
"""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

import m2det
from m2det import contract
from m2det.config import M2DetConfig
from m2det.errors import M2DetError
from m2det.io import atomic_write_bytes
from m2det.model import M2DetInference

INPUT, RAW_OUTPUTS = contract.INPUT, contract.RAW_OUTPUTS
#: Default opset of every file except ModelOpt's INT8 ones (:data:`MODELOPT_INT8_MIN_OPSET`).
OPSET = 17
#: Highest opset the TorchScript exporter supports (torch 2.13 warns "not supported" above it).
MAX_OPSET = 20
#: ModelOpt writes INT8 Q/DQ at opset >= 19 (it raises a lower target to 19).
MODELOPT_INT8_MIN_OPSET = 19
POSTPROCESS_PREFIX = "/postprocess/"
#: Regex (ModelOpt's ``nodes_to_exclude`` syntax) matching every post-processing node.
POSTPROCESS_PATTERN = r"^/postprocess/.*"


def export_raw(module: M2DetInference, batch: int | None = None,
               opset: int = OPSET) -> onnx.ModelProto:
    """Trace ``module`` to the raw graph; ``batch`` None = dynamic batch dimension ``batch``.

    Returns the simplified, shape-annotated model (not yet checked or saved)."""
    import onnxslim

    cfg = module.model.config
    size = cfg.input_size
    example = torch.rand(batch or 2, 3, size, size) * 255.0
    dynamic = None if batch else {name: {0: "batch"} for name in (INPUT, *RAW_OUTPUTS)}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (dynamo=False): the /postprocess/* node
        # names that keep the decode in FP32 come from its scope naming. Its deprecation notices
        # (one per call, and one from its internals) are about that choice, not the user's.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export",
                                DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                module=r"torch\.onnx\._internal\.torchscript_exporter")
        torch.onnx.export(module.eval(), (example,), buf,  # type: ignore[arg-type]
                          dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=list(RAW_OUTPUTS), dynamic_axes=dynamic,
                          do_constant_folding=True)
    model = onnxslim.slim(onnx.load_from_string(buf.getvalue()))
    tag_postprocess(model)
    _set_io_shapes(model, batch, cfg)
    return model


def tag_postprocess(model: onnx.ModelProto) -> int:
    """Rename the nodes traced at the root scope of ``M2DetInference.forward`` (TorchScript names
    them ``/Op`` or ``/Op_N``; the network's nodes are ``/model/...``) to ``/postprocess/Op...``.
    Returns how many were tagged; a graph without the decode's Exp and the Softmax is a bug."""
    root = re.compile(r"^/([A-Za-z]+(?:_\d+)?)$")
    tagged = []
    for node in model.graph.node:
        m = root.match(node.name)
        if m:
            node.name = POSTPROCESS_PREFIX + m.group(1)
            tagged.append(node.op_type)
    missing = {"Exp", "Softmax"} - set(tagged)
    if missing:
        raise RuntimeError(f"post-processing nodes not found in the exported graph: {missing}")
    return len(tagged)


def postprocess_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the post-processing (decode + softmax) nodes."""
    return [n.name for n in model.graph.node if n.name.startswith(POSTPROCESS_PREFIX)]


def _dims(t: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    shape = t.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def _set_io_shapes(model: onnx.ModelProto, batch: int | None, cfg: M2DetConfig) -> None:
    b: int | str = batch or "batch"
    a, c = cfg.num_priors, cfg.num_classes - 1
    boxes, scores = RAW_OUTPUTS
    want = {INPUT: [b, 3, cfg.input_size, cfg.input_size], boxes: [b, a, 4], scores: [b, a, c]}
    for t in [*model.graph.input, *model.graph.output]:
        if t.name in want:
            _dims(t, want[t.name])


def set_metadata(model: onnx.ModelProto, config: M2DetConfig, precision: str, graph: str,
                 batch: int | None, extra: dict[str, Any] | None = None) -> None:
    """Record what a runner needs to use the file without the checkpoint (``m2det.*`` keys of
    ``m2det.contract``): the full config JSON, its name, input size, class names, precision (one
    of ``contract.PRECISIONS``), graph kind (one of ``contract.GRAPH_KINDS``), batch (an int or
    "dynamic"), project version; ``extra`` adds more (e.g. ``contract.META_NMS`` attributes),
    JSON-encoded unless a str."""
    if precision not in contract.PRECISIONS or graph not in contract.GRAPH_KINDS:
        raise ValueError(f"unknown precision {precision!r} or graph kind {graph!r}")
    values: dict[str, Any] = {
        contract.META_CONFIG: json.dumps(config.to_dict()),
        contract.META_CONFIG_NAME: config.name,
        contract.META_INPUT_SIZE: str(config.input_size),
        contract.META_CLASSES: json.dumps(list(config.labels)),
        contract.META_PRECISION: precision,
        contract.META_GRAPH: graph,
        contract.META_BATCH: str(batch) if batch else "dynamic",
        contract.META_VERSION: m2det.__version__,
        **(extra or {}),
    }
    props = {p.key: p.value for p in model.metadata_props}
    props.update({contract.META_PREFIX + k: v if isinstance(v, str) else json.dumps(v)
                  for k, v in values.items()})  # fmt: skip
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    model.producer_name, model.producer_version = "m2det-export", m2det.__version__


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The ``m2det.*`` metadata of a model, keys without the prefix."""
    prefix = contract.META_PREFIX
    return {p.key[len(prefix):]: p.value for p in model.metadata_props
            if p.key.startswith(prefix)}  # fmt: skip


def config_from_metadata(meta: dict[str, str], source: str) -> M2DetConfig:
    """The M2DetConfig recorded in a file's metadata (:func:`read_metadata`)."""
    key = contract.META_CONFIG
    if key not in meta:
        raise M2DetError(f"{source} has no m2det metadata (not written by m2det-export)")
    try:
        return M2DetConfig.from_dict(json.loads(meta[key]))
    except (ValueError, TypeError):
        raise M2DetError(f"{source}: metadata {contract.META_PREFIX}{key} is not a config "
                         "JSON") from None


def check_model(model: onnx.ModelProto) -> None:
    """ONNX checker (full check), strict shape inference and no unused initializer (ONNX Runtime
    warns about each one on every load); any failure is a bug in the export."""
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    unused = unused_initializers(model)
    if unused:
        raise RuntimeError(f"initializers no node reads: {unused[:5]} ({len(unused)} in all)")


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of ``graph`` (or of a subgraph of one) reads, plus its outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _names_read(sub)
    return names


def unused_initializers(model: onnx.ModelProto) -> list[str]:
    """Names of the initializers that no node reads (nor any graph output is)."""
    read = _names_read(model.graph)
    return [t.name for t in model.graph.initializer if t.name not in read]


def prune_unused_initializers(model: onnx.ModelProto) -> list[str]:
    """Drop the initializers no node reads (in place; also from the graph inputs, where an old
    IR lists them); returns their names."""
    dead = set(unused_initializers(model))
    if dead:
        graph = model.graph
        for field in (graph.initializer, graph.input):
            keep = [t for t in field if t.name not in dead]
            del field[:]
            field.extend(keep)  # type: ignore[attr-defined]
    return sorted(dead)


def save_model(model: onnx.ModelProto, path: str | Path) -> int:
    """Write ``model`` atomically; returns the file size in bytes."""
    data = model.SerializeToString()
    atomic_write_bytes(path, data)
    return len(data)
