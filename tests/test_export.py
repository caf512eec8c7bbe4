"""ONNX export: raw graph parity with PyTorch, FP16/INT8 files in ORT, NMS graphs, CLI errors.

All on the ``m2det_tiny`` preset with random weights (one export per module)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from m2det.checkpoint import save_model as save_checkpoint
from m2det.config import get_config
from m2det.contract import INPUT, NMS_OUTPUTS, RAW_OUTPUTS
from m2det.engines.export_cli import main
from m2det.errors import M2DetError
from m2det.export import nms_graph, precision
from m2det.export.calibration import load_calibration_images
from m2det.export.onnx_export import (
    check_model,
    export_raw,
    postprocess_nodes,
    prune_unused_initializers,
    read_metadata,
    save_model,
    set_metadata,
)
from m2det.export.ort_session import ort_session
from m2det.export.parity import compare_onnx, compare_with_torch, random_images
from m2det.export.pipeline import ExportOptions
from m2det.model import M2DetInference, build_model
from m2det.nms import Method, NMSParams, batched_nms, get_nms_params

CFG = get_config("m2det_tiny")


@pytest.fixture(scope="module")
def module() -> M2DetInference:
    torch.manual_seed(0)
    return M2DetInference(build_model(CFG).eval()).eval()


@pytest.fixture(scope="module")
def raw_path(module: M2DetInference, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = export_raw(module, batch=None)
    set_metadata(model, CFG, "fp32", "raw", None)
    check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "m2det_tiny.onnx"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(4):  # blobs on a background: structured, not noise
        img = np.full((120 + 20 * i, 180, 3), 40 * i, np.uint8)
        cv2.circle(img, (60 + 10 * i, 60), 30, tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        cv2.imwrite(str(folder / f"{i}.png"), img)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_raw_graph_contract(raw_path: Path) -> None:
    model = onnx.load(str(raw_path))
    assert [i.name for i in model.graph.input] == [INPUT]  # priors are constants, not inputs
    assert tuple(o.name for o in model.graph.output) == RAW_OUTPUTS
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.output]]  # fmt: skip
    assert dims == [["batch", 3, 160, 160], ["batch", CFG.num_priors, 4],
                    ["batch", CFG.num_priors, CFG.num_classes - 1]]  # fmt: skip
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    post = {n.op_type for n in model.graph.node if n.name in postprocess_nodes(model)}
    assert {"Exp", "Softmax"} <= post and "Conv" not in post
    meta = read_metadata(model)
    assert meta["config_name"] == "m2det_tiny" and meta["precision"] == "fp32"
    assert json.loads(meta["config"])["input_size"] == 160
    assert json.loads(meta["classes"]) == list(CFG.labels) and meta["batch"] == "dynamic"


def test_raw_graph_matches_torch_batch_1_and_3(raw_path: Path, module: M2DetInference) -> None:
    parity = compare_with_torch(raw_path, module, [1, 3])
    assert parity.batches == [1, 3]
    assert parity.boxes_max < 1e-5 and parity.scores_max < 1e-5, parity.line()


def test_fp16_file_runs_in_ort_within_tolerance(raw_path: Path, tmp_path: Path) -> None:
    model = precision.to_fp16(raw_path)
    check_model(model)
    fp16_inits = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert len(fp16_inits) > 20  # the convolution weights went to FP16
    io_types = {v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io_types == {TensorProto.FLOAT}  # keep_io_types
    # the decode and softmax run in FP32: their producers feed them float32 (no Cast to fp16 after)
    names = set(postprocess_nodes(model))
    assert {n.op_type for n in model.graph.node if n.name in names} >= {"Exp", "Softmax"}
    path = tmp_path / "fp16.onnx"
    save_model(model, path)
    parity = compare_onnx(path, raw_path, [random_images(2, 160, 7)])
    # stated tolerance: 1e-3 on normalized boxes and on probabilities
    assert parity.boxes_max < 1e-3 and parity.scores_max < 1e-3, parity.line()
    assert parity.worst > 0  # it really is a different (reduced-precision) graph


@pytest.fixture(scope="module")
def calib(calib_dir: Path) -> np.ndarray:
    images = load_calibration_images(calib_dir, 160, count=4)
    assert images.shape == (4, 3, 160, 160)  # the .txt file is not an image
    return images


@pytest.fixture(scope="module")
def int8_max(raw_path: Path, calib: np.ndarray) -> onnx.ModelProto:
    return precision.to_int8(raw_path, calib, "max")


def _activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """Scalar (per-tensor, i.e. activation) QuantizeLinear scales by initializer name."""
    inits = {t.name: t for t in model.graph.initializer}
    return {n.input[1]: float(onnx.numpy_helper.to_array(inits[n.input[1]]))
            for n in model.graph.node
            if n.op_type == "QuantizeLinear" and not inits[n.input[1]].dims}  # fmt: skip


def test_int8_file_has_qdq_keeps_postprocess_float_and_runs(raw_path: Path, calib: np.ndarray,
                                                           int8_max: onnx.ModelProto,
                                                           tmp_path: Path) -> None:
    check_model(int8_max)
    q, dq = precision.count_qdq(int8_max)
    assert q > 10 and dq > 10
    producers = {o: n.op_type for n in int8_max.graph.node for o in n.output}
    for node in int8_max.graph.node:
        if node.name in postprocess_nodes(int8_max):
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input), node.name
    path = tmp_path / "int8.onnx"
    save_model(int8_max, path)
    parity = compare_onnx(path, raw_path, [calib[:2]])
    assert 0 < parity.scores_max < 0.05 and parity.boxes_max < 0.05, parity.line()


def test_int8_percentile_and_cpu_placement(raw_path: Path, calib: np.ndarray,
                                           int8_max: onnx.ModelProto) -> None:
    model = precision.to_int8(raw_path, calib, "percentile", placement="cpu")
    check_model(model)
    # cpu placement also quantizes the Conv outputs
    convs = {n.output[0] for n in model.graph.node if n.op_type == "Conv"}
    q_on_conv = sum(n.op_type == "QuantizeLinear" and n.input[0] in convs for n in model.graph.node)
    assert q_on_conv >= len(convs) // 2
    assert precision.count_qdq(model)[0] > precision.count_qdq(int8_max)[0]
    # percentile ranges replaced ModelOpt's: never wider than max, narrower for most tensors
    pct, mx = _activation_scales(model), _activation_scales(int8_max)
    shared = sorted(set(pct) & set(mx))
    assert len(shared) > 10
    assert all(pct[k] <= mx[k] * 1.001 for k in shared)
    assert sum(pct[k] < mx[k] * 0.999 for k in shared) > len(shared) // 2
    with pytest.raises(M2DetError, match="placement"):
        precision.to_int8(raw_path, calib, "max", placement="gpu")


def test_int8_onnxruntime_recipe_fuses_convs_and_keeps_head_float(raw_path: Path,
                                                                  calib: np.ndarray,
                                                                  tmp_path: Path) -> None:
    import onnxruntime as ort

    model = precision.to_int8(raw_path, calib, "entropy", placement="onnxruntime")
    check_model(model)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in model.graph.node:  # decode/softmax inputs and the head's outputs stay float
        if node.name in postprocess_nodes(model) or node.op_type in ("Reshape", "Concat") \
                and node.name.startswith("/model/head/"):
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input), node.name
    path = tmp_path / "int8_ort.onnx"
    save_model(model, path)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    for node in model.graph.node:  # OpenCV DNN runs a quantized Sub/Div as an Add
        if node.op_type in precision.OPENCV_UNSAFE_QUANTIZED_OPS:
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input), node.name
            assert all(producers.get(o) != "QuantizeLinear" for o in node.output), node.name
    assert any(n.op_type == "Sub" for n in model.graph.node)  # the mean subtraction
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    assert ops.count("QLinearConv") == convs - 2 * CFG.num_scales  # all but the head's loc/conf
    parity = compare_onnx(path, raw_path, [calib[:2]])
    assert 0 < parity.scores_max < 0.05 and parity.boxes_max < 0.05, parity.line()


def _ort_histogram_collect_value() -> str:
    from onnxruntime.quantization.calibrate import HistogramCollector

    return HistogramCollector.collect_value.__module__


def test_ort_recipes_run_without_modelopt_s_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    # ModelOpt rebinds ORT's calibrator methods process-wide once it has quantized; ORT's own
    # recipes run in a spawned interpreter that sees ORT's originals whatever the caller did
    from onnxruntime.quantization.calibrate import HistogramCollector

    def patched(self: object, name_to_arr: object) -> None: ...

    monkeypatch.setattr(HistogramCollector, "collect_value", patched)
    assert _ort_histogram_collect_value() == __name__  # patched here...
    assert precision._unpatched_ort(_ort_histogram_collect_value) == \
        "onnxruntime.quantization.calibrate"  # ...not there


def test_calibration_cache_is_what_modelopt_reads(tmp_path: Path) -> None:
    from modelopt.onnx.quantization.calib_utils import import_scales_from_calib_cache

    path = tmp_path / "c.cache"
    precision.write_calibration_cache(str(path), {"a": 127.0, "b/x:0": 2.54})
    scales = import_scales_from_calib_cache(str(path))
    f32 = struct.unpack("!f", struct.pack("!f", 0.02))[0]
    assert scales == {"a_scale": 1.0, "b/x:0_scale": f32}


def test_calibration_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(M2DetError, match="no images"):
        load_calibration_images(tmp_path, 160, 8)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(M2DetError, match="0 usable image.*broken.jpg .not a decodable image"):
        load_calibration_images(tmp_path, 160, 1)


def test_plugin_nms_graph_passes_checker_with_attributes_and_outputs(raw_path: Path) -> None:
    params = get_nms_params("official", max_detections=100)
    model = nms_graph.add_plugin_nms(onnx.load(str(raw_path)), params)
    check_model(model)
    node = nms_graph.plugin_node(model)
    assert node is not None and node.op_type == "M2Det_SoftNMS_TRT" and node.domain == "m2det"
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17), ("m2det", 1)}
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs.pop("plugin_version") == b"1" and attrs.pop("plugin_namespace") == b""
    assert attrs == pytest.approx(params.attributes())
    types = {a.name: a.type for a in node.attribute}
    assert types["method"] == onnx.AttributeProto.INT
    assert types["sigma"] == onnx.AttributeProto.FLOAT
    outs = [(o.name, o.type.tensor_type.elem_type,
             [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim])
            for o in model.graph.output]  # fmt: skip
    assert outs == [("num_detections", TensorProto.INT32, ["batch", 1]),
                    ("detection_boxes", TensorProto.FLOAT, ["batch", 100, 4]),
                    ("detection_scores", TensorProto.FLOAT, ["batch", 100]),
                    ("detection_classes", TensorProto.INT32, ["batch", 100])]  # fmt: skip
    with pytest.raises(M2DetError, match="max-det"):
        nms_graph.add_plugin_nms(onnx.load(str(raw_path)), get_nms_params("official"))


def _identity_raw_graph(a: int, c: int) -> onnx.ModelProto:
    """A stand-in raw graph whose boxes/scores are its inputs, to feed the NMS crafted values."""
    g = helper.make_graph(
        [helper.make_node("Identity", ["b_in"], ["boxes"]),
         helper.make_node("Identity", ["s_in"], ["scores"])],
        "raw",
        [helper.make_tensor_value_info("b_in", TensorProto.FLOAT, ["batch", a, 4]),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["batch", a, c])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", a, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", a, c])],
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _clustered(rng: np.random.Generator, b: int, a: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes around a few centres (many overlaps) and quantized scores (many exact ties)."""
    centres = rng.uniform(0.2, 0.8, (b, 4, 2))
    pick = centres[:, rng.integers(0, 4, a)] + rng.normal(0, 0.03, (b, a, 2))
    wh = rng.uniform(0.05, 0.3, (b, a, 2))
    boxes = np.concatenate([pick - wh / 2, pick + wh / 2], -1).astype(np.float32)
    scores = (rng.integers(0, 20, (b, a, c)) / 20.0).astype(np.float32)
    return boxes, scores


@pytest.mark.parametrize("overrides", [
    {},  # threshold 0.1 is hit exactly by scores k/20: strictness matters
    {"max_candidates": 7, "keep_per_class": 3},
    {"keep_per_class": 0, "iou_threshold": 0.7, "score_threshold": 0.5},
    {"max_detections": 500},  # more slots than candidates: padding
])  # fmt: skip
def test_onnx_hard_nms_equals_reference_hard_nms(overrides: dict, tmp_path: Path) -> None:
    a, c = 60, 3
    params = get_nms_params("hard", **{"max_detections": 40, **overrides})
    model = nms_graph.add_onnx_hard_nms(_identity_raw_graph(a, c), params)
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "nms.onnx"
    save_model(model, path)
    sess = ort_session(path)
    for seed in range(3):
        boxes, scores = _clustered(np.random.default_rng(seed), 2, a, c)
        num, bx, sc, cl = sess.run(list(NMS_OUTPUTS), {"b_in": boxes, "s_in": scores})
        ref = batched_nms(boxes, scores, params)
        assert num.shape == (2, 1) and num.dtype == np.int32 and cl.dtype == np.int32
        np.testing.assert_array_equal(num[:, 0], ref.num)
        np.testing.assert_array_equal(cl, ref.classes)
        np.testing.assert_array_equal(sc, ref.scores)
        np.testing.assert_array_equal(bx, ref.boxes)


def test_onnx_hard_nms_on_the_exported_model(raw_path: Path, tmp_path: Path) -> None:
    params = get_nms_params("hard", max_detections=100, score_threshold=0.21)
    model = nms_graph.add_onnx_hard_nms(onnx.load(str(raw_path)), params)
    prune_unused_initializers(model)  # as the export pipeline does before its check
    check_model(model)
    path = tmp_path / "e2e.onnx"
    save_model(model, path)
    x = random_images(2, 160, 3)
    num, bx, sc, cl = ort_session(path).run(list(NMS_OUTPUTS), {INPUT: x})
    ref = batched_nms(*ort_session(raw_path).run(list(RAW_OUTPUTS), {INPUT: x}), params)
    assert ref.num.min() > 0
    np.testing.assert_array_equal(num[:, 0], ref.num)
    np.testing.assert_array_equal(bx, ref.boxes)
    np.testing.assert_array_equal(cl, ref.classes)


def test_onnx_hard_nms_refuses_what_it_cannot_do() -> None:
    raw = _identity_raw_graph(10, 2)
    with pytest.raises(M2DetError, match="hard NMS only"):
        nms_graph.add_onnx_hard_nms(raw, get_nms_params("official", max_detections=10))
    with pytest.raises(M2DetError, match="min_score"):
        nms_graph.add_onnx_hard_nms(raw, NMSParams(Method.HARD, score_threshold=0.0,
                                                   max_detections=10))  # fmt: skip


def test_cli_writes_files_summary_and_skips_engine_without_tensorrt(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import m2det.engines.export_cli as export_cli

    monkeypatch.setattr(export_cli, "installed_module", lambda name: None)  # neither library
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    save_checkpoint(build_model(CFG), ckpt)
    out = tmp_path / "out"
    rc = main(["--ckpt", str(ckpt), "--out", str(out), "--nms-graph", "soft", "--max-det", "50",
               "--engine"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "m2det_tiny.onnx", "m2det_tiny_export.json", "m2det_tiny_nms.onnx"]
    assert captured.err.count("m2det-export: warning: neither TensorRT nor TensorRT-RTX is "
                              "installed: skipped the engine build") == 1
    summary = json.loads((out / "m2det_tiny_export.json").read_text())
    assert summary["config"] == "m2det_tiny" and summary["batch"] == "dynamic"
    assert summary["parity"]["fp32_vs_torch"]["boxes_max"] < 1e-4
    assert summary["nms"]["kind"] == "soft" and summary["nms"]["max_detections"] == 50
    assert summary["files"]["nms"]["bytes"] == (out / "m2det_tiny_nms.onnx").stat().st_size
    meta = read_metadata(onnx.load(str(out / "m2det_tiny_nms.onnx")))
    assert meta["graph"] == "nms-plugin" and json.loads(meta["nms"])["method"] == 1


def test_cli_engine_options_are_checked_before_any_work(
        ckpt_without_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import m2det.engines.export_cli as export_cli
    from m2det.engines.trt_target import TrtTarget

    base = ["--ckpt", str(ckpt_without_config), "--config", "m2det_tiny", "--out",
            str(tmp_path / "o")]  # fmt: skip
    assert main([*base, "--target", "tensorrt-rtx"]) == 2
    assert "--target applies to --engine" in _error_line(capsys)
    rtx = TrtTarget("tensorrt-rtx", object(), "1.7.1")
    monkeypatch.setattr(export_cli, "resolve_target", lambda name: rtx)
    monkeypatch.setattr(export_cli, "installed_module", lambda name: object())
    assert main([*base, "--engine", "--nms-graph", "onnx-hard"]) == 2
    assert "TensorRT-RTX has no NonMaxSuppression" in _error_line(capsys)
    monkeypatch.setattr(export_cli, "resolve_plugin_library", lambda lib: None)
    assert main([*base, "--engine", "--nms-graph", "soft"]) == 2
    assert "needs the soft-NMS plugin library" in _error_line(capsys)
    assert not (tmp_path / "o").exists()  # every refusal came before the export


def test_cli_engine_builds_with_tensorrt_rtx(ckpt_without_config: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Where only TensorRT-RTX is installed (as in CI), --engine builds a real plan with it."""
    from m2det.engines.plan_sidecar import read_sidecar
    from m2det.engines.trt_target import installed_module

    if installed_module("tensorrt-rtx") is None:
        pytest.skip("TensorRT-RTX is not installed (pip install 'm2det-deploy[trt-rtx]')")
    out = tmp_path / "o"
    assert main(["--ckpt", str(ckpt_without_config), "--config", "m2det_tiny", "--out", str(out),
                 "--batch", "1", "--engine", "--target", "tensorrt-rtx", "--quiet"]) == 0
    summary = json.loads((out / "m2det_tiny_b1_export.json").read_text())
    plan = Path(summary["files"]["engine"]["path"])
    assert plan.is_file() and summary["files"]["engine"]["bytes"] == plan.stat().st_size
    meta = read_sidecar(plan)
    assert meta["library"] == "tensorrt-rtx" and meta["graph"] == "raw"


def test_deprecated_nms_flag_is_an_alias_with_one_warning(
        capsys: pytest.CaptureFixture[str]) -> None:
    from m2det.export.cli import build_parser, nms_graph_of

    parser = build_parser()
    assert nms_graph_of(parser.parse_args(["--ckpt", "x.pth"])) == "none"
    assert nms_graph_of(parser.parse_args(["--ckpt", "x.pth", "--nms-graph", "hard"])) == "hard"
    assert capsys.readouterr().err == ""
    assert nms_graph_of(parser.parse_args(["--ckpt", "x.pth", "--nms", "onnx-hard"])) == "onnx-hard"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--nms is deprecated" in err[0] and "--nms-graph" in err[0]
    with pytest.raises(M2DetError, match="contradicts"):
        nms_graph_of(parser.parse_args(["--ckpt", "x", "--nms", "soft", "--nms-graph", "hard"]))


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("m2det-export: error: "), err
    return err[0]


@pytest.fixture
def ckpt_without_config(tmp_path: Path) -> Path:
    path = tmp_path / "bare.pth"
    torch.save(build_model(CFG).state_dict(), path)
    return path


def test_cli_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--ckpt", str(tmp_path / "nope.pth")]) == 2
    assert "checkpoint not found" in _error_line(capsys)


def test_cli_unknown_or_missing_config(ckpt_without_config: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--ckpt", str(ckpt_without_config), "--config", "m2det_huge"]) == 2
    assert "unknown config 'm2det_huge'" in _error_line(capsys)
    assert main(["--ckpt", str(ckpt_without_config)]) == 2
    assert "--config" in _error_line(capsys)


@pytest.mark.parametrize("content", ["empty", "text-only"])
def test_cli_calibration_folder_without_images(content: str, ckpt_without_config: Path,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    if content == "text-only":
        (calib / "readme.txt").write_text("x")
    rc = main(["--ckpt", str(ckpt_without_config), "--config", "m2det_tiny", "--int8", "--calib",
               str(calib), "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2 and "no images" in _error_line(capsys)
    assert not (tmp_path / "o").exists()  # failed before any export, nothing left behind


def test_cli_int8_needs_calib_and_unwritable_output(ckpt_without_config: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--ckpt", str(ckpt_without_config), "--config", "m2det_tiny"]
    assert main([*base, "--int8"]) == 2
    assert "--calib" in _error_line(capsys)
    assert main([*base, "--int8", "--calib", str(tmp_path), "--qdq-placement", "onnxruntime",
                 "--engine"]) == 2  # fmt: skip
    assert "uint8" in _error_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*base, "--out", str(blocker / "sub")]) == 2
    assert "cannot create output folder" in _error_line(capsys)


def test_unused_initializers_are_pruned_and_refused() -> None:
    model = _identity_raw_graph(4, 2)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.int64), "/nms/pad"))
    with pytest.raises(RuntimeError, match="/nms/pad"):
        check_model(model)
    assert prune_unused_initializers(model) == ["/nms/pad"]
    assert not model.graph.initializer
    check_model(model)
    hard = nms_graph.add_onnx_hard_nms(_identity_raw_graph(50, 3), get_nms_params(
        "hard", max_detections=10))  # K fits: the Pad constants are unused
    assert prune_unused_initializers(hard) == ["/nms/pad", "/nms/pad3"]
    check_model(hard)


@pytest.mark.parametrize("kw, error", [
    ({"opset": 16}, "--opset must be 17..20"),
    ({"opset": 21}, "--opset must be 17..20"),
    ({"opset": 17, "int8": True, "calib_images": np.zeros((1, 3, 8, 8), np.float32)},
     "--opset 17 cannot be honoured for the INT8 file"),
    ({"opset": 18, "int8": True, "calib_images": np.zeros((1, 3, 8, 8), np.float32),
      "qdq_placement": "cpu"}, "ModelOpt .* writes Q/DQ at opset >= 19"),
    ({"int8": True, "calib_images": np.zeros((1, 3, 8, 8), np.float32),
      "qdq_placement": "onnxruntime", "nms_graph": "soft"}, "does not take the uint8"),
])  # fmt: skip
def test_files_no_client_could_run_are_refused_before_any_work(kw: dict, error: str,
                                                                   tmp_path: Path,
                                                                   tiny_ckpt: Path) -> None:
    with pytest.raises(M2DetError, match=error):
        ExportOptions(checkpoint=tiny_ckpt, out=tmp_path, **kw).check()
    for ok in ({"opset": 19, "int8": True, "calib_images": np.zeros((1, 3, 8, 8), np.float32)},
               {"opset": 17, "int8": True, "calib_images": np.zeros((1, 3, 8, 8), np.float32),
                "qdq_placement": "onnxruntime"}, {"opset": 20}, {}):  # fmt: skip
        ExportOptions(checkpoint=tiny_ckpt, out=tmp_path, **ok).check()
