"""MultiBoxLoss: batched matching equals the per-image official match, a perfect prediction has
~zero loss, and hard negative mining keeps 3 negatives per positive, the hardest ones."""

from __future__ import annotations

import torch

from m2det.box_utils import encode, match, point_form
from m2det.config import get_config
from m2det.loss import MultiBoxLoss, hard_negatives, match_batch
from m2det.priors import make_priors

VARIANCE = (0.1, 0.2)


def _random_targets(counts: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * 0.6
        wh = torch.rand(n, 2, generator=g) * 0.35 + 0.03
        labels = torch.randint(0, 5, (n, 1), generator=g).float()
        out.append(torch.cat([xy, xy + wh, labels], 1))
    return out


def test_match_batch_equals_official_match_per_image() -> None:
    priors = make_priors(get_config("m2det_tiny"))
    targets = _random_targets([3, 0, 6, 1, 2])
    # two boxes sharing a best prior: the later truth must win it, as in the official loop
    targets[4] = torch.tensor([[0.1, 0.1, 0.3, 0.3, 1.0], [0.1, 0.1, 0.3, 0.31, 2.0]])
    loc, conf = match_batch(targets, priors, VARIANCE)
    assert loc.shape == (5, priors.shape[0], 4) and conf.shape == (5, priors.shape[0])
    for b, t in enumerate(targets):
        if len(t) == 0:
            assert (conf[b] == 0).all()
            continue
        ref_loc, ref_conf = match(t[:, :4], t[:, 4].long(), priors, VARIANCE)
        assert torch.equal(conf[b], ref_conf)
        pos = ref_conf > 0
        torch.testing.assert_close(loc[b][pos], ref_loc[pos])
    assert (conf[4] == 3).any()  # the later truth (label 2) holds the shared best prior


def test_perfect_prediction_has_near_zero_loss() -> None:
    priors = make_priors(get_config("m2det_tiny"))
    targets = _random_targets([2, 4])
    loc_t, conf_t = match_batch(targets, priors, VARIANCE)
    conf = torch.full((*conf_t.shape, 6), -20.0)
    conf.scatter_(2, conf_t[..., None], 20.0)
    loss_l, loss_c = MultiBoxLoss(6)(loc_t.clone(), conf, priors, targets)
    assert loss_l.item() < 1e-6
    assert loss_c.item() < 1e-6
    # a wrong offset on every positive costs exactly smooth-L1 of it
    shifted = loc_t.clone()
    shifted[..., 0] += 0.5  # |d| < 1: 0.5 * d^2 per positive
    loss_l, _ = MultiBoxLoss(6)(shifted, conf, priors, targets)
    torch.testing.assert_close(loss_l, torch.tensor(0.125))


def test_hard_negative_mining_keeps_three_hardest_per_positive() -> None:
    a, k = 40, 3
    classes = torch.zeros(2, a, dtype=torch.long)
    classes[0, [3, 7]] = 1  # 2 positives -> 6 negatives
    classes[1, 5] = 2  # 1 positive -> 3 negatives
    conf = torch.zeros(2, a, k)
    background_loss = torch.rand(2, a)
    conf[..., 1] = background_loss * 5  # higher foreground logit = harder negative
    mask = hard_negatives(conf, classes, neg_pos=3)
    assert mask.sum(1).tolist() == [6, 3]
    assert not (mask & (classes > 0)).any()
    for b in range(2):
        score = (background_loss[b] * 5).masked_fill(classes[b] > 0, -1.0)
        expected = set(score.argsort(descending=True)[: int(mask[b].sum())].tolist())
        assert set(mask[b].nonzero().flatten().tolist()) == expected


def test_loss_is_normalized_by_positives_and_ignores_empty_images() -> None:
    priors = point_form(torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5],
                                      [0.25, 0.75, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5],
                                      [0.5, 0.5, 0.2, 0.2]]))
    priors = torch.cat([(priors[:, :2] + priors[:, 2:]) / 2, priors[:, 2:] - priors[:, :2]], 1)
    targets = [torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0]]), torch.zeros(0, 5)]
    loc = torch.zeros(2, 5, 4)
    conf = torch.zeros(2, 5, 3)  # uniform: every chosen prior costs log(3)
    loss_l, loss_c = MultiBoxLoss(3)(loc, conf, priors, targets)
    # 1 positive (prior 0, exact fit) + 3 mined negatives in image 0; image 1 adds nothing
    torch.testing.assert_close(loss_c, torch.tensor(4 * torch.log(torch.tensor(3.0)).item()))
    expected_l = encode(targets[0][:, :4], priors[:1], VARIANCE).abs().sum()
    torch.testing.assert_close(loss_l, expected_l)
