"""The bundled demo checkpoint (``m2det/assets/m2det_tiny_shapes.pth``): it loads as a float32
model of its recorded config, and its recorded COCO AP is reproduced on the validation set
regenerated from the seed in its JSON (no dataset is committed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import m2det
from m2det.checkpoint import load_model
from m2det.coco_eval import evaluate_coco
from m2det.nms import get_nms_params
from m2det.predictor import ModelPredictor
from m2det.shapes import generate

ASSETS = Path(m2det.__file__).parent / "assets"
CHECKPOINT = ASSETS / "m2det_tiny_shapes.pth"
META = json.loads((ASSETS / "m2det_tiny_shapes.json").read_text())


def test_bundled_checkpoint_loads_as_float32_model() -> None:
    model = load_model(CHECKPOINT)
    assert model.config.name == META["config"]
    assert CHECKPOINT.stat().st_size <= 20 * 2**20
    floats = [v for v in model.state_dict().values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)
    images = torch.full((1, 3, model.config.input_size, model.config.input_size), 128.0)
    loc, conf = model(images)
    assert loc.shape == (1, model.config.num_priors, 4) and torch.isfinite(conf).all()


@pytest.mark.slow
def test_bundled_checkpoint_reproduces_recorded_ap(tmp_path: Path) -> None:
    spec = META["val_set"]
    paths = generate(tmp_path, train=0, val=spec["images"], seed=spec["seed"], size=spec["size"])
    model = load_model(CHECKPOINT)
    predict = ModelPredictor(model, get_nms_params("official", **META["nms"]), torch.device("cpu"))
    metrics = evaluate_coco(predict, paths["val_json"], paths["val_images"],
                            config_labels=model.config.labels, batch=spec["batch"],
                            progress=False)
    assert metrics["num_images"] == spec["images"]
    for key in ("AP", "AP50", "AP75"):
        assert metrics[key] == pytest.approx(META["val"][key], abs=0.01), key
