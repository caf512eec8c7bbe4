"""The official M2Det post-processing, taken at run time from the user's own checkout of
qijiezhao/M2Det (nothing of it ships with this package): its Cython ``cpu_soft_nms`` compiled in a
temporary folder twice, as released and with the "+1" pixel convention removed (then it runs our
float32 arithmetic, so its kept boxes can be checked against ours), and its Python
post-processing functions (``decode``, ``Detect``, ``nms``, ``nms_process``) compiled from their
source alone, without running the modules around them (their imports need CUDA builds and data
packages; ``utils/box_utils.py`` would switch torch's default tensor type on a GPU machine).

Needs Cython and a C compiler: the build is the official one
(:func:`m2det.benchmarks.official_checkout.compile_cython`), restricted to ``cpu_soft_nms``,
whose sibling ``cpu_nms`` needs NumPy-2 respellings.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from m2det.benchmarks.official_checkout import (
    PYX,
    check_checkout,
    compile_cython,
    git_commit,
    require_cython,
)
from m2det.errors import M2DetError

__all__ = ["OfficialCode", "build_soft_nms", "load_official", "official_image", "soft_nms_sources"]

NEEDED = (PYX, "utils/box_utils.py", "utils/core.py", "utils/nms_wrapper.py",
          "layers/functions/detection.py", "configs/m2det320_vgg.py")
PLUS_ONE = re.compile(r" \+ 1\)")  # "(x2 - x1 + 1)" and its five siblings in cpu_soft_nms
PLUS_ONE_COUNT = 6


@dataclass
class OfficialCode:
    """The official post-processing of one checkout.

    ``cpu_soft_nms``: as released; ``cpu_soft_nms_exact``: "+1" removed. ``detect``: a ``Detect``
    instance (decode in torch). ``nms_process(scores [A,81], boxes [A,4]) -> all_boxes`` (per class
    j >= 1 a [n,5] array x1,y1,x2,y2,score in emission order, keep_per_class applied) runs the
    official ``nms_process`` with ``test_cfg``; ``nms_process_exact`` the same on the exact build.
    """

    cpu_soft_nms: Callable[..., list[int]]
    cpu_soft_nms_exact: Callable[..., list[int]]
    detect: Any
    nms_process: Callable[[np.ndarray, np.ndarray], list[list[Any]]]
    nms_process_exact: Callable[[np.ndarray, np.ndarray], list[list[Any]]]
    test_cfg: dict[str, Any]
    commit: str | None
    cython: str


def _source(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise M2DetError(f"cannot read {path}: {e.strerror}") from None


def _definitions(path: Path, names: tuple[str, ...], namespace: dict[str, Any]) -> dict[str, Any]:
    """Compile only the top-level functions/classes ``names`` of ``path`` into ``namespace``."""
    tree = ast.parse(_source(path), str(path))
    nodes: list[ast.stmt] = [n for n in tree.body
                             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    missing = set(names) - {getattr(n, "name", "") for n in nodes}
    if missing:
        raise M2DetError(f"{path} has no {', '.join(sorted(missing))}: not the expected "
                         "qijiezhao/M2Det code")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def _test_cfg(path: Path) -> dict[str, Any]:
    """The ``test_cfg = dict(...)`` literals of a config file."""
    for node in ast.parse(_source(path), str(path)).body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "test_cfg"
                                                 for t in node.targets)
                and isinstance(node.value, ast.Call)):
            return {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords if kw.arg}
    raise M2DetError(f"{path} has no test_cfg = dict(...)")


def soft_nms_sources(pyx: str) -> tuple[str, str]:
    """(as released, "+1" removed) Cython sources holding only ``cpu_soft_nms`` and the module
    header (imports, inline helpers) of the official ``cpu_nms.pyx`` text ``pyx``."""
    start = pyx.find("\ndef cpu_soft_nms")
    first = pyx.find("\ndef ")
    if start < 0 or first < 0:
        raise M2DetError("cpu_nms.pyx has no cpu_soft_nms: not the expected qijiezhao/M2Det code")
    end = pyx.find("\ndef ", start + 1)
    function = pyx[start:end if end > 0 else len(pyx)]
    header = pyx[:first]
    exact, count = PLUS_ONE.subn(")", function)
    if count != PLUS_ONE_COUNT:
        raise M2DetError(f"cpu_soft_nms has {count} '+ 1)' terms, expected {PLUS_ONE_COUNT}: not "
                         "the expected qijiezhao/M2Det code")
    return header + function, header + exact


def build_soft_nms(pyx: str, workdir: Path) -> tuple[ModuleType, ModuleType]:
    """Compile the two ``cpu_soft_nms`` variants of ``pyx`` in ``workdir``; returns the modules
    (as released, "+1" removed)."""
    names = ("m2det_official_soft_nms", "m2det_official_soft_nms_exact")
    built = compile_cython(dict(zip(names, soft_nms_sources(pyx), strict=True)), workdir)
    return built[names[0]], built[names[1]]


def load_official(checkout: Path, workdir: Path) -> OfficialCode:
    """The official post-processing of ``checkout``, its Cython built in ``workdir``."""
    check_checkout(checkout, NEEDED)
    require_cython()
    import Cython
    released, exact = build_soft_nms(_source(checkout / PYX), workdir)
    decode = _definitions(checkout / "utils/box_utils.py", ("decode",), {"torch": torch})["decode"]
    detect_cls = _definitions(checkout / "layers/functions/detection.py", ("Detect",),
                              {"torch": torch, "decode": decode, "Function": object,
                               "Variable": None})["Detect"]
    cfg = _test_cfg(checkout / "configs/m2det320_vgg.py")

    def process(cpu_soft_nms: Callable[..., list[int]]) -> Callable[..., list[list[Any]]]:
        nms = _definitions(checkout / "utils/nms_wrapper.py", ("nms",),
                           {"cpu_soft_nms": cpu_soft_nms, "cpu_nms": None,
                            "gpu_nms": None})["nms"]
        nms_process = _definitions(checkout / "utils/core.py", ("nms_process",),
                                   {"np": np, "nms": nms})["nms_process"]
        test = _Namespace(test_cfg=_Namespace(**cfg))

        def run(scores: np.ndarray, boxes: np.ndarray) -> list[list[Any]]:
            all_boxes: list[list[Any]] = [[[]] for _ in range(scores.shape[1])]
            nms_process(scores.shape[1], 0, scores, boxes, test, cfg["score_threshold"],
                        all_boxes, cfg["topk"])
            return all_boxes

        return run

    return OfficialCode(released.cpu_soft_nms, exact.cpu_soft_nms,
                        detect_cls(81, 0, {"variance": [0.1, 0.2]}), process(released.cpu_soft_nms),
                        process(exact.cpu_soft_nms), cfg, git_commit(checkout), Cython.__version__)


class _Namespace:
    """Attribute access to keyword values (the official code reads ``cfg.test_cfg.iou``)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def official_image(code: OfficialCode, loc: torch.Tensor, conf: torch.Tensor,
                   priors: torch.Tensor, scale: torch.Tensor,
                   exact: bool = False) -> list[list[Any]]:
    """What the official ``test.py`` does after the network for one image: ``Detect.forward``
    (decode, loc [1,A,4], conf [A,81] softmax), boxes times ``scale`` [4] to numpy, then
    ``nms_process``. Returns ``all_boxes`` (classes 1..80)."""
    boxes, scores = code.detect.forward((loc, conf), priors)
    boxes_np = (boxes[0] * scale).cpu().numpy()
    scores_np = scores[0].cpu().numpy()
    return (code.nms_process_exact if exact else code.nms_process)(scores_np, boxes_np)

