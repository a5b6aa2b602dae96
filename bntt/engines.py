"""Ways to run the same spiking network over T time steps.

Each takes a model exposing `spiking_layers()` -> [(synapse, bntt, pool or None), ...],
`neuron` (the LIFNeuron) and `readout` (the non-spiking last Linear), and an input spike train
[T, B, ...], and returns the readout's input current at every step, [T, B, classes]; the logits
are their sum over steps divided by T (docs/spec.md, Eq. 10).

- `reference`: the authors' order, a Python loop over time and, inside it, over layers.
- `multistep`: layer by layer over all steps at once. A layer at step t only depends on the
  layer below at step t and on its own state, so each convolution runs once over the [T*B]
  stack, BNTT normalises all steps in one call, and only the neuron scans over time.
- `fused`: `multistep` with BNTT + LIF as one Triton kernel each way, channels-last maps and
  int8-saving convolutions (bntt/fused/). CUDA only (or the Triton interpreter, for tests).
- `auto`: `fused` on CUDA when Triton is available, else `multistep`.

All of them compute the same function (tests/test_engines.py, tests/test_fused.py). A model
chooses its engine with `model.set_engine(name)`, which also prepares its memory format.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bntt.names import check_name

ENGINES = ("auto", "reference", "multistep", "fused")


def synapse_input(x: torch.Tensor, synapse: nn.Module) -> torch.Tensor:
    # The spike maps of the last conv block are flattened (C, H, W order) for the hidden FC.
    return x.flatten(1) if isinstance(synapse, nn.Linear) else x


def run_reference(model, spikes: torch.Tensor) -> torch.Tensor:
    layers = list(model.spiking_layers())
    membranes = [None] * len(layers)
    currents = []
    for t in range(spikes.shape[0]):
        x = spikes[t]
        for i, (synapse, bntt, pool) in enumerate(layers):
            z = bntt(synapse(synapse_input(x, synapse)), t)
            x, membranes[i] = model.neuron.step(z, membranes[i])
            if pool is not None:
                x = pool(x)
        currents.append(model.readout(x))
    return torch.stack(currents)


def run_multistep(model, spikes: torch.Tensor, observe=None) -> torch.Tensor:
    """`observe(i, inputs, spikes)`, if given, sees what layer i receives ([T, B, ...], after
    the pool below it) and the spikes it emits; the readout is layer len(layers), with spikes
    None. The analyses count spikes and synaptic operations through it."""
    steps, batch = spikes.shape[:2]
    x = spikes.flatten(0, 1)
    layers = list(model.spiking_layers())
    for i, (synapse, bntt, pool) in enumerate(layers):
        x = synapse_input(x, synapse)
        z = synapse(x).unflatten(0, (steps, batch))
        s = model.neuron(bntt(z))
        if observe is not None:
            observe(i, x.unflatten(0, (steps, batch)), s)
        x = s.flatten(0, 1)
        if pool is not None:
            x = pool(x)
    if observe is not None:
        observe(len(layers), x.unflatten(0, (steps, batch)), None)
    return model.readout(x).unflatten(0, (steps, batch))


def resolve(engine: str, like: torch.Tensor, num_steps: int = 1) -> str:
    """The engine that will run `num_steps` steps on tensors like `like`: `auto` becomes `fused`
    or `multistep`; `fused` where it cannot run is an error that says what it needs."""
    from bntt import fused  # imported here: bntt.fused imports this module

    check_name("engine", engine, ENGINES)
    fits = num_steps <= fused.MAX_STEPS
    if engine == "auto":
        return "fused" if like.is_cuda and fused.available(like) and fits else "multistep"
    if engine == "fused" and not fused.available(like):
        raise RuntimeError("the fused engine needs a CUDA device and Triton "
                           "(or TRITON_INTERPRET=1 to run its kernels on the CPU, slowly)")
    if engine == "fused" and not fits:
        raise RuntimeError(f"the fused kernels handle at most {fused.MAX_STEPS} time steps, "
                           f"not {num_steps}")
    return engine


def run(engine: str, model, spikes: torch.Tensor) -> torch.Tensor:
    engine = resolve(engine, spikes, spikes.shape[0])
    if engine == "reference":
        return run_reference(model, spikes)
    if engine == "fused":
        from bntt.fused import run_fused
        return run_fused(model, spikes)
    return run_multistep(model, spikes)
