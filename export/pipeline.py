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

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import m2det
from m2det import contract
from m2det.checkpoint import load_model
from m2det.cli import stderr_is_terminal
from m2det.config import M2DetConfig, get_config
from m2det.errors import M2DetError
from m2det.export import nms_graph, precision
from m2det.export.calibration import CALIB_METHODS, read_calibration_images
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
from m2det.preprocess import list_images

#: ``nms_graph`` choices: no NMS, the plugin node with the official soft-NMS preset or with hard
#: NMS, or hard NMS in standard ONNX ops.
NMS_GRAPHS = ("none", "soft", "hard", "onnx-hard")
#: Default max |difference| of boxes and scores between ORT and PyTorch (FP32 raw graph).
DEFAULT_TOLERANCE = 1e-4
#: Images compared for the FP16/INT8 parity figures (calibration images for INT8).
PARITY_IMAGES = 4
#: A warning is printed when the INT8 graph's scores differ from FP32's by more than this on the
#: calibration images (a class probability moving by 0.2 can add or drop a detection).
INT8_SCORE_WARNING = 0.2
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
    when a tool cannot write it. ``quiet``: no status lines (the quantizers' own output is never
    shown). ``int8_warning``: the INT8-vs-FP32 score difference on the calibration images above
    which a warning is printed."""

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
    int8_warning: float = INT8_SCORE_WARNING

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
        if self.calib is not None:
            list_images(self.calib)  # a missing folder or one without images: now, not later
        if self.config is not None:
            get_config(self.config)
        if not self.checkpoint.is_file():
            raise M2DetError(f"checkpoint not found: {self.checkpoint}")
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


def _status_line(line: str) -> None:
    if stderr_is_terminal():
        print(line, file=sys.stderr, flush=True)


def _warning_line(line: str) -> None:
    print(f"m2det-export: warning: {line}", file=sys.stderr, flush=True)


def export_model(options: ExportOptions,
                 log: Callable[[str], None] | None = _status_line,
                 warn: Callable[[str], None] = _warning_line) -> ExportResult:
    """Run the export described by ``options``; returns the result (summary already written).

    Every file is written to a temporary folder inside ``options.out`` and moved there only when
    the whole run succeeded: a failed run (a bad checkpoint or calibration folder, a parity
    failure, Ctrl-C) leaves no file behind, and no ``out`` folder it created. ``log`` gets one
    status line per step (default: stderr when it is a terminal; None: silent), ``warn`` one
    line per warning (skipped calibration files, an INT8 graph far from FP32)."""
    options.check()
    params = options.nms_params()
    with _Staging(options.out) as stage:
        result = _export(options, params, stage, _Steps(log), warn)
        stage.commit()
    result.summary_path = str(options.out / Path(result.summary_path or "").name)
    for info in result.files.values():
        info.path = str(options.out / Path(info.path).name)
    return result


def _export(options: ExportOptions, params: NMSParams | None, stage: _Staging, step: _Steps,
            warn: Callable[[str], None]) -> ExportResult:
    """The export steps, writing into ``stage.dir`` (file paths in the result are staged)."""
    module = step("load", f"loading {options.checkpoint}",
                  lambda: M2DetInference(load_model(options.checkpoint, options.config)).eval())
    cfg: M2DetConfig = module.model.config
    calib, calib_record = None, None
    if options.int8:  # read the images first: a bad folder should fail before minutes of work
        calib, calib_record = _calibration(options, cfg, step, warn)
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
        path = stage.dir / f"{stem}{'' if key == 'fp32' else '_' + key}.onnx"
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
    step.line(f"parity fp32 vs torch: {parity.line()}")
    if parity.worst > options.tolerance:
        raise M2DetError(f"ONNX Runtime output differs from PyTorch by {parity.worst:.3g} > "
                         f"tolerance {options.tolerance:g} ({parity.line()})")  # fmt: skip

    probe = [random_images(batch or 1, cfg.input_size, 100 + i) for i in range(PARITY_IMAGES)]
    if options.fp16:
        fp16 = step("fp16", "FP16 mixed precision (ModelOpt AutoCast)",
                    lambda: precision.to_fp16(fp32_path))
        p16 = compare_onnx(write("fp16", fp16, "fp16", contract.GRAPH_RAW), fp32_path, probe)
        result.parity["fp16_vs_fp32"] = {**p16.to_dict(), "inputs": f"{PARITY_IMAGES} random "
                                         "images"}
        step.line(f"parity fp16 vs fp32: {p16.line()}")
    if options.int8:
        assert calib is not None and calib_record is not None
        recipe = precision.recipe(options.qdq_placement)
        int8_meta = {contract.META_QDQ_PLACEMENT: options.qdq_placement}
        i8 = step("int8", f"INT8 PTQ ({options.calib_method} calibration on {len(calib)} "
                  f"images; {recipe})",
                  lambda: precision.to_int8(fp32_path, calib, options.calib_method,
                                            options.qdq_placement, options.opset))  # fmt: skip
        q, dq = precision.count_qdq(i8)
        result.calibration = {
            **calib_record, "method": options.calib_method, "seed": options.seed,
            "qdq_placement": options.qdq_placement, "recipe": recipe,
            "quantize_linear": q, "dequantize_linear": dq,
        }  # fmt: skip
        int8_path = write("int8", i8, "int8", contract.GRAPH_RAW, int8_meta)
        chunks = _chunks(calib, batch)
        p8 = step("int8_parity", f"INT8 vs FP32 on the {len(calib)} calibration images",
                  lambda: compare_onnx(int8_path, fp32_path, chunks))
        result.parity["int8_vs_fp32"] = {**p8.to_dict(), "ort": ORT_SETTING,
                                         "inputs": f"{len(calib)} calibration images"}
        step.line(f"parity int8 vs fp32 ({len(calib)} calibration images): {p8.line()}")
        if p8.scores_max > options.int8_warning:
            result.parity["int8_vs_fp32"]["warning"] = True
            warn(f"the INT8 graph's scores differ from FP32 by up to {p8.scores_max:.2f} on the "
                 f"{len(calib)} calibration images (mean {p8.scores_mean:.1e}; recipe "
                 f"{recipe}): measure its AP (m2det-eval --onnx) before using it")
        # what ONNX Runtime's full default optimizations do to the same file (not what TensorRT
        # computes; m2det.export.ort_session)
        shift = compare_onnx(int8_path, int8_path, chunks[:PARITY_IMAGES],
                             disabled_optimizers=())
        result.parity["int8_ort_defaults_vs_int8"] = shift.to_dict()
        step.line(f"int8 with ORT's default optimizations vs as specified: {shift.line()}")

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

    final = {k: dataclasses.replace(f, path=str(stage.out / Path(f.path).name))
             for k, f in result.files.items()}  # the summary names the files where they will be
    summary = stage.dir / f"{stem}_export.json"
    atomic_write_json(summary, {**result.to_json(), "files": {k: asdict(f) for k, f in
                                                              final.items()}})  # fmt: skip
    result.summary_path = str(summary)
    return result


def _calibration(options: ExportOptions, cfg: M2DetConfig, step: _Steps,
                 warn: Callable[[str], None]) -> tuple[np.ndarray, dict[str, Any]]:
    """The preprocessed calibration images [N,3,S,S] and their record for the summary."""
    if options.calib_images is not None:
        calib = options.calib_images
        return calib, {"folder": None, "images": len(calib), "skipped": []}
    folder = options.calib
    assert folder is not None
    found = step("calib_load", f"reading {options.calib_count} calibration images from {folder}",
                 lambda: read_calibration_images(folder, options.calib_count, options.seed))
    if found.skipped:
        warn(f"calibration folder {folder}: {found.skipped_line()}")
    return found.preprocessed(cfg.input_size), found.record()


def _chunks(images: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """``images`` [N,3,S,S] in calls of the graph's batch (fixed: whole batches only; dynamic:
    up to 8 images each)."""
    n = batch or 8
    last = len(images) - n + 1 if batch else len(images)
    chunks = [images[i:i + n] for i in range(0, max(last, 0), n)]
    return chunks or [images[:n]]


def write_summary(result: ExportResult) -> None:
    """Rewrite the summary JSON (after a caller added a file, e.g. a TensorRT plan)."""
    if result.summary_path is None:
        raise ValueError("the result has no summary file")
    atomic_write_json(result.summary_path, result.to_json())


class _Steps:
    """One status line per slow step (``[export] <what> ... done (Xs)``, the line finished with
    `` failed`` before an error propagates); timings recorded."""

    def __init__(self, log: Callable[[str], None] | None) -> None:
        self.log = log
        self.timings: dict[str, float] = {}

    def __call__(self, key: str, what: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            result = fn()
        except BaseException:
            self.line(f"{what} ... failed")
            raise
        self.timings[key] = round(time.perf_counter() - t0, 3)
        self.line(f"{what} ... done ({self.timings[key]:.1f} s)")
        return result

    def line(self, text: str) -> None:
        if self.log is not None:
            self.log(f"[export] {text}")


class _Staging:
    """A temporary folder inside ``out`` for one export run. :meth:`commit` moves its files into
    ``out`` (the summary JSON last); leaving the block without a commit (an error, Ctrl-C)
    removes it, and removes ``out`` and its parents again if this run created them."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.created: list[Path] = []
        self.dir = self.out

    def __enter__(self) -> _Staging:
        missing = [p for p in (self.out, *self.out.parents) if not p.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise M2DetError(f"cannot create output folder {self.out}: {e.strerror or e}"
                             ) from None
        self.created = missing  # deepest first
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=".m2det-export-", dir=self.out))
        except OSError as e:
            self._remove_created()
            raise M2DetError(f"output folder {self.out} is not writable: {e.strerror or e}"
                             ) from None
        return self

    def commit(self) -> None:
        files = sorted(self.dir.iterdir(), key=lambda f: (f.name.endswith("_export.json"),
                                                          f.name))  # fmt: skip
        for f in files:
            os.replace(f, self.out / f.name)
        self.dir.rmdir()
        self.created = []

    def __exit__(self, *exc: object) -> None:
        if self.dir != self.out and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self.created:
            try:
                folder.rmdir()  # only while empty
            except OSError:
                break
        self.created = []


def _versions() -> dict[str, str]:
    import modelopt
    import onnxruntime
    import onnxslim

    return {"m2det": m2det.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxslim": onnxslim.__version__,
            "modelopt": modelopt.__version__}  # fmt: skip
