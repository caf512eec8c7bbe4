"""SSD MultiBox loss as M2Det trains it: official prior matching, smooth L1 on the encoded
offsets of the positives, cross-entropy with 3:1 hard negative mining, both divided by the
number of positives in the batch.

The matching is batched: ground truths are padded to the largest count in the batch and matched
against all priors at once; the per-truth "best prior is forced positive" step loops over the
padded truth index (a handful of iterations) so later truths win shared best priors exactly as
the per-image :func:`m2det.box_utils.match` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m2det.box_utils import box_iou, encode, point_form


def pad_targets(targets: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-image targets [n_i,5] (normalized x1,y1,x2,y2, label) -> padded [B,G,5] and the
    validity mask [B,G] (G = max n_i, at least 1)."""
    g = max([int(t.shape[0]) for t in targets] + [1])
    padded = targets[0].new_zeros((len(targets), g, 5))
    valid = torch.zeros((len(targets), g), dtype=torch.bool, device=padded.device)
    for b, t in enumerate(targets):
        padded[b, : t.shape[0]] = t
        valid[b, : t.shape[0]] = True
    return padded, valid


def match_batch(targets: list[Tensor], priors: Tensor, variance: tuple[float, float],
                threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Official SSD matching for a batch: targets (list of B [n_i,5]) and priors [A,4]
    (cx,cy,w,h) -> loc targets [B,A,4], class targets [B,A] int64 (0 = background).

    Equals :func:`m2det.box_utils.match` per image; an image without boxes is all background.
    """
    padded, valid = pad_targets(targets)
    truths, labels = padded[..., :4], padded[..., 4].long()
    b, g = valid.shape
    overlaps = box_iou(truths, point_form(priors))  # [B,G,A]
    overlaps = overlaps.masked_fill(~valid[..., None], -1.0)
    best_prior_idx = overlaps.argmax(2)  # [B,G]
    best_truth_overlap, best_truth_idx = overlaps.max(1)  # [B,A]
    rows = torch.arange(b, device=priors.device)
    for j in range(g):  # later truths win shared best priors, as released
        r = rows[valid[:, j]]
        p = best_prior_idx[r, j]
        best_truth_overlap[r, p] = 2.0
        best_truth_idx[r, p] = j
    conf = torch.gather(labels, 1, best_truth_idx) + 1
    conf[best_truth_overlap < threshold] = 0
    matched = torch.gather(truths, 1, best_truth_idx[..., None].expand(b, -1, 4))  # [B,A,4]
    loc = encode(matched.reshape(-1, 4), priors.repeat(b, 1), variance).view(b, -1, 4)
    return loc, conf


def hard_negatives(conf: Tensor, classes: Tensor, neg_pos: int) -> Tensor:
    """Mask [B,A] of the background priors with the highest background loss, ``neg_pos`` per
    positive of the image (at most A-1), given logits [B,A,K] and class targets [B,A]."""
    with torch.no_grad():
        pos = classes > 0
        background_loss = torch.logsumexp(conf, -1) - conf[..., 0]  # CE against class 0
        background_loss[pos] = 0.0
        order = background_loss.argsort(1, descending=True)
        rank = order.argsort(1)
        num_neg = (neg_pos * pos.sum(1, keepdim=True)).clamp(max=pos.shape[1] - 1)
        return rank < num_neg


class MultiBoxLoss(nn.Module):
    """forward(loc [B,A,4], conf [B,A,K], priors [A,4], targets list of B [n_i,5])
    -> (loss_l, loss_c), scalars: smooth-L1 over positives and cross-entropy over positives and
    mined negatives, each summed and divided by the number of positives (at least 1)."""

    def __init__(self, num_classes: int, overlap_thresh: float = 0.5, neg_pos: int = 3,
                 variance: tuple[float, float] = (0.1, 0.2)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.overlap_thresh = overlap_thresh
        self.neg_pos = neg_pos
        self.variance = variance

    def forward(self, loc: Tensor, conf: Tensor, priors: Tensor,
                targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        priors = priors.to(loc.device)
        targets = [t.to(loc.device) for t in targets]
        with torch.no_grad():
            loc_t, conf_t = match_batch(targets, priors, self.variance, self.overlap_thresh)
        loc, conf = loc.float(), conf.float()
        pos = conf_t > 0
        num_pos = pos.sum().clamp(min=1).to(loc.dtype)
        loss_l = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
        chosen = pos | hard_negatives(conf, conf_t, self.neg_pos)
        loss_c = F.cross_entropy(conf[chosen], conf_t[chosen], reduction="sum")
        return loss_l / num_pos, loss_c / num_pos
