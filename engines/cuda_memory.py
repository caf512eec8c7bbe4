"""Small RAII-style helpers over cuda-python's runtime API (``cuda.bindings.runtime``), in the
style of TensorRT's own Python samples: every call's status is checked, every allocation has an
owner with ``free()`` and is a context manager that frees it on exit. Used by the TensorRT
builder (GPU query) and runner (I/O, stream, graph).

cuda-python is imported lazily so that importing this module never needs it; a missing package
or a machine without a usable GPU is an ``M2DetError`` (one line), a failing CUDA call a
``CudaError`` naming the call.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from m2det.errors import M2DetError


class CudaError(M2DetError):
    """A CUDA runtime call failed (message: call, error name and description)."""


def cudart() -> ModuleType:
    """The cuda-python runtime module; M2DetError when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        raise M2DetError("cuda-python is not installed (pip install 'cuda-python>=12.6'); "
                         "the TensorRT backend needs it") from None  # fmt: skip
    return runtime


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python result ``(err, *values)``: raise ``CudaError`` unless ``err`` is
    cudaSuccess; return None, the one value, or the tuple of values."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, desc = rt.cudaGetErrorString(err)
        text = desc.decode() if isinstance(desc, bytes) else str(desc)
        raise CudaError(f"{call} failed: {getattr(err, 'name', err)} ({text})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    """The current CUDA device: ``name`` and compute capability (``major``, ``minor``)."""

    index: int
    name: str
    major: int
    minor: int

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"


def gpu_info() -> GpuInfo:
    """Describe the current CUDA device; M2DetError (one line) when there is none."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or count == 0:
        _, desc = rt.cudaGetErrorString(err)
        why = desc.decode() if isinstance(desc, bytes) else "no device"
        raise M2DetError(f"no usable CUDA GPU on this machine ({why}); TensorRT needs one")
    index = check(rt.cudaGetDevice(), "cudaGetDevice")
    prop = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(int(index), name, int(prop.major), int(prop.minor))


class DeviceResource(abc.ABC):
    """Something ``free()`` releases; as a context manager it is freed on exit (idempotent)."""

    @abc.abstractmethod
    def free(self) -> None: ...

    def __enter__(self: R) -> R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


R = TypeVar("R", bound=DeviceResource)


class Stream(DeviceResource):
    """A non-blocking CUDA stream; ``handle`` is the integer ``execute_async_v3`` takes."""

    def __init__(self) -> None:
        rt = cudart()
        self._stream: Any = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking),
                                  "cudaStreamCreateWithFlags")  # fmt: skip

    @property
    def raw(self) -> Any:
        return self._stream

    @property
    def handle(self) -> int:
        return int(self._stream)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def free(self) -> None:
        if self._stream is not None:
            check(cudart().cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


class DeviceBuffer(DeviceResource):
    """``nbytes`` of device memory (cudaMalloc); ``ptr`` is its address."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr: int = int(check(cudart().cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class HostBuffer(DeviceResource):
    """Page-locked host memory (cudaMallocHost) viewed as a numpy array of ``shape``/``dtype``,
    so device->host copies can be asynchronous."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any] | type) -> None:
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr: int = int(check(cudart().cudaMallocHost(max(self.nbytes, 1)), "cudaMallocHost"))
        ctype = np.ctypeslib.as_ctypes_type(np.uint8)
        raw = np.ctypeslib.as_array((ctype * max(self.nbytes, 1)).from_address(self.ptr))
        self.array: np.ndarray = raw[: self.nbytes].view(self.dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.array = np.empty(0, self.dtype)
            check(cudart().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


def copy_htod_async(dst: int, src: np.ndarray, stream: Stream) -> None:
    """Host array (C-contiguous) -> device address, queued on ``stream``."""
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                             rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.raw),
          "cudaMemcpyAsync(HtoD)")  # fmt: skip


def copy_dtod_async(dst: int, src: int, nbytes: int, stream: Stream) -> None:
    """Device -> device copy of ``nbytes``, queued on ``stream``."""
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                             stream.raw), "cudaMemcpyAsync(DtoD)")  # fmt: skip


def copy_dtoh_async(dst: HostBuffer, src: int, nbytes: int, stream: Stream) -> None:
    """The first ``nbytes`` of a device address -> pinned host buffer, queued on ``stream``."""
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst.ptr, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                             stream.raw), "cudaMemcpyAsync(DtoH)")  # fmt: skip


class Graph(DeviceResource):
    """A CUDA graph captured from the work one callable enqueues on ``stream``; ``launch()``
    replays it (same addresses, same shapes)."""

    def __init__(self, stream: Stream, enqueue: Any) -> None:
        rt = cudart()
        check(rt.cudaStreamBeginCapture(stream.raw,
                                        rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture")  # fmt: skip
        try:
            enqueue()
        finally:
            graph = check(rt.cudaStreamEndCapture(stream.raw), "cudaStreamEndCapture")
        self._graph: Any = graph
        self._exec: Any = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        self._stream = stream

    def launch(self) -> None:
        check(cudart().cudaGraphLaunch(self._exec, self._stream.raw), "cudaGraphLaunch")

    def free(self) -> None:
        rt = cudart()
        if self._exec is not None:
            check(rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            self._exec = None
        if self._graph is not None:
            check(rt.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
            self._graph = None
