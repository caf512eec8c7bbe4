"""The images a benchmark rotates through: synthetic shapes images or the first images of a
folder (BGR uint8, original size; the runner's preprocessing resizes them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m2det.errors import M2DetError
from m2det.preprocess import list_images, read_image

#: Side of the synthetic shapes images of the default image pool (resized to S by preprocessing).
POOL_IMAGE_SIZE = 384


def synthetic_pool(count: int, seed: int = 0, size: int = POOL_IMAGE_SIZE) -> list[np.ndarray]:
    """``count`` different BGR uint8 [size,size,3] synthetic-shapes images (``m2det.shapes``)."""
    from m2det.shapes import render_image

    return [render_image(np.random.default_rng([seed, 7, i]), size)[0] for i in range(count)]


def folder_pool(folder: str | Path, count: int) -> list[np.ndarray]:
    """The first ``count`` readable images of ``folder`` (sorted by name), BGR uint8."""
    pool: list[np.ndarray] = []
    for path in list_images(folder):
        try:
            pool.append(read_image(path))
        except M2DetError:
            continue
        if len(pool) == count:
            break
    if not pool:
        raise M2DetError(f"no readable images in {folder}")
    return pool
