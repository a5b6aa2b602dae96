"""Input perturbations in pixel space: Gaussian noise, FGSM and L-infinity PGD, for the ANN and
the SNN alike.

The networks take normalised images, (pixels - mean) / std per channel (bntt/data). The
perturbations are made on pixels in [0, 1], where an epsilon means the same for every channel
and dataset, and clipping to [0, 1] keeps the image an image: an attack is a function of
pixels, and `model_fn(pixels) -> logits` normalises before calling the network
(`ann_logits_fn`, `snn_logits_fn`). Both builders put the network in eval mode: the running
statistics of BatchNorm / BNTT are used, as at test time, and gradients still flow.

Gradients through the SNN. Inside the network they flow through the surrogate of the spike
function (backpropagation through time, docs/spec.md, Eq. 8), as in training. The Poisson
coder (Eq. 1) has no gradient: a pixel fires with probability min(1, |x| / 2), signed, so the
expected spike E[s_t] = x / 2 for |x| < 2 and sign(x) beyond. We differentiate it through that
expectation, as a straight-through estimator: the forward pass draws the spikes, the backward
pass gives dE[s_t]/dx = 1/2 for |x| < 2 and 0 outside, at every step (`poisson_spikes_st`).
The estimator preserves the sign of the gradient, which is all FGSM and PGD use.

The coder is random, so one gradient is that of one draw. An attack that ignores the randomness
overstates the SNN's robustness; expectation over transformation (`eot_samples=K`) averages the
input gradient over K independent Poisson draws. Scoring a perturbed image uses draws of its own
(the caller's generator), not those the attacker saw.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from bntt.coding import poisson_spikes
from bntt.paper import POISSON_RESCALE

ModelFn = Callable[[torch.Tensor], torch.Tensor]


# -- pixel space -----------------------------------------------------------------------------

def _per_channel(values) -> torch.Tensor:
    # float64, cast to the images' dtype when used: float64 images get the statistics unrounded
    return torch.as_tensor(values, dtype=torch.float64).view(-1, 1, 1)


def normaliser(mean, std) -> Callable[[torch.Tensor], torch.Tensor]:
    """pixels [B, C, H, W] in [0, 1] -> (pixels - mean) / std per channel: what the networks take."""
    mean, std = _per_channel(mean), _per_channel(std)

    def normalise(pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - mean.to(pixels)) / std.to(pixels)
    return normalise


def to_pixels(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised images (as the loaders serve them) -> pixels in [0, 1]."""
    mean, std = _per_channel(mean), _per_channel(std)
    return (images * std.to(images) + mean.to(images)).clamp(0.0, 1.0)


# -- the differentiable Poisson coder --------------------------------------------------------

class PoissonStraightThrough(torch.autograd.Function):
    """Poisson spikes in the forward pass; the gradient of their expectation in the backward."""

    @staticmethod
    def forward(ctx, x, num_steps, generator):
        ctx.save_for_backward(x)
        return poisson_spikes(x, num_steps, generator)

    @staticmethod
    def backward(ctx, grad_spikes):
        (x,) = ctx.saved_tensors
        slope = (x.abs() < POISSON_RESCALE).to(grad_spikes.dtype) / POISSON_RESCALE
        return grad_spikes.sum(0) * slope, None, None


def poisson_spikes_st(x: torch.Tensor, num_steps: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """bntt.coding.poisson_spikes (same draws from the same generator), differentiable: every
    step passes 1/2 of its gradient to x where |x| < 2 and none elsewhere."""
    return PoissonStraightThrough.apply(x, num_steps, generator)


# -- the networks as functions of pixels -----------------------------------------------------

def ann_logits_fn(model, normalise) -> ModelFn:
    """pixels -> logits of a non-spiking network (in eval mode)."""
    model.eval()
    return lambda pixels: model(normalise(pixels))


def snn_logits_fn(model, normalise, generator: torch.Generator | None = None) -> ModelFn:
    """pixels -> logits of a spiking network with Poisson input (in eval mode). Every call
    draws fresh spikes from `generator` through the straight-through coder, so gradients reach
    the pixels."""
    if getattr(model.encoder, "name", None) != "poisson":
        raise ValueError("attacks in pixel space need a network with Poisson-coded image input, "
                         f"not {getattr(model.encoder, 'name', model.encoder)!r}")
    model.eval()
    return lambda pixels: model.forward_spikes(
        poisson_spikes_st(normalise(pixels), model.num_steps, generator))


# -- perturbations ---------------------------------------------------------------------------

def gaussian_noise(pixels: torch.Tensor, sigma: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """pixels + N(0, sigma^2) per pixel, clipped to [0, 1]."""
    noise = torch.randn(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
    return (pixels + sigma * noise).clamp(0.0, 1.0)


def input_gradient(model_fn: ModelFn, pixels: torch.Tensor, labels: torch.Tensor,
                   eot_samples: int = 1) -> torch.Tensor:
    """Gradient of the cross-entropy (summed over the batch, so that each image's gradient does
    not shrink with the batch size) with respect to the pixels, averaged over `eot_samples`
    calls of model_fn (independent Poisson draws, for an SNN)."""
    if eot_samples < 1:
        raise ValueError(f"eot_samples must be >= 1, got {eot_samples}")
    total = torch.zeros_like(pixels)
    with torch.enable_grad():
        for _ in range(eot_samples):
            x = pixels.detach().requires_grad_(True)
            logits = model_fn(x)
            # bf16 logits (under autocast) are scored in float32; float64 ones stay so
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            loss = F.cross_entropy(logits, labels, reduction="sum")
            total += torch.autograd.grad(loss, x)[0]
    return total / eot_samples


def _project(x: torch.Tensor, pixels: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, pixels - eps), pixels + eps).clamp(0.0, 1.0)


def fgsm(model_fn: ModelFn, pixels: torch.Tensor, labels: torch.Tensor, eps: float,
         eot_samples: int = 1) -> torch.Tensor:
    """Fast gradient sign method: pixels + eps * sign(d loss / d pixels), clipped to [0, 1]."""
    grad = input_gradient(model_fn, pixels, labels, eot_samples)
    return (pixels + eps * grad.sign()).clamp(0.0, 1.0).detach()


def pgd(model_fn: ModelFn, pixels: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
        step_size: float, random_start: bool = False, generator: torch.Generator | None = None,
        eot_samples: int = 1) -> torch.Tensor:
    """L-infinity projected gradient descent (ascent on the loss): `steps` signed-gradient steps
    of `step_size`, each followed by the projection onto the eps-ball around `pixels` and onto
    [0, 1]. `random_start` begins at a uniform point of the ball (drawn from `generator`).
    One step of size eps without random start is FGSM, to the bit."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    pixels = pixels.detach()
    x = pixels
    if random_start:
        u = torch.rand(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
        x = _project(pixels + (2 * u - 1) * eps, pixels, eps)
    for _ in range(steps):
        grad = input_gradient(model_fn, x, labels, eot_samples)
        x = _project(x + step_size * grad.sign(), pixels, eps)
    return x.detach()
