"""The soft-NMS C ABI (``plugins/soft_nms/softNmsApi.h``) from Python.

- Host functions (parameter check, workspace size, the C++ reference ``m2det_soft_nms_cpu``):
  compiled into the package's extension ``m2det._postprocess`` at install time, so they need no
  library and no build here.
- The CUDA kernel: ``libm2det_softnms.so`` (static CUDA runtime, the same host functions too),
  through ctypes. pip builds it into the package (``m2det/lib/``) where nvcc is on PATH; it is
  looked up in ``$M2DET_SOFTNMS_LIB_DIR`` if set, else in the package, else in ``plugins/build/``
  of a source checkout (built there on demand by ``build_libraries``, as the C ABI's own CPU
  library ``libm2det_softnms_cpu.so`` and the TensorRT plugin are: CMake builds of ``plugins/``).

Both produce the EfficientNMS layout the TensorRT plugin writes, returned as ``Detections``.
No C++ exception crosses the C ABI: a failing call returns an error value and leaves its message
for ``m2det_soft_nms_last_error()``, which ``call_checked`` (ctypes) and the extension turn into
``M2DetError``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from m2det import contract, postprocess
from m2det.detections import Detections
from m2det.errors import M2DetError
from m2det.nms import NMSParams

__all__ = [
    "CPU_LIBRARY", "CUDA_LIBRARY", "MAX_CUDA_CANDIDATES", "MAX_CUDA_DETECTIONS", "SoftNmsParams",
    "build_libraries", "c_params", "call_checked", "installed_library_dir", "library_dir",
    "load_library",
    "soft_nms_cpu_reference", "soft_nms_cuda", "soft_nms_cuda_tensors", "workspace_size",
]

CPU_LIBRARY = "libm2det_softnms_cpu.so"
CUDA_LIBRARY = "libm2det_softnms.so"
MAX_CUDA_CANDIDATES = contract.MAX_CANDIDATES
MAX_CUDA_DETECTIONS = contract.MAX_DETECTIONS
PLUGINS_DIR = Path(__file__).resolve().parent.parent / "plugins"


class SoftNmsParams(ctypes.Structure):
    """``M2DetSoftNmsParams`` (softNmsParams.h): the plugin's 8 attributes, float ones first,
    in the order of ``m2det.contract``."""

    _fields_ = ([(name, ctypes.c_float) for name in contract.PLUGIN_FLOAT_ATTRIBUTES]
                + [(name, ctypes.c_int32) for name in contract.PLUGIN_INT_ATTRIBUTES])


def library_dir() -> Path:
    """Where CMake builds of ``plugins/`` go and are looked up: ``$M2DET_SOFTNMS_LIB_DIR`` or
    ``plugins/build``."""
    return Path(os.environ.get("M2DET_SOFTNMS_LIB_DIR") or PLUGINS_DIR / "build")


def installed_library_dir() -> Path | None:
    """``lib/`` beside the extension ``m2det._postprocess``: where pip puts the CUDA library
    (None without the extension)."""
    ext = postprocess.extension_path()
    return None if ext is None else ext.parent / "lib"


def _candidates(name: str) -> list[Path]:
    if os.environ.get("M2DET_SOFTNMS_LIB_DIR"):
        return [library_dir() / name]
    installed = installed_library_dir()
    return ([installed / name] if installed is not None else []) + [library_dir() / name]


def build_libraries(build_dir: Path, *, cuda_architectures: str | None = None,
                    extra_args: tuple[str, ...] = ()) -> Path:
    """Configure and build ``plugins/`` into ``build_dir`` (incremental); returns ``build_dir``.

    ``cuda_architectures`` (e.g. "90") overrides the default SASS set 75..90 + PTX."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise M2DetError("cmake is not on PATH: cannot build the soft-NMS libraries")
    configure = [cmake, "-S", str(PLUGINS_DIR), "-B", str(build_dir), *extra_args]
    if cuda_architectures:
        configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures}")
    for cmd in (configure, [cmake, "--build", str(build_dir), "-j", str(os.cpu_count() or 1)]):
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            tail = (run.stdout + run.stderr).strip().splitlines()[-15:]
            raise M2DetError(f"building the soft-NMS libraries failed ({' '.join(cmd[:2])}): "
                             + " | ".join(tail))
    return build_dir


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    params = ctypes.POINTER(SoftNmsParams)
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    lib.m2det_soft_nms_last_error.argtypes = []
    lib.m2det_soft_nms_last_error.restype = ctypes.c_char_p
    lib.m2det_soft_nms_check.argtypes = [params, i64, i64, ctypes.c_int]
    lib.m2det_soft_nms_check.restype = ctypes.c_char_p
    lib.m2det_soft_nms_workspace_size.argtypes = [i64, i64, i64, params]
    lib.m2det_soft_nms_workspace_size.restype = ctypes.c_size_t
    ints = [ctypes.c_int] * 4  # scoresIsHalf, B, A, C
    lib.m2det_soft_nms_cpu.argtypes = [vp, vp, *ints, params, vp, vp, vp, vp]
    lib.m2det_soft_nms_cpu.restype = ctypes.c_int
    if hasattr(lib, "m2det_soft_nms_cuda"):
        lib.m2det_soft_nms_cuda.argtypes = [vp, vp, *ints, params, vp, ctypes.c_size_t,
                                            vp, vp, vp, vp, vp]
        lib.m2det_soft_nms_cuda.restype = ctypes.c_int
    return lib


@cache
def load_library(name: str = CPU_LIBRARY, build: bool = True) -> ctypes.CDLL:
    """Load ``name``: from ``$M2DET_SOFTNMS_LIB_DIR`` if set, else from the package (pip's
    build) or ``plugins/build``; when found in none and ``build`` is true, ``plugins/`` of a
    source checkout is built into ``library_dir()`` first."""
    path = next((p for p in _candidates(name) if p.is_file()), library_dir() / name)
    if not path.is_file() and build and PLUGINS_DIR.is_dir():
        build_libraries(library_dir())
    if not path.is_file():
        raise M2DetError(f"{path} not found: build plugins/ with CMake "
                         "(see plugins/soft_nms/README.md)")
    try:
        return _declare(ctypes.CDLL(str(path)))
    except (OSError, AttributeError) as e:  # AttributeError: a library without a declared symbol
        raise M2DetError(f"cannot load {path}: {e} (rebuild plugins/)") from None


def _last_error(lib: ctypes.CDLL) -> str:
    message = lib.m2det_soft_nms_last_error()
    return message.decode(errors="replace") if message else "unknown error"


def call_checked(lib: ctypes.CDLL, function: str, *args: Any) -> None:
    """Call the C ABI ``function`` of ``lib`` (one returning a status, 0 = success) and raise
    M2DetError with the library's message for a nonzero status."""
    status = getattr(lib, function)(*args)
    if status != 0:
        raise M2DetError(f"soft-NMS failed (status {status}): {_last_error(lib)}")


def c_params(params: NMSParams, num_anchors: int, num_classes: int, *,
             for_cuda: bool = False, lib: ctypes.CDLL | None = None,
             check: bool = True) -> SoftNmsParams:
    """``params`` as the C struct for A anchors and C classes. ``max_detections == 0`` (no cap)
    becomes the most detections an image can have, C * min(keep_per_class, max_candidates, A);
    raises M2DetError if ``check`` and the library rejects the result."""
    keep_cap = min(params.max_candidates, num_anchors)
    if params.keep_per_class > 0:
        keep_cap = min(keep_cap, params.keep_per_class)
    k = params.max_detections or num_classes * keep_cap
    if for_cuda and params.max_detections == 0 and k > MAX_CUDA_DETECTIONS:
        raise M2DetError(f"soft_nms_cuda needs max_detections <= {MAX_CUDA_DETECTIONS}; "
                         f"max_detections=0 (no cap) would need {k} here: set a cap")
    c = SoftNmsParams(params.score_threshold, params.iou_threshold, params.sigma,
                      params.min_score, int(params.method), params.max_candidates,
                      params.keep_per_class, k)
    if not check:
        return c
    if lib is not None:
        raw = lib.m2det_soft_nms_check(ctypes.byref(c), num_anchors, num_classes, int(for_cuda))
        why = None if raw is None else raw.decode()
    else:
        why = _extension().check_params(_ext_params(c), num_anchors, num_classes, for_cuda)
    if why is not None:
        raise M2DetError(f"invalid soft-NMS parameters: {why}")
    return c


def _extension() -> Any:
    return postprocess.extension()


def _ext_params(c: SoftNmsParams) -> Any:
    """The ctypes struct as the extension's ``SoftNmsParams``."""
    out = _extension().SoftNmsParams()
    for field in SoftNmsParams._fields_:
        setattr(out, field[0], getattr(c, field[0]))
    return out


def _ext_call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as e:  # the C ABI's status and message
        raise M2DetError(str(e)) from None


def workspace_size(batch: int, num_anchors: int, num_classes: int, params: NMSParams) -> int:
    """Workspace bytes the CUDA kernel needs for boxes [B,A,4] / scores [B,A,C]."""
    c = c_params(params, num_anchors, num_classes, for_cuda=True)
    return int(_ext_call(_extension().workspace_size, batch, num_anchors, num_classes,
                         _ext_params(c)))


def _workspace_size(lib: ctypes.CDLL, batch: int, num_anchors: int, num_classes: int,
                    c: SoftNmsParams) -> int:
    size = int(lib.m2det_soft_nms_workspace_size(batch, num_anchors, num_classes, ctypes.byref(c)))
    if size == 0:  # never a valid size: the library says why
        raise M2DetError(f"soft-NMS workspace size: {_last_error(lib)}")
    return size


def _shapes(boxes_shape: tuple[int, ...], scores_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if (len(boxes_shape) != 3 or boxes_shape[2] != 4 or len(scores_shape) != 3
            or tuple(scores_shape[:2]) != tuple(boxes_shape[:2])):
        raise M2DetError(f"soft-NMS expects boxes [B,A,4] and scores [B,A,C], got "
                         f"{list(boxes_shape)} and {list(scores_shape)}")
    b, a, c = (int(v) for v in scores_shape)
    if b < 1 or a < 1 or c < 1:
        raise M2DetError(f"soft-NMS needs B, A, C >= 1, got scores {[b, a, c]}")
    return b, a, c


def _host(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def soft_nms_cpu_reference(boxes: Any, scores: Any, params: NMSParams) -> Detections:
    """The C++ reference (``m2det_soft_nms_cpu``, in the extension): ``boxes`` [B,A,4] float32,
    ``scores`` [B,A,C] float32 or float16 (numpy or torch) -> Detections padded to K
    (``max_detections``, or the largest possible count when it is 0)."""
    b_np = np.ascontiguousarray(_host(boxes), np.float32)
    s_np = _host(scores)
    half = s_np.dtype == np.float16
    s_np = np.ascontiguousarray(s_np, np.float16 if half else np.float32)
    _, A, C = _shapes(b_np.shape, s_np.shape)
    c = c_params(params, A, C, check=False)  # m2det_soft_nms_cpu checks and says why
    num, out_boxes, out_scores, classes = _ext_call(
        _extension().reference_nms, b_np, s_np.view(np.uint16) if half else s_np, _ext_params(c))
    return Detections(num, out_boxes, out_scores, classes)


def soft_nms_cuda_tensors(boxes: Any, scores: Any, params: NMSParams,
                          workspace: Any | None = None) -> tuple[Any, Any, Any, Any]:
    """The CUDA kernel on torch CUDA tensors ``boxes`` [B,A,4] float32 and ``scores`` [B,A,C]
    float32|float16, enqueued on torch's current stream without synchronising. Returns device
    tensors (num [B,1] int32, boxes [B,K,4], scores [B,K] float32, classes [B,K] int32).
    ``workspace``: an optional uint8 CUDA tensor of at least ``workspace_size`` bytes (reuse
    it across calls to time only the kernels)."""
    import torch

    if not torch.cuda.is_available():
        raise M2DetError("soft_nms_cuda needs a CUDA device, and torch sees none "
                         "(torch.cuda.is_available() is False)")
    if not (isinstance(boxes, torch.Tensor) and isinstance(scores, torch.Tensor)
            and boxes.is_cuda and scores.is_cuda and boxes.device == scores.device):
        raise M2DetError("soft_nms_cuda expects boxes and scores as torch CUDA tensors "
                         "on one device")
    if boxes.dtype != torch.float32 or scores.dtype not in (torch.float32, torch.float16):
        raise M2DetError(f"soft_nms_cuda expects float32 boxes and float32/float16 scores, got "
                         f"{boxes.dtype} and {scores.dtype}")
    B, A, C = _shapes(tuple(boxes.shape), tuple(scores.shape))
    boxes, scores = boxes.contiguous(), scores.contiguous()
    lib = load_library(CUDA_LIBRARY)
    c = c_params(params, A, C, for_cuda=True, lib=lib)
    need = _workspace_size(lib, B, A, C, c)
    if workspace is None or workspace.numel() < need:
        workspace = torch.empty(max(need, 1), dtype=torch.uint8, device=boxes.device)
    k, dev = c.max_detections, boxes.device
    num = torch.empty((B, 1), dtype=torch.int32, device=dev)
    out_boxes = torch.empty((B, k, 4), dtype=torch.float32, device=dev)
    out_scores = torch.empty((B, k), dtype=torch.float32, device=dev)
    out_classes = torch.empty((B, k), dtype=torch.int32, device=dev)
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        call_checked(  # status: a cudaError_t code
            lib, "m2det_soft_nms_cuda", boxes.data_ptr(), scores.data_ptr(),
            int(scores.dtype == torch.float16), B, A, C, ctypes.byref(c), workspace.data_ptr(),
            workspace.numel(), num.data_ptr(), out_boxes.data_ptr(), out_scores.data_ptr(),
            out_classes.data_ptr(), stream)
    return num, out_boxes, out_scores, out_classes


def soft_nms_cuda(boxes: Any, scores: Any, params: NMSParams) -> Detections:
    """The CUDA kernel: like ``soft_nms_cpu_reference`` but ``boxes``/``scores`` are torch
    CUDA tensors (host arrays are copied to the current device). Synchronises to return host
    Detections."""
    import torch

    if not torch.cuda.is_available():
        raise M2DetError("soft_nms_cuda needs a CUDA device, and torch sees none "
                         "(torch.cuda.is_available() is False)")
    boxes_t = torch.as_tensor(boxes, device="cuda") if not isinstance(boxes, torch.Tensor) \
        else boxes.cuda()
    scores_t = torch.as_tensor(scores, device="cuda") if not isinstance(scores, torch.Tensor) \
        else scores.cuda()
    num, out_boxes, out_scores, out_classes = soft_nms_cuda_tensors(boxes_t, scores_t, params)
    return Detections(num.cpu().numpy()[:, 0], out_boxes.cpu().numpy(), out_scores.cpu().numpy(),
                      out_classes.cpu().numpy())
