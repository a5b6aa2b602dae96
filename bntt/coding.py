"""Rate coding of a normalised image into signed Poisson spike trains (docs/spec.md, Eq. 1):

    s_t = sign(x) * 1[2 * U_t <= |x|],   U_t ~ Uniform[0, 1) per element, fresh at every step

so a pixel fires with probability min(1, |x| / 2), in training and in evaluation alike.
"""
from __future__ import annotations

import torch

from bntt.paper import POISSON_RESCALE


def poisson_spikes(x: torch.Tensor, num_steps: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Signed spike train [num_steps, *x.shape] with values in {-1, 0, +1}, in x's dtype
    (docs/spec.md, Eq. 1).

    At every step, independently: spike = sign(x) if POISSON_RESCALE * U <= |x| with
    U ~ Uniform[0, 1), else 0 (the authors' comparison, so |x| >= 2 always fires and x = 0 never
    does). Pass a `generator` (on x's device) to make the draws reproducible without touching
    the global RNG.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    u = torch.rand((num_steps, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    fires = POISSON_RESCALE * u <= x.abs()
    return torch.where(fires, x.sign(), torch.zeros((), dtype=x.dtype, device=x.device))
