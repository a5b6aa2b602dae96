"""Ways to run the same spiking network over T time steps.

Each takes a model exposing `spiking_layers()` -> [(synapse, bntt, pool or None), ...],
`neuron` (the LIFNeuron) and `readout` (the non-spiking last Linear), and an input spike train
[T, B, ...], and returns the readout's input current at every step, [T, B, classes]; the logits
are their sum over steps divided by T.

- `reference`: the authors' order, a Python loop over time and, inside it, over layers.
- `multistep`: layer by layer over all steps at once. A layer at step t only depends on the
  layer below at step t and on its own state, so each convolution runs once over the [T*B]
  stack, BNTT normalises all steps in one call, and only the neuron scans over time.
- `fused`: `multistep` with BNTT + LIF as one Triton kernel each way (bntt/fused.py) and
  channels-last convolutions. CUDA only (or the Triton interpreter, for tests).
- `auto`: `fused` on CUDA when Triton is available, else `multistep`.

All of them compute the same function (tests/test_engines.py, tests/test_fused.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bntt import fused as fused_kernels
from bntt.compact import spike_conv

ENGINES = ("auto", "reference", "multistep", "fused")


def _synapse_input(x: torch.Tensor, synapse: nn.Module) -> torch.Tensor:
    # The spike maps of the last conv block are flattened (C, H, W order) for the hidden FC.
    return x.flatten(1) if isinstance(synapse, nn.Linear) else x


def run_reference(model, spikes: torch.Tensor) -> torch.Tensor:
    layers = list(model.spiking_layers())
    membranes = [None] * len(layers)
    currents = []
    for t in range(spikes.shape[0]):
        x = spikes[t]
        for i, (synapse, bntt, pool) in enumerate(layers):
            z = bntt(synapse(_synapse_input(x, synapse)), t)
            x, membranes[i] = model.neuron.step(z, membranes[i])
            if pool is not None:
                x = pool(x)
        currents.append(model.readout(x))
    return torch.stack(currents)


def bntt_lif(z: torch.Tensor, bntt, neuron) -> torch.Tensor:
    """BNTT then LIF over a whole [T, B, ...] stack of pre-activations; returns the spike train."""
    return neuron(bntt(z))


def run_multistep(model, spikes: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """With fused=True: channels-last maps, the fused BNTT + LIF kernels, and convolutions that
    keep their spike input for the backward as int8 (bntt/compact.py)."""
    steps, batch = spikes.shape[:2]
    x = spikes.flatten(0, 1)
    if fused and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    layer = fused_kernels.bntt_lif if fused else bntt_lif
    scale = 1  # x * scale is integral: spikes (1), or k x k average-pooled spikes (k * k)
    for synapse, bntt, pool in model.spiking_layers():
        if fused and scale and isinstance(synapse, nn.Conv2d):
            z = spike_conv(synapse, x, scale)
        else:
            z = synapse(_synapse_input(x, synapse))
        x = layer(z.unflatten(0, (steps, batch)), bntt, model.neuron).flatten(0, 1)
        if pool is not None:
            x = _pool_channels_last(x, pool) if fused else pool(x)
        scale = _spike_scale(pool)
    return model.readout(x).unflatten(0, (steps, batch))


def _pool_channels_last(x: torch.Tensor, pool) -> torch.Tensor:
    """pool(x) for a channels-last x, as a mean over k x k windows of the NHWC view.

    Same values as avg_pool2d (on spike maps, exactly: sums of 0s and 1s, divided by k * k),
    but its backward is one broadcast copy instead of avg_pool2d's channels-last backward, which
    took 4.5 ms of a 71 ms VGG9 step on an H100 (docs/fast-engine.md), and it saves nothing for
    the backward where avg_pool2d keeps its whole input.
    """
    k = pool.kernel_size if isinstance(pool, nn.AvgPool2d) else None
    n, c, h, w = x.shape if x.dim() == 4 else (0, 0, 0, 0)
    if (not isinstance(k, int) or pool.stride not in (k, (k, k)) or pool.padding not in (0, (0, 0))
            or h % k or w % k or not x.is_contiguous(memory_format=torch.channels_last)):
        return pool(x)
    nhwc = x.permute(0, 2, 3, 1).reshape(n, h // k, k, w // k, k, c)
    return nhwc.mean(dim=(2, 4)).permute(0, 3, 1, 2)


def _spike_scale(pool) -> int | None:
    """What the spike map after `pool` must be multiplied by to be integral (None: unknown)."""
    if pool is None:
        return 1
    k = pool.kernel_size if isinstance(pool, nn.AvgPool2d) else None
    return k * k if isinstance(k, int) and pool.stride in (k, (k, k)) and k * k <= 127 else None


def resolve(engine: str, spikes: torch.Tensor) -> str:
    """The engine that will run: `auto` becomes `fused` or `multistep`."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "auto":
        return "fused" if spikes.is_cuda and fused_kernels.available(spikes) else "multistep"
    if engine == "fused" and not fused_kernels.available(spikes):
        raise RuntimeError("the fused engine needs a CUDA device and Triton "
                           "(or TRITON_INTERPRET=1 to run its kernels on the CPU, slowly)")
    return engine


def run(engine: str, model, spikes: torch.Tensor) -> torch.Tensor:
    engine = resolve(engine, spikes)
    if engine == "reference":
        return run_reference(model, spikes)
    return run_multistep(model, spikes, fused=engine == "fused")
