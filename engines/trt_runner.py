"""The TensorRT runner: a plan built by ``m2det-build`` (raw or NMS graph) behind the runner
protocol.

I/O lives in device memory allocated once for the profile's largest batch (cuda-python, checked
calls); each call sets the input shape, enqueues ``execute_async_v3`` on the runner's own stream
and copies the outputs to pinned host memory. Raw-graph plans are post-processed on the CPU by
``m2det.nms.batched_nms`` (compiled); NMS plans already return EfficientNMS-style outputs.
CUDA torch tensors are read in place (their ``data_ptr``), never copied through the host.
Optionally the enqueue is captured once per batch size into a CUDA graph and replayed.

TensorRT is imported when a runner is constructed, so importing this module never needs it.
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from m2det import contract
from m2det.config import M2DetConfig
from m2det.detections import Detections
from m2det.engines.base import Runner, Timing, check_batch, now_ms
from m2det.engines.batch_profile import BatchProfile
from m2det.engines.cuda_memory import (
    CudaError,
    DeviceBuffer,
    Graph,
    HostBuffer,
    Stream,
    copy_dtod_async,
    copy_dtoh_async,
    copy_htod_async,
    gpu_info,
)
from m2det.engines.plan_sidecar import read_sidecar
from m2det.engines.plugin_library import register_plugin_library, resolve_plugin_library
from m2det.engines.trt_target import NAMES, TENSORRT, TENSORRT_RTX, plan_library
from m2det.engines.trt_version import check_plan_version, require_tensorrt
from m2det.errors import M2DetError
from m2det.nms import NMSParams, batched_nms

if TYPE_CHECKING:
    import tensorrt

# NMS fields that change which boxes an NMS plan keeps (the caps only shorten the list).
_NMS_SEMANTIC_FIELDS = ("method", "score_threshold", "iou_threshold", "sigma", "min_score",
                        "keep_per_class")  # fmt: skip


def plan_nms_params(meta: dict[str, Any]) -> NMSParams | None:
    """The NMS built into a plan (its sidecar's NMS attributes); None for a raw-graph plan or
    when the attributes were not recorded."""
    attrs = meta.get("nms")
    if meta.get("graph") == contract.GRAPH_RAW or not attrs:
        return None
    names = {f.name for f in fields(NMSParams)}
    return NMSParams(**{k: v for k, v in attrs.items() if k in names})


class TensorRTRunner(Runner):
    """Run a TensorRT plan and its ``<plan>.json`` sidecar.

    ``nms``: post-processing for raw-graph plans (an NMS plan runs the NMS it was built with; a
    different ``nms`` only draws a warning). ``plugin_lib``: the soft-NMS plugin library for NMS
    plans (default ``$M2DET_PLUGIN_LIB``, else the library recorded at build time; not needed when
    it was serialized into a version-compatible plan). ``cuda_graph``: capture the enqueue per
    batch size into a CUDA graph and replay it.
    """

    backend = "tensorrt"

    def __init__(self, plan: str | Path, nms: NMSParams | None = None, *,
                 plugin_lib: str | Path | None = None, cuda_graph: bool = False) -> None:
        self.plan = Path(plan)
        if not self.plan.is_file():
            raise M2DetError(f"plan not found: {self.plan}")
        meta = read_sidecar(self.plan)
        _refuse_other_runtime(self.plan, meta)
        installed = require_tensorrt()
        check_plan_version(str(meta["tensorrt_version"]), installed,
                           version_compatible=bool(meta.get("version_compatible")),
                           plan=self.plan.name)  # fmt: skip
        self.meta = meta
        built_in = plan_nms_params(meta)
        if built_in is not None and nms is not None and _differs(nms, built_in):
            warnings.warn(f"{self.plan.name} runs the NMS it was built with ({built_in}); the "
                          "requested NMS parameters are ignored", stacklevel=2)  # fmt: skip
        self.has_nms = meta.get("graph") != contract.GRAPH_RAW
        post = built_in or nms
        if post is None and not self.has_nms:
            raise M2DetError(f"{self.plan.name} is a raw-graph plan: pass NMS parameters")
        super().__init__(M2DetConfig.from_dict(meta["config"]), post or NMSParams(),
                         str(meta["precision"]))  # fmt: skip
        self.profile = BatchProfile(**meta["batch"])
        self.cuda_graph = cuda_graph
        self._plugin_lib = self._find_plugin_library(plugin_lib)
        self._state: _EngineState | None = None

    @property
    def batch_range(self) -> tuple[int, int]:
        return (self.profile.min, self.profile.max)

    def _find_plugin_library(self, plugin_lib: str | Path | None) -> Path | None:
        plugin = self.meta.get("plugin") or {}
        if not plugin or (plugin.get("serialized_in_plan") and plugin_lib is None):
            return resolve_plugin_library(plugin_lib) if plugin_lib else None
        found = resolve_plugin_library(plugin_lib)
        if found is None and plugin.get("library") and Path(plugin["library"]).is_file():
            found = Path(plugin["library"])
        if found is None:
            raise M2DetError(f"{self.plan.name} needs the soft-NMS plugin library: pass "
                             "plugin_lib (--plugin-lib) or set M2DET_PLUGIN_LIB")  # fmt: skip
        return found

    # ----- lifecycle
    def activate(self) -> None:
        """Deserialize the plan, create the context and stream, allocate I/O for the max batch."""
        if self._state is None:
            gpu_info()  # a clear one-line error on a machine without a GPU
            self._state = _EngineState(self.plan, self.meta, self._plugin_lib, self.profile.max)

    def deactivate(self) -> None:
        """Free graphs, buffers, stream, context, engine and runtime."""
        if self._state is not None:
            self._state.free()
            self._state = None

    def synchronize(self) -> None:
        if self._state is not None and self._state.stream is not None:
            self._state.stream.synchronize()

    # ----- inference
    def _execute(self, images: Any) -> dict[str, np.ndarray]:
        if self._state is None:
            self.__enter__()
        assert self._state is not None
        check_batch(images, self.input_size)
        b = int(images.shape[0])
        if not self.profile.min <= b <= self.profile.max:
            raise M2DetError(f"batch {b} is outside {self.plan.name}'s profile "
                             f"{self.profile.min}..{self.profile.max}; rebuild with "
                             f"m2det-build --batch MIN:OPT:MAX")  # fmt: skip
        return self._state.run(images, b, self.cuda_graph)

    def raw(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw-graph plans: images [B,3,S,S] -> (boxes [B,A,4], scores [B,A,C]) float32 numpy."""
        if self.has_nms:
            raise M2DetError(f"{self.plan.name} has NMS inside: it returns detections, not raw "
                             "boxes/scores")  # fmt: skip
        out = self._execute(images)
        boxes, scores = (out[name].astype(np.float32) for name in contract.RAW_OUTPUTS)
        return boxes, scores

    def infer(self, images: Any) -> Detections:
        """images [B,3,S,S] float32 BGR 0-255 (numpy, CPU or CUDA torch tensor), B within the
        plan's batch profile -> Detections (boxes normalized to the input)."""
        t0 = now_ms()
        outputs = self._execute(images)
        t1 = now_ms()
        if self.has_nms:
            self.last_timing = Timing(network=t1 - t0)
            return Detections.from_nms_outputs(outputs)
        boxes, scores = (np.asarray(outputs[name], np.float32) for name in contract.RAW_OUTPUTS)
        dets = batched_nms(boxes, scores, self.nms)
        self.last_timing = Timing(network=t1 - t0, nms=now_ms() - t1)
        return dets


def _refuse_other_runtime(plan: Path, meta: dict[str, Any]) -> None:
    """One line for a plan this runner's library cannot load: one built by TensorRT-RTX (sidecar
    ``library``, or TensorRT-RTX's first bytes when a sidecar was copied onto another plan)."""
    with open(plan, "rb") as f:
        built_by = plan_library(f.read(8)) or meta.get("library", TENSORRT)
    if built_by != TENSORRT:
        version = meta.get("library_version") if meta.get("library") == built_by else None
        raise M2DetError(f"{plan.name} was built by {NAMES.get(built_by, built_by)}"
                         f"{' ' + version if version else ''} (m2det-build --target {built_by}); "
                         f"the TensorRT runtime cannot load it: run it with {NAMES[TENSORRT_RTX]}"
                         f"'s runtime or rebuild it with m2det-build --target {TENSORRT}")


def _differs(a: NMSParams, b: NMSParams) -> bool:
    """Whether two NMS settings keep different boxes (compared as the float32 the plugin uses)."""
    return any(np.float32(getattr(a, f)) != np.float32(getattr(b, f))
               for f in _NMS_SEMANTIC_FIELDS)  # fmt: skip


class _EngineState:
    """Everything a live plan holds: runtime, engine, context, stream, I/O buffers, CUDA graphs."""

    def __init__(self, plan: Path, meta: dict[str, Any], plugin_lib: Path | None,
                 max_batch: int) -> None:
        import tensorrt as trt

        self._runtime: tensorrt.Runtime | None = None
        self._engine: tensorrt.ICudaEngine | None = None
        self._context: tensorrt.IExecutionContext | None = None
        self.stream: Stream | None = None
        self._device: dict[str, DeviceBuffer] = {}
        self._host: dict[str, HostBuffer] = {}
        self._graphs: dict[int, Graph] = {}
        self._keepalive: Any = None  # the CUDA tensor whose memory is the current input
        self._size = int(meta["input_size"])
        self._logger = trt.Logger(trt.Logger.WARNING)
        try:
            self._load(trt, plan, bool(meta.get("version_compatible")), plugin_lib, max_batch)
        except BaseException:
            self.free()
            raise

    def _load(self, trt: Any, plan: Path, version_compatible: bool, plugin_lib: Path | None,
              max_batch: int) -> None:
        if plugin_lib is not None:
            register_plugin_library(trt.get_plugin_registry(), plugin_lib)
        runtime = self._runtime = trt.Runtime(self._logger)
        if version_compatible:
            runtime.engine_host_code_allowed = True  # the lean runtime / plugins in the plan
        engine = self._engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise M2DetError(f"TensorRT cannot deserialize {plan} (see the log above)")
        context = self._context = engine.create_execution_context()
        if context is None:
            raise M2DetError(f"TensorRT cannot create an execution context for {plan}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [contract.INPUT]:
            raise M2DetError(f"{plan}: expected one input {contract.INPUT!r}, got {inputs}")
        self.outputs = [n for n in names if n != contract.INPUT]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.stream = Stream()
        self._set_batch(max_batch)  # allocate for the largest shapes
        for n in names:
            self._device[n] = DeviceBuffer(self._nbytes(n))
            self._host[n] = HostBuffer(tuple(self._shape(n)), self.dtypes[n])
            _check(context.set_tensor_address(n, self._device[n].ptr), "set_tensor_address")

    # ----- shapes
    def _shape(self, name: str) -> list[int]:
        assert self._context is not None
        dims = self._context.get_tensor_shape(name)
        return [int(dims[i]) for i in range(len(dims))]

    def _nbytes(self, name: str) -> int:
        shape = self._shape(name)
        if min(shape, default=0) < 0:
            raise M2DetError(f"tensor {name!r} has a data-dependent shape {shape}; this runner "
                             "needs shapes fixed by the input shape")  # fmt: skip
        return int(np.prod(shape, dtype=np.int64)) * self.dtypes[name].itemsize

    def _set_batch(self, b: int) -> None:
        assert self._context is not None
        _check(self._context.set_input_shape(contract.INPUT, (b, 3, self._size, self._size)),
               "set_input_shape")  # fmt: skip

    # ----- execution
    def run(self, images: Any, b: int, use_graph: bool) -> dict[str, np.ndarray]:
        """Copy ``images`` [b,3,S,S] in, execute, copy the outputs out; outputs by name."""
        assert self.stream is not None
        self._set_batch(b)
        self._stage_input(images, in_place=not use_graph)
        if use_graph:
            self._graph(b).launch()
        else:
            self._enqueue()
        for n in self.outputs:
            copy_dtoh_async(self._host[n], self._device[n].ptr, self._nbytes(n), self.stream)
        self.stream.synchronize()
        self._keepalive = None
        out: dict[str, np.ndarray] = {}
        for n in self.outputs:
            shape = self._shape(n)
            count = int(np.prod(shape, dtype=np.int64))
            out[n] = self._host[n].array.reshape(-1)[:count].reshape(shape).copy()
        return out

    def _stage_input(self, images: Any, in_place: bool) -> None:
        """Point the input at a CUDA tensor (``in_place``) or copy it into the input buffer: device
        to device for CUDA tensors, through pinned memory for host arrays."""
        assert self._context is not None and self.stream is not None
        dtype = self.dtypes[contract.INPUT]
        address = self._device[contract.INPUT].ptr
        if _is_cuda_tensor(images):
            import torch

            x = images.to(dtype=getattr(torch, dtype.name)).contiguous()
            torch.cuda.current_stream(x.device).synchronize()  # the producer's work is done
            if in_place:
                address, self._keepalive = int(x.data_ptr()), x
            else:
                copy_dtod_async(address, int(x.data_ptr()), x.numel() * x.element_size(),
                                self.stream)  # fmt: skip
        else:
            arr = images.numpy() if hasattr(images, "numpy") else images
            arr = np.ascontiguousarray(arr, dtype=dtype)
            staging = self._host[contract.INPUT].array.reshape(-1)[: arr.size]
            staging[:] = arr.reshape(-1)
            copy_htod_async(address, staging, self.stream)
        _check(self._context.set_tensor_address(contract.INPUT, address), "set_tensor_address")

    def _enqueue(self) -> None:
        assert self._context is not None and self.stream is not None
        _check(self._context.execute_async_v3(self.stream.handle), "execute_async_v3")

    def _graph(self, b: int) -> Graph:
        """The CUDA graph of one enqueue at batch ``b`` (captured after one eager run, which
        TensorRT needs before capture)."""
        assert self.stream is not None
        if b not in self._graphs:
            self._enqueue()
            self.stream.synchronize()
            try:
                self._graphs[b] = Graph(self.stream, self._enqueue)
            except CudaError as e:
                raise M2DetError(f"this plan cannot be captured in a CUDA graph ({e}); run "
                                 "without cuda_graph") from None  # fmt: skip
        return self._graphs[b]

    def free(self) -> None:
        """Release everything (safe on a partly constructed state)."""
        for g in self._graphs.values():
            g.free()
        self._graphs.clear()
        self._keepalive = None
        for dbuf in self._device.values():
            dbuf.free()
        for hbuf in self._host.values():
            hbuf.free()
        self._device.clear()
        self._host.clear()
        if self.stream is not None:
            self.stream.free()
            self.stream = None
        self._context = None  # destroy in dependency order: context, engine, runtime
        self._engine = None
        self._runtime = None


def _check(ok: bool, call: str) -> None:
    if not ok:
        raise CudaError(f"TensorRT {call} failed (see the log above)")


def _is_cuda_tensor(images: Any) -> bool:
    return bool(getattr(images, "is_cuda", False))
