"""The torch runner and the artifact -> runner factory, on ``m2det_tiny`` with random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import m2det.engines.registry as registry
from m2det.config import get_config
from m2det.engines.registry import default_checkpoint, load_runner
from m2det.engines.torch_runner import TorchRunner
from m2det.errors import M2DetError
from m2det.model import build_model
from m2det.nms import get_nms_params

TINY = get_config("m2det_tiny")
S = TINY.input_size



def _tensorrt_usable() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")  # tensorrt-stubs alone is an empty namespace package


def _images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, 3, S, S)).astype(np.float32)


@pytest.mark.parametrize("batch", [1, 2])
def test_torch_runner_protocol(tiny_ckpt: Path, batch: int) -> None:
    nms = get_nms_params("official", score_threshold=0.05)
    with TorchRunner(tiny_ckpt, nms) as runner:
        assert runner.input_size == S and runner.name == "torch-fp32"
        dets = runner(_images(batch))
    k = dets.boxes.shape[1]
    assert len(dets) == batch and dets.boxes.shape == (batch, k, 4)
    assert dets.scores.shape == dets.classes.shape == (batch, k)
    assert dets.num.dtype == np.int32 and dets.classes.dtype == np.int32
    assert (dets.num > 0).all()  # random weights still score > 0.05 somewhere
    for b in range(batch):
        boxes, scores, classes = dets.image(b)
        assert (np.diff(scores) <= 0).all() and (scores > 0.05).all()
        assert ((classes >= 0) & (classes < TINY.num_classes - 1)).all()
    assert runner.last_timing.network > 0 and runner.last_timing.nms > 0


def test_batch_of_two_matches_two_single_calls(tiny_ckpt: Path) -> None:
    runner = TorchRunner(tiny_ckpt, get_nms_params("hard"))
    x = _images(2)
    boxes2, scores2 = runner.raw(x)
    for b in range(2):
        boxes1, scores1 = runner.raw(x[b:b + 1])
        np.testing.assert_allclose(boxes1[0], boxes2[b], atol=1e-5)
        np.testing.assert_allclose(scores1[0], scores2[b], atol=1e-5)
    assert boxes2.shape == (2, TINY.num_priors, 4) and scores2.shape == (2, TINY.num_priors, 5)


def test_torch_and_numpy_inputs_agree(tiny_ckpt: Path) -> None:
    runner = TorchRunner(tiny_ckpt, get_nms_params("official"), channels_last=True)
    x = _images(1)
    a, b = runner(x), runner(torch.from_numpy(x))
    np.testing.assert_array_equal(a.num, b.num)
    np.testing.assert_allclose(a.scores, b.scores)


def test_runner_from_model_object_checks_the_config() -> None:
    model = build_model(TINY)
    assert TorchRunner(model, get_nms_params("hard"), config="m2det_tiny").config is TINY
    with pytest.raises(M2DetError, match="not 'm2det320_vgg'"):
        TorchRunner(model, get_nms_params("hard"), config="m2det320_vgg")


def test_bad_inputs_and_options_are_user_errors(tiny_ckpt: Path) -> None:
    nms = get_nms_params("official")
    with pytest.raises(M2DetError, match=r"expected images \[B,3,160,160\]"):
        TorchRunner(tiny_ckpt, nms)(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(M2DetError, match="fp16 needs a CUDA device"):
        TorchRunner(tiny_ckpt, nms, fp16=True)
    with pytest.raises(M2DetError, match="checkpoint for config 'm2det_tiny', not 'm2det320_vgg'"):
        TorchRunner(tiny_ckpt, nms, config="m2det320_vgg")
    if not torch.cuda.is_available():
        with pytest.raises(M2DetError, match="CUDA is not available"):
            TorchRunner(tiny_ckpt, nms, device="cuda")


def test_load_runner_dispatches_by_suffix(tiny_ckpt: Path, tmp_path: Path) -> None:
    nms = get_nms_params("paper")
    runner = load_runner(tiny_ckpt, nms=nms)
    assert isinstance(runner, TorchRunner) and runner.nms == nms
    pt = tmp_path / "copy.pt"
    pt.write_bytes(tiny_ckpt.read_bytes())
    assert isinstance(load_runner(pt, nms=nms, config="m2det_tiny"), TorchRunner)
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(M2DetError, match="unknown artifact type 'model.bin'"):
        load_runner(odd, nms=nms)
    with pytest.raises(M2DetError, match="ONNX file not found"):
        load_runner(tmp_path / "missing.onnx", nms=nms)


@pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT is installed")
def test_plan_without_tensorrt_is_a_one_line_error(tmp_path: Path) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(M2DetError) as e:  # backend missing, or its package
        load_runner(plan, nms=get_nms_params("official"))
    assert "\n" not in str(e.value)


def test_fp16_is_refused_for_onnx_files(tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\0")
    with pytest.raises(M2DetError, match="fp16 applies to checkpoints only"):
        load_runner(onnx, nms=get_nms_params("official"), fp16=True)


def test_default_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(registry, "BUNDLED_CHECKPOINT", tmp_path / "absent.pth")
    with pytest.raises(M2DetError, match="no bundled checkpoint"):
        default_checkpoint()
    (tmp_path / "absent.pth").write_bytes(b"x")
    assert default_checkpoint() == tmp_path / "absent.pth"


@pytest.mark.slow  # traces and slims the tiny graph: ~5 s idle, ~15 s on a busy machine
def test_onnx_file_goes_to_onnx_runtime_and_matches_torch(tiny_ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from m2det.checkpoint import load_model
    from m2det.export.onnx_export import export_raw, set_metadata
    from m2det.export.onnx_export import save_model as save_onnx
    from m2det.model import M2DetInference

    onnx_path = tmp_path / "tiny.onnx"
    graph = export_raw(M2DetInference(load_model(tiny_ckpt)))
    set_metadata(graph, TINY, "fp32", "raw", None)
    save_onnx(graph, onnx_path)
    nms = get_nms_params("hard", score_threshold=0.05)
    onnx_runner = load_runner(onnx_path, nms=nms, config="m2det_tiny")
    assert onnx_runner.backend == "onnxruntime" and onnx_runner.config.name == "m2det_tiny"
    x = _images(2)
    got, want = onnx_runner(x), load_runner(tiny_ckpt, nms=nms)(x)
    np.testing.assert_array_equal(got.num, want.num)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-5)
    with pytest.raises(M2DetError, match="exported for config 'm2det_tiny', not 'm2det512_vgg'"):
        load_runner(onnx_path, nms=nms, config="m2det512_vgg")
