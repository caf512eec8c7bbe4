"""Triton model repositories without a server: every config m2det-triton writes parses with
Triton's protobuf schema (``tritonclient``'s ``model_config_pb2``) and passes our checks, for ONNX
files (``onnxruntime_onnx`` + Python models) and TensorRT plans (``tensorrt_plan``; a plan file and
sidecar as m2det-build writes them, no TensorRT needed); each check rejects what it should with
one line; a failed write leaves nothing behind."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from m2det import contract
from m2det.config import get_config
from m2det.errors import M2DetError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None
    or importlib.util.find_spec("tritonclient.grpc") is None,
    reason="needs tritonclient[grpc] (pip install 'm2det-deploy[triton]')")

CFG = get_config("m2det_tiny")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from m2det.export.onnx_export import export_raw, save_model, set_metadata
    from m2det.model import M2DetInference, build_model

    torch.manual_seed(0)
    net = M2DetInference(build_model(CFG).eval()).eval()
    model = export_raw(net, batch=None)
    set_metadata(model, CFG, "fp32", contract.GRAPH_RAW, None)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    save_model(model, path)
    return path


def _plan(folder: Path, graph: str, profile: tuple[int, int, int], plugin: bool) -> Path:
    """A plan file and the sidecar m2det-build writes beside it (the plan is never read)."""
    from m2det.engines.plan_sidecar import write_sidecar

    plan = folder / f"tiny_{graph}.plan"
    plan.write_bytes(b"not a real plan")
    nms = dict(contract.PLUGIN_DEFAULTS) if graph != contract.GRAPH_RAW else None
    write_sidecar(plan, {
        "plan": plan.name, "tensorrt_version": "10.13.0", "version_compatible": False,
        "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"}, "precision": "fp16",
        "graph": graph, "input_name": contract.INPUT, "input_size": CFG.input_size,
        "batch": dict(zip(("min", "opt", "max"), profile, strict=True)),
        "outputs": list(contract.RAW_OUTPUTS if graph == contract.GRAPH_RAW
                        else contract.NMS_OUTPUTS),
        "config": CFG.to_dict(), "nms": nms,
        "plugin": ({"op": contract.PLUGIN_NAME, "version": contract.PLUGIN_VERSION,
                    "library": "/nonexistent/libm2det_plugins.so", "serialized_in_plan": False}
                   if plugin else None),
    })  # fmt: skip
    return plan


def _configs(repo: Path) -> dict[str, dict[str, Any]]:
    from m2det.engines.triton import model_config as mc

    return {p.parent.name: mc.to_dict(mc.parse_text(p.read_text(), str(p)))
            for p in repo.glob("*/config.pbtxt")}  # fmt: skip


# ----------------------------------------------------------------------------- ONNX
def test_onnx_repository_configs_parse_and_pass_the_checks(tiny_onnx: Path,
                                                           tmp_path: Path) -> None:
    from m2det.engines.triton.repository import check_repository, write_repository

    repo = tmp_path / "repo"
    models = write_repository(tiny_onnx, repo)
    assert [m.name for m in models] == ["m2det", "m2det_net", "m2det_onnx"]
    cfgs = _configs(repo)
    s = CFG.input_size
    assert cfgs["m2det_onnx"]["platform"] == "onnxruntime_onnx"
    assert [t["dims"] for t in cfgs["m2det_onnx"]["output"]] == [[3210, 4], [3210, 5]]
    assert cfgs["m2det_net"]["backend"] == "python"
    assert cfgs["m2det_net"]["input"][0]["dims"] == [3, s, s]
    assert cfgs["m2det"]["input"][0] == {"name": "image", "data_type": "TYPE_UINT8",
                                         "dims": [-1], "allow_ragged_batch": True}
    assert all(c["max_batch_size"] == 8 for c in cfgs.values())
    summary = {m.name: (m.platform, m.role) for m in check_repository(repo)}
    assert summary == {"m2det": ("python", "detect"), "m2det_net": ("python", "network"),
                       "m2det_onnx": ("onnxruntime_onnx", "native")}
    # one ONNX file on disk for both models that use it
    assert (repo / "m2det_net/1/model.onnx").stat().st_ino == \
        (repo / "m2det_onnx/1/model.onnx").stat().st_ino
    assert (repo / "README.md").is_file() and (repo / "serve.sh").is_file()
    assert list(tmp_path.iterdir()) == [repo]  # no temporary folder left


def test_existing_output_needs_force_and_is_replaced_whole(tiny_onnx: Path, tmp_path: Path) -> None:
    from m2det.engines.triton.repository import RepositoryOptions, write_repository

    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo)
    with pytest.raises(M2DetError, match="exists: pass --force"):
        write_repository(tiny_onnx, repo)
    write_repository(tiny_onnx, repo, RepositoryOptions(name="tiny", max_batch=4), force=True)
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["tiny", "tiny_net",
                                                                   "tiny_onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


# each mutation of a valid config, and the message the checks give for it
MUTATIONS = [
    ("m2det_net", lambda c: c["input"][0].update(dims=[3, 64, 64]), "dims \\[3, 64, 64\\]"),
    ("m2det_onnx", lambda c: c["output"][0].update(dims=[100, 4]), "'boxes' has dims"),
    ("m2det_onnx", lambda c: c["output"].reverse(), "outputs \\['scores', 'boxes'\\]"),
    ("m2det_net", lambda c: c["dynamic_batching"].update(preferred_batch_size=[8, 4]),
     "must increase"),
    ("m2det_net", lambda c: c["dynamic_batching"].update(preferred_batch_size=[16]),
     "preferred batch size 16 outside"),
    ("m2det_net", lambda c: c.update(max_batch_size=0), "max_batch_size must be >= 1"),
    ("m2det", lambda c: c["input"][0].pop("allow_ragged_batch"), "allow_ragged_batch"),
    ("m2det", lambda c: c["input"][0].update(data_type="TYPE_STRING"), "is TYPE_STRING"),
    ("m2det_onnx", lambda c: c.update(platform="tensorflow_savedmodel"), "not one m2det-triton"),
]


@pytest.mark.parametrize(("model", "mutate", "message"), MUTATIONS)
def test_each_check_rejects_its_mistake(tiny_onnx: Path, tmp_path: Path, model: str,
                                        mutate: Any, message: str) -> None:
    from m2det.engines.triton import model_config as mc
    from m2det.engines.triton.repository import check_repository, write_repository

    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo)
    path = repo / model / "config.pbtxt"
    cfg = mc.to_dict(mc.parse_text(path.read_text(), str(path)))
    mutate(cfg)
    path.write_text(mc.to_text(mc.from_dict(cfg, model)))
    with pytest.raises(M2DetError, match=message):
        check_repository(repo)


def _set_param(repo: Path, model: str, **changes: Any) -> None:
    from m2det.engines.triton import model_config as mc

    path = repo / model / "config.pbtxt"
    cfg = mc.to_dict(mc.parse_text(path.read_text(), str(path)))
    params = json.loads(cfg["parameters"][mc.PARAMETER]["string_value"])
    for key, value in changes.items():
        params[key] = value if not isinstance(value, dict) else {**params[key], **value}
    cfg["parameters"][mc.PARAMETER]["string_value"] = json.dumps(params)
    path.write_text(mc.to_text(mc.from_dict(cfg, model)))


@pytest.mark.parametrize(("model", "changes", "message"), [
    ("m2det", {"network": {"model": "nowhere"}}, "calls model 'nowhere'"),
    ("m2det", {"network": {"max_batch": 4}}, "records max_batch 4"),
    ("m2det_net", {"network": {"file": "missing.onnx"}}, "missing.onnx not found"),
    ("m2det_net", {"role": "native"}, "role 'native'"),
    ("m2det_net", {"input_size": 320}, "input_size 320"),
    ("m2det_net", {"nms": {"score_threshold": -1}}, "bad M2Det config or NMS"),
    ("m2det_onnx", {"role": "network"}, "role 'network'"),
])
def test_parameter_checks(tiny_onnx: Path, tmp_path: Path, model: str, changes: dict[str, Any],
                          message: str) -> None:
    from m2det.engines.triton.repository import check_repository, write_repository

    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo)
    _set_param(repo, model, **changes)
    with pytest.raises(M2DetError, match=message):
        check_repository(repo)


def test_schema_errors_are_one_line(tmp_path: Path, tiny_onnx: Path) -> None:
    from m2det.engines.triton import model_config as mc
    from m2det.engines.triton.repository import check_repository, write_repository

    with pytest.raises(M2DetError, match="no field named \"max_batch\""):
        mc.from_dict({"name": "x", "max_batch": 3}, "x")
    with pytest.raises(M2DetError, match="TYPE_FP33"):
        mc.parse_text('input [ { name: "a" data_type: TYPE_FP33 } ]', "x")
    repo = tmp_path / "repo"
    write_repository(tiny_onnx, repo)
    path = repo / "m2det_net" / "config.pbtxt"
    path.write_text(path.read_text() + "\nmax_batch_sizes: 4\n")
    with pytest.raises(M2DetError, match="not a valid Triton model config") as e:
        check_repository(repo)
    assert "\n" not in str(e.value).strip()


def test_fixed_batch_and_plugin_onnx_are_refused(tmp_path: Path) -> None:
    from m2det.engines.triton.repository import write_repository
    from m2det.export import nms_graph
    from m2det.export.onnx_export import export_raw, save_model, set_metadata
    from m2det.model import M2DetInference, build_model
    from m2det.nms import get_nms_params

    net = M2DetInference(build_model(CFG).eval()).eval()
    fixed = export_raw(net, batch=2)
    set_metadata(fixed, CFG, "fp32", contract.GRAPH_RAW, 2)
    save_model(fixed, tmp_path / "b2.onnx")
    with pytest.raises(M2DetError, match="fixed batch of 2"):
        write_repository(tmp_path / "b2.onnx", tmp_path / "r1")
    raw = export_raw(net, batch=None)
    plugin = nms_graph.add_plugin_nms(raw, get_nms_params("official", max_detections=50))
    set_metadata(plugin, CFG, "fp32", contract.GRAPH_NMS_PLUGIN, None)
    save_model(plugin, tmp_path / "plugin.onnx")
    with pytest.raises(M2DetError, match="build a plan"):
        write_repository(tmp_path / "plugin.onnx", tmp_path / "r2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b2.onnx", "plugin.onnx"]


# ----------------------------------------------------------------------------- TensorRT plans
def test_plugin_plan_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from m2det.engines.triton.repository import (
        RepositoryOptions,
        check_repository,
        write_repository,
    )

    # no plugin library to be found by default (other tests may have built plugins/)
    monkeypatch.delenv("M2DET_PLUGIN_LIB", raising=False)
    monkeypatch.setenv("M2DET_SOFTNMS_LIB_DIR", str(tmp_path / "no-build"))

    plan = _plan(tmp_path, contract.GRAPH_NMS_PLUGIN, (1, 4, 16), plugin=True)
    with pytest.raises(M2DetError, match="--plugin-lib"):
        write_repository(plan, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    lib = tmp_path / "libm2det_plugins.so"
    lib.write_bytes(b"\x7fELF")
    models = write_repository(plan, tmp_path / "repo", RepositoryOptions(plugin_lib=lib))
    cfgs = _configs(tmp_path / "repo")
    assert [m.name for m in models] == ["m2det", "m2det_net"]
    net = cfgs["m2det_net"]
    k = contract.PLUGIN_DEFAULTS["max_detections"]
    assert net["platform"] == "tensorrt_plan" and net["max_batch_size"] == 16
    assert net["dynamic_batching"]["preferred_batch_size"] == [4, 16]
    assert net["instance_group"] == [{"kind": "KIND_GPU", "count": 1}]
    assert [t["dims"] for t in net["output"]] == [[1], [k, 4], [k], [k]]
    assert (tmp_path / "repo/m2det_net/libm2det_plugins.so").read_bytes() == b"\x7fELF"
    assert (tmp_path / "repo/m2det_net/1/model.plan.json").is_file()
    script = (tmp_path / "repo/serve.sh").read_text()
    assert 'plugins="$REPO/m2det_net/libm2det_plugins.so"' in script and "10.13.0" in script
    assert {s.name: s.role for s in check_repository(tmp_path / "repo")} == {
        "m2det": "detect", "m2det_net": "native"}


def test_raw_plan_repository_calls_the_plan_from_python(tmp_path: Path) -> None:
    from m2det.engines.triton.repository import check_repository, write_repository

    plan = _plan(tmp_path, contract.GRAPH_RAW, (1, 8, 8), plugin=False)
    write_repository(plan, tmp_path / "repo")
    cfgs = _configs(tmp_path / "repo")
    assert sorted(cfgs) == ["m2det", "m2det_net", "m2det_trt"]
    assert cfgs["m2det_trt"]["platform"] == "tensorrt_plan"
    assert [t["name"] for t in cfgs["m2det_trt"]["output"]] == list(contract.RAW_OUTPUTS)
    assert cfgs["m2det_trt"]["dynamic_batching"]["preferred_batch_size"] == [8]
    assert {s.name: s.role for s in check_repository(tmp_path / "repo")} == {
        "m2det": "detect", "m2det_net": "network", "m2det_trt": "native"}


@pytest.mark.parametrize(("profile", "options", "message"), [
    ((2, 4, 8), {}, "profile starts at 2"),
    ((1, 4, 8), {"max_batch": 16}, "exceeds the largest batch the artifact runs \\(8\\)"),
    ((1, 4, 8), {"preferred": (4, 12)}, "preferred batch size 12 outside"),
])
def test_plan_batching_checks(tmp_path: Path, profile: tuple[int, int, int],
                              options: dict[str, Any], message: str) -> None:
    from m2det.engines.triton.repository import RepositoryOptions, write_repository

    plan = _plan(tmp_path, contract.GRAPH_RAW, profile, plugin=False)
    with pytest.raises(M2DetError, match=message):
        write_repository(plan, tmp_path / "repo", RepositoryOptions(**options))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([plan.name, plan.name + ".json"])


def test_plan_instances_must_be_gpu(tmp_path: Path) -> None:
    from m2det.engines.triton import model_config as mc
    from m2det.engines.triton.repository import check_repository, write_repository

    write_repository(_plan(tmp_path, contract.GRAPH_RAW, (1, 1, 4), plugin=False), tmp_path / "r")
    path = tmp_path / "r/m2det_trt/config.pbtxt"
    cfg = mc.to_dict(mc.parse_text(path.read_text(), "x"))
    cfg["instance_group"] = [{"kind": "KIND_CPU", "count": 1}]
    path.write_text(mc.to_text(mc.from_dict(cfg, "x")))
    with pytest.raises(M2DetError, match="KIND_GPU"):
        check_repository(tmp_path / "r")


def test_options_are_checked_before_work(tmp_path: Path) -> None:
    from m2det.engines.triton.repository import RepositoryOptions

    for bad, message in [({"name": "a b"}, "model name"), ({"max_batch": 0}, "--max-batch"),
                         ({"instances": 0}, "--instances"), ({"device": "tpu"}, "--device"),
                         ({"queue_delay_us": -1}, "--queue-delay-us")]:
        with pytest.raises(M2DetError, match=message):
            dataclasses.replace(RepositoryOptions(), **bad).check()


# ----------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(("argv", "message"), [
    ([], "arguments are required"),
    (["--onnx", "missing.onnx", "--out", "r"], "not found: missing.onnx"),
    (["--onnx", "{onnx}", "--out", "{tmp}"], "exists: pass --force"),
    (["--onnx", "{onnx}", "--out", "r", "--max-batch", "0"], "--max-batch must be >= 1"),
    (["--onnx", "{onnx}", "--out", "r", "--config", "m2det_tiny"], "--config applies to"),
    (["--onnx", "{onnx}", "--out", "r", "--preferred", "a"], "expected integers"),
    (["serve", "nowhere"], "model repository not found: nowhere"),
    (["serve", "{tmp}", "--http-port", "70000"], "--http-port must be in 0..65535"),
    (["check", "{tmp}"], "no models"),
    (["model-env", "{tmp}"], "exists: choose a new folder"),
])
def test_cli_errors_are_one_line(tiny_onnx: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                 message: str) -> None:
    from m2det.engines.triton.cli import main

    monkeypatch.chdir(tmp_path)
    argv = [a.format(onnx=tiny_onnx, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("m2det-triton") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_writes_and_checks_a_repository(tiny_onnx: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from m2det.engines.triton.cli import main

    repo = tmp_path / "repo"
    assert main(["--onnx", str(tiny_onnx), "--out", str(repo), "--name", "tiny",
                 "--preferred", "4,8", "--queue-delay-us", "500", "--instances", "2",
                 "--threads", "1", "--nms", "hard"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and f"m2det-triton serve {repo}" in out
    assert main(["check", str(repo)]) == 0
    assert "every config is valid" in capsys.readouterr().out
    cfg = (repo / "tiny_net" / "config.pbtxt").read_text()
    assert "preferred_batch_size: 4" in cfg and "max_queue_delay_microseconds: 500" in cfg
    assert "count: 2" in cfg and '\\"method\\": 0' in cfg and '\\"threads\\": 1' in cfg
