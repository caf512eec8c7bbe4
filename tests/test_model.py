from __future__ import annotations

import pytest
import torch

from m2det.checkpoint import (
    load_model,
    official_to_ours,
    ours_to_official,
    read_checkpoint,
    save_model,
)
from m2det.config import PRESETS, M2DetConfig, feature_map_sizes, get_config
from m2det.errors import M2DetError
from m2det.model import M2Det, M2DetInference, build_model
from m2det.priors import make_priors


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("batch", [1, 2])
def test_output_shapes_every_preset(name: str, batch: int) -> None:
    cfg = PRESETS[name]
    with torch.device("meta"):  # shapes only: the 800 preset costs ~930 GFLOP per image on a CPU
        model = M2DetInference(M2Det(cfg)).eval()
        boxes, scores = model(torch.empty(batch, 3, cfg.input_size, cfg.input_size))
    assert boxes.shape == (batch, cfg.num_priors, 4)
    assert scores.shape == (batch, cfg.num_priors, cfg.num_classes - 1)


def test_prior_counts_and_feature_maps() -> None:
    assert (
        PRESETS["m2det320_vgg"].num_priors == 12810 == make_priors(PRESETS["m2det320_vgg"]).shape[0]
    )
    assert feature_map_sizes(320, 6) == (40, 20, 10, 5, 3, 1)
    assert feature_map_sizes(512, 6) == (64, 32, 16, 8, 4, 2)
    assert feature_map_sizes(800, 6) == (100, 50, 25, 13, 7, 5)
    pri = make_priors(PRESETS["m2det512_vgg"])
    assert pri.min() >= 0 and pri.max() <= 1
    # first cell of the first level: square min-size prior centred on the cell
    assert torch.allclose(
        pri[0],
        torch.tensor([4 / 512, 4 / 512, round(0.06 * 512, 2) / 512, round(0.06 * 512, 2) / 512]),
    )


def test_parameter_count_matches_release() -> None:
    with torch.device("meta"):
        n = sum(p.numel() for p in M2Det(PRESETS["m2det320_vgg"]).parameters())
        n_sfam = sum(
            p.numel() for p in M2Det(PRESETS["m2det320_vgg"].replace(sfam=True)).parameters()
        )
    assert round(n / 1e6, 2) == 132.63 and round(n_sfam / 1e6, 2) == 133.16  # official_configs.json


def test_tiny_forward_real_values() -> None:
    cfg = PRESETS["m2det_tiny"]
    model = M2DetInference(build_model(cfg).eval())
    with torch.no_grad():
        boxes, scores = model(torch.rand(2, 3, cfg.input_size, cfg.input_size) * 255)
    assert torch.isfinite(boxes).all()
    total = scores.sum(-1)
    assert (
        (total > 0) & (total < 1)
    ).all()  # softmax over C classes with the background column dropped


@pytest.mark.parametrize("name,sfam", [("m2det320_vgg", True), ("m2det320_resnet101", False)])
def test_official_key_conversion_round_trip(name: str, sfam: bool) -> None:
    cfg = PRESETS[name].replace(sfam=sfam)
    with torch.device("meta"):
        state = M2Det(cfg).state_dict()
    official = ours_to_official(state, cfg)
    assert "leach.7.conv.weight" in official and "unet8.toplayer.0.conv.weight" in official
    assert ("sfam_module.fc2.5.weight" in official) == sfam
    assert any(k.startswith("base.") for k in official)
    back = official_to_ours({f"module.{k}": v for k, v in official.items()})  # DataParallel prefix
    assert list(back) == list(state)


def test_shared_official_modules_last_entry_wins() -> None:
    """The official model shares one FFMv2 (``leach``) across levels: loading N different entries
    into it leaves the last one; the converter does the same."""
    cfg = PRESETS["m2det_tiny"]
    state = ours_to_official(build_model(cfg).state_dict(), cfg)
    for i in range(cfg.num_levels):
        state[f"leach.{i}.conv.weight"] = torch.full_like(state["leach.0.conv.weight"], float(i))
    ours = official_to_ours(state)
    assert (ours["ffm2.reduce.conv.weight"] == cfg.num_levels - 1).all()


def test_checkpoint_round_trip_and_errors(tmp_path) -> None:
    cfg = PRESETS["m2det_tiny"]
    model = build_model(cfg)
    save_model(model, tmp_path / "a.pth")
    assert read_checkpoint(tmp_path / "a.pth")["config"]["name"] == "m2det_tiny"
    again = load_model(tmp_path / "a.pth")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file
    # official layout, bare state_dict, needs --config
    torch.save(ours_to_official(model.state_dict(), cfg), tmp_path / "off.pth")
    assert isinstance(load_model(tmp_path / "off.pth", "m2det_tiny"), M2Det)
    with pytest.raises(M2DetError, match="records no config"):
        load_model(tmp_path / "off.pth")
    with pytest.raises(M2DetError, match="for config 'm2det_tiny', not 'm2det320_vgg'"):
        load_model(tmp_path / "a.pth", "m2det320_vgg")
    with pytest.raises(M2DetError, match="does not fit this model: .*shape: ffm2"):
        load_model(tmp_path / "off.pth", cfg.replace(name="wider", planes=96))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(M2DetError, match="junk.pth: not a PyTorch checkpoint"):
        load_model(tmp_path / "junk.pth", "m2det_tiny")
    with pytest.raises(M2DetError, match="not found"):
        load_model(tmp_path / "missing.pth")


def test_unknown_config_lists_valid_names() -> None:
    with pytest.raises(M2DetError, match="valid: m2det320_vgg, m2det512_vgg"):
        get_config("m2det300")


def test_config_validation_and_dict_round_trip() -> None:
    cfg = PRESETS["m2det512_resnet101"]
    assert M2DetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(M2DetError, match="steps"):
        cfg.replace(num_scales=5)
    with pytest.raises(M2DetError, match="unknown config fields"):
        M2DetConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("levels,planes,sfam", [(2, 128, False), (4, 128, True), (8, 256, True)])
def test_table3_variants_expressible(levels: int, planes: int, sfam: bool) -> None:
    cfg = PRESETS["m2det320_vgg"].replace(num_levels=levels, planes=planes, sfam=sfam)
    with torch.device("meta"):
        loc, conf = M2Det(cfg).eval()(torch.empty(1, 3, 320, 320))
    assert loc.shape == (1, 12810, 4) and conf.shape == (1, 12810, 81)


def test_backbone_weight_loaders(tmp_path) -> None:
    """vgg16_reducedfc.pth layout ("0.weight" ... "33.bias") and torchvision ResNet state_dicts."""
    from m2det.backbones import ResNet, VGG16Reduced, load_backbone_weights

    vgg = VGG16Reduced(width=0.25)
    reducedfc = {
        k.removeprefix("layers."): torch.randn_like(v) for k, v in vgg.state_dict().items()
    }
    assert "0.weight" in reducedfc and "33.bias" in reducedfc  # the official file's keys
    torch.save(reducedfc, tmp_path / "vgg16_reducedfc.pth")
    load_backbone_weights(vgg, str(tmp_path / "vgg16_reducedfc.pth"))
    assert torch.equal(vgg.layers[31].weight, reducedfc["31.weight"])

    res = ResNet("resnet18")
    tv = {
        k: torch.randn_like(v) if v.is_floating_point() else v for k, v in res.state_dict().items()
    }
    tv |= {
        "fc.weight": torch.zeros(1000, 512),
        "fc.bias": torch.zeros(1000),
    }  # torchvision's classifier
    torch.save(tv, tmp_path / "resnet18.pth")
    load_backbone_weights(res, str(tmp_path / "resnet18.pth"))
    assert torch.equal(res.layer4[1].conv2.weight, tv["layer4.1.conv2.weight"])
    assert res.out_channels == (128, 512)
    with pytest.raises(M2DetError, match="does not fit"):
        load_backbone_weights(ResNet("resnet50"), str(tmp_path / "resnet18.pth"))
    with pytest.raises(M2DetError, match="not found"):
        load_backbone_weights(res, str(tmp_path / "nope.pth"))


def test_vgg_batchnorm_variant_taps_the_same_layers() -> None:
    """``backbone_bn`` (training from scratch) inserts BatchNorm after every conv; the released
    tap indices (22 = relu(conv4_3), 34 = relu(conv7)) keep their meaning."""
    from m2det.backbones import VGG16Reduced

    plain, with_bn = VGG16Reduced(0.125), VGG16Reduced(0.125, bn=True)
    assert plain.taps == (22, 34) and len(plain.layers) == 35
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.layers) == 15
    for net in (plain, with_bn):
        assert all(isinstance(net.layers[t], torch.nn.ReLU) for t in net.taps)
        assert isinstance(net.layers[net.taps[0] - (2 if net is with_bn else 1)], torch.nn.Conv2d)
    x = torch.rand(1, 3, 160, 160)
    assert [f.shape for f in plain.eval()(x)] == [f.shape for f in with_bn.eval()(x)]
    with pytest.raises(M2DetError, match="only supported for vgg16"):
        M2Det(PRESETS["m2det320_resnet101"].replace(backbone_bn=True))


def test_background_prior_init_sets_initial_class_probabilities() -> None:
    cfg = PRESETS["m2det_tiny"]
    model = build_model(cfg)
    model.head.init_background_prior(0.99)
    sources = [torch.zeros(1, model.head.conf[0].in_channels, s, s)
               for s in feature_map_sizes(cfg.input_size, cfg.num_scales)]
    _, conf = model.head(sources)  # zero features: the biases alone decide
    probs = conf.softmax(-1)
    assert conf.shape[1] == make_priors(cfg).shape[0]
    torch.testing.assert_close(probs[..., 0], torch.full_like(probs[..., 0], 0.99))
    torch.testing.assert_close(probs[..., 1:], torch.full_like(probs[..., 1:], 0.01 / 5))
    with pytest.raises(ValueError, match="background probability"):
        model.head.init_background_prior(1.0)
