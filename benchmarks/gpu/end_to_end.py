"""End-to-end timing of ``FastPipeline``: host BGR images in, host detections out (preprocessing +
network + soft-NMS), per size, batch and variant, with a parity check against the FP32 path.

Each call takes the next ``batch`` images of the pool (rotating), so no call reuses one cached
input. ``fps`` is images per second of the host-timed calls; ``p50_ms``/``p99_ms`` are per call
(per batch). ``device_ms`` times the device part alone (graph replay) with CUDA events, the figure
compared with the compute floor. Parity (batch 1, per size): the FP32 eager model on
``m2det.preprocess``'s input with the C++ reference NMS against the pipeline's detections, image
by image: the share of the reference's top 20 that the pipeline also reports (same class, IoU
>= 0.9) and the largest score difference among those.
"""

from __future__ import annotations

import gc
import itertools
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from m2det.benchmarks.gpu.fast_pipeline import FastPipeline, PipelineOptions
from m2det.benchmarks.gpu.timer import cuda_times, host_times, stats
from m2det.detections import Detections
from m2det.engines import soft_nms_kernel as snk
from m2det.model import M2Det, M2DetInference
from m2det.nms import NMSParams
from m2det.preprocess import preprocess

#: name -> options; "best" runs at every batch, the others (ablations) at batch 1 only.
VARIANTS = {
    "best": PipelineOptions(fp16=True, channels_last=True, cuda_graph=True),
    "fp16, no graph": PipelineOptions(fp16=True, channels_last=True, cuda_graph=False),
    "fp32, graph": PipelineOptions(fp16=False, channels_last=True, cuda_graph=True),
}
#: The optional ``torch.compile`` variant (``--compile``; batch 1).
COMPILED = PipelineOptions(fp16=True, channels_last=True, cuda_graph=True, compile=True)


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def agreement(got: Detections, ref: Detections, top: int = 20) -> dict[str, float]:
    """Share of ``ref``'s top-``top`` detections (all images) that ``got`` reports with the same
    class at IoU >= 0.9, and the largest score difference among them."""
    matched = total = 0
    worst = 0.0
    for b in range(len(ref)):
        rb, rs, rc = (x[:top] for x in ref.image(b))
        gb, gs, gc_ = got.image(b)
        if len(rs) == 0:
            continue
        total += len(rs)
        if len(gs) == 0:
            continue
        iou = _pairwise_iou(rb, gb) * (rc[:, None] == gc_[None, :])
        best = iou.argmax(1)
        ok = iou[np.arange(len(rs)), best] >= 0.9
        matched += int(ok.sum())
        if ok.any():
            worst = max(worst, float(np.abs(rs[ok] - gs[best[ok]]).max()))
    return {"top20_matched": matched / total if total else 1.0,
            "max_score_diff": worst, "reference_detections": total}


@torch.inference_mode()
def reference_detections(model: M2Det, images: Sequence[np.ndarray], nms: NMSParams,
                         device: torch.device) -> Detections:
    """FP32 eager on ``m2det.preprocess``'s input, the C++ reference NMS on the host."""
    net = M2DetInference(model).eval().to(device)
    boxes, scores = net(torch.from_numpy(preprocess(list(images), model.config.input_size)
                                         ).to(device))
    return snk.soft_nms_cpu_reference(boxes.float().cpu(), scores.float().cpu(), nms)


def _batches(pool: Sequence[Tensor], batch: int) -> list[list[Tensor]]:
    n = len(pool)
    return [[pool[(start + i) % n] for i in range(batch)] for start in range(0, n * batch, batch)]


def time_variant(model: M2Det, pool: Sequence[Tensor], batch: int, nms: NMSParams,
                 device: torch.device, options: PipelineOptions, iters: int,
                 warmup: int) -> tuple[dict[str, Any], FastPipeline]:
    """One row: host-timed calls over the rotating pool, device-timed ``run()``."""
    pipe = FastPipeline(model, batch, nms, device, options)
    pipe.prepare()
    groups = _batches(pool, batch)
    it = itertools.count()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    calls = host_times(lambda: pipe(groups[next(it) % len(groups)]), iters, warmup, sync)
    row: dict[str, Any] = {"batch": batch, "precision": "fp16" if pipe.options.fp16 else "fp32",
                           "path": pipe.options.label(device), "iters": iters}
    s = stats(calls)
    row.update(fps=batch * 1e3 / s["mean_ms"], p50_ms=s["p50_ms"], p99_ms=s["p99_ms"],
               mean_ms=s["mean_ms"])
    if device.type == "cuda":
        device_ms = statistics.median(cuda_times(pipe.run, max(5, iters // 4), 2))
        row.update(device_ms_per_batch=device_ms, device_ms_per_image=device_ms / batch)
    else:
        row["stand_in"] = "dry run: CPU, FP32, no CUDA graph, C++ reference NMS"
    return row, pipe


def time_size(model: M2Det, pool_np: Sequence[np.ndarray], pool: Sequence[Tensor],
              nms: NMSParams, device: torch.device, batches: Sequence[int],
              iters: dict[int, tuple[int, int]], floor_ms: float | None,
              variants: dict[str, PipelineOptions] = VARIANTS) -> list[dict[str, Any]]:
    """Rows for one size: ``variants['best']`` at every batch, the other variants at batch 1;
    ``iters[batch]`` = (timed, warm-up) calls."""
    rows = []
    for name, options in variants.items():
        for batch in batches if name == "best" else batches[:1]:
            n, w = iters[batch]
            row, pipe = time_variant(model, pool, batch, nms, device, options, n, w)
            row = {"size": model.config.input_size, "variant": name, **row}
            if floor_ms is not None and "device_ms_per_image" in row:
                row["floor_ms_per_image"] = floor_ms
                row["device_vs_floor"] = row["device_ms_per_image"] / floor_ms
            if batch == batches[0]:
                k = min(len(pool_np), 4)
                got = Detections.from_lists([pipe(pool[i:i + 1]).image(0) for i in range(k)])
                row["parity_vs_fp32"] = agreement(
                    got, reference_detections(model, pool_np[:k], nms, device))
            rows.append(row)
            del pipe
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows
