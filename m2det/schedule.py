"""Learning-rate schedules: the released step schedule (scaled to the run's epochs), cosine, and
custom steps, each with a linear warm-up; the learning rate is a pure function of the epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from m2det.errors import M2DetError

#: The released schedule (configs/*.py): lr 0.004 -> x0.5 at epoch 90, x0.1 at 110, x0.01 at 130,
#: x0.001 at 150 (160 epochs), after a 5-epoch linear warm-up from 1e-6.
OFFICIAL_STEPS = (90, 110, 130, 150)


OFFICIAL_FACTORS = (0.5, 0.1, 0.01, 0.001)


@dataclass(frozen=True)
class Schedule:
    """Learning rate as a pure function of the (fractional) epoch.

    kind "step": ``lr * factors[i]`` once ``epoch >= steps[i]``; "cosine": from ``lr`` down to
    ``lr * final_factor`` over the epochs after the warm-up. Both start with a linear warm-up
    from ``warmup_lr`` over ``warmup_epochs`` (per iteration, as released).
    """

    kind: str = "step"
    lr: float = 0.004
    epochs: int = 160
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-6
    steps: tuple[float, ...] = OFFICIAL_STEPS
    factors: tuple[float, ...] = OFFICIAL_FACTORS
    final_factor: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in ("step", "cosine"):
            raise M2DetError(f"unknown schedule {self.kind!r} (step, cosine)")
        if self.lr <= 0 or self.epochs < 1 or self.warmup_epochs < 0:
            raise M2DetError("need lr > 0, epochs >= 1 and warmup_epochs >= 0")
        if len(self.steps) != len(self.factors) or list(self.steps) != sorted(self.steps):
            raise M2DetError("schedule steps must be ascending, one factor per step")

    def __call__(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_lr + (self.lr - self.warmup_lr) * epoch / self.warmup_epochs
        if self.kind == "step":
            passed = sum(epoch >= s for s in self.steps)
            return self.lr * (self.factors[passed - 1] if passed else 1.0)
        span = max(self.epochs - self.warmup_epochs, 1e-9)
        t = min(max((epoch - self.warmup_epochs) / span, 0.0), 1.0)
        low = self.lr * self.final_factor
        return low + (self.lr - low) * 0.5 * (1.0 + math.cos(math.pi * t))


def parse_schedule(spec: str, lr: float, epochs: int, warmup_epochs: float,
                   gamma: float = 0.1) -> Schedule:
    """``official`` (released steps scaled to ``epochs``/160), ``cosine``, or
    ``step:E1,E2,...`` (x``gamma`` at each epoch)."""
    if spec == "official":
        scale = epochs / 160.0
        return Schedule("step", lr, epochs, warmup_epochs,
                        steps=tuple(s * scale for s in OFFICIAL_STEPS), factors=OFFICIAL_FACTORS)
    if spec == "cosine":
        return Schedule("cosine", lr, epochs, warmup_epochs, steps=(), factors=())
    if spec.startswith("step:"):
        try:
            steps = tuple(float(s) for s in spec[5:].split(",") if s)
        except ValueError:
            raise M2DetError(f"bad schedule {spec!r}: expected step:E1,E2,...") from None
        return Schedule("step", lr, epochs, warmup_epochs, steps=steps,
                        factors=tuple(gamma ** (i + 1) for i in range(len(steps))))
    raise M2DetError(f"unknown schedule {spec!r} (official, cosine, step:E1,E2,...)")
