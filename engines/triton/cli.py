"""``m2det-triton``: Triton model repositories from any artifact, and the bundled server.

* ``m2det-triton (--onnx F | --engine F.plan | --ckpt C.pth) --out REPO``: write a repository
  (``m2det.engines.triton.repository``; a checkpoint is exported to ONNX first);
* ``m2det-triton serve REPO``: run the Triton server bundled in ``nvidia-pytriton`` on it until
  Ctrl-C (``m2det.engines.triton.server``);
* ``m2det-triton check REPO``: validate a repository's configs (schema and meaning);
* ``m2det-triton model-env ENV``: a venv with numpy < 2 for the served models, when this
  environment has numpy 2 (``m2det.engines.triton.model_env``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from m2det.cli import add_nms_args, make_parser, nms_from_args, run_cli
from m2det.errors import M2DetError

PROG = "m2det-triton"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers a,b,c; got {text!r}") from None


def _write_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Write a Triton model repository for an M2Det artifact (see also: "
                    f"{PROG} serve REPO, {PROG} check REPO).")
    src = p.add_argument_group("artifact (one of)").add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", type=Path, help="an ONNX file from m2det-export")
    src.add_argument("--engine", type=Path, help="a TensorRT plan from m2det-build (+ its .json)")
    src.add_argument("--ckpt", type=Path, help="a checkpoint: exported to ONNX (FP32) first")
    p.add_argument("--config", help="config preset of a checkpoint that records none")
    p.add_argument("--out", type=Path, required=True, help="the repository folder to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    m = p.add_argument_group("models")
    m.add_argument("--name", default="m2det", help="model name (and prefix of the others)")
    m.add_argument("--max-batch", type=int, metavar="N",
                   help="max_batch_size (default: 8; a plan's profile max)")
    m.add_argument("--preferred", type=_int_list, metavar="N,N",
                   help="preferred batch sizes (default: none; a plan's profile opt,max)")
    m.add_argument("--queue-delay-us", type=int, default=1000, metavar="US",
                   help="how long the dynamic batcher waits to fill a batch")
    m.add_argument("--instances", type=int, default=1, metavar="N",
                   help="instances of the network model")
    m.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="where an ONNX network runs (gpu: ONNX Runtime's CUDA provider)")
    m.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime threads per instance")
    m.add_argument("--plugin-lib", type=Path, metavar="SO",
                   help="soft-NMS plugin library to ship with a plugin plan")
    add_nms_args(p)
    return p


def _serve_parser() -> argparse.ArgumentParser:
    p = make_parser(f"{PROG} serve", "Serve a repository with the Triton server bundled in "
                    "nvidia-pytriton (Python-backend models) until Ctrl-C.")
    p.add_argument("repo", type=Path, help="model repository (written by m2det-triton)")
    p.add_argument("--http-port", type=int, default=8000, metavar="P", help="0: any free port")
    p.add_argument("--grpc-port", type=int, default=8001, metavar="P", help="0: any free port")
    p.add_argument("--metrics-port", type=int, default=None, metavar="P",
                   help="Prometheus metrics port (default: metrics off)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--models", help="comma-separated models to load (default: every "
                   "Python-backend model)")
    p.add_argument("--model-env", type=Path, metavar="ENV",
                   help="the models' Python environment, a venv with numpy<2 (default: "
                        "$M2DET_TRITON_MODEL_ENV, else this Python's)")  # fmt: skip
    p.add_argument("--ready-timeout", type=float, default=120.0, metavar="S",
                   help="seconds to wait for the models")
    p.add_argument("--log", type=Path, metavar="FILE", help="keep the server's log here")
    return p


def _model_env_parser() -> argparse.ArgumentParser:
    p = make_parser(f"{PROG} model-env", "Create a Python environment for the served models: a "
                    "venv with numpy<2 that sees this environment's packages (for when this one "
                    "has numpy 2). Installing numpy needs the package index.")
    p.add_argument("env", type=Path, help="the venv folder to create")
    return p


def _check_parser() -> argparse.ArgumentParser:
    p = make_parser(f"{PROG} check", "Validate a Triton model repository written by m2det-triton"
                    " (Triton's config schema, then tensors, batching and files).")
    p.add_argument("repo", type=Path)
    return p


# ----------------------------------------------------------------------------- write
def _write(argv: Sequence[str]) -> int:
    from m2det.engines.triton.repository import RepositoryOptions, write_repository

    args = _write_parser().parse_args(argv)
    options = RepositoryOptions(name=args.name, max_batch=args.max_batch,
                                preferred=args.preferred, queue_delay_us=args.queue_delay_us,
                                instances=args.instances, device=args.device,
                                threads=args.threads, nms=nms_from_args(args),
                                plugin_lib=args.plugin_lib)  # fmt: skip
    options.check()
    artifact = args.onnx or args.engine or args.ckpt
    if not artifact.is_file():
        raise M2DetError(f"not found: {artifact}")
    if args.out.exists() and not args.force:
        raise M2DetError(f"{args.out} exists: pass --force to replace it")
    if args.config is not None and args.ckpt is None:
        raise M2DetError("--config applies to checkpoints (ONNX files and plans record theirs)")
    with tempfile.TemporaryDirectory(prefix="m2det-triton-export-") as tmp:
        if args.ckpt is not None:
            artifact = _export(args.ckpt, args.config, Path(tmp))
        models = write_repository(artifact, args.out, options, force=args.force)
    for m in models:
        print(f"  {m.name:<16} {_describe(m.config)}")
    print(f"wrote {args.out} ({len(models)} models); serve it with: {PROG} serve {args.out}")
    return 0


def _export(ckpt: Path, config: str | None, out: Path) -> Path:
    from m2det.export.pipeline import ExportOptions, export_model

    result = export_model(ExportOptions(checkpoint=ckpt, out=out, config=config, quiet=True),
                          log=print)  # fmt: skip
    return result.path("fp32")


def _describe(config: dict[str, Any]) -> str:
    from m2det.engines.triton import model_config as mc

    platform = mc.platform_of(config)
    role = mc.parameters_of(config)["role"]
    inputs = ", ".join(str(t["name"]) for t in config["input"])
    return f"{platform:<16} {role:<8} in: {inputs}, max batch {config['max_batch_size']}"


# ----------------------------------------------------------------------------- serve
def _serve(argv: Sequence[str]) -> int:
    from m2det.engines.triton import model_config as mc
    from m2det.engines.triton.repository import check_repository
    from m2det.engines.triton.server import BundledServer

    args = _serve_parser().parse_args(argv)
    for what in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(args, what)
        if port is not None and not 0 <= port < 65536:
            raise M2DetError(f"--{what.replace('_', '-')} must be in 0..65535, got {port}")
    if args.ready_timeout <= 0:
        raise M2DetError(f"--ready-timeout must be > 0, got {args.ready_timeout}")
    summaries = {s.name: s for s in check_repository(args.repo)}
    python = [n for n, s in summaries.items() if s.platform == mc.PYTHON]
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in summaries]
        if unknown:
            raise M2DetError(f"{args.repo} has no model {unknown[0]!r} (has "
                             f"{', '.join(summaries)})")
        native = [m for m in models if m not in python]
        if native:
            raise M2DetError(f"model {native[0]!r} is {summaries[native[0]].platform}: the bundled "
                             "server has the Python backend only")  # fmt: skip
    else:
        models = python
    if not models:
        raise M2DetError(f"{args.repo} has no Python-backend model; the bundled server runs only "
                         "those: serve it with a Triton that has the onnxruntime/tensorrt "
                         "backends")  # fmt: skip
    skipped = sorted(set(summaries) - set(models))
    needs_ort = any(_uses_onnxruntime(args.repo / m) for m in models)
    server = BundledServer(args.repo, models, http_port=args.http_port, grpc_port=args.grpc_port,
                           metrics_port=args.metrics_port, host=args.host,
                           model_env=args.model_env, ready_timeout=args.ready_timeout,
                           log=args.log, needs_onnxruntime=needs_ort)  # fmt: skip
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started ignoring it (&)
    try:
        server.start()
        print(f"{PROG}: serving {', '.join(models)} from {args.repo} (ready in "
              f"{server.ready_seconds:.1f} s): HTTP {server.http_url}, gRPC {server.grpc_url}"
              + (f"; not loaded (need other backends): {', '.join(skipped)}" if skipped else "")
              + "; Ctrl-C stops", flush=True)  # fmt: skip
        code = server.wait()
        raise M2DetError(f"tritonserver exited with code {code}: {server.errors()}")
    finally:
        report = server.stop()
        leftovers = [p for p in report.removed if not p.endswith("__pycache__")]
        if leftovers:
            print(f"{PROG}: removed what the server left behind: {', '.join(leftovers)}",
                  file=sys.stderr)  # fmt: skip


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _uses_onnxruntime(folder: Path) -> bool:
    from m2det.engines.triton import model_config as mc

    cfg = mc.to_dict(mc.parse_text((folder / "config.pbtxt").read_text(), str(folder)))
    return (mc.parameters_of(cfg).get("network") or {}).get("kind") == "onnxruntime"


# ----------------------------------------------------------------------------- check
def _check(argv: Sequence[str]) -> int:
    from m2det.engines.triton.repository import check_repository

    args = _check_parser().parse_args(argv)
    for s in check_repository(args.repo):
        print(f"  {s.name:<16} {s.platform:<16} {s.role:<8} max batch {s.max_batch}")
    print(f"{args.repo}: every config is valid")
    return 0


def _model_env(argv: Sequence[str]) -> int:
    from m2det.engines.triton.model_env import create_model_env

    args = _model_env_parser().parse_args(argv)
    env = create_model_env(args.env)
    print(f"created {args.env}: Python {env.version}, numpy {env.numpy}; serve with "
          f"--model-env {args.env} (or M2DET_TRITON_MODEL_ENV={args.env})")
    return 0


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"serve": _serve, "check": _check, "model-env": _model_env}
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    return _write(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-triton``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
