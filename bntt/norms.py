"""The normalisations BNTT is compared with (`--norm`, docs/spec.md, section 6).

Each takes the pre-activations of a layer like BNTT does: `norm(x, t)` for step t alone
([B, C, ...]), `norm(z)` for a stack of steps 0..n-1 ([n, B, C, ...]) and
`norm(z, first_step=k)` for steps k..k+n-1, and keeps its state under
the layer's BNTT name, so every model, engine and checkpoint handles them alike.

- `bntt`: the paper's BNTT (bntt/bntt.py): statistics and gamma per step.
- `bn`: one BatchNorm per layer shared by every step, gamma only as in BNTT, so the comparison
  isolates the time axis. In training each step is normalised with the statistics of its own
  batch, and the one set of running statistics is updated at every step: what reusing one
  BatchNorm module at each step does.
- `tdbn`: threshold-dependent BatchNorm (Zheng et al., AAAI 2021): the statistics of a channel
  are taken over time, batch and space together, and the normalised value is scaled by
  alpha * threshold before its own gamma and beta:  y = gamma * alpha * theta * x_hat + beta.
  Its training statistics need all steps at once, so the reference engine (step by step) runs it
  in evaluation only; the multistep and fused engines train it.
- `none`: no normalisation.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bntt.bntt import BNTT, batch_norm
from bntt.paper import BN_EPS, BN_MOMENTUM, THRESHOLD

NORMS = ("bntt", "bn", "tdbn", "none")


class _SharedStatistics(nn.Module):
    """One gamma (and, for tdBN, beta) and one set of running statistics per channel."""

    def __init__(self, num_features: int, num_steps: int | None = None, eps: float = BN_EPS,
                 momentum: float = BN_MOMENTUM, bias: bool = False):
        super().__init__()  # num_steps: accepted as for BNTT; nothing here is per step
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def _batch_norm(self, x: torch.Tensor, weight, bias=None) -> torch.Tensor:
        # the wider of the input's and the parameters' dtypes, as BNTT: float32 under autocast
        dtype = torch.promote_types(x.dtype, self.weight.dtype)
        if self.training:
            self.num_batches_tracked += 1
        return batch_norm(x.to(dtype), self.running_mean, self.running_var, weight, bias,
                            self.training, self.momentum, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class SharedBN(_SharedStatistics):
    """BatchNorm shared by every time step, gamma only (see the module docstring)."""

    def forward(self, x: torch.Tensor, t: int | None = None, first_step: int = 0) -> torch.Tensor:
        if t is not None:
            return self._batch_norm(x, self.weight)
        # step after step: the running statistics take one update per step, in order
        return torch.stack([self._batch_norm(x_t, self.weight) for x_t in x.unbind(0)])


class TDBN(_SharedStatistics):
    """Threshold-dependent BatchNorm: statistics over all steps of the batch together."""

    needs_all_steps = True  # in training; the cpu engine then runs all steps at once

    def __init__(self, num_features: int, num_steps: int | None = None, alpha: float = 1.0,
                 threshold: float = THRESHOLD, eps: float = BN_EPS, momentum: float = BN_MOMENTUM):
        super().__init__(num_features, num_steps, eps, momentum, bias=True)
        self.alpha, self.threshold = alpha, threshold

    def forward(self, x: torch.Tensor, t: int | None = None, first_step: int = 0) -> torch.Tensor:
        scale = self.weight * (self.alpha * self.threshold)
        if self.training and (t is not None or first_step):
            raise RuntimeError("tdbn normalises over all time steps at once: it trains with "
                               "the multistep or fused engine, not the step-by-step reference")
        if t is not None:
            return self._batch_norm(x, scale, self.bias)
        return self._batch_norm(x.flatten(0, 1), scale, self.bias).unflatten(0, x.shape[:2])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}, threshold={self.threshold}"


class NoNorm(nn.Module):
    """No normalisation: the pre-activations go to the neuron as they are."""

    def __init__(self, num_features: int, num_steps: int | None = None):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor, t: int | None = None, first_step: int = 0) -> torch.Tensor:
        return x


def make_norm(kind: str, num_features: int, num_steps: int, alpha: float = 1.0) -> nn.Module:
    """The normalisation `kind` (one of NORMS) for a layer of `num_features` channels over
    `num_steps` steps; `alpha` is tdBN's (1 / sqrt(2) on the two branches of a residual add)."""
    if kind == "tdbn":
        return TDBN(num_features, num_steps, alpha=alpha)
    return {"bntt": BNTT, "bn": SharedBN, "none": NoNorm}[kind](num_features, num_steps)
