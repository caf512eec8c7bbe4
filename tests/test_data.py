"""COCO/VOC datasets, SSD augmentation geometry and the collate function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from m2det.augment import EvalTransform, TrainTransform
from m2det.data import CocoDetection, Sample, VOCDetection, detection_collate
from m2det.errors import M2DetError


def _write_image(path: Path, width: int = 40, height: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))


def _coco(tmp_path: Path, images: list[dict[str, Any]], anns: list[dict[str, Any]]) -> Path:
    cats = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    ann_file = tmp_path / "ann.json"
    for k, a in enumerate(anns):
        a.setdefault("id", k + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann_file


def _img(i: int, name: str | None = None) -> dict[str, Any]:
    return {"id": i, "file_name": name or f"{i}.png", "width": 40, "height": 30}


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    for i in (1, 2, 3):
        _write_image(tmp_path / "img" / f"{i}.png")
    return tmp_path


def test_coco_mapping_crowd_clip_degenerate(coco_dir: Path) -> None:
    ann = _coco(coco_dir, [_img(1), _img(2), _img(3)], [
        {"image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10]},
        {"image_id": 1, "category_id": 3, "bbox": [30, 20, 20, 20]},  # clipped to 40x30
        {"image_id": 1, "category_id": 3, "bbox": [1, 1, 30, 20], "iscrowd": 1},
        {"image_id": 2, "category_id": 7, "bbox": [39.5, 3, 5, 5]},  # 0.5 px after clipping
        {"image_id": 3, "category_id": 3, "bbox": [0, 0, 4, 4]},
    ])
    ds = CocoDetection(ann, coco_dir / "img")
    assert ds.cat_ids == [3, 7] and ds.class_names == ("cat", "dog")
    assert len(ds) == 2  # image 2 has no box left and is dropped
    s = ds[0]
    assert isinstance(s, Sample) and s.image_id == 1 and s.image.shape == (30, 40, 3)
    np.testing.assert_array_equal(s.labels, [1, 0])
    np.testing.assert_allclose(s.boxes, [[5, 5, 15, 15], [30, 20, 40, 30]])
    assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
    st = ds.stats
    assert (st.crowd_boxes, st.boxes_clipped, st.degenerate_boxes, st.empty_images) == (1, 1, 1, 1)
    assert ds.coco.getImgIds() == [1, 2, 3]
    kept = CocoDetection(ann, coco_dir / "img", keep_empty=True)
    assert len(kept) == 3 and kept[1].boxes.shape == (0, 4) and kept[1].labels.shape == (0,)


def test_coco_missing_and_corrupt_images(coco_dir: Path) -> None:
    (coco_dir / "img" / "bad.png").write_text("not an image")
    ann = _coco(coco_dir, [_img(1), _img(4, "gone.png"), _img(5, "bad.png")], [
        {"image_id": i, "category_id": 7, "bbox": [1, 1, 10, 10]} for i in (1, 4, 5)])
    with pytest.warns(UserWarning, match="skipping"):
        ds = CocoDetection(ann, coco_dir / "img")
    assert len(ds) == 1 and (ds.stats.missing_images, ds.stats.corrupt_images) == (1, 1)
    with pytest.raises(M2DetError, match="missing image"):
        CocoDetection(ann, coco_dir / "img", strict=True)


def test_coco_undecodable_image_replaced(coco_dir: Path) -> None:
    (coco_dir / "img" / "trunc.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 8)
    ann = _coco(coco_dir, [_img(1, "trunc.png"), _img(2)], [
        {"image_id": i, "category_id": 7, "bbox": [1, 1, 10, 10]} for i in (1, 2)])
    ds = CocoDetection(ann, coco_dir / "img")
    with pytest.warns(UserWarning, match="undecodable"):
        assert ds[0].image_id == 2
    assert ds.stats.corrupt_images == 1
    with pytest.raises(M2DetError, match="undecodable"):
        CocoDetection(ann, coco_dir / "img", strict=True)[0]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"images": []}', "\xff\xfe"])
def test_not_coco_json(tmp_path: Path, content: str) -> None:
    ann = tmp_path / "a.json"
    ann.write_text(content, encoding="latin-1")
    with pytest.raises(M2DetError, match="not a COCO json") as exc:
        CocoDetection(ann, tmp_path)
    assert "\n" not in str(exc.value)


def test_empty_dataset_error(coco_dir: Path) -> None:
    ann = _coco(coco_dir, [_img(1)], [])
    with pytest.raises(M2DetError, match="no usable images"):
        CocoDetection(ann, coco_dir / "img")
    assert len(CocoDetection(ann, coco_dir / "img", keep_empty=True)) == 1


def _voc_xml(objects: list[tuple[str, int, tuple[int, int, int, int]]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in objects)
    return f"<annotation><size><width>40</width><height>30</height></size>{objs}</annotation>"


def test_voc_parsing(tmp_path: Path) -> None:
    voc = tmp_path / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    for stem in ("000001", "000002"):
        _write_image(voc / "JPEGImages" / f"{stem}.jpg")
    (voc / "Annotations" / "000001.xml").write_text(_voc_xml(
        [("dog", 0, (1, 2, 10, 12)), ("person", 1, (5, 5, 20, 20)), ("car", 0, (30, 20, 45, 30))]))
    (voc / "Annotations" / "000002.xml").write_text(_voc_xml([("cat", 1, (1, 1, 5, 5))]))
    ds = VOCDetection(tmp_path, [("2007", "trainval")])
    assert len(ds) == 1 and ds.stats.difficult_boxes == 2 and ds.stats.boxes_clipped == 1
    s = ds[0]
    np.testing.assert_array_equal(s.labels, [11, 6])  # dog, car
    np.testing.assert_allclose(s.boxes, [[0, 1, 10, 12], [29, 19, 40, 30]])
    hard = VOCDetection(tmp_path, [("2007", "trainval")], keep_difficult=True)
    assert len(hard) == 2 and hard[0].labels.tolist() == [11, 14, 6]
    with pytest.raises(M2DetError, match="split file"):
        VOCDetection(tmp_path, [("2012", "trainval")])


def _painted_sample(rng: np.random.Generator) -> tuple[Sample, np.ndarray]:
    """Grey image with 3 disjoint boxes, each painted its own colour."""
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    image = np.full((120, 180, 3), 128, np.uint8)
    boxes = np.array([[10, 10, 60, 50], [80, 30, 170, 110], [20, 70, 60, 115]], np.float32)
    boxes += rng.integers(-5, 5, (3, 4))
    for b, c in zip(boxes.astype(int), colors, strict=True):
        image[b[1]:b[3], b[0]:b[2]] = c
    return Sample(image, boxes, np.arange(3, dtype=np.int64), 0), colors


def _assert_colours_follow_boxes(image: np.ndarray, targets: np.ndarray,
                                 colors: np.ndarray) -> None:
    """Inside each target box (image [3,S,S], targets normalized) >90% of the pixels have the
    colour its label was painted with; boxes under 4 inner pixels are skipped."""
    size = image.shape[-1]
    hwc = image.transpose(1, 2, 0)
    for t in targets:
        x1, y1, x2, y2 = (t[:4] * size).round().astype(int)
        inner = hwc[y1 + 1:y2 - 1, x1 + 1:x2 - 1].reshape(-1, 3)
        if len(inner) < 4:
            continue
        assert (np.abs(inner - colors[int(t[4])]).max(axis=1) < 40).mean() > 0.9


def test_train_transform_geometry_consistent() -> None:
    rng = np.random.default_rng(0)
    transform = TrainTransform(96, seed=1, photometric=False)
    for _ in range(60):
        sample, colors = _painted_sample(rng)
        image, targets = transform(sample)
        assert image.shape == (3, 96, 96) and image.dtype == np.float32
        assert targets.dtype == np.float32 and targets.shape[1] == 5 and len(targets) >= 1
        assert (targets[:, :4] >= 0).all() and (targets[:, :4] <= 1).all()
        assert (targets[:, 2] > targets[:, 0]).all() and (targets[:, 3] > targets[:, 1]).all()
        _assert_colours_follow_boxes(image, targets, colors)


def test_flip_only_transform_keeps_every_box_and_mirrors_some() -> None:
    rng = np.random.default_rng(0)
    transform = TrainTransform(96, seed=2, photometric=False, crop=False, p=0.0)
    flipped = 0
    for _ in range(20):
        sample, colors = _painted_sample(rng)
        image, targets = transform(sample)
        h, w = sample.image.shape[:2]
        plain = sample.boxes / np.array([w, h, w, h], np.float32)
        assert len(targets) == 3 and np.array_equal(targets[:, 4], [0, 1, 2])
        mirrored = plain.copy()
        mirrored[:, [0, 2]] = 1 - plain[:, [2, 0]]
        if np.allclose(targets[:, :4], mirrored, atol=1e-6):
            flipped += 1
        else:
            np.testing.assert_allclose(targets[:, :4], plain, atol=1e-6)
        _assert_colours_follow_boxes(image, targets, colors)
    assert 3 < flipped < 17


def test_train_transform_reseed_reproducible() -> None:
    sample, _ = _painted_sample(np.random.default_rng(0))
    t = TrainTransform(64, seed=5)
    first = [t(sample) for _ in range(5)]
    t.reseed(5)
    again = [t(sample) for _ in range(5)]
    for (i1, t1), (i2, t2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(t1, t2)
    assert any(not np.array_equal(first[0][0], f[0]) for f in first[1:])


def test_train_transform_photometric_and_empty() -> None:
    sample, _ = _painted_sample(np.random.default_rng(0))
    image, targets = TrainTransform(64, seed=0)(sample)
    assert image.min() >= 0 and image.max() <= 255 and len(targets) >= 1
    empty = Sample(sample.image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 1)
    image, targets = TrainTransform(64, seed=0)(empty)
    assert image.shape == (3, 64, 64) and targets.shape == (0, 5)


def test_eval_transform_and_collate() -> None:
    sample, _ = _painted_sample(np.random.default_rng(0))
    image, targets = EvalTransform(90)(sample)
    np.testing.assert_allclose(targets[:, :4] * [180, 120, 180, 120], sample.boxes, atol=1e-4)
    assert image.shape == (3, 90, 90) and float(image[:, 45, 45].max()) <= 255
    empty = (np.zeros((3, 90, 90), np.float32), np.zeros((0, 5), np.float32))
    images, tlist = detection_collate([(image, targets), empty])
    assert images.shape == (2, 3, 90, 90) and images.dtype == torch.float32
    assert [t.shape for t in tlist] == [(3, 5), (0, 5)]
    assert tlist[0].dtype == torch.float32 and tlist[0][:, 4].tolist() == [0, 1, 2]
