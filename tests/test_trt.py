"""TensorRT builder and runner.

CPU tests (always run): batch profiles, the plan/TensorRT version rule, ONNX inspection (ours or
not, raw or NMS graph), the sidecar, the build target (tensorrt / tensorrt-rtx) and its options,
the builder's logic against a TensorRT stand-in (``fake_tensorrt.py``), and the one-line exit-2
errors of ``m2det-build`` and the runner when TensorRT, a GPU or the right file is missing. Real
TensorRT-RTX builds are in ``test_trt_rtx_build.py`` and ``test_trt_rtx_plugin.py``.

``@pytest.mark.trt`` tests (``pytest -m trt``) need the real TensorRT package and a GPU: they
export ``m2det_tiny`` (raw graph, and the soft-NMS plugin graph when the plugin library can be
built), build plans, run them and compare with ONNX Runtime + the CPU reference NMS.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fake_tensorrt import FAKE_NMS, fake_network, fake_nms_network
from onnx import TensorProto, helper

from m2det import contract
from m2det.config import get_config
from m2det.engines import builder
from m2det.engines.batch_profile import BatchProfile
from m2det.engines.build_cli import main as build_main
from m2det.engines.onnx_info import file_sha256, inspect_onnx
from m2det.engines.plan_sidecar import read_sidecar, sidecar_path
from m2det.engines.plugin_library import resolve_plugin_library
from m2det.engines.trt_target import (
    TENSORRT,
    TENSORRT_RTX,
    TrtTarget,
    parse_compute_capabilities,
    resolve_target,
)
from m2det.engines.trt_version import check_plan_version, require_tensorrt
from m2det.errors import M2DetError
from m2det.nms import NMSParams

TINY = get_config("m2det_tiny")
S = TINY.input_size


# --------------------------------------------------------------------------- helpers
def _tiny_onnx(path: Path, *, metadata: bool = True, input_name: str = "images",
               batch: int | str = "batch", nms: NMSParams | None = None) -> Path:
    """A small stand-in for an exported file: the right input/outputs and metadata, trivial ops
    (inspect_onnx reads names, shapes, metadata and the plugin node, never the maths)."""
    from m2det.export.onnx_export import set_metadata

    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, S, S])
    nodes = [helper.make_node("Identity", [input_name], ["boxes"]),
             helper.make_node("Identity", [input_name], ["scores"])]  # fmt: skip
    outputs = ["boxes", "scores"]
    if nms is not None:
        outputs = list(contract.NMS_OUTPUTS)
        nodes.append(helper.make_node(contract.PLUGIN_NAME, ["boxes", "scores"], outputs,
                                      plugin_version="1", plugin_namespace="",
                                      **nms.attributes()))  # fmt: skip
    graph = helper.make_graph(nodes, "tiny", [x], [helper.make_empty_tensor_value_info(o)
                                                   for o in outputs])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if metadata:
        set_metadata(model, TINY, "fp16", "nms-plugin" if nms else "raw",
                     None if isinstance(batch, str) else batch,
                     {"nms": nms.attributes()} if nms else None)  # fmt: skip
    onnx.save(model, str(path))
    return path


def _no_tensorrt(monkeypatch: pytest.MonkeyPatch, rtx: bool = False) -> None:
    """Make ``import tensorrt`` give what ``tensorrt-stubs`` alone installs: an empty package;
    ``import tensorrt_rtx`` fail too unless ``rtx``."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    if not rtx:
        monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # None: ImportError


def _one_error_line(err: str, prog: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def _same_nms(a: NMSParams, b: NMSParams) -> bool:
    """Equal as the plugin sees them (float attributes are float32 in ONNX)."""
    f32 = {k: np.float32(v) if isinstance(v, float) else v for k, v in a.attributes().items()}
    return f32 == {k: np.float32(v) if isinstance(v, float) else v
                   for k, v in b.attributes().items()}


def _sidecar(tmp_path: Path, **overrides: Any) -> Path:
    """A plan file with a sidecar as ``build_engine`` writes it."""
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not a real engine")
    meta = {"format": contract.PLAN_SIDECAR_FORMAT, "tensorrt_version": "10.13.0.35",
            "version_compatible": False, "precision": "fp32", "graph": "raw",
            "input_size": S, "batch": {"min": 1, "opt": 2, "max": 4},
            "config": TINY.to_dict(), "nms": None, "plugin": None, **overrides}  # fmt: skip
    sidecar_path(plan).write_text(json.dumps(meta))
    return plan


# --------------------------------------------------------------------------- CPU: pure logic
@pytest.mark.parametrize(("spec", "want"), [
    ("1:8:32", (1, 8, 32)), ("4", (4, 4, 4)), (8, (8, 8, 8)), ((1, 16), (1, 16, 16)),
    ((2, 4, 8), (2, 4, 8)), (BatchProfile(1, 2, 3), (1, 2, 3)),
])  # fmt: skip
def test_batch_profile_parse(spec: Any, want: tuple[int, int, int]) -> None:
    p = BatchProfile.parse(spec)
    assert (p.min, p.opt, p.max) == want
    assert BatchProfile.parse(str(p)) == p


@pytest.mark.parametrize("spec", ["8:1:32", "0:1:2", "a:b", "1:2:3:4", ""])
def test_batch_profile_rejects(spec: str) -> None:
    with pytest.raises(M2DetError, match="batch profile"):
        BatchProfile.parse(spec)


def test_plan_version_rule() -> None:
    check_plan_version("10.13.0.35", "10.13.0.35")
    check_plan_version("10.13.0.35", "10.13.0")
    with pytest.raises(M2DetError):
        check_plan_version("10.13.0.35", "10.13.0.40")  # another build of the same release
    with pytest.raises(M2DetError) as e:
        check_plan_version("10.13.0.35", "10.14.1.48", plan="m.plan")
    msg = str(e.value)
    assert "\n" not in msg and "10.13.0.35" in msg and "10.14.1.48" in msg and "m.plan" in msg
    with pytest.raises(M2DetError):
        check_plan_version("11.1.0.106", "10.16.1.11")
    # version-compatible plans: same major, runtime not older than the builder
    check_plan_version("11.0.0.1", "11.1.0.106", version_compatible=True)
    with pytest.raises(M2DetError):
        check_plan_version("11.1.0.106", "11.0.0.1", version_compatible=True)
    with pytest.raises(M2DetError):
        check_plan_version("10.16.1.11", "11.1.0.106", version_compatible=True)


def test_network_flags_strongly_typed_only_on_trt10() -> None:
    fake = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace(
        STRONGLY_TYPED=3))  # fmt: skip
    assert TrtTarget(TENSORRT, fake, "10.13.0.35").network_flags() == 1 << 3
    assert TrtTarget(TENSORRT, fake, "11.1.0.106").network_flags() == 0
    assert TrtTarget(TENSORRT_RTX, fake, "1.7.1.116").network_flags() == 0  # always strong


def test_target_resolution(monkeypatch: pytest.MonkeyPatch, fake_trt: Any) -> None:
    fake_trt("10.13.0.35")
    assert resolve_target(None).name == TENSORRT  # TensorRT first when both could be there
    rtx = types.ModuleType("tensorrt_rtx")
    rtx.__dict__.update(__version__="1.7.1.116", Builder=object)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", rtx)
    target = resolve_target(TENSORRT_RTX)
    assert (target.name, target.version, target.rtx, target.display) == (
        TENSORRT_RTX, "1.7.1.116", True, "TensorRT-RTX")
    _no_tensorrt(monkeypatch, rtx=True)
    assert resolve_target(None).name == TENSORRT_RTX  # the one installed
    with pytest.raises(M2DetError, match=r"^TensorRT is not installed: pip install "):
        resolve_target(TENSORRT)
    _no_tensorrt(monkeypatch)
    with pytest.raises(M2DetError) as e:
        resolve_target(None)
    assert "neither TensorRT nor TensorRT-RTX" in str(e.value) and "\n" not in str(e.value)
    assert "m2det-deploy[trt]" in str(e.value) and "m2det-deploy[trt-rtx]" in str(e.value)
    with pytest.raises(M2DetError, match="unknown target"):
        resolve_target("tensorrt-llm")


@pytest.mark.parametrize(("spec", "want"), [
    ("86,89,120", ("8.6", "8.9", "12.0")), ("12.0,8.6", ("8.6", "12.0")), ("75", ("7.5",)),
    (" 121, 80 ,80", ("8.0", "12.1")), (["8.9"], ("8.9",)),
])  # fmt: skip
def test_compute_capabilities_parse(spec: Any, want: tuple[str, ...]) -> None:
    assert parse_compute_capabilities(spec) == want


@pytest.mark.parametrize("spec", ["90", "9.0", "100", "sm86", "", "8"])
def test_compute_capabilities_reject(spec: str) -> None:
    with pytest.raises(M2DetError, match="valid: 75, 80, 86, 89, 120, 121"):
        parse_compute_capabilities(spec)


def test_target_options() -> None:
    trt, rtx = TrtTarget(TENSORRT, None, "10.13.0.35"), TrtTarget(TENSORRT_RTX, None, "1.7.1.116")
    assert builder._target_options(rtx, None, None, False) == ("8.6", "8.9", "12.0")
    assert builder._target_options(rtx, "75,86", None, False) == ("7.5", "8.6")
    assert builder._target_options(trt, None, "cache", True) == ()
    for target, args, match in [(trt, ("86", None, False), "is for --target tensorrt-rtx"),
                                (rtx, (None, None, True), "no version-compatible plans"),
                                (rtx, (None, "c", False), "no timing cache")]:  # fmt: skip
        with pytest.raises(M2DetError, match=match):
            builder._target_options(target, *args)


def test_build_error_lines() -> None:
    rtx, path = TrtTarget(TENSORRT_RTX, None, "1.7.1.116"), Path("m_onnxnms.onnx")
    cuda = "[checkMacros.cpp::catchCudaError::250] Error Code 1: Cuda Runtime (cudaError 35)"
    nms = ("[tacticSupply.cpp::getSupportedFormats::48] Error Code 2: Internal Error (Assertion "
           "!layerImpls.empty() failed. /nms/NonMaxSuppression_8_550 has no runners that "
           "implement it In getSupportedFormats at tacticSupply.cpp:48)")
    line = str(builder._build_error(rtx, path, contract.GRAPH_NMS_ONNX, [cuda, nms]))
    assert line.startswith("m_onnxnms.onnx: TensorRT-RTX 1.7.1.116 cannot build ONNX NonMax")
    assert "/nms/NonMaxSuppression_8_550" in line and "--nms-graph hard" in line
    line = str(builder._build_error(rtx, path, contract.GRAPH_RAW, [cuda, "bad shape"]))
    assert line == "TensorRT-RTX failed to build m_onnxnms.onnx: bad shape"  # CUDA noise dropped
    line = str(builder._build_error(rtx, path, contract.GRAPH_RAW, []))
    assert "--verbose" in line


# --------------------------------------------------------------------------- CPU: ONNX inspection
def test_inspect_raw_graph(tmp_path: Path) -> None:
    info = inspect_onnx(_tiny_onnx(tmp_path / "raw.onnx"))
    assert (info.graph, info.precision, info.input_size, info.batch_dim) == ("raw", "fp16", S, None)
    assert info.outputs == ("boxes", "scores") and info.nms is None and not info.plugin
    assert info.config["name"] == TINY.name and len(info.sha256) == 64


def test_inspect_nms_graph(tmp_path: Path) -> None:
    params = NMSParams(method=0, score_threshold=0.2, max_detections=50)
    info = inspect_onnx(_tiny_onnx(tmp_path / "nms.onnx", nms=params, batch=2))
    assert info.graph == "nms-plugin" and info.plugin and info.batch_dim == 2
    assert info.nms is not None and _same_nms(NMSParams(**info.nms), params)  # no plugin_* attrs


@pytest.mark.parametrize(("kind", "match"), [
    ("no-metadata", "not an M2Det export"), ("input-name", "expected one input 'images'"),
    ("garbage", "not a readable ONNX file"), ("missing", "not found"),
])  # fmt: skip
def test_inspect_rejects_foreign_onnx(tmp_path: Path, kind: str, match: str) -> None:
    path = tmp_path / "x.onnx"
    if kind == "no-metadata":
        _tiny_onnx(path, metadata=False)
    elif kind == "input-name":
        _tiny_onnx(path, input_name="input")
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    with pytest.raises(M2DetError, match=match) as e:
        inspect_onnx(path)
    assert "\n" not in str(e.value)


def test_fixed_batch_onnx_refuses_other_profile(tmp_path: Path) -> None:
    path = _tiny_onnx(tmp_path / "b1.onnx", batch=1)
    with pytest.raises(M2DetError, match="fixed batch of 1"):
        builder.build_engine(path, batch="1:8:32")


# --------------------------------------------------------------------------- CPU: CLI errors
def test_build_cli_foreign_onnx_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _tiny_onnx(tmp_path / "foreign.onnx", metadata=False)
    assert build_main(["--onnx", str(path)]) == 2
    line = _one_error_line(capsys.readouterr().err, "m2det-build")
    assert "not an M2Det export" in line


def test_build_cli_without_tensorrt_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _no_tensorrt(monkeypatch)
    path = _tiny_onnx(tmp_path / "raw.onnx")
    assert build_main(["--onnx", str(path), "--batch", "1:2:4"]) == 2
    line = _one_error_line(capsys.readouterr().err, "m2det-build")
    assert "neither TensorRT nor TensorRT-RTX is installed" in line
    assert "pip install 'm2det-deploy[trt]'" in line and "m2det-deploy[trt-rtx]" in line
    assert build_main(["--onnx", str(path), "--target", "tensorrt-rtx"]) == 2
    line = _one_error_line(capsys.readouterr().err, "m2det-build")
    assert "TensorRT-RTX is not installed: pip install 'm2det-deploy[trt-rtx]'" in line
    assert not (tmp_path / "raw.plan").exists()


def test_build_cli_target_options_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         fake_trt: Any) -> None:
    fake_trt("10.13.0.35")
    path = _tiny_onnx(tmp_path / "raw.onnx")
    assert build_main(["--onnx", str(path), "--target", "tensorrt", "--compute-capability",
                       "86"]) == 2  # fmt: skip
    assert "--compute-capability is for" in _one_error_line(capsys.readouterr().err, "m2det-build")
    assert build_main(["--onnx", str(path), "--target", "onnxruntime"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "raw.plan").exists()


def test_build_cli_bad_batch_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _tiny_onnx(tmp_path / "raw.onnx")
    assert build_main(["--onnx", str(path), "--batch", "4:2:1"]) == 2
    assert "batch profile" in _one_error_line(capsys.readouterr().err, "m2det-build")


def test_runner_without_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from m2det.engines.registry import load_runner
    from m2det.engines.trt_runner import TensorRTRunner

    _no_tensorrt(monkeypatch)
    plan = _sidecar(tmp_path)
    with pytest.raises(M2DetError, match="TensorRT is not installed"):
        TensorRTRunner(plan, NMSParams())
    with pytest.raises(M2DetError, match="TensorRT is not installed"):
        load_runner(plan, nms=NMSParams())


def test_detect_cli_with_plan_without_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from m2det.engines.cli import detect_main

    _no_tensorrt(monkeypatch)
    plan = _sidecar(tmp_path)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    rc = detect_main(["--engine", str(plan), "--input", str(tmp_path / "a.png"),
                      "--out", str(tmp_path / "out")])  # fmt: skip
    assert rc == 2
    assert "TensorRT is not installed" in _one_error_line(capsys.readouterr().err, "m2det-detect")


def test_sidecar_missing_or_foreign(tmp_path: Path) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(M2DetError, match="m.plan.json.* not found"):
        read_sidecar(plan)
    sidecar_path(plan).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(M2DetError, match="not an m2det plan sidecar"):
        read_sidecar(plan)
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(M2DetError, match="unreadable plan metadata"):
        read_sidecar(plan)


def test_plan_nms_params_from_sidecar(tmp_path: Path) -> None:
    from m2det.engines.trt_runner import plan_nms_params

    params = NMSParams(method=2, sigma=0.5, max_detections=100)
    meta = read_sidecar(_sidecar(tmp_path, graph="nms-plugin", nms=params.attributes()))
    assert plan_nms_params(meta) == params
    assert plan_nms_params({"graph": "raw", "nms": None}) is None
    from m2det.engines.trt_runner import _differs

    rounded = NMSParams(score_threshold=float(np.float32(0.05)), iou_threshold=0.3)
    assert not _differs(NMSParams(score_threshold=0.05, iou_threshold=0.3), rounded)
    assert _differs(NMSParams(score_threshold=0.1), rounded)


def test_gpu_info_without_gpu() -> None:
    from m2det.engines.cuda_memory import cudart, gpu_info

    err, count = cudart().cudaGetDeviceCount()
    if err == cudart().cudaError_t.cudaSuccess and count > 0:
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(M2DetError, match="no usable CUDA GPU") as e:
        gpu_info()
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- CPU: builder logic
# --------------------------------------------------------------------------- CPU: builder logic

def test_build_engine_logic(tmp_path: Path, fake_trt: Any) -> None:
    trt = fake_trt("10.13.0.35")
    params = NMSParams(method=0, max_detections=50)
    onnx_path = _tiny_onnx(tmp_path / "tiny_nms.onnx", nms=params)
    lib = tmp_path / "libm2det_plugins.so"
    lib.write_bytes(b"\x7fELF")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = builder.build_engine(onnx_path, batch="1:2:4", plugin_lib=lib, timing_cache=cache,
                              workspace_gib=2, progress=False)  # fmt: skip
    assert plan == tmp_path / "tiny_nms.plan" and plan.read_bytes() == b"PLAN-BYTES"  # plain
    calls = trt.calls
    assert calls["network_flags"] == 1 << 1  # STRONGLY_TYPED on TensorRT 10
    assert calls["cleared"] == {"TF32"} and calls["flags"] == set()
    assert calls["workspace"] == ("WS", 2 << 30)
    assert calls["profile"] == ("images", ([1, 3, S, S], [2, 3, S, S], [4, 3, S, S]))
    assert calls["loaded"] == [str(lib.resolve())]
    assert cache.read_bytes() == b"CACHEold"  # loaded, then saved
    meta = read_sidecar(plan)
    assert meta["tensorrt_version"] == "10.13.0.35" and meta["precision"] == "fp16"
    assert (meta["library"], meta["library_version"]) == ("tensorrt", "10.13.0.35")
    assert meta["gpu"] == {"name": "Fake GPU", "compute_capability": "9.0"}
    assert meta["compute_capabilities"] == ["9.0"]  # the build GPU's
    assert [(t["name"], t["mode"], t["dtype"], t["shape"]) for t in meta["io"]] == [
        ("images", "input", "float32", [-1, 3, S, S]),
        *[(n, "output", "float32", []) for n in contract.NMS_OUTPUTS]]  # as the stand-in parsed
    assert meta["graph"] == "nms-plugin" and meta["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert meta["plugin"]["library"] == str(lib.resolve()) and not meta["version_compatible"]
    assert meta["source_onnx"]["sha256"] == file_sha256(onnx_path)
    assert _same_nms(NMSParams(**meta["nms"]), params)
    from m2det.config import M2DetConfig

    assert M2DetConfig.from_dict(meta["config"]) == TINY


def test_build_engine_trt11_version_compatible(tmp_path: Path, fake_trt: Any) -> None:
    trt = fake_trt("11.1.0.106")
    lib = tmp_path / "libm2det_plugins.so"
    lib.write_bytes(b"\x7fELF")
    plan = builder.build_engine(_tiny_onnx(tmp_path / "n.onnx", nms=NMSParams(max_detections=9)),
                              plugin_lib=lib, timing_cache=tmp_path / "c", version_compatible=True,
                              tf32=True, progress=False)  # fmt: skip
    assert trt.calls["network_flags"] == 0  # TensorRT 11: always strongly typed, no flag
    assert trt.calls["flags"] == {"VERSION_COMPATIBLE"} and trt.calls["cleared"] == set()
    assert trt.calls["config"].plugins_to_serialize == [str(lib.resolve())]
    meta = read_sidecar(plan)
    assert meta["version_compatible"] and meta["plugin"]["serialized_in_plan"] and meta["tf32"]


def test_build_engine_errors(tmp_path: Path, fake_trt: Any, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake_trt("10.13.0.35")
    broken = _tiny_onnx(tmp_path / "broken.onnx")
    assert build_main(["--onnx", str(broken), "--timing-cache", str(tmp_path / "c")]) == 2
    line = _one_error_line(capsys.readouterr().err, "m2det-build")
    assert line.endswith(f"TensorRT cannot parse broken.onnx: node /nms/X ({contract.PLUGIN_NAME}"
                         f"): Unsupported op ({contract.PLUGIN_NAME}: sigma must be > 0); 1 more "
                         "error(s)")  # the plugin's own reason, from the log
    monkeypatch.delenv("M2DET_PLUGIN_LIB", raising=False)
    monkeypatch.setenv("M2DET_SOFTNMS_LIB_DIR", str(tmp_path / "nowhere"))
    nms = _tiny_onnx(tmp_path / "nms.onnx", nms=NMSParams(max_detections=9))
    assert build_main(["--onnx", str(nms)]) == 2
    assert "--plugin-lib" in _one_error_line(capsys.readouterr().err, "m2det-build")
    assert not (tmp_path / "broken.plan").exists() and not (tmp_path / "nms.plan").exists()


# --------------------------------------------------------------------------- CPU: runner data flow
# --------------------------------------------------------------------------- CPU: runner data flow

def test_runner_refuses_tensorrt_rtx_plans(tmp_path: Path, fake_gpu: Any) -> None:
    from m2det.engines.trt_runner import TensorRTRunner

    plan = _sidecar(tmp_path, library="tensorrt-rtx", library_version="1.7.1.116",
                    tensorrt_version=None)  # fmt: skip
    with pytest.raises(M2DetError) as e:
        TensorRTRunner(plan, NMSParams())
    line = str(e.value)
    assert line.startswith("m.plan was built by TensorRT-RTX 1.7.1.116 (m2det-build --target "
                           "tensorrt-rtx); the TensorRT runtime cannot load it")
    assert "\n" not in line and "--target tensorrt" in line
    plan = _sidecar(tmp_path)  # a TensorRT sidecar beside TensorRT-RTX's bytes
    plan.write_bytes(b"vtrt\0\0\0\0" + b"\0" * 64)
    with pytest.raises(M2DetError, match="m.plan was built by TensorRT-RTX \\(m2det-build"):
        TensorRTRunner(plan, NMSParams())


def test_runner_data_flow(tmp_path: Path, fake_gpu: Any) -> None:
    from m2det.engines.trt_runner import TensorRTRunner
    from m2det.nms import batched_nms

    plan = _sidecar(tmp_path)
    plan.write_bytes(b"PLAN-BYTES")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 3, S, S)).astype(np.float32)
    params = NMSParams(method=0, score_threshold=0.05, iou_threshold=0.5)
    with TensorRTRunner(plan, params) as runner:
        assert runner.batch_range == (1, 4) and runner.name == "tensorrt-fp32"
        boxes, scores = runner.raw(images)
        want_boxes, want_scores = fake_network(images)
        np.testing.assert_array_equal(boxes, want_boxes)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
        dets = runner(images)
        ref = batched_nms(want_boxes, want_scores, params)
        np.testing.assert_array_equal(dets.num, ref.num)
        np.testing.assert_allclose(dets.scores, ref.scores, rtol=1e-6)
        one = runner(images[2:3])  # a smaller batch after a larger one
        np.testing.assert_allclose(one.scores[0], ref.scores[2], rtol=1e-6)
        assert runner.last_timing.network > 0
        with pytest.raises(M2DetError, match="outside"):
            runner(np.zeros((5, 3, S, S), np.float32))
        with pytest.raises(M2DetError, match=r"expected images \[B,3,160,160\]"):
            runner(np.zeros((1, 3, 8, 8), np.float32))
    assert not fake_gpu.memory  # every buffer freed on exit


def test_runner_nms_plan(tmp_path: Path, fake_gpu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from m2det.engines.trt_runner import TensorRTRunner

    lib = tmp_path / "libm2det_plugins.so"
    lib.write_bytes(b"\x7fELF")
    plugin = {"op": contract.PLUGIN_NAME, "version": "1", "library": str(lib),
              "serialized_in_plan": False}  # fmt: skip
    plan = _sidecar(tmp_path, graph="nms-plugin", nms=FAKE_NMS.attributes(), plugin=plugin)
    plan.write_bytes(b"NMS-PLAN")
    monkeypatch.delenv("M2DET_PLUGIN_LIB", raising=False)
    images = np.random.default_rng(2).uniform(0, 255, (2, 3, S, S)).astype(np.float32)
    with pytest.warns(UserWarning, match="runs the NMS it was built with"):
        runner = TensorRTRunner(plan, NMSParams(method=1))  # other NMS asked: warned, ignored
    with runner:
        assert runner.has_nms and runner.nms == FAKE_NMS
        dets = runner(images)
        want = fake_nms_network(images)
        np.testing.assert_array_equal(dets.num, want["num_detections"][:, 0])
        np.testing.assert_array_equal(dets.classes, want["detection_classes"])
        np.testing.assert_allclose(dets.boxes, want["detection_boxes"], rtol=1e-6)
        assert dets.num.dtype == np.int32 and runner.last_timing.nms == 0
        with pytest.raises(M2DetError, match="has NMS inside"):
            runner.raw(images)
    lib.unlink()  # the recorded library is gone and nothing else names one
    monkeypatch.setenv("M2DET_SOFTNMS_LIB_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(M2DetError, match="needs the soft-NMS plugin library"):
        TensorRTRunner(plan)


def test_runner_cuda_graph_replays(tmp_path: Path, fake_gpu: Any) -> None:
    from m2det.engines.trt_runner import TensorRTRunner

    plan = _sidecar(tmp_path)
    plan.write_bytes(b"PLAN-BYTES")
    images = np.random.default_rng(1).uniform(0, 255, (2, 3, S, S)).astype(np.float32)
    with TensorRTRunner(plan, NMSParams(), cuda_graph=True) as runner:
        for k in range(3):  # capture once, replay with new input data each time
            x = images + k
            np.testing.assert_allclose(runner.raw(x)[1], fake_network(x)[1], rtol=1e-6)
        assert fake_gpu.state["launches"] == 3
    assert not fake_gpu.memory


def test_runner_refuses_undeserializable_plan(tmp_path: Path, fake_gpu: Any) -> None:
    from m2det.engines.trt_runner import TensorRTRunner

    plan = _sidecar(tmp_path)  # content is not a plan
    with pytest.raises(M2DetError, match="cannot deserialize"):
        TensorRTRunner(plan, NMSParams())(np.zeros((1, 3, S, S), np.float32))
    assert not fake_gpu.memory


# --------------------------------------------------------------------------- CPU: C++ preprocessing
_HARNESS = """#include "m2det/detector.h"
extern "C" int m2det_preprocess(unsigned char const* data, int w, int h, int size, float* out)
{
    try { m2det::preprocessBgr(m2det::ImageView{data, w, h, 0}, size, out); return 0; }
    catch (...) { return 1; }
}
"""


@pytest.mark.parametrize("opencv", [True, False], ids=["cv-resize", "own-bilinear"])
def test_cpp_preprocessing_matches_python(tmp_path: Path, opencv: bool) -> None:
    """engines/cpp's resize + HWC->CHW equals m2det.preprocess (cv2.resize INTER_LINEAR) bit for
    bit, with OpenCV and with its own fixed-point resize (down- and upscaling, 2x, borders)."""
    import ctypes
    import shutil
    import subprocess

    import cv2

    from m2det.preprocess import preprocess

    cpp = Path(__file__).resolve().parents[1] / "engines" / "cpp"
    cv_include = Path("/usr/include/opencv4")
    if shutil.which("g++") is None or (opencv and not cv_include.is_dir()):
        pytest.skip("needs g++ (and the OpenCV headers, libopencv-dev, for the cv-resize build)")
    (tmp_path / "harness.cpp").write_text(_HARNESS)
    lib = tmp_path / "libpreprocess.so"
    cmd = ["g++", "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
           f"-I{cpp / 'include'}", f"-I{cpp.parent.parent / 'plugins' / 'include'}",
           str(tmp_path / "harness.cpp"), str(cpp / "src/preprocess.cpp"),
           "-o", str(lib)]  # fmt: skip
    if opencv:
        cmd[1:1] = ["-DM2DET_WITH_OPENCV", f"-I{cv_include}"]
        cmd += ["-lopencv_imgproc", "-lopencv_core"]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    fn = ctypes.CDLL(str(lib)).m2det_preprocess
    rng = np.random.default_rng(0)
    sizes = [(480, 640, 160), (100, 37, 160), (321, 123, 320), (30, 50, 160), (320, 320, 160),
             (160, 160, 160), (1, 1, 160), (97, 1000, 512), (1080, 1920, 320)]  # fmt: skip
    sizes += [(int(h), int(w), 320) for h, w in rng.integers(1, 900, (20, 2))]
    for i, (h, w, s) in enumerate(sizes):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if i % 2:  # smooth images round differently from noise
            img = cv2.GaussianBlur(img, (0, 0), 3)
        out = np.empty((3, s, s), np.float32)
        assert fn(ctypes.c_void_p(img.ctypes.data), w, h, s, ctypes.c_void_p(out.ctypes.data)) == 0
        diff = np.abs(out - preprocess(img, s)[0])
        assert diff.max() == 0, (h, w, s, diff.max(), (diff > 0).sum())


# --------------------------------------------------------------------------- TensorRT + GPU
def _tensorrt_or_skip() -> str:
    try:
        version = require_tensorrt()
    except M2DetError as e:
        pytest.skip(f"TensorRT not usable here: {e}")
    from m2det.engines.cuda_memory import gpu_info

    try:
        gpu_info()
    except M2DetError as e:
        pytest.skip(str(e))
    return version


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """m2det_tiny exported as a raw graph (dynamic batch) and, when the plugin library is
    available, as a soft-NMS plugin graph; plus a batch of images."""
    _tensorrt_or_skip()
    import torch

    from m2det.export.nms_graph import add_plugin_nms
    from m2det.export.onnx_export import export_raw, save_model, set_metadata
    from m2det.model import M2DetInference, build_model
    from m2det.shapes import render_image

    out = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    try:  # the bundled trained model gives clear detections (no near-ties in NMS)
        from m2det.checkpoint import load_model
        from m2det.engines.registry import default_checkpoint

        model = load_model(default_checkpoint(), TINY.name)
    except M2DetError:
        model = build_model(TINY)
    module = M2DetInference(model).eval()
    raw = export_raw(module, None)
    set_metadata(raw, TINY, "fp32", "raw", None)
    save_model(raw, out / "tiny.onnx")
    params = NMSParams(method=1, score_threshold=0.05, max_detections=100)
    files: dict[str, Any] = {"raw": out / "tiny.onnx", "params": params, "dir": out}
    try:
        lib = resolve_plugin_library(None)
        if lib is None:
            from m2det.engines.soft_nms_kernel import build_libraries, library_dir

            build_libraries(library_dir())
            lib = resolve_plugin_library(None)
    except M2DetError as e:
        print(f"soft-NMS plugin library unavailable: {e}")
        lib = None
    if lib is not None:
        nms = add_plugin_nms(raw, params)
        set_metadata(nms, TINY, "fp32", "nms-plugin", None, {"nms": params.attributes()})
        save_model(nms, out / "tiny_nms.onnx")
        files["nms"], files["lib"] = out / "tiny_nms.onnx", lib
    rng = np.random.default_rng(0)
    from m2det.preprocess import preprocess

    files["images"] = preprocess([render_image(rng, 2 * S)[0] for _ in range(3)], S)
    return files


def _ort_raw(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(["boxes", "scores"], {"images": images})
    return boxes, scores


@pytest.mark.trt
def test_raw_plan_matches_onnxruntime(exported: dict[str, Any]) -> None:
    from m2det.engines.trt_runner import TensorRTRunner
    from m2det.nms import batched_nms

    plan = builder.build_engine(exported["raw"], exported["dir"] / "raw.plan", batch="1:2:4",
                              progress=False)  # fmt: skip
    meta = read_sidecar(plan)
    assert meta["graph"] == "raw" and meta["batch"] == {"min": 1, "opt": 2, "max": 4}
    images = exported["images"]
    ref_boxes, ref_scores = _ort_raw(exported["raw"], images)
    with TensorRTRunner(plan, exported["params"]) as runner:
        assert runner.batch_range == (1, 4)
        boxes, scores = runner.raw(images)
        np.testing.assert_allclose(boxes, ref_boxes, atol=1e-4)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
        dets = runner(images)
        ref = batched_nms(boxes, scores, exported["params"])
        np.testing.assert_array_equal(dets.num, ref.num)
        np.testing.assert_array_equal(dets.classes, ref.classes)
        np.testing.assert_array_equal(dets.scores, ref.scores)
        one = runner(images[:1])  # another batch size in the same profile
        np.testing.assert_array_equal(one.num, dets.num[:1])
        with pytest.raises(M2DetError, match="outside"):
            runner(np.concatenate([images, images]))  # 6 > max 4


@pytest.mark.trt
def test_raw_plan_cuda_tensor_and_graph(exported: dict[str, Any]) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA (needed for the CUDA-tensor input path)")
    from m2det.engines.trt_runner import TensorRTRunner

    plan = exported["dir"] / "raw.plan"
    if not plan.is_file():
        plan = builder.build_engine(exported["raw"], plan, batch="1:2:4", progress=False)
    images = exported["images"]
    with TensorRTRunner(plan, exported["params"]) as host_runner:
        want = host_runner(images)
    with TensorRTRunner(plan, exported["params"], cuda_graph=True) as runner:
        for _ in range(2):  # capture, then replay
            got = runner(torch.from_numpy(images).cuda())
            np.testing.assert_array_equal(got.num, want.num)
            np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-6)


@pytest.mark.trt
def test_nms_plan_matches_reference(exported: dict[str, Any]) -> None:
    from m2det.engines.trt_runner import TensorRTRunner
    from m2det.nms import batched_nms

    if "nms" not in exported:
        pytest.skip("soft-NMS plugin library not available (build plugins/ with TensorRT)")
    plan = builder.build_engine(exported["nms"], exported["dir"] / "nms.plan", batch="1:2:4",
                              plugin_lib=exported["lib"], progress=False)  # fmt: skip
    images = exported["images"]
    ref = batched_nms(*_ort_raw(exported["raw"], images), exported["params"])
    with TensorRTRunner(plan) as runner:
        assert _same_nms(runner.nms, exported["params"])
        got = runner(images)
        assert runner.last_timing.nms == 0
    for b in range(len(images)):
        rb, rs, rc = ref.image(b)
        gb, gs, gc = got.image(b)
        assert abs(len(rs) - len(gs)) <= max(2, len(rs) // 20)
        # the engine's network and ONNX Runtime differ by ~1e-6, which may reorder near-ties:
        # every one of the reference's top detections must be found (class, box, score)
        top = min(len(rs), 20)
        found = sum(bool(np.any((gc == rc[j]) & (np.abs(gs - rs[j]) < 1e-4)
                                & (np.abs(gb - rb[j]).max(axis=1) < 1e-4)))
                    for j in range(top))  # fmt: skip
        assert found >= 0.9 * top, (b, found, top)


@pytest.mark.trt
def test_trt_bad_inputs_exit_2(exported: dict[str, Any], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from m2det.engines.trt_runner import TensorRTRunner

    plan = exported["dir"] / "raw.plan"
    if not plan.is_file():
        plan = builder.build_engine(exported["raw"], plan, batch="1:2:4", progress=False)
    # a plan whose sidecar names another TensorRT version
    other = tmp_path / "other.plan"
    other.write_bytes(plan.read_bytes())
    meta = read_sidecar(plan)
    sidecar_path(other).write_text(json.dumps({**meta, "tensorrt_version": "9.0.0.1"}))
    with pytest.raises(M2DetError, match="built with TensorRT 9.0.0.1"):
        TensorRTRunner(other, exported["params"])
    # an NMS plan without its plugin library
    sidecar_path(other).write_text(json.dumps({
        **meta, "graph": "nms", "nms": exported["params"].attributes(),
        "plugin": {"op": contract.PLUGIN_NAME, "version": "1", "library": str(tmp_path / "gone.so"),
                   "serialized_in_plan": False}}))  # fmt: skip
    monkeypatch.delenv("M2DET_PLUGIN_LIB", raising=False)
    monkeypatch.setenv("M2DET_SOFTNMS_LIB_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(M2DetError, match="needs the soft-NMS plugin library"):
        TensorRTRunner(other)
    # the CLI: ONNX that is not ours, and a missing plugin library
    foreign = _tiny_onnx(tmp_path / "foreign.onnx", metadata=False)
    assert build_main(["--onnx", str(foreign)]) == 2
    assert "not an M2Det export" in _one_error_line(capsys.readouterr().err, "m2det-build")
    assert build_main(["--onnx", str(exported["raw"]), "--plugin-lib", "/no/such.so"]) == 2
    assert "plugin library not found" in _one_error_line(capsys.readouterr().err, "m2det-build")


def test_cuda_buffers_free_themselves_as_context_managers(fake_gpu: Any) -> None:
    from m2det.engines.cuda_memory import DeviceBuffer, HostBuffer, Stream

    with Stream() as stream, DeviceBuffer(64) as device, HostBuffer((4, 4), np.float32) as host:
        assert device.ptr and host.array.shape == (4, 4) and stream.handle == 77
        assert len(fake_gpu.memory) == 2
    assert not fake_gpu.memory and device.ptr == 0 and host.ptr == 0
    device.free()  # a second free is a no-op
