"""Every file kind ``m2det-export`` writes, checked with clients nobody here wrote: ``onnx.checker``
in a fresh process that imports only ``onnx``, Polygraphy (``run --onnxrt --validate``; ``surgeon
sanitize``), OpenCV DNN, and the TensorRT-RTX ONNX parser where it is installed. Also: no unused
initializers, the opset and IR of each kind, and the runner on a file whose metadata was stripped.

The files come from the export pipeline itself, once per session, on the bundled trained
``m2det_tiny`` checkpoint (so INT8 scores mean something) with synthetic-shapes calibration images:
three runs cover FP32, FP16, INT8 of ModelOpt (``tensorrt`` and ``cpu`` placements) and of ONNX
Runtime's quantizer, each raw, with the plugin node and with ONNX NMS (all but ORT's INT8 with the
plugin node, which export refuses: TensorRT does not take its uint8 activations).
export/README.md has the table these tests back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnx.utils
import pytest

from m2det.contract import (
    GRAPH_NMS_ONNX,
    GRAPH_NMS_PLUGIN,
    GRAPH_RAW,
    INPUT,
    NMS_OUTPUTS,
    PLUGIN_DOMAIN,
    PLUGIN_NAME,
    RAW_OUTPUTS,
)
from m2det.engines.onnx_runner import OnnxRunner
from m2det.engines.registry import BUNDLED_CHECKPOINT
from m2det.errors import M2DetError
from m2det.export.onnx_export import read_metadata, unused_initializers
from m2det.export.ort_session import ort_session
from m2det.export.pipeline import ExportOptions, ExportResult, export_model
from m2det.nms import get_nms_params
from m2det.preprocess import preprocess
from m2det.shapes import render_image

pytestmark = pytest.mark.slow
SIZE = 160
#: (run, pipeline options): each run writes its raw files and the NMS graph of its kind.
RUNS = {
    "modelopt": {"fp16": True, "int8": True, "qdq_placement": "tensorrt", "nms_graph": "soft"},
    "ort": {"fp16": True, "int8": True, "qdq_placement": "onnxruntime", "nms_graph": "onnx-hard"},
    "modelopt_cpu": {"int8": True, "qdq_placement": "cpu", "nms_graph": "onnx-hard"},
}
#: file kind -> (run, file key in its ExportResult); the INT8 recipe is part of the kind.
KINDS = {
    "fp32": ("modelopt", "fp32"), "fp16": ("modelopt", "fp16"),
    "int8-modelopt": ("modelopt", "int8"), "int8-modelopt-cpu": ("modelopt_cpu", "int8"),
    "int8-ort": ("ort", "int8"),
    "fp32-plugin": ("modelopt", "nms"), "fp16-plugin": ("modelopt", "fp16_nms"),
    "int8-modelopt-plugin": ("modelopt", "int8_nms"),
    "fp32-onnxnms": ("ort", "onnxnms"), "fp16-onnxnms": ("ort", "fp16_onnxnms"),
    "int8-modelopt-onnxnms": ("modelopt_cpu", "int8_onnxnms"),
    "int8-ort-onnxnms": ("ort", "int8_onnxnms"),
}  # fmt: skip
#: (default-domain opset, IR version) of each kind at the default --opset (README table).
OPSET_IR = {kind: (19, 10) if kind.startswith("int8-modelopt") else (17, 8) for kind in KINDS}
#: OpenCV DNN against ONNX Runtime (``ort_session``'s settings): max |difference| of the boxes of
#: anchors scoring > 0.3 and of all scores, over the test images, per recipe. FP32/FP16 and ORT's
#: INT8 file: float rounding (measured 1e-7..8e-4). ModelOpt's INT8 files: OpenCV's and ORT's
#: float sums differ in the last bits, which flips single quantization steps, and the network
#: carries a flip into its outputs: measured up to 0.026 (``tensorrt``) and 0.137 (``cpu``) on a
#: score, while the mean stays ~3e-5 and 0.02% of the scores move by more than 0.01. So for them
#: the max is bounded loosely and the mass of the differences tightly.
CV_TOLERANCE = {"fp32": (1e-4, 1e-4), "fp16": (5e-3, 5e-3), "int8-ort": (1e-4, 1e-4),
                "int8-modelopt": (0.05, 0.25)}  # (boxes, scores)
#: ModelOpt INT8: mean |Δ score| and the share of scores off by more than 0.01.
CV_FLIPS = (2e-4, 1e-3)


def _images(seed: int, count: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return preprocess([render_image(rng, SIZE)[0] for _ in range(count)], SIZE)


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportResult]:
    out = tmp_path_factory.mktemp("clients")
    calib = _images(1, 4)
    nms = get_nms_params("hard", max_detections=50)
    return {name: export_model(ExportOptions(
        checkpoint=BUNDLED_CHECKPOINT, out=out / name, calib_images=calib, calib_method="max",
        quiet=True, nms=None if kw["nms_graph"] == "soft" else nms, **kw), log=None)  # type: ignore[arg-type]
        for name, kw in RUNS.items()}  # fmt: skip


@pytest.fixture(scope="session")
def files(runs: dict[str, ExportResult]) -> dict[str, Path]:
    return {kind: runs[run].path(key) for kind, (run, key) in KINDS.items()}


@pytest.fixture(scope="session")
def test_images() -> np.ndarray:
    return _images(2, 3)


def _graph(kind: str) -> str:
    return (GRAPH_NMS_PLUGIN if kind.endswith("-plugin") else
            GRAPH_NMS_ONNX if kind.endswith("-onnxnms") else GRAPH_RAW)  # fmt: skip


def test_every_kind_is_written_with_its_graph_and_precision(runs: dict[str, ExportResult],
                                                           files: dict[str, Path]) -> None:
    for kind, path in files.items():
        meta = read_metadata(onnx.load(str(path), load_external_data=False))
        assert meta["graph"] == _graph(kind) and meta["precision"] == kind[:4], kind


_CHECKER = textwrap.dedent("""
    import json, sys
    import onnx
    results = {}
    for path in sys.argv[1:]:
        try:
            model = onnx.load(path)
            onnx.checker.check_model(model, full_check=True)
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
            results[path] = "ok"
        except Exception as e:
            results[path] = f"{type(e).__name__}: {e}"
    mods = sorted(m for m in sys.modules if m.split(".")[0] in ("m2det", "onnxruntime", "torch"))
    print(json.dumps({"results": results, "foreign_modules": mods}))
""")


def test_onnx_checker_in_a_fresh_process_that_imports_only_onnx(files: dict[str, Path]) -> None:
    proc = subprocess.run([sys.executable, "-c", _CHECKER, *map(str, files.values())],
                          capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
    report = json.loads(proc.stdout)
    assert report["foreign_modules"] == []
    failed = {p: r for p, r in report["results"].items() if r != "ok"}
    assert not failed, failed


def test_no_exported_graph_carries_unused_initializers(files: dict[str, Path]) -> None:
    for kind, path in files.items():
        assert unused_initializers(onnx.load(str(path))) == [], kind


def test_opset_and_ir_of_each_kind(runs: dict[str, ExportResult],
                                   files: dict[str, Path]) -> None:
    for kind, path in files.items():
        model = onnx.load(str(path), load_external_data=False)
        opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        want = {"ai.onnx": OPSET_IR[kind][0]}
        if kind.endswith("-plugin"):
            want[PLUGIN_DOMAIN] = 1
            node = next(n for n in model.graph.node if n.op_type == PLUGIN_NAME)
            assert node.domain == PLUGIN_DOMAIN
        assert (opsets, model.ir_version) == (want, OPSET_IR[kind][1]), kind
        run, key = KINDS[kind]
        recorded = runs[run].files[key]
        assert (recorded.opset, recorded.ir_version) == OPSET_IR[kind], kind


def _polygraphy(*args: str) -> tuple[int, str]:
    exe = shutil.which("polygraphy")
    assert exe is not None
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def test_polygraphy_run_onnxrt_validate_on_every_kind(files: dict[str, Path],
                                                      tmp_path: Path) -> None:
    """``polygraphy run --onnxrt --validate`` (every output finite) on every kind. ONNX Runtime
    cannot run the plugin op, so for a plugin graph Polygraphy gets its network, the graph cut
    after ``boxes`` and ``scores`` (``onnx.utils.extract_model``)."""
    if shutil.which("polygraphy") is None:
        pytest.skip("polygraphy is not installed (pip install 'm2det-deploy[test]')")

    def check(kind: str) -> str | None:
        path = str(files[kind])
        if kind.endswith("-plugin"):
            cut = str(tmp_path / f"{kind}_network.onnx")
            onnx.utils.extract_model(path, cut, [INPUT], list(RAW_OUTPUTS))
            path = cut
        rc, log = _polygraphy("run", path, "--onnxrt", "--validate")
        return None if rc == 0 and "PASSED" in log else f"{kind}:\n{log[-2000:]}"

    with ThreadPoolExecutor(2) as pool:
        failures = [f for f in pool.map(check, files) if f]
    assert not failures, "\n".join(failures)


def _recipe(kind: str) -> str:
    return "int8-modelopt" if kind.startswith("int8-modelopt") else \
        "int8-ort" if kind.startswith("int8-ort") else kind[:4]


def _cv_run(path: Path, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(x, INPUT)
    return list(net.forward(names))


def test_opencv_dnn_agrees_with_onnx_runtime_or_refuses_the_plugin(
        files: dict[str, Path], test_images: np.ndarray) -> None:
    """Parity within :data:`CV_TOLERANCE` per recipe, image by image; NMS graphs: the same
    detections (count and classes exactly; ModelOpt INT8: counts within one, the best detection
    the same). OpenCV 5 loads a plugin graph but refuses to run it, naming the op."""
    report = {}
    for kind, path in files.items():
        if kind.endswith("-plugin"):
            with pytest.raises(cv2.error, match=PLUGIN_NAME):
                _cv_run(path, test_images[:1], list(NMS_OUTPUTS))
            continue
        names = list(NMS_OUTPUTS if kind.endswith("-onnxnms") else RAW_OUTPUTS)
        sess = ort_session(path)
        recipe = _recipe(kind)
        box_tol, score_tol = CV_TOLERANCE[recipe]
        worst, flips = [0.0, 0.0], []
        for i in range(len(test_images)):
            x = test_images[i:i + 1]
            got = dict(zip(names, _cv_run(path, x, names), strict=True))
            ref = dict(zip(names, sess.run(names, {INPUT: x}), strict=True))
            if kind.endswith("-onnxnms"):
                n, m = int(ref["num_detections"][0, 0]), int(got["num_detections"][0, 0])
                assert n > 0
                if recipe == "int8-modelopt":  # a flip may move one candidate across a threshold
                    assert abs(m - n) <= 1, (kind, i, m, n)
                    n = 1
                else:
                    assert m == n, (kind, i, m, n)
                np.testing.assert_array_equal(got["detection_classes"][0, :n],
                                              ref["detection_classes"][0, :n])
                boxes = np.abs(got["detection_boxes"][0, :n] - ref["detection_boxes"][0, :n])
                scores = np.abs(got["detection_scores"][0, :n] - ref["detection_scores"][0, :n])
            else:
                confident = ref["scores"][0].max(axis=1) > 0.3  # boxes that reach a detection
                assert confident.any()
                boxes = np.abs(got["boxes"][0] - ref["boxes"][0])[confident]
                scores = np.abs(got["scores"] - ref["scores"])
                flips.append(scores.ravel())
            worst = [max(worst[0], float(boxes.max())), max(worst[1], float(scores.max()))]
        report[kind] = worst
        assert worst[0] <= box_tol and worst[1] <= score_tol, (kind, worst)
        if flips and recipe == "int8-modelopt":
            diffs = np.concatenate(flips)
            assert diffs.mean() <= CV_FLIPS[0] and (diffs > 0.01).mean() <= CV_FLIPS[1], kind
    print(json.dumps(report))


def _stripped(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / f"sanitized_{path.name}"
    rc, log = _polygraphy("surgeon", "sanitize", "--fold-constants", str(path), "-o", str(out))
    assert rc == 0, log[-2000:]
    return out


@pytest.mark.parametrize("kind", ["fp32", "int8-ort-onnxnms"])
def test_runner_runs_a_polygraphy_sanitized_file_given_the_config(
        kind: str, files: dict[str, Path], test_images: np.ndarray, tmp_path: Path) -> None:
    if shutil.which("polygraphy") is None:
        pytest.skip("polygraphy is not installed (pip install 'm2det-deploy[test]')")
    path = _stripped(files[kind], tmp_path)
    assert read_metadata(onnx.load(str(path))) == {}  # sanitize drops metadata_props
    nms = get_nms_params("official")
    with pytest.raises(M2DetError, match=r"no m2det metadata .*pass --config NAME.*160x160"):
        OnnxRunner(path, nms)
    with pytest.raises(M2DetError, match="takes 160x160 images, config 'm2det320_vgg' 320x320"):
        OnnxRunner(path, nms, config="m2det320_vgg")
    original, stripped = OnnxRunner(files[kind], nms), OnnxRunner(path, nms, config="m2det_tiny")
    assert (stripped.graph, stripped.precision, stripped.fixed_batch) == \
        (original.graph, original.precision, original.fixed_batch)
    fixed = ("method", "score_threshold", "iou_threshold", "keep_per_class", "max_detections")
    assert [getattr(stripped.nms, f) for f in fixed] == [getattr(original.nms, f) for f in fixed]
    assert stripped.config.labels == original.config.labels
    a, b = original(test_images[:1]), stripped(test_images[:1])
    assert int(a.num[0]) > 0 and int(b.num[0]) == int(a.num[0])
    np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-4)
    np.testing.assert_array_equal(b.classes, a.classes)


def test_detect_cli_on_a_sanitized_file(files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from m2det.engines.cli import detect_main

    if shutil.which("polygraphy") is None:
        pytest.skip("polygraphy is not installed (pip install 'm2det-deploy[test]')")
    path = _stripped(files["fp32"], tmp_path)
    image = tmp_path / "shapes.png"
    cv2.imwrite(str(image), render_image(np.random.default_rng(3), SIZE)[0])
    assert detect_main(["--onnx", str(path), "--input", str(image), "--out",
                        str(tmp_path / "none")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --config NAME" in err[0], err
    assert detect_main(["--onnx", str(path), "--config", "m2det_tiny", "--input", str(image),
                        "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    assert (tmp_path / "out" / "detections.json").is_file()


def test_ort_spec_setting_is_the_unoptimized_run_for_modelopt_int8(
        files: dict[str, Path], runs: dict[str, ExportResult], test_images: np.ndarray) -> None:
    """With ``WeightBiasQuantization`` off (``ort_session``'s default) ORT's optimized run equals
    ``ORT_DISABLE_ALL`` bit for bit on ModelOpt's INT8 files, and equals ORT's full defaults on
    ORT's quantizer's file (its biases are int32 already)."""
    x = test_images
    for kind in ("int8-modelopt", "int8-modelopt-cpu", "int8-ort"):
        spec = ort_session(files[kind]).run(list(RAW_OUTPUTS), {INPUT: x})
        plain = ort_session(files[kind], optimization="disable").run(list(RAW_OUTPUTS), {INPUT: x})
        full = ort_session(files[kind], disabled_optimizers=()).run(list(RAW_OUTPUTS), {INPUT: x})
        for s, p, f in zip(spec, plain, full, strict=True):
            if kind.startswith("int8-modelopt"):
                np.testing.assert_array_equal(s, p)
            else:
                np.testing.assert_array_equal(s, f)
    assert "int8_ort_defaults_vs_int8" in runs["modelopt"].parity


def _rtx_parser_unavailable() -> str | None:
    """Why the TensorRT-RTX parse test cannot run here, or None."""
    import ctypes
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx") is None:
        return "tensorrt_rtx is not installed"
    lib = os.environ.get("M2DET_PLUGIN_LIB")
    if not lib or not Path(lib).is_file():
        return "no plugin library for TensorRT-RTX ($M2DET_PLUGIN_LIB)"
    try:  # the parser dlopens the unversioned name for plugin graphs
        ctypes.CDLL("libtensorrt_rtx.so")
    except OSError:
        return "libtensorrt_rtx.so (unversioned) is not loadable; the parser needs it for plugins"
    return None


_RTX_PARSE = textwrap.dedent("""
    import json, sys
    import tensorrt_rtx as trt
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    registry = builder.get_plugin_registry()
    registry.load_library(sys.argv[1])
    out = {}
    for path in sys.argv[2:]:
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        ok = parser.parse_from_file(path)
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        out[path] = {"ok": bool(ok), "errors": [str(parser.get_error(i))
                                               for i in range(parser.num_errors)],
                     "plugins": [l.name for l in layers if l.type == trt.LayerType.PLUGIN_V3],
                     "outputs": [network.get_output(i).name for i in range(network.num_outputs)]}
    print(json.dumps(out))
""")


def test_tensorrt_rtx_parser_maps_the_plugin_node_by_op_type(files: dict[str, Path]) -> None:
    """The real TensorRT-RTX ONNX parser, our plugin library registered, imports the node of the
    ``m2det`` domain as ``M2Det_SoftNMS_TRT`` version 1 namespace "" (a fresh process: a parser
    crash must not take pytest down)."""
    why = _rtx_parser_unavailable()
    if why:
        pytest.skip(why)
    plugin_files = [str(p) for k, p in files.items() if k.endswith("-plugin")]
    proc = subprocess.run([sys.executable, "-c", _RTX_PARSE, os.environ["M2DET_PLUGIN_LIB"],
                           *plugin_files], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path, res in json.loads(proc.stdout).items():
        assert res["ok"] and not res["errors"], (path, res)
        assert res["plugins"] == ["/nms/" + PLUGIN_NAME], (path, res)
        assert res["outputs"] == list(NMS_OUTPUTS)
