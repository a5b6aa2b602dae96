"""Meters, top-k accuracy and the learning-rate schedule (the authors' utills.py, corrected).
The schedule is the paper's recipe and lives beside its optimiser in bntt/paper.py; it is
re-exported here under the authors' module name."""
from __future__ import annotations

import torch

from bntt.paper import lr_at_epoch, lr_milestones  # noqa: F401 (re-exported)


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
