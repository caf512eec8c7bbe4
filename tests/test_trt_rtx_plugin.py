"""The soft-NMS plugin's build-phase contract, exercised by TensorRT-RTX's real ONNX parser and
builder (no GPU needed): one test per behaviour.

Each graph is the plugin node as ``m2det-export`` writes it (``add_plugin_nms``) on graph inputs
``det_boxes`` [B,A,4] / ``det_scores`` [B,A,C], built through ``builder.build_plan`` (the code
path of ``m2det-build``) at batch profile 1:4:8. What the plugin received is read back from the
plan: TensorRT serializes the plugin's fields (``getFieldsToSerialize``) into it, and the runtime
recreates the plugin from exactly those (TensorRT-RTX's Python API cannot ask a C++ plugin for
its fields, and cannot deserialize a plan without a GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from rtx_support import plugin_library, rtx_target, serialized_plugin_fields

from m2det import contract
from m2det.engines.builder import BuiltPlan, ProfileShapes, build_plan, collecting_logger
from m2det.engines.plugin_library import register_plugin_library
from m2det.engines.trt_target import TrtTarget
from m2det.errors import M2DetError
from m2det.export.nms_graph import add_plugin_nms
from m2det.nms import NMSParams

A, C = 64, 3  # anchors and classes of the test graphs
#: Every attribute away from its default (gaussian so that sigma is used).
NON_DEFAULT = NMSParams(method=2, score_threshold=0.2, iou_threshold=0.4, sigma=0.7,
                        min_score=0.01, max_candidates=77, keep_per_class=11, max_detections=9)
SHAPES: ProfileShapes = {"det_boxes": ([1, A, 4], [4, A, 4], [8, A, 4]),
                         "det_scores": ([1, A, C], [4, A, C], [8, A, C])}  # fmt: skip


@pytest.fixture(scope="module")
def rtx() -> dict[str, Any]:
    return {"target": rtx_target(), "lib": plugin_library()}


def _graph(path: Path, params: NMSParams = NON_DEFAULT, *, scores: int = TensorProto.FLOAT,
           attrs: dict[str, Any] | None = None, drop: bool = False) -> Path:
    """The plugin node of an exported NMS graph on inputs det_boxes/det_scores; ``attrs``
    overwrites node attributes, ``drop`` removes all 8 NMS attributes."""
    inputs = [helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["B", A, 4]),
              helper.make_tensor_value_info("det_scores", scores, ["B", A, C])]  # fmt: skip
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", A, 4]),
               helper.make_tensor_value_info("scores", scores, ["B", A, C])]  # fmt: skip
    nodes = [helper.make_node("Identity", ["det_boxes"], ["boxes"]),
             helper.make_node("Identity", ["det_scores"], ["scores"])]  # fmt: skip
    raw = helper.make_model(helper.make_graph(nodes, "raw", inputs, outputs),
                            opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    model = add_plugin_nms(raw, params)
    node = next(n for n in model.graph.node if n.op_type == contract.PLUGIN_NAME)
    names = contract.PLUGIN_FLOAT_ATTRIBUTES + contract.PLUGIN_INT_ATTRIBUTES
    kept = [a for a in node.attribute if not (drop and a.name in names)]
    kept = [helper.make_attribute(a.name, attrs[a.name]) if attrs and a.name in attrs else a
            for a in kept]  # fmt: skip
    del node.attribute[:]
    node.attribute.extend(kept)
    onnx.save(model, str(path))
    return path


def _build(rtx: dict[str, Any], path: Path) -> BuiltPlan:
    target: TrtTarget = rtx["target"]
    return build_plan(target, path, SHAPES, plugin_lib=rtx["lib"],
                      compute_capabilities=("8.6",), graph=contract.GRAPH_NMS_PLUGIN)


def _typed(params: dict[str, float | int]) -> dict[str, tuple[str, float | int]]:
    """What the plugin serializes for ``params``: FLOAT32 / INT32 fields."""
    return {k: ("FLOAT32", float(np.float32(v))) if k in contract.PLUGIN_FLOAT_ATTRIBUTES
            else ("INT32", int(v)) for k, v in params.items()}  # fmt: skip


def test_every_attribute_reaches_the_plugin(rtx: dict[str, Any], tmp_path: Path) -> None:
    built = _build(rtx, _graph(tmp_path / "g.onnx"))
    assert serialized_plugin_fields(built.data) == _typed(NON_DEFAULT.attributes())


def test_missing_attributes_take_the_contract_defaults(rtx: dict[str, Any],
                                                       tmp_path: Path) -> None:
    built = _build(rtx, _graph(tmp_path / "g.onnx", drop=True))
    assert serialized_plugin_fields(built.data) == _typed(contract.PLUGIN_DEFAULTS)


@pytest.mark.parametrize(("attrs", "named"), [
    ({"method": 3}, "method"), ({"max_candidates": 0}, "max_candidates"),
    ({"max_candidates": contract.MAX_CANDIDATES + 1}, "max_candidates"),
    ({"max_detections": 0}, "max_detections"),
    ({"max_detections": contract.MAX_DETECTIONS + 1}, "max_detections"),
    ({"iou_threshold": float("inf")}, "iou_threshold"), ({"sigma": 0.0}, "sigma"),
])  # fmt: skip
def test_out_of_range_attribute_fails_the_build_naming_it(rtx: dict[str, Any], tmp_path: Path,
                                                          attrs: dict[str, Any],
                                                          named: str) -> None:
    with pytest.raises(M2DetError) as e:
        _build(rtx, _graph(tmp_path / "g.onnx", attrs=attrs))  # NON_DEFAULT is gaussian
    line = str(e.value)
    assert "\n" not in line and line.startswith("TensorRT-RTX cannot parse g.onnx: node ")
    assert f"({contract.PLUGIN_NAME}: " in line and named in line.split(contract.PLUGIN_NAME)[-1]


def test_output_shapes_under_the_dynamic_batch_profile(rtx: dict[str, Any],
                                                       tmp_path: Path) -> None:
    built = _build(rtx, _graph(tmp_path / "g.onnx"))
    k = NON_DEFAULT.max_detections
    assert [(t["name"], t["dtype"], t["shape"]) for t in built.io if t["mode"] == "output"] == [
        ("num_detections", "int32", [-1, 1]), ("detection_boxes", "float32", [-1, k, 4]),
        ("detection_scores", "float32", [-1, k]), ("detection_classes", "int32", [-1, k])]
    assert built.data[:4] == b"vtrt"


@pytest.mark.parametrize("scores", [TensorProto.FLOAT, TensorProto.FLOAT16],
                         ids=["fp32", "fp16"])  # fmt: skip
def test_score_dtypes_build(rtx: dict[str, Any], tmp_path: Path, scores: int) -> None:
    built = _build(rtx, _graph(tmp_path / "g.onnx", scores=scores))
    dtypes = {t["name"]: t["dtype"] for t in built.io}
    assert dtypes["det_scores"] == helper.tensor_dtype_to_np_dtype(scores).name
    assert dtypes["detection_scores"] == "float32"  # FP16 scores still give FP32 outputs


def test_serialized_fields_recreate_and_rebuild_the_plugin(rtx: dict[str, Any],
                                                           tmp_path: Path) -> None:
    trt = rtx["target"].module
    first = serialized_plugin_fields(_build(rtx, _graph(tmp_path / "a.onnx")).data)
    # the creator accepts exactly the serialized fields (what deserialization hands it)
    builder = trt.Builder(collecting_logger(rtx["target"]))
    registry = builder.get_plugin_registry()  # each builder has its own
    register_plugin_library(registry, rtx["lib"])
    creator = next(c for c in registry.all_creators if c.name == contract.PLUGIN_NAME)
    kinds = {"FLOAT32": (np.float32, trt.PluginFieldType.FLOAT32),
             "INT32": (np.int32, trt.PluginFieldType.INT32)}  # fmt: skip
    collection = trt.PluginFieldCollection([
        trt.PluginField(name, np.array([value], kinds[kind][0]), kinds[kind][1])
        for name, (kind, value) in first.items()])  # fmt: skip
    assert creator.create_plugin("nms", collection, trt.TensorRTPhase.RUNTIME) is not None
    # and a graph carrying them builds a plan that serializes the same fields
    again = {name: value for name, (_, value) in first.items()}
    rebuilt = _build(rtx, _graph(tmp_path / "b.onnx", attrs=again))
    assert serialized_plugin_fields(rebuilt.data) == first
