"""Which TensorRT is installed, and whether a plan built by another version may run here."""

from __future__ import annotations

from pathlib import Path

from m2det.errors import M2DetError


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
