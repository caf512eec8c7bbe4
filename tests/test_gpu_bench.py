"""The GPU script (benchmarks/gpu/) without a GPU: its dry run end to end, and the pieces whose
failure would waste GPU time (fuzz comparison, case coverage, calibration, the report guard)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from m2det.benchmarks.gpu import fuzz, report
from m2det.benchmarks.gpu.official_code import NUMPY2_RESPELLINGS, check_checkout, numpy2_source
from m2det.benchmarks.gpu.seeded_model import TARGET_RATES, calibrated_model, score_rates
from m2det.benchmarks.gpu.suite import select_steps
from m2det.config import get_config
from m2det.detections import Detections
from m2det.errors import M2DetError
from m2det.nms import Method, NMSParams

REPO = Path(__file__).resolve().parent.parent
RUN_SH = REPO / "benchmarks" / "gpu" / "run.sh"


def _needs_cmake() -> None:
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake and a C++ compiler are needed to build the C++ reference")


@pytest.fixture(scope="module")
def cpu_reference() -> Iterator[None]:
    """The C++ reference alone (no CUDA), in the folder the dry run builds into."""
    _needs_cmake()
    from m2det.benchmarks.gpu.build_step import build
    from m2det.engines import soft_nms_kernel as snk

    old = os.environ.get("M2DET_SOFTNMS_LIB_DIR")
    build(REPO / "plugins" / "build" / "gpu-bench-dry-run", None, 600)
    yield
    if old is None:
        os.environ.pop("M2DET_SOFTNMS_LIB_DIR", None)
    else:
        os.environ["M2DET_SOFTNMS_LIB_DIR"] = old
    snk.load_library.cache_clear()


@pytest.mark.slow
def test_dry_run(tmp_path: Path) -> None:
    """``run.sh --dry-run`` runs every step on the CPU and writes only the labelled dry-run
    report: the fuzzer finds no mismatch between the numpy spec and the C++ reference, every
    timing is a stand-in, no step fails."""
    _needs_cmake()
    run = subprocess.run(["bash", str(RUN_SH), "--dry-run", str(tmp_path), "--fuzz-cases", "80"],
                         capture_output=True, text=True, timeout=900, cwd=REPO,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable})
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (tmp_path / "gpu.json").exists()
    rep = json.loads((tmp_path / "gpu.dry-run.json").read_text())
    assert rep["dry_run"] is True and rep["gpu"] is None
    steps = rep["steps"]
    assert [k for k, v in steps.items() if v["status"] == "failed"] == []
    for name in ("build", "pytest_gpu", "fuzz", "candidates", "softnms_timing", "compute_floor",
                 "end_to_end", "onnxruntime_cuda"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    assert steps["official_pipeline"]["status"] in ("ok", "skipped")
    fz = rep["dry_run_fuzz"]
    assert fz["cases"] == 80 and fz["mismatches"] == 0 and "stand_in" in fz
    assert set(fz["cases_by_method"]) == {"hard", "linear", "gaussian"}
    assert rep["softnms_kernel"]["cases"] == 0  # nothing is claimed for the kernel
    assert rep["end_to_end"] and all("stand_in" in r for r in rep["end_to_end"])
    assert rep["end_to_end"][0]["parity_vs_fp32"]["top20_matched"] == 1.0
    timing = rep["dry_run_softnms_timing"]["by_size"]["160"]
    assert all("stand_in" in row for row in timing.values())
    assert rep["compute_floor_ms"] == {} and "stand_in" in rep["dry_run_compute_floor"]
    assert all(t["measured"] is None for t in rep["targets"].values())


def test_run_sh_needs_an_out_dir() -> None:
    run = subprocess.run(["bash", str(RUN_SH)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("run.sh: error: OUT_DIR")


def test_suite_refuses_without_cuda_unless_dry_run(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from m2det.benchmarks.gpu.suite import main

    assert main([str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_select_steps_adds_what_a_step_needs() -> None:
    assert select_steps("end_to_end") == ("build", "candidates", "end_to_end")
    assert select_steps(None)[0] == "build"
    with pytest.raises(M2DetError, match="unknown step"):
        select_steps("warp_drive")


# ---------------------------------------------------------------------------------- fuzzer
def test_cases_are_reproducible_and_cover_the_issue_ranges() -> None:
    a, b = fuzz.make_case(7, 3), fuzz.make_case(7, 3)
    assert a.params == b.params and np.array_equal(a.scores, b.scores)
    cases = [fuzz.make_case(0, i, work=200_000, full_every=100) for i in range(300)]
    shapes = [c.scores.shape for c in cases]
    assert {c.params.method for c in cases} == set(Method)
    assert {c.scores.dtype for c in cases} == {np.dtype(np.float16), np.dtype(np.float32)}
    assert {1, 32} <= {s[0] for s in shapes} and {1, 80} <= {s[2] for s in shapes}
    assert min(s[1] for s in shapes) == 50 and max(s[1] for s in shapes) >= 4096
    assert (32, 4096, 80) in shapes  # full-size cases
    assert any(c.ties for c in cases) and any(c.degenerate for c in cases)
    for c in cases:
        assert fuzz.case_work(*c.scores.shape[:2], c.scores.shape[2], c.params.max_candidates,
                              c.params.keep_per_class) <= 200_000 or c.scores.shape[1] == 50 \
            or c.scores.shape == (32, 4096, 80)


def _dets(rows: list[list[tuple[float, int, list[float]]]], k: int = 6) -> Detections:
    return Detections.from_lists([
        (np.array([b for _, _, b in r], np.float32).reshape(-1, 4),
         np.array([s for s, _, _ in r], np.float32), np.array([c for _, c, _ in r], np.int32))
        for r in rows], k)


def test_exact_comparison_catches_every_kind_of_difference() -> None:
    rows = [[(0.9, 1, [0, 0, 1, 1]), (0.8, 0, [0, 0, 0.5, 0.5]), (0.5, 2, [0.2, 0.2, 1, 1])]]
    ref = _dets(rows)
    assert fuzz.exact_difference(_dets(rows), ref) is None
    swapped = _dets([[rows[0][1], rows[0][0], rows[0][2]]])
    one_ulp = _dets([[rows[0][0], rows[0][1], (float(np.nextafter(np.float32(0.5), 1)), 2,
                                                [0.2, 0.2, 1, 1])]])
    dropped = _dets([rows[0][:2]])
    other_class = _dets([[rows[0][0], (0.8, 3, [0, 0, 0.5, 0.5]), rows[0][2]]])
    padded = _dets(rows)
    padded.scores[0, 5] = 0.1
    for bad in (swapped, one_ulp, dropped, other_class, padded):
        assert fuzz.exact_difference(bad, ref) is not None


def test_gaussian_comparison_allows_only_cut_differences() -> None:
    params = NMSParams(Method.GAUSSIAN, min_score=0.01, max_detections=0)
    ref = _dets([[(0.9, 0, [0, 0, 1, 1]), (0.0100001, 0, [0, 0, 0.5, 0.5])]])
    close = _dets([[(0.9 * (1 + 1e-6), 0, [0, 0, 1, 1])]])  # the entry at the cut is gone
    assert fuzz.gaussian_difference(close, ref, params) is None
    far = _dets([[(0.9 * (1 + 1e-3), 0, [0, 0, 1, 1]), (0.0100001, 0, [0, 0, 0.5, 0.5])]])
    assert fuzz.gaussian_difference(far, ref, params) is not None
    missing = _dets([[(0.0100001, 0, [0, 0, 0.5, 0.5])]])  # a 0.9 entry lost: above the cut
    assert fuzz.gaussian_difference(missing, ref, params) is not None
    # keep_per_class 1: which of two near-tied boxes is the class's one emission may differ
    keep1 = NMSParams(Method.GAUSSIAN, min_score=0.01, keep_per_class=1, max_detections=0)
    a = _dets([[(0.5, 0, [0, 0, 1, 1])]])
    b = _dets([[(0.5 * (1 + 1e-6), 0, [0, 0, 0.9, 0.9])]])
    assert fuzz.gaussian_difference(a, b, keep1) is None
    c = _dets([[(0.4, 0, [0, 0, 0.9, 0.9])]])  # not a near tie: a real difference
    assert fuzz.gaussian_difference(a, c, keep1) is not None


def test_fuzz_counts_a_broken_candidate(cpu_reference: None) -> None:
    from m2det.engines import soft_nms_kernel as snk

    def off_by_one(boxes: np.ndarray, scores: np.ndarray, params: NMSParams) -> Detections:
        d = snk.soft_nms_cpu_reference(boxes, scores, params)
        d.num[:] = np.maximum(d.num - 1, 0)  # loses each image's last detection
        return d

    result = fuzz.run_fuzz(off_by_one, 12, seed=1, work=50_000, full_every=0, workers=2)
    assert result.cases == 12 and result.mismatches > 0 and result.listed
    ok = fuzz.run_fuzz(lambda b, s, p: snk.soft_nms_cpu_reference(b, s, p), 12, seed=1,
                       work=50_000, full_every=0, workers=2)
    assert ok.mismatches == 0


# ---------------------------------------------------------------------------------- pieces
def test_calibration_reaches_the_target_rates() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 160, 160) * 255
    model, calibration = calibrated_model(get_config("m2det_tiny"), images)
    for t, want in TARGET_RATES.items():
        assert calibration.rates[t] == pytest.approx(want, rel=0.05)
    from m2det.benchmarks.gpu.seeded_model import conf_logits

    # the calibration lives in the weights: the model itself now gives those rates
    assert score_rates(conf_logits(model, images), 1.0, 0.0)[0.1] == pytest.approx(
        TARGET_RATES[0.1], rel=0.05)


def test_report_refuses_to_publish_stand_ins(tmp_path: Path) -> None:
    rep = report.new_report(dry_run=False)
    rep["end_to_end"].append({"size": 320, "batch": 1, "fps": 1.0, "stand_in": "cpu"})
    with pytest.raises(M2DetError, match="stand-in"):
        report.write(rep, tmp_path)
    dry = report.new_report(dry_run=True)
    with pytest.raises(M2DetError, match="dry run"):
        report.write(dry, report.RESULTS_DIR / "gpu")
    assert report.write(dry, tmp_path).name == "gpu.dry-run.json"


def test_targets_are_judged_from_measured_rows() -> None:
    rep = report.new_report(dry_run=False)
    rep["end_to_end"] = [{"size": 320, "batch": 1, "variant": "best", "fps": 700.0}]
    rep["official_pipeline"] = [{"size": 320, "batch": 1, "fps": 50.0}]
    rep["softnms_kernel"].update(cases=10_000, mismatches=0, ms_per_image={"320": 0.4},
                                 speedup_vs_cpu=40.0)
    t = report.evaluate_targets(rep)
    assert t["batch1_fps_320>=600"]["met"] and t["vs_official_320>=10x"]["met"]
    assert t["softnms_ms_320<=1"]["met"] and t["softnms_speedup>=50x"]["met"] is False
    assert t["batch1_fps_512>=400"]["met"] is None and t["fuzz_mismatches==0"]["met"]


def test_official_code_checks() -> None:
    pyx = "a np.int_t b np.int_t dtype=np.int) np.float thresh"
    assert numpy2_source(pyx) == "a np.intp_t b np.intp_t dtype=np.intp) float thresh"
    assert len(NUMPY2_RESPELLINGS) == 3
    with pytest.raises(M2DetError, match="differs from the known"):
        numpy2_source("np.int_t")
    with pytest.raises(M2DetError, match="is not a checkout of qijiezhao/M2Det"):
        check_checkout(REPO)
