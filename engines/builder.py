"""TensorRT / TensorRT-RTX engine builder: an exported M2Det ONNX file (raw or NMS graph; fp32, fp16
or int8 Q/DQ) -> a plain serialized plan plus its JSON sidecar (``m2det.engines.plan_sidecar``).

One code path for both libraries (``m2det.engines.trt_target`` holds what differs). Precision is
decided in the ONNX file (docs/design.md §3), so the network is built strongly typed: TensorRT 10
needs ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, TensorRT 11 and TensorRT-RTX are always
strongly typed and have no FP16/INT8 builder flags (none are ever set here). One optimization
profile covers the batch range. TensorRT builds for the GPU of this machine around a timing cache;
TensorRT-RTX builds ahead of time, without a GPU, for a list of compute capabilities. The soft-NMS
plugin library is registered with the plugin registry and, for version-compatible TensorRT plans,
serialized into the plan. TensorRT's log is collected: warnings go to stderr, errors into the
one-line ``M2DetError`` a failed parse or build raises. The libraries are imported lazily.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m2det import contract
from m2det.cli import stderr_is_terminal
from m2det.engines.batch_profile import BatchProfile
from m2det.engines.onnx_info import inspect_onnx
from m2det.engines.plan_sidecar import write_sidecar
from m2det.engines.plugin_library import (
    PLUGIN_LIBRARY,
    expose_tensorrt_rtx,
    register_plugin_library,
    resolve_plugin_library,
)
from m2det.engines.trt_target import (
    DEFAULT_RTX_COMPUTE_CAPABILITIES,
    TrtTarget,
    parse_compute_capabilities,
    resolve_target,
    set_compute_capabilities,
)
from m2det.errors import M2DetError
from m2det.io import atomic_write, atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt

    from m2det.engines.cuda_memory import GpuInfo

#: Profile shapes of one network input: (min, opt, max) dims.
ProfileShapes = dict[str, tuple[list[int], list[int], list[int]]]


def default_timing_cache(trt_version: str, gpu: GpuInfo) -> Path:
    """``$XDG_CACHE_HOME/m2det/timing-trt<version>-sm<cc>.cache`` (shared by every build on this
    TensorRT version and GPU architecture)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "m2det" / f"timing-trt{trt_version}-sm{gpu.major}{gpu.minor}.cache"


def default_plan_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".plan")


@dataclass(frozen=True)
class BuiltPlan:
    """A serialized plan and its parsed network's inputs then outputs (``name``, ``mode``,
    ``dtype`` as a numpy name, ``shape`` with -1 for dynamic dimensions)."""

    data: bytes
    io: list[dict[str, Any]]


def build_engine(onnx_path: str | Path, out: str | Path | None = None, *,
                 batch: BatchProfile | str | int | tuple[int, ...] = (1, 1, 1),
                 workspace_gib: float = 4.0, timing_cache: str | Path | None = None,
                 plugin_lib: str | Path | None = None, version_compatible: bool = False,
                 tf32: bool = False, progress: bool = True, verbose: bool = False,
                 target: str | None = None,
                 compute_capabilities: str | Sequence[str] | None = None) -> Path:
    """Build a plan from an exported ONNX file; return the plan's path.

    ``batch``: optimization profile MIN:OPT:MAX for the input ``images`` [B,3,S,S];
    ``workspace_gib``: builder workspace limit; ``timing_cache``: TensorRT only, file loaded before
    and saved after the build (default: per TensorRT version and GPU arch under ~/.cache/m2det);
    ``plugin_lib``: the soft-NMS plugin library (needed for NMS graphs; default
    ``$M2DET_PLUGIN_LIB``); ``version_compatible``: TensorRT only, a version-compatible plan
    (``BuilderFlag.VERSION_COMPATIBLE``) with the plugin library serialized into it; ``tf32``: let
    FP32 convolutions/matmuls use TF32 (off here so an FP32 plan computes in FP32 like its ONNX
    file); ``target``: "tensorrt" or "tensorrt-rtx" (default: the first installed);
    ``compute_capabilities``: TensorRT-RTX only, e.g. "86,89,120" (the default).
    """
    info = inspect_onnx(onnx_path)
    profile = BatchProfile.parse(batch)
    if info.batch_dim is not None and (profile.min, profile.max) != (info.batch_dim,) * 2:
        raise M2DetError(f"{info.path} has a fixed batch of {info.batch_dim}; use --batch "
                         f"{info.batch_dim} or export with a dynamic batch")  # fmt: skip
    if workspace_gib <= 0:
        raise M2DetError(f"workspace must be > 0 GiB, got {workspace_gib}")
    tgt = resolve_target(target)
    ccs = _target_options(tgt, compute_capabilities, timing_cache, version_compatible)
    gpu = None
    if not tgt.rtx:
        from m2det.engines.cuda_memory import gpu_info

        gpu = gpu_info()
        ccs = (gpu.compute_capability,)
    lib = resolve_plugin_library(plugin_lib)
    if info.plugin and lib is None:
        raise M2DetError(f"{info.path.name} has the soft-NMS plugin node: pass --plugin-lib "
                         f"{PLUGIN_LIBRARY} (or set M2DET_PLUGIN_LIB; build it from plugins/)")
    out_path = Path(out) if out is not None else default_plan_path(info.path)
    cache_path = None
    if gpu is not None:
        cache_path = Path(timing_cache) if timing_cache else default_timing_cache(tgt.version, gpu)

    s = info.input_size
    shapes: ProfileShapes = {contract.INPUT: ([profile.min, 3, s, s], [profile.opt, 3, s, s],
                                              [profile.max, 3, s, s])}  # fmt: skip
    start = time.perf_counter()
    built = build_plan(tgt, info.path, shapes, plugin_lib=lib if info.plugin else None,
                       workspace_gib=workspace_gib, timing_cache=cache_path,
                       version_compatible=version_compatible, tf32=tf32,
                       compute_capabilities=ccs if tgt.rtx else None, graph=info.graph,
                       progress=progress, verbose=verbose)  # fmt: skip
    seconds = time.perf_counter() - start
    atomic_write(out_path, lambda f: f.write(built.data))
    write_sidecar(out_path, {
        "plan": out_path.name,
        "library": tgt.name,
        "library_version": tgt.version,
        "tensorrt_version": None if tgt.rtx else tgt.version,
        "compute_capabilities": list(ccs),
        "version_compatible": version_compatible,
        "gpu": None if gpu is None else {"name": gpu.name,
                                         "compute_capability": gpu.compute_capability},
        "precision": info.precision,
        "graph": info.graph,
        "input_name": contract.INPUT,
        "input_size": info.input_size,
        "batch": asdict(profile),
        "outputs": list(info.outputs),
        "io": built.io,
        "config": info.config,
        "nms": info.nms,
        "plugin": ({"op": contract.PLUGIN_NAME, "version": contract.PLUGIN_VERSION,
                    "namespace": contract.PLUGIN_NAMESPACE, "library": str(lib),
                    "serialized_in_plan": version_compatible} if info.plugin else None),
        "tf32": tf32,
        "workspace_gib": workspace_gib,
        "build_seconds": round(seconds, 2),
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source_onnx": {"path": str(info.path), "sha256": info.sha256},
    })  # fmt: skip
    return out_path


def _target_options(target: TrtTarget, compute_capabilities: str | Sequence[str] | None,
                    timing_cache: str | Path | None, version_compatible: bool) -> tuple[str, ...]:
    """Refuse the options the target does not have (one line each); the compute capabilities
    a TensorRT-RTX plan targets."""
    if not target.rtx:
        if compute_capabilities is not None:
            raise M2DetError("--compute-capability is for --target tensorrt-rtx; TensorRT builds "
                             "for the GPU it runs on")  # fmt: skip
        return ()
    if version_compatible:
        raise M2DetError("TensorRT-RTX builds no version-compatible plans (its builder looks for "
                         "TensorRT's lean runtime); drop --version-compatible")  # fmt: skip
    if timing_cache:
        raise M2DetError("TensorRT-RTX has no timing cache (a deprecated no-op that needs a GPU); "
                         "drop --timing-cache")  # fmt: skip
    if compute_capabilities is not None:
        return parse_compute_capabilities(compute_capabilities)
    return DEFAULT_RTX_COMPUTE_CAPABILITIES


def build_plan(target: TrtTarget, onnx_path: Path, shapes: ProfileShapes, *,
               plugin_lib: Path | None = None, workspace_gib: float = 4.0,
               timing_cache: Path | None = None, version_compatible: bool = False,
               tf32: bool = False, compute_capabilities: tuple[str, ...] | None = None,
               graph: str = contract.GRAPH_RAW, progress: bool = False,
               verbose: bool = False) -> BuiltPlan:
    """Parse ``onnx_path``, configure and build with ``target``; one optimization profile of
    ``shapes``; the plugin library registered when given (and made importable by TensorRT-RTX's
    parser); the timing cache loaded and saved when given (TensorRT); ``compute_capabilities``
    set when given (TensorRT-RTX). ``graph`` (a contract graph kind) words the errors."""
    if TYPE_CHECKING:
        import tensorrt as trt  # the tensorrt_rtx API has the same names for all used here
    else:
        trt = target.module

    logger = collecting_logger(target, verbose)
    builder = trt.Builder(logger)
    if plugin_lib is not None:
        register_plugin_library(builder.get_plugin_registry(), plugin_lib)
        if target.rtx:
            expose_tensorrt_rtx(plugin_lib)
    network = builder.create_network(target.network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise _parse_error(target, parser, onnx_path, logger.errors)
    io = _network_io(trt, network)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        opt_profile.set_shape(name, trt.Dims(lo), trt.Dims(opt), trt.Dims(hi))
    config.add_optimization_profile(opt_profile)
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if plugin_lib is not None:
            config.plugins_to_serialize = [str(plugin_lib)]
    if compute_capabilities:
        set_compute_capabilities(config, compute_capabilities)  # type: ignore[arg-type]
    monitor = _progress_monitor(trt, progress)  # a Python reference for the whole build
    config.progress_monitor = monitor
    if timing_cache is not None:
        _load_timing_cache(trt, config, timing_cache, logger)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise _build_error(target, onnx_path, graph, logger.errors)
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    for e in [] if verbose else _relevant(logger.errors):  # logged, yet the build succeeded
        print(f"[{target.display}] error: {e}", file=sys.stderr)
    return BuiltPlan(bytes(serialized), io)


def _network_io(module: Any, network: tensorrt.INetworkDefinition) -> list[dict[str, Any]]:
    """The parsed network's inputs then outputs: name, mode, dtype (numpy name), shape."""
    import numpy as np

    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = module

    def entry(t: tensorrt.ITensor, mode: str) -> dict[str, Any]:
        try:
            dtype = np.dtype(trt.nptype(t.dtype)).name
        except TypeError:  # no numpy equivalent (bfloat16, fp8, ...)
            dtype = str(t.dtype).rsplit(".", 1)[-1].lower()
        shape = [int(t.shape[i]) for i in range(len(t.shape))]
        return {"name": t.name, "mode": mode, "dtype": dtype, "shape": shape}

    return ([entry(network.get_input(i), "input") for i in range(network.num_inputs)]
            + [entry(network.get_output(i), "output") for i in range(network.num_outputs)])


#: One collecting logger per library and process: TensorRT keeps the logger of the first builder
#: (or runtime) while any exists and ignores later ones, so every build reuses this one.
_LOGGERS: dict[str, Any] = {}


def collecting_logger(target: TrtTarget, verbose: bool = False) -> Any:
    """The process's ``ILogger`` for ``target``, reset for one build: it keeps errors (for the
    one-line message) and prints warnings (and, with ``verbose``, everything) to stderr."""
    logger = _LOGGERS.get(target.name)
    if logger is None:
        if TYPE_CHECKING:
            import tensorrt as trt
        else:
            trt = target.module
        severity = trt.ILogger.Severity
        errors = (severity.INTERNAL_ERROR, severity.ERROR)

        class CollectingLogger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.verbose = False

            def log(self, level: tensorrt.ILogger.Severity, msg: str) -> None:
                if level in errors:
                    self.errors.append(" ".join(msg.split()))
                if self.verbose or level == severity.WARNING:
                    print(f"[{target.display}] {msg}", file=sys.stderr)

        logger = _LOGGERS[target.name] = CollectingLogger()
    logger.errors, logger.verbose = [], verbose
    return logger


def _relevant(errors: list[str]) -> list[str]:
    """Errors minus the CUDA query failure TensorRT-RTX adds to every API error on a machine
    without a GPU; the plugin's own reasons first."""
    kept = [e for e in errors if "catchCudaError" not in e]
    ours = [e for e in kept if e.startswith(contract.PLUGIN_NAME + ":")]
    return ours + [e for e in kept if e not in ours]


def _parse_error(target: TrtTarget, parser: tensorrt.OnnxParser, path: Path,
                 errors: list[str]) -> M2DetError:
    """One line naming the parser's first error (node, op, description, the plugin's reason) and
    how many followed."""
    n = parser.num_errors
    if n == 0:
        return M2DetError(f"{target.display} cannot parse {path} (no parser error reported)")
    err = parser.get_error(0)
    # node_name()/node_operator() are newer than node(): older TensorRT 10 releases lack them
    name = getattr(err, "node_name", lambda: "")() or str(err.node())
    where = f"node {name} ({getattr(err, 'node_operator', lambda: '')() or '?'})"
    more = f"; {n - 1} more error(s)" if n > 1 else ""
    desc = " ".join(str(err.desc()).split())
    reason = next((f" ({e})" for e in _relevant(errors) if e.startswith(contract.PLUGIN_NAME)), "")
    return M2DetError(f"{target.display} cannot parse {path.name}: {where}: {desc}{reason}{more}")


def _build_error(target: TrtTarget, path: Path, graph: str, errors: list[str]) -> M2DetError:
    """One line: the builder's first error; for ONNX NonMaxSuppression under TensorRT-RTX, the
    limitation and the graph that builds instead."""
    relevant = _relevant(errors)
    no_nms = next((m for e in relevant if (m := re.search(r"(\S*NonMaxSuppression\S*) has no "
                                                          r"runners", e))), None)  # fmt: skip
    if target.rtx and graph == contract.GRAPH_NMS_ONNX and no_nms:
        return M2DetError(f"{path.name}: TensorRT-RTX {target.version} cannot build ONNX "
                          f"NonMaxSuppression ({no_nms.group(1)} has no implementation); export "
                          "the plugin's hard NMS instead: m2det-export --nms-graph hard")
    first = relevant[0] if relevant else "no error reported; --verbose shows the builder's log"
    return M2DetError(f"{target.display} failed to build {path.name}: {first}")


def _progress_monitor(module: Any, enabled: bool) -> tensorrt.IProgressMonitor:
    """An ``IProgressMonitor`` that shows the build phases as nested tqdm bars."""
    from tqdm import tqdm

    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = module

    class TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, tqdm[Any]] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, leave=False,
                                          position=len(self._bars),
                                          disable=not enabled or not stderr_is_terminal(),
                                          file=sys.stderr, dynamic_ncols=True)  # fmt: skip

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return TqdmProgressMonitor()


def _load_timing_cache(module: Any, config: tensorrt.IBuilderConfig, path: Path,
                       logger: tensorrt.ILogger) -> None:
    """Attach the timing cache stored at ``path`` (a fresh one when missing or not usable here)."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = module
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        logger.log(trt.ILogger.Severity.WARNING,
                   f"timing cache {path} does not match this GPU; new cache")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
