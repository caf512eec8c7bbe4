"""INT8 recipes for OpenVINO: COCO AP of the bundled model per file precision and INT8 recipe in
ONNX Runtime and in OpenVINO (f32 and bf16 inference), and with ``--speed`` the latency of the same
recipes at M2Det-320 (seeded random weights): the evidence behind docs/openvino.md's
choices (which INT8 file to give OpenVINO, whether to quantize the detection head, whether NNCF
helps at equal AP).

Files, all from the FP32 raw graph of one export and the same calibration images:

- ``fp32``, ``fp16``: the export pipeline's files;
- ``int8 ort``: ONNX Runtime's quantizer, head convolutions FP32 (``--qdq-placement
  onnxruntime``, what ``m2det-bench`` uses on a CPU); ``int8 ort+head``: the same with the 2 x S
  head convolutions (loc/conf) quantized too (their outputs then pass through 8 bits);
- ``int8 modelopt``: ModelOpt's TensorRT placement (Q/DQ on every conv input, head included);
  ``int8 modelopt-head``: the same with the head convolutions left FP32;
- ``int8 nncf``, ``int8 nncf-head``: NNCF's post-training quantization of the FP32 file read by
  OpenVINO (head quantized / head FP32), where ``nncf`` is installed; OpenVINO only.

    python -m m2det.benchmarks.openvino_int8 [--ckpt CKPT] [--val 200] [--calib-count 64]
    python -m m2det.benchmarks.openvino_int8 --speed --calib-count 16 [--images DIR] \
        --out benchmarks/results/openvino_int8_speed.json

Speed (``--speed``): every file of the list made again from ``--speed-config``'s random
checkpoint (the ``m2det-bench --sweep`` weights), then timed at batch 1 and ``--threads``, network
+ NMS, in interleaved rounds over the same images; ratios against ONNX Runtime running the ``int8
ort`` file. Calibrate with few images there (``--calib-count 16``): ONNX Runtime's calibrator
holds every activation of every image, and at M2Det-320 64 images took more than 18 GB.
Results: ``benchmarks/results/openvino_int8.json`` and Markdown tables on stdout.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m2det.benchmarks.environment import environment
from m2det.cli import make_parser, run_cli
from m2det.coco_eval import evaluate_coco
from m2det.errors import M2DetError
from m2det.io import atomic_write_json

PROG = "openvino_int8"
RESULTS = Path(__file__).parent / "results" / "openvino_int8.json"
#: The detection head's convolutions in the exported graph (``/model/head/loc.<i>/Conv``, conf).
HEAD_CONV = r"^/model/head/(loc|conf)\.\d+/Conv$"


def build_parser() -> Any:
    p = make_parser(PROG, __doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, help="checkpoint (default: the bundled m2det_tiny model)")
    p.add_argument("--val", type=int, default=200, help="val images (m2det-shapes, seed 0)")
    p.add_argument("--calib-count", type=int, default=64, help="calibration images (train split)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of both runtimes")
    p.add_argument("--speed", action="store_true",
                   help="time the recipes at --speed-config instead of measuring AP")
    p.add_argument("--speed-config", default="m2det320_vgg", help="config timed (random weights)")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds over the image pool")
    p.add_argument("--pool", type=int, default=8, help="images timed per round")
    p.add_argument("--images", type=Path,
                   help="timing images (default: synthetic shapes images)")
    p.add_argument("--work", type=Path, help="keep the files here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    return p


def _copy_metadata(model: Any, reference: Path, precision: str) -> None:
    """The m2det.* metadata of ``reference`` on ``model`` with ``precision``."""
    import onnx

    from m2det.contract import META_PRECISION, META_PREFIX

    props = {p.key: p.value for p in onnx.load(reference, load_external_data=False).metadata_props}
    props[META_PREFIX + META_PRECISION] = precision
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)


def _ort_with_head(raw: str, out: str, calibration: np.ndarray) -> None:
    """ONNX Runtime's QDQ quantization as ``--qdq-placement onnxruntime`` does it, but with the
    head convolutions quantized (their flatten/concat and the post-processing stay FP32)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from m2det.export.onnx_export import POSTPROCESS_PATTERN
    from m2det.export.precision import _every_node, _Reader

    graph = onnx.load(raw, load_external_data=False).graph
    keep_float = [n.name for n in graph.node if re.match(POSTPROCESS_PATTERN, n.name)
                  or (n.name.startswith("/model/head/") and not re.match(HEAD_CONV, n.name))]
    quantize_static(raw, out, _Reader(calibration), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=_every_node(graph), nodes_to_exclude=keep_float,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Entropy)


def _modelopt_head_fp32(raw: Path, out: Path, calibration: np.ndarray) -> None:
    """ModelOpt's TensorRT placement with the head convolutions excluded."""
    from modelopt.onnx.quantization import quantize

    from m2det.contract import INPUT
    from m2det.export.onnx_export import POSTPROCESS_PATTERN
    from m2det.export.precision import _modelopt_quiet

    with _modelopt_quiet():
        quantize(str(raw), quantize_mode="int8", calibration_data={INPUT: calibration},
                 calibration_method="entropy", calibration_eps=["cpu"],
                 nodes_to_exclude=[POSTPROCESS_PATTERN, HEAD_CONV], high_precision_dtype="fp32",
                 output_path=str(out), log_level="WARNING")  # fmt: skip


def _nncf(raw: Path, out: Path, calibration: np.ndarray, head: bool) -> None:
    """NNCF's default post-training INT8 quantization of the FP32 file as OpenVINO reads it
    (post-processing ignored; ``head`` False: the head convolutions too), saved as OpenVINO IR."""
    from m2det.engines.openvino_runner import import_openvino, no_telemetry

    ov = import_openvino()
    with no_telemetry():
        import nncf
    ignored = [r".*/postprocess/.*"] + ([] if head else [r".*/model/head/(loc|conf)\.\d+/Conv.*"])
    model = ov.Core().read_model(str(raw))
    quantized = nncf.quantize(model, nncf.Dataset([x[None] for x in calibration]),
                              subset_size=len(calibration),
                              ignored_scope=nncf.IgnoredScope(patterns=ignored, validate=False))
    quantized.set_rt_info("int8", ["framework", "m2det.precision"])
    ov.save_model(quantized, str(out))


def make_files(ckpt: Path, work: Path, data: dict[str, Path],
               calib_count: int) -> dict[str, Path]:
    """The ONNX files of the module docstring (NNCF's come from :func:`add_nncf_files`)."""
    import onnx

    from m2det.export.calibration import load_calibration_images
    from m2det.export.pipeline import ExportOptions, export_model
    from m2det.export.precision import _unpatched_ort

    common = {"checkpoint": ckpt, "int8": True, "calib": data["train_images"],
              "calib_count": calib_count, "quiet": True}  # fmt: skip
    ort = export_model(ExportOptions(out=work / "ort", fp16=True, qdq_placement="onnxruntime",
                                     **common), log=None)  # fmt: skip
    mo = export_model(ExportOptions(out=work / "modelopt", qdq_placement="tensorrt", **common),
                      log=None)  # fmt: skip
    raw = ort.path("fp32")
    files = {"fp32": raw, "fp16": ort.path("fp16"), "int8 ort": ort.path("int8"),
             "int8 modelopt": mo.path("int8")}  # fmt: skip
    size = int(onnx.load(raw, load_external_data=False).graph.input[0].type.tensor_type.shape
               .dim[2].dim_value)  # fmt: skip
    calibration = load_calibration_images(data["train_images"], size, calib_count, seed=0)
    head = work / "int8_ort_head.onnx"
    _unpatched_ort(_ort_with_head, str(raw), str(head), calibration)
    files["int8 ort+head"] = head
    files["int8 modelopt-head"] = work / "int8_modelopt_head_fp32.onnx"
    _modelopt_head_fp32(raw, files["int8 modelopt-head"], calibration)
    for key in ("int8 ort+head", "int8 modelopt-head"):
        model = onnx.load(files[key])
        _copy_metadata(model, raw, "int8")
        onnx.save(model, files[key])
    return files


def add_nncf_files(files: dict[str, Path], data: dict[str, Path], calib_count: int) -> None:
    """NNCF's two files (head quantized / FP32) of ``files["fp32"]``, where nncf is installed."""
    import importlib.util

    import onnx

    from m2det.export.calibration import load_calibration_images

    if importlib.util.find_spec("nncf") is None:
        return
    raw = files["fp32"]
    size = int(onnx.load(raw, load_external_data=False).graph.input[0].type.tensor_type.shape
               .dim[2].dim_value)  # fmt: skip
    calibration = load_calibration_images(data["train_images"], size, calib_count, seed=0)
    for key, with_head in (("int8 nncf", True), ("int8 nncf-head", False)):
        files[key] = raw.parent.parent / f"{key.replace(' ', '_')}.xml"
        _nncf(raw, files[key], calibration, with_head)


def evaluate(files: dict[str, Path], data: dict[str, Path], threads: int) -> list[dict[str, Any]]:
    """AP of every file in ONNX Runtime (ONNX files) and OpenVINO f32 / bf16."""
    from m2det.engines.onnx_runner import OnnxRunner
    from m2det.engines.openvino_runner import OpenVinoRunner
    from m2det.nms import get_nms_params

    nms = get_nms_params("official")
    rows = []
    for name, path in files.items():
        runners: list[Any] = []
        if path.suffix == ".onnx":
            runners.append(OnnxRunner(path, nms, threads=threads))
        runners += [OpenVinoRunner(path, nms, threads=threads, ov_precision=p)
                    for p in ("f32", "bf16")]  # fmt: skip
        for runner in runners:
            with runner:
                m = evaluate_coco(runner, data["val_json"], data["val_images"],
                                  config_labels=runner.config.labels, batch=1, progress=False)
            rows.append({"file": name, "runtime": runner.name, "AP": m["AP"], "AP50": m["AP50"],
                         "AP75": m["AP75"], "num_detections": m["num_detections"]})
            print(f"[{PROG}] {name:20s} {runner.name:28s} AP {m['AP']:.4f}", flush=True)
    return rows


def _runners(files: dict[str, Path], threads: int) -> dict[str, Any]:
    """(file, runtime) label -> runner, for the speed rows (FP16 left out)."""
    from m2det.engines.onnx_runner import OnnxRunner
    from m2det.engines.openvino_runner import OpenVinoRunner
    from m2det.nms import get_nms_params

    nms = get_nms_params("official")
    out: dict[str, Any] = {}
    for name, path in files.items():
        if name == "fp16":
            continue
        if path.suffix == ".onnx":
            out[f"{name} | onnxruntime"] = OnnxRunner(path, nms, threads=threads)
        for p in ("f32", "auto"):
            out[f"{name} | openvino {p}"] = OpenVinoRunner(path, nms, threads=threads,
                                                           ov_precision=p)  # fmt: skip
    return out


def speed(files: dict[str, Path], images: list[np.ndarray], threads: int,
          rounds: int) -> list[dict[str, Any]]:
    """p50 ms of network + NMS per image for every (file, runtime), interleaved: each round runs
    every runner over every image, so load changes hit all of them alike."""
    import statistics

    from m2det.engines.base import now_ms
    from m2det.preprocess import preprocess

    runners = _runners(files, threads)
    size = next(iter(runners.values())).input_size
    batches = [preprocess([image], size) for image in images]
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for runner in runners.values():
        runner.__enter__()
        runner(batches[0])  # warm-up
    for _ in range(rounds):
        for key, runner in runners.items():
            for x in batches:
                t0 = now_ms()
                runner(x)
                samples[key].append(now_ms() - t0)
    rows = []
    for key, runner in runners.items():
        runner.__exit__(None, None, None)
        rows.append({"file": key.split(" | ")[0], "runtime": runner.name,
                     "p50_ms": round(statistics.median(samples[key]), 2),
                     "samples": len(samples[key])})  # fmt: skip
    reference = next(r["p50_ms"] for r in rows
                     if r["file"] == "int8 ort" and r["runtime"].startswith("onnxruntime"))
    for r in rows:
        r["speedup_vs_onnxruntime_int8"] = round(reference / r["p50_ms"], 3)
        print(f"[{PROG}] {r['file']:20s} {r['runtime']:28s} {r['p50_ms']:8.1f} ms "
              f"x{r['speedup_vs_onnxruntime_int8']:.2f}", flush=True)
    return rows


def speed_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: p50 latency and the ratio to ONNX Runtime on the ``int8 ort`` file per row."""
    lines = ["| file | runtime | p50 ms (network + NMS) | x vs ONNX Runtime int8 ort |",
             "|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['runtime']} | {r['p50_ms']:.0f} | "
              f"{r['speedup_vs_onnxruntime_int8']:.2f} |" for r in rows]
    return "\n".join(lines)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per file, AP (and change from ONNX Runtime FP32, in AP points) per
    runtime."""
    base = next(r["AP"] for r in rows if r["file"] == "fp32" and r["runtime"].startswith("onnx"))
    runtimes = ["onnxruntime", "openvino f32", "openvino bf16"]

    def cell(file: str, runtime: str) -> str:
        for r in rows:
            kind = ("onnxruntime" if r["runtime"].startswith("onnxruntime") else
                    "openvino bf16" if "bf16" in r["runtime"] else "openvino f32")  # fmt: skip
            if r["file"] == file and kind == runtime:
                return f"{100 * r['AP']:.2f} ({100 * (r['AP'] - base):+.2f})"
        return "-"

    lines = ["| file | " + " | ".join(runtimes) + " |", "|---|" + "---|" * len(runtimes)]
    for file in dict.fromkeys(r["file"] for r in rows):
        lines.append(f"| {file} | " + " | ".join(cell(file, rt) for rt in runtimes) + " |")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None) -> int:
    from m2det.benchmarks.image_pool import folder_pool, synthetic_pool
    from m2det.benchmarks.variants import random_checkpoint
    from m2det.config import get_config
    from m2det.engines.registry import default_checkpoint
    from m2det.shapes import generate

    args = build_parser().parse_args(argv)
    if min(args.val, args.calib_count, args.threads, args.rounds, args.pool) < 1:
        raise M2DetError("--val, --calib-count, --threads, --rounds and --pool must be >= 1")
    get_config(args.speed_config)  # an unknown name fails before any work
    if args.images is not None and not args.images.is_dir():
        raise M2DetError(f"image folder not found: {args.images}")
    ckpt = args.ckpt or default_checkpoint()
    command = [f"python -m m2det.benchmarks.{PROG}", *(sys.argv[1:] if argv is None else argv)]
    env = environment(command, "cpu", args.threads)
    with tempfile.TemporaryDirectory(prefix="m2det-ov-int8-") as tmp:
        work = args.work or Path(tmp)
        data = generate(work / "shapes", train=args.calib_count, val=args.val, seed=0, size=160)
        if args.speed:
            ckpt = random_checkpoint(args.speed_config, work / f"{args.speed_config}.pth")
        files = make_files(ckpt, work / "files", data, args.calib_count)
        add_nncf_files(files, data, args.calib_count)
        if args.speed:
            images = (folder_pool(args.images, args.pool) if args.images is not None
                      else synthetic_pool(args.pool))  # fmt: skip
            rows = speed(files, images, args.threads, args.rounds)
            text = speed_table(rows)
        else:
            rows = evaluate(files, data, args.threads)
            text = table(rows)
    results = {**env, "checkpoint": str(ckpt), "calib_images": args.calib_count,
               "speed_config": args.speed_config if args.speed else None,
               "nms": "official", "part": "speed" if args.speed else "accuracy",
               "val_images": None if args.speed else args.val, "rows": rows,
               "table": text}  # fmt: skip
    atomic_write_json(args.out, results)
    print(text)
    print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
