"""The cpu engine (bntt/engines.py) under bf16 autocast, against the reference engine under
autocast, and the LIF scan it runs (bntt/neuron.py) against lif_step. The cpu engine against
the reference in float64 and float32, for every network and norm, in stacks of steps:
tests/test_equivalence.py."""
import copy

import pytest
import torch

from bntt import engines
from bntt.coding import poisson_spikes
from bntt.neuron import lif_scan, lif_step, surrogate_grad
from bntt.paper import SURROGATE_SCALE
from helpers import assert_close_relative, small_model


def pair(model, engine="cpu"):
    fast = copy.deepcopy(model)
    fast.engine = engine
    model.engine = "reference"
    return fast, model


def image_spikes(steps, dtype=torch.float64, seed=0, batch=4, size=16):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, dtype=dtype, generator=g) * 1.5
    return poisson_spikes(images, steps, generator=g), torch.randn(batch, 10, dtype=dtype, generator=g)


@pytest.mark.parametrize("arch", ["vgg9", "vgg11"])
def test_bf16_autocast_equals_the_reference_under_autocast(arch, monkeypatch):
    """Under bf16 autocast the spikes are made in bf16 for the next convolution: the same values
    as the reference's float32 spikes cast by autocast there. What can differ is the order of
    float32 sums in the convolutions and BNTT's statistics: a rare spike flips."""
    monkeypatch.setattr(engines, "BLOCK_IMAGES", 8)  # 4 steps of batch 4 in blocks of 2
    assert_same_under_autocast(*pair(small_model(arch, 4, torch.float32).train()))


def assert_same_under_autocast(fast, reference):
    """Logits within 2% of the largest, each parameter gradient within 2% relative (norm)."""
    spikes, weights = image_spikes(4, torch.float32, seed=6)
    outs = []
    for model in (reference, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.forward_spikes(spikes)
        (out.float() * weights).sum().backward()
        outs.append(out.float())
    assert outs[0].abs().max() > 0.05
    assert (outs[1] - outs[0]).abs().max() <= 0.02 * outs[0].abs().max()
    for (name, p_ref), (_, p) in zip(reference.named_parameters(), fast.named_parameters()):
        assert p_ref.grad.abs().max() > 0, name
        err = (p.grad - p_ref.grad).norm() / p_ref.grad.norm()
        assert err < 0.02, (name, err)


def test_auto_is_the_cpu_engine_on_a_cpu():
    probe = torch.empty(0)
    assert engines.resolve("auto", probe, 25) == "cpu"
    model = small_model("vgg9", 2, torch.float32, engine="auto").set_engine("auto")
    assert engines.resolve(model.engine, next(model.parameters()), 2) == "cpu"


# -- the scan ----------------------------------------------------------------------------------


def steps_loop(z, leak, threshold):
    u, spikes = None, []
    for z_t in z.unbind(0):
        s, u = lif_step(z_t, u, leak, threshold)
        spikes.append(s)
    return torch.stack(spikes)


@pytest.mark.parametrize("threshold", [1.0, 0.7])
def test_scan_is_lif_step_over_time_forward_and_backward(threshold):
    g = torch.Generator().manual_seed(7)
    z = (torch.randn(9, 3, 4, 5, 6, dtype=torch.float64, generator=g) * 0.8 + 0.4)
    weights = torch.randn(z.shape, dtype=torch.float64, generator=g)
    grads = []
    for scan in (lambda z: steps_loop(z, 0.9, threshold), lambda z: lif_scan(z, 0.9, threshold)[0]):
        z_in = z.clone().requires_grad_()
        s = scan(z_in)
        (s * weights).sum().backward()
        grads.append((s.detach(), z_in.grad))
    (s_ref, g_ref), (s, g_scan) = grads
    assert 0.1 < s_ref.mean() < 0.6 and torch.equal(s, s_ref)
    assert g_ref.abs().max() > 0.1
    assert_close_relative(g_scan, g_ref, 1e-12, "dL/dz")


def test_scan_into_one_channels_last_stack_of_steps():
    g = torch.Generator().manual_seed(8)
    z = torch.randn(5, 2, 3, 4, 4, dtype=torch.float64, generator=g) + 0.5
    weights = torch.randn(z.shape, dtype=torch.float64, generator=g)
    z_in = z.clone().requires_grad_()
    stack, _ = lif_scan(z_in, 0.8, 1.0, memory_format=torch.channels_last)
    assert stack.shape == (10, 3, 4, 4) and stack.is_contiguous(memory_format=torch.channels_last)
    s = stack.unflatten(0, (5, 2))
    (s * weights).sum().backward()
    z_ref = z.clone().requires_grad_()
    s_ref = steps_loop(z_ref, 0.8, 1.0)
    (s_ref * weights).sum().backward()
    assert torch.equal(s, s_ref.detach())
    assert_close_relative(z_in.grad, z_ref.grad, 1e-12, "dL/dz")


def test_scan_keeps_a_float32_membrane_under_bf16():
    z = (torch.randn(6, 4, 8) * 0.7 + 0.5).to(torch.bfloat16)
    s, u = lif_scan(z, 0.95)
    assert s.dtype == torch.bfloat16 and torch.equal(s, steps_loop(z, 0.95, 1.0))
    assert u.dtype == torch.float32
    with torch.no_grad():  # without a backward nothing is kept, the spikes are the same
        assert torch.equal(lif_scan(z, 0.95)[0], s)
    assert torch.equal(lif_scan(z.float(), 0.95, spike_dtype=torch.bfloat16)[0], s)


def test_scan_in_two_pieces_is_the_scan_in_one():
    """The second piece starts from the membrane the first left; gradients cross the seam."""
    g = torch.Generator().manual_seed(9)
    z = torch.randn(7, 3, 5, dtype=torch.float64, generator=g) * 0.8 + 0.4
    weights = torch.randn(z.shape, dtype=torch.float64, generator=g)
    z_one, z_two = z.clone().requires_grad_(), z.clone().requires_grad_()
    s_one, u_one = lif_scan(z_one, 0.9)
    s_a, u_a = lif_scan(z_two[:4], 0.9)
    s_b, u_b = lif_scan(z_two[4:], 0.9, u0=u_a)
    s_two = torch.cat([s_a, s_b])
    assert torch.equal(s_two, s_one) and torch.equal(u_b, u_one)
    ((s_one * weights).sum() + u_one.sum()).backward()
    ((s_two * weights).sum() + u_b.sum()).backward()
    assert z_one.grad[:4].abs().max() > 0.1
    assert_close_relative(z_two.grad, z_one.grad, 1e-12, "dL/dz")
    # the pieces against lif_step, through the spikes alone
    z_ref, z_three = z.clone().requires_grad_(), z.clone().requires_grad_()
    (steps_loop(z_ref, 0.9, 1.0) * weights).sum().backward()
    s_a, u_a = lif_scan(z_three[:4], 0.9)
    s_b, _ = lif_scan(z_three[4:], 0.9, u0=u_a)
    (torch.cat([s_a, s_b]) * weights).sum().backward()
    assert_close_relative(z_three.grad, z_ref.grad, 1e-12, "dL/dz against lif_step")


@pytest.mark.parametrize("threshold", [1.0, 2.0])
def test_surrogate_in_place_is_the_formula_to_the_bit(threshold):
    v = torch.randn(1000, generator=torch.Generator().manual_seed(4)) * 2 * threshold
    expected = SURROGATE_SCALE * torch.relu(1.0 - (v / threshold - 1.0).abs()) / threshold
    assert (expected > 0).sum() > 100
    assert torch.equal(surrogate_grad(v, threshold), expected)
    assert torch.equal(surrogate_grad(v, threshold, out=torch.empty_like(v)), expected)
    w = v.clone()
    assert torch.equal(surrogate_grad(w, threshold, out=w), expected) and torch.equal(w, expected)
