"""M2Det: backbone -> FFMv1 -> (FFMv2 -> TUM) x L -> scale-wise concat (+ SFAM) -> heads.

``M2Det`` returns raw head outputs for training; ``M2DetInference`` wraps it with the prior decode
and the softmax: exactly the raw ONNX graph's contract (``boxes`` [B,A,4] normalized corners,
``scores`` [B,A,C-1] without background).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m2det.backbones import build_backbone
from m2det.box_utils import decode
from m2det.config import M2DetConfig
from m2det.mlfpn import SFAM, TUM, BasicConv, FFMv1, FFMv2
from m2det.priors import make_priors


class DetectionHead(nn.Module):
    """Per-scale 3x3 loc and conf convs, flattened and concatenated in prior order.

    forward: ``num_scales`` maps [B,C,s,s] (largest first) -> loc [B,A,4], conf logits [B,A,K].
    """

    def __init__(self, channels: int, num_scales: int, anchors: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.loc = nn.ModuleList(
            nn.Conv2d(channels, anchors * 4, 3, 1, 1) for _ in range(num_scales)
        )
        self.conf = nn.ModuleList(
            nn.Conv2d(channels, anchors * num_classes, 3, 1, 1) for _ in range(num_scales)
        )

    @torch.no_grad()
    def init_background_prior(self, probability: float) -> None:
        """Set the conf biases so that every prior starts out predicting background with
        ``probability`` (the other classes equally likely).

        Released M2Det zeroes these biases (a uniform start). Training from scratch that start is
        slow: the largest scale, ~75% of the priors, is fed by a BatchNorm whose output has zero
        mean, so its background logit can only rise through the bias, one optimizer step at a time,
        and until it has the classifier sits at the loss of an image-independent guess.
        """
        if not 0.0 < probability < 1.0:
            raise ValueError(f"background probability must be in (0, 1), got {probability}")
        k = self.num_classes
        logit = math.log(probability * (k - 1) / (1.0 - probability))
        for conv in self.conf:
            assert conv.bias is not None
            conv.bias.zero_()
            conv.bias[0::k] = logit

    def forward(self, sources: list[Tensor]) -> tuple[Tensor, Tensor]:
        b = sources[0].shape[0]
        loc = [
            r(x).permute(0, 2, 3, 1).reshape(b, -1) for x, r in zip(sources, self.loc, strict=True)
        ]
        conf = [
            c(x).permute(0, 2, 3, 1).reshape(b, -1) for x, c in zip(sources, self.conf, strict=True)
        ]
        return torch.cat(loc, 1).view(b, -1, 4), torch.cat(conf, 1).view(b, -1, self.num_classes)


class M2Det(nn.Module):
    """The network. Input: BGR images [B,3,S,S] float32 in 0-255 (the mean is subtracted inside).

    forward -> loc offsets [B,A,4] (encoded against the priors), conf logits [B,A,num_classes].
    """

    mean: Tensor  # [1,3,1,1] BGR means, a non-persistent buffer

    def __init__(self, config: M2DetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.backbone = build_backbone(c.backbone, c.base_out, c.backbone_width, c.backbone_bn)
        self.ffm1 = FFMv1(*self.backbone.out_channels)
        self.ffm2 = FFMv2(self.ffm1.out_channels, c.planes)
        first = TUM(c.planes // 2, c.planes, c.num_scales, c.smooth)
        rest = [
            TUM(c.planes // 2 + c.planes, c.planes, c.num_scales, c.smooth)
            for _ in range(c.num_levels - 1)
        ]
        self.tums = nn.ModuleList([first, *rest])
        channels = c.planes * c.num_levels
        self.sfam = SFAM(channels) if c.sfam else None
        self.norm = nn.BatchNorm2d(channels)  # on the largest pyramid level, as released
        self.head = DetectionHead(channels, c.num_scales, c.anchors_per_pixel, c.num_classes)
        mean = torch.tensor(c.rgb_means, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)

    def multi_level_features(self, images: Tensor) -> list[Tensor]:
        """images [B,3,S,S] -> the multi-level multi-scale pyramid, largest scale first:
        ``num_scales`` maps [B, planes*num_levels, s, s]."""
        base = self.ffm1(*self.backbone(images - self.mean))
        reduced = self.ffm2.reduce(base)  # shared FFMv2 weights: identical for every level
        levels = [self.tums[0](reduced)]
        for tum in self.tums[1:]:
            levels.append(tum(self.ffm2(reduced, levels[-1][-1])))
        n = self.config.num_scales
        return [torch.cat([lv[i] for lv in levels], 1) for i in range(n - 1, -1, -1)]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        sources = self.multi_level_features(images)
        if self.sfam is not None:
            sources = self.sfam(sources)
        sources[0] = self.norm(sources[0])
        return self.head(sources)


class M2DetInference(nn.Module):
    """M2Det + decode + softmax: images [B,3,S,S] (BGR 0-255) -> boxes [B,A,4] (normalized
    x1,y1,x2,y2), scores [B,A,num_classes-1] (softmax, background column dropped)."""

    def __init__(self, model: M2Det) -> None:
        super().__init__()
        self.model = model
        self.priors: Tensor
        priors = make_priors(model.config).to(model.mean.device)
        self.register_buffer("priors", priors, persistent=False)
        self.variance = model.config.variance

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        loc, conf = self.model(images)
        boxes = decode(loc, self.priors, self.variance)
        scores = F.softmax(conf, dim=-1)[..., 1:]
        return boxes, scores


def build_model(config: M2DetConfig) -> M2Det:
    """A freshly initialised M2Det, initialised as the official ``init_model``: Kaiming-normal
    (fan-out) for every conv of a BasicConv, BatchNorm weight 1 / bias 0, all conv biases 0;
    backbone and head convs keep PyTorch's default weights."""
    model = M2Det(config)
    for m in model.modules():
        if isinstance(m, BasicConv):
            nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model
