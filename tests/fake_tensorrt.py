"""Stand-ins for TensorRT and cuda-python that record what the builder and the TensorRT runner
ask of them, so their logic (flags, profile, timing cache, plugin registration, files written,
device buffers, CUDA-graph replay) runs on a machine without TensorRT or a GPU.

``fake_trt(version)`` installs a builder-side ``tensorrt`` module; ``fake_gpu`` adds a runtime
whose engine computes ``fake_network`` (raw plan, bytes b"PLAN-BYTES") or ``fake_nms_network``
(NMS plan, b"NMS-PLAN") on host memory behind fake cuda-python calls.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest

from m2det.config import get_config
from m2det.contract import PLUGIN_NAME
from m2det.nms import NMSParams

S = get_config("m2det_tiny").input_size

def fake_tensorrt(version: str) -> types.ModuleType:
    """A recording stand-in for the few TensorRT calls ``build_engine`` makes, so the builder's
    logic (flags, profile, cache, plugin, files written) runs on a machine without TensorRT."""
    trt = types.ModuleType("tensorrt")
    calls: dict[str, Any] = {"flags": set(), "cleared": set(), "loaded": []}
    ns = types.SimpleNamespace

    class Registry:
        def get_creator(self, name: str, version: str, namespace: str) -> object | None:
            ours = (name, version) == (PLUGIN_NAME, "1")
            return object() if calls["loaded"] and ours else None

        @property
        def all_creators(self) -> list[Any]:
            creator = ns(name=PLUGIN_NAME, plugin_version="1", plugin_namespace="")
            return [creator] if calls["loaded"] else []

        def load_library(self, path: str) -> object:
            calls["loaded"].append(path)
            return object()

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return b"CACHE" + self.data

    class Config:
        plugins_to_serialize: list[str] = []
        progress_monitor: Any = None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls["workspace"] = (pool, size)

        def add_optimization_profile(self, profile: Any) -> int:
            return 0

        def set_flag(self, flag: str) -> None:
            calls["flags"].add(flag)

        def clear_flag(self, flag: str) -> None:
            calls["cleared"].add(flag)

        def create_timing_cache(self, data: bytes) -> Cache:
            return Cache(bytes(data))

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> Cache:
            return self.cache

    class Profile:
        def set_shape(self, name: str, *shapes: list[int]) -> None:
            calls["profile"] = (name, shapes)

    class Builder:
        def __init__(self, logger: Any) -> None:
            pass

        def get_plugin_registry(self) -> Registry:
            return Registry()

        def create_network(self, flags: int) -> Network:
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self) -> Config:
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: object, config: Config) -> bytes:
            monitor = config.progress_monitor
            monitor.phase_start("Building", None, 2)
            assert monitor.step_complete("Building", 0) and monitor.step_complete("Building", 1)
            monitor.phase_finish("Building")
            return b"PLAN-BYTES"

    class Network:
        """The parsed network: the ONNX file's inputs and outputs (dynamic dims -1)."""

        def __init__(self) -> None:
            self.inputs: list[Any] = []
            self.outputs: list[Any] = []
            self.num_inputs = self.num_outputs = 0

        def get_input(self, i: int) -> Any:
            return self.inputs[i]

        def get_output(self, i: int) -> Any:
            return self.outputs[i]

    def tensor(v: Any) -> Any:
        from onnx import helper

        dims = [d.dim_value or -1 for d in v.type.tensor_type.shape.dim]
        elem = v.type.tensor_type.elem_type or 1
        return ns(name=v.name, dtype=helper.tensor_dtype_to_np_dtype(elem), shape=dims)

    class Parser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.num_errors, self.network, self.logger = 0, network, logger

        def parse_from_file(self, path: str) -> bool:
            import onnx

            self.num_errors = 2 if "broken" in path else 0
            if self.num_errors:
                self.logger.log(Severity.ERROR, f"{PLUGIN_NAME}: sigma must be > 0")
                return False
            graph = onnx.load(path).graph
            net = self.network
            net.inputs = [tensor(v) for v in graph.input]
            net.outputs = [tensor(v) for v in graph.output]
            net.num_inputs, net.num_outputs = len(net.inputs), len(net.outputs)
            return True

        def get_error(self, i: int) -> Any:
            return ns(desc=lambda: "Unsupported\n op", node_name=lambda: "/nms/X", node=lambda: 7,
                      node_operator=lambda: PLUGIN_NAME)  # fmt: skip

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    Severity = ns(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)  # noqa: N806

    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity  # type: ignore[attr-defined]

    trt.__dict__.update(
        __version__=version, Builder=Builder, OnnxParser=Parser, IProgressMonitor=IProgressMonitor,
        ILogger=ILogger, Logger=type("Logger", (), {"WARNING": 2, "VERBOSE": 4,
                                                    "__init__": lambda self, s: None,
                                                    "log": lambda self, s, m: None}),
        BuilderFlag=ns(TF32="TF32", VERSION_COMPATIBLE="VERSION_COMPATIBLE"),
        NetworkDefinitionCreationFlag=ns(STRONGLY_TYPED=1), MemoryPoolType=ns(WORKSPACE="WS"),
        Dims=list, nptype=lambda dt: dt, calls=calls,
    )  # fmt: skip
    return trt


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    from m2det.engines import cuda_memory

    def install(version: str) -> types.ModuleType:
        trt = fake_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    monkeypatch.setattr(cuda_memory, "gpu_info", lambda: cuda_memory.GpuInfo(0, "Fake GPU", 9, 0))
    return install


A, C = 3, 2  # anchors and classes of the stand-in network
FAKE_BOXES = np.array([[0.1, 0.1, 0.4, 0.4], [0.12, 0.1, 0.42, 0.4], [0.6, 0.6, 0.9, 0.8]],
                      np.float32)  # fmt: skip


def fake_network(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the stand-in engine computes: fixed boxes, scores from each image's mean."""
    m = images.reshape(len(images), -1).mean(axis=1) / 255.0
    scores = np.stack([np.stack([m, 1 - m], 1) * w for w in (1.0, 0.9, 0.5)], 1)
    return np.broadcast_to(FAKE_BOXES, (len(images), A, 4)).copy(), scores.astype(np.float32)


def fake_cuda() -> types.SimpleNamespace:
    """cuda-python's runtime calls the runner makes, on host memory (pointers are host addresses;
    a captured stream records the engine's work and a graph launch replays it)."""
    import ctypes

    ns = types.SimpleNamespace
    memory: dict[int, np.ndarray] = {}
    state: dict[str, Any] = {"capture": None, "launches": 0}

    def alloc(n: int) -> tuple[int, int]:
        buf = np.zeros(n, np.uint8)
        memory[buf.ctypes.data] = buf
        return (0, buf.ctypes.data)

    def memcpy(dst: int, src: int, n: int, kind: str, stream: int) -> tuple[int]:
        ctypes.memmove(dst, src, n)
        return (0,)

    def end_capture(stream: int) -> tuple[int, list[Any]]:
        graph, state["capture"] = state["capture"], None
        return (0, graph)

    def launch(graph: list[Any], stream: int) -> tuple[int]:
        state["launches"] += 1
        for work in graph:
            work()
        return (0,)

    ok = (0,)
    return ns(
        cudaError_t=ns(cudaSuccess=0), cudaGetErrorString=lambda e: (0, b"fake"),
        cudaGetDeviceCount=lambda: (0, 1), cudaGetDevice=lambda: (0, 0),
        cudaGetDeviceProperties=lambda i: (0, ns(name=b"Fake GPU\0", major=9, minor=0)),
        cudaMalloc=alloc, cudaMallocHost=alloc,
        cudaFree=lambda p: (memory.pop(p), ok)[1], cudaFreeHost=lambda p: (memory.pop(p), ok)[1],
        cudaStreamNonBlocking=1, cudaStreamCreateWithFlags=lambda f: (0, 77),
        cudaStreamSynchronize=lambda s: ok, cudaStreamDestroy=lambda s: ok,
        cudaMemcpyKind=ns(cudaMemcpyHostToDevice="HtoD", cudaMemcpyDeviceToHost="DtoH",
                          cudaMemcpyDeviceToDevice="DtoD"),
        cudaMemcpyAsync=memcpy,
        cudaStreamCaptureMode=ns(cudaStreamCaptureModeThreadLocal=1),
        cudaStreamBeginCapture=lambda s, m: (state.update(capture=[]), ok)[1],
        cudaStreamEndCapture=end_capture, cudaGraphInstantiate=lambda g, f: (0, g),
        cudaGraphLaunch=launch, cudaGraphExecDestroy=lambda g: ok, cudaGraphDestroy=lambda g: ok,
        memory=memory, state=state,
    )  # fmt: skip


FAKE_NMS = NMSParams(method=0, score_threshold=0.05, iou_threshold=0.5, max_detections=4)


def fake_nms_network(images: np.ndarray) -> dict[str, np.ndarray]:
    """The stand-in NMS engine: ``fake_network`` + the reference NMS, EfficientNMS layout."""
    from m2det.nms import batched_nms

    d = batched_nms(*fake_network(images), FAKE_NMS)
    return {"num_detections": d.num.reshape(-1, 1), "detection_boxes": d.boxes,
            "detection_scores": d.scores, "detection_classes": d.classes}  # fmt: skip


def fake_engine(trt: types.ModuleType, cuda: types.SimpleNamespace, max_batch: int) -> None:
    """Add a Runtime to the TensorRT stand-in whose engine runs ``fake_network`` (plan bytes
    b"PLAN-BYTES") or ``fake_nms_network`` (b"NMS-PLAN")."""
    import ctypes

    f32, i32, k = np.dtype(np.float32), np.dtype(np.int32), FAKE_NMS.max_detections
    raw = {"images": (f32, (3, S, S)), "boxes": (f32, (A, 4)), "scores": (f32, (A, C))}
    nms = {"images": (f32, (3, S, S)), "num_detections": (i32, (1,)),
           "detection_boxes": (f32, (k, 4)), "detection_scores": (f32, (k,)),
           "detection_classes": (i32, (k,))}  # fmt: skip

    def view(ptr: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        n = int(np.prod(shape))
        ctype = ctypes.c_float if dtype == f32 else ctypes.c_int32
        return np.ctypeslib.as_array((ctype * n).from_address(ptr)).reshape(shape)

    class Context:
        def __init__(self, io: dict[str, tuple[np.dtype[Any], tuple[int, ...]]]) -> None:
            self.io, self.batch, self.addr = io, 0, {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.batch = shape[0]
            return name == "images" and 1 <= shape[0] <= max_batch and shape[1:] == (3, S, S)

        def get_tensor_shape(self, name: str) -> list[int]:
            return [self.batch, *self.io[name][1]]

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream: int) -> bool:
            b, addr, io = self.batch, dict(self.addr), self.io

            def work() -> None:
                x = view(addr["images"], (b, 3, S, S), f32)
                if io is raw:
                    out = dict(zip(("boxes", "scores"), fake_network(x), strict=True))
                else:
                    out = fake_nms_network(x)
                for name, value in out.items():
                    view(addr[name], value.shape, io[name][0])[:] = value

            capture = cuda.state["capture"]
            capture.append(work) if capture is not None else work()
            return True

    class Engine:
        def __init__(self, io: dict[str, tuple[np.dtype[Any], tuple[int, ...]]]) -> None:
            self.io, self.num_io_tensors = io, len(io)

        def get_tensor_name(self, i: int) -> str:
            return list(self.io)[i]

        def get_tensor_mode(self, name: str) -> str:
            return "IN" if name == "images" else "OUT"

        def get_tensor_dtype(self, name: str) -> np.dtype[Any]:
            return self.io[name][0]

        def create_execution_context(self) -> Context:
            return Context(self.io)

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            return {b"PLAN-BYTES": Engine(raw), b"NMS-PLAN": Engine(nms)}.get(data)

    registry = trt.Builder(None).get_plugin_registry()
    trt.__dict__.update(Runtime=Runtime, TensorIOMode=types.SimpleNamespace(INPUT="IN"),
                        nptype=lambda dt: dt, get_plugin_registry=lambda: registry)  # fmt: skip


@pytest.fixture()
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install the TensorRT and CUDA stand-ins; returns (plan path maker, fake cuda)."""
    from m2det.engines import cuda_memory

    trt = fake_tensorrt("10.13.0.35")
    cuda = fake_cuda()
    fake_engine(trt, cuda, max_batch=4)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda_memory, "cudart", lambda: cuda)
    return cuda

