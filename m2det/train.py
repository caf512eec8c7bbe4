"""``m2det-train``: train an M2Det preset on an ``m2det-shapes`` folder, a COCO annotation file or
Pascal VOC (``m2det.trainer.Trainer``; DDP via ``torchrun -m m2det.train``).

Data sources: ``--data DIR`` (the ``m2det-shapes`` layout: ``DIR/annotations/{train,val}.json``,
``DIR/{train,val}/``), ``--data ANN.json --images DIR`` (COCO format; validation with ``--val
ANN.json --val-images DIR``), or ``--voc ROOT`` (``--voc-sets 2007/trainval,2012/trainval``,
validation on VOC is not wired to COCO evaluation).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from m2det.checkpoint import read_checkpoint
from m2det.cli import Console, make_parser, parse_device, positive, run_cli
from m2det.config import get_config
from m2det.errors import M2DetError
from m2det.schedule import parse_schedule
from m2det.trainer import DataSpec, Trainer, TrainOptions

PROG = "m2det-train"


def data_spec(args: argparse.Namespace) -> DataSpec:
    """Resolve --data/--images/--val/--val-images/--voc into a DataSpec (files must exist)."""
    spec = DataSpec(strict=args.strict)
    if args.voc is not None:
        if args.data is not None:
            raise M2DetError("pass either --data or --voc, not both")
        sets = []
        for item in args.voc_sets.split(","):
            year, _, split = item.partition("/")
            if not split:
                raise M2DetError(f"bad --voc-sets entry {item!r}: expected YEAR/SPLIT")
            sets.append((year, split))
        spec.voc_root, spec.voc_sets = args.voc, tuple(sets)
    elif args.data is None:
        raise M2DetError("no training data: pass --data DIR_OR_ANN (or --voc ROOT)")
    elif Path(args.data).is_dir():  # m2det-shapes layout
        root = Path(args.data)
        spec.train_ann = str(root / "annotations/train.json")
        spec.train_images = str(root / "train")
        if (root / "annotations/val.json").is_file() and args.val is None:
            spec.val_ann, spec.val_images = str(root / "annotations/val.json"), str(root / "val")
    else:
        if args.images is None:
            raise M2DetError("--data ANN.json needs --images DIR")
        spec.train_ann, spec.train_images = args.data, args.images
    if args.val is not None:
        if args.val_images is None:
            raise M2DetError("--val ANN.json needs --val-images DIR")
        spec.val_ann, spec.val_images = args.val, args.val_images
    for label, path, kind in (("annotation file", spec.train_ann, "file"),
                              ("image folder", spec.train_images, "dir"),
                              ("validation annotation file", spec.val_ann, "file"),
                              ("validation image folder", spec.val_images, "dir"),
                              ("VOC root", spec.voc_root, "dir")):
        if path is not None and not (Path(path).is_file() if kind == "file" else
                                     Path(path).is_dir()):
            raise M2DetError(f"{label} not found: {path}")
    return spec


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Train an M2Det preset on an m2det-shapes folder, a COCO annotation "
                    "file or Pascal VOC. Writes OUT/last.pth (resumable), OUT/final.pth and "
                    "OUT/metrics.jsonl. Ctrl-C stops at the next step with a resumable "
                    "OUT/last.pth. For DDP, launch with torchrun -m m2det.train.")
    p.add_argument("--config", required=True,
                   help="Preset name, e.g. m2det_tiny or m2det320_vgg.")
    p.add_argument("--data",
                   help="An m2det-shapes folder, or a COCO annotation JSON (with --images).")
    p.add_argument("--images", help="Image folder of --data ANN.json.")
    p.add_argument("--val", help="Validation COCO annotation JSON (with --val-images).")
    p.add_argument("--val-images", help="Image folder of --val.")
    p.add_argument("--voc", help="Pascal VOC root (VOCdevkit), instead of --data.")
    p.add_argument("--voc-sets", default="2007/trainval", help="VOC sets as YEAR/SPLIT,...")
    p.add_argument("--out", required=True,
                   help="Output folder for checkpoints and metrics.jsonl.")
    p.add_argument("--epochs", type=int, default=160, help="Epochs to train.")
    p.add_argument("--batch", type=int, default=32, help="Global batch size.")
    p.add_argument("--resume", help="Continue from a last.pth training checkpoint.")
    p.add_argument("--lr", type=float, default=0.004, help="Peak learning rate.")
    p.add_argument("--schedule", default="official",
                   help="Learning-rate schedule: official (the released steps scaled to "
                        "--epochs), cosine, or step:E1,E2,...")
    p.add_argument("--gamma", type=float, default=0.1,
                   help="Decay factor at each epoch of a step:... schedule.")
    p.add_argument("--warmup-epochs", type=float, default=5.0, help="Linear warm-up length.")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="sgd: momentum 0.9 as released; adamw: faster convergence from scratch.")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="Weight decay.")
    p.add_argument("--clip-grad", type=float, default=0.0,
                   help="Maximum gradient norm (0: no clipping).")
    p.add_argument("--augment-p", type=float, default=0.6, help="Zoom-out probability.")
    p.add_argument("--no-photometric", action="store_true", help="No colour distortion.")
    p.add_argument("--workers", type=int, default=2, help="Data loader processes.")
    p.add_argument("--eval-every", type=int, default=0,
                   help="Epochs between COCO evaluations (0: after the last epoch only).")
    p.add_argument("--eval-limit", type=int,
                   help="Evaluate on the first N validation images only.")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="Steps between checkpoints (0: at the end of each epoch only).")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="Stop after this many minutes with a resumable checkpoint (0: no limit).")
    p.add_argument("--bn-momentum", type=float,
                   help="BatchNorm momentum (default: as released, 0.01 in the MLFPN); short "
                        "runs need about 0.1 for the running statistics to catch up.")
    p.add_argument("--background-prior", type=float, metavar="P",
                   help="Start the classifier at P(background) = P, e.g. 0.99 (released: "
                        "uniform); much faster convergence from scratch.")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="Evaluate and save an exponential moving average of the weights with "
                        "this decay, e.g. 0.998 (0: off).")
    p.add_argument("--augment", choices=("ssd", "flip", "resize"), default="ssd",
                   help="ssd: crop, colour, zoom-out and flip as released; flip: horizontal "
                        "flips only (short runs from scratch); resize: no augmentation.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the data order, augmentation "
                   "and initialisation.")
    p.add_argument("--threads", type=int, help="Torch CPU threads.")
    p.add_argument("--strict", action="store_true",
                   help="Treat missing or corrupt images as errors.")
    p.add_argument("--amp", action="store_true",
                   help="Mixed precision: float16 on CUDA, bfloat16 on the CPU.")
    p.add_argument("--init-backbone", help="Backbone weights, e.g. vgg16_reducedfc.pth.")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when there is a GPU).")
    return p


def _check(args: argparse.Namespace) -> None:
    """Every argument, before any work."""
    get_config(args.config)
    if args.epochs < 1 or args.batch < 1:
        raise M2DetError("--epochs and --batch must be >= 1")
    for name in ("lr", "gamma", "warmup_epochs", "weight_decay", "clip_grad", "max_minutes"):
        positive(f"--{name.replace('_', '-')}", getattr(args, name),
                 allow_zero=name not in ("lr", "gamma"))
    for name in ("workers", "eval_every", "checkpoint_every"):
        positive(f"--{name.replace('_', '-')}", getattr(args, name), allow_zero=True)
    positive("--eval-limit", args.eval_limit)
    positive("--threads", args.threads)
    if not 0.0 <= args.augment_p <= 1.0:
        raise M2DetError(f"--augment-p must be in [0, 1], got {args.augment_p}")
    if args.background_prior is not None and not 0.0 < args.background_prior < 1.0:
        raise M2DetError("--background-prior must be in (0, 1), e.g. 0.99")
    if not 0.0 <= args.ema < 1.0:
        raise M2DetError("--ema must be in [0, 1), e.g. 0.998 (0: off)")
    parse_schedule(args.schedule, args.lr, args.epochs, args.warmup_epochs, args.gamma)
    if args.device is not None:
        parse_device(args.device)
    if args.resume is not None:
        read_checkpoint(args.resume)  # missing, empty, truncated, foreign: one line now
    if args.init_backbone is not None and not Path(args.init_backbone).is_file():
        raise M2DetError(f"backbone weights not found: {args.init_backbone}")


def _train(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    console = Console.from_args(PROG, args)
    _check(args)
    spec = data_spec(args)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        options = TrainOptions(
            epochs=args.epochs, batch=args.batch, schedule=args.schedule, lr=args.lr,
            warmup_epochs=args.warmup_epochs, gamma=args.gamma, clip_grad=args.clip_grad,
            optimizer=args.optimizer, weight_decay=args.weight_decay,
            amp=args.amp, workers=args.workers, seed=args.seed, augment_p=args.augment_p,
            photometric=not args.no_photometric, eval_every=args.eval_every,
            eval_limit=args.eval_limit, checkpoint_every=args.checkpoint_every,
            max_minutes=args.max_minutes, augment=args.augment, bn_momentum=args.bn_momentum,
            background_prior=args.background_prior, ema=args.ema,
            progress=not args.quiet)
        command = [PROG, *(sys.argv[1:] if argv is None else argv)]
        trainer = Trainer(get_config(args.config), spec, options, args.out,
                          resume=args.resume, init_backbone=args.init_backbone,
                          device=args.device, command=command)
        if trainer.metrics_dropped:
            console.note(f"metrics.jsonl brought back to step {trainer.step}: removed "
                         f"{trainer.metrics_dropped} record(s) logged after the checkpoint")
        metrics = trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.rank == 0:
        out = Path(args.out)
        final = out / "final.pth"
        result = {"step": trainer.step, "last": str(out / "last.pth"),
                  "final": str(final) if final.is_file() else None,
                  "metrics": str(out / "metrics.jsonl"), "eval": metrics}
        console.result(json.dumps(metrics) if metrics else
                       f"trained to step {trainer.step}: {result['final'] or result['last']}")
        console.write_json(result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``m2det-train``."""
    return run_cli(PROG, _train, argv)


if __name__ == "__main__":
    sys.exit(main())
