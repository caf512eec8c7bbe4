"""INT8 calibration data: real images from a folder, preprocessed exactly as at inference
(``m2det.preprocess``: resize to SxS, BGR float32 0-255; the mean is inside the graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m2det.errors import M2DetError
from m2det.preprocess import list_images, preprocess, read_image

#: Calibration methods offered by ``m2det-export --calib-method``.
CALIB_METHODS = ("entropy", "max", "percentile")


def load_calibration_images(folder: str | Path, size: int, count: int, seed: int = 0) -> np.ndarray:
    """Up to ``count`` images of ``folder`` -> [N,3,size,size] float32 (BGR 0-255).

    When the folder holds more than ``count`` images a seeded random subset is used (sorted by
    name, so the same folder and seed always give the same set). An empty folder, one without
    images, or one whose images are all unreadable is an M2DetError."""
    if count < 1:
        raise M2DetError(f"--calib-count must be >= 1, got {count}")
    files = list_images(folder)
    if len(files) > count:
        pick = np.random.default_rng(seed).choice(len(files), count, replace=False)
        files = [files[i] for i in sorted(pick)]
    images = []
    for f in files:
        try:
            images.append(read_image(f))
        except M2DetError:
            continue  # one bad file does not spoil a calibration set
    if not images:
        raise M2DetError(f"no readable images in {folder}")
    return preprocess(images, size)
