"""BNTT statistics over the global batch when several processes train one network (DDP).

Each process holds a share of the global batch. For BNTT to normalise step t with the mean and
variance of step t over the whole global batch (docs/spec.md, Eq. 3, with n the global count),
each layer exchanges per-(step, channel) sums once in the forward pass and once in the
backward pass, for all its steps together:

    forward:  every process has (n_r, mean_r, var_r) of its rows; with a shift K shared by all
              (the layer's running mean, which tracks the mean, so that no large numbers
              cancel), all_reduce the sums
                  n = sum n_r,   S1 = sum n_r (mean_r - K),   S2 = sum n_r (var_r + (mean_r - K)^2)
              then mean = K + S1 / n,  var = S2 / n - (S1 / n)^2.
    backward: dL/dmean and dL/dvar are sums over every process's rows: all_reduce them, then
              dL/da_i += dL/dmean / n + dL/dvar * 2 (a_i - mean) / n.

With the loss of each process scaled so that DDP's average of the gradients is the gradient of
the global batch's mean loss, this is exactly the one-process computation
(tests/test_distributed.py). The running statistics are updated from the global mean and
variance, so they stay identical on every process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def merge_moments(count, mean: torch.Tensor, var: torch.Tensor, shift: torch.Tensor, group):
    """(global count, mean, biased variance) from each process's (count, mean, var) [.., C]."""
    d = mean - shift
    packed = torch.cat([torch.full((1,), float(count), dtype=mean.dtype, device=mean.device),
                        (count * d).flatten(), (count * (var + d * d)).flatten()])
    dist.all_reduce(packed, group=group)
    n = packed[0]
    s1, s2 = packed[1:].view(2, *mean.shape)
    m1 = s1 / n
    return n, shift + m1, (s2 / n - m1 * m1).clamp_min(0)


def all_reduce_sum(tensors, group):
    """In-place sum over processes of same-dtype tensors, in one all_reduce."""
    packed = torch.cat([t.flatten() for t in tensors])
    dist.all_reduce(packed, group=group)
    out, at = [], 0
    for t in tensors:
        out.append(packed[at:at + t.numel()].view_as(t))
        at += t.numel()
    return out


class GlobalMoments(torch.autograd.Function):
    """(mean, var, n) of a [n, B, C, ...] stack per (step, channel), over the global batch."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, shift: torch.Tensor, group):
        dims = (1, *range(3, a.dim()))
        var, mean = torch.var_mean(a, dims, correction=0)
        count = a.numel() // (a.shape[0] * a.shape[2])
        n, mean, var = merge_moments(count, mean, var, shift, group)
        ctx.save_for_backward(a, mean, n)
        ctx.mark_non_differentiable(n)
        ctx.group = group
        return mean, var, n

    @staticmethod
    def backward(ctx, grad_mean, grad_var, _grad_n):
        a, mean, n = ctx.saved_tensors
        grad_mean, grad_var = all_reduce_sum([grad_mean.contiguous(), grad_var.contiguous()],
                                             ctx.group)
        view = (a.shape[0], 1, a.shape[2]) + (1,) * (a.dim() - 3)
        grad_a = (grad_mean.view(view) + 2.0 * grad_var.view(view) * (a - mean.view(view))) / n
        return grad_a, None, None


def global_moments(a: torch.Tensor, shift: torch.Tensor, group):
    return GlobalMoments.apply(a, shift.detach(), group)
