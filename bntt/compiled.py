"""BNTT + LIF over a block of time steps as compiled CPU kernels (torch.compile, C++).

The cpu engine (bntt/engines.py) hands each BNTT layer's convolution output for a block of n
steps, one [n * B, C, H, W] channels-last stack, and the membrane potentials the previous block
left, to `bntt_lif_block`. It computes what `BNTT` followed by `lif_scan` computes there
(docs/spec.md, Eq. 3-8):

    y_t = gamma_t * (a_t - mean_t) / sqrt(var_t + eps)               BNTT, statistics of step t
    v_t = leak * u_{t-1} + y_t,  s_t = [v_t > threshold],  u_t = v_t - threshold * s_t

with one compiled function each way instead of some thirty tensor operations per block, each a
pass over memory:

- forward: the per-(t, c) statistics, then the normalisation and the neuron's scan over the
  block's steps, reading the stack where the convolution left it (no relayout copy) and writing
  the spikes in the dtype the next convolution computes in.
- backward: nothing but the input, the spikes and the membrane the block started from is kept.
  The forward scan runs again for v_t, then the reverse scan
      g_t = dL/ds_t * surrogate(v_t) + leak * g_{t+1}       (the reset carries no gradient)
  and the BatchNorm backward per (t, c), with xhat = (a - mean) / sqrt(var + eps):
      dL/da = gamma * rstd * (g - mean(g) - xhat * mean(g * xhat)),   dL/dgamma = sum(g * xhat)

The neuron is bntt.neuron's (`integrate`, `fire`, `reset`, `surrogate_grad`), traced into the
kernels. Compiling needs a C++ compiler (inductor's, g++ by default). It happens at the first
call of each kind of block (layer shape, block length, training or evaluation, dtype), takes a
few seconds each and is cached on disk by PyTorch. BNTT_COMPILE=0 turns it off; where it fails
(no compiler), one warning says so. In both cases the cpu engine runs these layers as BNTT
and `lif_scan`, uncompiled.
"""
from __future__ import annotations

import os
import warnings

import torch

from bntt.bntt import update_running_statistics
from bntt.neuron import fire, integrate, membrane_dtype, reset, surrogate_grad

_VALUES = (1, 2, 3)  # B, H, W of the [n, B, H, W, C] view: the values of one (step, channel)


def _steps(x: torch.Tensor, n: int) -> torch.Tensor:
    """A channels-last stack [n * B, C, H, W] as its memory is laid out: [n, B, H, W, C]."""
    return x.permute(0, 2, 3, 1).unflatten(0, (n, -1))


def _stack(x: torch.Tensor) -> torch.Tensor:
    """[n, B, H, W, C] -> the channels-last stack [n * B, C, H, W] over the same memory."""
    return x.flatten(0, 1).permute(0, 3, 1, 2)


def _per_channel(v: torch.Tensor) -> torch.Tensor:
    """[n, C] -> broadcastable against [n, B, H, W, C]."""
    return v[:, None, None, None, :]


# The generated C++ adds a channel's values (one (step, channel) of the stack: thousands of them)
# one after another. In float32 that loses up to log2(count) bits of a sum, and with them the
# variance's accuracy, where eager PyTorch's blocked reductions keep it to about one rounding;
# a membrane within that error of the threshold then fires in one engine and not in another
# (docs/spec.md, section 5). These sums therefore accumulate in float64, as eager var_mean does
# on a CPU: the cast is fused into the reduction's loop, so it reads nothing more.
def _moments(x: torch.Tensor):
    """Per-(step, channel) biased variance and mean of [n, B, H, W, C], in x's dtype."""
    var, mean = torch.var_mean(x.to(torch.float64), dim=_VALUES, correction=0)
    return var.to(x.dtype), mean.to(x.dtype)


def _channel_sum(x: torch.Tensor) -> torch.Tensor:
    """Per-(step, channel) sum of [n, B, H, W, C], in x's dtype, accumulated as `_moments`."""
    return x.sum(_VALUES, dtype=torch.float64).to(x.dtype)


def _forward(a, gamma, u0, mean, var, leak: float, threshold: float, eps: float,
             training: bool, spike_dtype: torch.dtype):
    """Spikes [n * B, C, H, W] (channels-last, spike_dtype), u_n [B, H, W, C], mean, var."""
    n = gamma.shape[0]
    x = _steps(a, n).to(u0.dtype)
    if training:  # Eq. 3: this step's batch statistics (biased variance)
        var, mean = _moments(x)
    y = (x - _per_channel(mean)) * _per_channel(gamma * torch.rsqrt(var + eps))
    u, spikes = u0, []
    for t in range(n):
        v = integrate(u, y[t], leak)
        s = fire(v, threshold).to(v.dtype)
        u = reset(v, s, threshold)
        spikes.append(s.to(spike_dtype))
    return _stack(torch.stack(spikes)), u, mean, var


def _backward(a, spikes, u0, gamma, mean, var, grad_spikes, grad_u, leak: float,
              threshold: float, eps: float, training: bool):
    """(dL/da, dL/dgamma, dL/du0) for `_forward`'s (spikes, u_n) gradients."""
    n = gamma.shape[0]
    x = _steps(a, n).to(u0.dtype)
    rstd = torch.rsqrt(var + eps)
    xhat = (x - _per_channel(mean)) * _per_channel(rstd)
    y = xhat * _per_channel(gamma)
    s = _steps(spikes, n).to(u0.dtype)
    u, v = u0, []
    for t in range(n):  # the forward scan again, for v_t
        v.append(integrate(u, y[t], leak))
        u = reset(v[t], s[t], threshold)
    grad_s = _steps(grad_spikes, n).to(u0.dtype)
    g, grad_y = grad_u, [None] * n
    for t in range(n - 1, -1, -1):
        g = surrogate_grad(v[t], threshold) * grad_s[t] + (g if t == n - 1 else g * leak)
        grad_y[t] = g
    grad_y = torch.stack(grad_y)
    grad_gamma = _channel_sum(grad_y * xhat)
    scale = _per_channel(gamma * rstd)
    if training:  # the batch statistics depend on a too
        count = x.shape[1] * x.shape[2] * x.shape[3]
        grad_x = scale * (grad_y - _per_channel(_channel_sum(grad_y) / count)
                          - xhat * _per_channel(grad_gamma / count))
    else:
        grad_x = grad_y * scale
    return _stack(grad_x.to(a.dtype)), grad_gamma, grad_y[0] * leak


# Static shapes: one compilation per layer shape, block length, mode and dtype; at VGG9's sizes
# these kernels took a quarter less time than shape-generic ones (docs/speed.md, CPU).
_COMPILED = {"forward": torch.compile(_forward, dynamic=False, fullgraph=True),
             "backward": torch.compile(_backward, dynamic=False, fullgraph=True)}
_EAGER = {"forward": _forward, "backward": _backward}
_COMPILE_ERRORS = tuple(error for error in (
    getattr(torch._dynamo.exc, "BackendCompilerFailed", None),
    getattr(getattr(torch, "_inductor", None) and torch._inductor.exc, "InductorError", None),
) if error is not None)
# VGG9 trained and evaluated at T=25 in blocks of 2 steps needs 12 forward compilations, more
# than torch's default limit of 8 per function (which fullgraph=True turns into an error).
_LIMIT_NAME = ("recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit")
               else "cache_size_limit")
RECOMPILE_LIMIT = 256
_state = {"compile": os.environ.get("BNTT_COMPILE", "1") != "0"
          and not getattr(torch._dynamo.config, "disable", False)}


def enabled() -> bool:
    """Whether the cpu engine runs BNTT + LIF as these compiled kernels: unless BNTT_COMPILE=0
    (or TORCH_COMPILE_DISABLE=1) is set, or compiling has failed here."""
    return _state["compile"]


def _call(name: str, *args):
    """The compiled function; where it cannot be compiled, the same one uncompiled, and
    `enabled()` is False from then on."""
    if _state["compile"]:
        try:
            with torch.autocast("cpu", enabled=False), \
                    torch._dynamo.config.patch(**{_LIMIT_NAME: RECOMPILE_LIMIT}):
                return _COMPILED[name](*args)
        except _COMPILE_ERRORS as error:
            _state["compile"] = False
            reason = (str(error).strip() or type(error).__name__).splitlines()[0]
            warnings.warn(f"torch.compile cannot build the cpu engine's BNTT + LIF kernels here "
                          f"({reason}); the engine runs without them, more slowly",
                          RuntimeWarning, stacklevel=3)
    with torch.autocast("cpu", enabled=False):
        return _EAGER[name](*args)


class BNTTLIFBlock(torch.autograd.Function):
    """(spikes, u_n) = LIF(BNTT(a)) over one block of steps; see the module docstring."""

    @staticmethod
    def forward(ctx, a, gamma, u0, running_mean, running_var, num_batches_tracked,
                training: bool, momentum: float, eps: float, leak: float, threshold: float,
                spike_dtype: torch.dtype):
        count = a.numel() // (a.shape[1] * gamma.shape[0])  # values per (step, channel)
        if training and count < 2:
            raise ValueError(f"BNTT needs more than 1 value per channel when training, got {count}")
        # The [n, C] slices of the [T, C] parameters are copied: a compiled function is
        # specialised to its inputs' storage offsets, which differ from block to block.
        spikes, u, mean, var = _call(
            "forward", a, gamma.detach().to(u0.dtype, copy=True), u0.permute(0, 2, 3, 1),
            running_mean.to(u0.dtype, copy=True), running_var.to(u0.dtype, copy=True), leak,
            threshold, eps, training, spike_dtype)
        if training:
            update_running_statistics(running_mean, running_var, num_batches_tracked, mean, var,
                                      count, momentum)
        ctx.save_for_backward(a, spikes, u0, gamma, mean, var)
        ctx.settings = (training, eps, leak, threshold)
        return spikes, u.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_spikes, grad_u):
        a, spikes, u0, gamma, mean, var = ctx.saved_tensors
        training, eps, leak, threshold = ctx.settings
        grad_a, grad_gamma, grad_u0 = _call(
            "backward", a, spikes, u0.permute(0, 2, 3, 1), gamma.to(u0.dtype, copy=True), mean,
            var, grad_spikes, grad_u.permute(0, 2, 3, 1).to(u0.dtype), leak, threshold, eps,
            training)
        return (grad_a, grad_gamma.to(gamma.dtype), grad_u0.permute(0, 3, 1, 2), None, None,
                None, None, None, None, None, None, None)


def bntt_lif_block(a: torch.Tensor, bntt, neuron, first_step: int, batch: int,
                   u0: torch.Tensor | None = None, spike_dtype: torch.dtype | None = None):
    """Steps first_step .. first_step + n - 1 of LIF(BNTT(a)) for a channels-last convolution
    output a [n * batch, C, H, W], from the membrane potentials u0 [batch, C, H, W] (None: at
    rest). Returns the spikes, a channels-last [n * batch, C, H, W] stack in spike_dtype
    (default: a's), and the membrane potentials u_n the block leaves."""
    n = a.shape[0] // batch
    steps = slice(first_step, first_step + n)
    bntt.check_stack(n, first_step, a.shape[1])
    dtype = membrane_dtype(torch.promote_types(a.dtype, bntt.weight.dtype))
    if u0 is None:  # at rest: v_0 = leak * 0 + y_0 = y_0 exactly
        u0 = a.new_zeros((batch, *a.shape[2:], a.shape[1]), dtype=dtype).permute(0, 3, 1, 2)
    return BNTTLIFBlock.apply(
        a.contiguous(memory_format=torch.channels_last), bntt.weight[steps], u0.to(dtype),
        bntt.running_mean[steps], bntt.running_var[steps], bntt.num_batches_tracked[steps],
        bntt.training, bntt.momentum, bntt.eps, neuron.leak, neuron.threshold,
        spike_dtype or a.dtype)
