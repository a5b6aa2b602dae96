"""BNTT: per-step batch statistics, per-step running statistics, gamma-only parameters,
the stacked all-steps form, 1d and 2d inputs."""
import pytest
import torch

from bntt import BNTT


def manual_bn(x, gamma, eps=1e-4):
    dims = [0] + list(range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean, var = x.mean(dims), x.var(dims, unbiased=False)
    return gamma.view(shape) * (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps), mean, x.var(dims)


def test_parameters_are_gamma_only():
    bn = BNTT(6, num_steps=4)
    assert [(n, tuple(p.shape)) for n, p in bn.named_parameters()] == [("weight", (4, 6))]
    assert torch.equal(bn.weight, torch.ones(4, 6))
    assert bn.eps == 1e-4 and bn.momentum == 0.1


@pytest.mark.parametrize("shape", [(8, 5), (8, 5, 3, 3)], ids=["1d", "2d"])
def test_step_uses_its_own_batch_statistics_and_gamma(shape):
    torch.manual_seed(0)
    bn = BNTT(5, num_steps=3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(3, 5) + 0.5)
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 2
    y = bn(x, 1)
    expected, mean, unbiased_var = manual_bn(x, bn.weight[1])
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    # only step 1's running statistics moved, by momentum 0.1 towards the batch's
    torch.testing.assert_close(bn.running_mean[1], 0.1 * mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(bn.running_var[1], 0.9 + 0.1 * unbiased_var, rtol=1e-12, atol=1e-14)
    for t in (0, 2):
        assert torch.equal(bn.running_mean[t], torch.zeros(5, dtype=torch.float64))
        assert torch.equal(bn.running_var[t], torch.ones(5, dtype=torch.float64))
    assert bn.num_batches_tracked.tolist() == [0, 1, 0]


def test_eval_uses_running_statistics_of_the_step():
    bn = BNTT(4, num_steps=2).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([[0.0] * 4, [1.0, 2.0, 3.0, 4.0]]))
        bn.running_var.copy_(torch.tensor([[1.0] * 4, [4.0] * 4]))
        bn.weight.copy_(torch.tensor([[1.0] * 4, [2.0] * 4]))
    x = torch.randn(3, 4, dtype=torch.float64)
    mean = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    expected = 2.0 * (x - mean) / torch.sqrt(torch.tensor(4.0 + 1e-4, dtype=torch.float64))
    torch.testing.assert_close(bn(x, 1), expected, rtol=1e-12, atol=1e-12)
    assert bn.num_batches_tracked.tolist() == [0, 0]


@pytest.mark.parametrize("training", [True, False])
def test_stacked_form_equals_each_step(training):
    torch.manual_seed(1)
    stacked, single = BNTT(5, 4).double(), BNTT(5, 4).double()
    with torch.no_grad():
        for bn in (stacked, single):
            bn.weight.copy_(torch.arange(20, dtype=torch.float64).view(4, 5) / 10 + 0.5)
            bn.running_var.fill_(2.0)
    stacked.train(training)
    single.train(training)
    x = torch.randn(3, 6, 5, 2, 2, dtype=torch.float64)  # 3 of the 4 steps
    y = stacked(x)
    expected = torch.stack([single(x[t], t) for t in range(3)])
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(stacked.buffers(), single.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradient_reaches_only_the_step_used():
    bn = BNTT(3, 4)
    bn(torch.randn(5, 3), 2).pow(2).sum().backward()
    assert bn.weight.grad[2].abs().sum() > 0
    assert bn.weight.grad[[0, 1, 3]].abs().sum() == 0


def test_state_dict_is_per_step_and_round_trips():
    bn = BNTT(3, 2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    sd = bn.state_dict()
    assert list(sd) == [f"{t}.{k}" for t in range(2)
                        for k in ("weight", "running_mean", "running_var", "num_batches_tracked")]
    assert sd["1.weight"].tolist() == [4.0, 5.0, 6.0] and sd["0.num_batches_tracked"].shape == ()
    other = BNTT(3, 2)
    other.load_state_dict(sd)
    assert torch.equal(other.weight, bn.weight)
    with pytest.raises(RuntimeError, match="Missing key"):
        BNTT(3, 3).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        BNTT(3, 1).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="size mismatch"):
        BNTT(4, 2).load_state_dict(sd)


def test_bad_inputs():
    bn = BNTT(3, 2)
    with pytest.raises(IndexError, match="time step 2"):
        bn(torch.randn(4, 3), 2)
    with pytest.raises(ValueError, match="3 channels"):
        bn(torch.randn(4, 5), 0)
    with pytest.raises(ValueError, match="stack of 3 steps"):
        bn(torch.randn(3, 4, 3))
