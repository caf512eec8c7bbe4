"""Prior (anchor) boxes, identical to the official ``PriorBox`` for every preset.

Per level k (largest map first), per cell (row i, column j), 6 priors in the official order:
min size, sqrt(min*max), then for each aspect ratio r: (s*sqrt r, s/sqrt r), (s/sqrt r, s*sqrt r).
Computed in float64 as the official Python loop does, then rounded once to float32.
"""

from __future__ import annotations

import numpy as np
import torch

from m2det.config import M2DetConfig


def make_priors(config: M2DetConfig) -> torch.Tensor:
    """Priors [A,4] float32 as (cx, cy, w, h), normalized to the input size, clipped to [0,1]."""
    size = config.input_size
    # official get_scales: round(fraction * size, 2) in pixels
    min_sizes = [round(x * size, 2) for x in config.sizes[:-1]]
    max_sizes = [round(x * size, 2) for x in config.sizes[1:]]
    per_level = []
    for k, f in enumerate(config.feature_maps):
        f_k = size / config.steps[k]
        i, j = np.meshgrid(np.arange(f), np.arange(f), indexing="ij")
        cx = ((j.ravel() + 0.5) / f_k)[:, None]
        cy = ((i.ravel() + 0.5) / f_k)[:, None]
        s_k = min_sizes[k] / size
        s_kp = np.sqrt(s_k * (max_sizes[k] / size))
        whs = [(s_k, s_k), (s_kp, s_kp)]
        for ar in config.aspect_ratios:
            r = np.sqrt(ar)
            whs += [(s_k * r, s_k / r), (s_k / r, s_k * r)]
        wh = np.array(whs, dtype=np.float64)  # [6,2]
        n = cx.shape[0]
        centers = np.concatenate([cx, cy], 1)[:, None, :].repeat(len(whs), 1)  # [n,6,2]
        level = np.concatenate([centers, np.broadcast_to(wh, (n, len(whs), 2))], 2)
        per_level.append(level.reshape(-1, 4))
    priors = torch.from_numpy(np.concatenate(per_level, 0).astype(np.float32))
    if config.clip:
        priors.clamp_(min=0.0, max=1.0)
    return priors
