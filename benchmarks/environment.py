"""Where and how figures were measured: CPU, GPU, driver, library versions, git commit, command,
date, load average (recorded in every results JSON)."""

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
            "opencv": cv2.__version__, "tensorrt": trt}  # fmt: skip


def environment(command: Sequence[str], device: str = "cpu",
                threads: int | None = None) -> dict[str, Any]:
    """Where and how the figures were measured: device, driver, versions, commit, command, date."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cpu = f"{_cpu_name()} ({os.cpu_count()} logical CPUs)"
    return {
        "device": gpu if device.startswith("cuda") and gpu else cpu,
        "cpu": cpu, "gpu": gpu, "driver": _nvidia_driver(),
        "cuda": torch.version.cuda if gpu else None,
        "threads": threads or torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "versions": library_versions(), "git_commit": _git_commit(),
        "command": " ".join(command),
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }  # fmt: skip
