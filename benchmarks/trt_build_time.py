"""Plan build time per exported file kind, with ``build_engine`` (what ``m2det-build`` runs).

Run ``python -m m2det.benchmarks.trt_build_time [--target tensorrt-rtx] [--repeats N]
[--batch 1:4:8] [--out PATH]``. The bundled ``m2det_tiny`` checkpoint is exported once per NMS
graph kind through ``export_model`` (FP32, FP16, INT8 raw graphs and their soft-NMS plugin graphs,
the hard-NMS plugin graph, the ``onnx-hard`` graph; INT8 calibrated on a few seeded random
images: the build does not depend on their content), then each file is built ``--repeats`` times.
A figure is the wall time of one ``build_engine`` call (parse + build + writing plan and sidecar)
and the CPU time of the process over it; a kind the target refuses is recorded with its one-line
error. The JSON (machine, load average, versions, command, figures) goes to
``benchmarks/results/trt_build_time_<target>.json``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m2det.benchmarks.environment import environment
from m2det.cli import make_parser, run_cli
from m2det.engines.batch_profile import BatchProfile
from m2det.engines.builder import build_engine
from m2det.engines.plan_sidecar import read_sidecar
from m2det.engines.plugin_library import resolve_plugin_library
from m2det.engines.trt_target import TARGETS, resolve_target
from m2det.errors import M2DetError
from m2det.io import atomic_write_json

PROG = "trt_build_time"
RESULTS = Path(__file__).parent / "results"
CHECKPOINT = Path(__file__).resolve().parents[1] / "m2det" / "assets" / "m2det_tiny_shapes.pth"
#: file kind -> (NMS graph of the export run, ExportResult key)
KINDS = {"fp32": ("soft", "fp32"), "fp16": ("soft", "fp16"), "int8": ("soft", "int8"),
         "soft-fp32": ("soft", "nms"), "soft-fp16": ("soft", "fp16_nms"),
         "soft-int8": ("soft", "int8_nms"), "hard-fp32": ("hard", "nms"),
         "onnx-hard-fp32": ("onnx-hard", "onnxnms")}  # fmt: skip


def export_kinds(out: Path, checkpoint: Path = CHECKPOINT) -> dict[str, Path]:
    """Every file kind of :data:`KINDS`, exported under ``out`` by ``export_model``."""
    from m2det.export.pipeline import ExportOptions, export_model

    calib = np.random.default_rng(0).uniform(0, 255, (4, 3, 160, 160)).astype(np.float32)
    runs: dict[str, dict[str, Any]] = {
        "soft": {"fp16": True, "int8": True, "calib_images": calib}, "hard": {}, "onnx-hard": {}}
    results = {graph: export_model(ExportOptions(checkpoint, out / graph, nms_graph=graph,
                                                 quiet=True, **extra), log=None)
               for graph, extra in runs.items()}  # fmt: skip
    return {kind: results[run].path(key) for kind, (run, key) in KINDS.items()}


def time_builds(files: dict[str, Path], target: str, batch: str, repeats: int,
                plugin_lib: Path | None, work: Path) -> list[dict[str, Any]]:
    """One row per kind: median/min wall and CPU seconds of ``build_engine``, plan size, or the
    refusal."""
    rows = []
    for kind, path in files.items():
        wall, cpu, error, plan = [], [], None, work / f"{kind}.plan"
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                build_engine(path, plan, batch=batch, target=target, plugin_lib=plugin_lib,
                             progress=False)  # fmt: skip
            except M2DetError as e:
                error = str(e)
                break
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        row: dict[str, Any] = {"kind": kind, "onnx": path.name,
                               "onnx_mb": round(path.stat().st_size / 1e6, 2)}  # fmt: skip
        if error is not None:
            row["refused"] = error
        else:
            meta = read_sidecar(plan)
            row.update(build_s_median=round(statistics.median(wall), 3),
                       build_s_min=round(min(wall), 3),
                       cpu_s_median=round(statistics.median(cpu), 3),
                       plan_mb=round(plan.stat().st_size / 1e6, 2),
                       compute_capabilities=meta["compute_capabilities"])  # fmt: skip
        rows.append(row)
        shown = row.get("refused") or (f"{row['build_s_median']:6.2f} s  (cpu "
                                        f"{row['cpu_s_median']:.2f} s, {row['plan_mb']} MB)")
        print(f"{kind:16s} {shown}", flush=True)
    return rows


def _run(argv: Sequence[str] | None) -> int:
    p = make_parser(PROG, __doc__.splitlines()[0])
    p.add_argument("--target", choices=TARGETS, help="default: the first installed")
    p.add_argument("--batch", default="1:4:8", help="batch profile MIN:OPT:MAX")
    p.add_argument("--repeats", type=int, default=3, help="builds per kind (median)")
    p.add_argument("--plugin-lib", type=Path, help="soft-NMS plugin library (default: as "
                   "m2det-build finds it)")  # fmt: skip
    p.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/"
                   "trt_build_time_<target>.json)")  # fmt: skip
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise M2DetError(f"--repeats must be >= 1, got {args.repeats}")
    BatchProfile.parse(args.batch)
    target = resolve_target(args.target)
    lib = resolve_plugin_library(args.plugin_lib)
    if lib is None:
        raise M2DetError("the NMS graphs need the plugin library: build plugins/ or pass "
                         "--plugin-lib")  # fmt: skip
    out = args.out or RESULTS / f"trt_build_time_{target.name}.json"
    with tempfile.TemporaryDirectory(prefix="m2det-build-time-") as tmp:
        t0 = time.perf_counter()
        files = export_kinds(Path(tmp))
        export_s = round(time.perf_counter() - t0, 1)
        print(f"exported {len(files)} files in {export_s} s; building each {args.repeats}x "
              f"with {target.display} {target.version}", flush=True)  # fmt: skip
        rows = time_builds(files, target.name, args.batch, args.repeats, lib, Path(tmp))
    atomic_write_json(out, {
        "benchmark": "m2det-build (build_engine) time per exported file kind",
        "target": target.name, "library_version": target.version, "batch": args.batch,
        "repeats": args.repeats, "checkpoint": CHECKPOINT.name, "export_s": export_s,
        "units": "seconds per build_engine call: wall (median, min) and process CPU (median)",
        "environment": environment(["python", "-m", "m2det.benchmarks.trt_build_time",
                                    *(argv if argv is not None else sys.argv[1:])]),
        "results": rows,
    })  # fmt: skip
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m m2det.benchmarks.trt_build_time``."""
    return run_cli(PROG, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
