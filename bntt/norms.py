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
- `tebn`: temporal effective BatchNorm (Duan et al., NeurIPS 2022): tdBN's statistics over
  time, batch and space, its own gamma and beta per channel, then a learnable scale p_t per
  step:  y_t = p_t * (gamma * x_hat_t + beta).
- `tab`: temporal accumulated BatchNorm (Jiang et al., ICLR 2024): step t is normalised with
  the statistics of steps 1..t together, each step with its own running statistics, gamma_t
  and beta_t, then weighted by p_t^2:  y_t = p_t^2 * (gamma_t * x_hat_t + beta_t).
- `mpbn`: membrane potential BatchNorm (Guo et al., ICCV 2023): the current is normalised as by
  one BatchNorm over all steps (gamma, beta), and a second BatchNorm (`MembraneBN`, kept as the
  layer's `membrane`) normalises the neuron's membrane potential before it is compared with
  the threshold; at inference that one folds into a threshold per channel.
- `none`: no normalisation.

tdbn, tebn, tab and mpbn take their training statistics from all steps of the batch at once
(`needs_all_steps`): the reference engine (step by step) runs them in evaluation only, and the
cpu engine makes its stack all T steps in training. docs/spec.md, "The normalisations after
BNTT", numbers their equations.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bntt.bntt import BNTT, batch_norm, update_running_statistics
from bntt.neuron import spike_fn
from bntt.paper import BN_EPS, BN_MOMENTUM, THRESHOLD

NORMS = ("bntt", "bn", "tdbn", "tebn", "tab", "mpbn", "none")


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


class _OverAllSteps(_SharedStatistics):
    """One BatchNorm over time, batch and space together, gamma and beta per channel: the
    statistics of tdBN, TEBN and MPBN's first BatchNorm. In training they need every step of
    the batch at once."""

    needs_all_steps = True  # in training; the cpu engine then runs all steps at once
    kind = ""  # the --norm name, for messages

    def __init__(self, num_features: int, num_steps: int | None = None, eps: float = BN_EPS,
                 momentum: float = BN_MOMENTUM):
        super().__init__(num_features, num_steps, eps, momentum, bias=True)

    def _over_all_steps(self, x: torch.Tensor, t: int | None, first_step: int, weight) -> torch.Tensor:
        """weight * x_hat + beta, x_hat with the statistics of the whole stack (training) or
        the running ones (evaluation), for step t alone or a stack [n, B, C, ...]."""
        if self.training and (t is not None or first_step):
            raise RuntimeError(f"{self.kind} normalises over all time steps at once: it trains "
                               "with the multistep, cpu or fused engine, not the step-by-step "
                               "reference")
        if t is not None:
            return self._batch_norm(x, weight, self.bias)
        return self._batch_norm(x.flatten(0, 1), weight, self.bias).unflatten(0, x.shape[:2])


class TDBN(_OverAllSteps):
    """Threshold-dependent BatchNorm: statistics over all steps of the batch together, scaled
    by alpha * threshold before gamma and beta."""

    kind = "tdbn"

    def __init__(self, num_features: int, num_steps: int | None = None, alpha: float = 1.0,
                 threshold: float = THRESHOLD, eps: float = BN_EPS, momentum: float = BN_MOMENTUM):
        super().__init__(num_features, num_steps, eps, momentum)
        self.alpha, self.threshold = alpha, threshold

    def forward(self, x: torch.Tensor, t: int | None = None, first_step: int = 0) -> torch.Tensor:
        return self._over_all_steps(x, t, first_step, self.weight * (self.alpha * self.threshold))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}, threshold={self.threshold}"


def _step_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-step values [n] or per-(step, channel) values [n, C] shaped to broadcast over a
    stack like [n, B, C, ...]."""
    shape = (like.shape[0], 1) + ((like.shape[2],) if values.dim() == 2 else (1,))
    return values.reshape(shape + (1,) * (like.dim() - 3))


class TEBN(_OverAllSteps):
    """Temporal effective BatchNorm (docs/spec.md, Eq. T1-T2): tdBN's statistics with gamma
    and beta per channel, then a learnable scale p_t of each step (one number, init 1).

    Example::

        bn = TEBN(64, num_steps=8)
        z = bn(a)                            # a [8, B, 64, H, W]: y_t = p_t (gamma x_hat_t + beta)
    """

    kind = "tebn"

    def __init__(self, num_features: int, num_steps: int, eps: float = BN_EPS,
                 momentum: float = BN_MOMENTUM):
        super().__init__(num_features, num_steps, eps, momentum)
        self.scale = nn.Parameter(torch.ones(num_steps))  # p_t

    @property
    def num_steps(self) -> int:
        return self.scale.shape[0]

    def keep_steps(self, steps: int) -> None:
        """Keep the scales of the first `steps` steps (the early exit's network)."""
        self.scale = nn.Parameter(self.scale.detach()[:steps].clone())

    def forward(self, x: torch.Tensor, t: int | None = None, first_step: int = 0) -> torch.Tensor:
        y = self._over_all_steps(x, t, first_step, self.weight)
        if t is not None:
            return y * self.scale[t]
        return y * _step_view(self.scale[first_step:first_step + x.shape[0]], x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_steps={self.num_steps}"


class TAB(nn.Module):
    """Temporal accumulated BatchNorm (docs/spec.md, Eq. A1-A3): step t is normalised with the
    mean and variance of steps 1..t of the batch taken together, and each step has its own
    running statistics, gamma_t, beta_t and weight p_t (applied squared, init 1).

    Example::

        bn = TAB(64, num_steps=8)
        z = bn(a)                            # a [8, B, 64, H, W]
        z3 = bn.eval()(a[3], t=3)            # evaluation: step 3 with its running statistics

    Storage is one [T, C] tensor per per-step quantity (as BNTT's), in the state_dict as such.
    """

    needs_all_steps = True  # in training: step t's statistics span the steps before it

    def __init__(self, num_features: int, num_steps: int, eps: float = BN_EPS,
                 momentum: float = BN_MOMENTUM):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_steps, num_features))  # gamma_t
        self.bias = nn.Parameter(torch.zeros(num_steps, num_features))  # beta_t
        self.scale = nn.Parameter(torch.ones(num_steps))  # p_t; the step's weight is p_t^2
        self.register_buffer("running_mean", torch.zeros(num_steps, num_features))
        self.register_buffer("running_var", torch.ones(num_steps, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(num_steps, dtype=torch.long))

    @property
    def num_steps(self) -> int:
        return self.scale.shape[0]

    def keep_steps(self, steps: int) -> None:
        """Keep the first `steps` steps' parameters and statistics (the early exit's network)."""
        for name in ("weight", "bias", "scale"):
            setattr(self, name, nn.Parameter(getattr(self, name).detach()[:steps].clone()))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(self, name, getattr(self, name)[:steps].clone())

    def forward(self, x: torch.Tensor, t: int | None = None, first_step: int = 0) -> torch.Tensor:
        if self.training and (t is not None or first_step):
            raise RuntimeError("tab normalises step t with the statistics of steps 1..t, all "
                               "time steps at once: it trains with the multistep, cpu or fused "
                               "engine, not the step-by-step reference")
        stack = x.unsqueeze(0) if t is not None else x
        first = t if t is not None else first_step
        steps = slice(first, first + stack.shape[0])
        a = stack.to(torch.promote_types(x.dtype, self.weight.dtype))
        if self.training:
            mean, var, count = accumulated_moments(a)
            update_running_statistics(self.running_mean[steps], self.running_var[steps],
                                      self.num_batches_tracked[steps], mean, var, count,
                                      self.momentum)
        else:
            mean, var = self.running_mean[steps], self.running_var[steps]
        gain = self.weight[steps] * torch.rsqrt(var + self.eps) * (self.scale[steps] ** 2)[:, None]
        shift = self.bias[steps] * (self.scale[steps] ** 2)[:, None]
        y = (a - _step_view(mean, a)) * _step_view(gain, a) + _step_view(shift, a)
        return y[0] if t is not None else y

    def extra_repr(self) -> str:
        return (f"{self.num_features}, num_steps={self.num_steps}, eps={self.eps}, "
                f"momentum={self.momentum}")


def accumulated_moments(a: torch.Tensor):
    """The mean and biased variance per channel of steps 0..t of the stack a [n, B, C, ...]
    taken together, for every t: ([n, C], [n, C], count [n, 1] of values behind each).

    From each step's own moments (one pass over the stack): mu_1:t is the mean of the steps'
    means, and sigma^2_1:t the mean over steps s <= t of var_s + (mu_s - mu_1:t)^2, the
    variance of the union of equal-sized groups, without the cancellation of E[x^2] - mu^2.
    """
    n = a.shape[0]
    var_s, mean_s = torch.var_mean(a, (1, *range(3, a.dim())), correction=0)  # [n, C]
    k = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)[:, None]  # steps in 1..t
    mean = mean_s.cumsum(0) / k
    earlier = torch.ones(n, n, dtype=torch.bool, device=a.device).tril()[:, :, None]  # s <= t
    spread = var_s[None] + (mean_s[None] - mean[:, None]) ** 2  # [t, s, C]
    var = torch.where(earlier, spread, 0).sum(1) / k
    return mean, var, k * (a.numel() // (n * a.shape[2]))


class MembraneBN(_SharedStatistics):
    """MPBN's BatchNorm of the membrane potential (docs/spec.md, Eq. M2-M4): one per layer,
    shared by all steps (lambda and beta per channel). In training each step's membrane v_t is
    normalised with its batch's statistics and the one set of running statistics is updated at
    every step, in step order; the neuron fires where BN(v_t) > threshold and resets v_t.

    At inference BN is an affine map of each channel, so BN(v) > threshold is v > theta_c (or
    v < theta_c where lambda_c < 0): `spikes` then compares v with the folded thresholds
    (`folded_threshold`) and computes no BN; where a gradient is asked for (training, or an
    attack on an evaluated network) it takes the unfolded form, whose surrogate gradient the
    folded comparison lacks. `fold_at_inference = False` keeps the unfolded form throughout.

    Example::

        membrane = MembraneBN(64)
        s = membrane.spikes(v, threshold=1.0)    # v [B, 64, H, W]: 1 where BN(v) > 1
    """

    fold_at_inference = True

    def __init__(self, num_features: int, eps: float = BN_EPS, momentum: float = BN_MOMENTUM):
        super().__init__(num_features, None, eps, momentum, bias=True)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """BN(v) for one step's membrane v [B, C, ...]."""
        return self._batch_norm(v, self.weight, self.bias)

    def spikes(self, v: torch.Tensor, threshold: float) -> torch.Tensor:
        """The spikes of membrane v [B, C, ...]: 1 where BN(v) > threshold (Eq. M3), in v's
        dtype, with the surrogate gradient of BN(v) in training."""
        if self.training or not self.fold_at_inference or torch.is_grad_enabled():
            return spike_fn(self(v), threshold)
        crossing, slope = self.folded_threshold(threshold)
        shape = (1, -1) + (1,) * (v.dim() - 2)
        crossing, slope = crossing.view(shape), slope.view(shape)
        never_or_always = (self.bias > threshold).view(shape)  # lambda_c = 0: BN(v) = beta_c
        fired = torch.where(slope > 0, v > crossing,
                            torch.where(slope < 0, v < crossing, never_or_always))
        return fired.to(v.dtype)

    def folded_threshold(self, threshold: float):
        """(theta_c, slope_c) per channel (Eq. M4): BN(v) = slope_c (v - mu_c) + beta_c at
        inference, so BN(v) > threshold where v > theta_c = mu_c + (threshold - beta_c) /
        slope_c for slope_c > 0, v < theta_c for slope_c < 0 (theta_c is not finite where
        slope_c = 0: BN(v) = beta_c there)."""
        slope = self.weight * torch.rsqrt(self.running_var + self.eps)
        return self.running_mean + (threshold - self.bias) / slope, slope


class MPBN(_OverAllSteps):
    """Membrane potential BatchNorm (docs/spec.md, Eq. M1-M4): the current normalised as by one
    BatchNorm over all steps (gamma, beta), and `membrane`, the BatchNorm of the membrane
    potential that the block hands to its neuron (bntt/blocks.py), so one LIF neuron still
    serves every layer. Both are kept under the layer's name (bntt1.*, bntt1.membrane.*).
    A shortcut's MPBN (`membrane=False`) is the first BatchNorm alone.

    Example::

        bn = MPBN(64, num_steps=8)
        block = SpikingBlock(nn.Conv2d(64, 64, 3, padding=1, bias=False), bn, LIFNeuron())
        s = block(x)                         # x [8, B, 64, H, W]: fires where BN(v_t) > 1
    """

    kind = "mpbn"

    def __init__(self, num_features: int, num_steps: int | None = None, eps: float = BN_EPS,
                 momentum: float = BN_MOMENTUM, membrane: bool = True):
        super().__init__(num_features, num_steps, eps, momentum)
        # membrane=False: the current of a residual shortcut, which no neuron of its own fires on
        self.membrane = MembraneBN(num_features, eps, momentum) if membrane else None

    def forward(self, x: torch.Tensor, t: int | None = None, first_step: int = 0) -> torch.Tensor:
        return self._over_all_steps(x, t, first_step, self.weight)


class NoNorm(nn.Module):
    """No normalisation: the pre-activations go to the neuron as they are."""

    def __init__(self, num_features: int, num_steps: int | None = None):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor, t: int | None = None, first_step: int = 0) -> torch.Tensor:
        return x


def make_norm(kind: str, num_features: int, num_steps: int, alpha: float = 1.0,
              fires: bool = True) -> nn.Module:
    """The normalisation `kind` (one of NORMS) for a layer of `num_features` channels over
    `num_steps` steps; `alpha` is tdBN's (1 / sqrt(2) on the two branches of a residual add);
    `fires=False`: no neuron receives this current directly (a residual shortcut), so MPBN has
    no BatchNorm of the membrane there."""
    if kind == "tdbn":
        return TDBN(num_features, num_steps, alpha=alpha)
    if kind == "mpbn":
        return MPBN(num_features, num_steps, membrane=fires)
    return {"bntt": BNTT, "bn": SharedBN, "tebn": TEBN, "tab": TAB, "mpbn": MPBN,
            "none": NoNorm}[kind](num_features, num_steps)


# the norms whose training statistics need all steps at once: the reference engine (step by
# step) runs them in evaluation only
TRAINS_ON_ALL_STEPS = ("tdbn", "tebn", "tab", "mpbn")
