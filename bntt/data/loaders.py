"""DataLoaders over a dataset's train and test sets, batched by global batches
(bntt/data/sampling.py)."""
from __future__ import annotations

from torch.utils.data import DataLoader

from bntt.data.sampling import GlobalBatchSampler


def make_loaders(train_set, test_set, batch_size: int, test_batch_size: int, num_workers: int = 0,
                 drop_last_test: bool = False, pin_memory: bool = False, seed: int = 0,
                 rank: int = 0, world: int = 1):
    """(train loader, test loader) of process `rank` of `world`; the batch sizes are global.
    Training batches are shuffled by (seed, epoch) and the last partial one dropped (every
    BNTT step sees a full batch, as in the authors' code). The test set is scored whole unless
    drop_last_test reproduces the authors' truncation. Call `bntt.data.sampling.set_epoch`
    before each epoch.

        >>> train, test = make_loaders(*make_datasets("fashionmnist_subset", "data"), 64, 256)
        >>> set_epoch(train, seed=0, epoch=0)
        >>> images, labels = next(iter(train))  # float32 [64, 1, 32, 32], int64 [64]
    """
    train = DataLoader(train_set, num_workers=num_workers, pin_memory=pin_memory,
                       batch_sampler=GlobalBatchSampler(len(train_set), batch_size, True, True,
                                                        rank, world, seed))
    return train, make_test_loader(test_set, test_batch_size, num_workers, drop_last_test,
                                   pin_memory, rank, world)


def make_test_loader(test_set, batch_size: int, num_workers: int = 0, drop_last: bool = False,
                     pin_memory: bool = False, rank: int = 0, world: int = 1):
    """The test loader of process `rank` of `world`: the set in order, `batch_size` global."""
    return DataLoader(test_set, num_workers=num_workers, pin_memory=pin_memory,
                      batch_sampler=GlobalBatchSampler(len(test_set), batch_size, False, drop_last,
                                                       rank, world))
