"""Two ways to run the same spiking network over T time steps.

Both take a model exposing `spiking_layers()` -> [(synapse, bntt, pool or None), ...],
`neuron` (the LIFNeuron) and `readout` (the non-spiking last Linear), and an input spike train
[T, B, ...]. Both return the readout's input current at every step, [T, B, classes]; the logits
are their sum over steps divided by T.

- `reference`: the authors' order, a Python loop over time and, inside it, over layers.
- `multistep`: layer by layer over all steps at once. A layer at step t only depends on the
  layer below at step t and on its own state, so each convolution runs once over the [T*B]
  stack and only the neuron scans over time.
"""
from __future__ import annotations

import torch
import torch.nn as nn

ENGINES = ("reference", "multistep")


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


def run_multistep(model, spikes: torch.Tensor) -> torch.Tensor:
    steps, batch = spikes.shape[:2]
    x = spikes.flatten(0, 1)
    for synapse, bntt, pool in model.spiking_layers():
        z = synapse(_synapse_input(x, synapse))
        x = bntt_lif(z.unflatten(0, (steps, batch)), bntt, model.neuron).flatten(0, 1)
        if pool is not None:
            x = pool(x)
    return model.readout(x).unflatten(0, (steps, batch))


def run(engine: str, model, spikes: torch.Tensor) -> torch.Tensor:
    if engine == "reference":
        return run_reference(model, spikes)
    if engine == "multistep":
        return run_multistep(model, spikes)
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
