"""The PyTorch runner: ``M2DetInference`` (network + decode + softmax) on CPU or CUDA, then the
CPU post-processing (``m2det.nms.batched_nms``: compiled, on torch's thread count). It is the
baseline every other backend is compared with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2det.checkpoint import load_model
from m2det.config import M2DetConfig
from m2det.detections import Detections
from m2det.engines.base import Runner, Timing, check_batch, now_ms
from m2det.errors import M2DetError
from m2det.model import M2Det, M2DetInference
from m2det.nms import NMSParams, batched_nms


class TorchRunner(Runner):
    """Run an M2Det checkpoint (``.pth``/``.pt``, project or official layout) or an ``M2Det``.

    ``config``: a preset name (or config) for checkpoints that record none; when the checkpoint
    records one they must agree. ``fp16``: CUDA autocast (softmax and decode stay float32).
    ``channels_last``: NHWC memory format for the convolutions.
    """

    backend = "torch"

    def __init__(self, source: str | Path | M2Det, nms: NMSParams, *,
                 config: M2DetConfig | str | None = None, device: str = "cpu", fp16: bool = False,
                 channels_last: bool = False) -> None:
        model = _load(source, config)
        self.device = _device(device)
        if fp16 and self.device.type != "cuda":
            raise M2DetError("fp16 needs a CUDA device (--device cuda)")
        super().__init__(model.config, nms, precision="fp16" if fp16 else "fp32")
        self.channels_last = channels_last
        self._model = model
        self._net: M2DetInference | None = None

    def activate(self) -> None:
        """Move the network to the device (in eval mode)."""
        net = M2DetInference(self._model).eval().to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._net = net

    def deactivate(self) -> None:
        self._net = None
        if self.device.type == "cuda":
            self._model.to("cpu")
            torch.cuda.empty_cache()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def raw(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """images [B,3,S,S] -> (boxes [B,A,4], scores [B,A,C]) float32 numpy, before NMS."""
        if self._net is None:
            self.__enter__()
        assert self._net is not None
        check_batch(images, self.input_size)
        x = torch.as_tensor(images).to(self.device, torch.float32, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.precision == "fp16"):
            boxes, scores = self._net(x)
        return (boxes.float().cpu().numpy(), scores.float().cpu().numpy())

    def infer(self, images: Any) -> Detections:
        """images [B,3,S,S] float32 BGR 0-255 (numpy or torch) -> Detections (normalized boxes)."""
        self.synchronize()
        t0 = now_ms()
        boxes, scores = self.raw(images)  # .cpu() waits for the device
        t1 = now_ms()
        dets = batched_nms(boxes, scores, self.nms, threads=torch.get_num_threads())
        self.last_timing = Timing(network=t1 - t0, nms=now_ms() - t1)
        return dets


def _load(source: str | Path | M2Det, config: M2DetConfig | str | None) -> M2Det:
    if isinstance(source, M2Det):
        name = config.name if isinstance(config, M2DetConfig) else config
        if name is not None and name != source.config.name:
            raise M2DetError(f"the model is config {source.config.name!r}, not {name!r}")
        return source.eval()
    return load_model(source, config)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise M2DetError(f"unknown device {name!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise M2DetError("CUDA is not available on this machine (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise M2DetError(f"unsupported device {name!r}; use cpu or cuda")
    return device
