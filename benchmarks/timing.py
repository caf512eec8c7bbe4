"""Latency of a runner over an image pool: preprocess, network and post-processing (NMS) split,
mean/p50/p90/p99 per stage, FPS end to end; and the paper's FPS protocol (batch 1, every image
once, network + NMS time). GPU runners are synchronized before the host clock is read."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from m2det.engines.base import Runner, now_ms
from m2det.preprocess import preprocess

STAGES = ("preprocess", "network", "nms", "total")


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """mean/p50/p90/p99 (ms, linear-interpolated percentiles) of a non-empty sample list."""
    a = np.asarray(samples_ms, np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": round(float(a.mean()), 4), "p50": round(float(p50), 4),
            "p90": round(float(p90), 4), "p99": round(float(p99), 4)}  # fmt: skip


def _batch_of(pool: Sequence[np.ndarray], start: int, batch: int) -> list[np.ndarray]:
    return [pool[(start + k) % len(pool)] for k in range(batch)]


def _timed_call(runner: Runner, images: list[np.ndarray]) -> tuple[float, float, float, float]:
    """Preprocess + run ``images``; (preprocess, network, nms, total) ms, device synchronized."""
    runner.synchronize()
    t0 = now_ms()
    x = preprocess(images, runner.input_size)
    t1 = now_ms()
    runner(x)
    runner.synchronize()
    t2 = now_ms()
    timing = runner.last_timing
    return t1 - t0, timing.network, timing.nms, t2 - t0


def time_batches(runner: Runner, pool: Sequence[np.ndarray], batch: int, iters: int, warmup: int,
                 desc: str = "", progress: bool = True) -> dict[str, Any]:
    """Latency of ``iters`` calls at ``batch`` after ``warmup`` untimed ones, images rotating
    through ``pool``. Returns ``latency_ms`` {stage: stats} (per call), ``fps`` (images/s end to
    end), ``fps_network_nms`` (images/s of network + NMS only)."""
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    bar = tqdm(total=warmup + iters, desc=desc, unit="it", file=sys.stderr, leave=False,
               disable=None if progress else True)  # fmt: skip
    for i in range(warmup + iters):
        measured = _timed_call(runner, _batch_of(pool, i * batch, batch))
        if i >= warmup:
            for stage, ms in zip(STAGES, measured, strict=True):
                samples[stage].append(ms)
        bar.update()
    bar.close()
    total = float(np.mean(samples["total"]))
    net_nms = float(np.mean(np.add(samples["network"], samples["nms"])))
    return {"latency_ms": {s: latency_stats(v) for s, v in samples.items()},
            "fps": round(1e3 * batch / total, 3),
            "fps_network_nms": round(1e3 * batch / net_nms, 3) if net_nms > 0 else None,
            "iters": iters, "warmup": warmup}  # fmt: skip


def time_paper(runner: Runner, pool: Sequence[np.ndarray], warmup: int, desc: str = "",
               progress: bool = True) -> dict[str, Any]:
    """The paper's FPS: batch 1, each pool image once after ``warmup`` untimed calls;
    ``fps`` = number of images / sum of (network + NMS) seconds."""
    for i in range(warmup):
        _timed_call(runner, [pool[i % len(pool)]])
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    for image in tqdm(pool, desc=desc, unit="img", file=sys.stderr, leave=False,
                      disable=None if progress else True):  # fmt: skip
        for stage, ms in zip(STAGES, _timed_call(runner, [image]), strict=True):
            samples[stage].append(ms)
    net_nms = float(np.sum(samples["network"]) + np.sum(samples["nms"]))
    fps = round(1e3 * len(pool) / net_nms, 3)
    return {"latency_ms": {s: latency_stats(v) for s, v in samples.items()}, "fps": fps,
            "fps_network_nms": fps, "iters": len(pool), "warmup": warmup}  # fmt: skip
