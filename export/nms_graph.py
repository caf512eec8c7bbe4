"""End-to-end graphs: the raw graph's ``boxes`` [B,A,4] / ``scores`` [B,A,C] followed by NMS, with
TensorRT EfficientNMS-style outputs ``num_detections`` [B,1] int32, ``detection_boxes`` [B,K,4]
float32, ``detection_scores`` [B,K] float32, ``detection_classes`` [B,K] int32 (K =
``max_detections``; entries past ``num_detections`` are zero).

Two kinds:

* **plugin** (:func:`add_plugin_nms`): one node ``M2Det_SoftNMS_TRT`` in the domain
  ``contract.PLUGIN_DOMAIN`` ("m2det", declared in ``opset_import``), attributes the 8
  :meth:`NMSParams.attributes` plus ``plugin_version`` "1" and ``plugin_namespace`` "". An op of a
  custom domain with no registered schema passes ``onnx.checker`` (full check) in any process; one
  in the default domain fails everywhere but here. TensorRT's ONNX parser dispatches a node it has
  no importer for to its plugin fallback by op type alone and looks the plugin up by op type,
  ``plugin_version`` and ``plugin_namespace`` (newer parsers then retry with the domain as the
  namespace); export/README.md cites the importer code. ONNX Runtime cannot run it. The schema is
  also registered with ``onnx.defs`` in this process, so the exporter's own check validates the
  node's inputs, outputs and attribute types.
* **onnx-hard** (:func:`add_onnx_hard_nms`): standard ONNX ops (TopK, NonMaxSuppression, ScatterND,
  GatherElements; TensorRT maps NonMaxSuppression to its built-in NMS layer); runs anywhere.
  Exactly the reference hard NMS (``m2det.nms``, method 0) including ``max_candidates`` (a per
  class TopK before NMS), ``keep_per_class`` (NMS ``max_output_boxes_per_class``) and the merge
  order (score desc, then class, then anchor: one TopK over the class-major candidate list, whose
  ties go to the lower index). Differences, all outside normal inputs:
  - ``min_score`` is not applied: in hard NMS a weight is 0 or 1, so a candidate only falls below
    ``min_score`` when it already started below it, i.e. only when ``score_threshold <
    min_score``. Export refuses that combination.
  - ONNX NMS treats a box pair with zero area or zero union as not overlapping (the reference: IoU
    0, the same) but normalizes flipped corners (x1 > x2) where the reference computes a
    negative area; the decode never produces flipped boxes.
  - K is fixed in the graph, so ``max_detections`` 0 (no cap) is not possible: pass ``--max-det``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.defs import OpSchema

from m2det.contract import (
    MAX_CANDIDATES,
    NMS_OUTPUTS,
    PLUGIN_DOMAIN,
    PLUGIN_DOMAIN_VERSION,
    PLUGIN_FLOAT_ATTRIBUTES,
    PLUGIN_INT_ATTRIBUTES,
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    RAW_OUTPUTS,
)
from m2det.errors import M2DetError
from m2det.nms import Method, NMSParams


def _register_plugin_schema() -> None:
    if onnx.defs.has(PLUGIN_NAME, PLUGIN_DOMAIN):
        return
    A = OpSchema.AttrType  # noqa: N806
    attrs = [OpSchema.Attribute(n, A.FLOAT, n) for n in PLUGIN_FLOAT_ATTRIBUTES]
    attrs += [OpSchema.Attribute(n, A.INT, n) for n in PLUGIN_INT_ATTRIBUTES]
    attrs += [OpSchema.Attribute(n, A.STRING, n) for n in ("plugin_version", "plugin_namespace")]
    P = OpSchema.FormalParameter  # noqa: N806
    onnx.defs.register_schema(OpSchema(
        PLUGIN_NAME, PLUGIN_DOMAIN, PLUGIN_DOMAIN_VERSION,
        doc="M2Det soft-NMS TensorRT plugin (plugins/soft_nms)",
        inputs=[P(RAW_OUTPUTS[0], "tensor(float)"), P(RAW_OUTPUTS[1], "S")],
        outputs=[P(name, f"tensor({kind})") for name, kind in zip(
            NMS_OUTPUTS, ("int32", "float", "float", "int32"), strict=True)],
        type_constraints=[("S", ["tensor(float)", "tensor(float16)"], "scores type")],
        attributes=attrs,
    ))  # fmt: skip


_register_plugin_schema()


def graph_k(params: NMSParams) -> int:
    """K of the NMS graph outputs; a graph needs a fixed cap."""
    if params.max_detections < 1:
        raise M2DetError("an NMS graph needs a fixed number of detections: pass --max-det K (>= 1)")
    return params.max_detections


def _raw_dims(model: onnx.ModelProto) -> tuple[onnx.TensorShapeProto.Dimension, int, int]:
    """(batch dim, A, C) from the raw graph's outputs."""
    outs = {o.name: o for o in model.graph.output}
    if tuple(outs) != RAW_OUTPUTS:
        raise M2DetError(f"expected a raw graph with outputs {RAW_OUTPUTS}, got {tuple(outs)}")
    dims = outs[RAW_OUTPUTS[1]].type.tensor_type.shape.dim
    return dims[0], dims[1].dim_value, dims[2].dim_value


def _replace_outputs(model: onnx.ModelProto, nodes: list[onnx.NodeProto], k: int,
                     initializers: list[onnx.TensorProto] | None = None) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    batch, _, _ = _raw_dims(model)
    b: int | str = batch.dim_value or batch.dim_param
    del out.graph.output[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(initializers or [])
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    out.graph.output.extend([
        helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in zip(
            NMS_OUTPUTS, (i32, f32, f32, i32), ([b, 1], [b, k, 4], [b, k], [b, k]), strict=True)
    ])  # fmt: skip
    return out


def add_plugin_nms(raw: onnx.ModelProto, params: NMSParams) -> onnx.ModelProto:
    """Raw graph -> raw graph + one ``M2Det_SoftNMS_TRT`` node (any method)."""
    k = graph_k(params)
    if params.max_candidates > MAX_CANDIDATES:
        raise M2DetError(f"the plugin keeps at most {MAX_CANDIDATES} candidates per class; "
                         f"got max_candidates {params.max_candidates}")  # fmt: skip
    attrs: dict[str, Any] = {**params.attributes(), "plugin_version": PLUGIN_VERSION,
                             "plugin_namespace": PLUGIN_NAMESPACE}  # fmt: skip
    node = helper.make_node(PLUGIN_NAME, list(RAW_OUTPUTS), list(NMS_OUTPUTS),
                            name="/nms/" + PLUGIN_NAME, domain=PLUGIN_DOMAIN, **attrs)
    model = _replace_outputs(raw, [node], k)
    if not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, PLUGIN_DOMAIN_VERSION))
    return model


def add_onnx_hard_nms(raw: onnx.ModelProto, params: NMSParams) -> onnx.ModelProto:
    """Raw graph -> raw graph + hard NMS in standard ONNX ops (see the module docstring)."""
    if params.method != Method.HARD:
        raise M2DetError("the ONNX NonMaxSuppression graph is hard NMS only (method 0)")
    if params.score_threshold < params.min_score:
        raise M2DetError(f"onnx-hard NMS needs score_threshold >= min_score "
                         f"({params.score_threshold} < {params.min_score})")  # fmt: skip
    k = graph_k(params)
    _, a, c = _raw_dims(raw)
    kc = min(params.max_candidates, a)  # candidates per class
    keep = params.keep_per_class if params.keep_per_class > 0 else kc
    kt = min(k, c * kc)  # the final TopK; padded to K below when the graph has fewer slots
    consts: dict[str, np.ndarray] = {
        "kc": np.array([kc], np.int64), "kt": np.array([kt], np.int64),
        "shape_bc_kc_4": np.array([-1, kc, 4], np.int64),
        "shape_bc_1_kc": np.array([-1, 1, kc], np.int64),
        "shape_bc_kc": np.array([-1, kc], np.int64), "shape_b_m": np.array([-1, c * kc], np.int64),
        "expand_4": np.array([1, 1, 4], np.int64), "axis2": np.array([2], np.int64),
        "axis1": np.array([1], np.int64), "col0": np.array([0], np.int64),
        "col2": np.array([2], np.int64), "minus_one": np.array(-1.0, np.float32),
        "zero": np.array(0.0, np.float32), "half_neg": np.array(-0.5, np.float32),
        "max_out": np.array([keep], np.int64),
        "iou": np.array([params.iou_threshold], np.float32),
        "score_thr": np.array([params.score_threshold], np.float32),
        "kc_i": np.array(kc, np.int64), "zero_i": np.array(0, np.int32),
        "pad": np.array([0, 0, 0, k - kt], np.int64),
        "pad3": np.array([0, 0, 0, 0, k - kt, 0], np.int64),
    }  # fmt: skip
    inits = [numpy_helper.from_array(v, "/nms/" + n) for n, v in consts.items()]
    C = {n: "/nms/" + n for n in consts}  # noqa: N806
    nodes: list[onnx.NodeProto] = []

    def op(kind: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        name = f"/nms/{kind}_{len(nodes)}"
        outs = [f"{name}_out{i}" for i in range(n_out)]
        nodes.append(helper.make_node(kind, inputs, outs, name=name, **attrs))
        return outs

    boxes, scores = RAW_OUTPUTS
    # 1. per-class candidates: TopK over anchors ([B,C,kc]; ties: lower anchor first)
    (st,) = op("Transpose", [scores], perm=[0, 2, 1])
    cand_s, cand_i = op("TopK", [st, C["kc"]], 2, axis=2, largest=1, sorted=1)
    (flat_i,) = op("Reshape", [cand_i, C["shape_b_m"]])  # [B, C*kc] anchor ids, class-major
    (gidx,) = op("Expand", [op("Unsqueeze", [flat_i, C["axis2"]])[0], C["expand_4"]])
    (cand_b,) = op("GatherElements", [boxes, gidx], axis=1)  # [B, C*kc, 4]
    # 2. hard NMS per (image, class) = one NMS "batch" entry each
    (nms_b,) = op("Reshape", [cand_b, C["shape_bc_kc_4"]])  # [B*C, kc, 4]
    (nms_s,) = op("Reshape", [cand_s, C["shape_bc_1_kc"]])  # [B*C, 1, kc]
    (sel,) = op("NonMaxSuppression", [nms_b, nms_s, C["max_out"], C["iou"], C["score_thr"]],
                center_point_box=0)  # [N, 3]: (b*C + c, 0, j)
    (pos,) = op("Concat", [op("Gather", [sel, C["col0"]], axis=1)[0],
                           op("Gather", [sel, C["col2"]], axis=1)[0]], axis=1)  # [N, 2]
    # 3. kept scores scattered into a -1 canvas, merged by one TopK over C*kc (class-major)
    (s2,) = op("Reshape", [cand_s, C["shape_bc_kc"]])  # [B*C, kc]
    (canvas,) = op("Add", [op("Mul", [s2, C["zero"]])[0], C["minus_one"]])
    (kept,) = op("ScatterND", [canvas, pos, op("GatherND", [s2, pos])[0]])
    (kept_b,) = op("Reshape", [kept, C["shape_b_m"]])  # [B, C*kc]
    top_s, top_i = op("TopK", [kept_b, C["kt"]], 2, axis=1, largest=1, sorted=1)
    (valid,) = op("Greater", [top_s, C["half_neg"]])  # [B, kt]
    (num64,) = op("ReduceSum", [op("Cast", [valid], to=TensorProto.INT64)[0], C["axis1"]],
                  keepdims=1)
    (num,) = op("Cast", [num64], to=TensorProto.INT32)
    (cls,) = op("Cast", [op("Div", [top_i, C["kc_i"]])[0]], to=TensorProto.INT32)
    (cls,) = op("Where", [valid, cls, C["zero_i"]])
    (sc,) = op("Where", [valid, top_s, C["zero"]])
    (bidx,) = op("Expand", [op("Unsqueeze", [top_i, C["axis2"]])[0], C["expand_4"]])
    (bx,) = op("GatherElements", [cand_b, bidx], axis=1)  # [B, kt, 4]
    (bx,) = op("Where", [op("Unsqueeze", [valid, C["axis2"]])[0], bx, C["zero"]])
    if kt < k:
        (bx,) = op("Pad", [bx, C["pad3"]])
        (sc,) = op("Pad", [sc, C["pad"]])
        (cls,) = op("Pad", [cls, C["pad"]])
    for src, dst in zip((num, bx, sc, cls), NMS_OUTPUTS, strict=True):
        nodes.append(helper.make_node("Identity", [src], [dst], name=f"/nms/{dst}"))
    return _replace_outputs(raw, nodes, k, inits)


def plugin_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The ``M2Det_SoftNMS_TRT`` node of a plugin graph, None for other graphs."""
    return next((n for n in model.graph.node if n.op_type == PLUGIN_NAME), None)
