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
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from m2det.config import get_config
from m2det.errors import M2DetError
from m2det.trainer import DataSpec, Trainer, TrainOptions


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


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
    p = _Parser(prog="m2det-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="preset name, e.g. m2det_tiny, m2det320_vgg")
    p.add_argument("--data", help="m2det-shapes folder, or a COCO annotation json (+ --images)")
    p.add_argument("--images", help="image folder of --data ANN.json")
    p.add_argument("--val", help="validation COCO annotation json (+ --val-images)")
    p.add_argument("--val-images", help="image folder of --val")
    p.add_argument("--voc", help="Pascal VOC root (VOCdevkit) instead of --data")
    p.add_argument("--voc-sets", default="2007/trainval",
                   help="YEAR/SPLIT,... (default 2007/trainval)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, metrics.jsonl)")
    p.add_argument("--epochs", type=int, default=160)
    p.add_argument("--batch", type=int, default=32, help="global batch size")
    p.add_argument("--resume", help="continue from a last.pth training checkpoint")
    p.add_argument("--lr", type=float, default=0.004, help="peak learning rate")
    p.add_argument("--schedule", default="official",
                   help="official (released steps scaled to --epochs), cosine, or step:E1,E2,...")
    p.add_argument("--gamma", type=float, default=0.1, help="decay per step of step:... schedules")
    p.add_argument("--warmup-epochs", type=float, default=5.0)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="sgd: momentum 0.9 as released; adamw: faster from-scratch convergence")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--clip-grad", type=float, default=0.0, help="max gradient norm (0: off)")
    p.add_argument("--augment-p", type=float, default=0.6, help="zoom-out probability")
    p.add_argument("--no-photometric", action="store_true", help="no colour distortion")
    p.add_argument("--workers", type=int, default=2, help="data loader processes")
    p.add_argument("--eval-every", type=int, default=0,
                   help="epochs between COCO evaluations (0: after the last epoch only)")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N validation images")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after this many minutes with a resumable checkpoint (0: off)")
    p.add_argument("--bn-momentum", type=float,
                   help="BatchNorm momentum (default: as released, 0.01 in the MLFPN); short "
                        "runs need ~0.1 for the running statistics to catch up")
    p.add_argument("--background-prior", type=float, metavar="P",
                   help="start the classifier at P(background)=P, e.g. 0.99 (released: uniform); "
                        "much faster convergence from scratch")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="evaluate and save an exponential moving average of the weights with "
                        "this decay, e.g. 0.998 (default 0: off)")
    p.add_argument("--augment", choices=("ssd", "flip", "resize"), default="ssd",
                   help="ssd: crop/colour/zoom-out/flip as released; flip: horizontal flip only "
                        "(short runs from scratch); resize: no augmentation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--strict", action="store_true", help="missing/corrupt images are errors")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 on CUDA, bfloat16 on the CPU")
    p.add_argument("--init-backbone", help="backbone weights, e.g. vgg16_reducedfc.pth")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
            progress=not args.no_progress)
        if args.epochs < 1 or args.batch < 1:
            raise M2DetError("--epochs and --batch must be >= 1")
        if args.background_prior is not None and not 0.0 < args.background_prior < 1.0:
            raise M2DetError("--background-prior must be in (0, 1), e.g. 0.99")
        if not 0.0 <= args.ema < 1.0:
            raise M2DetError("--ema must be in [0, 1), e.g. 0.998 (0: off)")
        if args.resume is not None and not Path(args.resume).is_file():
            raise M2DetError(f"checkpoint not found: {args.resume}")
        command = ["m2det-train", *(sys.argv[1:] if argv is None else argv)]
        trainer = Trainer(get_config(args.config), data_spec(args), options, args.out,
                          resume=args.resume, init_backbone=args.init_backbone,
                          device=args.device, command=command)
        metrics = trainer.fit()
    except M2DetError as e:
        parser.error(str(e))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if metrics and trainer.rank == 0:
        print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
