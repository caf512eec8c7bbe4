"""TensorRT engine builder: an exported M2Det ONNX file (raw or NMS graph; fp32, fp16 or int8 Q/DQ)
-> a plain serialized plan plus its JSON sidecar (``m2det.engines.plan_sidecar``).

Precision is decided in the ONNX file (docs/design.md §3), so the network is built strongly typed:
TensorRT 10 needs ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, TensorRT 11 is always strongly
typed and has no FP16/INT8 builder flags (none are ever set here). One optimization profile covers
the batch range; a timing cache is loaded and saved around every build; the soft-NMS plugin library
is registered with the plugin registry and, for version-compatible plans, serialized into the plan.
TensorRT is imported lazily: without it (or without a GPU) every entry point raises one-line
``M2DetError``s.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m2det import contract
from m2det.cli import stderr_is_terminal
from m2det.engines.batch_profile import BatchProfile
from m2det.engines.onnx_info import OnnxInfo, inspect_onnx
from m2det.engines.plan_sidecar import write_sidecar
from m2det.engines.plugin_library import (
    PLUGIN_LIBRARY,
    register_plugin_library,
    resolve_plugin_library,
)
from m2det.engines.trt_version import require_tensorrt, version_tuple
from m2det.errors import M2DetError
from m2det.io import atomic_write, atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt

    from m2det.engines.cuda_memory import GpuInfo


def default_timing_cache(trt_version: str, gpu: GpuInfo) -> Path:
    """``$XDG_CACHE_HOME/m2det/timing-trt<version>-sm<cc>.cache`` (shared by every build on this
    TensorRT version and GPU architecture)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "m2det" / f"timing-trt{trt_version}-sm{gpu.major}{gpu.minor}.cache"


def _progress_monitor(enabled: bool) -> tensorrt.IProgressMonitor:
    """An ``IProgressMonitor`` that shows TensorRT's build phases as nested tqdm bars."""
    import tensorrt as trt
    from tqdm import tqdm

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


def _parse_error(parser: tensorrt.OnnxParser, path: Path) -> M2DetError:
    """One line naming the parser's first error (node, op, description) and how many followed."""
    n = parser.num_errors
    if n == 0:
        return M2DetError(f"TensorRT cannot parse {path} (no parser error reported)")
    err = parser.get_error(0)
    # node_name()/node_operator() are newer than node(): older TensorRT 10 releases lack them
    name = getattr(err, "node_name", lambda: "")() or str(err.node())
    where = f"node {name} ({getattr(err, 'node_operator', lambda: '')() or '?'})"
    more = f"; {n - 1} more error(s)" if n > 1 else ""
    desc = " ".join(str(err.desc()).split())
    return M2DetError(f"TensorRT cannot parse {path.name}: {where}: {desc}{more}")


def default_plan_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".plan")


def build_engine(onnx_path: str | Path, out: str | Path | None = None, *,
                 batch: BatchProfile | str | int | tuple[int, ...] = (1, 1, 1),
                 workspace_gib: float = 4.0, timing_cache: str | Path | None = None,
                 plugin_lib: str | Path | None = None, version_compatible: bool = False,
                 tf32: bool = False, progress: bool = True, verbose: bool = False) -> Path:
    """Build a TensorRT plan from an exported ONNX file; return the plan's path.

    ``batch``: optimization profile MIN:OPT:MAX for the input ``images`` [B,3,S,S];
    ``workspace_gib``: builder workspace limit; ``timing_cache``: file loaded before and saved
    after the build (default: per TensorRT version and GPU arch under ~/.cache/m2det);
    ``plugin_lib``: the soft-NMS plugin library (needed for NMS graphs; default
    ``$M2DET_PLUGIN_LIB``); ``version_compatible``: build a version-compatible plan
    (``BuilderFlag.VERSION_COMPATIBLE``) with the plugin library serialized into it; ``tf32``:
    let FP32 convolutions/matmuls use TF32 (TensorRT's default; off here so an FP32 plan computes
    in FP32 like the ONNX file it came from).
    """
    info = inspect_onnx(onnx_path)
    profile = BatchProfile.parse(batch)
    if info.batch_dim is not None and (profile.min, profile.max) != (info.batch_dim,) * 2:
        raise M2DetError(f"{info.path} has a fixed batch of {info.batch_dim}; use --batch "
                         f"{info.batch_dim} or export with a dynamic batch")  # fmt: skip
    if workspace_gib <= 0:
        raise M2DetError(f"workspace must be > 0 GiB, got {workspace_gib}")
    trt_version = require_tensorrt()
    from m2det.engines.cuda_memory import gpu_info

    gpu = gpu_info()
    lib = resolve_plugin_library(plugin_lib)
    if info.plugin and lib is None:
        raise M2DetError(f"{info.path.name} has the soft-NMS plugin node: pass --plugin-lib "
                         f"{PLUGIN_LIBRARY} (or set M2DET_PLUGIN_LIB; build it from plugins/)")
    out_path = Path(out) if out is not None else default_plan_path(info.path)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(trt_version, gpu)

    start = time.perf_counter()
    plan = _build_serialized(info, profile, workspace_gib, cache_path, lib, version_compatible,
                             tf32, progress, verbose)  # fmt: skip
    seconds = time.perf_counter() - start
    atomic_write(out_path, lambda f: f.write(plan))
    write_sidecar(out_path, {
        "plan": out_path.name,
        "tensorrt_version": trt_version,
        "version_compatible": version_compatible,
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
        "precision": info.precision,
        "graph": info.graph,
        "input_name": contract.INPUT,
        "input_size": info.input_size,
        "batch": asdict(profile),
        "outputs": list(info.outputs),
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


def _build_serialized(info: OnnxInfo, profile: BatchProfile, workspace_gib: float,
                      cache_path: Path, lib: Path | None, version_compatible: bool,
                      tf32: bool, progress: bool, verbose: bool) -> bytes:
    """Parse, configure and build; return the serialized plan and save the timing cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if lib is not None:
        register_plugin_library(builder.get_plugin_registry(), lib)
    network = builder.create_network(network_flags(trt.__version__))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(info.path)):
        raise _parse_error(parser, info.path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    s = info.input_size
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(contract.INPUT, *(trt.Dims([b, 3, s, s])
                                        for b in (profile.min, profile.opt, profile.max)))
    config.add_optimization_profile(opt_profile)
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if lib is not None:
            config.plugins_to_serialize = [str(lib)]
    monitor = _progress_monitor(progress)  # a Python reference for the whole build
    config.progress_monitor = monitor
    _load_timing_cache(config, cache_path, logger)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise M2DetError(f"TensorRT failed to build {info.path.name} (see the log above; "
                         "--verbose shows the builder's full log)")  # fmt: skip
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def network_flags(trt_version: str) -> int:
    """Network creation flags: STRONGLY_TYPED on TensorRT 10 (TensorRT 11 is always strongly
    typed and deprecates the flag)."""
    import tensorrt as trt

    if version_tuple(trt_version)[:1] >= (11,):
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _load_timing_cache(config: tensorrt.IBuilderConfig, path: Path,
                       logger: tensorrt.ILogger) -> None:
    """Attach the timing cache stored at ``path`` (a fresh one when missing or not usable here)."""
    import tensorrt as trt

    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        logger.log(trt.Logger.WARNING, f"timing cache {path} does not match this GPU; new cache")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
