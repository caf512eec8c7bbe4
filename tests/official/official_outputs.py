"""Run the OFFICIAL qijiezhao/M2Det model (from a checkout the user points at; never vendored here)
on seeded random weights and inputs, and compare it with this project's model loading the same
weights through the official-layout converter.

    python tests/official/official_outputs.py --official /path/to/M2Det \
        --config m2det320_vgg [--sfam] [--write-golden]

--write-golden stores a small fixture (sampled official outputs + the seeds) that
``tests/test_official_parity.py`` checks in CI without the official code.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch

from m2det.seeded_weights import seeded_state

GOLDEN_DIR = Path(__file__).with_name("golden")
INPUT_SEED, SAMPLES = 99, 4096


def import_official(repo: Path) -> dict:
    """The official modules (``m2det.benchmarks.official.import_official``: ``m2det``,
    ``anchors``, ``PriorBox``, ...), with ``pretrained=True`` kept offline: it would download
    ImageNet weights, which the seeded ones overwrite anyway."""
    from m2det.benchmarks.official import import_official as import_modules

    off = import_modules(repo)
    resnet = sys.modules["layers.resnet"]
    by_url = {url: name for name, url in resnet.model_urls.items()}
    resnet.model_zoo = types.SimpleNamespace(  # type: ignore[attr-defined]
        load_url=lambda url: getattr(resnet, by_url[url])(pretrained=False).state_dict()
    )
    return off


def official_config(name: str) -> dict:
    from m2det.benchmarks.official import official_config as as_official
    from m2det.config import get_config

    return as_official(get_config(name))


def seeded_input(size: int) -> torch.Tensor:
    """Two BGR 0-255 images [2,3,S,S]."""
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(INPUT_SEED)) * 255


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", type=Path, required=True)
    ap.add_argument("--config", default="m2det320_vgg")
    ap.add_argument("--sfam", action="store_true")
    ap.add_argument("--write-golden", action="store_true")
    args = ap.parse_args()

    from m2det.checkpoint import official_to_ours
    from m2det.config import get_config
    from m2det.model import M2Det
    from m2det.state_dict import check_and_load

    off = import_official(args.official)["m2det"]
    cfg = get_config(args.config).replace(sfam=args.sfam)
    ocfg = official_config(args.config) | {"sfam": args.sfam}
    net = off.build_net("train", size=cfg.input_size, config=ocfg).eval()  # 'train' = raw logits
    state = seeded_state({k: (v.shape, v.dtype) for k, v in net.state_dict().items()})
    net.load_state_dict(state)
    ours = M2Det(cfg).eval()
    check_and_load(ours, official_to_ours(state), source="official state_dict")

    x = seeded_input(cfg.input_size)
    mean = torch.tensor(cfg.rgb_means).view(1, 3, 1, 1)
    with torch.no_grad():
        loc_o, conf_o = net(x - mean)  # the official data pipeline subtracts the mean
        loc_m, conf_m = ours(x)  # ours: mean inside the model
    dl, dc = (loc_o - loc_m).abs().max().item(), (conf_o - conf_m).abs().max().item()
    print(
        f"{args.config} sfam={args.sfam}: official vs ours max|diff| loc {dl:.3g} conf {dc:.3g} "
        f"(loc range {loc_o.abs().max():.3g}, conf range {conf_o.abs().max():.3g})"
    )
    if args.write_golden:
        rng = np.random.default_rng(0)
        idx = rng.choice(loc_o.numel(), SAMPLES, replace=False)
        cidx = rng.choice(conf_o.numel(), SAMPLES, replace=False)
        GOLDEN_DIR.mkdir(exist_ok=True)
        name = f"{args.config}{'_sfam' if args.sfam else ''}.npz"
        np.savez_compressed(
            GOLDEN_DIR / name,
            loc_idx=idx,
            loc=loc_o.flatten()[idx].numpy(),
            conf_idx=cidx,
            conf=conf_o.flatten()[cidx].numpy(),
            loc_shape=np.array(loc_o.shape),
            conf_shape=np.array(conf_o.shape),
        )
        print("wrote", GOLDEN_DIR / name)
    assert dl < 1e-4 and dc < 1e-4, "outputs differ from the official model"


if __name__ == "__main__":
    main()


def official_prior_hashes(repo: Path) -> dict[str, str]:
    """sha256 of the official PriorBox output (float32 bytes) for every preset of ours."""
    import hashlib

    from m2det.config import PRESETS  # before the official repo shadows the name ``m2det``

    off = import_official(repo)
    anchors_mod, PriorBox = off["anchors"], off["PriorBox"]  # noqa: N806 - the official class

    out = {}
    for name, c in PRESETS.items():
        anchors = anchors_mod.mk_anchors(
            c.input_size, c.input_size, list(c.sizes), list(c.steps), num_reglayer=c.num_scales
        )
        pri = PriorBox(anchors).forward().numpy().astype(np.float32)
        out[name] = hashlib.sha256(pri.tobytes()).hexdigest()
    return out
