"""How a sample becomes the network's input at each of the T steps.

The paper's coding, for images: a normalised image becomes signed Poisson spike trains
(docs/spec.md, Eq. 1):

    s_t = sign(x) * 1[2 * U_t <= |x|],   U_t ~ Uniform[0, 1) per element, fresh at every step

so a pixel fires with probability min(1, |x| / 2), in training and in evaluation alike.

Each network holds one encoder, chosen by the dataset (docs/spec.md, section 6):
- `PoissonEncoder`: images, Eq. 1 (the paper's CIFAR networks);
- `FrameEncoder`: event-camera frames [B, T, ...] that are spikes already (CIFAR10-DVS);
- `SequenceEncoder`: an image read as a sequence, row by row or pixel by pixel (Sequential
  MNIST), fed as input currents ("direct") or as spikes that fire with the pixel's intensity.
An encoder maps a batch to the input train [T, B, ...] and holds no parameters; `shard` says
where the batch lies in a global batch split across processes (see `poisson_spikes`).
"""
from __future__ import annotations

import torch

from bntt.paper import POISSON_RESCALE


def poisson_spikes(x: torch.Tensor, num_steps: int, generator: torch.Generator | None = None,
                   rescale: float = POISSON_RESCALE, shard: tuple[int, int] | None = None,
                   batch_dim: int = 0) -> torch.Tensor:
    """Signed spike train [num_steps, *x.shape] with values in {-1, 0, +1}, in x's dtype
    (docs/spec.md, Eq. 1).

    At every step, independently: spike = sign(x) if rescale * U <= |x| with U ~ Uniform[0, 1),
    else 0 (the authors' comparison, so |x| >= 2 always fires and x = 0 never does). Pass a
    `generator` (on x's device) to make the draws reproducible without touching the global RNG.
    `rescale` = 1 makes a value in [0, 1] fire with probability equal to it.

    `shard` = (offset, total): x holds samples offset.. of a global batch of `total` along
    `batch_dim`. The uniforms of the whole global batch are drawn and this share kept, so
    every sample gets the spikes it would get in one process (bntt/seeding.py).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    shape = [num_steps, *x.shape]
    if shard is not None:
        shape[batch_dim + 1] = shard[1]
    u = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
    if shard is not None:
        u = u.narrow(batch_dim + 1, shard[0], x.shape[batch_dim])
    fires = rescale * u <= x.abs()
    return torch.where(fires, x.sign(), torch.zeros((), dtype=x.dtype, device=x.device))


class PoissonEncoder:
    """Images [B, ...] -> signed Poisson spikes [T, B, ...] (Eq. 1)."""

    name = "poisson"
    spike_scale = 1  # its spikes are integers (-1, 0, 1): bntt.blocks.mark_spikes

    def __call__(self, x, num_steps, generator=None, shard=None):
        return poisson_spikes(x, num_steps, generator, shard=shard)


class FrameEncoder:
    """Event frames [B, T, ...], spikes already -> [T, B, ...]; a network of fewer steps than
    the recording sees its first frames."""

    name = "frames"

    def __call__(self, x, num_steps, generator=None, shard=None):
        if x.shape[1] < num_steps:
            raise ValueError(f"{num_steps} steps need as many frames, got {x.shape[1]}")
        return x.transpose(0, 1)[:num_steps]


class SequenceEncoder:
    """Images [B, 1, H, W] read as a sequence: row by row ([H, B, W]: one row of W inputs per
    step) or pixel by pixel ([H*W, B, 1]). "direct" coding feeds the intensities (in [0, 1]) as
    input currents; "poisson" as spikes that fire with the intensity's probability, fresh draws
    at every step."""

    name = "sequence"

    def __init__(self, order: str = "rows", coding: str = "direct"):
        if order not in SEQUENCE_ORDERS or coding not in SEQUENCE_CODINGS:
            raise ValueError(f"sequence order must be one of {SEQUENCE_ORDERS} and coding one of "
                             f"{SEQUENCE_CODINGS}, got {order!r}, {coding!r}")
        self.order, self.coding = order, coding

    def steps(self, height: int, width: int) -> int:
        return height if self.order == "rows" else height * width

    def features(self, width: int) -> int:
        return width if self.order == "rows" else 1

    def __call__(self, x, num_steps, generator=None, shard=None):
        batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        if self.order == "rows":
            seq = x.reshape(batch, height, width).transpose(0, 1)
        else:
            seq = x.reshape(batch, height * width).transpose(0, 1).unsqueeze(-1)
        seq = seq[:num_steps]
        if self.coding == "poisson":
            return poisson_spikes(seq, 1, generator, rescale=1.0, shard=shard, batch_dim=1)[0]
        return seq


SEQUENCE_ORDERS = ("rows", "pixels")
SEQUENCE_CODINGS = ("direct", "poisson")
