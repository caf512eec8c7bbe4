"""The Multi-Level Feature Pyramid Network: FFMv1, FFMv2, TUM and SFAM, one class per paper concept.

Shapes below are for ``m2det320_vgg`` (planes p=256, 8 TUMs, 6 scales): FFMv1 gives the base
feature [B,768,40,40]; each TUM returns 6 maps [B,256,s,s] for s in (1,3,5,10,20,40) (smallest
first, as released); SFAM's input/output is 6 maps [B,2048,s,s] (largest first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BasicConv(nn.Sequential):
    """conv (no bias) -> BatchNorm (eps 1e-5, momentum 0.01, as released) -> ReLU."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.01)
        self.relu = nn.ReLU(inplace=True)


class FFMv1(nn.Module):
    """Feature Fusion Module v1: fuses the backbone's shallow and deep taps into the base feature.

    forward: shallow [B,Cs,H,W], deep [B,Cd,H/2,W/2] -> base feature [B,256+512,H,W]
    (``reduce`` 3x3 Cs->256; ``up_reduce`` 1x1 Cd->512 then nearest x2; concat).
    """

    def __init__(
        self, shallow_channels: int, deep_channels: int, shallow_out: int = 256, deep_out: int = 512
    ) -> None:
        super().__init__()
        self.reduce = BasicConv(shallow_channels, shallow_out, 3, 1, 1)
        self.up_reduce = BasicConv(deep_channels, deep_out, 1)
        self.out_channels = shallow_out + deep_out

    def forward(self, shallow: Tensor, deep: Tensor) -> Tensor:
        deep = F.interpolate(self.up_reduce(deep), scale_factor=2.0, mode="nearest")
        return torch.cat((self.reduce(shallow), deep), 1)


class FFMv2(nn.Module):
    """Feature Fusion Module v2: the base feature reduced to planes/2 by a 1x1 conv, concatenated
    with the previous TUM's largest output.

    As released, one module (one set of weights) serves every level, and its 1x1 conv sees the same
    base feature each time: ``reduce`` is therefore computed once per image (see ``M2Det.forward``).
    forward: reduced [B,p/2,H,W], previous [B,p,H,W] -> [B,p/2+p,H,W].
    """

    def __init__(self, base_channels: int, planes: int) -> None:
        super().__init__()
        self.reduce = BasicConv(base_channels, planes // 2, 1)

    def forward(self, reduced: Tensor, previous: Tensor) -> Tensor:
        return torch.cat((reduced, previous), 1)


class TUM(nn.Module):
    """Thinned U-shape Module: an encoder of stride-2 3x3 convs (the last 3x3/s1/p0) and a decoder
    of nearest-upsample-and-add with 3x3 lateral convs, then 1x1 ``smooth`` convs.

    forward: x [B,in_ch,H,W] -> ``num_scales`` maps [B,planes,s,s], smallest first, largest last.
    """

    def __init__(self, in_ch: int, planes: int, num_scales: int, smooth: bool = True) -> None:
        super().__init__()
        enc: list[nn.Module] = [BasicConv(in_ch, planes, 3, 2, 1)]
        enc += [BasicConv(planes, planes, 3, 2, 1) for _ in range(num_scales - 3)]
        enc.append(BasicConv(planes, planes, 3, 1, 0))
        self.encoder = nn.ModuleList(enc)
        self.toplayer = BasicConv(planes, planes, 1)
        lat: list[nn.Module] = [BasicConv(planes, planes, 3, 1, 1) for _ in range(num_scales - 2)]
        lat.append(BasicConv(in_ch, planes, 3, 1, 1))
        self.lateral = nn.ModuleList(lat)
        self.smooth = (
            nn.ModuleList(BasicConv(planes, planes, 1) for _ in range(num_scales - 1))
            if smooth
            else None
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        encoded = [x]
        for conv in self.encoder:
            encoded.append(conv(encoded[-1]))
        decoded = [self.toplayer(encoded[-1])]
        n = len(self.encoder)
        for i, lateral in enumerate(self.lateral):
            skip = lateral(encoded[n - 1 - i])
            decoded.append(F.interpolate(decoded[-1], size=skip.shape[-2:], mode="nearest") + skip)
        if self.smooth is None:
            return decoded
        return [decoded[0]] + [s(d) for s, d in zip(self.smooth, decoded[1:], strict=True)]


class SFAM(nn.Module):
    """Scale-wise Feature Aggregation Module's channel attention (squeeze-and-excitation).

    The scale-wise concatenation is done by ``M2Det``; as released, one fc1/fc2 pair is shared by
    all scales. forward: list of [B,C,s,s] -> same shapes, each reweighted per channel.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        out = []
        for f in features:
            w = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(f, 1)))))
            out.append(f * w)
        return out
