"""The model is the official M2Det: outputs and priors checked against fixtures produced by the
official qijiezhao/M2Det code (tests/official/official_outputs.py --write-golden, run where that
checkout exists; the fixtures hold sampled outputs and seeds, no official code)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from m2det.checkpoint import official_to_ours, ours_to_official
from m2det.config import PRESETS, get_config
from m2det.model import M2Det
from m2det.priors import make_priors
from m2det.seeded_weights import seeded_state
from m2det.state_dict import check_and_load
from tests.official.official_outputs import seeded_input

GOLDEN = Path(__file__).parent / "official" / "golden"


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["m2det320_vgg", "m2det320_vgg_sfam", "m2det320_resnet101"])
def test_outputs_match_official_model(fixture: str) -> None:
    gold = np.load(GOLDEN / f"{fixture}.npz")
    cfg = get_config(fixture.removesuffix("_sfam")).replace(sfam=fixture.endswith("_sfam"))
    model = M2Det(cfg).eval()
    shapes = {k: (v.shape, v.dtype) for k, v in ours_to_official(model.state_dict(), cfg).items()}
    check_and_load(model, official_to_ours(seeded_state(shapes)), source="seeded official weights")
    with torch.no_grad():
        loc, conf = model(seeded_input(cfg.input_size))
    assert tuple(loc.shape) == tuple(gold["loc_shape"]) and tuple(conf.shape) == tuple(
        gold["conf_shape"]
    )
    scale = max(
        1.0, float(np.abs(gold["conf"]).max()) / 100
    )  # the ResNet fixture's values reach ~1e4
    np.testing.assert_allclose(
        loc.flatten()[gold["loc_idx"]].numpy(), gold["loc"], rtol=0, atol=1e-4 * scale
    )
    np.testing.assert_allclose(
        conf.flatten()[gold["conf_idx"]].numpy(), gold["conf"], rtol=0, atol=1e-4 * scale
    )


@pytest.mark.parametrize("name", list(PRESETS))
def test_priors_identical_to_official(name: str) -> None:
    hashes = json.loads((GOLDEN / "prior_sha256.json").read_text())
    assert hashlib.sha256(make_priors(PRESETS[name]).numpy().tobytes()).hexdigest() == hashes[name]
