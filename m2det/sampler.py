"""Deterministic data order and augmentation for training: every sample's augmentation is seeded by
``(seed, epoch, index)`` and every epoch's order by ``(seed, epoch)``, so what a step sees does not
depend on the number of loader workers, on the rank layout, or on where a run was interrupted."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from m2det.augment import EvalTransform, TrainTransform
from m2det.data import Sample
from m2det.errors import M2DetError


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
