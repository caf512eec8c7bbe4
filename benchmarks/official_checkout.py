"""The user's checkout of the official M2Det code (github.com/qijiezhao/M2Det): checked, read and
its Cython compiled here, for every side-by-side run against it (``m2det-bench --official``,
``python -m m2det.benchmarks.nms_cpu --official``, the GPU suite's carried copy). Nothing of that
code ships with this package; it is read from the folder the user names.

The 2019 ``utils/nms/cpu_nms.pyx`` uses three NumPy aliases that NumPy 2 / Cython 3 reject;
:func:`numpy2_source` respells exactly those (each must be found as often as in the released
file), so the arithmetic compiled is the released one. :func:`compile_cython` builds the way the
official ``utils/build.py`` does (setuptools + Cython, the interpreter's flags plus
``-Wno-cpp -Wno-unused-function``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

from m2det.errors import M2DetError

#: The official Cython NMS source, relative to the checkout.
PYX = "utils/nms/cpu_nms.pyx"
#: NumPy 2 / Cython 3 spellings of the aliases the released .pyx uses (old, new, expected count).
NUMPY2_RESPELLINGS = (
    ("np.int_t", "np.intp_t", 2),
    ("dtype=np.int)", "dtype=np.intp)", 1),
    ("np.float thresh", "float thresh", 1),
)
#: The compile flags the official ``utils/build.py`` adds to the interpreter's own.
OFFICIAL_CFLAGS = ("-Wno-cpp", "-Wno-unused-function")

_SETUP = """\
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
ext = [Extension(n, [n + ".pyx"], include_dirs=[np.get_include()],
                 extra_compile_args={flags!r}) for n in {names!r}]
setup(ext_modules=cythonize(ext, language_level=3, quiet=True),
      script_args=["build_ext", "--inplace"])
"""


def check_checkout(root: str | Path, needed: Sequence[str] = (PYX,)) -> Path:
    """``root`` if it holds the files ``needed`` (relative paths), else a one-line M2DetError."""
    path = Path(root)
    if not path.is_dir():
        raise M2DetError(f"official M2Det checkout not found: {path}")
    missing = [f for f in needed if not (path / f).is_file()]
    if missing:
        raise M2DetError(f"{path} is not a checkout of qijiezhao/M2Det (missing "
                         f"{', '.join(missing)})")  # fmt: skip
    return path


def require_cython() -> None:
    """A one-line M2DetError where Cython is missing (checked before any long work)."""
    if importlib.util.find_spec("Cython") is None:
        raise M2DetError("building the official Cython soft-NMS needs Cython: pip install cython")


def numpy2_source(pyx: str) -> str:
    """The official ``cpu_nms.pyx`` text with :data:`NUMPY2_RESPELLINGS` applied (each must
    match as often as in the released file)."""
    for old, new, count in NUMPY2_RESPELLINGS:
        if pyx.count(old) != count:
            raise M2DetError(f"cpu_nms.pyx differs from the known official file ({old!r} found "
                             f"{pyx.count(old)} times, expected {count})")  # fmt: skip
        pyx = pyx.replace(old, new)
    return pyx


def compile_cython(sources: Mapping[str, str], parent: Path) -> dict[str, ModuleType]:
    """Compile the Cython ``sources`` (module name -> text) under ``parent/<hash of sources>``
    (reused when already built there) and import them; M2DetError without Cython or when the
    compiler fails."""
    require_cython()
    key = hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()[:16]
    folder = parent / f"official_cython_{key}"
    folder.mkdir(parents=True, exist_ok=True)

    def built(name: str) -> list[Path]:
        return sorted(folder.glob(f"{name}.*.so")) or sorted(folder.glob(f"{name}*.pyd"))

    if not all(built(n) for n in sources):
        for name, text in sources.items():
            (folder / f"{name}.pyx").write_text(text)
        setup = _SETUP.format(names=tuple(sources), flags=list(OFFICIAL_CFLAGS))
        run = subprocess.run([sys.executable, "-c", setup], cwd=folder, capture_output=True,
                             text=True, check=False)  # fmt: skip
        if run.returncode != 0 or not all(built(n) for n in sources):
            tail = (run.stdout + run.stderr).strip().splitlines()[-6:] or ["no output"]
            raise M2DetError("building the official Cython code failed: " + " | ".join(tail))
    return {name: import_file(built(name)[0], name) for name in sources}


def import_file(path: Path, name: str, register: bool = False) -> ModuleType:
    """Import the module file ``path`` (Python or compiled) as ``name``; ``register``: enter it
    in ``sys.modules`` before it runs (for code that imports itself by that name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise M2DetError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def git_commit(checkout: Path) -> str | None:
    """The checkout's commit (None where it is not a git work tree)."""
    run = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                         text=True, check=False)  # fmt: skip
    return (run.stdout.strip() or None) if run.returncode == 0 else None
