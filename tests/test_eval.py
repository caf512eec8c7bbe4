"""COCO evaluation on a hand-made annotation file: perfect, shifted and missing detections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from m2det.coco_eval import coco_table, evaluate_coco, load_coco_annotations
from m2det.detections import Detections
from m2det.errors import M2DetError

# Non-contiguous category ids on purpose: label 0 -> id 3, label 1 -> id 7.
CATEGORIES: list[dict[str, Any]] = [{"id": 7, "name": "square"}, {"id": 3, "name": "circle"}]
# (width, height, [(category_id, x, y, w, h), ...]); boxes stay clear of the borders.
IMAGES = [
    (200, 150, [(3, 20, 30, 60, 50), (7, 110, 40, 50, 70)]),
    (160, 120, [(7, 40, 20, 80, 60)]),
    (96, 128, [(3, 16, 24, 40, 40), (3, 30, 70, 50, 40)]),
]
SIZE = 64


def write_coco_set(root: Path) -> tuple[Path, Path]:
    """Images (background value 10*(id) identifies the image after resizing) + annotation JSON."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for image_id, (w, h, boxes) in enumerate(IMAGES, start=1):
        img = np.full((h, w, 3), 10 * image_id, np.uint8)
        for cat, x, y, bw, bh in boxes:
            cv2.rectangle(img, (x, y), (x + bw, y + bh), (200, 50 * (cat % 4), 90), -1)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})  # fmt: skip
        name = f"img{image_id}.png"
        cv2.imwrite(str(image_dir / name), img)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns,
                                    "categories": CATEGORIES}))  # fmt: skip
    return ann_file, image_dir


class OraclePredictor:
    """Returns the ground truth (optionally shifted right by ``shift`` of the box width),
    recognising each image by its background value; records the batch sizes it saw."""

    input_size = SIZE
    batch_range = (1, 1 << 30)

    def __init__(self, shift: float = 0.0, empty: bool = False) -> None:
        self.shift, self.empty = shift, empty
        self.batches: list[int] = []
        cat_ids = sorted(c["id"] for c in CATEGORIES)
        self.label = {cid: i for i, cid in enumerate(cat_ids)}

    def __call__(self, x: np.ndarray) -> Detections:
        assert x.shape[1:] == (3, SIZE, SIZE) and x.dtype == np.float32
        self.batches.append(len(x))
        per_image = []
        for b in range(len(x)):
            w, h, gt = IMAGES[int(round(x[b, 0, 0, 0] / 10)) - 1]
            rows = [] if self.empty else gt
            boxes = np.array([[(bx + self.shift * bw) / w, by / h, (bx + bw + self.shift * bw) / w,
                               (by + bh) / h] for _, bx, by, bw, bh in rows], np.float32)
            per_image.append((boxes.reshape(-1, 4), np.full(len(rows), 0.9, np.float32),
                              np.array([self.label[c] for c, *_ in rows], np.int32)))
        return Detections.from_lists(per_image, max_detections=10)


@pytest.fixture
def coco_set(tmp_path: Path) -> tuple[Path, Path]:
    return write_coco_set(tmp_path)


@pytest.mark.parametrize("batch", [1, 2])
def test_perfect_detections_score_ap_one(coco_set: tuple[Path, Path], tmp_path: Path,
                                         batch: int) -> None:
    ann, images = coco_set
    oracle = OraclePredictor()
    out = tmp_path / "dets.json"
    m = evaluate_coco(oracle, ann, images, config_labels=("a", "b"), batch=batch, out_json=out,
                      per_class=True, progress=False)  # fmt: skip
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == pytest.approx(1.0)
    assert m["num_images"] == 3 and m["num_detections"] == 5 and m["skipped"] == []
    assert oracle.batches == ([1, 1, 1] if batch == 1 else [2, 1])
    assert m["per_class"] == {"circle": {"AP": 1.0, "AP50": 1.0},
                              "square": {"AP": 1.0, "AP50": 1.0}}  # fmt: skip
    results = json.loads(out.read_text())
    gt = {(a["image_id"], a["category_id"], tuple(a["bbox"]))
          for a in json.loads(ann.read_text())["annotations"]}  # fmt: skip
    got = {(r["image_id"], r["category_id"], tuple(round(v) for v in r["bbox"])) for r in results}
    assert got == gt  # pixel boxes [x,y,w,h] with the file's category ids


def test_shifted_detections_lose_the_strict_thresholds(coco_set: tuple[Path, Path]) -> None:
    # A shift of 0.2 box widths gives IoU (1-0.2)/(1+0.2) = 0.667: right at IoU 0.50..0.65
    # (4 of the 10 thresholds), wrong from 0.70 on.
    m = evaluate_coco(OraclePredictor(shift=0.2), *coco_set, progress=False)
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == pytest.approx(0.0)
    assert m["AP"] == pytest.approx(0.4)


def test_no_detections_score_zero(coco_set: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "dets.json"
    m = evaluate_coco(OraclePredictor(empty=True), *coco_set, out_json=out, progress=False)
    assert m["AP"] == 0.0 and m["AP50"] == 0.0 and m["num_detections"] == 0
    assert json.loads(out.read_text()) == []


def test_unreadable_image_is_skipped_and_reported(coco_set: tuple[Path, Path]) -> None:
    ann, images = coco_set
    (images / "img2.png").write_bytes(b"not a png")
    m = evaluate_coco(OraclePredictor(), ann, images, progress=False)
    assert m["skipped"] == ["img2.png"] and m["num_images"] == 2
    assert m["AP"] == pytest.approx(1.0)  # the skipped image's ground truth is not counted


def test_limit_takes_the_first_images(coco_set: tuple[Path, Path]) -> None:
    oracle = OraclePredictor()
    m = evaluate_coco(oracle, *coco_set, limit=2, progress=False)
    assert m["num_images"] == 2 and m["num_detections"] == 3 and sum(oracle.batches) == 2


def test_runner_with_fixed_batch_gets_padded_batches(coco_set: tuple[Path, Path]) -> None:
    oracle = OraclePredictor()
    oracle.batch_range = (2, 2)  # type: ignore[attr-defined]
    m = evaluate_coco(oracle, *coco_set, batch=2, progress=False)
    assert oracle.batches == [2, 2] and m["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("content, match", [
    ("this is not json", "not JSON"),
    ("[1, 2]", "not an object"),
    ('{"images": [], "categories": []}', "no 'annotations' list"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "file_name"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}', "no annotations"),
])  # fmt: skip
def test_not_a_coco_file_is_one_line_error(tmp_path: Path, content: str, match: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(M2DetError, match=match) as e:
        load_coco_annotations(bad)
    assert "\n" not in str(e.value)


def test_class_count_mismatch_is_an_error(coco_set: tuple[Path, Path]) -> None:
    with pytest.raises(M2DetError, match="2 categories but the model predicts 5 classes"):
        evaluate_coco(OraclePredictor(), *coco_set, config_labels=tuple("abcde"), progress=False)


def test_missing_annotation_fields_get_coco_defaults(tmp_path: Path) -> None:
    ann, images = write_coco_set(tmp_path)
    data: dict[str, Any] = json.loads(ann.read_text())
    for a in data["annotations"]:
        del a["area"], a["iscrowd"], a["id"]
    ann.write_text(json.dumps(data))
    assert evaluate_coco(OraclePredictor(), ann, images, progress=False)["AP"] == pytest.approx(1.0)


def test_coco_table_has_the_standard_lines() -> None:
    metrics = {"AP": 0.5, "AP50": 0.75, "AP75": 0.25, "APs": -1.0, "APm": 0.1, "APl": 0.2,
               "per_class": {"circle": {"AP": 0.5, "AP50": 0.75}}}  # fmt: skip
    table = coco_table(metrics)
    assert table.splitlines()[0] == (" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | "
                                     "maxDets=100 ] = 0.500")  # fmt: skip
    assert "area= small | maxDets=100 ] = -1.000" in table
    assert " circle  0.500  0.750" in table
    assert sum("Average Precision" in line for line in table.splitlines()) == 6
