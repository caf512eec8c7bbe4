"""Box geometry: corner/center forms, IoU, SSD encoding with variances, and prior matching."""

from __future__ import annotations

import torch
from torch import Tensor


def point_form(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) [...,4] -> (x1, y1, x2, y2) [...,4]."""
    return torch.cat((boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2), -1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of corner boxes a [...,N,4] (any leading dims, e.g. a batch of padded truths)
    and b [M,4] -> [...,N,M] (continuous coordinates, no +1)."""
    lt = torch.max(a[..., :, None, :2], b[:, :2])
    rb = torch.min(a[..., :, None, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[..., None] + area_b - inter)


def encode(matched: Tensor, priors: Tensor, variance: tuple[float, float]) -> Tensor:
    """Corner boxes [A,4] matched to priors (cx,cy,w,h) [A,4] -> regression targets [A,4]."""
    g_cxcy = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (variance[0] * priors[:, 2:])
    g_wh = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / variance[1]
    return torch.cat((g_cxcy, g_wh), 1)


def decode(loc: Tensor, priors: Tensor, variance: tuple[float, float]) -> Tensor:
    """Offsets [...,A,4] against priors (cx,cy,w,h) [A,4] -> corner boxes [...,A,4] (normalized)."""
    centers = priors[..., :2] + loc[..., :2] * variance[0] * priors[..., 2:]
    sizes = priors[..., 2:] * torch.exp(loc[..., 2:] * variance[1])
    x1y1 = centers - sizes / 2
    return torch.cat((x1y1, x1y1 + sizes), -1)


def match(
    truths: Tensor,
    labels: Tensor,
    priors: Tensor,
    variance: tuple[float, float],
    threshold: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Official SSD matching for one image.

    truths [G,4] corner boxes, labels [G] contiguous foreground labels (0-based), priors [A,4]
    -> loc targets [A,4], class targets [A] (0 = background, label + 1 otherwise).
    Each truth's best prior is forced positive; other priors match their best truth at
    IoU >= threshold.
    """
    overlaps = box_iou(truths, point_form(priors))  # [G,A]
    best_prior_idx = overlaps.argmax(1)  # [G]
    best_truth_overlap, best_truth_idx = overlaps.max(0)  # [A]
    best_truth_overlap = best_truth_overlap.index_fill(0, best_prior_idx, 2.0)
    for j in range(best_prior_idx.shape[0]):  # later truths win shared best priors, as released
        best_truth_idx[best_prior_idx[j]] = j
    conf = labels[best_truth_idx].long() + 1
    conf[best_truth_overlap < threshold] = 0
    return encode(truths[best_truth_idx], priors, variance), conf
