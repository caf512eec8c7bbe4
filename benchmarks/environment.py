"""Where and how figures were measured: CPU and its instruction sets, GPU, driver, library
versions, git commit, command, date, load average (recorded in every results JSON)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Instruction-set extensions that decide CPU inference speed, as Linux names them in
#: /proc/cpuinfo: AMX tiles (bf16/int8 matrix units of Xeon 4th gen+), AVX512-BF16, VNNI (int8 dot
#: products, AVX512 or AVX2 encoded), AVX512F, AVX2.
ISA_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni",
             "avx512f", "avx2")  # fmt: skip
#: numpy's names of the same features (no AMX there), for systems without /proc/cpuinfo.
_NUMPY_NAMES = {"avx512_bf16": "AVX512BF16", "avx512_vnni": "AVX512VNNI", "avx_vnni": "AVXVNNI",
                "avx512f": "AVX512F", "avx2": "AVX2"}  # fmt: skip


def cpu_isa() -> dict[str, Any]:
    """The CPU's inference-relevant instruction sets: ``flags`` (those of :data:`ISA_FLAGS` it
    has), ``best`` (``amx`` > ``avx512_vnni`` > ``avx512`` > ``avx2`` > ``baseline``) and
    ``source`` (``/proc/cpuinfo``, else numpy's runtime CPU detection, which cannot see AMX)."""
    flags: set[str] = set()
    source = "/proc/cpuinfo"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if not flags:
        source = "numpy"
        import importlib

        try:
            umath = importlib.import_module("numpy._core._multiarray_umath")
        except ImportError:  # numpy < 2
            umath = importlib.import_module("numpy.core._multiarray_umath")
        features = getattr(umath, "__cpu_features__", {})
        flags = {ours for ours, theirs in _NUMPY_NAMES.items() if features.get(theirs)}
    have = [f for f in ISA_FLAGS if f in flags]
    if {"amx_tile", "amx_int8"} <= flags or {"amx_tile", "amx_bf16"} <= flags:
        best = "amx"
    elif "avx512_vnni" in flags:
        best = "avx512_vnni"
    elif "avx512f" in flags:
        best = "avx512"
    elif "avx2" in flags:
        best = "avx2"
    else:
        best = "baseline"
    return {"best": best, "flags": have, "source": source}


def _nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "m2det", "export", "engines", "benchmarks"],
                               capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that decide the figures (None: not installed)."""
    import importlib.metadata as md

    import cv2
    import torch

    import m2det

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    from m2det.export.precision import tensorrt_usable

    trt = None
    if tensorrt_usable():
        import tensorrt

        trt = str(tensorrt.__version__)
    return {"m2det": m2det.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__,
            "onnxruntime": version("onnxruntime") or version("onnxruntime-gpu"),
            "onnx": version("onnx"), "modelopt": version("nvidia-modelopt"),
            "opencv": cv2.__version__, "tensorrt": trt,
            "tensorrt_rtx": version("tensorrt-rtx-cu13") or version("tensorrt-rtx-cu12"),
            "openvino": version("openvino")}  # fmt: skip


def environment(command: Sequence[str], device: str = "cpu",
                threads: int | None = None) -> dict[str, Any]:
    """Where and how the figures were measured: device, driver, versions, commit, command, date."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cpu = f"{_cpu_name()} ({os.cpu_count()} logical CPUs)"
    return {
        "device": gpu if device.startswith("cuda") and gpu else cpu,
        "cpu": cpu, "cpu_isa": cpu_isa(), "gpu": gpu, "driver": _nvidia_driver(),
        "cuda": torch.version.cuda if gpu else None,
        "threads": threads or torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "versions": library_versions(), "git_commit": _git_commit(),
        "command": " ".join(command),
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }  # fmt: skip
