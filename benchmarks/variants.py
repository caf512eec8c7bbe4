"""What is measured: a *variant* is one artifact (checkpoint, ONNX file or plan) run by one backend
at one precision and input size. A :class:`VariantPlan` turns a checkpoint into variants: ONNX
FP32/FP16/INT8 files by the export pipeline (``m2det.export.pipeline``), run by ONNX Runtime and
by OpenVINO (once per OpenVINO inference precision asked for), TensorRT plans by
``m2det.engines.builder`` where TensorRT is installed, and the official M2Det pipeline from a
checkout (``m2det.benchmarks.official``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m2det.config import M2DetConfig, get_config
from m2det.contract import PRECISIONS
from m2det.errors import M2DetError
from m2det.preprocess import preprocess

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
#: The official pipeline's backend name in variants and result rows (``--official DIR``).
OFFICIAL = "official"
#: Sizes ``--sweep`` accepts: the paper's VGG presets.
SWEEP_PRESETS = {320: "m2det320_vgg", 512: "m2det512_vgg", 800: "m2det800_vgg"}


@dataclass(frozen=True)
class Variant:
    """One artifact to measure: ``backend`` runs ``artifact`` at ``precision``.

    ``weights``: "trained" (a real checkpoint: AP means something) or "random" (seeded random
    weights: speed only). ``source``: the checkpoint the artifact was made from."""

    artifact: Path
    backend: str
    precision: str
    config: str
    input_size: int
    weights: str
    source: str
    device: str = "cpu"
    #: OpenVINO's inference precision (``m2det.engines.openvino_runner.OV_PRECISIONS``).
    ov_precision: str | None = None

    @property
    def label(self) -> str:
        ov = f" ov-{self.ov_precision}" if self.ov_precision else ""
        return f"{self.backend} {self.precision}{ov} {self.input_size}"


@dataclass
class VariantPlan:
    """What to make from one checkpoint: backends x precisions at each config (all CPU/``device``).

    ``calibration``: preprocessed images [N,3,S,S] per input size S for INT8 (made on demand from
    ``calib_images`` BGR images)."""

    backends: tuple[str, ...] = ("torch",)
    precisions: tuple[str, ...] = ("fp32",)
    device: str = "cpu"
    max_batch: int = 1
    calib_images: list[np.ndarray] = field(default_factory=list)
    calib_method: str = "entropy"
    qdq_placement: str = "auto"
    #: OpenVINO inference precisions, one variant each (``openvino`` backend).
    ov_precisions: tuple[str, ...] = ("f32",)
    #: A checkout of the official M2Det code: add its pipeline as a variant of every checkpoint.
    official: Path | None = None

    @property
    def placement(self) -> str:
        """The INT8 recipe (``m2det.export.precision.PLACEMENTS``): "auto" is "onnxruntime" (ORT's
        own QDQ quantization, which its CPU provider fuses into integer convolutions) on a CPU, and
        "tensorrt" (ModelOpt's placement, what TensorRT fuses) on CUDA or for TensorRT."""
        if self.qdq_placement != "auto":
            return self.qdq_placement
        cpu = not self.device.startswith("cuda")
        return "onnxruntime" if cpu and "tensorrt" not in self.backends else "tensorrt"

    def check(self) -> None:
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise M2DetError(f"unknown backend {bad[0]!r}; valid: {', '.join(BACKENDS)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise M2DetError(f"unknown precision {bad[0]!r}; valid: {', '.join(PRECISIONS)}")
        if not self.backends or not self.precisions:
            raise M2DetError("need at least one backend and one precision")
        from m2det.engines.openvino_runner import OV_PRECISIONS

        bad = [p for p in self.ov_precisions if p not in OV_PRECISIONS]
        if bad or not self.ov_precisions:
            raise M2DetError(f"unknown OpenVINO precision {(bad or [''])[0]!r}; valid: "
                             f"{', '.join(OV_PRECISIONS)}")  # fmt: skip
        if self.official is not None:
            from m2det.benchmarks.official import check_checkout

            check_checkout(self.official)
        from m2det.export.precision import PLACEMENTS

        if self.qdq_placement not in ("auto", *PLACEMENTS):
            raise M2DetError(f"unknown INT8 recipe {self.qdq_placement!r}; valid: auto, "
                             f"{', '.join(PLACEMENTS)}")  # fmt: skip
        if "tensorrt" in self.backends:
            from m2det.engines.trt_version import require_tensorrt

            require_tensorrt()


def supported(backend: str, precision: str, device: str) -> str | None:
    """None when ``backend`` can run ``precision`` on ``device``, else why not (one phrase)."""
    if backend == "torch" and precision == "int8":
        return "torch runs checkpoints in fp32 (fp16: CUDA autocast); INT8 is an ONNX/TensorRT path"
    if backend == "torch" and precision == "fp16" and not device.startswith("cuda"):
        return "torch fp16 (autocast) needs CUDA"
    if backend == "tensorrt" and not device.startswith("cuda"):
        return "TensorRT needs a CUDA device"
    if backend == "openvino" and device != "cpu":
        return "the OpenVINO runner runs on the CPU"
    return None


#: Random weights are rescaled at the detection head so that the outputs look like a trained
#: detector's (what the post-processing's cost depends on): loc offsets with this standard
#: deviation, conf logits with this one, the background logit raised by BACKGROUND_MARGIN plus
#: the log of the number of foreground classes (9.0 for COCO's 80). At
#: M2Det-320 (seed 0) this leaves 3.9k-13.8k (anchor, class) scores above the official 0.1
#: threshold on the four COCO photos of the official repository and 0-4.8k on synthetic shapes
#: images, with boxes within [-0.4, 1.4] of the image; plain random weights give saturated
#: logits (15k-19k such scores, up to 1.0) and boxes up to 4e8 image sizes.
LOC_STD, LOGIT_STD, BACKGROUND_MARGIN = 0.5, 2.5, 4.6


def random_checkpoint(config: str | M2DetConfig, path: Path, seed: int = 0) -> Path:
    """Write a checkpoint of ``config`` with seeded random weights, the head rescaled to give
    detector-like score and box distributions (:data:`LOC_STD`; speed measurements only)."""
    import torch

    from m2det.benchmarks.image_pool import synthetic_pool
    from m2det.checkpoint import save_model
    from m2det.model import build_model

    torch.manual_seed(seed)
    cfg = get_config(config) if isinstance(config, str) else config
    model = build_model(cfg).eval()
    images = torch.from_numpy(preprocess(synthetic_pool(2, seed=seed), cfg.input_size))
    with torch.no_grad():
        loc, conf = model(images)
        loc_scale, conf_scale = LOC_STD / float(loc.std()), LOGIT_STD / float(conf.std())
        for conv in model.head.modules():
            if not isinstance(conv, torch.nn.Conv2d):
                continue
            is_loc = any(conv is c for c in model.head.loc)
            conv.weight.mul_(loc_scale if is_loc else conf_scale)
            bias = conv.bias
            assert bias is not None
            bias.mul_(loc_scale if is_loc else conf_scale)
            if not is_loc:
                background = BACKGROUND_MARGIN + math.log(cfg.num_classes - 1)
                bias.view(-1, cfg.num_classes)[:, 0] += background
    save_model(model, path, weights="random", seed=seed)
    return path


def checkpoint_at(ckpt: Path, config: str, path: Path) -> Path:
    """``ckpt``'s weights loaded into preset ``config`` (another input size of the same
    architecture), saved to ``path``; ``ckpt`` itself when it already is that config."""
    from m2det.checkpoint import read_checkpoint, save_model
    from m2det.model import M2Det
    from m2det.state_dict import check_and_load

    state = read_checkpoint(ckpt)
    recorded = state.get("config")
    if isinstance(recorded, dict) and recorded.get("name") == config:
        return ckpt
    model = M2Det(get_config(config))
    check_and_load(model, state["model"], source=f"checkpoint {ckpt} loaded as {config}")
    save_model(model.eval(), path, source=str(ckpt), weights=checkpoint_weights(ckpt))
    return path


def checkpoint_weights(ckpt: Path) -> str:
    """"random" for a checkpoint :func:`random_checkpoint` wrote (it records so), else "given"."""
    from m2det.checkpoint import read_checkpoint

    return "random" if read_checkpoint(ckpt).get("weights") == "random" else "given"


def export_onnx(ckpt: Path, precisions: tuple[str, ...] | list[str], out_dir: Path,
                calibration: np.ndarray | None, calib_method: str = "entropy",
                placement: str = "tensorrt", log: Any = print) -> dict[str, Path]:
    """``ckpt`` -> ``out_dir/<config>[_fp16|_int8].onnx`` (dynamic batch, raw graph) for each of
    ``precisions``, by the export pipeline (FP32 always). ``calibration``: [N,3,S,S] float32 images
    (INT8); ``placement``: the INT8 recipe (``m2det.export.precision.PLACEMENTS``: "onnxruntime"
    for ONNX Runtime on a CPU, "tensorrt" for TensorRT)."""
    from m2det.export.pipeline import ExportOptions, export_model

    int8 = "int8" in precisions
    if int8 and calibration is None:
        raise M2DetError("INT8 export needs calibration images")
    log(f"[bench] exporting {ckpt} to ONNX ({', '.join(precisions)}) in {out_dir}")
    result = export_model(ExportOptions(
        checkpoint=ckpt, out=out_dir, fp16="fp16" in precisions, int8=int8,
        calib_images=calibration if int8 else None, calib_method=calib_method,
        qdq_placement=placement, quiet=True), log=None)  # fmt: skip
    return {p: result.path(p) for p in PRECISIONS if p in result.files}


def build_plan(onnx_path: Path, max_batch: int) -> Path:
    """A TensorRT plan of ``onnx_path`` for batches 1..``max_batch`` (needs TensorRT and a GPU)."""
    from m2det.engines.builder import build_engine

    return Path(build_engine(onnx_path, batch=(1, max_batch, max_batch)))


def make_variants(ckpt: Path, weights: str, plan: VariantPlan, work: Path,
                  log: Any = print) -> tuple[list[Variant], list[dict[str, str]]]:
    """Variants of ``ckpt`` for every supported backend x precision of ``plan`` (ONNX files and
    plans made in ``work``), and the skipped combinations ``{"backend", "precision", "config",
    "reason"}``."""
    from m2det.checkpoint import read_checkpoint, resolve_config

    cfg = resolve_config(read_checkpoint(ckpt), None, str(ckpt))
    wanted: list[tuple[str, str]] = []
    skipped: list[dict[str, str]] = []
    for backend in plan.backends:
        for precision in plan.precisions:
            why = supported(backend, precision, plan.device)
            if why is None:
                wanted.append((backend, precision))
            else:
                skipped.append({"backend": backend, "precision": precision, "config": cfg.name,
                                "reason": why})  # fmt: skip
    onnx_precisions = [p for p in plan.precisions if any(b != "torch" and q == p
                                                         for b, q in wanted)]  # fmt: skip
    onnx_files: dict[str, Path] = {}
    if onnx_precisions:
        calibration = _calibration(plan, cfg.input_size) if "int8" in onnx_precisions else None
        onnx_files = export_onnx(ckpt, onnx_precisions, work, calibration, plan.calib_method,
                                 plan.placement, log)  # fmt: skip
    variants = []
    if plan.official is not None:
        variants.append(Variant(ckpt, OFFICIAL, "fp32", cfg.name, cfg.input_size, weights,
                                str(ckpt), "cpu"))  # fmt: skip
    for backend, precision in wanted:
        artifact = ckpt if backend == "torch" else onnx_files[precision]
        if backend == "tensorrt":
            log(f"[bench] building the TensorRT plan of {artifact.name} ...")
            artifact = build_plan(artifact, plan.max_batch)
        for ov in plan.ov_precisions if backend == "openvino" else (None,):
            variants.append(Variant(artifact, backend, precision, cfg.name, cfg.input_size,
                                    weights, str(ckpt), plan.device, ov))  # fmt: skip
    return variants, skipped


def _calibration(plan: VariantPlan, size: int) -> np.ndarray:
    if not plan.calib_images:
        raise M2DetError("INT8 needs calibration images")
    return preprocess(plan.calib_images, size)
