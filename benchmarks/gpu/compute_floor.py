"""The compute floor of the network: its floating-point operations over the dense half-precision
matrix rate measured on this device in the same run.

FLOPs are counted by ``torch.utils.flop_counter`` on the meta device (no arithmetic, no memory):
2 per multiply-add of the convolutions. The rate is an 8192^3 FP16 matrix product (median of CUDA
event timings); in a dry run a small CPU product stands in and is labelled as such. The issue's
figures (0.19 / 0.48 / 1.16 ms at 320 / 512 / 800) are these FLOPs over about 790 TFLOP/s.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from m2det.benchmarks.gpu.timer import cuda_times
from m2det.config import M2DetConfig
from m2det.model import M2Det


def network_flops(config: M2DetConfig) -> float:
    """FLOPs of one image through ``M2Det(config)`` (2 per multiply-add)."""
    with torch.device("meta"):
        model = M2Det(config).eval()
        x = torch.empty(1, 3, config.input_size, config.input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def matmul_tflops(device: torch.device) -> tuple[float, str]:
    """(TFLOP/s, what was measured): FP16 8192^3 on CUDA; a float32 1024^3 CPU stand-in."""
    if device.type == "cuda":
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.float16)
        b = torch.randn(n, n, device=device, dtype=torch.float16)
        ms = statistics.median(cuda_times(lambda: a @ b, iters=20, warmup=5))
        return 2 * n**3 / ms / 1e9, f"fp16 {n}^3 matmul, random data, median of 20"
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    ms = (time.perf_counter() - t0) * 1e3 / 5
    return 2 * n**3 / ms / 1e9, f"dry-run stand-in: fp32 {n}^3 matmul on the CPU"


def floor_ms(configs: dict[int, M2DetConfig], tflops: float) -> dict[str, float]:
    """size -> ms per image at ``tflops`` (``network_flops`` / rate)."""
    return {str(s): network_flops(c) / (tflops * 1e12) * 1e3 for s, c in configs.items()}
