"""The official M2Det pipeline (github.com/qijiezhao/M2Det) as a runner, for side-by-side
measurements against ours on the same machine, images and weights.

It runs the official code from a checkout the user names (``m2det-bench --official DIR``);
nothing of it is part of this project. What runs is what its ``test.py`` does per image: the
model from its ``m2det.py`` in FP32 eager PyTorch (``build_net("test")``, softmax inside), its
prior boxes (``PriorBox``), its decode (``Detect``), then per class the score threshold and its
compiled Cython ``cpu_soft_nms`` (``utils/nms/cpu_nms.pyx``, built here from the checkout with
Cython) with the settings of its config file (``test_cfg``: score threshold, IoU passed as
sigma, linear method, top ``keep_per_class``). Weights are ours, converted to the official layout
(``m2det.checkpoint.ours_to_official``).

Two adaptations, both measured-neutral or recorded: the resize is done by the harness with
``cv2.resize`` INTER_LINEAR exactly as the official ``BaseTransform`` does (its mean subtraction
is timed here, as part of the network); and since a runner sees the S x S network input, not the
original image, boxes are scaled to S pixels (not the original image's) for the soft-NMS, whose
areas use the "+1" pixel convention.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

from m2det.benchmarks import official_checkout
from m2det.benchmarks.official_checkout import PYX
from m2det.config import M2DetConfig
from m2det.detections import Detections
from m2det.engines.base import Runner, Timing, check_batch, now_ms
from m2det.errors import M2DetError
from m2det.nms import NMSParams

#: Files of the checkout this module uses (``configs/<config>.py`` besides).
OFFICIAL_FILES = ("m2det.py", "data/anchors.py", "layers/functions/__init__.py",
                  "layers/functions/detection.py", "layers/functions/prior_box.py",
                  "utils/box_utils.py", PYX)  # fmt: skip
_modules: dict[str, Any] = {}


def check_checkout(repo: str | Path) -> Path:
    """``repo`` if it holds the official files this runner needs and Cython is installed, else a
    one-line M2DetError (checked before any export or calibration)."""
    path = official_checkout.check_checkout(repo, OFFICIAL_FILES)
    official_checkout.require_cython()
    return path


def build_soft_nms(repo: str | Path, work: Path | None = None) -> Any:
    """The checkout's ``cpu_nms`` Cython module (NumPy-2 respellings applied), compiled in
    ``work`` (reused when already built there; default: a temporary folder) and imported."""
    source = official_checkout.numpy2_source((check_checkout(repo) / PYX).read_text())
    parent = work or Path(tempfile.mkdtemp(prefix="m2det-official-"))
    return official_checkout.compile_cython({"official_cpu_nms": source},
                                            parent)["official_cpu_nms"]


def import_official(repo: str | Path) -> dict[str, Any]:
    """The official modules this runner uses: ``m2det`` (model), ``anchors`` (mk_anchors),
    ``Detect``, ``PriorBox``. Their unused torchvision / training imports are stubbed (torchvision
    is never installed here); the checkout goes on ``sys.path`` for its own package imports."""
    path = official_checkout.check_checkout(repo, OFFICIAL_FILES)  # Cython: only for the NMS
    if "m2det" in _modules:
        return _modules["m2det"]
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]
    tv.models = types.ModuleType("torchvision.models")  # type: ignore[attr-defined]
    utils = types.ModuleType("utils")
    utils.__path__ = [str(path / "utils")]  # type: ignore[attr-defined]
    core = types.ModuleType("utils.core")
    core.print_info = lambda *a, **k: None  # type: ignore[attr-defined]
    for name, module in {"torchvision": tv, "torchvision.transforms": tv.transforms,
                         "torchvision.models": tv.models, "utils": utils,
                         "utils.core": core}.items():  # fmt: skip
        sys.modules.setdefault(name, module)
    sys.path.insert(0, str(path))
    load = official_checkout.import_file
    out = {"m2det": load(path / "m2det.py", "official_m2det", register=True),
           "anchors": load(path / "data" / "anchors.py", "official_anchors", register=True)}
    functions = importlib.import_module("layers.functions")
    out["Detect"], out["PriorBox"] = functions.Detect, functions.PriorBox
    _modules["m2det"] = out
    return out




def official_config(cfg: M2DetConfig) -> dict[str, Any]:
    """``cfg`` as the ``m2det_config`` dict of the official config files."""
    return {"backbone": cfg.backbone, "net_family": "vgg" if cfg.backbone == "vgg16" else "res",
            "base_out": list(cfg.base_out), "planes": cfg.planes, "num_levels": cfg.num_levels,
            "num_scales": cfg.num_scales, "sfam": cfg.sfam, "smooth": cfg.smooth,
            "num_classes": cfg.num_classes}  # fmt: skip


def read_config_file(repo: Path, name: str) -> dict[str, Any]:
    """The dicts of the checkout's ``configs/<name>.py`` (``model``, ``test_cfg``, ...)."""
    file = repo / "configs" / f"{name}.py"
    if not file.is_file():
        known = ", ".join(sorted(p.stem for p in (repo / "configs").glob("m2det*.py")))
        raise M2DetError(f"the official code has no config {name!r} (it has {known})")
    values: dict[str, Any] = {}
    exec(compile(file.read_text(), str(file), "exec"), values)  # the checkout's own config
    return values


class OfficialRunner(Runner):
    """The official pipeline on checkpoint ``ckpt`` (our weights in its layout), CPU, FP32.

    ``nms`` is not used for the post-processing (the official config decides it); it is kept as
    the runner's record. ``work``: where the Cython module is compiled (default: a temporary
    folder)."""

    backend = "official"

    def __init__(self, repo: str | Path, ckpt: str | Path, nms: NMSParams, *,
                 work: Path | None = None) -> None:  # fmt: skip
        import torch

        from m2det.checkpoint import load_model, ours_to_official

        self.repo = check_checkout(repo)
        model = load_model(ckpt).eval()
        super().__init__(model.config, nms, precision="fp32")
        values = read_config_file(self.repo, model.config.name)
        mc, self.test_cfg = values["model"], values["test_cfg"]
        if mc["input_size"] != model.config.input_size:
            raise M2DetError(f"official config {model.config.name} is for input size "
                             f"{mc['input_size']}, the checkpoint for {model.config.input_size}")
        official = import_official(self.repo)
        self._soft_nms = build_soft_nms(self.repo, work).cpu_soft_nms
        net = official["m2det"].build_net("test", size=mc["input_size"],
                                          config=official_config(model.config))  # fmt: skip
        state = ours_to_official(model.state_dict(), model.config)
        net.load_state_dict(state, strict=True)
        self._net = net.eval()
        anchors = official["anchors"].mk_anchors(mc["input_size"], mc["input_size"],
                                                 mc["anchor_config"]["size_pattern"],
                                                 mc["anchor_config"]["step_pattern"])  # fmt: skip
        with torch.no_grad():
            self._priors = official["PriorBox"](anchors).forward()
        self._detect = official["Detect"](model.config.num_classes, values["loss"]["bkg_label"],
                                          anchors)  # fmt: skip
        self._means = np.array(mc["rgb_means"], np.float32).reshape(3, 1, 1)

    def infer(self, images: Any) -> Detections:
        """images [B,3,S,S] float32 BGR 0-255 (resized) -> Detections (normalized boxes)."""
        import torch

        check_batch(images, self.input_size)
        x = np.asarray(images, np.float32)
        size = float(self.input_size)
        network = nms = 0.0
        per_image = []
        for image in x:
            t0 = now_ms()
            with torch.no_grad():  # BaseTransform's mean subtraction, then test.py's image_forward
                out = self._net(torch.from_numpy(image - self._means)[None])
                boxes, scores = self._detect.forward(out, self._priors)
            boxes = (boxes[0] * size).numpy()
            scores = scores[0].numpy()
            t1 = now_ms()
            per_image.append(self._post_process(boxes, scores, size))
            network += t1 - t0
            nms += now_ms() - t1
        self.last_timing = Timing(network=network, nms=nms)
        return Detections.from_lists(per_image)

    def _post_process(self, boxes: np.ndarray, scores: np.ndarray,
                      size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """test.py's nms_process for one image: per class, candidates over the score threshold,
        cpu_soft_nms(dets, iou, method=1), the first keep_per_class kept (topk=0: no cap)."""
        cfg = self.test_cfg
        kept_boxes, kept_scores, kept_classes = [], [], []
        for j in range(1, self.config.num_classes):
            inds = np.where(scores[:, j] > cfg["score_threshold"])[0]
            if len(inds) == 0:
                continue
            dets = np.hstack((boxes[inds], scores[inds, j][:, None])).astype(np.float32, copy=False)
            keep = self._soft_nms(dets, cfg["iou"], method=1)[: cfg["keep_per_class"]]
            dets = dets[keep, :]
            kept_boxes.append(dets[:, :4] / size)
            kept_scores.append(dets[:, 4])
            kept_classes.append(np.full(len(dets), j - 1, np.int32))
        if not kept_scores:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
        b, s, c = (np.concatenate(v) for v in (kept_boxes, kept_scores, kept_classes))
        order = np.argsort(-s, kind="stable")
        return b[order].astype(np.float32), s[order].astype(np.float32), c[order]

