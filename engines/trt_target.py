"""The two libraries ``m2det-build`` can build plans with, and what differs between them.

* ``tensorrt``: NVIDIA TensorRT 10/11 (Python module ``tensorrt``). Builds on, and for, the GPU of
  the machine it runs on; timing cache; version-compatible plans; TensorRT 10 needs the
  ``STRONGLY_TYPED`` network flag (TensorRT 11 is always strongly typed).
* ``tensorrt-rtx``: NVIDIA TensorRT for RTX (module ``tensorrt_rtx``, pip ``tensorrt-rtx-cu13``).
  Its builder is the ahead-of-time half of a two-phase compiler: it needs no GPU and targets a
  list of compute capabilities (7.5, 8.0, 8.6, 8.9, 12.0, 12.1 in 1.7; no Hopper); the plan is
  finished just in time on the user's GPU. Networks are always strongly typed (the flag is
  accepted and ignored). Measured with 1.7.1.116: the timing cache is a deprecated no-op (its
  API forces a GPU query, docs say), version-compatible plans fail (the builder looks for
  ``libnvinfer_lean.so.1``), no ``NonMaxSuppression`` layer can be built ("has no runners that
  implement it", any shape, dtype or target), plans start with ``vtrt``, a plan cannot be
  deserialized without a GPU, and its ONNX parser ``dlopen``s ``libtensorrt_rtx.so`` for plugin
  nodes (``m2det.engines.plugin_library.expose_tensorrt_rtx``).

The two Python APIs share their names for everything the builder calls, so ``builder.py`` is one
code path over ``TrtTarget.module``; the RTX-only calls are here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from m2det.errors import M2DetError

if TYPE_CHECKING:
    import tensorrt_rtx

TENSORRT = "tensorrt"
TENSORRT_RTX = "tensorrt-rtx"
#: ``--target`` choices; with neither given, the first one installed is used.
TARGETS = (TENSORRT, TENSORRT_RTX)
#: Python module and display name of each target.
MODULES = {TENSORRT: "tensorrt", TENSORRT_RTX: "tensorrt_rtx"}
NAMES = {TENSORRT: "TensorRT", TENSORRT_RTX: "TensorRT-RTX"}
INSTALL = {
    TENSORRT: "pip install 'm2det-deploy[trt]' (TensorRT 10/11: builds on an NVIDIA GPU)",
    TENSORRT_RTX: "pip install 'm2det-deploy[trt-rtx]' (TensorRT-RTX: builds without a GPU)",
}

#: Compute capabilities TensorRT-RTX 1.7 can target -> its ``ComputeCapability`` member.
RTX_COMPUTE_CAPABILITIES = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89",
                            "12.0": "SM120", "12.1": "SM121"}  # fmt: skip
#: What m2det-build targets by default: the RTX generations Ampere, Ada and Blackwell.
DEFAULT_RTX_COMPUTE_CAPABILITIES = ("8.6", "8.9", "12.0")
#: First bytes of every TensorRT-RTX plan (1.7.1; TensorRT's own plans start differently).
RTX_PLAN_MAGIC = b"vtrt"


@dataclass(frozen=True)
class TrtTarget:
    """An installed build target: its name (one of :data:`TARGETS`), module and version."""

    name: str
    module: Any
    version: str

    @property
    def rtx(self) -> bool:
        return self.name == TENSORRT_RTX

    @property
    def display(self) -> str:
        """``TensorRT`` or ``TensorRT-RTX``."""
        return NAMES[self.name]

    def network_flags(self) -> int:
        """Network creation flags: ``STRONGLY_TYPED`` on TensorRT 10 (TensorRT 11 and TensorRT-RTX
        are always strongly typed)."""
        from m2det.engines.trt_version import version_tuple

        if self.rtx or version_tuple(self.version)[:1] >= (11,):
            return 0
        return 1 << int(self.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def installed_module(name: str) -> ModuleType | None:
    """Target ``name``'s module when usable; None when missing (a stubs-only ``tensorrt``, as
    ``tensorrt-stubs`` installs it, counts as missing)."""
    try:
        module = importlib.import_module(MODULES[name])
    except ImportError:
        return None
    if getattr(module, "__version__", None) is None or not hasattr(module, "Builder"):
        return None
    return module


def resolve_target(name: str | None = None) -> TrtTarget:
    """The target ``name``, or the first of :data:`TARGETS` installed; one-line M2DetError when
    it (or every one) is missing, with the install line(s)."""
    if name is not None and name not in TARGETS:
        raise M2DetError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}")
    for candidate in [name] if name else TARGETS:
        module = installed_module(candidate)
        if module is not None:
            return TrtTarget(candidate, module, str(module.__version__))
    if name:
        raise M2DetError(f"{NAMES[name]} is not installed: {INSTALL[name]}")
    raise M2DetError("neither TensorRT nor TensorRT-RTX is installed: "
                     + "; or ".join(INSTALL[t] for t in TARGETS))  # fmt: skip


def parse_compute_capabilities(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"86,89,120"`` or ``"8.6,8.9,12.0"`` -> ("8.6", "8.9", "12.0") (sorted, unique); one-line
    M2DetError naming the valid values for anything TensorRT-RTX cannot target."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    valid = ", ".join(v.replace(".", "") for v in RTX_COMPUTE_CAPABILITIES)
    out: set[str] = set()
    for item in (i.strip() for i in items):
        cc = item if "." in item else (f"{item[:-1]}.{item[-1]}" if len(item) >= 2 else item)
        if cc not in RTX_COMPUTE_CAPABILITIES:
            raise M2DetError(f"TensorRT-RTX cannot target compute capability {item!r}; valid: "
                             f"{valid} (Hopper 9.0 is not supported)")  # fmt: skip
        out.add(cc)
    if not out:
        raise M2DetError(f"no compute capability given; valid: {valid}")
    return tuple(sorted(out, key=lambda c: tuple(int(p) for p in c.split("."))))


def set_compute_capabilities(config: tensorrt_rtx.IBuilderConfig,
                             capabilities: tuple[str, ...]) -> None:
    """Make a TensorRT-RTX builder config target exactly ``capabilities`` (ahead of time)."""
    import tensorrt_rtx as trtx

    config.num_compute_capabilities = len(capabilities)
    for i, cc in enumerate(capabilities):
        member = getattr(trtx.ComputeCapability, RTX_COMPUTE_CAPABILITIES[cc])
        if not config.set_compute_capability(member, i):
            raise M2DetError(f"TensorRT-RTX {trtx.__version__} refused compute capability {cc}")


def plan_library(head: bytes) -> str | None:
    """``tensorrt-rtx`` when a plan's first bytes are TensorRT-RTX's, else None (unknown)."""
    return TENSORRT_RTX if head.startswith(RTX_PLAN_MAGIC) else None
