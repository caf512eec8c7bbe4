"""Build the soft-NMS libraries for this GPU (CMake, only the two C ABI libraries) and run the
``gpu``-marked tests against them (``tests/test_plugin_gpu.py`` reads
``$M2DET_SOFTNMS_LIB_DIR``)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from m2det.engines import soft_nms_kernel as snk
from m2det.errors import M2DetError

REPO = snk.PLUGINS_DIR.parent
GPU_TESTS = ("tests/test_plugin_gpu.py",)


def _run(cmd: list[str], timeout_s: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False, **kw)
    except subprocess.TimeoutExpired:
        raise M2DetError(f"{Path(cmd[0]).name} ran past its {timeout_s:.0f} s budget") from None


def find_nvcc() -> str | None:
    """nvcc on PATH, else in $CUDA_HOME/bin or /usr/local/cuda/bin."""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and Path(home, "bin", "nvcc").is_file():
            return str(Path(home, "bin", "nvcc"))
    return None


def build(build_dir: Path, cuda_arch: str | None, timeout_s: float) -> dict[str, Any]:
    """Configure and build ``libm2det_softnms_cpu.so`` and, when ``cuda_arch`` is given (e.g.
    "90"), ``libm2det_softnms.so`` for that architecture only; then point
    ``$M2DET_SOFTNMS_LIB_DIR`` at ``build_dir`` for this process and its children."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise M2DetError("cmake is not on PATH: cannot build the soft-NMS libraries")
    deadline = time.monotonic() + timeout_s
    # Warnings are errors in CI; here a newer host compiler's new warning must not cost the run.
    configure = [cmake, "-S", str(snk.PLUGINS_DIR), "-B", str(build_dir),
                 "-DTensorRT_INCLUDE_DIR=", "-DCMAKE_BUILD_TYPE=Release",
                 "-DM2DET_WARNINGS_AS_ERRORS=OFF"]
    targets = ["m2det_softnms_cpu"]
    if cuda_arch:
        nvcc = find_nvcc()
        if nvcc is None:
            raise M2DetError("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): "
                             "cannot build the CUDA kernel")
        configure += ["-DM2DET_WITH_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}",
                      f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}"]
        targets.append("m2det_softnms")
    else:
        configure.append("-DM2DET_WITH_CUDA=OFF")
    steps = [configure, [cmake, "--build", str(build_dir), "-j", str(os.cpu_count() or 1),
                         "--target", *targets]]
    for cmd in steps:
        run = _run(cmd, max(1.0, deadline - time.monotonic()))
        if run.returncode != 0:
            tail = " | ".join((run.stdout + run.stderr).strip().splitlines()[-10:])
            raise M2DetError(f"building the soft-NMS libraries failed: {tail}")
    libs = [snk.CPU_LIBRARY] + ([snk.CUDA_LIBRARY] if cuda_arch else [])
    missing = [lib for lib in libs if not (build_dir / lib).is_file()]
    if missing:
        raise M2DetError(f"the build produced no {', '.join(missing)} in {build_dir}")
    os.environ["M2DET_SOFTNMS_LIB_DIR"] = str(build_dir)
    snk.load_library.cache_clear()
    return {"build_dir": str(build_dir), "cuda_architectures": cuda_arch, "libraries": libs,
            "warnings_as_errors": False}


def run_gpu_tests(log: Path, timeout_s: float) -> dict[str, Any]:
    """``pytest -m gpu`` on ``GPU_TESTS`` (in parallel where pytest-xdist is installed); the
    full output goes to ``log``. Returns the counts pytest printed and its exit code."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
           *GPU_TESTS]
    if importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    run = _run(cmd, timeout_s, cwd=REPO)
    output = run.stdout + run.stderr
    log.write_text(output)
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    return {"command": " ".join(["python", "-m", *cmd[2:]]), "exit_code": run.returncode,
            "summary": summary, "counts": counts, "log": log.name}
