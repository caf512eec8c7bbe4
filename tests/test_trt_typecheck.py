"""Static checks of the TensorRT code that cannot run on a machine without TensorRT:

* mypy over the builder/runner with ``tensorrt-stubs`` (and cuda-python): every TensorRT call is
  checked against the real API. The stubs as published do not parse (parameters named ``in``, a
  non-default parameter after defaults, an import of ``tensorrt_libs``) and their folder has no
  ``py.typed``, so mypy would silently treat ``tensorrt`` as ``Any``; this test writes a repaired
  copy under ``~/.cache/m2det`` and points ``MYPYPATH`` at it, and proves the stubs are in force
  by checking that a wrong TensorRT call fails.
* the C++ runtime (``engines/cpp``) compiles against TensorRT headers with ``-Wall -Wextra
  -Werror`` (``engines/cpp/check_compile.sh``; headers from ``$TensorRT_INCLUDE_DIR`` or
  ``~/.cache/tensorrt-oss/*/include``, see ``shared/tools/trt-headers.sh``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "m2det"
#: The files whose TensorRT / CUDA usage is checked (ours + the runner base class).
TRT_FILES = ("engines/builder.py", "engines/plugin_library.py", "engines/trt_version.py",
             "engines/trt_target.py", "engines/trt_runner.py", "engines/cuda_memory.py",
             "engines/base.py")  # fmt: skip
STUB_FILES = ("tensorrt/__init__.pyi", "tensorrt_bindings/__init__.pyi",
              "tensorrt_bindings/tensorrt.pyi")  # fmt: skip
MYPY_INI = """[mypy]
python_version = 3.11
ignore_missing_imports = True
follow_imports = silent
[mypy-tensorrt.*,tensorrt_bindings.*]
ignore_errors = True
"""


def _stubs_source() -> Path | None:
    """The site-packages folder holding tensorrt-stubs' ``tensorrt``/``tensorrt_bindings`` stubs."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    for location in (spec.submodule_search_locations or []) if spec else []:
        root = Path(location).parent
        if all((root / f).is_file() for f in STUB_FILES):
            return root
    return None


def _repair_line(line: str) -> str | None:
    """One stub line made parseable (None drops it)."""
    if line.strip().startswith("import tensorrt_libs"):
        return None
    m = re.match(r"(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if not m:
        return line
    params, seen_default = [], False
    for p in re.sub(r"(^|, )in:", r"\1in_:", m.group(2)).split(", "):
        if "=" in p:
            seen_default = True
        elif seen_default and ":" in p and not p.startswith("*"):
            p += " = ..."
        params.append(p)
    return m.group(1) + ", ".join(params) + m.group(3)


def repaired_stubs(source: Path, dest: Path) -> Path:
    """Write a parseable copy of the TensorRT stubs under ``dest`` (once) and return ``dest``."""
    marker = dest / ".source"
    if marker.is_file() and marker.read_text() == str(source):
        return dest
    for rel in STUB_FILES:
        lines = [_repair_line(ln) for ln in (source / rel).read_text().splitlines()]
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(ln for ln in lines if ln is not None) + "\n")
    (dest / "mypy.ini").write_text(MYPY_INI)
    marker.write_text(str(source))
    return dest


@pytest.fixture(scope="module")
def stubs() -> Path:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install mypy)")
    source = _stubs_source()
    if source is None:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    return repaired_stubs(source, CACHE / "tensorrt-stubs")


def namespace_tree(dest: Path) -> Path:
    """The installed layout of the sources as symlinks under ``dest`` (``m2det/`` with ``export``,
    ``engines`` and ``benchmarks`` inside it), so mypy resolves ``m2det.engines...`` imports to
    this checkout without an installed package."""
    pkg = dest / "m2det"
    if pkg.is_dir():
        return dest
    pkg.mkdir(parents=True)
    for item in (REPO / "m2det").iterdir():
        (pkg / item.name).symlink_to(item)
    for folder in ("export", "engines", "benchmarks"):
        (pkg / folder).symlink_to(REPO / folder)
    return dest


def _mypy(stubs: Path, *files: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MYPYPATH": str(stubs)}
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(stubs / "mypy.ini"),
           "--cache-dir", str(CACHE / "mypy-trt"), "--no-error-summary", *files]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_trt_code_typechecks_against_tensorrt_stubs(stubs: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_trt_usage.py"
    wrong.write_text("import tensorrt as trt\n\n\ndef f() -> None:\n    trt.BuilderFlag.FP17\n"
                     "    trt.Builder(trt.Logger()).create_network('x')\n")
    bad = _mypy(stubs, str(wrong))
    assert "has no attribute \"FP17\"" in bad.stdout, bad.stdout + bad.stderr  # stubs in force
    assert "create_network" in bad.stdout
    tree = namespace_tree(tmp_path / "src")
    files = [str(Path("m2det") / f) for f in TRT_FILES]
    run = _mypy(stubs, *files, cwd=tree)
    assert run.returncode == 0, run.stdout + run.stderr


def _tensorrt_include_dir() -> Path | None:
    candidates = [os.environ.get("TensorRT_INCLUDE_DIR", "")]
    candidates += sorted(str(p) for p in (CACHE.parent / "tensorrt-oss").glob("*/include"))
    return next((Path(c) for c in candidates if c and (Path(c) / "NvInfer.h").is_file()), None)


@pytest.mark.slow
def test_cpp_runtime_compiles_against_tensorrt_headers() -> None:
    include = _tensorrt_include_dir()
    if include is None:
        pytest.skip("no TensorRT headers: set TensorRT_INCLUDE_DIR or run "
                    "shared/tools/trt-headers.sh on a clone of NVIDIA/TensorRT")  # fmt: skip
    has_cuda = shutil.which("nvcc") is not None or Path("/usr/local/cuda").is_dir()
    if shutil.which("cmake") is None or not has_cuda:
        pytest.skip("cmake or the CUDA toolkit is missing")
    print(f"compiling engines/cpp against {include}")
    env = {**os.environ, "M2DET_CHECK_OPENCV": "ON"}  # one configuration keeps the test short
    run = subprocess.run([str(REPO / "engines/cpp/check_compile.sh"), str(include)], env=env,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "object files, status 0" in run.stdout
