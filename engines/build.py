"""TensorRT engine builder: an exported M2Det ONNX file (raw or NMS graph; fp32, fp16 or int8 Q/DQ)
-> a plain serialized plan plus a JSON sidecar ``<plan>.json``.

Precision is decided in the ONNX file (design §3), so the network is built strongly typed: TensorRT
10 needs ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, TensorRT 11 is always strongly typed and
has no FP16/INT8 builder flags (none are ever set here). One optimization profile covers the batch
range; a timing cache is loaded and saved around every build; the soft-NMS plugin library is
registered with the plugin registry and, for version-compatible plans, serialized into the plan.

The plan is written without any prefix (trtexec and Triton load it); everything a runner needs to
know (TensorRT version, GPU, precision, input size, batch profile, config, NMS attributes, source
ONNX hash) goes into the sidecar. TensorRT is imported lazily: without it (or without a GPU) every
entry point raises one-line ``M2DetError``s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m2det.errors import M2DetError
from m2det.io import atomic_write, atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    import tensorrt

    from m2det.engines.cuda_memory import GpuInfo

#: The plugin op type / version the NMS graph uses (design §2).
PLUGIN_OP = "M2Det_SoftNMS_TRT"
PLUGIN_VERSION = "1"
INPUT_NAME = "images"
PRECISIONS = ("fp32", "fp16", "int8")
SIDECAR_FORMAT = "m2det-plan/1"

# ONNX metadata_props keys written by ``export`` (the ones the builder needs).
META_CONFIG = "m2det.config"  # config JSON (M2DetConfig.to_dict())
META_PRECISION = "m2det.precision"  # fp32 | fp16 | int8
META_NMS = "m2det.nms"  # NMS attributes JSON (NMS graphs)
#: Outputs of an NMS graph (TensorRT EfficientNMS convention, design §2).
NMS_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
RAW_OUTPUTS = ("boxes", "scores")


# --------------------------------------------------------------------------- batch profile
@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile's batch range: ``min <= opt <= max``."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise M2DetError(f"batch profile must satisfy 1 <= min <= opt <= max, got "
                             f"{self.min}:{self.opt}:{self.max}")  # fmt: skip

    @classmethod
    def parse(cls, spec: BatchProfile | str | int | tuple[int, ...] | list[int]) -> BatchProfile:
        """``"1:8:32"``, ``"8"`` (fixed), ``8``, ``(1, 8, 32)`` or ``(1, 32)`` (opt = max)."""
        if isinstance(spec, BatchProfile):
            return spec
        if isinstance(spec, str):
            try:
                values = [int(v) for v in spec.split(":")]
            except ValueError:
                raise M2DetError(f"bad batch profile {spec!r}; use MIN:OPT:MAX, e.g. 1:8:32"
                                 ) from None
        elif isinstance(spec, int):
            values = [spec]
        else:
            values = [int(v) for v in spec]
        if len(values) == 1:
            values *= 3
        elif len(values) == 2:
            values = [values[0], values[1], values[1]]
        if len(values) != 3:
            raise M2DetError(f"bad batch profile {spec!r}; use MIN:OPT:MAX, e.g. 1:8:32")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


# --------------------------------------------------------------------------- TensorRT import
def require_tensorrt() -> str:
    """The installed TensorRT version; M2DetError when the ``tensorrt`` package is missing (a
    stubs-only install, e.g. ``tensorrt-stubs``, counts as missing)."""
    try:
        import tensorrt as trt
    except ImportError:
        trt = None  # type: ignore[assignment]
    version = getattr(trt, "__version__", None)
    if trt is None or version is None or not hasattr(trt, "Builder"):
        raise M2DetError("TensorRT is not installed (pip install 'm2det-deploy[trt]' on a machine "
                         "with an NVIDIA GPU); build and run plans there")  # fmt: skip
    return str(version)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> (10, 13, 0, 35); non-numeric parts stop the tuple."""
    parts: list[int] = []
    for p in version.split("."):
        if not p.isdigit():
            break
        parts.append(int(p))
    return tuple(parts)


def check_plan_version(built: str, installed: str, *, version_compatible: bool = False,
                       plan: str | Path = "plan") -> None:
    """Refuse a plan built by another TensorRT version (one-line M2DetError).

    A normal plan needs the same version (major.minor.patch and build, as TensorRT's own check); a
    version-compatible one a runtime of the same major version that is not older than the builder.
    """
    b, i = version_tuple(built), version_tuple(installed)
    if len(b) < 3 or len(i) < 3:
        raise M2DetError(f"{plan}: cannot compare TensorRT versions {built!r} and {installed!r}")
    if version_compatible:
        ok = b[0] == i[0] and i[:3] >= b[:3]
        need = f"TensorRT {b[0]}.x >= {built}"
    else:
        n = min(len(b), len(i))
        ok = b[:n] == i[:n]
        need = f"TensorRT {built}"
    if not ok:
        raise M2DetError(f"{plan} was built with TensorRT {built} but TensorRT {installed} is "
                         f"installed (needs {need}); rebuild it with m2det-build")  # fmt: skip


# --------------------------------------------------------------------------- ONNX inspection
@dataclass(frozen=True)
class OnnxInfo:
    """What the builder needs to know about an exported ONNX file.

    ``batch_dim``: the input's batch dimension (None when dynamic); ``graph``: "raw" (boxes,
    scores) or "nms" (EfficientNMS-style outputs); ``nms``: the NMS attributes (plugin node, else
    metadata), None when unknown; ``plugin``: whether the graph has the soft-NMS plugin node.
    """

    path: Path
    sha256: str
    config: dict[str, Any]
    precision: str
    input_size: int
    batch_dim: int | None
    outputs: tuple[str, ...]
    graph: str
    nms: dict[str, Any] | None
    plugin: bool


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inspect_onnx(path: str | Path) -> OnnxInfo:
    """Read an exported M2Det ONNX file's metadata, input and NMS node; M2DetError (one line)
    for a missing/unreadable file or an ONNX file that ``m2det-export`` did not write."""
    import onnx
    from onnx import helper

    path = Path(path)
    if not path.is_file():
        raise M2DetError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad file
        raise M2DetError(f"{path} is not a readable ONNX file ({type(e).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if META_CONFIG not in meta:
        raise M2DetError(f"{path} is not an M2Det export (no {META_CONFIG!r} metadata); "
                         "export it with m2det-export")  # fmt: skip
    try:
        config = json.loads(meta[META_CONFIG])
        size = int(config["input_size"])
    except (ValueError, KeyError, TypeError):
        raise M2DetError(f"{path}: metadata {META_CONFIG!r} is not a config JSON") from None
    precision = meta.get(META_PRECISION, "fp32")
    if precision not in PRECISIONS:
        raise M2DetError(f"{path}: unknown precision {precision!r} in metadata")

    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if [v.name for v in inputs] != [INPUT_NAME]:
        raise M2DetError(f"{path}: expected one input {INPUT_NAME!r}, got "
                         f"{[v.name for v in inputs]}; not an M2Det export")  # fmt: skip
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != 4 or shape[1:] != [3, size, size]:
        raise M2DetError(f"{path}: input {INPUT_NAME!r} has shape {shape}, expected "
                         f"[B,3,{size},{size}]")  # fmt: skip
    outputs = tuple(o.name for o in model.graph.output)
    if set(outputs) not in (set(RAW_OUTPUTS), set(NMS_OUTPUTS)):
        raise M2DetError(f"{path}: outputs {list(outputs)} are neither {list(RAW_OUTPUTS)} nor "
                         f"{list(NMS_OUTPUTS)}; not an M2Det export")  # fmt: skip
    plugin = next((n for n in model.graph.node if n.op_type == PLUGIN_OP), None)
    nms: dict[str, Any] | None = None
    if plugin is not None:
        nms = {a.name: _plain(helper.get_attribute_value(a)) for a in plugin.attribute
               if not a.name.startswith("plugin_")}  # fmt: skip
    elif META_NMS in meta:
        nms = json.loads(meta[META_NMS])
    graph = "nms" if NMS_OUTPUTS[0] in outputs else "raw"
    return OnnxInfo(path, file_sha256(path), config, precision, size, shape[0], outputs, graph,
                    nms if graph == "nms" else None, plugin is not None)


def _plain(value: Any) -> Any:
    """ONNX attribute value -> JSON-able (bytes -> str, repeated -> list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- sidecar
def sidecar_path(plan: str | Path) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def read_sidecar(plan: str | Path) -> dict[str, Any]:
    """The plan's sidecar JSON; M2DetError when it is missing or not ours."""
    path = sidecar_path(plan)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise M2DetError(f"{plan}: metadata {path.name} not found beside the plan (plans built by "
                         "m2det-build have one; rebuild with m2det-build)") from None
    except (OSError, ValueError) as e:
        raise M2DetError(f"{path}: unreadable plan metadata ({e})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise M2DetError(f"{path}: not an m2det plan sidecar (format {SIDECAR_FORMAT!r})")
    return data


# --------------------------------------------------------------------------- plugin / cache
def default_timing_cache(trt_version: str, gpu: GpuInfo) -> Path:
    """``$XDG_CACHE_HOME/m2det/timing-trt<version>-sm<cc>.cache`` (shared by every build on this
    TensorRT version and GPU architecture)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "m2det" / f"timing-trt{trt_version}-sm{gpu.major}{gpu.minor}.cache"


PLUGIN_LIBRARY = "libm2det_plugins.so"


def resolve_plugin_library(plugin_lib: str | Path | None) -> Path | None:
    """An explicit path (must exist), else ``$M2DET_PLUGIN_LIB``, else ``libm2det_plugins.so``
    in the soft-NMS build folder (``m2det.engines.soft_nms_kernel.library_dir()``) if built, else None."""
    chosen = plugin_lib or os.environ.get("M2DET_PLUGIN_LIB")
    if not chosen:
        from m2det.engines.soft_nms_kernel import library_dir

        built = library_dir() / PLUGIN_LIBRARY
        return built.resolve() if built.is_file() else None
    path = Path(chosen)
    if not path.is_file():
        raise M2DetError(f"plugin library not found: {path}")
    return path.resolve()


def register_plugin_library(registry: tensorrt.IPluginRegistry, lib: Path) -> None:
    """Load ``lib`` into TensorRT's plugin registry (once per process: the registry refuses a
    library whose plugins are already registered) and check it provides the soft-NMS plugin."""
    if registry.get_creator(PLUGIN_OP, PLUGIN_VERSION, "") is not None:
        return
    try:
        registry.load_library(str(lib))
    except Exception as e:  # noqa: BLE001 - TensorRT reports load failures as RuntimeError/TypeError
        raise M2DetError(f"TensorRT cannot load plugin library {lib}: {e}") from None
    if registry.get_creator(PLUGIN_OP, PLUGIN_VERSION, "") is None:
        raise M2DetError(f"{lib} does not register plugin {PLUGIN_OP} version {PLUGIN_VERSION}")


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
                                          position=len(self._bars), disable=not enabled,
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


# --------------------------------------------------------------------------- build
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
    atomic_write_json(sidecar_path(out_path), {
        "format": SIDECAR_FORMAT,
        "plan": out_path.name,
        "tensorrt_version": trt_version,
        "version_compatible": version_compatible,
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
        "precision": info.precision,
        "graph": info.graph,
        "input_name": INPUT_NAME,
        "input_size": info.input_size,
        "batch": asdict(profile),
        "outputs": list(info.outputs),
        "config": info.config,
        "nms": info.nms,
        "plugin": ({"op": PLUGIN_OP, "version": PLUGIN_VERSION, "library": str(lib),
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
    opt_profile.set_shape(INPUT_NAME, *(trt.Dims([b, 3, s, s])
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


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="m2det-build",
        description="Build a TensorRT plan (+ <plan>.json metadata) from an ONNX file written "
                    "by m2det-export (raw or NMS graph, fp32/fp16/int8). Needs TensorRT and a "
                    "GPU.")  # fmt: skip
    p.add_argument("--onnx", required=True, type=Path, help="exported ONNX file")
    p.add_argument("--out", type=Path, help="plan to write (default: the ONNX path with .plan)")
    p.add_argument("--batch", default="1:1:1", help="batch profile MIN:OPT:MAX (default 1:1:1)")
    p.add_argument("--workspace", type=float, default=4.0, help="workspace limit in GiB (4)")
    p.add_argument("--plugin-lib", type=Path, help="soft-NMS plugin library (libm2det_plugins.so); "
                   "default $M2DET_PLUGIN_LIB; needed for NMS graphs")  # fmt: skip
    p.add_argument("--timing-cache", type=Path, help="timing cache file (default: under "
                   "~/.cache/m2det, per TensorRT version and GPU arch)")  # fmt: skip
    p.add_argument("--version-compatible", action="store_true",
                   help="build a version-compatible plan with the plugin library inside it")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 math for FP32 layers (faster, ~1e-3 relative error)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    return p


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    plan = build_engine(args.onnx, args.out, batch=args.batch, workspace_gib=args.workspace,
                        timing_cache=args.timing_cache, plugin_lib=args.plugin_lib,
                        version_compatible=args.version_compatible, tf32=args.tf32,
                        progress=not args.no_progress, verbose=args.verbose)  # fmt: skip
    meta = read_sidecar(plan)
    print(f"wrote {plan} ({meta['precision']}, {meta['graph']} graph, batch "
          f"{BatchProfile(**meta['batch'])}, TensorRT {meta['tensorrt_version']}, "
          f"{meta['build_seconds']} s) and {sidecar_path(plan).name}")  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``m2det-build``: exit 0 on success, 2 with one line on a user error."""
    from m2det.engines.cli import run_cli

    return run_cli("m2det-build", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
