"""OnnxRunner: raw graphs + reference NMS, ONNX NMS graphs passed through, plugin graphs refused,
metadata-driven config/precision/batch, registry dispatch (``m2det_tiny``, random weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from m2det.config import get_config
from m2det.engines.onnx_runner import OnnxRunner
from m2det.engines.registry import load_runner
from m2det.errors import M2DetError
from m2det.export import nms_graph
from m2det.export.onnx_export import export_raw, save_model, set_metadata
from m2det.export.parity import random_images
from m2det.model import M2DetInference, build_model
from m2det.nms import batched_nms, get_nms_params

CFG = get_config("m2det_tiny")
HARD = get_nms_params("hard", max_detections=50)


@pytest.fixture(scope="module")
def net() -> M2DetInference:
    torch.manual_seed(1)
    return M2DetInference(build_model(CFG).eval()).eval()


@pytest.fixture(scope="module")
def files(net: M2DetInference, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """raw (dynamic batch), onnx-hard NMS graph and plugin graph of the same network."""
    folder = tmp_path_factory.mktemp("runner")
    raw = export_raw(net, batch=None)
    set_metadata(raw, CFG, "fp32", "raw", None)
    out = {"raw": folder / "raw.onnx", "onnxnms": folder / "onnxnms.onnx",
           "plugin": folder / "plugin.onnx"}  # fmt: skip
    save_model(raw, out["raw"])
    hard = nms_graph.add_onnx_hard_nms(raw, HARD)
    set_metadata(hard, CFG, "fp32", "nms-onnx", None, {"nms": HARD.attributes()})
    save_model(hard, out["onnxnms"])
    plugin = nms_graph.add_plugin_nms(raw, get_nms_params("official", max_detections=50))
    set_metadata(plugin, CFG, "fp32", "nms-plugin", None)
    save_model(plugin, out["plugin"])
    return out


@pytest.mark.parametrize("batch", [1, 3])
def test_raw_graph_runner_equals_torch_plus_reference_nms(files: dict[str, Path],
                                                          net: M2DetInference, batch: int) -> None:
    x = random_images(batch, CFG.input_size, batch)
    with OnnxRunner(files["raw"], HARD, threads=1) as runner:
        dets = runner(x)
        assert runner.config == CFG and runner.name == "onnxruntime-fp32"
        assert runner.last_timing.network > 0 and runner.last_timing.nms > 0
        boxes, scores = runner.raw(x)
    with torch.no_grad():
        tb, ts = net(torch.from_numpy(x))
    np.testing.assert_allclose(boxes, tb.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores, ts.numpy(), atol=1e-5)
    ref = batched_nms(boxes, scores, HARD)
    assert len(dets) == batch and dets.num.min() > 0
    for got, want in zip((dets.num, dets.boxes, dets.scores, dets.classes),
                         (ref.num, ref.boxes, ref.scores, ref.classes), strict=True):  # fmt: skip
        np.testing.assert_array_equal(got, want)


def test_nms_graph_outputs_pass_through(files: dict[str, Path]) -> None:
    x = random_images(2, CFG.input_size, 9)
    raw = OnnxRunner(files["raw"], HARD)(x)
    runner = OnnxRunner(files["onnxnms"], get_nms_params("official"))  # the graph's NMS wins
    assert runner.nms == HARD and runner.graph == "nms-onnx"
    dets = runner(torch.from_numpy(x))  # torch tensors are accepted too
    assert runner.last_timing.nms == 0.0
    assert dets.num.dtype == np.int32 and dets.classes.dtype == np.int32
    np.testing.assert_array_equal(dets.num, raw.num)
    np.testing.assert_array_equal(dets.boxes, raw.boxes)
    np.testing.assert_array_equal(dets.classes, raw.classes)
    with pytest.raises(M2DetError, match="NMS graph"):
        runner.raw(x)


def test_plugin_graph_is_refused_with_one_line(files: dict[str, Path]) -> None:
    with pytest.raises(M2DetError, match="M2Det_SoftNMS_TRT") as err:
        OnnxRunner(files["plugin"], HARD)
    assert "\n" not in str(err.value)


def test_registry_dispatches_onnx_and_checks_config(files: dict[str, Path]) -> None:
    runner = load_runner(files["raw"], nms=HARD)
    assert isinstance(runner, OnnxRunner)
    with pytest.raises(M2DetError, match="m2det320_vgg"):
        load_runner(files["raw"], nms=HARD, config="m2det320_vgg")


def test_bad_files_and_inputs(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(M2DetError, match="not found"):
        OnnxRunner(tmp_path / "missing.onnx", HARD)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(M2DetError, match="not a readable ONNX"):
        OnnxRunner(junk, HARD)
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(files["raw"]))
    del model.metadata_props[:]
    save_model(model, foreign)
    with pytest.raises(M2DetError, match="no m2det metadata"):
        OnnxRunner(foreign, HARD)
    with pytest.raises(M2DetError, match=r"expected images \[B,3,160,160\]"):
        OnnxRunner(files["raw"], HARD)(np.zeros((1, 3, 100, 100), np.float32))


def test_fixed_batch_file(net: M2DetInference, tmp_path: Path) -> None:
    model = export_raw(net, batch=2)
    set_metadata(model, CFG, "fp32", "raw", 2)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 160, 160]
    save_model(model, tmp_path / "b2.onnx")
    runner = OnnxRunner(tmp_path / "b2.onnx", HARD)
    assert runner.batch_range == (2, 2)
    assert len(runner(random_images(2, CFG.input_size, 0))) == 2
    with pytest.raises(M2DetError, match="batch 2"):
        runner(random_images(3, CFG.input_size, 0))
