"""Checkpoints: the project's format, the official qijiezhao/M2Det layout, and strict loading.

Project checkpoint: ``{"format": "m2det-toolkit/1", "model": state_dict, "config": {...}, ...}``
(the trainer adds optimizer/scheduler/RNG state). Official release: a bare state_dict, optionally
with ``module.`` prefixes. Everything is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from m2det.config import M2DetConfig
from m2det.errors import M2DetError
from m2det.io import atomic_torch_save
from m2det.model import M2Det
from m2det.state_dict import check_and_load

FORMAT = "m2det-toolkit/1"

# (official pattern, ours) for keys that map one-to-one; {t} is the TUM index.
_RENAMES: list[tuple[str, str]] = [
    (r"^base\.(?=\d)", "backbone.layers."),  # VGG: the official ModuleList is ``base`` itself
    (r"^base\.", "backbone."),
    (r"^reduce\.", "ffm1.reduce."),
    (r"^up_reduce\.", "ffm1.up_reduce."),
    (r"^Norm\.", "norm."),
    (r"^loc\.", "head.loc."),
    (r"^conf\.", "head.conf."),
    (r"^unet(\d+)\.layers\.", "tums.{t}.encoder."),
    (r"^unet(\d+)\.toplayer\.0\.", "tums.{t}.toplayer."),
    (r"^unet(\d+)\.latlayer\.", "tums.{t}.lateral."),
    (r"^unet(\d+)\.smooth\.", "tums.{t}.smooth."),
]
# Modules the official code repeats (one object, N entries): the last entry is what its
# ``load_state_dict`` leaves in the shared parameter, so the last one wins here too.
_SHARED = [(r"^leach\.(\d+)\.", "ffm2.reduce."), (r"^sfam_module\.(fc[12])\.(\d+)\.", "sfam.{fc}.")]


def is_official_layout(state: Mapping[str, Any]) -> bool:
    return any(k.startswith(("unet1.", "leach.")) for k in state)


def strip_module_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def official_to_ours(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert an official M2Det state_dict to this project's key names."""
    out: dict[str, Tensor] = {}
    shared_rank: dict[str, int] = {}
    for key, value in strip_module_prefix(state).items():
        if key.startswith("base.fc."):  # the official ResNet keeps an unused classifier
            continue
        m = re.match(_SHARED[0][0], key)
        if m:
            new, rank = _SHARED[0][1] + key[m.end() :], int(m.group(1))
        elif m := re.match(_SHARED[1][0], key):
            new, rank = _SHARED[1][1].format(fc=m.group(1)) + key[m.end() :], int(m.group(2))
        else:
            for pat, rep in _RENAMES:
                if m := re.match(pat, key):
                    t = int(m.group(1)) - 1 if m.groups() else 0  # unet1 -> tums.0
                    new = rep.format(t=t) + key[m.end() :]
                    break
            else:
                new = key
            rank = 0
        if rank >= shared_rank.get(new, -1):
            out[new], shared_rank[new] = value, rank
    return out


def ours_to_official(state: Mapping[str, Tensor], config: M2DetConfig) -> dict[str, Tensor]:
    """Inverse of :func:`official_to_ours` (shared modules are written once per official entry)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("ffm2.reduce."):
            for i in range(config.num_levels):
                out[f"leach.{i}." + key.removeprefix("ffm2.reduce.")] = value
            continue
        if m := re.match(r"^sfam\.(fc[12])\.", key):
            for i in range(config.num_scales):
                out[f"sfam_module.{m.group(1)}.{i}." + key[m.end() :]] = value
            continue
        for official, ours in [
            ("base.", "backbone.layers."), ("base.", "backbone."),
            ("reduce.", "ffm1.reduce."), ("up_reduce.", "ffm1.up_reduce."),
            ("Norm.", "norm."), ("loc.", "head.loc."), ("conf.", "head.conf."),
        ]:  # fmt: skip
            if key.startswith(ours):
                out[official + key.removeprefix(ours)] = value
                break
        else:
            m = re.match(r"^tums\.(\d+)\.(encoder|toplayer|lateral|smooth)\.", key)
            if m is None:
                raise ValueError(f"no official name for {key}")
            part = {"encoder": "layers.", "toplayer": "toplayer.0.", "lateral": "latlayer.",
                    "smooth": "smooth."}[m.group(2)]  # fmt: skip
            out[f"unet{int(m.group(1)) + 1}.{part}" + key[m.end() :]] = value
    return out


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file -> ``{"model": state_dict (our keys), "config": dict | None, ...}``."""
    path = Path(path)
    if not path.is_file():
        raise M2DetError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt/foreign files are user errors
        raise M2DetError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return dict(obj)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state = strip_module_prefix(obj)
        if is_official_layout(state):
            state = official_to_ours(state)
        return {"model": state, "config": None}
    raise M2DetError(f"{path} is neither an M2Det checkpoint nor a state_dict")


def resolve_config(
    ckpt: Mapping[str, Any], config: M2DetConfig | str | None, source: str
) -> M2DetConfig:
    """The config to build: the one recorded in the checkpoint, or the one the user named (which
    must then agree with the recorded one)."""
    from m2det.config import get_config

    recorded = M2DetConfig.from_dict(ckpt["config"]) if ckpt.get("config") else None
    named = get_config(config) if isinstance(config, str) else config
    if named is None and recorded is None:
        raise M2DetError(f"{source} records no config: pass --config NAME")
    if named is not None and recorded is not None and named.name != recorded.name:
        raise M2DetError(
            f"{source} is a checkpoint for config {recorded.name!r}, not {named.name!r}"
        )
    return recorded or named  # type: ignore[return-value]


def load_model(path: str | Path, config: M2DetConfig | str | None = None) -> M2Det:
    """Build the model of a checkpoint (project or official layout), load its weights, eval mode."""
    ckpt = read_checkpoint(path)
    cfg = resolve_config(ckpt, config, str(path))
    model = M2Det(cfg)
    check_and_load(model, ckpt["model"], source=f"checkpoint {path} (config {cfg.name})")
    return model.eval()


def save_model(model: M2Det, path: str | Path, **extra: Any) -> None:
    """Write a project checkpoint atomically (``extra`` adds trainer state, metrics, ...)."""
    atomic_torch_save(
        {"format": FORMAT, "model": model.state_dict(), "config": model.config.to_dict(), **extra},
        path,
    )
