"""Strict state_dict loading: every missing or unexpected key and every shape mismatch is one
M2DetError line (used for whole models and for backbone-only weights alike)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from m2det.errors import M2DetError


def check_and_load(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Strict load; any missing/unexpected key or shape mismatch is one M2DetError line."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]  # fmt: skip
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
        raise M2DetError(f"{source} does not fit this model: {'; '.join(parts)}")
    module.load_state_dict(state, strict=True)
