"""Meters, top-k accuracy and the learning-rate schedule (the authors' utills.py, corrected)."""
from __future__ import annotations

import torch

from bntt.paper import LR_DECAY_FACTOR, LR_DECAY_PERCENTS


def lr_milestones(num_epochs: int) -> list[int]:
    """0-based epochs after which the learning rate drops, on integer epoch boundaries.

    The authors compare `epoch == 0.7 * num_epochs` in floating point, which silently skips a
    decay whenever the product is not an integer (e.g. 25 epochs). Integer arithmetic gives the
    same milestones as theirs whenever theirs fire (50, 70, 90 for 100 epochs) and floors the
    others (12, 17, 22 for 25 epochs).
    """
    return [num_epochs * p // 100 for p in LR_DECAY_PERCENTS]


def lr_at_epoch(base_lr: float, epoch: int, num_epochs: int) -> float:
    """Learning rate used while training 0-based `epoch`.

    As in the authors' loop, the decay is applied after training epoch m, so epoch m itself
    still runs at the previous rate: for 100 epochs, epochs 0-50 use base_lr, 51-70 base_lr/10,
    71-90 base_lr/100 and 91-99 base_lr/1000.
    """
    drops = sum(epoch > m for m in lr_milestones(num_epochs))
    return base_lr * LR_DECAY_FACTOR ** drops


def correct_topk(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[int]:
    """Number of samples whose target is among the k highest outputs, for each k."""
    with torch.no_grad():
        maxk = min(max(topk), output.shape[1])
        pred = output.topk(maxk, 1, True, True).indices
        correct = pred.eq(target.reshape(-1, 1))  # [B, maxk]; at most one hit per row
        return [int(correct[:, :k].sum()) for k in topk]


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[torch.Tensor]:
    """Top-k precision in percent for each k, as 1-element tensors (the authors' signature).

    k larger than the number of classes counts as the number of classes.
    """
    batch_size = target.size(0)
    return [torch.tensor([100.0 * c / batch_size]) for c in correct_topk(output, target, topk)]


class AverageMeter:
    """Running sum, count and average of a scalar."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count
