"""The JSON sidecar ``<plan>.json`` written beside every plan: what a runner needs to know about
it (TensorRT version, GPU, precision, input size, batch profile, config, NMS attributes, source
ONNX hash). Plans themselves are written plain, so trtexec and Triton load them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from m2det.contract import PLAN_SIDECAR_FORMAT
from m2det.errors import M2DetError
from m2det.io import atomic_write_json


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
    if not isinstance(data, dict) or data.get("format") != PLAN_SIDECAR_FORMAT:
        raise M2DetError(f"{path}: not an m2det plan sidecar (format {PLAN_SIDECAR_FORMAT!r})")
    return data



def write_sidecar(plan: str | Path, fields: dict[str, Any]) -> Path:
    """Write ``fields`` (plus the format tag) atomically beside ``plan``; returns the path."""
    path = sidecar_path(plan)
    atomic_write_json(path, {"format": PLAN_SIDECAR_FORMAT, **fields})
    return path
