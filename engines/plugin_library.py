"""The soft-NMS plugin library (``libm2det_plugins.so``, built from plugins/): where it is,
registering it with TensorRT's (or TensorRT-RTX's) plugin registry, and what TensorRT-RTX's ONNX
parser needs besides it."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import TYPE_CHECKING

from m2det.contract import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from m2det.errors import M2DetError

if TYPE_CHECKING:
    import tensorrt


PLUGIN_LIBRARY = "libm2det_plugins.so"
#: Built beside the plugin library when plugins/ finds TensorRT-RTX's library: no code, SONAME
#: ``libtensorrt_rtx.so``, one dependency ``libtensorrt_rtx.so.1`` (:func:`expose_tensorrt_rtx`).
RTX_ALIAS_LIBRARY = "libm2det_tensorrt_rtx_alias.so"
#: The name TensorRT-RTX's ONNX parser ``dlopen``s when it imports a plugin node.
RTX_DEV_NAME = "libtensorrt_rtx.so"


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


def _has_plugin(registry: tensorrt.IPluginRegistry) -> bool:
    """Whether the soft-NMS creator is registered (asked without ``get_creator``, which logs an
    error for a missing creator)."""
    return any((c.name, c.plugin_version, c.plugin_namespace)
               == (PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) for c in registry.all_creators)


def register_plugin_library(registry: tensorrt.IPluginRegistry, lib: Path) -> None:
    """Load ``lib`` into TensorRT's plugin registry (once per process: the registry refuses a
    library whose plugins are already registered) and check it provides the soft-NMS plugin."""
    if _has_plugin(registry):
        return
    try:
        registry.load_library(str(lib))
    except Exception as e:  # noqa: BLE001 - TensorRT reports load failures as RuntimeError/TypeError
        raise M2DetError(f"TensorRT cannot load plugin library {lib}: {e}") from None
    if not _has_plugin(registry):
        raise M2DetError(f"{lib} does not register plugin {PLUGIN_NAME} version {PLUGIN_VERSION}")


def expose_tensorrt_rtx(lib: Path) -> None:
    """Let TensorRT-RTX's ONNX parser find ``libtensorrt_rtx.so`` in this process.

    The parser links no TensorRT library. When it imports a plugin node it ``dlopen``s the runtime
    by that unversioned development name (and ``dlsym``s ``getPrivateApi_INTERNAL``); the pip
    wheel ships only ``libtensorrt_rtx.so.1``, so the lookup fails and the process aborts
    (``std::terminate``). The search path cannot be fixed from inside: ``LD_LIBRARY_PATH`` is read
    once at process start, and loading a symlink by path registers only that path. What works:
    the dynamic linker matches an already loaded library by its SONAME, so once the alias
    (``RTX_ALIAS_LIBRARY``, SONAME ``libtensorrt_rtx.so``) is loaded the parser's ``dlopen``
    returns it, and ``dlsym`` finds the symbols through its dependency ``libtensorrt_rtx.so.1``,
    the copy ``import tensorrt_rtx`` already loaded. The alias is looked up beside ``lib``, then
    in the soft-NMS build folder.
    """
    try:
        ctypes.CDLL(RTX_DEV_NAME, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        return  # the name already resolves to a loaded library
    except OSError:
        pass
    from m2det.engines.soft_nms_kernel import library_dir

    for alias in (lib.parent / RTX_ALIAS_LIBRARY, library_dir() / RTX_ALIAS_LIBRARY):
        if alias.is_file():
            try:
                ctypes.CDLL(str(alias))
                ctypes.CDLL(RTX_DEV_NAME, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
                return
            except OSError as e:
                raise M2DetError(f"cannot load {alias} ({e}); rebuild plugins/ with the "
                                 "installed tensorrt-rtx") from None  # fmt: skip
    raise M2DetError(f"TensorRT-RTX's ONNX parser needs {RTX_DEV_NAME} to import the plugin node "
                     f"and the pip package ships only {RTX_DEV_NAME}.1: rebuild plugins/ with "
                     f"tensorrt-rtx installed (it adds {RTX_ALIAS_LIBRARY} beside "
                     f"{PLUGIN_LIBRARY})")  # fmt: skip
