"""Static checks of the TensorRT code that cannot run on a machine without TensorRT:

* mypy over the builder/runner with ``tensorrt-stubs`` (and cuda-python): every TensorRT call is
  checked against the real API. The stubs as published do not parse (parameters named ``in``, a
  non-default parameter after defaults, an import of ``tensorrt_libs``) and their folder has no
  ``py.typed``, so mypy would silently treat ``tensorrt`` as ``Any``; this test writes a repaired
  copy under ``~/.cache/m2det`` and points ``MYPYPATH`` at it, and proves the stubs are in force
  by checking that a wrong TensorRT call fails.
* the same files again with stubs of TensorRT-RTX added: ``tensorrt_rtx`` ships none (no
  ``.pyi``, no ``py.typed``), so mypy's ``stubgen`` writes them from the installed bindings
  (pybind11 signatures) under ``~/.cache/m2det``, once per version, repaired the same way; the
  RTX-only calls (``trt_target.set_compute_capabilities``) are checked against them.
* the C++ runtime (``engines/cpp``) compiles against TensorRT headers with ``-Wall -Wextra
  -Werror`` (``engines/cpp/check_compile.sh``; headers from ``$TensorRT_INCLUDE_DIR`` or
  ``~/.cache/tensorrt-oss/*/include``, unpacked by ``plugins/tensorrt_headers.sh``).
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


def _mypy(stubs: Path, *files: str, cwd: Path = REPO,
          extra: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = str(stubs) if extra is None else f"{stubs}{os.pathsep}{extra}"
    env = {**os.environ, "MYPYPATH": path}
    config = (extra or stubs) / "mypy.ini"
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config),
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


RTX_STUB = "tensorrt_rtx_bindings/tensorrt_rtx.pyi"
RTX_MYPY_INI = MYPY_INI + """[mypy-tensorrt_rtx.*,tensorrt_rtx_bindings.*]
ignore_errors = True
"""


def rtx_stubs(version: str, dest: Path) -> Path:
    """Stubs of ``tensorrt_rtx`` and ``tensorrt_rtx_bindings`` generated by stubgen from the
    installed package and repaired like tensorrt-stubs (written once per version)."""
    if (dest / RTX_STUB).is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    code = "import sys; from mypy.stubgen import main; main(sys.argv[1:])"
    subprocess.run([sys.executable, "-c", code, "-p", "tensorrt_rtx_bindings", "-p", "tensorrt_rtx",
                    "-o", str(tmp), "--quiet"], check=True, capture_output=True)  # fmt: skip
    stub = tmp / RTX_STUB
    lines = [_repair_line(ln) for ln in stub.read_text().splitlines()]
    stub.write_text("\n".join(ln for ln in lines if ln is not None) + "\n")
    (tmp / "mypy.ini").write_text(RTX_MYPY_INI)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


@pytest.mark.slow
def test_trt_code_typechecks_with_tensorrt_rtx_stubs(stubs: Path, tmp_path: Path) -> None:
    rtx = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed")
    extra = rtx_stubs(rtx.__version__, CACHE / "tensorrt-rtx-stubs" / rtx.__version__)
    wrong = tmp_path / "wrong_rtx_usage.py"
    wrong.write_text("import tensorrt_rtx as trt\n\n\ndef f() -> None:\n"
                     "    trt.ComputeCapability.SM90\n"
                     "    trt.Builder(trt.Logger()).create_builder_config().set_compute_capability("
                     "'SM86', 0)\n")  # fmt: skip
    bad = _mypy(stubs, str(wrong), extra=extra)
    assert 'has no attribute "SM90"' in bad.stdout, bad.stdout + bad.stderr  # stubs in force
    assert "set_compute_capability" in bad.stdout
    tree = namespace_tree(tmp_path / "src")
    run = _mypy(stubs, *[str(Path("m2det") / f) for f in TRT_FILES], cwd=tree, extra=extra)
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
                    "plugins/tensorrt_headers.sh on a clone of NVIDIA/TensorRT")  # fmt: skip
    has_cuda = shutil.which("nvcc") is not None or Path("/usr/local/cuda").is_dir()
    if shutil.which("cmake") is None or not has_cuda:
        pytest.skip("cmake or the CUDA toolkit is missing")
    print(f"compiling engines/cpp against {include}")
    env = {**os.environ, "M2DET_CHECK_OPENCV": "ON"}  # one configuration keeps the test short
    run = subprocess.run([str(REPO / "engines/cpp/check_compile.sh"), str(include)], env=env,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "object files, status 0" in run.stdout


def _tensorrt_rtx_include_dir() -> Path | None:
    """TensorRT-RTX headers: ``$TensorRT_RTX_INCLUDE_DIR``, else ``~/.cache/tensorrt-rtx/*/include``
    (where ``plugins/check_trt_headers.sh GIT_DIR REF:PATH`` extracts them, e.g. from rustnn/trtx-rs
    with ``HEAD:trtx-sys/TensorRT-Headers/TRT-RTX-1.6``)."""
    candidates = [os.environ.get("TensorRT_RTX_INCLUDE_DIR", "")]
    candidates += sorted(str(p) for p in (CACHE.parent / "tensorrt-rtx").glob("*/include"))
    return next((Path(c) for c in candidates if c and (Path(c) / "NvInfer.h").is_file()), None)


def _rtx_headers_or_skip() -> Path:
    include = _tensorrt_rtx_include_dir()
    if include is None:
        pytest.skip("no TensorRT-RTX headers: set TensorRT_RTX_INCLUDE_DIR or run "
                    "plugins/check_trt_headers.sh on a clone of rustnn/trtx-rs")  # fmt: skip
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        pytest.skip("cmake or the CUDA toolkit is missing")
    return include


@pytest.mark.slow
def test_plugin_compiles_against_tensorrt_rtx_headers() -> None:
    include = _rtx_headers_or_skip()
    run = subprocess.run([str(REPO / "plugins/check_trt_headers.sh"), str(include)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "compiles without warnings against TensorRT-RTX" in run.stdout


@pytest.mark.slow
def test_cpp_runtime_links_against_tensorrt_rtx(tmp_path: Path) -> None:
    """engines/cpp as a shared library against TensorRT-RTX's headers and the pip package's
    libtensorrt_rtx.so.1, every symbol resolved (``--no-undefined``)."""
    include = _rtx_headers_or_skip()
    libs = Path(pytest.importorskip("tensorrt_rtx_libs").__file__).parent
    build = tmp_path / "build"
    configure = ["cmake", "-S", str(REPO / "engines/cpp"), "-B", str(build),
                 f"-DTensorRT_INCLUDE_DIR={include}", f"-DTensorRT_ROOT={libs}",
                 "-DBUILD_SHARED_LIBS=ON", "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--no-undefined",
                 "-DM2DET_WITH_OPENCV=OFF", "-DCMAKE_BUILD_TYPE=Release"]  # fmt: skip
    for cmd in (configure, ["cmake", "--build", str(build), "--target", "m2det_runtime"]):
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    library = next(build.glob("libm2det_runtime.so*"))
    needed = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    assert "[libtensorrt_rtx.so.1]" in needed and "nvinfer" not in needed
