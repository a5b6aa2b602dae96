"""Leaky integrate-and-fire neuron with the BNTT paper's triangular surrogate gradient.

For one layer at step t, with z_t the BNTT output (docs/spec.md, Eq. 5-8):

    (5) v_t = leak * u_{t-1} + z_t                 integrate (u_0 = 0)
    (6) s_t = 1 if v_t > threshold else 0          fire (strict ">"; threshold = 1)
    (7) u_t = v_t - threshold * sg(s_t)            soft reset; sg: no gradient through the reset
    (8) ds_t/dv_t := 0.3 * max(0, 1 - |v_t/threshold - 1|) / threshold    backward only

This is the only neuron in the project: every spiking layer of every model and both engines
call `lif_step` (the fused CUDA kernel in `bntt.fused` is checked against it).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bntt.paper import SURROGATE_SCALE, THRESHOLD


def surrogate_grad(v: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """ds/dv of the triangular surrogate at membrane potential v (docs/spec.md, Eq. 8):

        ds/dv = 0.3 * max(0, 1 - |v/threshold - 1|) / threshold

    a triangle peaking at v = threshold, zero outside (0, 2 * threshold).
    """
    # Same operation order as the authors' code (scale, then the triangle, then the 1/threshold
    # of the chain rule through v/threshold), so float32 gradients agree to the last bit.
    return SURROGATE_SCALE * torch.relu(1.0 - (v / threshold - 1.0).abs()) / threshold


class SurrogateSpike(torch.autograd.Function):
    """Heaviside step in the forward pass, triangular surrogate in the backward pass."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, threshold: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.threshold = threshold
        return (v > threshold).to(v.dtype)

    @staticmethod
    def backward(ctx, grad_spike: torch.Tensor):
        (v,) = ctx.saved_tensors
        return grad_spike * surrogate_grad(v, ctx.threshold), None


def spike_fn(v: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    return SurrogateSpike.apply(v, threshold)


def membrane_dtype(dtype: torch.dtype) -> torch.dtype:
    """The membrane potential is kept in at least float32.

    A bf16 membrane has 8 bits of mantissa: 25 steps of leak and soft reset in bf16 drift by
    several percent of the threshold, which changes which neurons fire.
    """
    return torch.promote_types(dtype, torch.float32)


def lif_step(z: torch.Tensor, u: torch.Tensor | None, leak: float, threshold: float = THRESHOLD):
    """One time step of the LIF neuron. Returns (spikes in z's dtype, new membrane potential).

    `u=None` is the resting state (zeros) at the first step.
    """
    if u is None:
        u = torch.zeros(z.shape, dtype=membrane_dtype(z.dtype), device=z.device)
    v = leak * u + z
    s = spike_fn(v, threshold)
    u = v - threshold * s.detach()
    return s.to(z.dtype), u


class LIFNeuron(nn.Module):
    """A layer of LIF neurons sharing one leak and one threshold. It holds no parameters.

    `step(z, u)` advances one time step; `forward(z)` runs a whole [T, ...] sequence from rest
    and returns the spike train [T, ...].
    """

    def __init__(self, leak: float = 0.95, threshold: float = THRESHOLD):
        super().__init__()
        if not 0.0 < leak <= 1.0:
            raise ValueError(f"leak must be in (0, 1], got {leak}")
        if threshold <= 0.0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.leak = float(leak)
        self.threshold = float(threshold)

    def step(self, z: torch.Tensor, u: torch.Tensor | None = None):
        return lif_step(z, u, self.leak, self.threshold)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = None
        spikes = []
        for z_t in z.unbind(0):
            s, u = self.step(z_t, u)
            spikes.append(s)
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return f"leak={self.leak}, threshold={self.threshold}"
