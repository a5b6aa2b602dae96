"""Early exit: stop inference before T steps (Kim & Panda 2021, Sec. 4.3 "Early exit").

The readout accumulates over time, so the prediction after t steps is the average readout of
steps 1..t, and one forward pass over T steps gives the prediction of every prefix. Two rules
decide where to stop:

- the paper's gamma rule: BNTT's learned gamma_t shrinks at late steps; inference stops at the
  first step t at which the mean gamma of every BNTT layer is below a threshold alpha (it runs
  steps 1..t), or runs all T steps if that never happens;
- a per-sample rule (not in the paper): each sample stops at the first step at which the
  softmax margin (top-1 minus top-2 probability) of its prediction so far reaches a threshold.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch


EXIT_THRESHOLD = 0.1  # alpha of the gamma rule, the value commonly quoted for the paper


def prefix_logits(currents: torch.Tensor) -> torch.Tensor:
    """Readout currents [T, B, classes] -> logits after each prefix of steps (Eq. 10 for t
    steps), accumulated in at least float32."""
    currents = currents.to(torch.promote_types(currents.dtype, torch.float32))
    steps = torch.arange(1, currents.shape[0] + 1, device=currents.device, dtype=currents.dtype)
    return currents.cumsum(0) / steps.view(-1, 1, 1)


def cumulative_logits(model, spikes: torch.Tensor) -> torch.Tensor:
    """Input spike train [T, B, ...] -> logits after each prefix, [T, B, classes]: entry t-1 is
    what the same network run for t steps returns."""
    return prefix_logits(model.readout_currents(spikes))


@dataclass
class GammaStats:
    """Per BNTT layer (bottom to top) and time step: mean, std, min, max of gamma, [L, T] each."""
    layers: list
    mean: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor


def gamma_statistics(model) -> GammaStats:
    """The gammas of the model's BNTT layers; no layers (the ablation's other normalisations
    have no gamma per step) gives [0, T] tensors."""
    if not model.bntt_layers():
        return GammaStats([], *[torch.zeros(0, model.num_steps)] * 4)
    names, gammas = zip(*[(name, bn.weight.detach().float().cpu()) for name, bn in model.bntt_layers()])
    return GammaStats(list(names), torch.stack([g.mean(1) for g in gammas]),
                      torch.stack([g.std(1) for g in gammas]),
                      torch.stack([g.min(1).values for g in gammas]),
                      torch.stack([g.max(1).values for g in gammas]))


def check_threshold(alpha: float, name: str = "exit threshold") -> float:
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"{name} must be a positive number, got {alpha!r}")
    return float(alpha)


def gamma_exit_step(gamma_mean: torch.Tensor, alpha: float) -> int:
    """First step t (1-based) at which every layer's mean gamma is below alpha (strictly); the
    number of steps T if there is none. gamma_mean is [layers, T]."""
    check_threshold(alpha)
    below = (gamma_mean < alpha).all(dim=0)
    hits = torch.nonzero(below)
    return int(hits[0]) + 1 if len(hits) else gamma_mean.shape[1]


def gamma_exit(gammas: GammaStats, top1_per_step: list, norm: str,
               alpha: float = EXIT_THRESHOLD) -> dict:
    """The gamma rule on a trained model's `gammas` (gamma_statistics), with `top1_per_step`
    (t = 1..T) the accuracy after each prefix: where it exits, the accuracy there against all T
    steps, and whether it fired (`triggered`; False means it runs all T steps). A network
    without BNTT (`norm` another normalisation) has no gamma per step: `applicable` is False
    and it runs T steps."""
    steps = len(top1_per_step)
    if not gammas.layers:
        return {"alpha": alpha, "exit_step": steps, "top1_at_exit": top1_per_step[-1],
                "top1_full": top1_per_step[-1], "steps_saved": 0, "triggered": False,
                "applicable": False,
                "note": f"the gamma rule applies to BNTT only; this network uses norm {norm}"}
    step = gamma_exit_step(gammas.mean, alpha)
    return {"alpha": alpha, "exit_step": step, "top1_at_exit": top1_per_step[step - 1],
            "top1_full": top1_per_step[-1], "steps_saved": steps - step,
            "triggered": bool((gammas.mean[:, step - 1] < alpha).all()), "applicable": True}


def softmax_margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 softmax probability along the last dimension."""
    top2 = logits.softmax(-1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


class PrefixScores:
    """The prediction after every prefix of steps, scored over batches: the correct top-1 and
    top-5 counts after each step, [T] each, and per sample the softmax margin and whether the
    top-1 class is right after each step, [T, N] each (what sample_exit takes).

        scores = PrefixScores(model.num_steps)
        scores.add(cumulative_logits(model, model.encode(images)), labels)
        top1_after_t = 100 * scores.top1 / scores.images
    """

    def __init__(self, steps: int):
        self.top1 = torch.zeros(steps, dtype=torch.long)
        self.top5 = torch.zeros(steps, dtype=torch.long)
        self.images = 0
        self._margins, self._correct = [], []

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Logits after each prefix [T, B, classes] (prefix_logits) of images labelled [B]."""
        # Classes ranked as utill.correct_topk ranks them (train.py's test top-1): where logits
        # tie (no spike reached the readout) topk(5), topk(1) and argmax can differ.
        ranked = logits.topk(min(5, logits.shape[-1]), -1, True, True).indices
        hits = ranked == labels.view(1, -1, 1)
        self.top1 += hits[..., 0].sum(1).cpu()
        self.top5 += hits.any(-1).sum(1).cpu()
        self._margins.append(softmax_margin(logits).float().cpu())
        self._correct.append(hits[..., 0].cpu())
        self.images += labels.shape[0]

    @property
    def margins(self) -> torch.Tensor:
        self._margins = [torch.cat(self._margins, 1)]
        return self._margins[0]

    @property
    def correct(self) -> torch.Tensor:
        self._correct = [torch.cat(self._correct, 1)]
        return self._correct[0]


def sample_exit(margins: torch.Tensor, correct: torch.Tensor, threshold: float) -> tuple[float, float]:
    """Per-sample exit from margins [T, N] and per-step correctness [T, N] (bool): each sample
    stops at its first step with margin >= threshold, or at T. Returns (top-1 %, mean steps)."""
    first, hit = sample_exits(margins, correct, threshold)
    return 100.0 * hit.float().mean().item(), (first + 1).float().mean().item()


def sample_exits(margins: torch.Tensor, correct: torch.Tensor, threshold: float):
    """Per sample, from margins and correctness [T, N]: the 0-based step at which it stops
    (exit_steps) and whether its prediction is right there, [N] each."""
    first = exit_steps(margins, threshold)
    return first, correct.gather(0, first.view(1, -1)).squeeze(0)


def exit_steps(margins: torch.Tensor, threshold: float) -> torch.Tensor:
    """The 0-based step [N] at which each sample stops: its first step with margin >=
    threshold, else the last."""
    check_threshold(threshold, "confidence threshold")
    confident = margins >= threshold
    last = torch.full_like(confident[0], margins.shape[0] - 1, dtype=torch.long)
    return torch.where(confident.any(0), confident.float().argmax(0), last)


def truncate_steps(model, steps: int):
    """A copy of `model` that runs only the first `steps` time steps (its BNTT layers keep the
    first `steps` gammas and running statistics): the network an early exit deploys."""
    if not 1 <= steps <= model.num_steps:
        raise ValueError(f"steps must be in 1..{model.num_steps}, got {steps}")
    return copy.deepcopy(model).keep_steps(steps)
