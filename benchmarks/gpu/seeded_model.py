"""A full-size M2Det with seeded official-layout weights and a calibrated score distribution:
the stand-in for trained COCO weights when timing post-processing and whole pipelines.

Weights: every official-layout key drawn from its own generator seeded by the key (the recipe of
the official-parity fixtures, ``m2det.seeded_weights.seeded_state``), loaded through
``m2det.checkpoint.official_to_ours``; the official model code loads the same tensors through
``ours_to_official``. Random weights give near-uniform softmax scores, so nothing would pass
the 0.05/0.1 score thresholds. The conf head is therefore calibrated: its foreground logits are
scaled by a gain ``g`` and its background logits by ``g`` plus an offset ``b0`` (a change of the
conv weights and biases, so every pipeline that runs these weights sees the same scores).
``g`` and ``b0`` are solved on real images so that the fraction of (anchor, class) scores above
0.05 and above 0.1 equals ``TARGET_RATES``: the densities of ``benchmarks/nms_cpu.py``'s
plausible 80-class image (softmax over logits with a strong background, 15% of the anchors near
one of 8 objects: 6,500 and 1,600 of 12,810 x 80 scores at M2Det-320), so the CPU and GPU
post-processing figures describe the same candidate load. The boxes are the decoded regression
of the seeded loc head (offsets of about unit spread, as SSD's variance encoding intends), so
candidates overlap the way neighbouring priors do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from m2det.checkpoint import official_to_ours, ours_to_official
from m2det.config import M2DetConfig
from m2det.model import M2Det
from m2det.seeded_weights import seeded_state
from m2det.state_dict import check_and_load

#: Fraction of (anchor, foreground class) softmax scores above each threshold (see module doc).
TARGET_RATES = {0.05: 0.0064, 0.1: 0.00156}


def seeded_model(config: M2DetConfig) -> M2Det:
    """``M2Det(config)`` in eval mode with ``seeded_state`` weights (uncalibrated)."""
    model = M2Det(config).eval()
    official = ours_to_official(model.state_dict(), config)
    state = seeded_state({k: (v.shape, v.dtype) for k, v in official.items()})
    check_and_load(model, official_to_ours(state), source="seeded official-layout weights")
    return model


@dataclass(frozen=True)
class Calibration:
    """Conf-head calibration: foreground logits x ``gain``, background x ``gain`` + ``offset``;
    ``rates``: the fractions reached on the calibration images (threshold -> fraction)."""

    gain: float
    offset: float
    rates: dict[float, float]

    def to_dict(self) -> dict[str, object]:
        return {"gain": self.gain, "background_offset": self.offset,
                "rates": {str(t): r for t, r in self.rates.items()},
                "target_rates": {str(t): r for t, r in TARGET_RATES.items()}}


@torch.inference_mode()
def conf_logits(model: M2Det, images: Tensor) -> Tensor:
    """Raw conf logits [N,A,K] float32 of ``images`` [N,3,S,S] (BGR 0-255), one at a time."""
    return torch.cat([model(images[i:i + 1])[1].float() for i in range(images.shape[0])])


def score_rates(logits: Tensor, gain: float, offset: float,
                thresholds: tuple[float, ...] = tuple(TARGET_RATES)) -> dict[float, float]:
    """Fraction of foreground softmax scores above each threshold for logits [N,A,K]
    transformed by (gain, offset)."""
    z = logits * gain
    z[..., 0] += offset
    p = torch.softmax(z, -1)[..., 1:]
    return {t: float((p > t).sum()) / p.numel() for t in thresholds}


def fit_calibration(logits: Tensor, steps: int = 20) -> Calibration:
    """(gain, offset) matching ``TARGET_RATES`` on logits [N,A,K]. For a gain, the offset is
    bisected so that the rate above the higher threshold matches (the rate falls as the offset
    grows); the gain is bisected on a log scale so that the ratio of the two rates matches (it
    falls as the gain grows; a gain too small for the higher threshold to be reached at all
    counts as too small). Returns the last point; ``rates`` says what it reaches."""
    lo_t, hi_t = sorted(TARGET_RATES)
    want_ratio = TARGET_RATES[lo_t] / TARGET_RATES[hi_t]
    bound = 200.0

    def offset_for(gain: float) -> float | None:
        if score_rates(logits, gain, -bound, (hi_t,))[hi_t] < TARGET_RATES[hi_t]:
            return None  # even without background the scores are too flat
        lo, hi = -bound, bound
        for _ in range(steps):
            mid = (lo + hi) / 2
            if score_rates(logits, gain, mid, (hi_t,))[hi_t] > TARGET_RATES[hi_t]:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    log_lo, log_hi = math.log(1e-3), math.log(1e3)
    best = (1.0, 0.0)
    for _ in range(steps):
        gain = math.exp((log_lo + log_hi) / 2)
        offset = offset_for(gain)
        if offset is None:
            log_lo = math.log(gain)
            continue
        best = (gain, offset)
        rates = score_rates(logits, gain, offset)
        if rates[lo_t] / max(rates[hi_t], 1e-12) > want_ratio:
            log_lo = math.log(gain)
        else:
            log_hi = math.log(gain)
    return Calibration(best[0], best[1], score_rates(logits, *best))


@torch.no_grad()
def apply_calibration(model: M2Det, calibration: Calibration) -> M2Det:
    """Scale ``model``'s conf convs in place: every output x gain, background outputs + offset."""
    k = model.head.num_classes
    for conv in model.head.conf:
        assert isinstance(conv, torch.nn.Conv2d) and conv.bias is not None
        conv.weight.mul_(calibration.gain)
        conv.bias.mul_(calibration.gain)
        conv.bias[0::k] += calibration.offset
    return model


def calibrated_model(config: M2DetConfig, images: Tensor) -> tuple[M2Det, Calibration]:
    """``seeded_model(config)`` on ``images``' device, calibrated on ``images`` [N,3,S,S]."""
    model = seeded_model(config).to(images.device)
    calibration = fit_calibration(conf_logits(model, images))
    return apply_calibration(model, calibration), calibration
