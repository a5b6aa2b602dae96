"""The fused backend: the multistep way of running a block, with the three things that make it
fast on a GPU.

1. BNTT + LIF as one Triton kernel each way (bntt/fused/kernels.py), on channels-last maps.
2. 2x2 average pooling inside the kernels: for a block with such a pool they write the pooled
   spikes (their backward reads the pooled gradient), so the full-size spikes are never
   stored. Other pools run as a mean over the channels-last view (`pool_channels_last`): same
   values as avg_pool2d, but a broadcast for the backward and nothing saved for it.
3. Convolutions that keep their spike input for the backward in one byte (`SpikeConv2d`).
   A block's spike maps are marked with `bntt.blocks.mark_spikes`: LIF spikes in {0, 1},
   input spikes in {-1, 0, 1}, or k x k average-pooled spikes in {0, 1/k^2, ..., 1}.
   Multiplied by their `scale` (`spike_scale`: 1 or k^2) they are small integers, so an int8
   copy rebuilds the input exactly: the weight gradient comes from the same values through the
   same kernel as nn.Conv2d's own backward, at half the memory of a bf16 copy (a quarter of
   float32). For spike maps the BNTT + LIF kernel writes these codes itself, beside the spikes
   (pooled: the window counts), and the next convolution keeps them instead of casting.

A block the kernels do not cover (another norm, no neuron, a residual current, a stack that
does not start at rest) runs its norm as in multistep and its neuron as one autograd node
(`bntt.neuron.lif_scan`), its spikes and pool channels-last. It computes
the function of the multistep backend (tests/test_equivalence.py); the design and its byte counts
are in docs/fast-engine.md.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bntt.blocks import Backend, mark_spikes, spike_codes
from bntt.bntt import BNTT
from bntt.fused.kernels import bntt_lif, fusable_pool
from bntt.neuron import lif_scan


class Fused(Backend):
    """All steps at once, BNTT + LIF (+ a 2x2 pool) in Triton kernels."""

    name = "fused"

    def steps_per_call(self, network: nn.Module, spikes: torch.Tensor) -> int:
        return spikes.shape[0]

    def run(self, block, x, u0, first_step: int, residual=None):
        synapse, norm, neuron, pool = block.synapse, block.norm, block.neuron, block.pool
        steps, batch = x.shape[:2]
        stack, marked = x.flatten(0, 1), spike_codes(x)
        if isinstance(synapse, nn.Conv2d):
            stack = stack.contiguous(memory_format=torch.channels_last)
            if marked:
                scale, codes, maker = marked
                z = spike_conv(synapse, stack, scale, codes)
                if codes is not None and maker is not None:
                    maker._codes_read = True
            else:
                z = synapse(stack)
        else:
            z = synapse(block.synapse_input(stack))
        z = z.unflatten(0, (steps, batch))
        if not (isinstance(norm, BNTT) and neuron is not None and residual is None
                and u0 is None and first_step == 0):
            # the neuron as one autograd node, its spike maps written channels-last, as the
            # next convolution and the pool read them
            z = block.current(z, first_step, residual)
            if neuron is None:
                return z, None
            maps = torch.channels_last if z.dim() == 5 else None
            s, u = lif_scan(z, neuron.leak, neuron.threshold, u0, memory_format=maps,
                            membrane=block.membrane_norm)
            s = s.flatten(0, 1) if maps is None else s
            if pool is not None:
                s = pool_channels_last(s, pool)
            return mark_spikes(s.unflatten(0, (steps, batch)), spike_scale(pool)), u
        k = pool_size(pool)
        fuse_pool = k is not None and fusable_pool(k, z.shape[3:])
        # The codes are written for maps while a convolution has read the last ones this block
        # wrote (the first time, on trust): not for the last maps before a linear layer.
        want_codes = (z.dim() == 5 and (pool is None or fuse_pool) and torch.is_grad_enabled()
                      and getattr(block, "_codes_read", True))
        s = bntt_lif(z, norm, neuron, want_codes, k if fuse_pool else 1)
        s, codes = s if want_codes else (s, None)
        if want_codes:
            block._codes_read = False  # until a convolution reads these
        if pool is not None and not fuse_pool:
            s = pool_channels_last(s.flatten(0, 1), pool).unflatten(0, (steps, batch))
        codes = None if codes is None else codes.flatten(0, 1)
        return mark_spikes(s, spike_scale(pool), codes, block), None


FUSED = Fused()


def pool_channels_last(x: torch.Tensor, pool) -> torch.Tensor:
    """pool(x) for a channels-last x, as a mean over k x k windows of the NHWC view.

    Same values as avg_pool2d (on spike maps, exactly: sums of 0s and 1s, divided by k * k),
    but its backward is one broadcast copy instead of avg_pool2d's channels-last backward, which
    took 13.5 ms of a 71 ms VGG9 training step on an H100 (docs/fast-engine.md), and it saves
    nothing for the backward where avg_pool2d keeps its whole input. Other pools run as they are.
    """
    k = pool_size(pool)
    n, c, h, w = x.shape if x.dim() == 4 else (0, 0, 0, 0)
    if k is None or h % k or w % k or not x.is_contiguous(memory_format=torch.channels_last):
        return pool(x)
    nhwc = x.permute(0, 2, 3, 1).reshape(n, h // k, k, w // k, k, c)
    return nhwc.mean(dim=(2, 4)).permute(0, 3, 1, 2)


def pool_size(pool) -> int | None:
    """k, where `pool` averages k x k windows that tile the map (nn.AvgPool2d(k)); else None."""
    k = pool.kernel_size if isinstance(pool, nn.AvgPool2d) else None
    if (not isinstance(k, int) or pool.stride not in (k, (k, k))
            or pool.padding not in (0, (0, 0)) or pool.divisor_override is not None):
        return None
    return k


def spike_scale(pool) -> int | None:
    """What the spike map after `pool` must be multiplied by to be integral (None: unknown)."""
    if pool is None:
        return 1
    k = pool_size(pool)
    return k * k if k is not None and k * k <= 127 else None


class SpikeConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, scale: int, stride, padding, dilation, groups, codes=None):
        y = F.conv2d(x, weight, None, stride, padding, dilation, groups)  # autocast applies here
        if codes is None:
            codes = (x if scale == 1 else x * scale).to(torch.int8)
        ctx.save_for_backward(codes, weight)
        ctx.settings = (scale, stride, padding, dilation, groups, x.dtype, y.dtype)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        codes, weight = ctx.saved_tensors
        scale, stride, padding, dilation, groups, x_dtype, dtype = ctx.settings
        x = codes.to(dtype)
        if scale != 1:
            x = x * (1.0 / scale)  # exact: k / scale with scale a power of two
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_y.to(dtype), x, weight.to(dtype), None, stride, padding, dilation, False,
            [0] * len(stride), groups, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return (grad_x.to(x_dtype) if grad_x is not None else None,
                grad_w.to(weight.dtype) if grad_w is not None else None,
                None, None, None, None, None, None)


def spike_conv(conv: nn.Conv2d, x: torch.Tensor, scale: int,
               codes: torch.Tensor | None = None) -> torch.Tensor:
    """conv(x) for a spike map x whose values times `scale` are integers in [-128, 127];
    `codes`, where given, are those integers as int8 (made with x), kept instead of a cast."""
    if (not torch.is_grad_enabled() or conv.bias is not None or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str)):
        return conv(x)  # nothing to save (inference), or a conv this function does not cover
    return SpikeConv2d.apply(x, conv.weight, scale, conv.stride, conv.padding, conv.dilation,
                             conv.groups, codes)
