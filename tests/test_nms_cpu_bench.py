"""benchmarks/nms_cpu.py and its helpers, without the official code (never part of this
repository): the source surgery on a stand-in ``cpu_nms.pyx`` written here, compiling single
definitions out of a module without running it, the kept-set comparison, the targets, and the
CLI's one-line errors. The full side-by-side run needs a checkout of qijiezhao/M2Det and Cython
(``python -m m2det.benchmarks.nms_cpu --official PATH``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m2det.benchmarks import nms_cpu
from m2det.benchmarks.detector_outputs import detector_outputs
from m2det.benchmarks.official_nms import _definitions, soft_nms_sources
from m2det.errors import M2DetError

# A stand-in with the official file's shape (module header, a cpu_nms, then cpu_soft_nms with
# six "+ 1)" terms); not its code.
PYX = """import numpy as np
cimport numpy as np

cdef inline float larger(float a, float b):
    return a if a >= b else b

def cpu_nms(np.ndarray[np.float32_t, ndim=2] dets, float thresh):
    return []

def cpu_soft_nms(np.ndarray[float, ndim=2] boxes, float sigma=0.5):
    a = (boxes[0, 2] - boxes[0, 0] + 1) * (boxes[0, 3] - boxes[0, 1] + 1)
    b = (boxes[1, 2] - boxes[1, 0] + 1) * (boxes[1, 3] - boxes[1, 1] + 1)
    c = (larger(a, b) + 1) * (larger(b, a) + 1)
    return [c]
"""


def test_soft_nms_sources_keep_the_header_and_drop_plus_one() -> None:
    released, exact = soft_nms_sources(PYX)
    for text in (released, exact):
        assert text.startswith("import numpy as np\ncimport numpy as np")
        assert "cdef inline float larger" in text and "def cpu_soft_nms" in text
        assert "def cpu_nms(" not in text
    assert released.count(" + 1)") == 6 and " + 1)" not in exact
    assert "(boxes[0, 2] - boxes[0, 0]) * (boxes[0, 3] - boxes[0, 1])" in exact
    with pytest.raises(M2DetError, match="5 '\\+ 1\\)' terms, expected 6"):
        soft_nms_sources(PYX.replace("(larger(b, a) + 1)", "larger(b, a)"))
    with pytest.raises(M2DetError, match="no cpu_soft_nms"):
        soft_nms_sources(PYX.split("def cpu_soft_nms")[0])


def test_definitions_compile_without_running_the_module(tmp_path: Path) -> None:
    source = tmp_path / "core.py"
    source.write_text("raise RuntimeError('module code ran')\nimport no_such_module\n\n"
                      "def nms_process(x):\n    return helper(x) + 1\n")
    ns = _definitions(source, ("nms_process",), {"helper": lambda x: 2 * x})
    assert ns["nms_process"](3) == 7
    with pytest.raises(M2DetError, match="has no missing"):
        _definitions(source, ("missing",), {})


def test_agreement_verdicts() -> None:
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]], np.float32)
    scores = np.array([0.9, 0.5, 0.5], np.float32)
    official = np.hstack([boxes, scores[:, None]])
    assert nms_cpu.agreement(boxes, scores, official) == "identical"
    assert nms_cpu.agreement(boxes, scores, official[[0, 2, 1]]) == "tie order"
    assert nms_cpu.agreement(boxes[[1, 0, 2]], scores, official) == "different"
    assert nms_cpu.agreement(boxes[:2], scores[:2], official) == "different"


def test_interleaved_times_every_callable() -> None:
    calls = {"a": 0, "b": 0}

    def bump(k: str) -> None:
        calls[k] += 1

    t = nms_cpu.interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, repeats=4)
    assert calls == {"a": 5, "b": 5}  # one warm-up each
    assert t["a"]["repeats"] == 4 and t["a"]["min_ms"] <= t["a"]["median_ms"]


def test_targets_need_every_ratio() -> None:
    rows = [{"case": "one class", "ratio": 1.5, "agreement": "identical"},
            {"case": "one class", "ratio": 0.9, "agreement": "tie order"},
            {"case": "image", "ratio": 6.0}]
    t = nms_cpu.targets(rows)
    assert t["smallest one-class ratio"] == 0.9 and t["smallest image ratio"] == 6.0
    assert list(t.values())[:3] == [False, True, True]


def test_detector_outputs_look_like_a_detector() -> None:
    out = detector_outputs(320, 2, seed=0)
    assert out.loc.shape == (2, 12_810, 4) and out.conf.shape == (2, 12_810, 81)
    assert np.allclose(out.conf.sum(-1).numpy(), 1.0, atol=1e-5)
    fg = out.conf[..., 1:].numpy()
    candidates = (fg > 0.1).sum((1, 2))
    assert np.all((candidates > 20) & (candidates < 5_000)), candidates  # some, not everywhere


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads must be >= 1"),
    (["--official", "/no/such/dir"], "no such directory"),
])
def test_bad_inputs_one_line_exit_2(args: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert nms_cpu.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{nms_cpu.PROG}: error: ") and message in err


def test_a_folder_that_is_not_the_official_checkout(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert nms_cpu.main(["--official", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "is not a checkout of qijiezhao/M2Det" in err and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()
