"""Backbones: VGG16-reduced (SSD's) and ResNet-18…152, with loaders for backbone-only weights.

Both return the two taps that FFMv1 fuses: a stride-8 map and a stride-16 map.
VGG keeps the official ``nn.ModuleList`` indexing (taps after layers 22 = relu(conv4_3) and
34 = relu(conv7)) so ``vgg16_reducedfc.pth`` keys (``"0.weight"``, …, ``"33.bias"``) load directly.
ResNet keeps torchvision's parameter names; as in the official M2Det, ``layer3`` has stride 1 and
``layer4`` stride 2, so ``base_out=(2, 4)`` taps stride 8 and stride 16.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from m2det.errors import M2DetError
from m2det.state_dict import check_and_load

# SSD's VGG16 trunk: ints are 3x3 conv widths, 'M' max-pool 2/2, 'C' max-pool 2/2 ceil-mode.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip


class VGG16Reduced(nn.Module):
    """VGG16 through conv5_3, pool5 3x3/s1/p1, conv6 3x3 dilation 6, conv7 1x1 (fc6/fc7 reduced).

    ``width`` scales every channel count (1.0 is the released network). ``bn`` inserts a
    BatchNorm after every conv (as torchvision's ``vgg16_bn``): the released network has none
    because it starts from ImageNet weights; a network trained from scratch needs it. ``taps`` are
    indices in the released (BN-free) layout and keep their meaning with ``bn``.
    forward: images [B,3,S,S] -> (relu(conv4_3) [B,512w,S/8,S/8], relu(conv7) [B,1024w,S/16,S/16]).
    """

    def __init__(
        self, width: float = 1.0, taps: tuple[int, int] = (22, 34), bn: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        released_index: list[int] = []  # released-layout index -> index in ``layers``

        def add(*modules: nn.Module) -> None:
            for m in modules:
                if isinstance(m, nn.BatchNorm2d):
                    if bn:
                        layers.append(m)
                    continue
                layers.append(m)
                released_index.append(len(layers) - 1)

        def conv_relu(conv: nn.Conv2d) -> None:
            add(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(inplace=True))

        in_ch = 3
        for v in _VGG16_CFG:
            if v == "M":
                add(nn.MaxPool2d(2, 2))
            elif v == "C":
                add(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                out_ch = max(8, int(round(int(v) * width)))
                conv_relu(nn.Conv2d(in_ch, out_ch, 3, padding=1))
                in_ch = out_ch
        fc = max(16, int(round(1024 * width)))
        add(nn.MaxPool2d(3, 1, 1))
        conv_relu(nn.Conv2d(in_ch, fc, 3, padding=6, dilation=6))
        conv_relu(nn.Conv2d(fc, fc, 1))
        self.layers = nn.ModuleList(layers)
        self.taps = (released_index[taps[0]], released_index[taps[1]])
        self.out_channels = (in_ch, fc)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats: list[Tensor] = []
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k in self.taps:
                feats.append(x)
        return feats[0], feats[1]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


_RESNET_SPECS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet trunk as in official M2Det (layer3 stride 1, layer4 stride 2), torchvision key names.

    forward: images [B,3,S,S] -> the outputs of ``layer{taps[0]}`` and ``layer{taps[1]}``
    (for taps (2, 4): [B,C2,S/8,S/8] and [B,C4,S/16,S/16]).
    """

    def __init__(self, depth: str = "resnet101", taps: tuple[int, int] = (2, 4)) -> None:
        super().__init__()
        block, counts = _RESNET_SPECS[depth]
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, counts[0], 1)
        self.layer2 = self._make_layer(block, 128, counts[1], 2)
        self.layer3 = self._make_layer(block, 256, counts[2], 1)
        self.layer4 = self._make_layer(block, 512, counts[3], 2)
        self.taps = taps
        widths = {i + 1: w * block.expansion for i, w in enumerate((64, 128, 256, 512))}
        self.out_channels = (widths[taps[0]], widths[taps[1]])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats: list[Tensor] = []
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
        return feats[0], feats[1]


def build_backbone(
    name: str, taps: tuple[int, int], width: float = 1.0, bn: bool = False
) -> VGG16Reduced | ResNet:
    if name == "vgg16":
        return VGG16Reduced(width, taps, bn)
    if name in _RESNET_SPECS:
        if width != 1.0 or bn:
            raise M2DetError("backbone_width and backbone_bn are only supported for vgg16")
        return ResNet(name, taps)
    raise M2DetError(f"unknown backbone {name!r}; valid: vgg16, {', '.join(_RESNET_SPECS)}")


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load backbone-only weights: ``vgg16_reducedfc.pth`` (keys ``"0.weight"``…) into VGG, or a
    torchvision ResNet state_dict (its ``fc.*`` classifier is dropped) into ResNet."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise M2DetError(f"backbone weights not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        raise M2DetError(f"cannot read backbone weights {path}: {e}") from None
    if not isinstance(state, Mapping):
        raise M2DetError(f"{path} is not a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if isinstance(backbone, VGG16Reduced):
        state = {f"layers.{k}": v for k, v in state.items()}
    else:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    check_and_load(backbone, state, source=path)
