"""OpenVinoRunner on the bundled model's exports: f32 results equal ONNX Runtime's (within the
tolerance docs/openvino.md states), throughput mode equals latency mode bit for bit, NMS graphs
pass through, precision is explicit and recorded, unusable files and missing packages are one
line, no telemetry object is ever created; the ``--backend openvino`` CLI paths."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

if importlib.util.find_spec("openvino") is None:  # (importing it here would start its telemetry)
    pytest.skip("OpenVINO is not installed (pip install 'm2det-deploy[openvino]')",
                allow_module_level=True)  # fmt: skip

from m2det.checkpoint import load_model  # noqa: E402
from m2det.engines.cli import detect_main, eval_main  # noqa: E402
from m2det.engines.onnx_runner import OnnxRunner  # noqa: E402
from m2det.engines.openvino_runner import OpenVinoRunner, cpu_capabilities  # noqa: E402
from m2det.engines.registry import default_checkpoint, load_runner  # noqa: E402
from m2det.errors import M2DetError  # noqa: E402
from m2det.export import nms_graph  # noqa: E402
from m2det.export.onnx_export import export_raw, save_model, set_metadata  # noqa: E402
from m2det.model import M2DetInference  # noqa: E402
from m2det.nms import get_nms_params  # noqa: E402
from m2det.preprocess import list_images, preprocess, read_image  # noqa: E402
from m2det.shapes import generate  # noqa: E402

NMS = get_nms_params("official")
HARD = get_nms_params("hard", max_detections=50)
#: f32 OpenVINO vs ONNX Runtime on the same FP32 file (docs/openvino.md): raw boxes (normalized)
#: and scores; measured 1.4e-5 / 1.9e-6 on 16 val images of the bundled model.
BOX_TOL, SCORE_TOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled model as a raw, onnx-hard and plugin graph, plus a few shapes images with
    their COCO annotations."""
    folder = tmp_path_factory.mktemp("openvino")
    model = load_model(default_checkpoint()).eval()
    cfg = model.config
    torch.manual_seed(0)
    raw = export_raw(M2DetInference(model).eval(), batch=None)
    set_metadata(raw, cfg, "fp32", "raw", None)
    out = {"raw": folder / "tiny.onnx", "onnxnms": folder / "tiny_onnxnms.onnx",
           "plugin": folder / "tiny_nms.onnx"}  # fmt: skip
    save_model(raw, out["raw"])
    hard = nms_graph.add_onnx_hard_nms(raw, HARD)
    set_metadata(hard, cfg, "fp32", "nms-onnx", None, {"nms": HARD.attributes()})
    save_model(hard, out["onnxnms"])
    plugin = nms_graph.add_plugin_nms(raw, get_nms_params("official", max_detections=50))
    set_metadata(plugin, cfg, "fp32", "nms-plugin", None)
    save_model(plugin, out["plugin"])
    paths = generate(folder / "shapes", train=0, val=6, seed=3, size=cfg.input_size)
    out["images"], out["ann"] = paths["val_images"], paths["val_json"]
    return out


def _batch(data: dict[str, Path], n: int = 6) -> np.ndarray:
    return preprocess([read_image(p) for p in list_images(data["images"])[:n]], 160)


def test_f32_equals_onnxruntime(data: dict[str, Path]) -> None:
    x = _batch(data)
    with OnnxRunner(data["raw"], NMS, threads=1) as ort, \
            OpenVinoRunner(data["raw"], NMS, threads=1) as ov:  # fmt: skip
        (rb, rs), (ob, os_) = ort.raw(x), ov.raw(x)
        want, got = ort(x), ov(x)
        assert ov.name == "openvino-fp32-f32" and ov.inference_precision == "f32"
        assert ov.config == ort.config and ov.graph == "raw"
        assert ov.last_timing.network > 0 and ov.last_timing.nms > 0
    assert np.abs(ob - rb).max() <= BOX_TOL and np.abs(os_ - rs).max() <= SCORE_TOL
    assert want.num.min() > 0
    np.testing.assert_array_equal(got.num, want.num)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=BOX_TOL)
    np.testing.assert_allclose(got.scores, want.scores, atol=SCORE_TOL)


def test_throughput_mode_equals_latency_mode(data: dict[str, Path]) -> None:
    x = _batch(data)
    with OpenVinoRunner(data["raw"], NMS, threads=1) as one, \
            OpenVinoRunner(data["raw"], NMS, mode="throughput", requests=3) as many:  # fmt: skip
        assert one.preferred_batch == 1 and many.preferred_batch == 3
        a, b = one.raw(x), many.raw(x)
        dets = many(torch.from_numpy(x))  # torch tensors are accepted too
        assert many.settings()["requests"] == 3 and many.settings()["mode"] == "throughput"
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert len(dets) == len(x)


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_precision_is_explicit_and_recorded(data: dict[str, Path], precision: str) -> None:
    caps = cpu_capabilities()
    with OpenVinoRunner(data["raw"], NMS, threads=1, ov_precision=precision) as runner:
        runner(_batch(data, 2))
        chosen = runner.inference_precision
    # OpenVINO uses f32 where the CPU has no bf16 instructions, and bf16 by default where it has
    assert chosen == ("bf16" if "BF16" in caps else "f32")
    if precision == "bf16":
        want = "openvino-fp32-bf16" if chosen == "bf16" else "openvino-fp32-bf16(f32)"
        assert runner.name == want
    else:
        assert runner.name == f"openvino-fp32-auto({chosen})"


def test_onnx_nms_graph_passes_through(data: dict[str, Path]) -> None:
    x = _batch(data, 3)
    runner = OpenVinoRunner(data["onnxnms"], NMS, threads=1)  # the graph's NMS wins
    assert runner.nms == HARD and runner.graph == "nms-onnx"
    got = runner(x)
    want = OnnxRunner(data["onnxnms"], NMS, threads=1)(x)
    assert runner.last_timing.nms == 0.0 and got.num.min() > 0
    np.testing.assert_array_equal(got.num, want.num)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=BOX_TOL)


def test_unusable_files_are_one_line(data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(M2DetError, match="plugin op M2Det_SoftNMS_TRT.*onnx-hard"):
        OpenVinoRunner(data["plugin"], NMS)
    with pytest.raises(M2DetError, match="not found"):
        OpenVinoRunner(tmp_path / "missing.onnx", NMS)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(M2DetError, match="OpenVINO cannot read"):
        OpenVinoRunner(junk, NMS)
    bare = onnx.load(data["raw"])
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(M2DetError, match="no m2det metadata"):
        OpenVinoRunner(tmp_path / "bare.onnx", NMS)
    with pytest.raises(M2DetError, match="unknown OpenVINO precision"):
        OpenVinoRunner(data["raw"], NMS, ov_precision="fp16")
    with pytest.raises(M2DetError, match="expected images"):
        OpenVinoRunner(data["raw"], NMS)(np.zeros((1, 3, 64, 64), np.float32))


def test_file_without_metadata_runs_given_the_config(data: dict[str, Path],
                                                     tmp_path: Path) -> None:
    """A file whose metadata a tool dropped runs with --config, checked against its graph, as in
    the ONNX Runtime runner; its detections are the original file's."""
    bare = onnx.load(data["raw"])
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(M2DetError, match=r"pass --config NAME.*160x160"):
        OpenVinoRunner(tmp_path / "bare.onnx", NMS)
    with pytest.raises(M2DetError, match="takes 160x160 images, config 'm2det320_vgg'"):
        OpenVinoRunner(tmp_path / "bare.onnx", NMS, config="m2det320_vgg")
    x = _batch(data, 2)
    with OpenVinoRunner(data["raw"], NMS, threads=1) as original, \
            load_runner(tmp_path / "bare.onnx", nms=NMS, backend="openvino", config="m2det_tiny",
                        threads=1) as stripped:  # fmt: skip
        assert stripped.config == original.config and stripped.graph == "raw"
        want, got = original(x), stripped(x)
    assert want.num.min() > 0
    np.testing.assert_array_equal(got.num, want.num)
    np.testing.assert_array_equal(got.boxes, want.boxes)


def test_registry(data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    runner = load_runner(data["raw"], nms=NMS, backend="openvino", threads=1, ov_precision="bf16")
    assert isinstance(runner, OpenVinoRunner) and runner.threads == 1
    assert isinstance(load_runner(data["raw"], nms=NMS), OnnxRunner)
    with pytest.raises(M2DetError, match="runs ONNX files"):
        load_runner(default_checkpoint(), nms=NMS, backend="openvino")
    with pytest.raises(M2DetError, match="on the CPU"):
        load_runner(data["raw"], nms=NMS, backend="openvino", device="cuda")
    with pytest.raises(M2DetError, match="unknown backend"):
        load_runner(data["raw"], nms=NMS, backend="tvm")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the package were not installed
    with pytest.raises(M2DetError, match=r"pip install 'm2det-deploy\[openvino\]'"):
        load_runner(data["raw"], nms=NMS, backend="openvino")


_TELEMETRY_CHECK = """
import sys
import numpy as np
from m2det.engines.openvino_runner import OpenVinoRunner
from m2det.nms import get_nms_params
with OpenVinoRunner(sys.argv[1], get_nms_params("official"), mode="throughput") as runner:
    runner(np.zeros((2, 3, 160, 160), np.float32))
import openvino.tools.ovc.telemetry_utils as utils
import openvino_telemetry  # importable again for anyone else
print(utils.tm.__name__, openvino_telemetry.Telemetry._SingletonMetaClass__single_instance)
"""


def test_runner_sends_no_telemetry(data: dict[str, Path], tmp_path: Path) -> None:
    """A plain ``import openvino`` creates a Google Analytics sender, sends an import event and
    writes a client id under ``~/intel``; through the runner, the converter gets OpenVINO's no-op
    stub instead, and nothing is written to the (temporary) home folder."""
    env = {**os.environ, "HOME": str(tmp_path), "CI": "false"}
    run = subprocess.run([sys.executable, "-c", _TELEMETRY_CHECK, str(data["raw"])], env=env,
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "None"], run.stdout
    assert not (tmp_path / "intel").exists()


def test_detect_cli_openvino_matches_onnxruntime(data: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--onnx", str(data["raw"]), "--input", str(data["images"]), "--threads", "1"]
    assert detect_main([*common, "--out", str(tmp_path / "ort")]) == 0
    assert detect_main([*common, "--out", str(tmp_path / "ov"), "--backend", "openvino"]) == 0
    ort = json.loads((tmp_path / "ort" / "detections.json").read_text())
    ov = json.loads((tmp_path / "ov" / "detections.json").read_text())
    assert ov["backend"] == "openvino-fp32-f32" and ort["backend"] == "onnxruntime-fp32"
    assert ov["detections"].keys() == ort["detections"].keys()
    for key, want in ort["detections"].items():
        got = ov["detections"][key]
        assert [d["class"] for d in got] == [d["class"] for d in want]
        assert np.abs(np.array([d["box"] for d in got]) - [d["box"] for d in want]).max() <= 0.02
        scores = np.array([d["score"] for d in got]) - [d["score"] for d in want]
        assert np.abs(scores).max() <= 2e-5
    assert len(list((tmp_path / "ov").glob("*.jpg"))) == len(ort["detections"])
    assert detect_main(["--ckpt", str(default_checkpoint()), "--ov-precision", "bf16",
                        "--input", str(data["images"]), "--out", str(tmp_path / "x")]) == 2
    assert "apply to --backend openvino" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_eval_cli_openvino(data: dict[str, Path], tmp_path: Path) -> None:
    args = ["--onnx", str(data["raw"]), "--ann", str(data["ann"]), "--images", str(data["images"]),
            "--threads", "1"]  # fmt: skip
    assert eval_main([*args, "--json", str(tmp_path / "ort.json")]) == 0
    assert eval_main([*args, "--json", str(tmp_path / "ov.json"), "--backend", "openvino"]) == 0
    ort = json.loads((tmp_path / "ort.json").read_text())
    ov = json.loads((tmp_path / "ov.json").read_text())
    assert ov["backend"] == "openvino-fp32-f32"
    assert ov["settings"]["batch"] >= 1  # throughput mode: its parallel requests
    assert abs(ov["metrics"]["AP"] - ort["metrics"]["AP"]) <= 1e-3


def test_bench_rows_record_openvino_settings_and_isa(tmp_path: Path) -> None:
    import jsonschema

    from m2det.benchmarks.cli import main as bench_main

    schema = json.loads((Path(__file__).parents[1] / "benchmarks" / "schema.json").read_text())
    out = tmp_path / "bench.json"
    assert bench_main(["--backends", "onnxruntime,openvino", "--ov-precision", "f32,auto",
                       "--threads", "1", "--iters", "1", "--warmup", "0", "--pool", "2",
                       "--json", str(out), "--quiet"]) == 0  # fmt: skip
    results = json.loads(out.read_text())
    jsonschema.validate(results, schema)
    assert results["cpu_isa"]["best"] in ("amx", "avx512_vnni", "avx512", "avx2", "baseline")
    assert results["versions"]["openvino"]
    rows = {r["label"]: r for r in results["rows"]}
    chosen = "bf16" if "BF16" in cpu_capabilities() else "f32"
    assert set(rows) == {"onnxruntime-fp32", "openvino-fp32-f32", f"openvino-fp32-auto({chosen})"}
    settings = rows["openvino-fp32-f32"]["backend_settings"]
    assert settings["ov_precision"] == "f32" and settings["inference_precision"] == "f32"
    assert settings["threads"] == 1 and settings["mode"] == "latency"


def test_side_by_side_ratios() -> None:
    from m2det.benchmarks.harness import format_side_by_side, side_by_side

    def row(backend: str, precision: str, label: str, total: float, network: float) -> dict:
        return {"backend": backend, "precision": precision, "label": label, "config": "c",
                "batch": 1, "protocol": "standard",
                "latency_ms": {"total": {"p50": total}, "network": {"p50": network}}}  # fmt: skip

    rows = [row("official", "fp32", "official-fp32", 1000.0, 900.0),
            row("onnxruntime", "int8", "onnxruntime-int8", 400.0, 380.0),
            row("openvino", "int8", "openvino-int8-f32", 100.0, 90.0)]  # fmt: skip
    ratios = {e["label"]: e for e in side_by_side(rows)}
    assert ratios["openvino-int8-f32"]["speedup_vs_official"] == 10.0
    assert ratios["openvino-int8-f32"]["network_speedup_vs_official"] == 10.0
    assert ratios["openvino-int8-f32"]["speedup_vs_onnxruntime_int8"] == 4.0
    assert ratios["official-fp32"]["speedup_vs_official"] == 1.0
    assert "| openvino-int8-f32 | c | 1 | 100.0 | 10.00 | 4.00 | 10.00 |" in format_side_by_side(
        {"side_by_side": list(ratios.values())})
    assert side_by_side([row("onnxruntime", "fp32", "onnxruntime-fp32", 1.0, 1.0)]) == []
