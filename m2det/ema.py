"""Exponential moving average of a model's weights (``m2det-train --ema``)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


class WeightEMA:
    """Exponential moving average of a model's parameters and buffers (the weights that
    ``--ema`` evaluates and saves).

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's
    ``ExponentialMovingAverage`` ramp), so the average forgets the random init quickly; integer
    buffers (BatchNorm's ``num_batches_tracked``) are copied. The tensor pairs are listed once,
    so an update is a few fused in-place ops (``torch.optim.swa_utils.AveragedModel`` regroups
    every tensor on every call).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0
        pairs = list(zip(self._tensors(self.module), self._tensors(model), strict=True))
        self._floats = [(a, c) for a, c in pairs if a.is_floating_point()]
        self._others = [(a, c) for a, c in pairs if not a.is_floating_point()]

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        return [t.detach() for t in (*model.parameters(), *model.buffers())]

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights (call after each step)."""
        weight = 1.0 - self.current_decay()
        for averaged, current in self._floats:
            averaged.lerp_(current, weight)
        for averaged, current in self._others:
            averaged.copy_(current)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
