"""``m2det-detect`` and ``m2det-eval`` (the conventions they follow: :mod:`m2det.cli`).

Both exit 1 (partial success) when some images could not be read: the others are processed and
written, the unreadable ones are named in a warning and listed under ``skipped`` in the JSON.
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from m2det.cli import (  # noqa: F401 - re-exported for the other CLIs
    EXIT_OK,
    EXIT_PARTIAL,
    NMS_CHOICES,
    Console,
    add_nms_args,
    jsonable,
    make_parser,
    nms_from_args,
    parse_device,
    remove_on_failure,
    run_cli,
)
from m2det.engines.backend_options import add_backend_args, backend_kwargs
from m2det.errors import M2DetError
from m2det.io import atomic_path, atomic_write_bytes, atomic_write_json
from m2det.preprocess import IMAGE_EXTENSIONS, list_images, preprocess, read_image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def _add_artifact_args(parser: argparse.ArgumentParser, required: bool, ckpt_help: str) -> None:
    group = parser.add_argument_group("model (one of)")
    exclusive = group.add_mutually_exclusive_group(required=required)
    exclusive.add_argument("--ckpt", type=Path, help=ckpt_help)
    exclusive.add_argument("--onnx", type=Path,
                           help="An exported ONNX file (ONNX Runtime, or --backend openvino).")
    exclusive.add_argument("--engine", type=Path, help="A TensorRT plan (.plan or .engine).")
    exclusive.add_argument("--triton", metavar="HOST:PORT", help="A Triton server serving an "
                           "m2det-triton repository (grpc://HOST:PORT for gRPC).")
    group.add_argument("--triton-model", default="m2det_net", help="The model --triton runs.")
    group.add_argument("--config", help="Config preset of a checkpoint that records none, or "
                                        "of an ONNX file whose metadata was stripped (checked "
                                        "against the recorded one otherwise).")
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N.")
    group.add_argument("--fp16", action="store_true",
                       help="Checkpoints on CUDA: autocast to FP16.")
    add_backend_args(group)


def _check_artifact(args: argparse.Namespace) -> None:
    """The model options, before any work: preset name, device, file present, and nothing that
    does not apply to --triton (the served model fixes it)."""
    from m2det.config import get_config

    if args.triton is not None and (args.fp16 or args.device != "cpu" or args.config is not None):
        raise M2DetError("--device/--fp16/--config do not apply to --triton (the served model "
                         "fixes them)")
    if args.config is not None:
        get_config(args.config)  # unknown names fail first, listing the valid ones
    parse_device(args.device)
    for flag, what in (("ckpt", "checkpoint"), ("onnx", "ONNX file"), ("engine", "plan")):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise M2DetError(f"{what} not found: {path}")


def _open_runner(args: argparse.Namespace, many: bool = False) -> tuple[Any, Path | str]:
    """(runner, artifact) for --ckpt/--onnx/--engine/--triton (default: the bundled checkpoint);
    ``many``: a folder or dataset follows (OpenVINO's throughput mode by default)."""
    from m2det.engines.registry import default_checkpoint, load_runner

    backend = backend_kwargs(args, many)
    if args.triton is not None:
        from m2det.engines.triton.runner import TritonRunner

        return TritonRunner(args.triton, nms_from_args(args), model=args.triton_model), args.triton
    artifact = args.ckpt or args.onnx or args.engine or default_checkpoint()
    runner = load_runner(artifact, config=args.config, nms=nms_from_args(args), device=args.device,
                         fp16=args.fp16, **backend)  # fmt: skip
    return runner, artifact


# ----------------------------------------------------------------------------- drawing
def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable BGR colour per class."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                    classes: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """A copy of BGR ``image`` [H,W,3] with boxes [n,4] (pixels, x1y1x2y2) and "name score" tags."""
    out = image.copy()
    thick = max(1, round(min(out.shape[:2]) / 300))
    scale = min(1.0, max(0.3, min(out.shape[:2]) / 800))
    for box, score, cls in sorted(zip(boxes, scores, classes, strict=True), key=lambda d: d[1]):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        color = class_color(int(cls))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        text = f"{labels[int(cls)]} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(y1, th + base)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), color, -1)
        cv2.putText(out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)  # fmt: skip
    return out


# ----------------------------------------------------------------------------- m2det-detect
def _detect_parser() -> argparse.ArgumentParser:
    p = make_parser("m2det-detect", "Detect objects in an image, a folder of images or a video. "
                    "Writes annotated copies and OUT/detections.json (boxes in original image "
                    "pixels). Exit status 1: some images could not be read (named on stderr "
                    "and under 'skipped'); the others were processed.")
    _add_artifact_args(p, required=False,
                       ckpt_help="Checkpoint (.pth); by default the bundled m2det_tiny shapes "
                                 "model.")  # fmt: skip
    p.add_argument("--input", required=True, type=Path, help="An image, a folder or a video.")
    p.add_argument("--out", required=True, type=Path, help="Output folder.")
    p.add_argument("--draw-threshold", type=float, default=0.3, metavar="F",
                   help="Draw boxes scoring at least F (the JSON keeps every detection).")
    add_nms_args(p)
    return p


class _Detector:
    """One runner + drawing/recording of its results in original-image pixels."""

    def __init__(self, runner: Any, draw_threshold: float) -> None:
        self.runner = runner
        self.draw_threshold = draw_threshold
        self.labels = runner.config.labels
        self.records: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, key: str, image: np.ndarray) -> np.ndarray:
        """Detect on BGR ``image``, record under ``key``, return the annotated copy."""
        h, w = image.shape[:2]
        dets = self.runner(preprocess(image, self.runner.input_size)).scaled([(w, h)])
        np.clip(dets.boxes, 0, np.array([w, h, w, h], np.float32), out=dets.boxes)
        self.records[key] = dets.to_json(0, self.labels)
        boxes, scores, classes = dets.image(0)
        keep = scores >= self.draw_threshold
        return draw_detections(image, boxes[keep], scores[keep], classes[keep], self.labels)

    def many(self, keys: list[str], images: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`__call__` for several images in one runner call (parallel requests)."""
        sizes = [(im.shape[1], im.shape[0]) for im in images]
        dets = self.runner(preprocess(images, self.runner.input_size)).scaled(sizes)
        out = []
        for b, (key, image, (w, h)) in enumerate(zip(keys, images, sizes, strict=True)):
            boxes, scores, classes = dets.image(b)
            np.clip(boxes, 0, np.array([w, h, w, h], np.float32), out=boxes)
            self.records[key] = dets.to_json(b, self.labels)
            keep = scores >= self.draw_threshold
            out.append(draw_detections(image, boxes[keep], scores[keep], classes[keep],
                                       self.labels))  # fmt: skip
        return out


def _detect(argv: Sequence[str] | None) -> int:
    args = _detect_parser().parse_args(argv)
    console = Console.from_args("m2det-detect", args)
    _check_artifact(args)
    if args.draw_threshold < 0:
        raise M2DetError(f"--draw-threshold must be >= 0, got {args.draw_threshold}")
    source: Path = args.input
    if not source.exists():
        raise M2DetError(f"input not found: {source}")
    out: Path = args.out
    if source.is_dir() and out.resolve() == source.resolve():
        raise M2DetError("--out must differ from the input folder (it would overwrite the images)")
    files = list_images(source) if source.is_dir() else [source]
    is_video = source.is_file() and source.suffix.lower() in VIDEO_EXTENSIONS
    if not is_video and source.is_file():
        read_image(source)  # a single unreadable image is an error before the model loads
    runner, artifact = _open_runner(args, many=len(files) > 1)
    detector = _Detector(runner, args.draw_threshold)
    skipped: dict[str, str] = {}  # file name -> why it could not be read
    written: list[Path] = []
    with remove_on_failure(out), _remove_files_on_failure(written), runner:
        if is_video:
            _detect_video(detector, source, out, console)
        elif runner.preferred_batch > 1:
            _detect_many(detector, files, out, skipped, written, console)
        else:
            for path in console.progress(files, desc="detect", unit="img"):
                try:
                    image = read_image(path)
                except M2DetError as e:
                    skipped[path.name] = str(e).rsplit(": ", 1)[-1]
                    continue
                written.append(_write_image(out / path.name, detector(path.name, image)))
        result = {
            "artifact": str(artifact),
            "backend": runner.name, "config": runner.config.name, "input": str(source),
            "nms": jsonable(runner.nms), "boxes": "x1,y1,x2,y2 in original image pixels",
            "detections": detector.records, "skipped": list(skipped),
        }  # fmt: skip
        atomic_write_json(out / "detections.json", result)
    total = sum(len(v) for v in detector.records.values())
    unit = "frame(s)" if is_video else "image(s)"
    console.result(f"m2det-detect: {total} detections in {len(detector.records)} {unit} -> {out}")
    console.write_json(result)
    if skipped:
        names = ", ".join(f"{name} ({why})" for name, why in list(skipped.items())[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        console.warn(f"skipped {len(skipped)} unreadable image(s): {names}{more}")
        return EXIT_PARTIAL
    return EXIT_OK


def _detect_many(detector: _Detector, files: list[Path], out: Path, skipped: dict[str, str],
                 written: list[Path], console: Console) -> None:
    """The folder loop, ``runner.preferred_batch`` images per runner call (a runner with
    parallel requests)."""
    chunk = detector.runner.preferred_batch
    bar = console.progress(total=len(files), desc="detect", unit="img")
    for start in range(0, len(files), chunk):
        keys, images = [], []
        for path in files[start:start + chunk]:
            try:
                images.append(read_image(path))
                keys.append(path.name)
            except M2DetError as e:
                skipped[path.name] = str(e).rsplit(": ", 1)[-1]
        if images:
            for key, annotated in zip(keys, detector.many(keys, images), strict=True):
                written.append(_write_image(out / key, annotated))
        bar.update(len(files[start:start + chunk]))
    bar.close()


@contextlib.contextmanager
def _remove_files_on_failure(files: list[Path]) -> Iterator[None]:
    """The files appended to ``files`` during the block are removed if it raises."""
    try:
        yield
    except BaseException:
        for f in files:
            f.unlink(missing_ok=True)
        raise


def _write_image(path: Path, image: np.ndarray) -> Path:
    ext = path.suffix.lower() if path.suffix.lower() in IMAGE_EXTENSIONS else ".png"
    ok, data = cv2.imencode(ext, image)
    if not ok:
        raise M2DetError(f"cannot encode {path.name} as {ext}")
    atomic_write_bytes(path.with_suffix(ext), data.tobytes())
    return path.with_suffix(ext)


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        ok, frame = cap.read()
        if not ok:
            raise M2DetError(f"cannot read video {path}")
        while ok:
            yield frame
            ok, frame = cap.read()
    finally:
        cap.release()


def _detect_video(detector: _Detector, source: Path, out: Path, console: Console) -> None:
    """Annotate every frame into ``out/<stem>_det.mp4``; record frames as ``<name>#<index>``."""
    cap = cv2.VideoCapture(str(source))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    cap.release()
    target = out / f"{source.stem}_det.mp4"
    with atomic_path(target) as tmp:
        video_tmp = tmp.with_name(tmp.name + ".mp4")  # the writer picks the container by suffix
        writer: Any = None
        try:
            for i, frame in enumerate(console.progress(_video_frames(source), total=count,
                                                       desc="detect", unit="frame")):
                annotated = detector(f"{source.name}#{i}", frame)
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter.fourcc(*"mp4v"), fps,
                                             (w, h))  # fmt: skip
                    if not writer.isOpened():
                        raise M2DetError(f"cannot write video {target}")
                writer.write(annotated)
        except BaseException:
            if writer is not None:
                writer.release()
            video_tmp.unlink(missing_ok=True)
            raise
        writer.release()  # at least one frame was read, so the writer exists
        os.replace(video_tmp, tmp)


def detect_main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-detect``."""
    return run_cli("m2det-detect", _detect, argv)


# ----------------------------------------------------------------------------- m2det-eval
def _eval_parser() -> argparse.ArgumentParser:
    p = make_parser("m2det-eval", "COCO box AP of a checkpoint, ONNX file or TensorRT plan on any "
                    "COCO-format annotation file. --json FILE writes the metrics, the artifact "
                    "and the settings. Exit status 1: some images could not be read (named on "
                    "stderr); the AP covers the others.")
    _add_artifact_args(p, required=True, ckpt_help="Checkpoint (.pth).")
    p.add_argument("--ann", required=True, type=Path, help="COCO-format annotation JSON.")
    p.add_argument("--images", required=True, type=Path, help="Folder of the annotated images.")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="Evaluate the first N images by id only.")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="Images per forward pass (default 1; OpenVINO's throughput mode: its "
                        "parallel requests).")  # fmt: skip
    p.add_argument("--save-detections", type=Path, default=None, metavar="OUT",
                   help="Write the COCO results (detections) JSON to OUT.")
    p.add_argument("--per-class", action="store_true", help="Also report AP per category.")
    add_nms_args(p)
    return p


def _eval(argv: Sequence[str] | None) -> int:
    from m2det.coco_eval import coco_table, evaluate_coco

    args = _eval_parser().parse_args(argv)
    console = Console.from_args("m2det-eval", args)
    _check_artifact(args)
    if args.limit is not None and args.limit < 1:
        raise M2DetError(f"--limit must be >= 1, got {args.limit}")
    if args.batch is not None and args.batch < 1:
        raise M2DetError(f"--batch must be >= 1, got {args.batch}")
    if not args.ann.is_file():
        raise M2DetError(f"annotation file not found: {args.ann}")
    if not args.images.is_dir():
        raise M2DetError(f"image folder not found: {args.images}")
    runner, artifact = _open_runner(args, many=True)
    with runner:
        if args.batch is None:
            args.batch = runner.preferred_batch
        metrics = evaluate_coco(runner, args.ann, args.images, config_labels=runner.config.labels,
                                limit=args.limit, batch=args.batch, out_json=args.save_detections,
                                per_class=args.per_class, progress=not args.quiet)  # fmt: skip
    console.result(f"{runner.name} {artifact} ({runner.config.name}, {args.nms} NMS) on "
                   f"{args.ann}: {metrics['num_images']} images, {metrics['num_detections']} "
                   "detections")  # fmt: skip
    console.result(coco_table(metrics))
    console.write_json({
        "metrics": metrics, "artifact": str(artifact), "backend": runner.name,
        "config": runner.config.name,
        "settings": {"ann": str(args.ann), "images": str(args.images), "limit": args.limit,
                     "batch": args.batch, "device": args.device, "nms_preset": args.nms,
                     "nms": jsonable(runner.nms)},
    })  # fmt: skip
    if metrics["skipped"]:
        console.warn(f"skipped {len(metrics['skipped'])} unreadable image(s): "
                     f"{', '.join(metrics['skipped'][:5])}"
                     + (f" and {len(metrics['skipped']) - 5} more"
                        if len(metrics["skipped"]) > 5 else ""))
        return EXIT_PARTIAL
    return EXIT_OK


def eval_main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-eval``."""
    return run_cli("m2det-eval", _eval, argv)
