"""Training: ``Trainer`` (SGD or AdamW + warm-up + step/cosine decay, AMP -- float16 on CUDA,
bfloat16 on the CPU --, DDP, exact resume, periodic COCO evaluation) and the ``m2det-train`` CLI.

Reproducibility: every sample's augmentation is seeded by ``(seed, epoch, index)`` and every
epoch's order by ``(seed, epoch)``, so the data a step sees does not depend on the number of
loader workers, on the rank layout, or on where a run was interrupted. A resumed run skips the
batches its checkpoint already consumed and continues bit-for-bit (CPU, same thread count).

Data sources: ``--data DIR`` (the ``m2det-shapes`` layout: ``DIR/annotations/{train,val}.json``,
``DIR/{train,val}/``), ``--data ANN.json --images DIR`` (COCO format; validation with ``--val
ANN.json --val-images DIR``), or ``--voc ROOT`` (``--voc-sets 2007/trainval,2012/trainval``,
validation on VOC is not wired to COCO evaluation).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from m2det.augment import EvalTransform, TrainTransform
from m2det.checkpoint import FORMAT, check_and_load, read_checkpoint
from m2det.config import M2DetConfig, get_config
from m2det.data import CocoDetection, Sample, VOCDetection, detection_collate
from m2det.detections import Detections
from m2det.errors import M2DetError
from m2det.io import atomic_torch_save
from m2det.loss import MultiBoxLoss
from m2det.model import M2Det, M2DetInference, build_model
from m2det.priors import make_priors

#: The released schedule (configs/*.py): lr 0.004 -> x0.5 at epoch 90, x0.1 at 110, x0.01 at 130,
#: x0.001 at 150 (160 epochs), after a 5-epoch linear warm-up from 1e-6.
OFFICIAL_STEPS = (90, 110, 130, 150)
OFFICIAL_FACTORS = (0.5, 0.1, 0.01, 0.001)


# ------------------------------------------------------------------------------------------
# Learning-rate schedule


@dataclass(frozen=True)
class Schedule:
    """Learning rate as a pure function of the (fractional) epoch.

    kind "step": ``lr * factors[i]`` once ``epoch >= steps[i]``; "cosine": from ``lr`` down to
    ``lr * final_factor`` over the epochs after the warm-up. Both start with a linear warm-up
    from ``warmup_lr`` over ``warmup_epochs`` (per iteration, as released).
    """

    kind: str = "step"
    lr: float = 0.004
    epochs: int = 160
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-6
    steps: tuple[float, ...] = OFFICIAL_STEPS
    factors: tuple[float, ...] = OFFICIAL_FACTORS
    final_factor: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in ("step", "cosine"):
            raise M2DetError(f"unknown schedule {self.kind!r} (step, cosine)")
        if self.lr <= 0 or self.epochs < 1 or self.warmup_epochs < 0:
            raise M2DetError("need lr > 0, epochs >= 1 and warmup_epochs >= 0")
        if len(self.steps) != len(self.factors) or list(self.steps) != sorted(self.steps):
            raise M2DetError("schedule steps must be ascending, one factor per step")

    def __call__(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_lr + (self.lr - self.warmup_lr) * epoch / self.warmup_epochs
        if self.kind == "step":
            passed = sum(epoch >= s for s in self.steps)
            return self.lr * (self.factors[passed - 1] if passed else 1.0)
        span = max(self.epochs - self.warmup_epochs, 1e-9)
        t = min(max((epoch - self.warmup_epochs) / span, 0.0), 1.0)
        low = self.lr * self.final_factor
        return low + (self.lr - low) * 0.5 * (1.0 + math.cos(math.pi * t))


def parse_schedule(spec: str, lr: float, epochs: int, warmup_epochs: float,
                   gamma: float = 0.1) -> Schedule:
    """``official`` (released steps scaled to ``epochs``/160), ``cosine``, or
    ``step:E1,E2,...`` (x``gamma`` at each epoch)."""
    if spec == "official":
        scale = epochs / 160.0
        return Schedule("step", lr, epochs, warmup_epochs,
                        steps=tuple(s * scale for s in OFFICIAL_STEPS), factors=OFFICIAL_FACTORS)
    if spec == "cosine":
        return Schedule("cosine", lr, epochs, warmup_epochs, steps=(), factors=())
    if spec.startswith("step:"):
        try:
            steps = tuple(float(s) for s in spec[5:].split(",") if s)
        except ValueError:
            raise M2DetError(f"bad schedule {spec!r}: expected step:E1,E2,...") from None
        return Schedule("step", lr, epochs, warmup_epochs, steps=steps,
                        factors=tuple(gamma ** (i + 1) for i in range(len(steps))))
    raise M2DetError(f"unknown schedule {spec!r} (official, cosine, step:E1,E2,...)")


# ------------------------------------------------------------------------------------------
# Deterministic data order and augmentation


class SeededAugmentation(Dataset):
    """Wraps a detection dataset (built without a transform): item ``(epoch, index)`` is sample
    ``index`` augmented by ``transform`` reseeded with ``(seed, epoch, index)`` -> (image
    [3,S,S] float32, targets [n,5])."""

    def __init__(self, dataset: Dataset, transform: TrainTransform | EvalTransform,
                 seed: int) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        epoch, index = key
        sample: Sample = self.dataset[index]
        if isinstance(self.transform, TrainTransform):
            self.transform.reseed(np.random.SeedSequence([self.seed, epoch, index]))
        return self.transform(sample)


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` for one rank: each epoch is a permutation seeded by
    ``(seed, epoch)``, cut into global batches of ``batch * world`` (the tail is dropped); rank r
    takes the r-th slice of each. ``set_epoch(e, skip)`` starts epoch e after ``skip`` batches."""

    def __init__(self, size: int, batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.batch, self.seed, self.rank, self.world = size, batch, seed, rank, world
        self.epoch, self.skip = 0, 0
        if size < batch * world:
            raise M2DetError(f"the dataset has {size} usable images, fewer than one batch "
                             f"({batch * world})")

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch * self.world)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.skip

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        step = self.batch * self.world
        for k in range(self.skip, self.batches_per_epoch):
            start = k * step + self.rank * self.batch
            yield [(self.epoch, i) for i in order[start:start + self.batch]]


# ------------------------------------------------------------------------------------------
# RNG state as plain types (torch.load(weights_only=True) reads them)


def rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------------------------
# Trainer


@dataclass
class TrainOptions:
    """Everything about a run except the model config and the data (plain types only)."""

    epochs: int = 160
    batch: int = 32  # global batch (split across DDP ranks)
    schedule: str = "official"
    lr: float = 0.004
    warmup_epochs: float = 5.0
    gamma: float = 0.1
    optimizer: str = "sgd"  # "sgd" (released) or "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    amp: bool = False
    workers: int = 0
    seed: int = 0
    augment: str = "ssd"  # "ssd": crop, colour, zoom-out, flip; "flip": flip only; "resize": none
    augment_p: float = 0.6  # zoom-out probability of TrainTransform
    photometric: bool = True
    eval_every: int = 0  # epochs between COCO evaluations (0: only after the last epoch)
    eval_limit: int | None = None
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: per epoch only)
    log_every: int = 10
    max_minutes: float = 0.0  # stop (and save a resumable checkpoint) after this long; 0 = off
    channels_last: bool = True  # NHWC activations: faster convolutions on CPU
    bn_momentum: float | None = None  # override BatchNorm momentum (released: 0.01 in BasicConv)
    background_prior: float | None = None  # initial P(background) of the conf head (released: none)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off)
    progress: bool = True
    nms: dict[str, Any] = field(default_factory=lambda: {"score_threshold": 0.05,
                                                        "max_detections": 100})


@dataclass
class DataSpec:
    """Where the training (and optional validation) data is."""

    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    voc_root: str | None = None
    voc_sets: tuple[tuple[str, str], ...] = (("2007", "trainval"),)
    strict: bool = False


def _distributed() -> tuple[int, int]:
    """(rank, world) of a torchrun launch, initialising the process group; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def init_backbone_from_scratch(backbone: nn.Module) -> None:
    """He-normal init for a backbone trained without pretrained weights.

    ``build_model`` leaves backbone convs at PyTorch's default, which is fine under pretrained
    weights but shrinks the activation variance ~6x per layer: after VGG16's 15 BN-free convs the
    signal reaching FFMv1 is below BatchNorm's epsilon and the trunk barely learns."""
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def make_optimizer(model: nn.Module, options: TrainOptions, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (as released), or AdamW (scale-invariant steps: converges much faster
    when training from scratch with few iterations).

    Both use PyTorch's fused kernels (one kernel over all parameters, CPU and CUDA): same update
    rule, and on ``m2det_tiny`` AdamW's step drops from 22 to 6 ms per batch on one CPU core."""
    if options.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=options.momentum,
                               weight_decay=options.weight_decay, fused=True)
    if options.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=options.weight_decay,
                                 fused=True)
    raise M2DetError(f"unknown optimizer {options.optimizer!r} (sgd, adamw)")


class WeightEMA:
    """Exponential moving average of a model's parameters and buffers (the weights that
    ``--ema`` evaluates and saves).

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's
    ``ExponentialMovingAverage`` ramp), so the average forgets the random init quickly; integer
    buffers (BatchNorm's ``num_batches_tracked``) are copied. The tensor pairs are listed once:
    an update costs 3.7 ms on ``m2det_tiny`` (one CPU core) against 18 ms for
    ``torch.optim.swa_utils.AveragedModel``, which regroups every tensor on every call.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0
        pairs = list(zip(self._tensors(self.module), self._tensors(model), strict=True))
        self._floats = [(a, c) for a, c in pairs if a.is_floating_point()]
        self._others = [(a, c) for a, c in pairs if not a.is_floating_point()]

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        return [t.detach() for t in (*model.parameters(), *model.buffers())]

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights (call after each step)."""
        weight = 1.0 - self.current_decay()
        for averaged, current in self._floats:
            averaged.lerp_(current, weight)
        for averaged, current in self._others:
            averaged.copy_(current)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def make_predict(model: M2Det, nms: dict[str, Any], device: torch.device) -> Any:
    """A ``predict(images [B,3,S,S] np.float32) -> Detections`` for :func:`evaluate_coco`."""
    from m2det.nms import batched_nms, get_nms_params

    params = get_nms_params("official", **nms)
    inference = M2DetInference(model).to(device).eval()

    @torch.no_grad()
    def predict(images: np.ndarray) -> Detections:
        boxes, scores = inference(torch.from_numpy(images).to(device))
        return batched_nms(boxes.float().cpu(), scores.float().cpu(), params)

    predict.input_size = model.config.input_size  # type: ignore[attr-defined]
    return predict


class Trainer:
    """Trains one M2Det. ``fit()`` runs to ``options.epochs`` (or ``stop_at_step``), writing
    ``out/last.pth`` (full state, resumable), ``out/final.pth`` (weights + config) and
    ``out/metrics.jsonl``."""

    def __init__(self, config: M2DetConfig, data: DataSpec, options: TrainOptions,
                 out: str | Path, resume: str | Path | None = None,
                 init_backbone: str | Path | None = None, device: str | None = None,
                 command: Sequence[str] | None = None) -> None:
        self.config, self.data, self.options = config, data, options
        self.out = Path(out)
        self.command = list(command) if command is not None else None
        self.rank, self.world = _distributed()
        if options.batch % self.world:
            raise M2DetError(f"batch {options.batch} is not divisible by {self.world} ranks")
        self.device = self._device(device)
        # AMP: float16 + loss scaling on CUDA; bfloat16 on the CPU (no scaling needed; fast
        # where oneDNN has AVX512-BF16/AMX kernels, slower than float32 elsewhere)
        self.use_amp = options.amp
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.schedule = parse_schedule(options.schedule, options.lr, options.epochs,
                                       options.warmup_epochs, options.gamma)
        train_set = self._train_dataset()
        self._check_classes(train_set)
        transform = self._transform()
        self.dataset = SeededAugmentation(train_set, transform, options.seed)
        self.sampler = EpochBatches(len(self.dataset), options.batch // self.world,
                                    options.seed, self.rank, self.world)
        self.loader = DataLoader(self.dataset, batch_sampler=self.sampler,
                                 num_workers=options.workers, collate_fn=detection_collate,
                                 persistent_workers=False)

        torch.manual_seed(options.seed)
        self.model = build_model(config).to(self.device)
        if init_backbone is not None:
            from m2det.backbones import load_backbone_weights

            load_backbone_weights(self.model.backbone, str(init_backbone))
        else:
            init_backbone_from_scratch(self.model.backbone)
        if options.background_prior is not None:
            self.model.head.init_background_prior(options.background_prior)
        if options.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if options.bn_momentum is not None:
            for m in self.model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = options.bn_momentum
        # evaluation and final.pth use the moving average of the weights when --ema is on
        self.ema = WeightEMA(self.model, options.ema) if options.ema else None
        self.net: nn.Module = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.priors = make_priors(config).to(self.device)
        self.criterion = MultiBoxLoss(config.num_classes, variance=config.variance)
        self.optimizer = make_optimizer(self.model, options, self.schedule(0.0))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp
                                           and self.amp_dtype == torch.float16)
        self.step = 0  # optimizer steps taken
        if resume is not None:
            self._resume(Path(resume))

    # -- setup ------------------------------------------------------------------------------
    def _device(self, device: str | None) -> torch.device:
        if device is not None:
            return torch.device(device)
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")

    def _transform(self) -> TrainTransform | EvalTransform:
        o, size = self.options, self.config.input_size
        if o.augment == "ssd":
            return TrainTransform(size, self.config.rgb_means, p=o.augment_p, seed=o.seed,
                                  photometric=o.photometric)
        if o.augment == "flip":
            return TrainTransform(size, self.config.rgb_means, p=0.0, seed=o.seed,
                                  photometric=False, crop=False)
        if o.augment == "resize":
            return EvalTransform(size)
        raise M2DetError(f"unknown augmentation {o.augment!r} (ssd, flip, resize)")

    def _train_dataset(self) -> Dataset:
        d = self.data
        if d.voc_root is not None:
            return VOCDetection(d.voc_root, d.voc_sets, strict=d.strict)
        if d.train_ann is None or d.train_images is None:
            raise M2DetError("no training data: pass --data (and --images) or --voc")
        return CocoDetection(d.train_ann, d.train_images, strict=d.strict)

    def _check_classes(self, dataset: Any) -> None:
        n = len(dataset.class_names)
        if n != self.config.num_classes - 1:
            raise M2DetError(f"the training data has {n} classes but config {self.config.name!r} "
                             f"predicts {self.config.num_classes - 1}")

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    # -- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The full resumable state, in ``m2det.checkpoint``'s format (plain types + tensors)."""
        return {
            "format": FORMAT,
            "model": self.model.state_dict(),
            "config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {**asdict(self.schedule), "step": self.step},
            "scaler": self.scaler.state_dict(),
            **({} if self.ema is None else {"ema": self.ema.state_dict()}),
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "rng": rng_state(),
            "data": {"seed": self.options.seed, "steps_per_epoch": self.steps_per_epoch,
                     "world": self.world},
            "options": asdict(self.options),
            "command": self.command,
        }

    def save(self, name: str = "last.pth") -> Path:
        path = self.out / name
        if self.rank == 0:
            atomic_torch_save(self.state(), path)
        return path

    def _resume(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        if "optimizer" not in ckpt or "step" not in ckpt:
            raise M2DetError(f"{path} holds weights only, not a training state to resume")
        recorded = ckpt.get("config") or {}
        if recorded != self.config.to_dict():
            name = recorded.get("name", "?")
            raise M2DetError(f"{path} was trained with config {name!r}, which differs from "
                             f"{self.config.name!r}; resume with the same config")
        data = ckpt.get("data", {})
        if data.get("steps_per_epoch") != self.steps_per_epoch or data.get("seed") != \
                self.options.seed:
            raise M2DetError(f"{path} was trained on other data (steps per epoch "
                             f"{data.get('steps_per_epoch')}, seed {data.get('seed')}); resume "
                             "with the same dataset, batch and --seed")
        optimizer = (ckpt.get("options") or {}).get("optimizer", self.options.optimizer)
        if optimizer != self.options.optimizer:
            raise M2DetError(f"{path} was trained with --optimizer {optimizer}; resume with it")
        if self.ema is not None and "ema" not in ckpt:
            raise M2DetError(f"{path} was trained without --ema; resume it without --ema")
        check_and_load(self.model, ckpt["model"], source=str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.step = int(ckpt["step"])
        set_rng_state(ckpt["rng"])

    # -- training ---------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def train_step(self, images: Tensor, targets: list[Tensor], epoch_float: float
                   ) -> dict[str, float]:
        """One SGD step; returns the loss terms."""
        lr = self.schedule(epoch_float)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = images.to(self.device, non_blocking=True)
        if self.options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [t.to(self.device) for t in targets]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            loc, conf = self.net(images)
        loss_l, loss_c = self.criterion(loc.float(), conf.float(), self.priors, targets)
        loss = loss_l + loss_c
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.options.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        return {"loss": loss.item(), "loss_l": loss_l.item(), "loss_c": loss_c.item(), "lr": lr}

    def fit(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Train to the last epoch (or until ``stop_at_step`` optimizer steps, then save
        ``last.pth``); returns the last evaluation (or {})."""
        total = self.options.epochs * self.steps_per_epoch
        stop = total if stop_at_step is None else min(stop_at_step, total)
        metrics: dict[str, Any] = {}
        started = time.monotonic()
        deadline = started + 60 * self.options.max_minutes
        out_of_time = False
        self.model.train()
        while self.step < stop:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch, skip)
            bar = tqdm(total=min(len(self.sampler), stop - self.step), unit="it",
                       desc=f"epoch {epoch + 1}/{self.options.epochs}", file=sys.stderr,
                       disable=not self.options.progress or self.rank != 0)
            window_start, window_images = time.perf_counter(), 0
            for images, targets in self.loader:
                terms = self.train_step(images, targets, self.step / self.steps_per_epoch)
                window_images += images.shape[0] * self.world
                bar.update(1)
                if self.step % self.options.log_every == 0 or self.step == stop:
                    rate = window_images / (time.perf_counter() - window_start)
                    bar.set_postfix(loss=f"{terms['loss']:.3f}", l=f"{terms['loss_l']:.3f}",
                                    c=f"{terms['loss_c']:.3f}", img_s=f"{rate:.1f}")
                    self._log({"step": self.step, "epoch": round(self.step /
                               self.steps_per_epoch, 4), **terms, "images_per_s": rate,
                               "elapsed_s": round(time.monotonic() - started, 2)})
                    window_start, window_images = time.perf_counter(), 0
                if self.options.checkpoint_every and \
                        self.step % self.options.checkpoint_every == 0:
                    self.save()
                if self.options.max_minutes and self._out_of_time(deadline):
                    stop = self.step  # out of time: save and evaluate below, then end
                    out_of_time = True
                if self.step >= stop:
                    break
            bar.close()
            finished_epoch = self.step % self.steps_per_epoch == 0
            if finished_epoch or self.step >= stop:
                self.save()
            done = self.step // self.steps_per_epoch
            if (finished_epoch or out_of_time) and self._eval_due(done, out_of_time):
                metrics = self.evaluate()
                self._log({"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                           "eval": metrics})
                self.model.train()
        if self.step >= total and self.rank == 0:
            atomic_torch_save({"format": FORMAT, "model": self.deployed.state_dict(),
                               "config": self.config.to_dict(), "step": self.step,
                               "command": self.command, "eval": metrics},
                              self.out / "final.pth")
        if self.world > 1:
            dist.barrier()
        return metrics

    def _out_of_time(self, deadline: float) -> bool:
        """Past ``deadline`` (rank 0's clock decides for every rank, so all stop together)."""
        late = torch.tensor([float(time.monotonic() > deadline)])
        if self.world > 1:
            dist.broadcast(late, src=0)
        return bool(late.item())

    def _eval_due(self, epoch: int, last: bool = False) -> bool:
        if self.data.val_ann is None or self.data.val_images is None:
            return False
        every = self.options.eval_every
        return last or epoch == self.options.epochs or (every > 0 and epoch % every == 0)

    @property
    def deployed(self) -> M2Det:
        """The weights that are evaluated and saved as final.pth: the moving average under
        --ema, else the trained model."""
        return self.model if self.ema is None else self.ema.module  # type: ignore[return-value]

    def evaluate(self) -> dict[str, Any]:
        """COCO AP of the deployed weights on the validation set (rank 0; {} elsewhere)."""
        if self.rank != 0 or self.data.val_ann is None or self.data.val_images is None:
            return {}
        from m2det.coco_eval import evaluate_coco

        self.deployed.eval()
        predict = make_predict(self.deployed, self.options.nms, self.device)
        result = evaluate_coco(predict, self.data.val_ann, self.data.val_images,
                               config_labels=self.config.labels, limit=self.options.eval_limit,
                               batch=16, progress=self.options.progress)
        return {k: v for k, v in result.items() if k in ("AP", "AP50", "AP75", "APs", "APm",
                                                         "APl", "num_images")}


# ------------------------------------------------------------------------------------------
# CLI


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
