"""The fused engine's pool of channels-last spike maps is avg_pool2d's, to the bit. That every
backend computes what the reference computes (logits, gradients, running statistics):
tests/test_equivalence.py."""
import pytest
import torch



@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_channels_last_pool_is_avg_pool2d_to_the_bit(dtype):
    from torch import nn

    from bntt.fused.engine import pool_channels_last
    g = torch.Generator().manual_seed(3)
    pool = nn.AvgPool2d(2)
    for shape in [(6, 8, 12, 16), (3, 5, 7, 9)]:  # the second has odd sizes: avg_pool2d itself
        x = (torch.rand(shape, generator=g) > 0.7).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn(pool(x).shape, generator=g).to(dtype)
        y, y0 = pool_channels_last(x, pool), pool(x)
        assert y.shape == y0.shape and torch.equal(y, y0)
        assert torch.equal(*(torch.autograd.grad(out, x, grad)[0] for out in (y, y0)))
    spikes = (torch.rand(4, 8, 16, 16, generator=g) > 0.5).to(dtype)  # pooled sums of 0s and 1s
    y = pool_channels_last(spikes.contiguous(memory_format=torch.channels_last), pool)
    assert torch.equal(y * 4, (y * 4).round()) and torch.equal(y, pool(spikes))
