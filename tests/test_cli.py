"""``m2det-detect`` and ``m2det-eval`` end to end (in-process), their error paths, and one run of
each installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_eval import write_coco_set

from m2det.checkpoint import save_model
from m2det.config import get_config
from m2det.engines.cli import detect_main, eval_main, run_cli
from m2det.errors import M2DetError
from m2det.model import build_model

TINY = get_config("m2det_tiny")



def _scene(path: Path, w: int = 240, h: int = 180) -> np.ndarray:
    img = np.full((h, w, 3), 40, np.uint8)
    cv2.circle(img, (70, 80), 40, (0, 200, 255), -1)
    cv2.rectangle(img, (140, 40), (220, 150), (255, 120, 0), -1)
    cv2.imwrite(str(path), img)
    return img


def _one_error_line(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- m2det-detect
def test_detect_one_image(tiny_ckpt: Path, tmp_path: Path) -> None:
    original = _scene(tmp_path / "scene.png")
    out = tmp_path / "out"
    rc = detect_main(["--ckpt", str(tiny_ckpt), "--input", str(tmp_path / "scene.png"),
                      "--out", str(out), "--score-threshold", "0.05", "--draw-threshold", "0"])
    assert rc == 0
    result = json.loads((out / "detections.json").read_text())
    assert result["config"] == "m2det_tiny" and result["skipped"] == []
    assert result["nms"]["score_threshold"] == 0.05 and result["nms"]["method"] == "linear"
    dets = result["detections"]["scene.png"]
    assert dets, "random weights still score > 0.05 somewhere"
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= 240 and 0 <= y1 <= y2 <= 180  # original pixels, clipped
        assert d["score"] > 0.05 and d["label"] == TINY.labels[d["class"]]
    annotated = cv2.imread(str(out / "scene.png"))
    assert annotated is not None and annotated.shape == original.shape
    assert np.any(annotated != original)


def test_detect_folder_skips_unreadable_images(tiny_ckpt: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _scene(folder / "a.jpg")
    _scene(folder / "c.png", 100, 120)
    (folder / "b.jpg").write_bytes(b"broken")
    out = tmp_path / "out"
    assert detect_main(["--ckpt", str(tiny_ckpt), "--input", str(folder), "--out", str(out)]) == 1
    assert "skipped 1 unreadable image(s): b.jpg" in capsys.readouterr().err
    assert (out / "a.jpg").is_file() and (out / "c.png").is_file() and not (out / "b.jpg").exists()
    result = json.loads((out / "detections.json").read_text())
    assert sorted(result["detections"]) == ["a.jpg", "c.png"] and result["skipped"] == ["b.jpg"]


def test_detect_video(tiny_ckpt: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"mp4v"), 5, (96, 64))
    for i in range(3):
        writer.write(np.full((64, 96, 3), 60 * i, np.uint8))
    writer.release()
    out = tmp_path / "out"
    assert detect_main(["--ckpt", str(tiny_ckpt), "--input", str(clip), "--out", str(out)]) == 0
    result = json.loads((out / "detections.json").read_text())
    assert list(result["detections"]) == ["clip.mp4#0", "clip.mp4#1", "clip.mp4#2"]
    cap = cv2.VideoCapture(str(out / "clip_det.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 3 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96
    assert sorted(p.name for p in out.iterdir()) == ["clip_det.mp4", "detections.json"]


def test_unreadable_video_leaves_no_partial_files(tiny_ckpt: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    clip = _write(tmp_path / "clip.mp4", b"not a video")
    out = tmp_path / "out"
    assert detect_main(["--ckpt", str(tiny_ckpt), "--input", str(clip), "--out", str(out)]) == 2
    assert "cannot read video" in _one_error_line(capsys.readouterr().err, "m2det-detect")
    assert not out.exists() or not list(out.iterdir())


# ----------------------------------------------------------------------------- m2det-eval
def _shapes_ckpt_for_coco_set(tmp_path: Path) -> Path:
    """The test COCO set has 2 categories: a tiny model with 2 foreground classes."""
    cfg = TINY.replace(name="m2det_tiny_2cls", num_classes=3, class_names=("circle", "square"))
    path = tmp_path / "tiny2.pth"
    save_model(build_model(cfg), path)
    return path


def test_eval_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann, images = write_coco_set(tmp_path / "coco")
    ckpt = _shapes_ckpt_for_coco_set(tmp_path)
    metrics_json, dets_json = tmp_path / "m.json", tmp_path / "d.json"
    rc = eval_main(["--ckpt", str(ckpt), "--ann", str(ann), "--images", str(images), "--batch",
                    "2", "--json", str(metrics_json), "--save-detections", str(dets_json),
                    "--per-class", "--nms", "hard", "--score-threshold", "0.2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out
    assert "circle" in out and "square" in out
    record = json.loads(metrics_json.read_text())
    assert record["artifact"] == str(ckpt) and record["backend"] == "torch-fp32"
    assert record["settings"]["batch"] == 2 and record["settings"]["nms"]["method"] == "hard"
    assert record["settings"]["nms"]["score_threshold"] == 0.2
    m = record["metrics"]
    assert m["num_images"] == 3 and 0.0 <= m["AP"] <= 1.0
    assert set(m["per_class"]) == {"circle", "square"}
    assert len(json.loads(dets_json.read_text())) == m["num_detections"]


# ----------------------------------------------------------------------------- error paths
def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case, expect", [
    ("unknown_config", "unknown config 'nope'; valid: m2det320_vgg"),
    ("unreadable_image", "cannot read image"),
    ("other_config", "checkpoint for config 'm2det_tiny', not 'm2det512_vgg'"),
    ("empty_folder", "no images"),
    ("missing_ckpt", "checkpoint not found"),
    ("missing_input", "input not found"),
    ("not_a_checkpoint", "junk.pth: not a PyTorch checkpoint"),
    ("missing_argument", "the following arguments are required: --out"),
    ("bad_nms", "argument --nms: invalid choice"),
])  # fmt: skip
def test_detect_errors(case: str, expect: str, tiny_ckpt: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "x.png"
    _scene(image)
    base = ["--ckpt", str(tiny_ckpt), "--input", str(image), "--out", str(tmp_path / "out")]
    argv = {
        "unknown_config": [*base, "--config", "nope"],
        "unreadable_image": [*base[:2], "--input", str(_write(tmp_path / "bad.jpg", "no")),
                             *base[4:]],
        "other_config": [*base, "--config", "m2det512_vgg"],
        "empty_folder": [*base[:2], "--input", str((tmp_path / "empty").resolve()), *base[4:]],
        "missing_ckpt": ["--ckpt", str(tmp_path / "none.pth"), *base[2:]],
        "missing_input": [*base[:2], "--input", str(tmp_path / "none.png"), *base[4:]],
        "not_a_checkpoint": ["--ckpt", str(_write(tmp_path / "junk.pth", "junk")), *base[2:]],
        "missing_argument": base[:4],
        "bad_nms": [*base, "--nms", "fast"],
    }[case]
    (tmp_path / "empty").mkdir()
    assert detect_main(argv) == 2
    assert expect in _one_error_line(capsys.readouterr().err, "m2det-detect")


@pytest.mark.parametrize("case, expect", [
    ("not_coco", "is not a COCO annotation file"),
    ("missing_ann", "annotation file not found"),
    ("missing_images", "image folder not found"),
    ("class_mismatch", "has 2 categories but the model predicts 5 classes"),
    ("no_model", "one of the arguments --ckpt --onnx --engine --triton is required"),
    ("unknown_suffix", "unknown artifact type"),
    ("all_unreadable", "none of the 3 images"),
])  # fmt: skip
def test_eval_errors(case: str, expect: str, tiny_ckpt: Path, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    ann, images = write_coco_set(tmp_path / "coco")
    ckpt2 = _shapes_ckpt_for_coco_set(tmp_path) if case == "all_unreadable" else tiny_ckpt
    model = ["--ckpt", str(ckpt2)]
    data = ["--ann", str(ann), "--images", str(images)]
    if case == "all_unreadable":
        for p in images.iterdir():
            p.write_bytes(b"x")
    argv = {
        "not_coco": [*model, "--ann", str(_write(tmp_path / "a.json", '{"x": 1}')), *data[2:]],
        "missing_ann": [*model, "--ann", str(tmp_path / "none.json"), *data[2:]],
        "missing_images": [*model, *data[:2], "--images", str(tmp_path / "none")],
        "class_mismatch": [*model, *data],
        "no_model": data,
        "unknown_suffix": ["--onnx", str(_write(tmp_path / "m.txt", "x")), *data],
        "all_unreadable": [*model, *data],
    }[case]
    assert eval_main(argv) == 2
    assert expect in _one_error_line(capsys.readouterr().err, "m2det-eval")


def test_run_cli_turns_user_errors_into_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    def fail(argv: object) -> int:
        raise M2DetError("first\nsecond")

    assert run_cli("m2det-x", fail, []) == 2
    assert _one_error_line(capsys.readouterr().err, "m2det-x") == "m2det-x: error: first second"
    assert run_cli("m2det-x", lambda argv: 0, []) == 0

    def bug(argv: object) -> int:
        raise ValueError("a bug")

    assert run_cli("m2det-x", bug, []) == 3  # one line; the traceback only with --debug
    assert capsys.readouterr().err == (
        "m2det-x: internal error: ValueError: a bug (run with --debug for the traceback)\n")
    assert run_cli("m2det-x", bug, ["--debug"]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise ValueError("a bug")' in err


# ----------------------------------------------------------------------------- console scripts
@pytest.mark.slow  # two fresh interpreters importing torch: ~5 s idle, ~20 s on a busy machine
@pytest.mark.skipif(shutil.which("m2det-detect") is None, reason="package not installed")
def test_installed_console_scripts(tiny_ckpt: Path, tmp_path: Path) -> None:
    _scene(tmp_path / "scene.jpg")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run(["m2det-detect", "--ckpt", str(tiny_ckpt), "--input",
                         str(tmp_path / "scene.jpg"), "--out", str(out)],
                        capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert (out / "scene.jpg").is_file() and (out / "detections.json").is_file()
    bad = subprocess.run(["m2det-eval", "--ckpt", str(tiny_ckpt), "--ann", str(tmp_path / "none"),
                          "--images", str(tmp_path)], capture_output=True, text=True, timeout=120,
                         env=env)  # fmt: skip
    assert bad.returncode == 2
    assert "annotation file not found" in _one_error_line(bad.stderr, "m2det-eval")
