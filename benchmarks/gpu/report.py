"""The GPU script's JSON: ``OUT_DIR/gpu.json`` on a CUDA machine, ``OUT_DIR/gpu.dry-run.json``
in a dry run, rewritten atomically after every step so a run stopped at its time limit still
leaves what it measured.

Shape (more fields are welcome): ``{"gpu", "torch", "cuda", "softnms_kernel": {"cases",
"mismatches", "ms_per_image": {"320", ...}, "speedup_vs_cpu"}, "end_to_end": [{"size", "batch",
"precision", "path", "fps", "p50_ms", "p99_ms"}, ...], "official_pipeline": [{"size", "batch",
"fps"}, ...], "compute_floor_ms": {"320", ...}}``, plus ``steps`` (status and seconds of each
step), ``targets`` (the issue's targets against what was measured) and the details of each step.

A dry run's figures come from CPU stand-ins. They are written only to ``gpu.dry-run.json``, with
``"dry_run": true`` at the top and a ``stand_in`` label on every timing; ``write`` refuses to
write such a report as ``gpu.json`` or into ``benchmarks/results``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m2det.errors import M2DetError
from m2det.io import atomic_write_json

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
#: The issue's targets: batch-1 FPS per size, ratio to the official pipeline, soft-NMS.
FPS_TARGETS = {320: 600.0, 512: 400.0, 800: 250.0}
OFFICIAL_RATIO_TARGET = 10.0
NMS_MS_TARGET = 1.0
NMS_SPEEDUP_TARGET = 50.0
#: The issue's compute floor (its FLOPs over about 790 TFLOP/s), kept beside the measured one.
ISSUE_FLOOR_MS = {"320": 0.19, "512": 0.48, "800": 1.16}


def new_report(dry_run: bool) -> dict[str, Any]:
    """An empty report in the issue's shape."""
    return {
        "dry_run": dry_run,
        "gpu": None, "torch": None, "cuda": None,
        "softnms_kernel": {"cases": 0, "mismatches": 0, "ms_per_image": {},
                           "speedup_vs_cpu": None},
        "end_to_end": [],
        "official_pipeline": [],
        "compute_floor_ms": {},
        "steps": {},
    }


def file_name(dry_run: bool) -> str:
    return "gpu.dry-run.json" if dry_run else "gpu.json"


def _has_stand_in(obj: Any) -> bool:
    if isinstance(obj, dict):
        return "stand_in" in obj or any(_has_stand_in(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_stand_in(v) for v in obj)
    return False


def write(report: dict[str, Any], out_dir: Path) -> Path:
    """Write ``report`` atomically into ``out_dir`` under ``file_name``; refuse to publish
    stand-in figures as results."""
    dry_run = bool(report["dry_run"])
    out_dir = out_dir.resolve()
    if not dry_run and _has_stand_in(report):
        raise M2DetError("refusing to write gpu.json: it holds CPU stand-in figures")
    if dry_run and (out_dir == RESULTS_DIR or RESULTS_DIR in out_dir.parents):
        raise M2DetError(f"refusing to write a dry run into {RESULTS_DIR}: dry-run figures "
                         "are code-path checks, not results")
    path = out_dir / file_name(dry_run)
    atomic_write_json(path, report)
    return path


def evaluate_targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets with the measured value and whether it is met (None: not measured)."""
    def met(value: float | None, ok: bool) -> dict[str, Any]:
        return {"measured": value, "met": None if value is None else ok}

    best = {r["size"]: r for r in report["end_to_end"]
            if r.get("variant") == "best" and r["batch"] == 1 and "stand_in" not in r}
    official = {r["size"]: r["fps"] for r in report["official_pipeline"] if "stand_in" not in r}
    out: dict[str, Any] = {}
    for size, target in FPS_TARGETS.items():
        fps = best[size]["fps"] if size in best else None
        out[f"batch1_fps_{size}>={target:g}"] = met(fps, fps is not None and fps >= target)
        ratio = fps / official[size] if fps is not None and size in official else None
        out[f"vs_official_{size}>={OFFICIAL_RATIO_TARGET:g}x"] = met(
            ratio, ratio is not None and ratio >= OFFICIAL_RATIO_TARGET)
    nms = report["softnms_kernel"]
    for size, ms in nms.get("ms_per_image", {}).items():
        out[f"softnms_ms_{size}<={NMS_MS_TARGET:g}"] = met(ms, ms is not None
                                                          and ms <= NMS_MS_TARGET)
    speedup = nms.get("speedup_vs_cpu")
    out[f"softnms_speedup>={NMS_SPEEDUP_TARGET:g}x"] = met(
        speedup, speedup is not None and speedup >= NMS_SPEEDUP_TARGET)
    out["fuzz_mismatches==0"] = met(nms.get("mismatches") if nms.get("cases") else None,
                                    nms.get("mismatches") == 0)
    return out
