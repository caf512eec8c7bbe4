"""The raw ONNX graph (design §2): ``images`` [B,3,S,S] float32 BGR 0-255 -> ``boxes`` [B,A,4]
(decoded, normalized x1,y1,x2,y2) and ``scores`` [B,A,C] (softmax, background dropped).

Exported with the TorchScript exporter (``dynamo=False``) at opset 17, then simplified with
onnxslim. The dynamo exporter gives a graph of the same ops (224 vs 242 nodes after onnxslim for
``m2det_tiny``; the extra nodes are the Shape/Gather of the dynamic batch) but takes 5-10x longer
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import m2det
from m2det.config import M2DetConfig
from m2det.errors import M2DetError
from m2det.io import atomic_write_bytes
from m2det.model import M2DetInference

INPUT = "images"
RAW_OUTPUTS = ("boxes", "scores")
OPSET = 17
POSTPROCESS_PREFIX = "/postprocess/"
#: Regex (ModelOpt's ``nodes_to_exclude`` syntax) matching every post-processing node.
POSTPROCESS_PATTERN = r"^/postprocess/.*"
#: Metadata keys every exported file carries (values are strings; JSON where structured).
META_PREFIX = "m2det."


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
    with torch.no_grad():
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
    want = {INPUT: [b, 3, cfg.input_size, cfg.input_size], "boxes": [b, a, 4], "scores": [b, a, c]}
    for t in [*model.graph.input, *model.graph.output]:
        if t.name in want:
            _dims(t, want[t.name])


def set_metadata(model: onnx.ModelProto, config: M2DetConfig, precision: str, graph: str,
                 batch: int | None, extra: dict[str, Any] | None = None) -> None:
    """Record what a runner needs to use the file without the checkpoint (``m2det.*`` keys):
    ``config`` (the full config JSON), ``config_name``, input size, class names, precision
    (fp32|fp16|int8), graph kind (raw|nms-plugin|nms-onnx), batch (an int or "dynamic"),
    project version; ``extra`` adds more (e.g. ``nms`` attributes), JSON-encoded unless a str."""
    values: dict[str, Any] = {
        "config": json.dumps(config.to_dict()), "config_name": config.name,
        "input_size": str(config.input_size), "classes": json.dumps(list(config.labels)),
        "precision": precision, "graph": graph, "batch": str(batch) if batch else "dynamic",
        "version": m2det.__version__, **(extra or {}),
    }  # fmt: skip
    props = {p.key: p.value for p in model.metadata_props}
    props.update({META_PREFIX + k: v if isinstance(v, str) else json.dumps(v)
                  for k, v in values.items()})  # fmt: skip
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    model.producer_name, model.producer_version = "m2det-export", m2det.__version__


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The ``m2det.*`` metadata of a model, keys without the prefix."""
    return {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props
            if p.key.startswith(META_PREFIX)}  # fmt: skip


def config_from_metadata(meta: dict[str, str], source: str) -> M2DetConfig:
    """The M2DetConfig recorded in a file's metadata (:func:`read_metadata`)."""
    if "config" not in meta:
        raise M2DetError(f"{source} has no m2det metadata (not written by m2det-export)")
    try:
        return M2DetConfig.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError):
        raise M2DetError(f"{source}: metadata m2det.config is not a config JSON") from None


def check_model(model: onnx.ModelProto) -> None:
    """ONNX checker (full check) and strict shape inference; any failure is a bug in the export."""
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def save_model(model: onnx.ModelProto, path: str | Path) -> int:
    """Write ``model`` atomically; returns the file size in bytes."""
    data = model.SerializeToString()
    atomic_write_bytes(path, data)
    return len(data)


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


def compare_onnx(path: str | Path, reference: str | Path, inputs: list[np.ndarray]) -> Parity:
    """Raw-graph outputs of ``path`` (e.g. the FP16/INT8 file) against ``reference`` (FP32), both
    in ORT (CPU), one call per array of ``inputs`` ([B,3,S,S] each)."""
    a, b = ort_session(path), ort_session(reference)
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
    bx, sc = np.concatenate(diffs["boxes"]), np.concatenate(diffs["scores"])
    return Parity(float(bx.max()), float(bx.mean()), float(sc.max()), float(sc.mean()), worst,
                  batches)
