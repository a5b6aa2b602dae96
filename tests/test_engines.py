"""The multi-step engines compute what the per-step reference engine computes, given the same
input spike train: logits, every parameter gradient and the BNTT running statistics. Without
a GPU the fused engine's Triton kernels run in the Triton interpreter (tests/conftest.py). The
cpu engine's blocks of steps, norms and bf16: tests/test_cpu_engine.py."""
import copy

import pytest
import torch

from bntt.coding import poisson_spikes
from helpers import needs_triton_interpreter, small_model

RELATIVE = {torch.float64: 1e-10, torch.float32: 1e-5}


def assert_close_relative(actual, expected, rel, what):
    """max |actual - expected| <= rel * max |expected|: relative to the tensor's scale, so a
    float32 sum that lands a few ulps away from a near-zero element is not a failure, while a
    single flipped spike (an O(1) change) is."""
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= rel * scale, f"{what}: max error {error:.3g} > {rel:g} x {scale:.3g}"


def run(model, spikes, weights):
    out = model.forward_spikes(spikes)
    (out * weights).sum().backward()
    return out


def assert_same_run(fast, reference, spikes, weights, rel=1e-10):
    """Logits, every parameter gradient and every buffer (BNTT running statistics and step
    counts) of `fast` equal those of `reference` after one forward and backward."""
    out_ref, out = run(reference, spikes, weights), run(fast, spikes, weights)
    assert out_ref.abs().max() > 0.05  # spikes reach the readout
    assert_close_relative(out, out_ref, rel, "logits")
    for (name, p_ref), (_, p) in zip(reference.named_parameters(), fast.named_parameters()):
        assert p_ref.grad.abs().max() > 0, name
        assert_close_relative(p.grad, p_ref.grad, rel, f"grad of {name}")
    for (name, b_ref), (_, b) in zip(reference.named_buffers(), fast.named_buffers()):
        if b_ref.is_floating_point():
            assert_close_relative(b, b_ref, rel, name)
        else:
            assert torch.equal(b, b_ref), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("steps", [1, 4, 7])
@pytest.mark.parametrize("arch", ["vgg9", "vgg11"])
@pytest.mark.parametrize("engine", ["multistep", "cpu",
                                    pytest.param("fused", marks=needs_triton_interpreter)])
def test_engine_equals_reference(engine, arch, steps, training, dtype):
    reference = small_model(arch, steps, dtype, engine="reference").train(training)
    multistep = copy.deepcopy(reference)
    multistep.engine = engine
    g = torch.Generator().manual_seed(steps)
    images = torch.randn(4, 3, 16, 16, dtype=dtype, generator=g) * 1.5
    spikes = poisson_spikes(images, steps, generator=g)
    weights = torch.randn(4, 10, dtype=dtype, generator=g)

    assert_same_run(multistep, reference, spikes, weights, RELATIVE[dtype])


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
