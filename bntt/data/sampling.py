"""Global batches, and each process's share of them.

`--batch_size` is the global batch of the paper's recipe however many processes train: global
batch k of an epoch holds the same images on 1 process or N, and process r of N takes the
r-th contiguous slice of it (`shard_bounds`). Training shuffles by (seed, epoch)
(bntt/seeding.py) and drops the last partial batch; the test set is read in order and its
last, shorter batch is split as evenly as it goes, so every test image is scored exactly once
across the processes.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler, Subset

from bntt import seeding


def shard_bounds(total: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of process `rank`'s slice of `total` items: the first total % world processes
    take one more."""
    share, extra = divmod(total, world)
    lo = rank * share + min(rank, extra)
    return lo, lo + share + (rank < extra)


class GlobalBatchSampler(Sampler):
    """Yields this process's slice of each global batch (a list of dataset indices); slices
    that come out empty (a last test batch smaller than the process count) are skipped.
    `shard(k)` says where the slice of global batch k lies in it: (offset, global size)."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, drop_last: bool,
                 rank: int = 0, world: int = 1, seed: int = 0):
        if batch_size < 1 or not 0 <= rank < world:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world, got {batch_size}, "
                             f"{rank}, {world}")
        self.size, self.batch_size, self.shuffle, self.drop_last = size, batch_size, shuffle, drop_last
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_global_batches(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def global_size(self, k: int) -> int:
        return min(self.batch_size, self.size - k * self.batch_size)

    def shard(self, k: int) -> tuple[int, int]:
        total = self.global_size(k)
        return shard_bounds(total, self.rank, self.world)[0], total

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        gen = seeding.generator(self.seed, self.epoch, seeding.SHUFFLE)
        return torch.randperm(self.size, generator=gen).tolist()

    def __iter__(self):
        order = self.order()
        for k in range(self.num_global_batches()):
            batch = order[k * self.batch_size:(k + 1) * self.batch_size]
            lo, hi = shard_bounds(len(batch), self.rank, self.world)
            if hi > lo:
                yield batch[lo:hi]

    def __len__(self) -> int:
        return sum(1 for k in range(self.num_global_batches())
                   if self.global_size(k) > self.rank)  # else this process's slice is empty


def set_epoch(loader, seed: int, epoch: int) -> None:
    """Before iterating `loader` for 0-based `epoch`: its order and its augmentation draws
    become those of (seed, epoch). Worker processes copy the dataset when the iteration
    starts, so they see the new epoch (loaders here never keep persistent workers)."""
    if isinstance(loader.batch_sampler, GlobalBatchSampler):
        loader.batch_sampler.set_epoch(epoch)
    dataset = loader.dataset
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if hasattr(dataset, "draw_key"):
        dataset.draw_key = (seed, epoch)
