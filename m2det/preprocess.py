"""The one preprocessing definition (docs/design.md §2): resize to SxS, no letterbox, BGR float32
0-255. Mean subtraction is inside the model/graph, so every runner (Python or C++) only resizes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from m2det.errors import M2DetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_image(path: str | Path) -> np.ndarray:
    """BGR uint8 [H,W,3]. A missing, empty, truncated or undecodable file is an M2DetError
    that says which (and OpenCV prints nothing)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise M2DetError(f"cannot read image {path}: not found") from None
    except OSError as e:
        raise M2DetError(f"cannot read image {path}: {e.strerror or e}") from None
    problem = image_problem(data)
    if problem is not None:
        raise M2DetError(f"cannot read image {path}: {problem}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise M2DetError(f"cannot read image {path}: not a decodable image")
    return img


def image_problem(data: bytes) -> str | None:
    """Why the bytes of an image file cannot be used whole ("empty file", "truncated JPEG",
    "truncated PNG"), or None. Decoders fill a truncated image's missing rows with grey and
    only print a warning, so the end of the stream is checked here: a JPEG's last scan must be
    followed by its end-of-image marker (scan data never contains FF D9), a PNG must end with its
    IEND chunk."""
    if not data:
        return "empty file"
    if data.startswith(b"\xff\xd8"):
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0:
            return "truncated JPEG"
    elif data.startswith(b"\x89PNG\r\n\x1a\n") and data.rfind(b"IEND") < 0:
        return "truncated PNG"
    return None


def preprocess(images: list[np.ndarray] | np.ndarray, size: int) -> np.ndarray:
    """BGR uint8 images [H,W,3] (any sizes) -> network input [B,3,S,S] float32, values 0-255."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    batch = np.empty((len(images), 3, size, size), np.float32)
    for i, img in enumerate(images):
        resized = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        batch[i] = resized.transpose(2, 0, 1)
    return batch


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder (sorted); an empty or missing folder is an M2DetError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise M2DetError(f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise M2DetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files
