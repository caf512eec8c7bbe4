"""The one export path: checkpoint -> raw ONNX graph (+ FP16, INT8, NMS graphs), each file checked
(``onnx.checker`` full check + strict shape inference) and parity-measured.

``m2det-export``, the benchmark harness and ``benchmarks.export_accuracy`` all call
:func:`export_model` with an :class:`ExportOptions`; it returns an :class:`ExportResult` (paths,
sizes, parity figures, calibration record) and writes ``<stem>_export.json`` beside the files.

Files (``<c>`` = config name, ``_b<N>`` added for a fixed batch):

=============================  ==============================================================
``<c>.onnx``                   FP32 raw graph (``images`` -> ``boxes``, ``scores``)
``<c>_fp16.onnx``              ``fp16``: AutoCast mixed precision (post-processing FP32)
``<c>_int8.onnx``              ``int8``: explicit Q/DQ (post-processing unquantized)
``<c>[_fp16|_int8]_nms.onnx``  NMS graph ``soft``/``hard``: + ``M2Det_SoftNMS_TRT`` plugin node
``<c>[...]_onnxnms.onnx``      NMS graph ``onnx-hard``: + standard ONNX hard NMS (runs in ORT)
``<c>_export.json``            summary: files, sizes, parity, calibration, timings
=============================  ==============================================================
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import m2det
from m2det import contract
from m2det.checkpoint import load_model
from m2det.config import M2DetConfig
from m2det.errors import M2DetError
from m2det.export import nms_graph, precision
from m2det.export.calibration import CALIB_METHODS, load_calibration_images
from m2det.export.onnx_export import (
    MAX_OPSET,
    MODELOPT_INT8_MIN_OPSET,
    OPSET,
    check_model,
    export_raw,
    prune_unused_initializers,
    save_model,
    set_metadata,
)
from m2det.export.ort_session import SPEC_DISABLED_OPTIMIZERS
from m2det.export.parity import compare_onnx, compare_with_torch, random_images
from m2det.io import atomic_write_json
from m2det.model import M2DetInference
from m2det.nms import NMSParams, get_nms_params

#: ``nms_graph`` choices: no NMS, the plugin node with the official soft-NMS preset or with hard
#: NMS, or hard NMS in standard ONNX ops.
NMS_GRAPHS = ("none", "soft", "hard", "onnx-hard")
#: Default max |difference| of boxes and scores between ORT and PyTorch (FP32 raw graph).
DEFAULT_TOLERANCE = 1e-4
#: Images compared for the FP16/INT8 parity figures (calibration images for INT8).
PARITY_IMAGES = 4
#: How ONNX Runtime runs the files for every parity figure (m2det.export.ort_session).
ORT_SETTING = "ORT_ENABLE_ALL without " + ", ".join(SPEC_DISABLED_OPTIMIZERS)


@dataclass(frozen=True)
class ExportOptions:
    """What to export. ``batch`` None: dynamic batch dimension. INT8 calibration comes from
    ``calib`` (a folder; ``calib_count`` images, a ``seed``-ed subset) or ``calib_images`` (already
    preprocessed [N,3,S,S] float32). ``nms_graph`` one of :data:`NMS_GRAPHS`; ``nms`` overrides
    the graph's NMS parameters (default: the ``official`` preset for soft, ``hard`` for the hard
    kinds, K = 100). ``opset`` None: opset 17 for every file but ModelOpt's INT8 ones (19, the
    least ModelOpt writes); a number: every file at that opset, or an M2DetError before any work
    when a tool cannot write it. ``quiet`` silences ModelOpt's and the calibrators' own output."""

    checkpoint: Path
    out: Path
    config: str | None = None
    batch: int | None = None
    opset: int | None = None
    tolerance: float = DEFAULT_TOLERANCE
    fp16: bool = False
    int8: bool = False
    calib: Path | None = None
    calib_images: np.ndarray | None = field(default=None, repr=False)
    calib_method: str = "entropy"
    calib_count: int = 64
    seed: int = 0
    qdq_placement: str = "tensorrt"
    nms_graph: str = "none"
    nms: NMSParams | None = None
    quiet: bool = False

    def check(self) -> None:
        """Raise M2DetError for an inconsistent set of options (before any work)."""
        if self.batch is not None and self.batch < 1:
            raise M2DetError(f"--batch must be >= 1, got {self.batch}")
        if self.opset is not None and not OPSET <= self.opset <= MAX_OPSET:
            raise M2DetError(f"--opset must be {OPSET}..{MAX_OPSET} (the TorchScript exporter "
                             f"supports opsets up to {MAX_OPSET}), got {self.opset}")  # fmt: skip
        if (self.opset is not None and self.int8 and self.qdq_placement != "onnxruntime"
                and self.opset < MODELOPT_INT8_MIN_OPSET):
            raise M2DetError(f"--opset {self.opset} cannot be honoured for the INT8 file: ModelOpt "
                             f"(--qdq-placement {self.qdq_placement}) writes Q/DQ at opset >= "
                             f"{MODELOPT_INT8_MIN_OPSET}; pass --opset {MODELOPT_INT8_MIN_OPSET} "
                             f"or {MAX_OPSET}, use --qdq-placement onnxruntime, or leave --opset "
                             f"unset (the INT8 file is then opset {MODELOPT_INT8_MIN_OPSET}, the "
                             f"others {OPSET})")  # fmt: skip
        if self.tolerance <= 0:
            raise M2DetError(f"--tolerance must be > 0, got {self.tolerance}")
        has_calib = self.calib is not None or self.calib_images is not None
        if self.int8 and not has_calib:
            raise M2DetError("--int8 needs --calib DIR (calibration images)")
        if has_calib and not self.int8:
            raise M2DetError("--calib is only used with --int8")
        if self.calib_method not in CALIB_METHODS:
            raise M2DetError(f"unknown calibration method {self.calib_method!r}")
        if self.calib_count < 1:
            raise M2DetError(f"--calib-count must be >= 1, got {self.calib_count}")
        if self.qdq_placement not in precision.PLACEMENTS:
            raise M2DetError(f"unknown Q/DQ placement {self.qdq_placement!r}")
        if self.nms_graph not in NMS_GRAPHS:
            valid = ", ".join(NMS_GRAPHS)
            raise M2DetError(f"unknown NMS graph {self.nms_graph!r}; valid: {valid}")
        if self.int8 and self.qdq_placement == "onnxruntime" and self.nms_graph in ("soft",
                                                                                  "hard"):
            raise M2DetError(f"--nms-graph {self.nms_graph} writes the TensorRT plugin node, and "
                             "TensorRT does not take the uint8 activations of --qdq-placement "
                             "onnxruntime (its parser: 'unsupported input type of UINT8'): use "
                             "--nms-graph onnx-hard, or --qdq-placement tensorrt")  # fmt: skip

    def nms_params(self) -> NMSParams | None:
        """The NMS the graph gets, None for raw graphs only."""
        if self.nms_graph == "none":
            return None
        if self.nms is not None:
            return self.nms
        return get_nms_params("official" if self.nms_graph == "soft" else "hard",
                              max_detections=100)


@dataclass
class ExportedFile:
    path: str
    bytes: int
    precision: str
    graph: str  # one of contract.GRAPH_KINDS, or "plan"
    opset: int | None = None  # ONNX files: the default domain's opset
    ir_version: int | None = None


@dataclass
class ExportResult:
    """What a run wrote and measured (saved as ``<stem>_export.json``)."""

    config: str
    checkpoint: str
    batch: int | str
    opset: int | None  # as asked (None: per file kind; each file records its own)
    files: dict[str, ExportedFile] = field(default_factory=dict)
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    nms: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    summary_path: str | None = None

    def path(self, key: str) -> Path:
        """Path of file ``key`` ("fp32", "fp16", "int8", "nms", "fp16_nms", "onnxnms", ...)."""
        return Path(self.files[key].path)

    def last(self) -> ExportedFile:
        """The last file written (the most complete graph of the highest precision asked)."""
        return list(self.files.values())[-1]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("summary_path")
        return data


def export_model(options: ExportOptions,
                 log: Callable[[str], None] | None = print) -> ExportResult:
    """Run the export described by ``options``; returns the result (summary already written).

    ``log`` gets one line per slow step (None: silent). A file that fails its FP32 parity check
    is removed and the run ends with an M2DetError."""
    options.check()
    params = options.nms_params()
    out = _writable_dir(options.out)
    step = _Steps(log)
    module = step("load", f"loading {options.checkpoint}",
                  lambda: M2DetInference(load_model(options.checkpoint, options.config)).eval())
    cfg: M2DetConfig = module.model.config
    calib = None
    if options.int8:  # read the images first: a bad folder should fail before minutes of work
        calib = options.calib_images
        if calib is None:
            folder = options.calib
            calib = step("calib_load", f"reading calibration images from {folder}",
                         lambda: load_calibration_images(folder, cfg.input_size,
                                                         options.calib_count, options.seed))
    batch = options.batch
    stem = cfg.name + (f"_b{batch}" if batch else "")
    result = ExportResult(cfg.name, str(options.checkpoint), batch or "dynamic", options.opset,
                          timings_s=step.timings, versions=_versions())  # fmt: skip
    written: dict[str, onnx.ModelProto] = {}
    int8_meta: dict[str, Any] = {}

    def write(key: str, model: onnx.ModelProto, prec: str, graph: str,
              extra: dict[str, Any] | None = None) -> Path:
        prune_unused_initializers(model)
        set_metadata(model, cfg, prec, graph, batch, extra)
        check_model(model)
        path = out / f"{stem}{'' if key == 'fp32' else '_' + key}.onnx"
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        result.files[key] = ExportedFile(str(path), save_model(model, path), prec, graph, opset,
                                         model.ir_version)  # fmt: skip
        written[key] = model
        return path

    opset = options.opset or OPSET
    raw = step("export", f"exporting {cfg.name} (opset {opset}, batch {batch or 'dynamic'})",
               lambda: export_raw(module, batch, opset))
    fp32_path = write("fp32", raw, "fp32", contract.GRAPH_RAW)
    batches = [batch] if batch else [1, 3]
    parity = step("parity", "ORT vs PyTorch parity",
                  lambda: compare_with_torch(fp32_path, module, batches))
    result.parity["fp32_vs_torch"] = {**parity.to_dict(), "tolerance": options.tolerance}
    _log(log, f"[export] parity fp32 vs torch: {parity.line()}")
    if parity.worst > options.tolerance:
        fp32_path.unlink()  # a file that failed its parity check is not left behind
        raise M2DetError(f"ONNX Runtime output differs from PyTorch by {parity.worst:.3g} > "
                         f"tolerance {options.tolerance:g} ({parity.line()})")  # fmt: skip

    probe = [random_images(batch or 1, cfg.input_size, 100 + i) for i in range(PARITY_IMAGES)]
    if options.fp16:
        with _silenced(options.quiet):
            fp16 = step("fp16", "FP16 mixed precision (ModelOpt AutoCast)",
                        lambda: precision.to_fp16(fp32_path))
        p16 = compare_onnx(write("fp16", fp16, "fp16", contract.GRAPH_RAW), fp32_path, probe)
        result.parity["fp16_vs_fp32"] = p16.to_dict()
        _log(log, f"[export] parity fp16 vs fp32: {p16.line()}")
    if options.int8:
        assert calib is not None
        recipe = "ONNX Runtime" if options.qdq_placement == "onnxruntime" else "ModelOpt"
        int8_meta = {contract.META_QDQ_PLACEMENT: options.qdq_placement}
        with _silenced(options.quiet):
            i8 = step("int8", f"INT8 PTQ ({options.calib_method}, {len(calib)} images; {recipe})",
                      lambda: precision.to_int8(fp32_path, calib, options.calib_method,
                                                options.qdq_placement, options.opset))  # fmt: skip
        q, dq = precision.count_qdq(i8)
        result.calibration = {
            "folder": None if options.calib is None else str(options.calib),
            "method": options.calib_method, "images": len(calib), "seed": options.seed,
            "qdq_placement": options.qdq_placement, "quantize_linear": q, "dequantize_linear": dq,
        }  # fmt: skip
        n = batch or 1
        real = [calib[i:i + n] for i in range(0, n * PARITY_IMAGES, n) if i + n <= len(calib)]
        i8_path = write("int8", i8, "int8", contract.GRAPH_RAW, int8_meta)
        p8 = compare_onnx(i8_path, fp32_path, real or probe)
        result.parity["int8_vs_fp32"] = {**p8.to_dict(), "inputs": "calibration images",
                                         "ort": ORT_SETTING}  # fmt: skip
        _log(log, f"[export] parity int8 vs fp32 (calibration images): {p8.line()}")
        # what ONNX Runtime's full default optimizations do to the same file (not what TensorRT
        # computes; m2det.export.ort_session)
        shift = compare_onnx(i8_path, i8_path, real or probe, disabled_optimizers=())
        result.parity["int8_ort_defaults_vs_int8"] = shift.to_dict()
        _log(log, f"[export] int8 with ORT's default optimizations vs as specified: "
                  f"{shift.line()}")

    if params is not None:
        result.nms = {"kind": options.nms_graph, **params.attributes()}
        onnx_nms = options.nms_graph == "onnx-hard"
        add = nms_graph.add_onnx_hard_nms if onnx_nms else nms_graph.add_plugin_nms
        graph = contract.GRAPH_NMS_ONNX if onnx_nms else contract.GRAPH_NMS_PLUGIN
        suffix = "onnxnms" if onnx_nms else "nms"
        for key in [k for k in contract.PRECISIONS if k in written]:
            extra = {contract.META_NMS: params.attributes(), **(int8_meta if key == "int8" else {})}
            write(suffix if key == "fp32" else f"{key}_{suffix}", add(written[key], params), key,
                  graph, extra)  # fmt: skip

    summary = out / f"{stem}_export.json"
    atomic_write_json(summary, result.to_json())
    result.summary_path = str(summary)
    return result


def write_summary(result: ExportResult) -> None:
    """Rewrite the summary JSON (after a caller added a file, e.g. a TensorRT plan)."""
    if result.summary_path is None:
        raise ValueError("the result has no summary file")
    atomic_write_json(result.summary_path, result.to_json())


class _Steps:
    """One log line per slow step (``[export] <what> ... done (Xs)``); timings recorded."""

    def __init__(self, log: Callable[[str], None] | None) -> None:
        self.log = log
        self.timings: dict[str, float] = {}

    def __call__(self, key: str, what: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        self.timings[key] = round(time.perf_counter() - t0, 3)
        _log(self.log, f"[export] {what} ... done ({self.timings[key]:.1f} s)")
        return result


def _log(log: Callable[[str], None] | None, line: str) -> None:
    if log is not None:
        log(line)


@contextlib.contextmanager
def _silenced(quiet: bool) -> Iterator[None]:
    """With ``quiet``: ModelOpt's INFO logs and the calibrators' prints and progress bars go to a
    buffer, shown only when the block fails."""
    if not quiet:
        yield
        return
    buf = io.StringIO()
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    except BaseException:
        sys.stderr.write(buf.getvalue())
        raise
    finally:
        logging.disable(logging.NOTSET)


def _writable_dir(path: Path) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise M2DetError(f"cannot create output folder {out}: {e.strerror or e}") from None
    probe = out / f".m2det-export-{time.time_ns()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise M2DetError(f"output folder {out} is not writable: {e.strerror or e}") from None
    return out


def _versions() -> dict[str, str]:
    import modelopt
    import onnxruntime
    import onnxslim

    return {"m2det": m2det.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxslim": onnxslim.__version__,
            "modelopt": modelopt.__version__}  # fmt: skip
