"""``m2det-triton model-env ENV``: a Python environment for the served models when this one has
numpy 2 (the bundled server's Python backend needs numpy < 2).

ENV is a venv over this Python's base interpreter (``--system-site-packages``) with numpy < 2 of
its own and a ``.pth`` file that adds this environment's site-packages after it
(``site.addsitedir``, so editable installs work too): the models see numpy < 2 first and every
other package (m2det, onnxruntime, opencv) from here. ``m2det-triton serve --model-env ENV`` (or
``$M2DET_TRITON_MODEL_ENV``) uses it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from m2det.engines.triton.server import ModelEnvironment, probe_environment
from m2det.errors import M2DetError

NUMPY = "numpy<2"
PTH_NAME = "m2det_parent_env.pth"


def _site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix),
                                                    "platbase": str(prefix)}))  # fmt: skip


def create_model_env(path: str | Path, numpy: str = NUMPY) -> ModelEnvironment:
    """Create the environment at ``path`` (which must not exist); on any failure nothing is left
    there. Installing ``numpy`` needs the package index (pip)."""
    env = Path(path).absolute()
    if env.exists():
        raise M2DetError(f"{env} exists: choose a new folder")
    try:
        venv.EnvBuilder(system_site_packages=True, symlinks=True, with_pip=False).create(env)
        site = _site_packages(env)
        parents = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
        (site / PTH_NAME).write_text("".join(f"import site; site.addsitedir({p!r})\n"
                                             for p in parents))  # fmt: skip
        run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", "--no-deps", "--ignore-installed",
                              "--prefix", str(env), numpy],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["?"])[-1]
            raise M2DetError(f"pip could not install {numpy!r} into {env}: {last}")
        return probe_environment(env)
    except BaseException:
        shutil.rmtree(env, ignore_errors=True)
        raise
