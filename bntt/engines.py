"""Ways to run the same spiking network over T time steps.

Each takes a model exposing `spiking_layers()` -> [(synapse, bntt, pool or None), ...],
`neuron` (the LIFNeuron) and `readout` (the non-spiking last Linear), and an input spike train
[T, B, ...], and returns the readout's input current at every step, [T, B, classes]; the logits
are their sum over steps divided by T (docs/spec.md, Eq. 10).

- `reference`: the authors' order, a Python loop over time and, inside it, over layers.
- `multistep`: layer by layer over all steps at once. A layer at step t only depends on the
  layer below at step t and on its own state, so each convolution runs once over the [T*B]
  stack, BNTT normalises all steps in one call, and only the neuron scans over time.
- `cpu`: `multistep` laid out for a CPU. The convolutions run on channels-last stacks of
  about CHUNK_IMAGES images (a few steps at a time), one copy per layer lays the steps out so
  that BNTT's stack of steps is a channels-last view (where batch_norm is fastest), and the
  neuron is one autograd node for all steps (`bntt.neuron.lif_scan`). When one layer's stack
  of all T steps would pass STACK_BYTES, it runs the `reference` loop instead: stacks that
  size leave the cache and the allocator hands out fresh pages for them at every step, and
  the per-step loop was measured faster there (docs/speed.md, section CPU).
- `fused`: `multistep` with BNTT + LIF as one Triton kernel each way, channels-last maps and
  int8-saving convolutions (bntt/fused/). CUDA only (or the Triton interpreter, for tests).
- `auto`: `fused` on CUDA when Triton is available and T fits its kernels; `cpu` on a CPU,
  where it was measured fastest (2-core x86 CPU, 2 threads, VGG9 training against
  `reference`: `cpu` 1.18x and `multistep` 1.02x at T=4, batch 16; `cpu`, running the
  reference loop there, 0.98x and `multistep` 0.71x at T=25, batch 32: docs/speed.md, CPU);
  `multistep` on other devices.

All of them compute the same function (tests/test_engines.py, tests/test_fused.py,
tests/test_cpu_engine.py). A model chooses its engine with `model.set_engine(name)`, which also
prepares its memory format.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bntt.names import check_name
from bntt.neuron import lif_scan
from bntt.norms import TDBN

ENGINES = ("auto", "reference", "multistep", "cpu", "fused")
CHUNK_IMAGES = 64  # images per convolution call of the cpu engine
# The cpu engine's limit on one layer's stack of all steps. Measured on a 2-core x86 CPU with
# 2 threads, VGG9 training against the reference loop: 1.14x at 34 MB (T=8, batch 16), 1.08x
# at 67 MB (T=8, batch 32), 1.05x at 101 MB (T=12, batch 32), 1.03x at 105 MB (T=25, batch 16),
# 0.83x at 210 MB (T=25, batch 32); with 1 thread the two were even at 67 MB.
STACK_BYTES = 96 * 2**20


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


def chunk_steps(steps: int, batch: int) -> int:
    """How many time steps the cpu engine convolves in one call: about CHUNK_IMAGES images."""
    return max(1, min(steps, round(CHUNK_IMAGES / batch)))


def stack_bytes(model, spikes: torch.Tensor) -> int:
    """Bytes of the largest stack of one layer's maps over all steps, [T, B, C, H, W] (at
    least float32: BNTT normalises in float32 under bf16 autocast)."""
    steps, batch = spikes.shape[:2]
    size = max(spikes.element_size(), 4)
    return max(steps * batch * channels * (side * side if side else 1) * size
               for channels, side in model.neuron_shapes)


def _steps_last(out: torch.Tensor, batch: int) -> torch.Tensor:
    """Channels-last conv output [n * B, C, H, W] (n steps) -> its [B, H, W, n, C] view."""
    return out.permute(0, 2, 3, 1).unflatten(0, (-1, batch)).permute(1, 2, 3, 0, 4)


def run_cpu(model, spikes: torch.Tensor) -> torch.Tensor:
    steps, batch = spikes.shape[:2]
    layers = list(model.spiking_layers())
    # tdBN trains on the statistics of all steps at once, which the reference loop cannot do
    tdbn = model.training and any(isinstance(norm, TDBN) for _, norm, _ in layers)
    if stack_bytes(model, spikes) > STACK_BYTES and not tdbn:
        return run_reference(model, spikes)
    chunk = chunk_steps(steps, batch)
    leak, threshold = model.neuron.leak, model.neuron.threshold
    if spikes.dim() == 5:  # maps: channels-last [k * B, C, H, W] stacks of k steps each
        x = spikes.flatten(0, 1).contiguous(memory_format=torch.channels_last).split(chunk * batch)
    else:  # vectors: batch-major [B * T, F]
        x = spikes.transpose(0, 1).flatten(0, 1)
    below = None  # the pool after the layer below, applied where its spikes are used
    for synapse, norm, pool in layers:
        if isinstance(synapse, nn.Conv2d):
            outs = [synapse(below(x_k) if below else x_k) for x_k in x]
            # [B, H, W, T, C] memory: BNTT's [B, T * C, H, W] stack is then a channels-last view
            z = torch.cat([_steps_last(out, batch) for out in outs], dim=3).permute(3, 0, 4, 1, 2)
            x = lif_scan(norm(z), leak, threshold, torch.channels_last, chunk)
        else:
            if isinstance(x, tuple):  # the last maps: pooled, flattened in (C, H, W) order
                x = torch.cat([below(x_k) if below else x_k for x_k in x])
                x = x.unflatten(0, (steps, batch)).transpose(0, 1).flatten(2).flatten(0, 1)
            # batch-major rows: BNTT's stack of steps [B, T * F] is then a view
            z = synapse(x).unflatten(0, (batch, steps)).transpose(0, 1)
            x = lif_scan(norm(z), leak, threshold).transpose(0, 1).flatten(0, 1)
        below = pool
    return model.readout(x).unflatten(0, (batch, steps)).transpose(0, 1)


def resolve(engine: str, like: torch.Tensor, num_steps: int = 1) -> str:
    """The engine that will run `num_steps` steps on tensors like `like`: `auto` becomes `fused`,
    `cpu` or `multistep`; `fused` where it cannot run is an error that says what it needs."""
    from bntt import fused  # imported here: bntt.fused imports this module

    check_name("engine", engine, ENGINES)
    fits = num_steps <= fused.MAX_STEPS
    if engine == "auto":
        if like.is_cuda and fused.available(like) and fits:
            return "fused"
        return "cpu" if like.device.type == "cpu" else "multistep"
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
    if engine == "cpu":
        return run_cpu(model, spikes)
    return run_multistep(model, spikes)
