"""Batch Normalization Through Time (BNTT), Kim & Panda 2021: docs/spec.md, Eq. 3-4.

One BatchNorm per time step, with its own scale gamma_t and no shift (beta). For the synaptic
input a_t of step t, per channel c, with n = B*H*W values per channel (n = B for 1d input):

    training (Eq. 3):  mu_t = mean(a_t),  var_t = mean((a_t - mu_t)^2)      (biased)
                       z_t  = gamma_t * (a_t - mu_t) / sqrt(var_t + eps)
    running  (Eq. 4):  rmean_t <- (1 - m) * rmean_t + m * mu_t
                       rvar_t  <- (1 - m) * rvar_t  + m * var_t * n / (n - 1)   (unbiased)
    evaluation:        z_t  = gamma_t * (a_t - rmean_t) / sqrt(rvar_t + eps)

eps = 1e-4, m = 0.1 (bntt/paper.py), gamma_t = 1, rmean_t = 0, rvar_t = 1 at start. Nothing is
shared across steps.

When several processes train one network (DDP), `sync_group` set to their process group makes
the training statistics those of the global batch (bntt/sync.py): one exchange per call
forward and one backward, for all the steps of the call. None (the default) keeps them local.

Storage is one [T, C] tensor per quantity, so that all steps can be normalised in one
reduction; the state_dict is written and read in the authors' per-step layout
(`<name>.<t>.weight`, `.running_mean`, `.running_var`, `.num_batches_tracked`), so checkpoints
load in both directions with strict key checking.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bntt.paper import BN_EPS, BN_MOMENTUM

_PER_STEP = ("weight", "running_mean", "running_var", "num_batches_tracked")


def update_running_statistics(running_mean, running_var, num_batches_tracked, mean, var,
                              count, momentum: float) -> None:
    """Eq. 4 in place, for the steps these [n, C] views hold, from the batch's mean and biased
    variance over `count` values per channel: what batch_norm does inside, for the paths that
    compute the statistics themselves (several processes, the fused kernels)."""
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
        running_var.mul_(1 - momentum).add_(
            momentum * (var * (count / (count - 1))).to(running_var.dtype))
        num_batches_tracked += 1


def batch_norm(x: torch.Tensor, running_mean, running_var, weight, bias, training: bool,
               momentum: float, eps: float) -> torch.Tensor:
    """`F.batch_norm`, with training statistics as accurate in every memory layout as in the
    contiguous one.

    On a CPU, PyTorch's kernel for a channels-last input adds each channel's values one after
    another into a float32 sum; over thousands of values that loses several bits of the
    variance, where the contiguous kernel, which sums in blocks, stays within about one
    rounding. In float32 a membrane within that difference of the threshold fires in one layout
    and not in the other, and the flip spreads through the statistics of the layers above.
    Such an input is normalised from a contiguous copy.
    """
    if training and x.device.type == "cpu" and not x.is_contiguous():
        x = x.contiguous()
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


class BNTT(nn.Module):
    """BatchNorm with per-time-step statistics and scale, for 1d ([B, C]) or 2d ([B, C, H, W]) maps.

    - `bn(x, t)`: one step; x is [B, C, ...], normalised with step t's statistics and gamma.
    - `bn(x)`: all steps at once; x is [n, B, C, ...] holding steps 0..n-1 (n <= num_steps),
      each normalised with its own statistics, in one reduction.
    - `bn(x, first_step=k)`: the same for a stack holding steps k..k+n-1.

    Both forms compute docs/spec.md, Eq. 3 (and, in training, update the running statistics by
    Eq. 4): exactly what `nn.BatchNorm{1,2}d(C, eps, momentum, affine=True)` with its bias
    removed computes at each step. The arithmetic runs in the wider of the input's and the
    parameters' dtypes, so under bf16 autocast the normalisation stays in float32.

    Example::

        bn = BNTT(64, num_steps=25)
        z0 = bn(a0, t=0)                     # step 0: a0 [B, 64, H, W]
        z = bn(a)                            # all steps: a [25, B, 64, H, W]
    """

    def __init__(self, num_features: int, num_steps: int, eps: float = BN_EPS, momentum: float = BN_MOMENTUM,
                 device=None, dtype=None):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(num_steps, num_features, **factory))  # gamma_t
        self.register_buffer("running_mean", torch.zeros(num_steps, num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_steps, num_features, **factory))
        self.register_buffer("num_batches_tracked",
                             torch.zeros(num_steps, dtype=torch.long, device=device))
        self.sync_group = None  # a torch.distributed group: statistics over the global batch

    @property
    def num_steps(self) -> int:
        """T: the layer holds one gamma and one set of running statistics per step."""
        return self.weight.shape[0]

    def keep_steps(self, steps: int) -> None:
        """Keep only the first `steps` gammas and running statistics (a network run for fewer
        steps: the early exit)."""
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"steps must be in 1..{self.num_steps}, got {steps}")
        self.weight = nn.Parameter(self.weight.detach()[:steps].clone())
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(self, name, getattr(self, name)[:steps].clone())

    def forward(self, x: torch.Tensor, t: int | None = None, first_step: int = 0) -> torch.Tensor:
        if t is not None:
            if not 0 <= t < self.num_steps:
                raise IndexError(f"time step {t} out of range for BNTT with {self.num_steps} steps")
            self.check_stack(1, t, x.shape[1])
            return self._normalise(x.unsqueeze(0), t)[0]
        self.check_stack(x.shape[0], first_step, x.shape[2])
        return self._normalise(x, first_step)

    def check_stack(self, steps: int, first_step: int, channels: int) -> None:
        """A stack of `steps` steps from `first_step`, of `channels` channels, is one this layer
        normalises, or a ValueError that says why not."""
        if not (steps >= 1 and 0 <= first_step and first_step + steps <= self.num_steps):
            raise ValueError(f"BNTT with {self.num_steps} steps got a stack of {steps} steps "
                             f"from step {first_step}")
        if channels != self.num_features:
            raise ValueError(f"BNTT expects {self.num_features} channels, got {channels}")

    def _normalise(self, x: torch.Tensor, first_step: int) -> torch.Tensor:
        n, batch, channels = x.shape[:3]
        steps = slice(first_step, first_step + n)
        dtype = torch.promote_types(x.dtype, self.weight.dtype)
        if self.training and self.sync_group is not None:
            return self._normalise_global(x.to(dtype), steps)
        # Steps become channels: [n, B, C, ...] -> [B, n*C, ...]. One batch_norm call then holds
        # each step's statistics apart, and writes each step's running statistics in place
        # through the flat views of the [T, C] buffers.
        stacked = x.to(dtype).transpose(0, 1).reshape(batch, n * channels, *x.shape[3:])
        y = batch_norm(
            stacked,
            self.running_mean[steps].view(-1),
            self.running_var[steps].view(-1),
            self.weight[steps].reshape(-1),
            None,
            self.training,
            self.momentum,
            self.eps,
        )
        if self.training:
            self.num_batches_tracked[steps] += 1
        return y.reshape(batch, n, channels, *x.shape[3:]).transpose(0, 1)

    def _normalise_global(self, a: torch.Tensor, steps: slice) -> torch.Tensor:
        """Eq. 3-4 with the statistics of the global batch (bntt/sync.py)."""
        from bntt.sync import global_moments

        mean, var, count = global_moments(a, self.running_mean[steps].to(a.dtype), self.sync_group)
        update_running_statistics(self.running_mean[steps], self.running_var[steps],
                                  self.num_batches_tracked[steps], mean, var, count, self.momentum)
        view = (a.shape[0], 1, a.shape[2]) + (1,) * (a.dim() - 3)
        scale = self.weight[steps] * torch.rsqrt(var + self.eps)
        return (a - mean.view(view)) * scale.view(view)

    # -- the authors' per-step state_dict layout ---------------------------------------------

    def _per_step_tensors(self):
        return {"weight": self.weight, "running_mean": self.running_mean,
                "running_var": self.running_var, "num_batches_tracked": self.num_batches_tracked}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        tensors = self._per_step_tensors()
        for t in range(self.num_steps):
            for name in _PER_STEP:
                value = tensors[name][t]
                destination[f"{prefix}{t}.{name}"] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        tensors = self._per_step_tensors()
        expected = set()
        for t in range(self.num_steps):
            for name in _PER_STEP:
                key = f"{prefix}{t}.{name}"
                expected.add(key)
                if key not in state_dict:
                    missing_keys.append(key)
                    continue
                value, target = state_dict[key], tensors[name][t]
                if tuple(value.shape) != tuple(target.shape):
                    error_msgs.append(
                        f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} "
                        f"from checkpoint, the shape in current model is {tuple(target.shape)}.")
                    continue
                with torch.no_grad():
                    target.copy_(value)
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in expected)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, num_steps={self.num_steps}, eps={self.eps}, "
                f"momentum={self.momentum}")
