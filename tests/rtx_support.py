"""Shared by the tests that build with the real TensorRT-RTX (``test_trt_rtx_*.py``): the target,
the soft-NMS plugin library (+ the parser alias), and the plugin's fields as serialized in a plan.

TensorRT-RTX's builder runs without a GPU (its ahead-of-time phase), so these tests run on CI once
``tensorrt-rtx-cu13`` is installed (the ``[test]`` extra); they skip when it is not.
"""

from __future__ import annotations

import glob
import os
import shutil
import struct
from pathlib import Path

import pytest

from m2det import contract
from m2det.engines import soft_nms_kernel as snk
from m2det.engines.plugin_library import PLUGIN_LIBRARY, RTX_ALIAS_LIBRARY
from m2det.engines.trt_target import TENSORRT_RTX, TrtTarget, resolve_target


def rtx_target() -> TrtTarget:
    """The installed TensorRT-RTX (skip the test without it)."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed")
    return resolve_target(TENSORRT_RTX)


def _include_dir() -> str | None:
    """Headers for the plugin: those ``test_plugin.py`` uses (so both share one incremental
    build), else TensorRT-RTX's (``$TensorRT_RTX_INCLUDE_DIR``, ``~/.cache/tensorrt-rtx/*/``)."""
    from test_plugin import tensorrt_include_dir

    found = tensorrt_include_dir()
    if found:
        return found
    env = os.environ.get("TensorRT_RTX_INCLUDE_DIR")
    candidates = [env] if env else glob.glob(os.path.expanduser("~/.cache/tensorrt-rtx/*/include"))
    return next((c for c in candidates if Path(c, "NvInferRuntime.h").is_file()), None)


def plugin_library() -> Path:
    """``libm2det_plugins.so`` built (incrementally) where ``test_plugin.py`` builds it, with the
    TensorRT-RTX parser alias beside it; skip without cmake, nvcc or TensorRT headers."""
    from test_plugin import BUILD_DIR

    missing = [tool for tool in ("cmake", "nvcc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH: cannot build plugins/")
    include = _include_dir()
    if include is None:
        pytest.skip("no TensorRT headers for the plugin (see plugins/check_trt_headers.sh)")
    import tensorrt_rtx_libs  # the pip package holding libtensorrt_rtx.so.1

    rtx_lib = Path(tensorrt_rtx_libs.__file__).parent / "libtensorrt_rtx.so.1"
    snk.build_libraries(BUILD_DIR, cuda_architectures="90",
                        extra_args=(f"-DTensorRT_INCLUDE_DIR={include}",
                                    "-DM2DET_WARNINGS_AS_ERRORS=ON",
                                    f"-DTensorRT_RTX_LIBRARY={rtx_lib}"))  # fmt: skip
    lib = BUILD_DIR / PLUGIN_LIBRARY
    assert lib.is_file() and (BUILD_DIR / RTX_ALIAS_LIBRARY).is_file()
    return lib


#: PluginFieldType -> (struct format, bytes) of the types the plugin serializes.
_FIELD_TYPES = {1: ("<f", 4), 5: ("<i", 4)}  # FLOAT32, INT32
FIELD_TYPE_NAMES = {1: "FLOAT32", 5: "INT32"}


def serialized_plugin_fields(plan: bytes) -> dict[str, tuple[str, float | int]]:
    """The soft-NMS plugin's fields as the builder serialized them into ``plan`` (what the runtime
    hands the plugin creator when it deserializes the plan): name -> (field type, value).

    Read from the field records observed in TensorRT-RTX 1.7 plans: ``u32 len(name)+1``, the
    name NUL-terminated, ``u32 PluginFieldType``, ``u32 count``, the values. Each of the 8
    attributes must appear exactly once with one value."""
    fields: dict[str, tuple[str, float | int]] = {}
    for name in contract.PLUGIN_FLOAT_ATTRIBUTES + contract.PLUGIN_INT_ATTRIBUTES:
        key = struct.pack("<I", len(name) + 1) + name.encode() + b"\0"
        at = plan.find(key)
        assert at >= 0 and plan.find(key, at + 1) < 0, f"field {name} not serialized once"
        kind, count = struct.unpack_from("<II", plan, at + len(key))
        assert kind in _FIELD_TYPES and count == 1, (name, kind, count)
        fmt, _ = _FIELD_TYPES[kind]
        fields[name] = (FIELD_TYPE_NAMES[kind], struct.unpack_from(fmt, plan, at + len(key) + 8)[0])
    return fields
