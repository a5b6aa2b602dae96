"""LIF neuron: integration, strict threshold, soft reset, surrogate values, detached reset."""
import pytest
import torch

from bntt.neuron import LIFNeuron, lif_step, spike_fn, surrogate_grad


def test_lif_trajectory_by_hand():
    neuron = LIFNeuron(leak=0.5, threshold=1.0)
    z = torch.tensor([0.6, 0.6, 0.6, 2.5, 0.0], dtype=torch.float64)
    u, spikes, membranes = None, [], []
    for z_t in z:
        s, u = neuron.step(z_t.reshape(1), u)
        spikes.append(float(s))
        membranes.append(float(u))
    # v: 0.6, 0.9, 1.05 (fires, u=0.05), 2.525 (fires, u=1.525), 0.7625
    assert spikes == [0.0, 0.0, 1.0, 1.0, 0.0]
    assert membranes == pytest.approx([0.6, 0.9, 0.05, 1.525, 0.7625], abs=1e-12)


def test_threshold_is_strict_and_reset_is_soft():
    s, u = lif_step(torch.tensor([1.0, 1.0 + 1e-6, 3.0]), None, leak=0.9, threshold=1.0)
    assert s.tolist() == [0.0, 1.0, 1.0]
    assert u.tolist() == pytest.approx([1.0, 1e-6, 2.0], abs=1e-6)  # subtract, not zero


def test_multistep_forward_equals_steps():
    neuron = LIFNeuron(leak=0.8, threshold=0.7)
    z = torch.randn(6, 3, 5, dtype=torch.float64)
    u, expected = None, []
    for t in range(6):
        s, u = neuron.step(z[t], u)
        expected.append(s)
    assert torch.equal(neuron(z), torch.stack(expected))


@pytest.mark.parametrize("threshold", [1.0, 2.0])
def test_surrogate_gradient_values(threshold):
    v = torch.tensor([-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0], dtype=torch.float64) * threshold
    v.requires_grad_()
    spike_fn(v, threshold).sum().backward()
    triangle = torch.tensor([0.0, 0.0, 0.5, 1.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    expected = 0.3 * triangle / threshold
    torch.testing.assert_close(v.grad, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(surrogate_grad(v.detach(), threshold), expected, rtol=0, atol=1e-15)


def test_reset_carries_no_gradient():
    # u_1 = v_1 - theta * s_1 with s_1 detached, so d u_1 / d z_1 = 1 even where the neuron
    # fired and the surrogate is non-zero; then d v_2 / d z_1 = leak.
    z1 = torch.tensor([1.2, 0.4], dtype=torch.float64, requires_grad=True)
    s1, u1 = lif_step(z1, None, leak=0.9, threshold=1.0)
    assert s1.tolist() == [1.0, 0.0]
    (grad,) = torch.autograd.grad(u1.sum(), z1)
    assert grad.tolist() == [1.0, 1.0]


def test_membrane_stays_float32_under_bf16_input():
    z = torch.randn(4, 3).to(torch.bfloat16)
    s, u = lif_step(z, None, leak=0.95)
    assert s.dtype == torch.bfloat16 and u.dtype == torch.float32
    s64, u64 = lif_step(z.double(), None, leak=0.95)
    assert s64.dtype == u64.dtype == torch.float64


def test_bad_parameters():
    with pytest.raises(ValueError, match="leak"):
        LIFNeuron(leak=1.5)
    with pytest.raises(ValueError, match="threshold"):
        LIFNeuron(threshold=0.0)
