"""Meters, top-k accuracy and the learning-rate schedule (the authors' utills.py, corrected).
The schedule is the paper's recipe and lives beside its optimiser in bntt/paper.py, and the
top-k count is train.py's, in bntt/training.py; both are re-exported here under the authors'
module name."""
from __future__ import annotations

import torch

from bntt.paper import lr_at_epoch, lr_milestones  # noqa: F401 (re-exported)
from bntt.training import correct_topk  # noqa: F401 (re-exported)


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
