"""Artifact -> runner: the one place that knows which backend runs which file.

``.pth``/``.pt`` -> ``TorchRunner``; ``.onnx`` -> ``m2det.engines.onnx_runner.OnnxRunner``
(``backend="openvino"``: ``m2det.engines.openvino_runner.OpenVinoRunner``); ``.plan``/``.engine`` ->
``m2det.engines.trt_runner.TensorRTRunner``. Backends are imported lazily, so a machine without
ONNX Runtime, OpenVINO or TensorRT can still run checkpoints; a missing backend is a one-line
M2DetError that names the install command.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import m2det
from m2det.config import M2DetConfig
from m2det.engines.base import Runner
from m2det.errors import M2DetError
from m2det.nms import NMSParams

#: The synthetic-shapes model the package ships (config ``m2det_tiny``), for demos and tests.
BUNDLED_CHECKPOINT = Path(m2det.__file__).parent / "assets" / "m2det_tiny_shapes.pth"

TORCH_SUFFIXES = (".pth", ".pt")
ONNX_SUFFIXES = (".onnx",)
TRT_SUFFIXES = (".plan", ".engine")

_ORT = "onnxruntime (pip install 'm2det-deploy[export]')"
_TRT = "TensorRT (pip install 'm2det-deploy[trt]')"
_OV = "OpenVINO (pip install 'm2det-deploy[openvino]')"
#: Backends that run ONNX files (``load_runner(..., backend=)``); the first is the default.
ONNX_BACKENDS = ("onnxruntime", "openvino")
_OPENVINO = ("m2det.engines.openvino_runner", "OpenVinoRunner", _OV)
# suffixes -> (module, class, what to install when the backend's package is missing)
_BACKENDS: dict[tuple[str, ...], tuple[str, str, str]] = {
    TORCH_SUFFIXES: ("m2det.engines.torch_runner", "TorchRunner", "torch"),
    ONNX_SUFFIXES: ("m2det.engines.onnx_runner", "OnnxRunner", _ORT),
    TRT_SUFFIXES: ("m2det.engines.trt_runner", "TensorRTRunner", _TRT),
}
# Third-party packages whose absence means "backend not installed", not a bug.
_BACKEND_PACKAGES = {"onnxruntime", "openvino", "tensorrt", "cuda", "pycuda"}


def default_checkpoint() -> Path:
    """The bundled ``m2det_tiny`` shapes checkpoint; M2DetError if this install lacks it."""
    if not BUNDLED_CHECKPOINT.is_file():
        raise M2DetError(f"no bundled checkpoint at {BUNDLED_CHECKPOINT}: pass --ckpt FILE")
    return BUNDLED_CHECKPOINT


def load_runner(artifact: str | Path, *, config: M2DetConfig | str | None = None,
                nms: NMSParams, device: str = "cpu", fp16: bool = False,
                backend: str | None = None, **kw: Any) -> Runner:
    """Construct the runner for ``artifact`` (not yet activated).

    ``config`` names the preset for checkpoints that record none, and for an ONNX file whose
    metadata a tool stripped; for ONNX files and plans that record theirs it is only checked.
    ``fp16`` applies to checkpoints (CUDA autocast): an ONNX file's or plan's precision is fixed
    when it is exported/built. ``backend``: what runs an ONNX file, one of :data:`ONNX_BACKENDS`
    (default ONNX Runtime). ``kw`` goes to the runner.
    """
    path = Path(artifact)
    suffix = path.suffix.lower()
    suffixes = next((group for group in _BACKENDS if suffix in group), None)
    if suffixes is None:
        known = ", ".join(s for group in _BACKENDS for s in group)
        raise M2DetError(f"unknown artifact type {path.name!r}; expected one of {known}")
    module, cls_name, package = _BACKENDS[suffixes]
    if backend not in (None, *ONNX_BACKENDS):
        raise M2DetError(f"unknown backend {backend!r} for ONNX files; valid: "
                         f"{', '.join(ONNX_BACKENDS)}")  # fmt: skip
    if backend is not None and suffixes != ONNX_SUFFIXES:
        raise M2DetError(f"--backend {backend} runs ONNX files, not {path.name}")
    if backend == "openvino":
        module, cls_name, package = _OPENVINO
        if device != "cpu":
            raise M2DetError(f"the OpenVINO runner runs on the CPU, not {device!r}")
    if not path.is_file():
        kind = {TORCH_SUFFIXES: "checkpoint", ONNX_SUFFIXES: "ONNX file"}.get(suffixes, "plan")
        raise M2DetError(f"{kind} not found: {path}")

    if suffixes == TORCH_SUFFIXES:
        runner_cls = _import(module, cls_name, package)
        runner: Runner = runner_cls(path, nms, config=config, device=device, fp16=fp16, **kw)
        return runner
    if fp16:
        raise M2DetError(f"{path.name}: the precision of an ONNX file or plan is set when it is "
                         "exported/built; fp16 applies to checkpoints only")  # fmt: skip
    runner_cls = _import(module, cls_name, package)
    try:
        # config: used only when an ONNX file's metadata is stripped
        if backend == "openvino":
            runner = runner_cls(path, nms, config=config, **kw)
        elif suffixes == ONNX_SUFFIXES:
            runner = runner_cls(path, nms, providers=_ort_providers(device), config=config, **kw)
        else:
            runner = runner_cls(path, nms=nms, **kw)
    except ModuleNotFoundError as e:  # backends may import their package on construction
        raise _missing(e, package) from None
    _check_config(runner.config, config, path)
    return runner


def _import(module: str, cls_name: str, package: str) -> Any:
    try:
        return getattr(importlib.import_module(module), cls_name)
    except ModuleNotFoundError as e:
        raise _missing(e, package) from None


def _missing(e: ModuleNotFoundError, package: str) -> Exception:
    """An M2DetError when the backend (or its package) is not installed; other import errors are
    bugs and keep their traceback."""
    root = (e.name or "").split(".")[0]
    if e.name and (e.name.startswith("m2det.engines.") or root in _BACKEND_PACKAGES):
        return M2DetError(f"this backend is not available here: needs {package} ({e.name} "
                          "is not importable)")  # fmt: skip
    return e


def _ort_providers(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise M2DetError(f"unsupported device {device!r}; use cpu or cuda")


def _check_config(actual: M2DetConfig, named: M2DetConfig | str | None, path: Path) -> None:
    from m2det.config import get_config

    if named is None:
        return
    want = get_config(named) if isinstance(named, str) else named
    if want.name != actual.name:
        raise M2DetError(f"{path} was exported for config {actual.name!r}, not {want.name!r}")
