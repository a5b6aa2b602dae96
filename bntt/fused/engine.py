"""A convolution over spikes that keeps its input for the backward pass in one byte.

The input of every conv in these networks is a spike map: input spikes in {-1, 0, 1}, LIF
spikes in {0, 1}, or 2x2-average-pooled spikes in {0, 1/4, 1/2, 3/4, 1}. Multiplied by
`scale` (1 or 4) they are small integers, so an int8 copy rebuilds the input exactly: the
weight gradient is computed from the same values by the same kernel as nn.Conv2d's own
backward, at half the memory of a bf16 copy (a quarter of float32).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SpikeConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, scale: int, stride, padding, dilation, groups):
        y = F.conv2d(x, weight, None, stride, padding, dilation, groups)  # autocast applies here
        ctx.save_for_backward((x if scale == 1 else x * scale).to(torch.int8), weight)
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
                None, None, None, None, None)


def spike_conv(conv: nn.Conv2d, x: torch.Tensor, scale: int) -> torch.Tensor:
    """conv(x) for a spike map x whose values times `scale` are integers in [-128, 127]."""
    if (not torch.is_grad_enabled() or conv.bias is not None or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str)):
        return conv(x)  # nothing to save (inference), or a conv this function does not cover
    return SpikeConv2d.apply(x, conv.weight, scale, conv.stride, conv.padding, conv.dilation,
                             conv.groups)
