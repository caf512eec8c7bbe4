"""The command-line contract of the eight console scripts (``m2det.cli``), tried as a user would:
real files, real subprocesses (exit status, what reaches stdout and stderr, what is left on
disk), Ctrl-C as a real SIGINT.

Bad input: one line ``prog: error: ...`` on stderr, exit 2, no traceback, nothing written.
Partial success: exit 1. Ctrl-C: exit 130. The conventions: ``--version``, ``--quiet``,
``--debug`` and ``--json`` everywhere, help written as sentences with each default shown once,
progress bars only on a terminal, and the README's exit-status table matching ``m2det.cli``.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from m2det import cli
from m2det.checkpoint import read_checkpoint, save_model
from m2det.config import get_config
from m2det.errors import M2DetError
from m2det.export.calibration import read_calibration_images
from m2det.model import build_model
from m2det.preprocess import read_image
from m2det.shapes import generate

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "m2det" / "assets" / "m2det_tiny_shapes.pth"
#: console script -> (module, function, parser factory)
SCRIPTS = {
    "m2det-train": ("m2det.train", "main", "build_parser"),
    "m2det-shapes": ("m2det.shapes", "main", "build_parser"),
    "m2det-detect": ("m2det.engines.cli", "detect_main", "_detect_parser"),
    "m2det-eval": ("m2det.engines.cli", "eval_main", "_eval_parser"),
    "m2det-export": ("m2det.engines.export_cli", "main", None),
    "m2det-build": ("m2det.engines.build_cli", "main", "_parser"),
    "m2det-bench": ("m2det.benchmarks.cli", "main", "build_parser"),
    "m2det-demo": ("m2det.benchmarks.demo", "main", "build_parser"),
}


def run(prog: str, *args: str | Path, cwd: Path, timeout: float = 300,
        env: dict[str, str] | None = None, stderr: int = subprocess.PIPE
        ) -> subprocess.CompletedProcess[str]:
    """Console script ``prog`` in a fresh interpreter (installed or not), as a user runs it."""
    module, function, _ = SCRIPTS[prog]
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=timeout)


def on_terminal(prog: str, *args: str | Path, cwd: Path) -> tuple[int, str]:
    """(exit status, what a terminal showed on stderr) of console script ``prog``."""
    main_fd, tty = pty.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24x100 chars
    try:
        done = run(prog, *args, cwd=cwd, stderr=tty)
        os.close(tty)
        shown = b""
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main_fd)
    return done.returncode, shown.decode(errors="replace").replace("\r\n", "\n")


def error_line(done: subprocess.CompletedProcess[str], prog: str) -> str:
    """The one line of a refused run on stderr, ``prog: error: ...`` (exit 2, no traceback)."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), done.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------
# files a user may hand over


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small shapes dataset, the bundled checkpoint's copies in every broken form, and a
    folder of images with one truncated JPEG and one empty file."""
    root = tmp_path_factory.mktemp("user")
    generate(root / "shapes", train=48, val=4, seed=5, size=64)  # 24 steps of batch 2
    data = BUNDLED.read_bytes()
    paths = {"shapes": root / "shapes", "root": root}
    for name, content in (("empty", b""), ("truncated", data[: len(data) // 2]),
                          ("text", b"weights: none\n")):
        paths[name] = root / f"{name}.pth"
        paths[name].write_bytes(content)
    paths["other_model"] = root / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}, paths["other_model"])
    paths["pickled_module"] = root / "module.pth"
    torch.save(torch.nn.Linear(2, 2), paths["pickled_module"])
    mixed = root / "mixed"
    mixed.mkdir()
    for i in range(2):
        (mixed / f"good{i}.jpg").write_bytes((root / "shapes" / "val" / f"val_00000{i}.jpg")
                                             .read_bytes())  # fmt: skip
    jpeg = (root / "shapes" / "val" / "val_000002.jpg").read_bytes()
    (mixed / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (mixed / "zero.png").write_bytes(b"")
    paths["mixed"] = mixed
    return paths


@pytest.mark.parametrize("kind, says", [
    ("empty", "empty.pth: empty file (0 bytes), not a checkpoint"),
    ("truncated", "truncated.pth: truncated PyTorch checkpoint"),
    ("text", "text.pth: not a PyTorch checkpoint"),
    ("other_model", "resnet.pth: a checkpoint of another model (2 tensors such as 'fc.weight'"),
    ("pickled_module", "module.pth: holds pickled Python objects (torch.nn.modules.linear.Linear)"),
])  # fmt: skip
def test_unreadable_checkpoint_is_one_short_line(kind: str, says: str,
                                                 files: dict[str, Path]) -> None:
    with pytest.raises(M2DetError) as e:
        read_checkpoint(files[kind])
    assert says in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 200


@pytest.mark.slow
@pytest.mark.parametrize("prog, args", [
    ("m2det-detect", ["--input", "{shapes}/val", "--out", "{out}"]),
    ("m2det-eval", ["--ann", "{shapes}/annotations/val.json", "--images", "{shapes}/val"]),
    ("m2det-export", ["--out", "{out}"]),
    ("m2det-bench", ["--iters", "1", "--warmup", "0"]),
    ("m2det-demo", ["--out", "{out}"]),
    ("m2det-train", ["--config", "m2det_tiny", "--data", "{shapes}", "--out", "{out}",
                     "--resume-with"]),
])  # fmt: skip
def test_every_checkpoint_reader_refuses_an_empty_file(prog: str, args: list[str],
                                                       files: dict[str, Path],
                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [a.format(shapes=files["shapes"], out=out) for a in args]
    flag = ["--resume", str(files["empty"])] if argv[-1] == "--resume-with" else \
        ["--ckpt", str(files["empty"])]  # fmt: skip
    argv = [a for a in argv if a != "--resume-with"] + flag
    done = run(prog, *argv, cwd=tmp_path)
    assert error_line(done, prog) == f"{prog}: error: {files['empty']}: empty file (0 bytes), " \
                                     "not a checkpoint"  # fmt: skip
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("device, says", [
    ("tpu", "unknown device 'tpu': use cpu, cuda or cuda:N"),
    ("cuda:7", "--device cuda:7: "),
])  # fmt: skip
def test_train_validates_the_device_first(device: str, says: str, files: dict[str, Path],
                                          tmp_path: Path) -> None:
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    done = run("m2det-train", "--config", "m2det_tiny", "--data", files["shapes"], "--out",
               tmp_path / "run", "--device", device, cwd=tmp_path)
    assert says in error_line(done, "m2det-train")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------
# training: Ctrl-C, and a resumed run's metrics log


def _train_cmd(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    module, function, _ = SCRIPTS["m2det-train"]
    return [sys.executable, "-c", f"import sys; from {module} import {function}; "
            f"sys.exit({function}())", "--config", "m2det_tiny", "--data",
            str(files["shapes"]), "--out", str(out), "--batch", "2", "--workers", "0",
            "--threads", "1", "--schedule", "cosine", "--warmup-epochs", "0", *extra]


def _wait_for_step(metrics: Path, step: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and any(json.loads(line).get("step", 0) >= step
                                     for line in metrics.read_text().splitlines() if line.strip()):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never logged: {proc.poll()}")


def _steps(metrics: Path) -> list[int]:
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines()
            if "eval" not in json.loads(line)]


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_ctrl_c_stops_at_a_step_with_a_resumable_checkpoint(workers: str, files: dict[str, Path],
                                                            tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = _train_cmd(files, out, "--epochs", "30", "--workers", workers)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    _wait_for_step(out / "metrics.jsonl", 10, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"m2det-train: interrupted: stopped after step (\d+); (\S+) holds it: "
                         r"continue with --resume (\S+)", last)
    assert match and Path(match.group(2)) == out / "last.pth", stderr
    state = read_checkpoint(out / "last.pth")  # complete and readable
    assert state["step"] == int(match.group(1)) >= 10
    assert max(_steps(out / "metrics.jsonl")) <= state["step"]
    assert not list(out.glob(".*.tmp"))  # no half-written checkpoint next to it


@pytest.mark.slow
def test_resume_after_a_kill_logs_each_step_once(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    # 24 steps per epoch: last.pth at step 24, metrics every 10 steps; killed once step 30 is
    # logged, i.e. after the checkpoint: steps 25-30 are in the log but not in last.pth
    cmd = _train_cmd(files, out, "--epochs", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(out / "metrics.jsonl", 30, proc)
    proc.kill()
    proc.communicate()
    assert read_checkpoint(out / "last.pth")["step"] == 24 < max(_steps(out / "metrics.jsonl"))
    done = subprocess.run([*cmd, "--resume", str(out / "last.pth")], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "metrics.jsonl brought back to step 24" in done.stderr
    assert _steps(out / "metrics.jsonl") == [10, 20, 30, 40, 48]


# ------------------------------------------------------------------------------------------
# failed and refused runs leave nothing behind


@pytest.mark.slow
def test_failed_export_leaves_no_output_folder(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "new" / "onnx"
    done = run("m2det-export", "--ckpt", files["truncated"], "--out", out, cwd=tmp_path)
    assert "truncated PyTorch checkpoint" in error_line(done, "m2det-export")
    assert not (tmp_path / "new").exists()
    # on a terminal, the status line of the step that failed is finished before the error
    status, shown = on_terminal("m2det-export", "--ckpt", files["truncated"], "--out", out,
                                cwd=tmp_path)  # fmt: skip
    assert status == 2 and shown.splitlines() == [
        f"[export] loading {files['truncated']} ... failed",
        f"m2det-export: error: {files['truncated']}: truncated PyTorch checkpoint "
        f"({files['truncated'].stat().st_size:,} bytes, the end of the archive is missing)"]
    assert not (tmp_path / "new").exists()
    done = run("m2det-export", "--ckpt", BUNDLED, "--int8", "--calib", files["mixed"],
               "--calib-count", "3", "--out", out, cwd=tmp_path)
    assert re.search(r"has 2 usable image\(s\), fewer than the 3 calibration images requested "
                     r"\(--calib-count\); 2 unreadable file\(s\) skipped: .*cut.jpg \(truncated "
                     r"JPEG\)", error_line(done, "m2det-export"))
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_demo_validates_before_generating_anything(tmp_path: Path) -> None:
    done = run("m2det-demo", "--batch", "0", "--out", tmp_path / "demo", cwd=tmp_path)
    assert error_line(done, "m2det-demo") == "m2det-demo: error: batch sizes must be >= 1, got [0]"
    assert not (tmp_path / "demo").exists() and done.stdout == ""


@pytest.mark.slow
def test_build_without_arguments_is_one_line(tmp_path: Path) -> None:
    done = run("m2det-build", cwd=tmp_path)
    assert error_line(done, "m2det-build") == (
        "m2det-build: error: the following arguments are required: --onnx (see m2det-build "
        "--help)")
    assert "usage:" not in done.stderr + done.stdout


@pytest.mark.slow
def test_detect_partial_success_exits_1_and_names_the_skipped(files: dict[str, Path],
                                                               tmp_path: Path) -> None:
    out = tmp_path / "det"
    done = run("m2det-detect", "--input", files["mixed"], "--out", out, "--json", "-",
               cwd=tmp_path)
    assert done.returncode == cli.EXIT_PARTIAL, done.stderr
    assert done.stderr.strip().splitlines() == [
        "m2det-detect: warning: skipped 2 unreadable image(s): cut.jpg (truncated JPEG), "
        "zero.png (empty file)"]
    result = json.loads(done.stdout)  # --json -: stdout holds the JSON only
    assert sorted(result["detections"]) == ["good0.jpg", "good1.jpg"]
    assert result["skipped"] == ["cut.jpg", "zero.png"]
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "good0.jpg", "good1.jpg"]


# ------------------------------------------------------------------------------------------
# calibration, images, noise


def test_calibration_counts_skips_and_refuses_too_few(files: dict[str, Path]) -> None:
    found = read_calibration_images(files["mixed"], 2)  # bad files drawn are replaced
    assert sorted(found.files) == ["good0.jpg", "good1.jpg"]
    assert set(found.skipped) <= {("cut.jpg", "truncated JPEG"), ("zero.png", "empty file")}
    with pytest.raises(M2DetError, match="has 2 usable image.*fewer than the 3 calibration "
                                         "images requested"):
        read_calibration_images(files["mixed"], 3)


def test_read_image_says_what_is_wrong_and_opencv_stays_silent(
        files: dict[str, Path], capfd: pytest.CaptureFixture[str]) -> None:
    for name, why in (("missing.jpg", "not found"), ("cut.jpg", "truncated JPEG"),
                      ("zero.png", "empty file")):
        with pytest.raises(M2DetError, match=f"{name}: {why}$"):
            read_image(files["mixed"] / name)
    png = cv2.imencode(".png", read_image(files["mixed"] / "good0.jpg"))[1].tobytes()
    (files["root"] / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(M2DetError, match="truncated PNG"):
        read_image(files["root"] / "cut.png")
    assert capfd.readouterr().err == ""  # no findDecoder / libjpeg / libpng messages


def test_nms_on_huge_boxes_warns_nothing() -> None:
    from m2det.nms import batched_nms, get_nms_params

    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 1, (1, 64, 4)).astype(np.float32)
    boxes[..., 2:] += boxes[..., :2]
    boxes *= np.float32(1e30)  # an untrained network's exp(): areas overflow float32
    scores = rng.uniform(0, 1, (1, 64, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), get_nms_params("official"))


@pytest.mark.slow
def test_export_prints_only_its_own_lines(files: dict[str, Path], tmp_path: Path) -> None:
    """FP16 by AutoCast and INT8 by ModelOpt (whose calibration draws a bar per image and logs
    INFO lines), DeprecationWarnings shown: stdout gets the files, stderr the status lines and
    the one warning about INT8 accuracy, nothing else."""
    out = tmp_path / "onnx"
    done = run("m2det-export", "--ckpt", BUNDLED, "--fp16", "--int8", "--calib",
               files["shapes"] / "train", "--calib-count", "4", "--out", out, cwd=tmp_path,
               timeout=600, env={"PYTHONWARNINGS": "default"})
    assert done.returncode == 0, done.stderr
    assert all(line.startswith("wrote ") for line in done.stdout.splitlines()), done.stdout
    for line in done.stderr.splitlines():
        assert line.startswith("[export] ") or line.startswith(
            "m2det-export: warning: the INT8 graph's scores differ from FP32"), done.stderr
    summary = json.loads((out / "m2det_tiny_export.json").read_text())
    assert summary["calibration"]["recipe"] == "ModelOpt Q/DQ, TensorRT placement"
    assert summary["parity"]["int8_vs_fp32"]["inputs"] == "4 calibration images"
    assert sorted(p.name for p in out.iterdir()) == [
        "m2det_tiny.onnx", "m2det_tiny_export.json", "m2det_tiny_fp16.onnx",
        "m2det_tiny_int8.onnx"]


@pytest.mark.slow
def test_int8_far_from_fp32_is_a_warning_with_the_figure(files: dict[str, Path],
                                                         tmp_path: Path) -> None:
    from m2det.export.pipeline import ExportOptions, export_model

    said: list[str] = []
    result = export_model(ExportOptions(
        checkpoint=BUNDLED, out=tmp_path / "o", int8=True, calib=files["shapes"] / "train",
        calib_count=2, qdq_placement="onnxruntime", int8_warning=0.0), log=None,
        warn=said.append)  # fmt: skip
    figure = result.parity["int8_vs_fp32"]["scores_max"]
    assert said == [f"the INT8 graph's scores differ from FP32 by up to {figure:.2f} on the 2 "
                    f"calibration images (mean {result.parity['int8_vs_fp32']['scores_mean']:.1e};"
                    " recipe ONNX Runtime quantize_static (QDQ, uint8 activations)): measure its "
                    "AP (m2det-eval --onnx) before using it"]
    assert result.calibration is not None
    assert result.calibration["recipe"].startswith("ONNX Runtime quantize_static")


# ------------------------------------------------------------------------------------------
# one convention


def _parsers() -> dict[str, argparse.ArgumentParser]:
    found = {}
    for prog, (module, _, factory) in SCRIPTS.items():
        if factory is not None:
            found[prog] = getattr(importlib.import_module(module), factory)()
    return found


def test_every_script_has_the_common_options_and_sentence_help() -> None:
    parsers = _parsers()
    from m2det.export.cli import build_parser as export_parser

    parsers["m2det-export"] = export_parser()  # m2det-export's main adds --engine to it
    assert len(parsers) == 8
    for prog, parser in parsers.items():
        formatter = parser._get_formatter()
        options = {s for a in parser._actions for s in a.option_strings}
        assert {"--version", "--quiet", "--debug", "--json"} <= options, prog
        assert "``" not in (parser.description or ""), prog  # not a raw docstring
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or \
                    isinstance(action, argparse._HelpAction):
                continue
            text = formatter._get_help_string(action) % {"default": action.default,
                                                        "prog": prog}  # fmt: skip
            assert text.endswith("."), (prog, action.option_strings, text)
            assert text.lower().count("default") <= 1, (prog, action.option_strings, text)
            if action.default not in (None, False) and action.nargs != 0:
                assert "default" in text.lower(), (prog, action.option_strings, text)


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_version_and_help_exit_0(prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    module, function, _ = SCRIPTS[prog]
    main = getattr(importlib.import_module(module), function)
    from m2det import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"{prog} {__version__}\n"
    assert main(["--help"]) == 0
    assert "--quiet" in capsys.readouterr().out


def test_readme_exit_status_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit status", 1)[1].split("\n#", 1)[0]
    rows = dict(re.findall(r"^\| `?(\d+)`? \| (.+?) \|", section, re.MULTILINE))
    assert {int(k) for k in rows} == {cli.EXIT_OK, cli.EXIT_PARTIAL, cli.EXIT_USAGE,
                                      cli.EXIT_INTERNAL, cli.EXIT_INTERRUPTED}  # fmt: skip
    assert "partial" in rows[str(cli.EXIT_PARTIAL)].lower()
    assert "interrupt" in rows[str(cli.EXIT_INTERRUPTED)].lower()


@pytest.mark.slow
def test_progress_bars_only_on_a_terminal(tmp_path: Path) -> None:
    args = ["--train", "3", "--val", "1", "--size", "64"]
    piped = run("m2det-shapes", "--out", tmp_path / "a", *args, cwd=tmp_path)
    assert piped.returncode == 0 and piped.stderr == ""
    status, shown = on_terminal("m2det-shapes", "--out", tmp_path / "b", *args, cwd=tmp_path)
    assert status == 0 and "shapes train" in shown and "3/3" in shown
    quiet = run("m2det-shapes", "--out", tmp_path / "c", *args, "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "" and "train_images" in quiet.stdout


def test_debug_shows_the_traceback(files: dict[str, Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from m2det.engines.cli import eval_main

    argv = ["--ckpt", str(files["text"]), "--ann", str(files["shapes"] / "annotations/val.json"),
            "--images", str(files["shapes"] / "val")]
    assert eval_main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert eval_main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].endswith("text.pth: not a PyTorch checkpoint")


def test_save_model_round_trip_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    save_model(build_model(get_config("m2det_tiny")), path)
    assert read_checkpoint(path)["config"]["name"] == "m2det_tiny"
