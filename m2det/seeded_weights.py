"""Deterministic random weights for any set of state_dict keys: the official-parity fixtures and
the GPU benchmark's full-size models both draw them, so the same key always gets the same tensor
whatever the key order or the layout (official or ours) it is listed in."""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

#: Default base seed (the official-parity fixtures were drawn with it).
WEIGHT_SEED = 1234


def seeded_state(shapes: dict[str, tuple[torch.Size, torch.dtype]],
                 seed: int = WEIGHT_SEED) -> dict[str, Tensor]:
    """key -> (shape, dtype) => key -> tensor, each from its own generator seeded by ``seed`` and
    the key: integer buffers zero, BatchNorm statistics and affine parameters plausible (variance
    0.5-1.5, means and biases ~N(0, 0.1)), other weights ~N(0, 1/fan_in)."""
    out = {}
    for k, (shape, dtype) in shapes.items():
        g = torch.Generator().manual_seed(seed + zlib.crc32(k.encode()))
        if dtype == torch.long:
            out[k] = torch.zeros(shape, dtype=dtype)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bias")):
            out[k] = torch.randn(shape, generator=g) * 0.1
        elif k.endswith("weight") and len(shape) == 1:
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = max(1, int(torch.Size(shape[1:]).numel()))
            out[k] = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5
    return out
