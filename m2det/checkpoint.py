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
    """A checkpoint file -> ``{"model": state_dict (our keys), "config": dict | None, ...}``.

    Anything else is one short M2DetError naming the file and what it is: missing, empty,
    truncated, damaged, not a PyTorch checkpoint, pickled objects instead of weights, or a
    checkpoint of another model."""
    path = Path(path)
    if not path.is_file():
        raise M2DetError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt/foreign files are user errors
        raise M2DetError(f"{path}: {_unreadable(path, e)}") from None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return dict(obj)
    state = _state_dict_of(obj)
    if state is None:
        raise M2DetError(f"{path}: not a model checkpoint (holds {_kind(obj)})")
    state = strip_module_prefix(state)
    if is_official_layout(state):
        state = official_to_ours(state)
    if not any(k.startswith(_OUR_PREFIXES) for k in state):
        example = next(iter(state))
        many = f"{len(state)} tensors such as" if len(state) > 1 else "1 tensor,"
        raise M2DetError(f"{path}: a checkpoint of another model ({many} {example!r}; none of "
                         "them is an M2Det weight)")
    return {"model": state, "config": None}


#: First components of this project's state_dict keys (what an M2Det checkpoint must share).
_OUR_PREFIXES = ("backbone.", "ffm1.", "ffm2.", "tums.", "sfam.", "norm.", "head.")
#: The first bytes of the two formats ``torch.save`` has written: a zip archive (PyTorch 1.6+)
#: and the legacy pickle stream, which opens with a pickled magic number.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _unreadable(path: Path, error: Exception) -> str:
    """What a file that ``torch.load`` refused is, in a few words."""
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes), not a checkpoint"
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    refused = re.search(r"GLOBAL ([\w.]+)", str(error))
    if refused:  # weights_only=True met a class it will not construct
        return (f"holds pickled Python objects ({refused.group(1)}), not only weights; loading it "
                "would run their code: save model.state_dict() instead")
    if head.startswith(_ZIP_MAGIC):
        import zipfile

        if not zipfile.is_zipfile(path):
            return (f"truncated PyTorch checkpoint ({size:,} bytes, the end of the archive is "
                    "missing)")
        return f"damaged PyTorch checkpoint ({size:,} bytes: {_first_line(error)})"
    if head.startswith(_LEGACY_MAGIC):
        if isinstance(error, EOFError) or re.search(r"ran out of input|unexpected EOF",
                                                    str(error), re.IGNORECASE):
            return f"truncated PyTorch checkpoint ({size:,} bytes, legacy format)"
        return f"damaged PyTorch checkpoint ({size:,} bytes, legacy format: {_first_line(error)})"
    return "not a PyTorch checkpoint"


def _first_line(error: Exception, limit: int = 80) -> str:
    """The telling part of a ``torch.load`` error, cut to ``limit`` characters."""
    message = str(error)
    if "WeightsUnpickler error:" in message:  # skip the paragraph about weights_only
        message = message.split("WeightsUnpickler error:", 1)[1]
    text = next((line.strip() for line in message.splitlines() if line.strip()),
                type(error).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _state_dict_of(obj: Any) -> dict[str, Tensor] | None:
    """A mapping of name -> tensor: ``obj`` itself, or the one it wraps under ``state_dict`` /
    ``model`` (how other trainers save); None for anything else."""
    for candidate in (obj, *(obj.get(k) for k in ("state_dict", "model")
                             if isinstance(obj, Mapping))):
        if (isinstance(candidate, Mapping) and candidate
                and all(isinstance(v, Tensor) for v in candidate.values())):
            return {str(k): v for k, v in candidate.items()}
    return None


def _kind(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = ", ".join(map(repr, list(obj)[:3]))
        return f"a dict with keys {keys}" if obj else "an empty dict"
    return f"a {type(obj).__name__}"


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
