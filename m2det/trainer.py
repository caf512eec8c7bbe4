"""``Trainer``: SGD or AdamW + warm-up + step/cosine decay, AMP (float16 on CUDA, bfloat16 on the
CPU), DDP, exact resume, periodic COCO evaluation.

Reproducibility: the data a step sees is fixed by the seed (``m2det.sampler``); a resumed run
skips the batches its checkpoint already consumed and continues bit-for-bit (CPU, same thread
count). The full state (model, optimizer, schedule, scaler, EMA, RNGs) goes in ``last.pth`` in
``m2det.checkpoint``'s format.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from m2det.augment import EvalTransform, TrainTransform
from m2det.checkpoint import FORMAT, read_checkpoint
from m2det.cli import parse_device, progress_bar
from m2det.config import M2DetConfig
from m2det.data import CocoDetection, VOCDetection, detection_collate
from m2det.ema import WeightEMA
from m2det.errors import M2DetError
from m2det.io import atomic_torch_save, atomic_write_bytes
from m2det.loss import MultiBoxLoss
from m2det.model import M2Det, build_model
from m2det.nms import get_nms_params
from m2det.predictor import ModelPredictor
from m2det.priors import make_priors
from m2det.rng_state import rng_state, set_rng_state
from m2det.sampler import EpochBatches, SeededAugmentation
from m2det.schedule import parse_schedule
from m2det.state_dict import check_and_load
from m2det.stop_request import StopRequest, TrainingInterrupted, ignore_sigint


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

    Both use PyTorch's fused kernels (one kernel over all parameters, CPU and CUDA): the same
    update rule, several times faster than the per-tensor loop on the CPU."""
    if options.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=options.momentum,
                               weight_decay=options.weight_decay, fused=True)
    if options.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=options.weight_decay,
                                 fused=True)
    raise M2DetError(f"unknown optimizer {options.optimizer!r} (sgd, adamw)")


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
                                 persistent_workers=False,
                                 worker_init_fn=ignore_sigint if options.workers else None)

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
        self.metrics_dropped = 0  # metrics.jsonl records past the resumed checkpoint, removed
        if resume is not None:
            self._resume(Path(resume))

    # -- setup ------------------------------------------------------------------------------
    def _device(self, device: str | None) -> torch.device:
        if device is not None:
            return parse_device(device)
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
        if self.rank == 0:
            self.metrics_dropped = self._truncate_metrics(self.step)

    def _truncate_metrics(self, step: int) -> int:
        """Bring ``metrics.jsonl`` back to ``step`` (the checkpoint a run resumes from): records
        logged after it (the run went on past its last checkpoint, then died) and a line cut
        short by a kill are removed, so the resumed run does not log those steps twice. Returns
        how many records were removed."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return 0
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                dropped += 1
                continue
            if isinstance(record, dict) and int(record.get("step", 0)) <= step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())
        return dropped

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
        with StopRequest().active(announce=self.rank == 0) as ctrl_c:
            while self.step < stop:
                out_of_time = self._epoch(stop, deadline, started, ctrl_c) or out_of_time
                if out_of_time:
                    stop = self.step
                finished_epoch = self.step % self.steps_per_epoch == 0
                if finished_epoch or self.step >= stop or ctrl_c.requested:
                    self.save()
                if self._stopped(ctrl_c):
                    self._raise_interrupted()
                done = self.step // self.steps_per_epoch
                if (finished_epoch or out_of_time) and self._eval_due(done, out_of_time):
                    metrics = self.evaluate()
                    self._log({"step": self.step, "epoch": round(self.step /
                               self.steps_per_epoch, 4), "eval": metrics})
                    self.model.train()
                    if self._stopped(ctrl_c):  # Ctrl-C during the evaluation: last.pth is saved
                        self._raise_interrupted()
        if self.step >= total and self.rank == 0:
            atomic_torch_save({"format": FORMAT, "model": self.deployed.state_dict(),
                               "config": self.config.to_dict(), "step": self.step,
                               "command": self.command, "eval": metrics},
                              self.out / "final.pth")
        if self.world > 1:
            dist.barrier()
        return metrics

    def _epoch(self, stop: int, deadline: float, started: float, ctrl_c: StopRequest) -> bool:
        """Steps of the current epoch until its end, ``stop``, the deadline (returns True) or a
        Ctrl-C (returns at that step boundary)."""
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch, skip)
        bar = progress_bar(total=min(len(self.sampler), stop - self.step), unit="it",
                           desc=f"epoch {epoch + 1}/{self.options.epochs}",
                           enabled=self.options.progress and self.rank == 0)  # fmt: skip
        window_start, window_images = time.perf_counter(), 0
        try:
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
                    return True
                if self.step >= stop or self._stopped(ctrl_c):
                    return False
            return False
        finally:
            bar.close()

    def _stopped(self, ctrl_c: StopRequest) -> bool:
        """True once Ctrl-C was pressed on any rank (all ranks stop at the same step)."""
        flag = torch.tensor([float(ctrl_c.requested)])
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        ctrl_c.requested = bool(flag.item())
        return ctrl_c.requested

    def _raise_interrupted(self) -> None:
        path = self.out / "last.pth"
        if self.world > 1:
            dist.barrier()  # rank 0 has written last.pth
        raise TrainingInterrupted(f"stopped after step {self.step}; {path} holds it: continue "
                                  f"with --resume {path}", path)

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
        predict = ModelPredictor(self.deployed, get_nms_params("official", **self.options.nms),
                                 self.device)  # fmt: skip
        result = evaluate_coco(predict, self.data.val_ann, self.data.val_images,
                               config_labels=self.config.labels, limit=self.options.eval_limit,
                               batch=16, progress=self.options.progress)
        return {k: v for k, v in result.items() if k in ("AP", "AP50", "AP75", "APs", "APm",
                                                         "APl", "num_images")}
