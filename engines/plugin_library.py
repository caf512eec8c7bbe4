"""The soft-NMS plugin library (``libm2det_plugins.so``, built from plugins/): where it is, and
registering it with TensorRT's plugin registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from m2det.contract import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from m2det.errors import M2DetError

if TYPE_CHECKING:
    import tensorrt


PLUGIN_LIBRARY = "libm2det_plugins.so"


def resolve_plugin_library(plugin_lib: str | Path | None) -> Path | None:
    """An explicit path (must exist), else ``$M2DET_PLUGIN_LIB``, else ``libm2det_plugins.so``
    in the soft-NMS build folder (``m2det.engines.soft_nms_kernel.library_dir()``) if built,
    else None."""
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
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None:
        return
    try:
        registry.load_library(str(lib))
    except Exception as e:  # noqa: BLE001 - TensorRT reports load failures as RuntimeError/TypeError
        raise M2DetError(f"TensorRT cannot load plugin library {lib}: {e}") from None
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise M2DetError(f"{lib} does not register plugin {PLUGIN_NAME} version {PLUGIN_VERSION}")
