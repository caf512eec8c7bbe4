"""The C++ runtime (engines/cpp) built with its OpenVINO backend from the pip wheel's headers and
CMake package, and run: ``m2det_detect_example`` on a folder of images gives exactly the
detections of the Python OpenVINO runner (same boxes, scores and classes, bit for bit), for the
raw graph (host soft-NMS by the C++ reference) and the onnx-hard NMS graph; the ctest suite runs
against a real Detector; bad models and options are one line and exit 2."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

if importlib.util.find_spec("openvino") is None:
    pytest.skip("OpenVINO is not installed (pip install 'm2det-deploy[openvino]')",
                allow_module_level=True)  # fmt: skip

from m2det.checkpoint import load_model  # noqa: E402
from m2det.engines.openvino_runner import OpenVinoRunner, cmake_dir  # noqa: E402
from m2det.engines.registry import default_checkpoint  # noqa: E402
from m2det.export import nms_graph  # noqa: E402
from m2det.export.onnx_export import export_raw, save_model, set_metadata  # noqa: E402
from m2det.model import M2DetInference  # noqa: E402
from m2det.nms import get_nms_params  # noqa: E402
from m2det.preprocess import preprocess, read_image  # noqa: E402
from m2det.shapes import render_image  # noqa: E402

CPP = Path(__file__).resolve().parents[1] / "engines" / "cpp"
HARD = get_nms_params("hard", max_detections=50)
#: Image sizes of the test folder (the model's input is 160x160): equal, down- and upscaled.
SIZES = [(160, 160), (211, 143), (97, 300), (320, 320), (640, 480)]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """engines/cpp configured with only the OpenVINO backend and without OpenCV (what CI has)."""
    missing = [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)}")
    out = tmp_path_factory.mktemp("cpp-openvino")
    configure = ["cmake", "-S", str(CPP), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release",
                 "-DM2DET_WITH_TENSORRT=OFF", "-DM2DET_WITH_OPENVINO=ON",
                 "-DM2DET_WITH_OPENCV=OFF", f"-DOpenVINO_DIR={cmake_dir()}"]  # fmt: skip
    for cmd in (configure, ["cmake", "--build", str(out), "-j", str(os.cpu_count() or 2)]):
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        assert "warning" not in run.stdout.lower() or cmd is configure, run.stdout[-4000:]
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled model as a raw graph and an onnx-hard NMS graph, plus a plugin graph."""
    folder = tmp_path_factory.mktemp("cpp-models")
    model = load_model(default_checkpoint()).eval()
    torch.manual_seed(0)
    raw = export_raw(M2DetInference(model).eval(), batch=None)
    set_metadata(raw, model.config, "fp32", "raw", None)
    out = {"raw": folder / "tiny.onnx", "onnxnms": folder / "tiny_onnxnms.onnx",
           "plugin": folder / "tiny_nms.onnx"}  # fmt: skip
    save_model(raw, out["raw"])
    hard = nms_graph.add_onnx_hard_nms(raw, HARD)
    set_metadata(hard, model.config, "fp32", "nms-onnx", None, {"nms": HARD.attributes()})
    save_model(hard, out["onnxnms"])
    plugin = nms_graph.add_plugin_nms(raw, get_nms_params("official", max_detections=50))
    set_metadata(plugin, model.config, "fp32", "nms-plugin", None)
    save_model(plugin, out["plugin"])
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Shapes images of several sizes, as BMP (and one PPM): the files the example reads
    without OpenCV; lossless, so Python reads the same pixels."""
    folder = tmp_path_factory.mktemp("cpp-images")
    paths = []
    for i, (w, h) in enumerate(SIZES):
        image, _ = render_image(np.random.default_rng([11, i]), 160)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        path = folder / f"img{i}.{'ppm' if i == len(SIZES) - 1 else 'bmp'}"
        assert cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def _example(build: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(build / "m2det_detect_example"), *map(str, args)],
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip


def _python(model: Path, paths: list[Path], precision: str) -> list[tuple[np.ndarray, ...]]:
    """(boxes [n,4] pixels, scores [n], classes [n]) per image from the Python OpenVINO runner."""
    out = []
    with OpenVinoRunner(model, get_nms_params("official"), ov_precision=precision) as runner:
        for path in paths:
            image = read_image(path)
            h, w = image.shape[:2]
            out.append(runner(preprocess(image, runner.input_size)).scaled([(w, h)]).image(0))
    return out


@pytest.mark.parametrize(("graph", "precision"), [("raw", "f32"), ("raw", "bf16"),
                                                  ("onnxnms", "f32")])  # fmt: skip
def test_example_equals_python_runner(build: Path, models: dict[str, Path], images: list[Path],
                                      graph: str, precision: str) -> None:
    run = _example(build, models[graph], *images, "--precision", precision)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]
    want = _python(models[graph], images, precision)
    total = 0
    for line, (boxes, scores, classes) in zip(lines, want, strict=True):
        dets = line["detections"]
        total += len(dets)
        # float32 values printed with 9 significant digits read back exactly
        np.testing.assert_array_equal(np.array([d["box"] for d in dets], np.float32).reshape(-1, 4),
                                      boxes)  # fmt: skip
        np.testing.assert_array_equal(np.array([d["score"] for d in dets], np.float32), scores)
        np.testing.assert_array_equal(np.array([d["class"] for d in dets]), classes)
    assert total >= len(images)  # the trained model finds shapes in every image
    assert lines[0]["backend"].startswith(f"openvino-{precision}")


def test_detector_ctest_with_a_real_model(build: Path, models: dict[str, Path]) -> None:
    env = {**os.environ, "M2DET_TEST_MODEL": str(models["raw"])}
    run = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], env=env,
                         capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "100% tests passed" in run.stdout and "Not Run" not in run.stdout
    assert "***Skipped" not in run.stdout


def test_example_errors_are_one_line(build: Path, models: dict[str, Path], images: list[Path],
                                     tmp_path: Path) -> None:
    jpeg = tmp_path / "photo.jpg"
    cv2.imwrite(str(jpeg), cv2.imread(str(images[0])))
    cases = [((models["plugin"], images[0]), "plugin op M2Det_SoftNMS_TRT"),
             ((models["raw"], images[0], "--precision", "fp16"), "unknown OpenVINO inference"),
             ((tmp_path / "model.plan", images[0]), "no TensorRT backend"),
             ((tmp_path / "missing.onnx", images[0]), "not found"),
             ((models["raw"], jpeg), "not a BMP or binary PPM"),
             ((models["raw"],), "usage:")]  # fmt: skip
    for args, message in cases:
        run = _example(build, *args)
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)
        assert run.stderr.startswith("m2det_detect_example: error: ")
        assert len(run.stderr.strip().splitlines()) == 1 and not run.stdout
