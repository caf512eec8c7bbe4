"""The wheel installs one import namespace (``m2det``): the repository's export/, engines/ and
benchmarks/ folders become m2det.export, m2det.engines and m2det.benchmarks, the compiled
post-processing m2det/_postprocess*.so is inside it, and no other top-level name (``export``,
``engines``, ``benchmarks``, a stray extension) lands in a user's site-packages. The wheel is
built by the project's backend (scikit-build-core + CMake from plugins/) and installed into a
fresh venv, away from the source tree, where the extension must import."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _site_packages(python: Path) -> Path:
    out = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    return Path(out.strip())


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _tracked_copy(dest: Path) -> Path:
    """The repository's tracked files copied to ``dest`` (a build there leaves the tree clean)."""
    files = _run("git", "ls-files", "-z", cwd=ROOT).split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
def test_wheel_adds_only_the_m2det_namespace(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout of the project (to list its tracked files)")
    src = _tracked_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    # The build backend from this environment when it has it, else pip fetches it (PyPI); the
    # CUDA library is left out here: it is no namespace question and nvcc is slow.
    backend = ["--no-build-isolation"] if _has("scikit_build_core", "nanobind") else []
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *backend,
         "-Ccmake.define.M2DET_WITH_CUDA=OFF", "-w", dist, src)  # fmt: skip
    (wheel,) = dist.glob("m2det_deploy-*.whl")

    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env)
    python = env / "bin" / "python"
    site = _site_packages(python)
    before = {p.name for p in site.iterdir()}
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel)
    added = {p.name for p in site.iterdir()} - before

    names = {n.split(".")[0] for n in added if not n.endswith((".dist-info", ".pth"))}
    names.discard("__pycache__")
    assert names == {"m2det"}, f"the wheel adds top-level names {sorted(names)}"
    assert len(list((site / "m2det").glob("_postprocess*.so"))) == 1, "no compiled extension"
    out = _run(python, "-c", "import m2det._postprocess as p; print(p.available_threads())",
               cwd=tmp_path)  # outside the source tree: the installed copy
    assert int(out) >= 1
    for sub in ("export", "engines", "benchmarks"):
        assert (site / "m2det" / sub / "__init__.py").is_file(), f"m2det.{sub} is not installed"
    assert (site / "m2det" / "benchmarks" / "schema.json").is_file()
    assert (site / "m2det" / "engines" / "triton" / "python_model.py").is_file()
    assert (site / "m2det" / "assets" / "m2det_tiny_shapes.pth").is_file()
    # console scripts point into the namespace
    entry_points = next(site.glob("m2det_deploy-*.dist-info")) / "entry_points.txt"
    targets = [line.split("=", 1)[1].strip() for line in entry_points.read_text().splitlines()
               if "=" in line]  # fmt: skip
    assert targets and all(t.startswith("m2det.") for t in targets), targets


def test_no_extra_installs_two_onnx_runtimes() -> None:
    """onnxruntime and onnxruntime-gpu install the same ``onnxruntime`` module over each other, and
    ``nvidia-modelopt[onnx]`` requires onnxruntime-gpu on Linux x86-64: no combination of this
    project's extras may name both runtimes, directly or through that extra."""
    import re

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]

    def names(requirements: list[str], seen: frozenset[str] = frozenset()) -> set[str]:
        found: set[str] = set()
        for req in requirements:
            name = re.split(r"[<>=!~; ]", req, maxsplit=1)[0].lower()
            base, _, extra = name.partition("[")
            if base == "m2det-deploy":  # an extra that includes other extras
                for sub in extra.rstrip("]").split(","):
                    if sub not in seen:
                        found |= names(extras[sub], seen | {sub})
            else:
                found.add(name)
        return found

    every = names(project["dependencies"]) | names([r for e in extras.values() for r in e])
    assert "nvidia-modelopt[onnx]" not in every
    assert not {"onnxruntime", "onnxruntime-gpu"} <= every, sorted(every)
    assert "onnxruntime" in names(extras["export"])
