"""Detection datasets (COCO json, Pascal VOC xml) producing one :class:`Sample` type, and the
batch collate function of the trainer.

Both datasets validate their annotations once at construction: boxes are clipped to the image,
boxes narrower or shorter than 1 px after clipping are dropped, crowd (COCO) / difficult (VOC)
boxes are skipped, and images that are missing or not image files are skipped with a warning
(or an :class:`M2DetError` when ``strict``). Every such event is counted in ``dataset.stats``.
An image that passes those checks but cannot be decoded when loaded is handled the same way:
counted and replaced by the next loadable image (``strict``: an error).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from m2det.errors import M2DetError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# Leading bytes of the image formats OpenCV reads (WEBP is checked at offset 8 as well).
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


@dataclass
class Sample:
    """One annotated image: ``image`` BGR uint8 [H,W,3]; ``boxes`` [n,4] float32 pixel
    x1,y1,x2,y2 (continuous coordinates, x2 exclusive); ``labels`` [n] int64 contiguous 0-based
    foreground classes; ``image_id`` the dataset's id of the image."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int


@dataclass
class DatasetStats:
    """What a dataset dropped or repaired while reading its annotations and images."""

    missing_images: int = 0
    corrupt_images: int = 0
    empty_images: int = 0
    crowd_boxes: int = 0
    difficult_boxes: int = 0
    boxes_clipped: int = 0
    degenerate_boxes: int = 0


@dataclass
class _Record:
    path: Path
    image_id: int
    boxes: np.ndarray  # [n,4] float32, already clipped and filtered
    labels: np.ndarray  # [n] int64


Transform = Callable[[Sample], Any]


def _looks_like_image(path: Path) -> bool:
    """Cheap check (first 16 bytes) that ``path`` is an image file OpenCV can decode."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if head.startswith(b"RIFF"):
        return head[8:12] == b"WEBP"
    return head.startswith(_IMAGE_MAGIC)


def clip_boxes(boxes: np.ndarray, width: int, height: int,
               stats: DatasetStats) -> tuple[np.ndarray, np.ndarray]:
    """Clip pixel boxes [n,4] to the image, count the clipped ones, and return
    (clipped boxes [m,4], keep mask [n]) without those under 1 px wide or high."""
    boxes = boxes.astype(np.float32).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    keep = ((clipped[:, 2] - clipped[:, 0]) >= 1) & ((clipped[:, 3] - clipped[:, 1]) >= 1)
    stats.boxes_clipped += int(((clipped != boxes).any(axis=1) & keep).sum())
    stats.degenerate_boxes += int((~keep).sum())
    return clipped[keep], keep


class _DetectionDataset(Dataset):
    """Shared image loading, skipping and transform logic of the COCO and VOC datasets."""

    class_names: tuple[str, ...]

    def __init__(self, transform: Transform | None, keep_empty: bool, strict: bool) -> None:
        self.transform = transform
        self.keep_empty = keep_empty
        self.strict = strict
        self.stats = DatasetStats()
        self.records: list[_Record] = []

    def _bad_image(self, path: Path, reason: str) -> None:
        message = f"{reason} image {path}"
        if self.strict:
            raise M2DetError(message)
        warnings.warn(f"skipping {message}", stacklevel=3)

    def _add(self, record: _Record) -> None:
        """Keep ``record`` unless its file is missing/not an image or it has no boxes."""
        if not record.path.is_file():
            self.stats.missing_images += 1
            self._bad_image(record.path, "missing")
        elif not _looks_like_image(record.path):
            self.stats.corrupt_images += 1
            self._bad_image(record.path, "corrupt")
        elif len(record.boxes) == 0 and not self.keep_empty:
            self.stats.empty_images += 1
        else:
            self.records.append(record)

    def _finish(self, source: str) -> None:
        if not self.records:
            raise M2DetError(f"no usable images in {source} ({self.stats})")

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> Sample:
        """The untransformed sample ``index``; an undecodable image is replaced by the next one."""
        for offset in range(len(self.records)):
            record = self.records[(index + offset) % len(self.records)]
            image = cv2.imread(str(record.path), cv2.IMREAD_COLOR)
            if image is not None:
                return self._sample(record, image)
            self.stats.corrupt_images += 1
            self._bad_image(record.path, "undecodable")
        raise M2DetError("no image of the dataset can be decoded")

    def _sample(self, record: _Record, image: np.ndarray) -> Sample:
        height, width = image.shape[:2]
        boxes, keep = clip_boxes(record.boxes, width, height, self.stats)
        return Sample(image, boxes, record.labels[keep], record.image_id)

    def __getitem__(self, index: int) -> Any:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample


def _read_coco_json(ann_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(ann_file.read_text())
    except FileNotFoundError:
        raise M2DetError(f"annotation file not found: {ann_file}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise M2DetError(f"{ann_file} is not a COCO json file ({type(e).__name__})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise M2DetError(f"{ann_file} is not a COCO json file "
                         "(needs 'images', 'annotations' and 'categories' lists)")
    return data


class CocoDetection(_DetectionDataset):
    """COCO-format detection dataset.

    Category ids sorted ascending map to contiguous labels 0..C-1: ``cat_ids[label]`` is the
    category id, ``class_names[label]`` its name; ``coco`` is the pycocotools ``COCO`` object.
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path,
                 transform: Transform | None = None, keep_empty: bool = False,
                 strict: bool = False) -> None:
        super().__init__(transform, keep_empty, strict)
        from pycocotools.coco import COCO

        ann_file, image_dir = Path(ann_file), Path(image_dir)
        data = _read_coco_json(ann_file)
        self.coco = COCO()
        self.coco.dataset = data
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco.createIndex()
            cats = sorted(data["categories"], key=lambda c: c["id"])
            self.cat_ids: list[int] = [int(c["id"]) for c in cats]
            self.class_names = tuple(str(c["name"]) for c in cats)
            cat_to_label = {cid: label for label, cid in enumerate(self.cat_ids)}
            for img in sorted(data["images"], key=lambda i: i["id"]):
                self._add(self._record(img, image_dir, cat_to_label))
        except (KeyError, TypeError, ValueError) as e:
            raise M2DetError(f"{ann_file} is not a valid COCO json file "
                             f"({type(e).__name__}: {e})") from None
        self._finish(str(ann_file))

    def _record(self, img: dict[str, Any], image_dir: Path,
                cat_to_label: dict[int, int]) -> _Record:
        boxes, labels = [], []
        for ann in self.coco.imgToAnns[img["id"]]:
            if ann.get("iscrowd", 0):
                self.stats.crowd_boxes += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes.append((x, y, x + w, y + h))
            labels.append(cat_to_label[ann["category_id"]])
        clipped, keep = clip_boxes(np.array(boxes, np.float32), int(img["width"]),
                                   int(img["height"]), self.stats)
        return _Record(image_dir / img["file_name"], int(img["id"]), clipped,
                       np.array(labels, np.int64).reshape(-1)[keep])


class VOCDetection(_DetectionDataset):
    """Pascal VOC detection dataset: ``root/VOC<year>/{Annotations,JPEGImages,ImageSets/Main}``.

    ``sets`` lists (year, split) pairs, e.g. ``[("2007", "trainval"), ("2012", "trainval")]``.
    VOC's 1-based inclusive pixel boxes become continuous ``(xmin-1, ymin-1, xmax, ymax)``.
    ``image_id`` indexes ``ids``, the (year, stem) of every listed image (skipped ones included).
    """

    def __init__(self, root: str | Path, sets: Sequence[tuple[str, str]] = (("2007", "trainval"),),
                 transform: Transform | None = None, keep_difficult: bool = False,
                 keep_empty: bool = False, strict: bool = False,
                 class_names: tuple[str, ...] = VOC_CLASSES) -> None:
        super().__init__(transform, keep_empty, strict)
        self.class_names = class_names
        self.keep_difficult = keep_difficult
        self.ids: list[tuple[str, str]] = []
        self._label = {name: i for i, name in enumerate(class_names)}
        root = Path(root)
        for year, split in sets:
            voc = root / f"VOC{year}"
            split_file = voc / "ImageSets" / "Main" / f"{split}.txt"
            if not split_file.is_file():
                raise M2DetError(f"VOC split file not found: {split_file}")
            for stem in split_file.read_text().split():
                self._add(self._record(voc, stem, len(self.ids)))
                self.ids.append((year, stem))
        self._finish(str(root))

    def _record(self, voc: Path, stem: str, image_id: int) -> _Record:
        xml_file = voc / "Annotations" / f"{stem}.xml"
        try:
            tree = ET.parse(xml_file).getroot()
            boxes, labels = [], []
            for obj in tree.iter("object"):
                if int(obj.findtext("difficult", "0")) and not self.keep_difficult:
                    self.stats.difficult_boxes += 1
                    continue
                bb = obj.find("bndbox")
                assert bb is not None
                xmin, ymin, xmax, ymax = (float(bb.findtext(k, "")) for k in
                                          ("xmin", "ymin", "xmax", "ymax"))
                boxes.append((xmin - 1, ymin - 1, xmax, ymax))
                labels.append(self._label[obj.findtext("name", "").strip()])
            width = int(tree.findtext("size/width", ""))
            height = int(tree.findtext("size/height", ""))
        except FileNotFoundError:
            raise M2DetError(f"VOC annotation not found: {xml_file}") from None
        except (ET.ParseError, AssertionError, ValueError, KeyError) as e:
            raise M2DetError(f"invalid VOC annotation {xml_file} "
                             f"({type(e).__name__}: {e})") from None
        clipped, keep = clip_boxes(np.array(boxes, np.float32), width, height, self.stats)
        return _Record(voc / "JPEGImages" / f"{stem}.jpg", image_id, clipped,
                       np.array(labels, np.int64).reshape(-1)[keep])


def detection_collate(
    batch: Sequence[tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Transformed samples (image [3,S,S], targets [n,5]) -> images [B,3,S,S] float32 and a
    list of B float32 target tensors [n_i,5] (rows: normalized x1,y1,x2,y2, label)."""
    images = torch.stack([torch.as_tensor(image, dtype=torch.float32) for image, _ in batch])
    targets = [torch.as_tensor(t, dtype=torch.float32).reshape(-1, 5) for _, t in batch]
    return images, targets
