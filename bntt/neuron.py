"""Leaky integrate-and-fire neuron with the BNTT paper's triangular surrogate gradient.

For one layer at step t, with z_t the BNTT output (docs/spec.md, Eq. 5-8):

    (5) v_t = leak * u_{t-1} + z_t                 integrate (u_0 = 0)
    (6) s_t = 1 if v_t > threshold else 0          fire (strict ">"; threshold = 1)
    (7) u_t = v_t - threshold * sg(s_t)            soft reset; sg: no gradient through the reset
    (8) ds_t/dv_t := 0.3 * max(0, 1 - |v_t/threshold - 1|) / threshold    backward only

With MPBN (`--norm mpbn`) the block hands the neuron a BatchNorm of its membrane (`membrane`,
bntt.norms.MembraneBN), and Eq. 6 compares BN(v_t) with the threshold instead of v_t; Eq. 5
and 7 are unchanged: the membrane that leaks and resets is v_t itself (docs/spec.md, Eq. M3).

This is the only neuron in the project. Each equation is one function here (`integrate`,
`fire`, `reset`, `surrogate_grad`); `lif_step` advances one step with autograd (the reference
and multistep engines), `lif_scan` runs all steps as one autograd node with the same functions
(the cpu engine), and the fused CUDA kernel in `bntt.fused` is checked against them.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bntt.paper import LEAK_MEM, SURROGATE_SCALE, THRESHOLD


def surrogate_grad(v: torch.Tensor, threshold: float = THRESHOLD,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """ds/dv of the triangular surrogate at membrane potential v (docs/spec.md, Eq. 8):

        ds/dv = 0.3 * max(0, 1 - |v/threshold - 1|) / threshold

    a triangle peaking at v = threshold, zero outside (0, 2 * threshold). Written into `out`
    (which may be v itself) when given.
    """
    # Same operations in the same order as the authors' code (scale, then the triangle, then
    # the 1/threshold of the chain rule through v/threshold), so float32 gradients agree to the
    # last bit. In place on one tensor: 1 - a is -a + 1 in IEEE arithmetic, and a division by
    # a threshold of 1 is exact, so it is skipped.
    if threshold != 1.0:
        g = torch.div(v, threshold, out=out).sub_(1.0)
    else:
        g = torch.sub(v, 1.0, out=out)
    g.abs_().neg_().add_(1.0).relu_().mul_(SURROGATE_SCALE)
    return g.div_(threshold) if threshold != 1.0 else g


class SurrogateSpike(torch.autograd.Function):
    """Heaviside step in the forward pass, triangular surrogate in the backward pass."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, threshold: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.threshold = threshold
        return fire(v, threshold).to(v.dtype)

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


def integrate(u: torch.Tensor, z: torch.Tensor, leak: float, out: torch.Tensor | None = None):
    """Eq. 5: v = leak * u + z, into `out` when given (the scan writes into its buffers)."""
    return torch.mul(u, leak, out=out).add_(z)


def fire(v: torch.Tensor, threshold: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 6: s = 1 where v > threshold (strictly), else 0; bool, or `out`'s dtype."""
    return torch.gt(v, threshold, out=out)


def reset(v: torch.Tensor, s: torch.Tensor, threshold: float, out: torch.Tensor | None = None):
    """Eq. 7: u = v - threshold * s for spikes s of 0s and 1s.

    One fused subtraction: threshold * s is exactly 0 or threshold, so this is v - threshold*s
    to the bit, in v's dtype.
    """
    return torch.sub(v, s, alpha=threshold, out=out)


def lif_step(z: torch.Tensor, u: torch.Tensor | None, leak: float, threshold: float = THRESHOLD,
             membrane=None):
    """One time step of the LIF neuron. Returns (spikes in z's dtype, new membrane potential).

    `u=None` is the resting state (zeros) at the first step. `membrane`: MPBN's BatchNorm of
    the membrane (its `spikes(v, threshold)` fires where BN(v) > threshold), or None.
    """
    if u is None:
        u = torch.zeros(z.shape, dtype=membrane_dtype(z.dtype), device=z.device)
    v = integrate(u, z, leak)
    s = spike_fn(v, threshold) if membrane is None else membrane.spikes(v, threshold)
    u = reset(v, s.detach(), threshold)
    return s.to(z.dtype), u


class LIFScan(torch.autograd.Function):
    """Eq. 5-8 over all steps as one autograd node (see `lif_scan`)."""

    @staticmethod
    def forward(ctx, z, u0, leak, threshold, spike_dtype, memory_format):
        ctx.set_materialize_grads(False)
        keep = any(ctx.needs_input_grad[:2])
        dtype = membrane_dtype(z.dtype)
        spikes = _spike_buffer(z, spike_dtype or z.dtype, memory_format)
        steps = _step_views(spikes, z.shape[0], memory_format)
        # v of every step is kept for the backward (Eq. 8 needs it), laid out as z; without a
        # backward one buffer serves all steps. u: one buffer each step reads, then rewrites;
        # after the last step it holds the membrane the scan leaves.
        v = torch.empty_like(z, dtype=dtype) if keep else torch.empty_like(z[0], dtype=dtype)
        u = torch.empty_like(steps[0], dtype=dtype)
        # Spikes in another dtype are made in the membrane's, then copied: comparisons that
        # write bf16 run at a thirtieth of the speed of float32 ones on a CPU.
        fired = torch.empty_like(u) if steps[0].dtype != dtype else None
        for t, s_t in enumerate(steps):
            v_t = v[t] if keep else v
            if t == 0 and u0 is None:  # from rest: v = leak * 0 + z = z
                v_t.copy_(z[0])
            else:
                integrate(u0 if t == 0 else u, z[t], leak, out=v_t)
            fire(v_t, threshold, out=s_t if fired is None else fired)
            reset(v_t, s_t if fired is None else fired, threshold, out=u)
            if fired is not None:
                s_t.copy_(fired)
        ctx.leak, ctx.threshold, ctx.memory_format, ctx.dtype = leak, threshold, memory_format, z.dtype
        if keep:
            ctx.save_for_backward(v)
        return spikes, u

    @staticmethod
    def backward(ctx, grad_spikes, grad_u):
        (v,) = ctx.saved_tensors
        grad_steps = _step_views(grad_spikes, v.shape[0], ctx.memory_format)
        grad_z = torch.empty_like(v)
        # The reverse scan, a step at a time so that each step's tensors stay in cache:
        # d loss / d v_t through the spike (Eq. 8), plus leak times d loss / d v_t+1 through the
        # membrane it leaves (u_t = v_t - theta * s_t with s_t detached, Eq. 7, and
        # v_t+1 = leak * u_t + z_t+1, Eq. 5), or, at the last step, the gradient of the
        # membrane handed on; d v_t / d z_t = 1 and d v_0 / d u0 = leak.
        last = v.shape[0] - 1
        for t in range(last, -1, -1):
            g = surrogate_grad(v[t], ctx.threshold, out=grad_z[t])
            if grad_steps[t] is None:
                g.zero_()
            else:
                g.mul_(grad_steps[t])
            if t < last:
                g.add_(grad_z[t + 1], alpha=ctx.leak)
            elif grad_u is not None:
                g.add_(grad_u)
        grad_u0 = grad_z[0] * ctx.leak if ctx.needs_input_grad[1] else None
        grad_z = grad_z.to(ctx.dtype) if ctx.needs_input_grad[0] else None
        return grad_z, grad_u0, None, None, None, None


def _spike_buffer(z: torch.Tensor, dtype, memory_format):
    """The spike output for z [T, B, ...] in `dtype`: laid out as z, or (memory_format given)
    as a [T * B, ...] stack in that format."""
    if memory_format is None:
        return torch.empty_like(z, dtype=dtype)
    return torch.empty((z.shape[0] * z.shape[1], *z.shape[2:]), dtype=dtype, device=z.device,
                       memory_format=memory_format)


def _step_views(spikes, steps: int, memory_format):
    """Step t of a `_spike_buffer` (or of its gradient; None where it has none)."""
    if spikes is None:
        return (None,) * steps
    return spikes.unbind(0) if memory_format is None else spikes.unflatten(0, (steps, -1)).unbind(0)


def lif_scan(z: torch.Tensor, leak: float, threshold: float = THRESHOLD,
             u0: torch.Tensor | None = None, spike_dtype=None, memory_format=None,
             membrane=None):
    """The spike train of LIF neurons driven by z [T, B, ...] from membrane potential u0 (None:
    at rest), and the membrane potential u_T it leaves: what T calls of `lif_step` return, as
    one autograd node instead of about six per step, keeping only the membrane potentials v_t
    for its backward (the reverse scan of Eq. 5-8). Gradients flow through u0 and u_T, so a
    long train can be scanned piece by piece, each piece starting from where the last ended.

    The spikes come in `spike_dtype` (default z's; 0 and 1 are exact in every float dtype),
    laid out as z ([T, B, ...]), or, with `memory_format`, as one [T * B, ...] stack in that
    format: what a convolution over all T steps at once is fed. Returns (spikes, u_T).

    With `membrane`, MPBN's BatchNorm of the membrane (the block's `membrane_norm`), the
    neurons are stepped by `lif_step` instead: that BatchNorm takes each step's statistics in
    turn.
    """
    if membrane is not None:
        s, u = lif_steps(z, u0, leak, threshold, membrane)
        s = s.to(spike_dtype or z.dtype)
        if memory_format is not None:
            s = s.flatten(0, 1).contiguous(memory_format=memory_format)
        return s, u
    return LIFScan.apply(z, u0, float(leak), float(threshold), spike_dtype, memory_format)


def lif_steps(z: torch.Tensor, u: torch.Tensor | None, leak: float, threshold: float = THRESHOLD,
              membrane=None):
    """`lif_step` over z [T, ...] from membrane u (None: at rest), one autograd graph per step
    -> (spikes [T, ...], u_T)."""
    spikes = []
    for z_t in z.unbind(0):
        s, u = lif_step(z_t, u, leak, threshold, membrane)
        spikes.append(s)
    return torch.stack(spikes), u


class LIFNeuron(nn.Module):
    """LIF neurons sharing one leak and one threshold (Eq. 5-8). It holds no parameters: one
    instance serves every layer of a network, and is where the network's leak lives.

    `step(z, u)` advances one time step; `run(z, u)` a [T, ...] sequence from u (None: rest),
    returning the spikes and the last membrane; `forward(z)` the spikes of a sequence from rest.

    Example::

        neuron = LIFNeuron(leak=0.95)
        s, u = neuron.step(z0)               # step 0 from rest: z0 [B, C, H, W]
        s, u = neuron.step(z1, u)            # step 1
        spikes = neuron(z)                   # z [T, B, C, H, W] -> spikes [T, B, C, H, W]
    """

    def __init__(self, leak: float = LEAK_MEM, threshold: float = THRESHOLD):
        super().__init__()
        if not 0.0 < leak <= 1.0:
            raise ValueError(f"leak must be in (0, 1], got {leak}")
        if threshold <= 0.0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.leak = float(leak)
        self.threshold = float(threshold)

    def step(self, z: torch.Tensor, u: torch.Tensor | None = None, membrane=None):
        """One step; `membrane`: the layer's MPBN BatchNorm of the membrane, or None."""
        return lif_step(z, u, self.leak, self.threshold, membrane)

    def run(self, z: torch.Tensor, u: torch.Tensor | None = None, membrane=None):
        """`step` over z [T, ...] from membrane u (None: at rest) -> (spikes [T, ...], u_T)."""
        return lif_steps(z, u, self.leak, self.threshold, membrane)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.run(z)[0]

    def extra_repr(self) -> str:
        return f"leak={self.leak}, threshold={self.threshold}"
