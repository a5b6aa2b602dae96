"""The multi-step engine computes what the per-step reference engine computes, given the same
input spike train: logits, every parameter gradient and the BNTT running statistics."""
import copy

import pytest
import torch

from bntt.coding import poisson_spikes
from helpers import small_model

TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def run(model, spikes, weights):
    out = model.forward_spikes(spikes)
    (out * weights).sum().backward()
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("steps", [1, 4, 7])
@pytest.mark.parametrize("arch", ["vgg9", "vgg11"])
def test_multistep_equals_reference(arch, steps, training, dtype):
    reference = small_model(arch, steps, dtype, engine="reference").train(training)
    multistep = copy.deepcopy(reference)
    multistep.engine = "multistep"
    g = torch.Generator().manual_seed(steps)
    images = torch.randn(4, 3, 16, 16, dtype=dtype, generator=g) * 1.5
    spikes = poisson_spikes(images, steps, generator=g)
    weights = torch.randn(4, 10, dtype=dtype, generator=g)

    out_ref = run(reference, spikes, weights)
    out_fast = run(multistep, spikes, weights)

    tol = TOLERANCE[dtype]
    assert out_ref.abs().max() > 0.05  # spikes reach the readout
    torch.testing.assert_close(out_fast, out_ref, **tol)
    for (name, p_ref), (_, p_fast) in zip(reference.named_parameters(), multistep.named_parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, **tol, msg=name)
    for (name, b_ref), (_, b_fast) in zip(reference.named_buffers(), multistep.named_buffers()):
        torch.testing.assert_close(b_fast, b_ref, **tol, msg=name)
