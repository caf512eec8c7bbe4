"""The official M2Det pipeline's way, timed per image: its model code in FP32 eager, its
``Detect`` decode and its CPU soft-NMS (Cython), driven by its own per-image functions
``utils/core.py: image_forward`` (preprocess with ``BaseTransform``, network, decode, copy to the
host) and ``nms_process`` (per class: score threshold, ``cpu_soft_nms``, keep 50), with the
values of its ``configs/m2det<S>_vgg.py``. Batch 1 only: the official ``Detect`` cannot run a
larger batch. The official code comes from a carried copy (``official_code.py``), never from this
repository.

It runs in a child process (``run_official`` starts ``python -m ...official_pipeline``): the
official ``utils/box_utils.py`` switches torch's default tensor type to CUDA on import and its
packages take the top-level names ``utils``, ``layers``, ``data`` and ``configs``, none of which
may leak into the parent. The child builds the weights itself (``seeded_model`` plus the
parent's calibration, converted with ``ours_to_official``), so both pipelines run the same
tensors.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import runpy
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from m2det.errors import M2DetError

#: Our preset for each official VGG config size.
PRESETS = {320: "m2det320_vgg", 512: "m2det512_vgg", 800: "m2det800_vgg"}


class AttrDict(dict):  # type: ignore[type-arg]
    """A dict whose keys read as attributes, recursively (what the official ``Config`` gives)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _attr(obj: Any) -> Any:
    if isinstance(obj, dict):
        return AttrDict({k: _attr(v) for k, v in obj.items()})
    return obj


def official_config(root: Path, size: int) -> AttrDict:
    """``configs/m2det<size>_vgg.py`` of the checkout as nested AttrDicts."""
    path = root / "configs" / f"m2det{size}_vgg.py"
    if not path.is_file():
        raise M2DetError(f"no official config for size {size}: {path}")
    values = runpy.run_path(str(path))
    return _attr({k: v for k, v in values.items() if k in ("model", "test_cfg", "loss")})


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def import_official(root: Path) -> types.SimpleNamespace:
    """The official pieces the test pipeline uses. Modules the pipeline imports but never calls
    (training data sets, the GPU NMS, the config loader, coloured printing) are empty stand-ins
    when they cannot be imported; torchvision too, where it is not installed."""
    sys.path.insert(0, str(root))
    stand_ins = {"termcolor": {"cprint": lambda *a, **k: None},
                 "torchvision": {}, "torchvision.transforms": {}, "torchvision.models": {}}
    for name, attrs in stand_ins.items():
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = _module(name, **attrs)
    sys.modules["configs"] = _module("configs", __path__=[str(root / "configs")])
    sys.modules["configs.CC"] = _module("configs.CC", Config=None)
    sys.modules["utils.nms.gpu_nms"] = _module("utils.nms.gpu_nms", gpu_nms=None)
    anchors = _load("official_anchors", root / "data" / "anchors.py")
    augment = _load("official_data_augment", root / "data" / "data_augment.py")
    sys.modules["data"] = _module(
        "data", __path__=[str(root / "data")], mk_anchors=anchors.mk_anchors,
        preproc=augment.preproc, BaseTransform=augment.BaseTransform, COCODetection=None,
        VOCDetection=None, detection_collate=None)
    core = importlib.import_module("utils.core")
    net_mod = _load("official_m2det", root / "m2det.py")
    functions = importlib.import_module("layers.functions")
    return types.SimpleNamespace(build_net=net_mod.build_net, Detect=functions.Detect,
                                 PriorBox=functions.PriorBox, BaseTransform=augment.BaseTransform,
                                 anchors=core.anchors, image_forward=core.image_forward,
                                 nms_process=core.nms_process)


def _child(args: argparse.Namespace) -> None:
    """Print one JSON line per size ({"row": ...}) as soon as it is measured, then
    {"torch": version}."""
    import cv2
    import torch

    from m2det.benchmarks.gpu.seeded_model import Calibration, apply_calibration, seeded_model
    from m2det.benchmarks.gpu.timer import stats
    from m2det.checkpoint import ours_to_official
    from m2det.config import get_config

    calibrations = json.loads(args.calibrations)
    states = {}
    for size_text, c in calibrations.items():  # our weights first, before the official imports
        ours = get_config(PRESETS[int(size_text)])
        model = apply_calibration(seeded_model(ours), Calibration(c["gain"], c["offset"], {}))
        states[int(size_text)] = ours_to_official(model.state_dict(), ours)
    images = [cv2.imread(p, cv2.IMREAD_COLOR) for p in args.images]
    if any(img is None for img in images):
        raise M2DetError("the official pipeline could not read an image")
    off = import_official(Path(args.root))
    cuda = args.device == "cuda"
    for size, state in states.items():
        cfg = official_config(Path(args.root), size)
        net = off.build_net("test", size=size, config=cfg.model.m2det_config)
        net.load_state_dict(state)
        net.eval()
        anchor_config = off.anchors(cfg)
        with torch.no_grad():
            priors = off.PriorBox(anchor_config).forward()
        if cuda:
            net, priors = net.cuda(), priors.cuda()
            torch.backends.cudnn.benchmark = True  # as the official test.py sets it
        num_classes = cfg.model.m2det_config.num_classes
        detector = off.Detect(num_classes, cfg.loss.bkg_label, anchor_config)
        transform = off.BaseTransform(size, cfg.model.rgb_means, (2, 0, 1))
        times: list[float] = []
        kept: list[int] = []
        stop = time.monotonic() + args.seconds_per_size
        for it in range(args.warmup + args.iters):
            if len(times) >= 3 and time.monotonic() > stop:
                break
            img = images[it % len(images)]
            all_boxes: list[list[Any]] = [[[]] for _ in range(num_classes)]
            t0 = time.perf_counter()
            boxes, scores = off.image_forward(img, net, cuda, priors, detector, transform)
            off.nms_process(num_classes, 0, scores, boxes, cfg, cfg.test_cfg.score_threshold,
                            all_boxes, cfg.test_cfg.topk)
            dt = (time.perf_counter() - t0) * 1e3
            if it >= args.warmup:
                times.append(dt)
                kept.append(sum(len(all_boxes[j][0]) for j in range(1, num_classes)))
        s = stats(times)
        row = {"size": size, "batch": 1, "precision": "fp32", "fps": 1e3 / s["mean_ms"],
               "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "mean_ms": s["mean_ms"],
               "iters": len(times), "warmup": args.warmup,
               "mean_kept_per_image": sum(kept) / len(kept)}
        print(json.dumps({"row": row}), flush=True)
        del net
        if cuda:
            torch.cuda.empty_cache()
    print(json.dumps({"torch": torch.__version__}), flush=True)


def _lines(out: str | bytes | None) -> list[dict[str, Any]]:
    text = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return found


def run_official(root: Path, calibrations: dict[int, dict[str, float]], images: list[Path],
                 device: str, iters: int, warmup: int, timeout_s: float) -> dict[str, Any]:
    """Time the official pipeline in a child process; ``calibrations``: size -> {"gain",
    "offset"} of ``seeded_model.Calibration``. Each size gets about an equal share of
    ``timeout_s`` (at least 3 timed images). Returns {"rows": [...], "torch": version,
    "complete": bool}; the sizes measured before a timeout are kept."""
    share = max(1.0, 0.6 * timeout_s / max(1, len(calibrations)))
    cmd = [sys.executable, "-m", "m2det.benchmarks.gpu.official_pipeline", "--root", str(root),
           "--device", device, "--iters", str(iters), "--warmup", str(warmup),
           "--seconds-per-size", f"{share:.1f}",
           "--calibrations", json.dumps({str(k): v for k, v in calibrations.items()}),
           "--images", *map(str, images)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        rows = [d["row"] for d in _lines(e.stdout) if "row" in d]
        if not rows:
            raise M2DetError(f"the official pipeline ran past its {timeout_s:.0f} s budget "
                             "before finishing a size") from None
        return {"rows": rows, "torch": None, "complete": False}
    if run.returncode != 0:
        tail = " | ".join((run.stdout + run.stderr).strip().splitlines()[-8:])
        raise M2DetError(f"the official pipeline failed (exit {run.returncode}): {tail}")
    found = _lines(run.stdout)
    torch_version = next((d["torch"] for d in found if "torch" in d), None)
    return {"rows": [d["row"] for d in found if "row" in d], "torch": torch_version,
            "complete": True}


def main() -> int:
    p = argparse.ArgumentParser(prog="official_pipeline")
    p.add_argument("--root", required=True)
    p.add_argument("--device", choices=("cuda", "cpu"), required=True)
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--calibrations", required=True)
    p.add_argument("--seconds-per-size", type=float, default=60.0)
    p.add_argument("--images", nargs="+", required=True)
    _child(p.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
