"""Timers for the GPU script: CUDA events for device time, the host clock (after a device
synchronisation) for what a caller waits; the host clock is also the dry-run's CPU stand-in.
Statistics are over per-iteration samples in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from m2det.benchmarks.timing import latency_stats


def stats(samples_ms: list[float]) -> dict[str, float]:
    """``m2det.benchmarks.timing.latency_stats`` of ``samples_ms`` with ``_ms`` keys (mean, p50,
    p90, p99), plus the minimum and the count."""
    if not samples_ms:
        raise ValueError("no samples")
    out: dict[str, float] = {f"{k}_ms": v for k, v in latency_stats(samples_ms).items()}
    return {**out, "min_ms": min(samples_ms), "n": len(samples_ms)}


def host_times(fn: Callable[[], Any], iters: int, warmup: int,
               sync: Callable[[], None] = lambda: None) -> list[float]:
    """Wall-clock ms of ``fn(); sync()`` per iteration after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
        sync()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def cuda_times(fn: Callable[[], Any], iters: int, warmup: int) -> list[float]:
    """Device ms between CUDA events around each ``fn()`` (work it enqueues on the current
    stream), after ``warmup`` untimed calls; one synchronisation at the end."""
    import torch

    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends, strict=True):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
