"""Synthetic-shapes generator: determinism, COCO validity, tight boxes, CLI errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from m2det.config import SHAPES_CLASSES
from m2det.errors import M2DetError
from m2det.shapes import generate, main


@pytest.fixture(scope="module")
def png_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate(out, train=12, val=4, seed=3, size=96, image_format="png")
    return out


def test_same_seed_same_files(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", train=5, val=2, seed=7, size=64)
    b = generate(tmp_path / "b", train=5, val=2, seed=7, size=64)
    c = generate(tmp_path / "c", train=5, val=2, seed=8, size=64)
    assert a["train_json"].read_text() == b["train_json"].read_text()
    assert a["train_json"].read_text() != c["train_json"].read_text()
    for split in ("train", "val"):
        files = sorted(a[f"{split}_images"].iterdir())
        assert len(files) == (5 if split == "train" else 2)
        for f in files:
            assert f.read_bytes() == (b[f"{split}_images"] / f.name).read_bytes()


def test_coco_json_loads_and_categories(png_set: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(png_set / "annotations" / "train.json"))
    cats = coco.loadCats(coco.getCatIds())
    assert [c["id"] for c in cats] == [1, 2, 3, 4, 5]
    assert tuple(c["name"] for c in cats) == SHAPES_CLASSES
    assert len(coco.getImgIds()) == 12
    counts = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert all(1 <= n <= 6 for n in counts) and max(counts) > 1
    assert all(a["iscrowd"] == 0 for a in coco.dataset["annotations"])


def test_boxes_inside_and_tight(png_set: Path) -> None:
    data = json.loads((png_set / "annotations" / "train.json").read_text())
    files = {img["id"]: img for img in data["images"]}
    for ann in data["annotations"]:
        img = files[ann["image_id"]]
        image = cv2.imread(str(png_set / "train" / img["file_name"]))
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and w >= 1 and h >= 1
        assert x + w <= img["width"] and y + h <= img["height"]
        hit = (image[y:y + h, x:x + w] == ann["color"]).all(axis=2)
        # every edge row/column of the box holds a pixel of the object: the box is tight
        assert hit[0].any() and hit[-1].any() and hit[:, 0].any() and hit[:, -1].any()
        assert hit.sum() >= ann["area"]  # all visible pixels lie inside the box


def test_regenerate_replaces_split(tmp_path: Path) -> None:
    generate(tmp_path, train=4, val=1, seed=0, size=64)
    paths = generate(tmp_path, train=2, val=1, seed=0, size=64)
    assert len(list(paths["train_images"].iterdir())) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("argv", [
    ["--out", "X", "--train", "0", "--val", "0"],
    ["--out", "X", "--train", "2", "--val", "1", "--size", "8"],
    ["--out", "X", "--train", "two", "--val", "1"],
    ["--train", "2", "--val", "1"],
])
def test_cli_errors_one_line(argv: list[str], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / a) if a == "X" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("m2det-shapes: error: ") and err.count("\n") == 1


def test_cli_writes_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path), "--train", "2", "--val", "1", "--size", "64"]) == 0
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [
        "train_000000.jpg", "train_000001.jpg"]
    assert (tmp_path / "annotations" / "val.json").is_file()


def test_generate_rejects_bad_args(tmp_path: Path) -> None:
    with pytest.raises(M2DetError):
        generate(tmp_path, train=1, val=1, image_format="gif")
    assert np.all([not p.exists() for p in (tmp_path / "train", tmp_path / "val")])
