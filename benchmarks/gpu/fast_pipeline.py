"""The fastest whole pipeline this project has on one CUDA GPU without TensorRT: BGR uint8 images
on the host -> detections on the host.

Per call: each image is copied (pinned memory, asynchronously) to the GPU and resized there
(bilinear, half-pixel centres, no antialiasing: the sampling of ``cv2.resize(INTER_LINEAR)`` that
``m2det.preprocess`` uses, in float instead of cv2's fixed point) into a static input batch
[B,3,S,S]; then the network (FP16 weights, channels-last), the prior decode and softmax (FP32) and
the soft-NMS CUDA kernel (``m2det.engines.soft_nms_kernel.soft_nms_cuda_tensors``, the C ABI on
device pointers, a reused workspace) run as one CUDA graph replay; the EfficientNMS-layout
outputs [B,K] are copied back into pinned buffers and the host waits once.

On a machine without CUDA (the GPU script's ``--dry-run``) the same code runs on the CPU in FP32
without a graph, with the C++ reference NMS standing in for the kernel; such timings are only
code-path checks.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from m2det.box_utils import decode
from m2det.detections import Detections
from m2det.engines import soft_nms_kernel as snk
from m2det.model import M2Det
from m2det.nms import NMSParams
from m2det.priors import make_priors


@dataclass(frozen=True)
class PipelineOptions:
    """How the network runs: FP16 weights and activations, channels-last memory format, one
    CUDA graph for network + decode + NMS, ``torch.compile`` of the network."""

    fp16: bool = True
    channels_last: bool = True
    cuda_graph: bool = True
    compile: bool = False

    def label(self, device: torch.device) -> str:
        if device.type != "cuda":
            return "dry-run stand-in: torch fp32 on the CPU + C++ reference NMS"
        fp32 = "torch fp32 (cuDNN may use TF32: PyTorch's default)"
        parts = ["torch fp16" if self.fp16 else fp32]
        parts += [name for name, on in (("channels-last", self.channels_last),
                                        ("torch.compile", self.compile),
                                        ("cuda-graph", self.cuda_graph)) if on]
        return " ".join(parts) + " + soft-NMS kernel (C ABI); GPU resize"


def pin_images(images: Sequence[np.ndarray], device: torch.device) -> list[Tensor]:
    """BGR uint8 [H,W,3] arrays as (pinned, when ``device`` is CUDA) uint8 tensors."""
    out = [torch.from_numpy(np.ascontiguousarray(img)) for img in images]
    return [t.pin_memory() for t in out] if device.type == "cuda" else out


def gpu_resize(image: Tensor, size: int) -> Tensor:
    """uint8 [H,W,3] -> float32 [3,S,S] (values 0-255) by bilinear sampling with half-pixel
    centres and no antialiasing (cv2 ``INTER_LINEAR``'s sampling)."""
    x = image.permute(2, 0, 1).unsqueeze(0).float()
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=False)[0]


class FastPipeline:
    """``model`` at a fixed ``batch`` on ``device`` with ``options``; call with ``batch`` images
    (``pin_images`` output) to get host ``Detections`` (boxes normalized to the input)."""

    def __init__(self, model: M2Det, batch: int, nms: NMSParams, device: torch.device,
                 options: PipelineOptions) -> None:
        cuda = device.type == "cuda"
        self.cfg, self.batch, self.nms, self.device = model.config, batch, nms, device
        self.options = options if cuda else PipelineOptions(False, options.channels_last,
                                                            False, False)
        fmt = torch.channels_last if self.options.channels_last else torch.contiguous_format
        dtype = torch.float16 if self.options.fp16 else torch.float32
        net = copy.deepcopy(model).eval().to(device=device, dtype=dtype)
        net = net.to(memory_format=fmt)  # type: ignore[call-overload]
        self.net = torch.compile(net) if self.options.compile else net
        self.priors = make_priors(self.cfg).to(device)
        size = self.cfg.input_size
        self.input = torch.zeros(batch, 3, size, size, dtype=dtype, device=device
                                 ).contiguous(memory_format=fmt)
        num_anchors, num_classes = self.priors.shape[0], self.cfg.num_classes - 1
        self.workspace = (torch.empty(snk.workspace_size(batch, num_anchors, num_classes, nms),
                                      dtype=torch.uint8, device=device) if cuda else None)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[Tensor, ...] | None = None
        self.host: tuple[Tensor, ...] | None = None

    @torch.inference_mode()
    def network_nms(self) -> tuple[Tensor, ...]:
        """Network + decode + softmax + NMS on ``self.input``: (num [B,1], boxes [B,K,4],
        scores [B,K], classes [B,K]) on the device."""
        loc, conf = self.net(self.input)
        boxes = decode(loc.float(), self.priors, self.cfg.variance)
        scores = torch.softmax(conf.float(), -1)[..., 1:]
        if self.workspace is not None:
            return snk.soft_nms_cuda_tensors(boxes, scores, self.nms, self.workspace)
        d = snk.soft_nms_cpu_reference(boxes, scores, self.nms)  # dry-run stand-in
        return tuple(torch.from_numpy(a) for a in (d.num[:, None], d.boxes, d.scores, d.classes))

    def prepare(self, warmup: int = 3) -> None:
        """Warm up (cuDNN autotuning, lazy module loads) and, with ``cuda_graph``, capture
        ``network_nms`` into a graph (warm-up on a side stream, as graph capture requires)."""
        if self.device.type != "cuda":
            for _ in range(warmup):
                self.outputs = self.network_nms()
            return
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.outputs = self.network_nms()
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self.options.cuda_graph:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = self.network_nms()
        torch.cuda.synchronize(self.device)
        assert self.outputs is not None
        self.host = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                          for t in self.outputs)

    @torch.inference_mode()
    def load(self, images: Sequence[Tensor]) -> None:
        """Upload and resize ``batch`` images (uint8 [H,W,3]) into the static input."""
        if len(images) != self.batch:
            raise ValueError(f"expected {self.batch} images, got {len(images)}")
        size = self.cfg.input_size
        for i, img in enumerate(images):
            x = img.to(self.device, non_blocking=True)
            self.input[i].copy_(gpu_resize(x, size))

    def run(self) -> tuple[Tensor, ...]:
        """The device part (graph replay, or eager ``network_nms``)."""
        if self.graph is not None:
            self.graph.replay()
            assert self.outputs is not None
            return self.outputs
        self.outputs = self.network_nms()
        return self.outputs

    def __call__(self, images: Sequence[Tensor]) -> Detections:
        """Host images -> host Detections (waits for the device once)."""
        if self.outputs is None:
            self.prepare()
        self.load(images)
        outputs = self.run()
        if self.host is None:  # CPU
            num, boxes, scores, classes = (t.numpy() for t in outputs)
        else:
            for dst, src in zip(self.host, outputs, strict=True):
                dst.copy_(src, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            num, boxes, scores, classes = (t.numpy() for t in self.host)
        return Detections(num[:, 0].copy(), boxes.copy(), scores.copy(), classes.copy())
