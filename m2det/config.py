"""Model configurations as data: one frozen dataclass, one preset per released config.

The official presets reproduce ``qijiezhao/M2Det`` ``configs/*.py`` (see
``shared/paper/official_configs.json``); ``m2det512_resnet101`` follows the 512 VGG anchors as the
paper's Table 1 row; ``m2det_tiny`` is a CPU-sized variant of the same architecture for tests,
demos and the bundled synthetic-shapes model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from m2det.errors import M2DetError

#: Backbones the project implements (see ``m2det.backbones``).
BACKBONES = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass(frozen=True)
class M2DetConfig:
    """Everything that determines the network, its priors and its test-time post-processing.

    ``num_classes`` counts the background class (81 for COCO), as the official code does.
    ``sizes`` are anchor sizes as fractions of ``input_size`` (``num_scales + 1`` values: level k
    uses ``sizes[k]`` as min size and ``sizes[k + 1]`` as max size); ``steps`` are the official
    step pattern.
    """

    name: str
    input_size: int
    backbone: str = "vgg16"
    base_out: tuple[int, int] = (22, 34)
    backbone_width: float = 1.0  # channel multiplier of the backbone (1.0 = the released networks)
    backbone_bn: bool = False  # BatchNorm after each VGG conv (training from scratch)
    planes: int = 256
    num_levels: int = 8  # number of TUMs
    num_scales: int = 6
    smooth: bool = True
    sfam: bool = False
    num_classes: int = 81
    steps: tuple[int, ...] = (8, 16, 32, 64, 107, 320)
    sizes: tuple[float, ...] = (0.08, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
    aspect_ratios: tuple[int, ...] = (2, 3)
    variance: tuple[float, float] = (0.1, 0.2)
    clip: bool = True
    rgb_means: tuple[float, float, float] = (104.0, 117.0, 123.0)  # BGR order
    class_names: tuple[str, ...] = field(default=())  # foreground names; () = numbered classes

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise M2DetError(f"unknown backbone {self.backbone!r}; valid: {', '.join(BACKBONES)}")
        if self.num_levels < 1 or self.num_scales < 3:
            raise M2DetError("num_levels must be >= 1 and num_scales >= 3")
        if len(self.steps) != self.num_scales or len(self.sizes) != self.num_scales + 1:
            raise M2DetError(
                f"{self.name}: need {self.num_scales} steps and {self.num_scales + 1} sizes, "
                f"got {len(self.steps)} and {len(self.sizes)}"
            )
        if self.class_names and len(self.class_names) != self.num_classes - 1:
            raise M2DetError(
                f"{self.name}: {len(self.class_names)} class names "
                f"for {self.num_classes - 1} classes"
            )
        if self.planes % 2 or (self.sfam and (self.planes * self.num_levels) % 16):
            raise M2DetError(
                "planes must be even (and planes*num_levels divisible by 16 with SFAM)"
            )

    @property
    def anchors_per_pixel(self) -> int:
        """2 square anchors + 2 per aspect ratio (6 for the released configs)."""
        return 2 + 2 * len(self.aspect_ratios)

    @property
    def feature_maps(self) -> tuple[int, ...]:
        """Pyramid sizes from the official ``reglayer_scale`` rule (largest first)."""
        return feature_map_sizes(self.input_size, self.num_scales)

    @property
    def num_priors(self) -> int:
        return self.anchors_per_pixel * sum(f * f for f in self.feature_maps)

    @property
    def labels(self) -> tuple[str, ...]:
        """Foreground class names, index i = contiguous label i (background excluded)."""
        return self.class_names or tuple(f"class{i}" for i in range(self.num_classes - 1))

    def replace(self, **changes: Any) -> M2DetConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> M2DetConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise M2DetError(f"unknown config fields: {', '.join(unknown)}")
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**kwargs)


def feature_map_sizes(input_size: int, num_scales: int, last_shrink: int = 2) -> tuple[int, ...]:
    """The official ``reglayer_scale``: halve (ceil) from the input; keep from stride 8 on; the last
    map is the one before it minus ``last_shrink`` (TUM's final 3x3 conv has no padding)."""
    sizes: list[int] = []
    size = input_size
    for i in range(num_scales + 1):
        size = math.ceil(size / 2.0)
        if i >= 2:
            sizes.append(size)
            if i == num_scales:
                sizes.append(size - last_shrink)
    return tuple(sizes[:num_scales])


COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

SHAPES_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "ellipse", "cross")

_SIZES = (0.08, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
_SIZES_512 = (0.06, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)


def _coco(
    name: str, size: int, backbone: str, steps: tuple[int, ...], sizes: tuple[float, ...]
) -> M2DetConfig:
    """A released COCO config: 8 TUMs x 256 planes, 6 scales, no SFAM (as the official configs)."""
    base_out = (22, 34) if backbone == "vgg16" else (2, 4)
    return M2DetConfig(
        name,
        size,
        backbone=backbone,
        base_out=base_out,
        steps=steps,
        sizes=sizes,
        class_names=COCO_CLASSES,
    )


PRESETS: dict[str, M2DetConfig] = {
    c.name: c
    for c in (
        _coco("m2det320_vgg", 320, "vgg16", (8, 16, 32, 64, 107, 320), _SIZES),
        _coco("m2det512_vgg", 512, "vgg16", (8, 16, 32, 64, 128, 256), _SIZES_512),
        _coco("m2det704_vgg", 704, "vgg16", (8, 16, 32, 64, 117, 176),
              (0.04, 0.11, 0.23, 0.39, 0.58, 0.80, 1.05)),
        _coco("m2det800_vgg", 800, "vgg16", (8, 16, 32, 62, 115, 160),
              (0.04, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)),
        _coco("m2det320_resnet101", 320, "resnet101", (8, 16, 32, 64, 107, 320), _SIZES),
        _coco("m2det512_resnet101", 512, "resnet101", (8, 16, 32, 64, 128, 256), _SIZES_512),
        # CPU-sized, trained from scratch: VGG16-reduced at 1/8 width with BatchNorm, 3 TUMs x 64
        # planes, 5 scales.
        M2DetConfig("m2det_tiny", 160, backbone_width=0.125, backbone_bn=True, planes=64,
                    num_levels=3, num_scales=5,
                    steps=(8, 16, 32, 54, 160), sizes=(0.06, 0.15, 0.33, 0.51, 0.69, 0.87),
                    num_classes=len(SHAPES_CLASSES) + 1, backbone="vgg16", base_out=(22, 34),
                    class_names=SHAPES_CLASSES),
    )
}  # fmt: skip


def get_config(name: str) -> M2DetConfig:
    """Return the preset called ``name``; a user error lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise M2DetError(f"unknown config {name!r}; valid: {', '.join(PRESETS)}") from None
