"""SpikeConv2d: a conv over spike maps that saves its input as int8 computes exactly what
nn.Conv2d computes, forward and backward, and really saves one byte per input value."""
import pytest
import torch
import torch.nn as nn

from bntt.fused.engine import spike_conv


def spike_map(kind, shape, generator):
    if kind == "signed":  # Poisson input spikes
        return torch.randint(-1, 2, shape, generator=generator).double()
    if kind == "binary":  # LIF spikes
        return torch.randint(0, 2, shape, generator=generator).double()
    return torch.randint(0, 5, shape, generator=generator).double() / 4  # 2x2-pooled spikes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind,scale", [("signed", 1), ("binary", 1), ("pooled", 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_values_and_gradients_as_conv2d(kind, scale, dtype, channels_last):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=False).to(dtype)
    x = spike_map(kind, (6, 5, 8, 8), g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        conv = conv.to(memory_format=torch.channels_last)
    weights = torch.randn(6, 7, 8, 8, generator=g).to(dtype)

    x1 = x.clone().requires_grad_()
    y1 = conv(x1)
    (y1 * weights).sum().backward()
    grad_w1, conv.weight.grad = conv.weight.grad.clone(), None

    saved = []
    x2 = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y2 = spike_conv(conv, x2, scale)
    (y2 * weights).sum().backward()

    assert torch.equal(y1, y2)
    assert torch.equal(x1.grad, x2.grad)
    assert torch.equal(grad_w1, conv.weight.grad)
    saved_inputs = [t for t in saved if t.shape == x.shape]
    assert [t.dtype for t in saved_inputs] == [torch.int8]


def test_given_codes_are_what_it_keeps():
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(4, 3, 3, padding=1, bias=False)
    x = spike_map("binary", (2, 4, 6, 6), g)
    x = x.float().contiguous(memory_format=torch.channels_last)
    codes = x.to(torch.int8)
    saved = []
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = spike_conv(conv, x1, 1, codes)
    y.sum().backward()
    grad_w, conv.weight.grad = conv.weight.grad.clone(), None
    spike_conv(conv, x2, 1).sum().backward()
    assert any(t is codes for t in saved)
    assert torch.equal(x1.grad, x2.grad) and torch.equal(grad_w, conv.weight.grad)
