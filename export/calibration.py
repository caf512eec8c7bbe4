"""INT8 calibration data: real images from a folder, preprocessed exactly as at inference
(``m2det.preprocess``: resize to SxS, BGR float32 0-255; the mean is inside the graph).

Unreadable files (missing, empty, truncated, not an image) are skipped, counted and named; a
folder that cannot supply the requested number of usable images is an error, never a smaller
calibration set in silence."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m2det.errors import M2DetError
from m2det.preprocess import list_images, preprocess, read_image

#: Calibration methods offered by ``m2det-export --calib-method``.
CALIB_METHODS = ("entropy", "max", "percentile")


@dataclass
class CalibrationImages:
    """``images``: BGR uint8 images (original sizes) read from ``folder``; ``files``: their
    names; ``skipped``: (name, reason) of the files that could not be used."""

    folder: str
    images: list[np.ndarray]
    files: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def preprocessed(self, size: int) -> np.ndarray:
        """[N,3,size,size] float32, BGR 0-255."""
        return preprocess(self.images, size)

    def skipped_line(self, limit: int = 3) -> str:
        """``2 unreadable files skipped: a.jpg (truncated JPEG), b.png (empty file)``."""
        names = ", ".join(f"{name} ({why})" for name, why in self.skipped[:limit])
        more = f" and {len(self.skipped) - limit} more" if len(self.skipped) > limit else ""
        return f"{len(self.skipped)} unreadable file(s) skipped: {names}{more}"

    def record(self) -> dict[str, object]:
        """What the export summary records about the set."""
        return {"folder": self.folder, "images": len(self.images),
                "skipped": [{"file": n, "reason": r} for n, r in self.skipped]}  # fmt: skip


def read_calibration_images(folder: str | Path, count: int, seed: int = 0) -> CalibrationImages:
    """``count`` usable images of ``folder``. With more files than ``count`` a seeded random
    subset is used (the same folder and seed always give the same set); a file that cannot be
    read is skipped and replaced by the next one of a seeded order of the rest. Fewer than
    ``count`` usable images is an M2DetError that says how many there are and why."""
    if count < 1:
        raise M2DetError(f"--calib-count must be >= 1, got {count}")
    files = list_images(folder)
    rng = np.random.default_rng(seed)
    if len(files) > count:
        first = sorted(int(i) for i in rng.choice(len(files), count, replace=False))
        chosen = set(first)
        order = first + [int(i) for i in rng.permutation(len(files)) if int(i) not in chosen]
    else:
        order = list(range(len(files)))
    result = CalibrationImages(str(folder), [], [])
    for i in order:
        if len(result.images) == count:
            break
        try:
            result.images.append(read_image(files[i]))
            result.files.append(files[i].name)
        except M2DetError as e:
            result.skipped.append((files[i].name, str(e).rsplit(": ", 1)[-1]))
    if len(result.images) < count:
        why = f"; {result.skipped_line()}" if result.skipped else ""
        raise M2DetError(f"{folder} has {len(result.images)} usable image(s), fewer than the "
                         f"{count} calibration images requested (--calib-count){why}")
    return result


def load_calibration_images(folder: str | Path, size: int, count: int,
                            seed: int = 0) -> np.ndarray:
    """:func:`read_calibration_images`, preprocessed: [count,3,size,size] float32."""
    return read_calibration_images(folder, count, seed).preprocessed(size)
