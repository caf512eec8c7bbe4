"""Soft-NMS per image on full-size model outputs: the CUDA kernel against the CPU path, on the same
candidates.

Candidates are what the calibrated seeded model (``seeded_model.py``) gives in FP32 on real
images at each size (boxes [1,A,4], softmax scores [1,A,80]); each figure is over the images of
the pool. Kernel figures: device time of one image's call, from CUDA events around the replay of
a graph holding one call per pool image (so host launch overhead is excluded), and the host
latency of one ``soft_nms_cuda_tensors`` call plus a synchronisation (what a Python caller
waits); batch 32 gives the device time per image when 32 images share a call. CPU figures: the
host time of the runners' CPU NMS (``m2det.nms.batched_nms``) and of the C++ reference on one
core, per image.

In a dry run (no CUDA) the "kernel" rows are the C++ reference timed on the host, labelled as a
stand-in.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from m2det.benchmarks.gpu.timer import cuda_times, host_times, stats
from m2det.engines import soft_nms_kernel as snk
from m2det.nms import NMSParams, batched_nms

#: The CPU path the kernel is compared with (what the runners run on the host).
CPU_PATH = "m2det.nms.batched_nms (numpy, the runners' CPU NMS)"


def candidate_stats(scores: Tensor, threshold: float) -> dict[str, float]:
    """Mean per image of scores above ``threshold`` over scores [N,A,C]; classes that have any;
    the largest count in one class."""
    above = scores > threshold
    per_class = above.sum(1)  # [N,C]
    return {"candidates_per_image": float(per_class.sum(1).float().mean()),
            "classes_with_candidates": float((per_class > 0).sum(1).float().mean()),
            "max_candidates_in_a_class": int(per_class.max())}


def _kernel_rows(boxes: Tensor, scores: Tensor, params: NMSParams, iters: int) -> dict[str, Any]:
    """Device and host-call times of the kernel on images [N,A,*] (CUDA tensors)."""
    n, a, c = scores.shape
    ws1 = torch.empty(snk.workspace_size(1, a, c, params), dtype=torch.uint8, device="cuda")

    def one(i: int) -> tuple[Tensor, ...]:
        return snk.soft_nms_cuda_tensors(boxes[i:i + 1], scores[i:i + 1], params, ws1)

    for i in range(n):  # warm-up (module load) outside the capture
        one(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n):
            one(i)
    device_ms = [t / n for t in cuda_times(graph.replay, iters, warmup=2)]
    it = itertools.count()
    call_ms = host_times(lambda: one(next(it) % n), iters * n, warmup=n,
                         sync=torch.cuda.synchronize)
    b32 = torch.arange(32) % n
    bb, sb = boxes[b32].contiguous(), scores[b32].contiguous()
    ws32 = torch.empty(snk.workspace_size(32, a, c, params), dtype=torch.uint8, device="cuda")
    batch_ms = cuda_times(lambda: snk.soft_nms_cuda_tensors(bb, sb, params, ws32), iters, 2)
    kept = snk.soft_nms_cuda_tensors(boxes, scores, params)[0].float().mean().item()
    return {"device_ms_per_image": stats(device_ms), "call_ms_per_image": stats(call_ms),
            "batch32_device_ms_per_image": statistics.median(batch_ms) / 32,
            "mean_kept_per_image": kept}


def _host_ms(fn: Callable[[int], Any], n: int, repeats: int) -> dict[str, float]:
    """Host ms of ``fn(i)`` for each of ``n`` images, ``repeats`` times, after one warm-up."""
    fn(0)
    samples: list[float] = []
    for _ in range(repeats):
        for i in range(n):
            samples += host_times(lambda i=i: fn(i), 1, 0)
    return stats(samples)


def time_size(boxes: Tensor, scores: Tensor, params: NMSParams, *, iters: int,
              cpu_repeats: int) -> dict[str, Any]:
    """All figures for one size and one parameter set: ``boxes`` [N,A,4], ``scores`` [N,A,C]
    (device tensors; CPU tensors in a dry run)."""
    b_np, s_np = boxes.cpu().numpy(), scores.cpu().numpy()
    n = b_np.shape[0]
    cpu = _host_ms(lambda i: batched_nms(b_np[i:i + 1], s_np[i:i + 1], params), n, cpu_repeats)
    ref = _host_ms(lambda i: snk.soft_nms_cpu_reference(b_np[i:i + 1], s_np[i:i + 1], params),
                   n, cpu_repeats)
    row: dict[str, Any] = {"threshold": params.score_threshold,
                           **candidate_stats(scores, params.score_threshold),
                           "cpu_path": CPU_PATH, "cpu_ms_per_image": cpu,
                           "cpp_reference_ms_per_image": ref}
    if boxes.is_cuda:
        row.update(_kernel_rows(boxes, scores, params, iters))
        row["speedup_vs_cpu"] = cpu["p50_ms"] / row["device_ms_per_image"]["p50_ms"]
    else:
        row["stand_in"] = "dry run: no CUDA; the C++ reference stands in for the kernel"
        row["speedup_vs_cpu"] = None
    return row


def summarize(rows: dict[int, dict[float, dict[str, Any]]], official_threshold: float
              ) -> dict[str, Any]:
    """The report's ``softnms_kernel`` timing fields from rows[size][threshold]: ms per image
    (official preset's threshold, and per threshold), and the smallest speedup over all."""
    def ms(size: int, t: float) -> float | None:
        d = rows[size][t].get("device_ms_per_image")
        return None if d is None else d["p50_ms"]

    speedups = [r["speedup_vs_cpu"] for by_t in rows.values() for r in by_t.values()
                if r.get("speedup_vs_cpu") is not None]
    thresholds = sorted({t for by_t in rows.values() for t in by_t})
    return {
        "ms_per_image": {str(s): ms(s, official_threshold) for s in rows},
        "ms_per_image_by_threshold": {str(t): {str(s): ms(s, t) for s in rows if t in rows[s]}
                                      for t in thresholds},
        "speedup_vs_cpu": min(speedups) if speedups else None,
        "speedup_vs_cpu_is": "the smallest over sizes and thresholds, p50 CPU path / p50 kernel",
        "by_size": {str(s): {str(t): r for t, r in by_t.items()} for s, by_t in rows.items()},
    }


def stack_candidates(outputs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Per-image (boxes [1,A,4], scores [1,A,C]) -> contiguous [N,A,4], [N,A,C]."""
    boxes = torch.cat([b for b, _ in outputs]).contiguous()
    scores = torch.cat([s for _, s in outputs]).contiguous()
    return boxes, scores
