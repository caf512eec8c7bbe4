"""Every file kind ``m2det-export`` writes, built for real by TensorRT-RTX's builder (no GPU needed)
through ``build_engine``, the function ``m2det-build`` calls, at batch profile 1:4:8.

Files come from ``export_model`` (the one export path): the FP32, FP16 (AutoCast) and INT8
(ModelOpt, TensorRT Q/DQ placement) raw graphs, the soft-NMS plugin graph of each, the hard-NMS
plugin graph and the ``onnx-hard`` graph. Each build must parse into the network the contract
describes (input/output names, dtypes, shapes), write a TensorRT-RTX plan and a sidecar saying
so; ``onnx-hard`` must end in the documented one-line refusal (TensorRT-RTX 1.7 cannot build
NonMaxSuppression). ``m2det-build`` itself is checked once per outcome.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rtx_support import plugin_library, rtx_target

from m2det import contract
from m2det.engines.build_cli import main as build_main
from m2det.engines.builder import build_engine
from m2det.engines.plan_sidecar import read_sidecar
from m2det.engines.trt_target import DEFAULT_RTX_COMPUTE_CAPABILITIES, RTX_PLAN_MAGIC
from m2det.errors import M2DetError
from m2det.export.pipeline import ExportOptions, export_model

CHECKPOINT = Path(__file__).resolve().parents[1] / "m2det" / "assets" / "m2det_tiny_shapes.pth"
K = 100  # detections per image of the exported NMS graphs
#: file kind -> (export run, ExportResult key)
KINDS = {"fp32": ("soft", "fp32"), "fp16": ("soft", "fp16"), "int8": ("soft", "int8"),
         "soft-fp32": ("soft", "nms"), "soft-fp16": ("soft", "fp16_nms"),
         "soft-int8": ("soft", "int8_nms"), "hard-fp32": ("hard", "nms")}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The exported files by kind (see KINDS, plus "onnx-hard") and the plugin library (None,
    with the reason, where it cannot be built: the plugin graphs skip, the rest still build)."""
    rtx_target()
    try:
        lib, why = plugin_library(), ""
    except pytest.skip.Exception as e:
        lib, why = None, str(e)
    calib = np.random.default_rng(0).uniform(0, 255, (4, 3, 160, 160)).astype(np.float32)
    runs = {"soft": {"fp16": True, "int8": True, "calib_images": calib}, "hard": {},
            "onnx-hard": {}}  # fmt: skip
    results = {}
    for graph, extra in runs.items():
        out = tmp_path_factory.mktemp(graph)
        results[graph] = export_model(ExportOptions(CHECKPOINT, out, nms_graph=graph, quiet=True,
                                                    **extra), log=None)  # fmt: skip
    paths = {kind: results[run].path(key) for kind, (run, key) in KINDS.items()}
    paths["onnx-hard"] = results["onnx-hard"].path("onnxnms")
    return {"paths": paths, "lib": lib, "why": why}


def _expected_io(path: Path) -> list[tuple[str, str, str, list[int]]]:
    """The contract's network for an exported file: images [B,3,S,S] float32 in; raw boxes
    [B,A,4] / scores [B,A,C] float32, or the 4 NMS outputs with K detections."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {o.name: [d.dim_value or -1 for d in o.type.tensor_type.shape.dim]
            for o in graph.output}  # fmt: skip
    io = [(contract.INPUT, "input", "float32", [-1, 3, 160, 160])]
    if contract.RAW_OUTPUTS[0] in dims:
        a, c = dims["scores"][1], dims["scores"][2]
        assert a > 0 and c > 0
        return io + [("boxes", "output", "float32", [-1, a, 4]),
                     ("scores", "output", "float32", [-1, a, c])]  # fmt: skip
    types = ("int32", "float32", "float32", "int32")
    shapes = ([-1, 1], [-1, K, 4], [-1, K], [-1, K])
    return io + [(n, "output", t, s)
                 for n, t, s in zip(contract.NMS_OUTPUTS, types, shapes, strict=True)]


@pytest.mark.parametrize("kind", list(KINDS))
def test_exported_kind_builds(files: dict[str, Any], kind: str, tmp_path: Path) -> None:
    if "-" in kind and files["lib"] is None:
        pytest.skip(files["why"])
    path = files["paths"][kind]
    plan = build_engine(path, tmp_path / f"{kind}.plan", batch="1:4:8", target="tensorrt-rtx",
                        plugin_lib=files["lib"], progress=False)  # fmt: skip
    meta = read_sidecar(plan)
    got = [(t["name"], t["mode"], t["dtype"], t["shape"]) for t in meta["io"]]
    assert got == _expected_io(path)
    assert plan.read_bytes()[:4] == RTX_PLAN_MAGIC
    assert meta["library"] == "tensorrt-rtx" and meta["library_version"] == rtx_target().version
    assert meta["compute_capabilities"] == list(DEFAULT_RTX_COMPUTE_CAPABILITIES)
    assert meta["batch"] == {"min": 1, "opt": 4, "max": 8} and meta["gpu"] is None
    assert meta["precision"] == kind.rsplit("-", 1)[-1]
    want_graph = contract.GRAPH_RAW if "-" not in kind else contract.GRAPH_NMS_PLUGIN
    assert meta["graph"] == want_graph and (meta["plugin"] is not None) == ("-" in kind)
    if kind.startswith("hard"):
        assert meta["nms"]["method"] == 0


def test_onnx_hard_is_refused_in_one_line(files: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(M2DetError) as e:
        build_engine(files["paths"]["onnx-hard"], tmp_path / "o.plan", batch="1:4:8",
                     target="tensorrt-rtx", progress=False)  # fmt: skip
    line = str(e.value)
    assert "cannot build ONNX NonMaxSuppression" in line and "--nms-graph hard" in line
    assert "\n" not in line and not list(tmp_path.iterdir())  # nothing half-written


def test_build_cli_writes_plan_and_sidecar(files: dict[str, Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    if files["lib"] is None:
        pytest.skip(files["why"])
    out = tmp_path / "soft.plan"
    rc = build_main(["--target", "tensorrt-rtx", "--onnx", str(files["paths"]["soft-fp16"]),
                     "--out", str(out), "--batch", "1:4:8", "--compute-capability", "120,75",
                     "--plugin-lib", str(files["lib"]), "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.startswith(f"wrote {out} (fp16, nms-plugin graph, batch 1:4:8, "
                                   f"TensorRT-RTX {rtx_target().version} for compute capability "
                                   "7.5,12.0")  # fmt: skip
    assert read_sidecar(out)["compute_capabilities"] == ["7.5", "12.0"]


@pytest.mark.parametrize(("args", "match"), [
    (["--compute-capability", "90"], "cannot target compute capability '90'"),
    (["--version-compatible"], "no version-compatible plans"),
    (["--timing-cache", "t.cache"], "no timing cache"),
])  # fmt: skip
def test_build_cli_refuses_what_tensorrt_rtx_lacks(files: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   args: list[str], match: str) -> None:
    rc = build_main(["--target", "tensorrt-rtx", "--onnx", str(files["paths"]["fp32"]),
                     "--out", str(tmp_path / "x.plan"), *args])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("m2det-build: error: ")
    assert match in err[0] and not list(tmp_path.iterdir())


def test_build_cli_onnx_hard_refusal(files: dict[str, Any], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = build_main(["--target", "tensorrt-rtx", "--onnx", str(files["paths"]["onnx-hard"]),
                     "--out", str(tmp_path / "o.plan"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot build ONNX NonMaxSuppression" in err[0]
