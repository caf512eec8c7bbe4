"""m2det-bench: timing discipline (fake runner), results JSON against the schema, plots, AP equal
to m2det-eval's on the same artifact and data, one-line exit-2 errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from m2det.benchmarks import harness, timing, variants
from m2det.benchmarks.cli import main as bench_main
from m2det.config import get_config
from m2det.detections import Detections
from m2det.engines.base import Runner, Timing
from m2det.engines.cli import eval_main
from m2det.errors import M2DetError
from m2det.nms import get_nms_params

SCHEMA = json.loads((Path(harness.__file__).parent / "schema.json").read_text())
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FakeRunner(Runner):
    """Records the first pixel of every batch and the order of synchronize/infer calls; reports
    ``slow_calls`` calls of 100 ms network time, then ``network`` / ``nms`` ms."""

    backend = "fake"

    def __init__(self, network: float = 4.0, nms: float = 1.0, slow_calls: int = 0) -> None:
        super().__init__(get_config("m2det_tiny"), get_nms_params("official"))
        self.network, self.nms_ms, self.slow_calls = network, nms, slow_calls
        self.events: list[str] = []
        self.first_pixels: list[float] = []

    def synchronize(self) -> None:
        self.events.append("sync")

    def infer(self, images: Any) -> Detections:
        self.events.append("infer")
        self.first_pixels.append(float(images[0, 0, 0, 0]))
        slow = len(self.first_pixels) <= self.slow_calls
        self.last_timing = Timing(network=100.0 if slow else self.network, nms=self.nms_ms)
        return Detections.from_lists([(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                                       np.zeros(0, np.int32))] * len(images))  # fmt: skip


def _pool(n: int) -> list[np.ndarray]:
    """n solid BGR images, image i filled with value 10 * (i + 1)."""
    return [np.full((40, 60, 3), 10 * (i + 1), np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "tiny.pth"
    return variants.random_checkpoint("m2det_tiny", path, seed=0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from m2det.shapes import generate

    return generate(tmp_path_factory.mktemp("shapes"), train=0, val=3, seed=5, size=96)


def test_latency_stats_percentiles() -> None:
    stats = timing.latency_stats(list(range(1, 101)))
    assert stats == {"mean": 50.5, "p50": 50.5, "p90": 90.1, "p99": 99.01}


def test_timed_iterations_rotate_images_sync_and_skip_warmup() -> None:
    runner = FakeRunner(slow_calls=2)
    result = timing.time_batches(runner, _pool(3), batch=2, iters=4, warmup=2, progress=False)
    # batches take the next images of the pool every call: 10,30,20,10,30,20 (first of each)
    assert runner.first_pixels == [10.0, 30.0, 20.0, 10.0, 30.0, 20.0]
    assert runner.events == ["sync", "infer", "sync"] * 6  # device synced around every call
    lat = result["latency_ms"]
    assert lat["network"]["p99"] == 4.0  # the two slow warm-up calls are not in the statistics
    assert lat["total"]["mean"] >= lat["preprocess"]["mean"] > 0
    assert result["iters"] == 4 and result["fps_network_nms"] == pytest.approx(2 * 1000 / 5.0)


def test_paper_protocol_is_images_over_network_plus_nms_time() -> None:
    runner = FakeRunner(network=2.0, nms=0.5, slow_calls=1)
    result = timing.time_paper(runner, _pool(5), warmup=1, progress=False)
    assert result["iters"] == 5 and len(runner.first_pixels) == 6
    assert runner.first_pixels[1:] == [10.0, 20.0, 30.0, 40.0, 50.0]  # each image once, batch 1
    assert result["fps"] == pytest.approx(1000 / 2.5)


def test_bench_json_matches_schema_and_plots(tiny_ckpt: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    code = bench_main(["--ckpt", str(tiny_ckpt), "--batch", "1,2", "--iters", "2", "--warmup", "0",
                       "--pool", "2", "--threads", "1", "--json", str(out), "--plot", str(png),
                       "--quiet"])  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    jsonschema.validate(results, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert [(r["backend"], r["precision"], r["batch"]) for r in results["rows"]] == [
        ("torch", "fp32", 1), ("torch", "fp32", 2)]
    row = results["rows"][1]
    assert row["weights"] == "random" and any("random weights" in n for n in results["notes"])
    assert row["accuracy"] is None and row["host_peak_rss_mb"] > 0
    assert row["latency_ms"]["total"]["p50"] <= row["latency_ms"]["total"]["p99"]
    assert row["fps"] == pytest.approx(2000 / row["latency_ms"]["total"]["mean"], rel=1e-3)
    for path in (png, tmp_path / "r_latency.png"):
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.with_suffix(".svg").read_text().lstrip().startswith("<?xml")


def test_schema_rejects_a_row_without_latency() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    row = {"backend": "torch", "precision": "fp32", "batch": 1}
    assert not validator.is_valid({"rows": [row]})


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ckpt", "onnx"])
def test_harness_ap_equals_m2det_eval(kind: str, tiny_ckpt: Path, shapes: dict[str, Path],
                                      tmp_path: Path) -> None:
    artifact = tiny_ckpt
    if kind == "onnx":
        artifact = variants.export_onnx(tiny_ckpt, ["fp32"], tmp_path, None, log=lambda _: None)[
            "fp32"]  # fmt: skip
    data = ["--ann", str(shapes["val_json"]), "--images", str(shapes["val_images"]),
            "--limit", "2", "--nms", "paper"]  # fmt: skip
    assert eval_main([f"--{kind}", str(artifact), *data, "--json", str(tmp_path / "e.json")]) == 0
    assert bench_main([f"--{kind}", str(artifact), *data, "--iters", "1", "--warmup", "0",
                       "--pool", "2", "--json", str(tmp_path / "b.json"), "--quiet"]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())["metrics"]
    bench = json.loads((tmp_path / "b.json").read_text())
    jsonschema.validate(bench, SCHEMA)
    acc = bench["rows"][0]["accuracy"]
    assert acc["num_images"] == 2 and acc["num_detections"] == evaluated["num_detections"] > 0
    assert {k: acc[k] for k in harness.ACCURACY_KEYS} == {
        k: evaluated[k] for k in harness.ACCURACY_KEYS}


@pytest.mark.parametrize("args, message", [
    (["--engine", "{plan}"], "model.plan.json not found beside the plan"),
    (["--ckpt", "{ckpt}", "--ann", "missing.json", "--images", "."], "annotation file not found"),
    (["--ckpt", "{ckpt}", "--backends", "torch,tflite"], "unknown backend 'tflite'"),
    (["--sweep", "320,640"], "--sweep size 640 has no VGG preset"),
    (["--engine", "{plan}", "--backends", "onnxruntime"], "applies to checkpoints"),
    (["--onnx", "{plan}", "--backends", "openvino,torch"], "applies to checkpoints"),
    (["--onnx", "{plan}", "--official", "."], "apply to checkpoints"),
    (["--official", "{plan}"], "checkout not found"),
    (["--ckpt", "{ckpt}", "--backends", "openvino", "--ov-precision", "fp16"],
     "unknown OpenVINO precision 'fp16'"),
    (["--ckpt", "{ckpt}", "--batch", "0"], "batch sizes must be >= 1"),
])  # fmt: skip
def test_bad_inputs_one_line_exit_2(args: list[str], message: str, tiny_ckpt: Path,
                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a plan")
    argv = [a.format(plan=plan, ckpt=tiny_ckpt) for a in args]
    assert bench_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("m2det-bench: error: ") and message in err
    assert err.count("\n") == 1


def test_demo_reads_the_checkpoint_sidecar(tmp_path: Path) -> None:
    from m2det.benchmarks.demo import read_val_spec

    ckpt = tmp_path / "m.pth"
    assert read_val_spec(ckpt).source.startswith("m2det-shapes defaults")
    ckpt.with_suffix(".json").write_text(json.dumps({
        "val_set": {"seed": 7, "size": 128, "images": 40, "batch": 8},
        "nms_preset": "paper", "nms": {"score_threshold": 0.05},
        "val": {"AP": 0.5, "AP50": 0.8, "AP75": 0.55}}))
    spec = read_val_spec(ckpt)
    assert (spec.seed, spec.size, spec.images) == (7, 128, 40)
    assert (spec.nms_preset, spec.nms) == ("paper", {"score_threshold": 0.05})
    assert spec.recorded == {"AP": 0.5, "AP50": 0.8, "AP75": 0.55}
    ckpt.with_suffix(".json").write_text(json.dumps({"val": {}}))
    with pytest.raises(M2DetError, match="no usable val_set"):
        read_val_spec(ckpt)


@pytest.mark.slow
def test_demo_end_to_end_on_a_tiny_checkpoint(tiny_ckpt: Path, tmp_path: Path) -> None:
    from m2det.benchmarks.demo import main as demo_main

    out = tmp_path / "out"
    assert demo_main(["--ckpt", str(tiny_ckpt), "--val", "2", "--calib-count", "2", "--iters", "1",
                      "--warmup", "0", "--batch", "1", "--threads", "1", "--out", str(out),
                      "--work", str(tmp_path / "work"), "--quiet"]) == 0  # fmt: skip
    results = json.loads((out / "demo.json").read_text())
    jsonschema.validate(results, SCHEMA)
    assert [(r["backend"], r["precision"]) for r in results["rows"]] == [
        ("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
        ("onnxruntime", "int8")]
    assert all(r["accuracy"]["num_images"] == 2 for r in results["rows"])
    assert "| onnxruntime | int8 | 160 | 1 |" in (out / "demo_table.md").read_text()
    for name in ("demo.png", "demo_latency.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert (out / name).with_suffix(".svg").is_file()


def test_training_curve_plots_runs_and_rejects_bad_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from m2det.benchmarks.training_curve import main as curve_main

    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": 10 * i, "loss_l": 3.0 / i, "loss_c": 5.0 / i, "images_per_s": 40.0,
             "elapsed_s": 4.0 * i} for i in range(1, 31)]
    rows.append({"step": 300, "eval": {"AP": 0.5, "AP50": 0.75}})
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    png = tmp_path / "out" / "curves.png"
    assert curve_main([str(metrics), "--label", "run", "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000 and png.with_suffix(".svg").is_file()
    assert curve_main([str(metrics), "--label", "a", "--label", "b", "--out", str(png)]) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"step": 1, "eval": {"AP": 0.0, "AP50": 0.0}}) + "\n")
    assert curve_main([str(empty), "--out", str(png)]) == 2
    assert curve_main([str(tmp_path / "missing.jsonl"), "--out", str(png)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("training_curve: error: ") for e in errors)
