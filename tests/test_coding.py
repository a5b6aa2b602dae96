"""Signed Poisson rate coding: firing probability min(1, |x|/2), sign of x, reproducibility."""
import math

import pytest
import torch

from bntt.coding import poisson_spikes


def test_firing_statistics():
    levels = torch.tensor([0.0, 0.2, 0.5, 1.0, 1.5, 1.99, 2.0, 3.0, -0.5, -1.0, -2.5])
    x = levels.repeat(20000, 1)
    spikes = poisson_spikes(x, num_steps=3, generator=torch.Generator().manual_seed(0))
    assert spikes.shape == (3, 20000, len(levels))
    assert set(spikes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    # each spike has the sign of its pixel; x = 0 never fires
    assert bool((spikes * torch.sign(levels) >= 0).all())
    assert spikes[..., 0].abs().sum() == 0
    rate = spikes.abs().mean(dim=(0, 1))
    expected = (levels.abs() / 2).clamp(max=1.0)
    n = 3 * 20000
    for r, p in zip(rate.tolist(), expected.tolist()):
        assert abs(r - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (r, p)
    assert rate[6] == 1.0 and rate[7] == 1.0 and rate[10] == 1.0  # |x| >= 2 always fires


def test_fresh_draw_every_step():
    x = torch.full((1, 10000), 1.0)
    spikes = poisson_spikes(x, num_steps=2, generator=torch.Generator().manual_seed(0))
    agreement = (spikes[0] == spikes[1]).float().mean()
    assert 0.45 < agreement < 0.55  # independent draws with p = 0.5 agree half the time


def test_generator_makes_draws_reproducible_and_dtype_follows_input():
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    a = poisson_spikes(x, 5, generator=torch.Generator().manual_seed(7))
    b = poisson_spikes(x, 5, generator=torch.Generator().manual_seed(7))
    c = poisson_spikes(x, 5, generator=torch.Generator().manual_seed(8))
    assert a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_num_steps_must_be_positive():
    with pytest.raises(ValueError, match="num_steps"):
        poisson_spikes(torch.zeros(2), 0)
