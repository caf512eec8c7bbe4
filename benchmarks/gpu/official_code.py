"""The official qijiezhao/M2Det code, carried beside the repository for side-by-side runs and
never committed: prepare a copy from a user-provided checkout, and build its Cython soft-NMS.

    python -m m2det.benchmarks.gpu.official_code /path/to/M2Det [--dest gpu-carry/official-m2det]

copies the files the official test pipeline imports (``m2det.py``, ``layers/``, ``utils/``,
``data/``, ``configs/``) plus its sample COCO images (``imgs/``, the real images the GPU script
times on) into ``--dest`` (git-ignored), writes ``PREPARED.json`` (source commit, file hashes) and,
when Cython and Python headers are present, prebuilds ``utils/nms/cpu_nms.abi3.so`` (stable ABI,
CPython >= 3.11, this machine's processor) as a fallback for a machine that cannot build it.

``build_cpu_nms`` compiles ``utils/nms/cpu_nms.pyx`` the way the official ``utils/build.py``
does (Cython, then the C compiler with Python's ``OPT`` flags), after the NumPy-2 respellings of
:mod:`m2det.benchmarks.official_checkout`; unlike ``official_checkout.compile_cython`` it calls
the compiler directly, so it can build a stable-ABI (abi3) module for another machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path

from m2det.benchmarks import official_checkout
from m2det.benchmarks.official_checkout import (  # noqa: F401 - NUMPY2_RESPELLINGS re-exported
    NUMPY2_RESPELLINGS,
    OFFICIAL_CFLAGS,
    git_commit,
    numpy2_source,
)
from m2det.cli import make_parser, run_cli
from m2det.errors import M2DetError
from m2det.io import atomic_write_json

#: Files and folders the official test pipeline needs (relative to the checkout).
NEEDED = ("m2det.py", "layers", "utils", "data", "configs", "imgs", "LICENSE", "README.md")
#: What must exist for a folder to count as an official checkout.
MARKERS = ("m2det.py", "layers/functions/detection.py", "utils/core.py", "utils/nms/cpu_nms.pyx",
           "utils/nms_wrapper.py", "data/anchors.py", "data/data_augment.py",
           "configs/m2det320_vgg.py")
DEFAULT_DEST = Path("gpu-carry") / "official-m2det"
MANIFEST = "PREPARED.json"
PYX = Path(official_checkout.PYX)


def check_checkout(root: Path) -> Path:
    """``root`` if it looks like an official checkout, else M2DetError naming what is missing."""
    return official_checkout.check_checkout(root, MARKERS)


def extension_path(root: Path, abi3: bool = False) -> Path:
    suffix = ".abi3.so" if abi3 else sysconfig.get_config_var("EXT_SUFFIX")
    return root / PYX.parent / f"cpu_nms{suffix}"


def build_cpu_nms(root: Path, abi3: bool = False) -> Path:
    """Compile the official Cython NMS into ``root/utils/nms`` for this interpreter (``abi3``:
    a stable-ABI module for CPython >= 3.11). Returns the module path; M2DetError when Cython,
    the Python headers or the compiler are missing or fail."""
    try:
        import Cython  # noqa: F401
        import numpy as np
    except ImportError as e:
        raise M2DetError(f"building the official soft-NMS needs Cython and numpy ({e})") from None
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        raise M2DetError(f"no Python.h in {include}: cannot build the official soft-NMS here")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise M2DetError("no C compiler (cc/gcc) on PATH: cannot build the official soft-NMS")
    source = numpy2_source((check_checkout(root) / PYX).read_text())
    out = extension_path(root, abi3)
    with tempfile.TemporaryDirectory(prefix="m2det-cpu-nms-") as tmp:
        pyx, c_file, so = Path(tmp, "cpu_nms.pyx"), Path(tmp, "cpu_nms.c"), Path(tmp, out.name)
        pyx.write_text(source)
        flags = (sysconfig.get_config_var("OPT") or "-O2").split()
        cmds = [
            [sys.executable, "-m", "cython", "-3", str(pyx), "-o", str(c_file)],
            [cc, "-shared", "-fPIC", *flags, *OFFICIAL_CFLAGS,
             *(["-DPy_LIMITED_API=0x030B0000"] if abi3 else []),
             "-I", str(include), "-I", np.get_include(), str(c_file), "-o", str(so)],
        ]
        for cmd in cmds:
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                tail = " | ".join((run.stdout + run.stderr).strip().splitlines()[-6:])
                raise M2DetError(f"building the official soft-NMS failed ({Path(cmd[0]).name}"
                                 f"{' -m cython' if cmd[0] == sys.executable else ''}): {tail}")
        shutil.copyfile(so, out)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(src: Path, dest: Path, prebuild: bool = True) -> dict[str, object]:
    """Copy the needed parts of the official checkout ``src`` into ``dest`` (replacing an
    earlier copy), optionally prebuild the abi3 module; returns the manifest written there."""
    src, dest = check_checkout(src.resolve()), dest.resolve()
    if dest == src or src in dest.parents:
        raise M2DetError(f"--dest {dest} must lie outside the checkout {src}")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in NEEDED:
            path = src / name
            if path.is_dir():
                shutil.copytree(path, tmp / name, ignore=shutil.ignore_patterns(
                    "*.so", "*.c", "build", "__pycache__", "*_m2det.jpg"))
            elif path.is_file():
                shutil.copy2(path, tmp / name)
        manifest: dict[str, object] = {
            "source": str(src), "commit": git_commit(src),
            "sha256": {m: _sha256(tmp / m) for m in ("m2det.py", str(PYX))},
            "prebuilt": None,
        }
        if prebuild:
            try:
                manifest["prebuilt"] = {
                    "file": str(build_cpu_nms(tmp, abi3=True).relative_to(tmp)),
                    "python": sys.version.split()[0], "abi": "abi3 (CPython >= 3.11)",
                }
            except M2DetError as e:
                manifest["prebuilt"] = {"error": str(e)}
        atomic_write_json(tmp / MANIFEST, manifest)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _main(argv: Sequence[str] | None) -> int:
    p = make_parser("official_code", "Prepare the git-ignored copy of the official M2Det code "
                    "that benchmarks/gpu/run.sh carries to the GPU machine.")
    p.add_argument("checkout", type=Path, help="a checkout of qijiezhao/M2Det")
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="where to put the copy")
    p.add_argument("--no-prebuild", action="store_true",
                   help="do not prebuild the abi3 fallback of the Cython soft-NMS")
    args = p.parse_args(argv)
    manifest = prepare(args.checkout, args.dest, prebuild=not args.no_prebuild)
    print(json.dumps(manifest, indent=2))
    size = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file())
    print(f"official_code: {args.dest} ready ({size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("official_code", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
