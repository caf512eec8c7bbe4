"""The OpenVINO runner: the ``.onnx`` files ``m2det-export`` writes, run by OpenVINO on the CPU.

OpenVINO reads the files as they are (FP32, FP16 and the INT8 Q/DQ files; raw and ``onnx-hard``
NMS graphs); config, precision, graph kind and batch come from the file's ``m2det.*`` metadata,
which OpenVINO keeps in the model's ``rt_info["framework"]``. Raw outputs go through the CPU
reference NMS (``m2det.nms.batched_nms``) like the ONNX Runtime runner's.

OpenVINO chooses the precision of everything the file leaves in floating point: on CPUs with
bf16 instructions (AVX512-BF16, AMX) its default is bf16, which changes the outputs. The runner
therefore asks for one explicitly (``ov_precision``: ``f32`` by default, ``bf16``, or ``auto`` =
OpenVINO's choice) and records what was used in :attr:`OpenVinoRunner.name`.

``mode="latency"`` runs one synchronous request; ``mode="throughput"`` compiles for OpenVINO's
throughput hint (several CPU streams) and splits each batch into one-image asynchronous requests
that run in parallel (:attr:`preferred_batch` says how many are worth handing over at once).
Results are identical in both modes and at any thread count (measured: bitwise).

Telemetry: ``import openvino`` imports its model converter, which reports the import to Google
Analytics (an ``ov``/``import`` event with a client id it stores in ``~/intel``) unless the user
opted out. :func:`import_openvino` imports the package under :func:`no_telemetry`, so the
converter binds the no-op stub OpenVINO ships for when ``openvino_telemetry`` is absent: this
runner neither sends nor writes anything (docs/openvino.md).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from m2det import contract
from m2det.config import M2DetConfig
from m2det.contract import INPUT, NMS_OUTPUTS, PLUGIN_NAME, RAW_OUTPUTS
from m2det.engines.onnx_file_runner import OnnxFileRunner
from m2det.errors import M2DetError
from m2det.nms import NMSParams

#: ``--ov-precision`` values: the inference precision OpenVINO is asked for (``auto``: its own
#: choice, bf16 on CPUs with bf16 instructions).
OV_PRECISIONS = ("f32", "bf16", "auto")
#: ``latency``: one synchronous request; ``throughput``: multi-stream asynchronous requests.
OV_MODES = ("latency", "throughput")
INSTALL = "pip install 'm2det-deploy[openvino]'"


class OpenVinoRunner(OnnxFileRunner):
    """Run an exported ``.onnx`` file in OpenVINO (CPU).

    ``threads``: CPU threads (``INFERENCE_NUM_THREADS``; default: OpenVINO's, all cores).
    ``ov_precision``: one of :data:`OV_PRECISIONS`. ``mode``: one of :data:`OV_MODES`.
    ``requests``: parallel requests (= CPU streams) in throughput mode (default: OpenVINO's
    optimal number for ``threads``). ``config``: the preset of a file whose metadata a tool
    stripped (checked against its graph); a file with metadata ignores it here.
    """

    backend = "openvino"

    def __init__(self, path: str | Path, nms: NMSParams, *, threads: int | None = None,
                 ov_precision: str = "f32", mode: str = "latency",
                 requests: int | None = None,
                 config: M2DetConfig | str | None = None) -> None:  # fmt: skip
        ov = import_openvino()
        if ov_precision not in OV_PRECISIONS:
            raise M2DetError(f"unknown OpenVINO precision {ov_precision!r}; valid: "
                             f"{', '.join(OV_PRECISIONS)}")  # fmt: skip
        if mode not in OV_MODES:
            raise M2DetError(f"unknown OpenVINO mode {mode!r}; valid: {', '.join(OV_MODES)}")
        if threads is not None and threads < 1:
            raise M2DetError(f"threads must be >= 1, got {threads}")
        if requests is not None and requests < 1:
            raise M2DetError(f"requests must be >= 1, got {requests}")
        self.path = Path(path)
        if not self.path.is_file():
            raise M2DetError(f"ONNX file not found: {self.path}")
        self._core = ov.Core()
        self._model = _read_model(self._core, self.path)
        meta = _metadata(self._model)
        config = _config(meta, self.path, config)
        outputs = tuple(o.get_any_name() for o in self._model.outputs)
        if outputs not in (RAW_OUTPUTS, NMS_OUTPUTS):
            raise M2DetError(f"{self.path.name}: unexpected outputs {outputs}")
        self.graph = contract.GRAPH_RAW if outputs == RAW_OUTPUTS else contract.GRAPH_NMS_ONNX
        if self.graph == contract.GRAPH_NMS_ONNX and contract.META_NMS in meta:
            nms = NMSParams(**json.loads(meta[contract.META_NMS]))  # what the graph does
        super().__init__(config, nms, precision=meta.get(contract.META_PRECISION, "fp32"))
        batch = meta.get(contract.META_BATCH, "dynamic")
        self.fixed_batch = int(batch) if batch.isdigit() else None
        self.threads = threads
        self.ov_precision = ov_precision
        self.mode = mode
        self.requests = requests
        #: The precision OpenVINO actually infers in ("f32" / "bf16" / ...), known once compiled.
        self.inference_precision: str | None = None
        self._compiled: Any = None
        self._request: Any = None
        self._queue: Any = None
        self._outputs: list[Any] = []  # the compiled model's outputs (released with it)

    # ----- what this runner is
    @property
    def name(self) -> str:
        """``openvino-<file precision>-<asked>``, plus ``(<used>)`` where OpenVINO chose another
        inference precision than asked (``auto(bf16)``; ``bf16(f32)`` on a CPU without bf16)."""
        asked, used = self.ov_precision, self.inference_precision
        ov = f"{asked}({used or '?'})" if asked == "auto" or (used and used != asked) else asked
        return f"{self.backend}-{self.precision}-{ov}"

    @property
    def preferred_batch(self) -> int:
        """Images worth passing per call: the parallel requests in throughput mode, else 1."""
        if self.mode != "throughput":
            return 1
        if self._queue is None:
            self.__enter__()
        return max(1, len(self._queue))

    def settings(self) -> dict[str, Any]:
        """What was asked of OpenVINO and what it chose (recorded beside results)."""
        ov = import_openvino()
        return {"ov_precision": self.ov_precision, "inference_precision": self.inference_precision,
                "mode": self.mode, "threads": self.threads,
                "requests": None if self._queue is None else len(self._queue),
                "openvino": ov.get_version()}  # fmt: skip

    # ----- lifecycle
    def activate(self) -> None:
        props: dict[str, Any] = {
            "PERFORMANCE_HINT": "THROUGHPUT" if self.mode == "throughput" else "LATENCY"}
        if self.threads:
            props["INFERENCE_NUM_THREADS"] = self.threads
        if self.ov_precision != "auto":
            props["INFERENCE_PRECISION_HINT"] = self.ov_precision
        if self.mode == "throughput" and self.requests:
            props["NUM_STREAMS"] = self.requests
        try:
            compiled = self._core.compile_model(self._model, "CPU", props)
        except RuntimeError as e:
            raise M2DetError(f"OpenVINO cannot compile {self.path.name}: "
                             f"{_first_line(e)}") from None  # fmt: skip
        self.inference_precision = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        names = RAW_OUTPUTS if self.graph == contract.GRAPH_RAW else NMS_OUTPUTS
        self._outputs = [compiled.output(n) for n in names]
        self._request = compiled.create_infer_request()
        if self.mode == "throughput":
            ov = import_openvino()
            jobs = self.requests or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self._queue = ov.AsyncInferQueue(compiled, max(1, jobs))
        self._compiled = compiled

    def deactivate(self) -> None:
        if self._queue is not None:
            self._queue.wait_all()
        self._queue = self._request = self._compiled = None
        self._outputs = []

    # ----- inference
    def execute(self, x: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
        # names are the model's outputs in order (checked when the file was read)
        if self._queue is not None and len(x) > 1 and not self.fixed_batch:
            return self._run_async(x)
        result = self._request.infer({INPUT: x})
        return [np.array(result[o]) for o in self._outputs]

    def _run_async(self, x: np.ndarray) -> list[np.ndarray]:
        """One asynchronous request per image (the streams run them in parallel), in order."""
        per_image: list[list[np.ndarray] | None] = [None] * len(x)

        def done(request: Any, index: int) -> None:
            per_image[index] = [np.array(request.get_tensor(o).data) for o in self._outputs]

        self._queue.set_callback(done)
        for i in range(len(x)):
            self._queue.start_async({INPUT: x[i:i + 1]}, i)
        self._queue.wait_all()
        if any(r is None for r in per_image):
            raise M2DetError(f"OpenVINO returned no result for some images of {self.path.name}")
        return [np.concatenate([r[k] for r in per_image if r is not None])
                for k in range(len(self._outputs))]  # fmt: skip


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """While active, ``openvino_telemetry`` cannot be imported: packages that import it when they
    are first imported (OpenVINO's model converter, NNCF) then bind their own no-op stubs (both
    fall back to one on ImportError) instead of creating a sender. Afterwards the module is
    importable again for anyone else."""
    blocked = "openvino_telemetry" not in sys.modules
    if blocked:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if blocked and sys.modules.get("openvino_telemetry", 0) is None:
            del sys.modules["openvino_telemetry"]


def import_openvino() -> Any:
    """``import openvino`` under :func:`no_telemetry`; a package that other code imported first
    is returned as it is (its import has already run). ModuleNotFoundError when OpenVINO is not
    installed."""
    if sys.modules.get("openvino") is not None:
        return sys.modules["openvino"]
    with no_telemetry():
        return importlib.import_module("openvino")


def cmake_dir() -> Path:
    """The OpenVINO wheel's CMake package folder (``OpenVINOConfig.cmake``; ``-DOpenVINO_DIR`` of
    engines/cpp), found without importing the package; M2DetError when OpenVINO is missing."""
    import importlib.util

    spec = importlib.util.find_spec("openvino")
    if spec is None or spec.origin is None:
        raise M2DetError(f"OpenVINO is not installed: {INSTALL}")
    folder = Path(spec.origin).parent / "cmake"
    if not (folder / "OpenVINOConfig.cmake").is_file():
        raise M2DetError(f"no OpenVINOConfig.cmake in {folder} (an OpenVINO wheel ships one)")
    return folder


def cpu_capabilities() -> list[str]:
    """OpenVINO's CPU plugin capabilities here (e.g. ``["BF16", "FP32", "INT8", ...]``)."""
    ov = import_openvino()
    return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def _read_model(core: Any, path: Path) -> Any:
    try:
        return core.read_model(str(path))
    except RuntimeError as e:
        if PLUGIN_NAME in str(e):
            raise M2DetError(f"{path.name} contains the TensorRT plugin op {PLUGIN_NAME}, which "
                             "OpenVINO cannot run: export with --nms-graph none (raw) or "
                             "--nms-graph onnx-hard") from None  # fmt: skip
        raise M2DetError(f"OpenVINO cannot read {path}: {_first_line(e)}") from None


def _metadata(model: Any) -> dict[str, str]:
    """The file's ``m2det.*`` metadata (keys without the prefix) from ``rt_info["framework"]``."""
    if not model.has_rt_info(["framework"]):
        return {}
    framework = model.get_rt_info(["framework"]).astype(dict)
    return {str(k)[len(contract.META_PREFIX):]: v.astype(str) for k, v in framework.items()
            if str(k).startswith(contract.META_PREFIX)}  # fmt: skip


def _config(meta: dict[str, str], path: Path, config: M2DetConfig | str | None) -> M2DetConfig:
    """The file's recorded config; for a file whose metadata a tool stripped, ``config`` (a
    preset) checked against its graph, as the ONNX Runtime runner does."""
    if contract.META_CONFIG not in meta:
        import onnx

        from m2det.engines.onnx_info import config_for_stripped, graph_facts

        facts = graph_facts(onnx.load(str(path), load_external_data=False))
        return config_for_stripped(path, facts, config)
    try:
        return M2DetConfig.from_dict(json.loads(meta[contract.META_CONFIG]))
    except (ValueError, TypeError):
        raise M2DetError(f"{path}: metadata m2det.config is not a config JSON") from None


def _type_name(value: Any) -> str:
    """OpenVINO element type -> its short name ("f32", "bf16")."""
    name = getattr(value, "get_type_name", None)
    return str(name()) if callable(name) else str(value)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(e).__name__])[0][:300]


if __name__ == "__main__":  # python -m m2det.engines.openvino_runner: the CMake package folder
    from m2det.cli import run_cli

    def _print_cmake_dir(argv: Any) -> int:
        print(cmake_dir())
        return 0

    raise SystemExit(run_cli("m2det.engines.openvino_runner", _print_cmake_dir, None))
