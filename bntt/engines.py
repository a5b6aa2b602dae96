"""Ways to run the same spiking network over T time steps.

Each takes a model exposing `spiking_layers()` -> [(synapse, bntt, pool or None), ...],
`neuron` (the LIFNeuron) and `readout` (the non-spiking last Linear), and an input spike train
[T, B, ...], and returns the readout's input current at every step, [T, B, classes]; the logits
are their sum over steps divided by T (docs/spec.md, Eq. 10).

- `reference`: the authors' order, a Python loop over time and, inside it, over layers.
- `multistep`: layer by layer over all steps at once. A layer at step t only depends on the
  layer below at step t and on its own state, so each convolution runs once over the [T*B]
  stack, BNTT normalises all steps in one call, and only the neuron scans over time.
- `cpu`: `multistep` in blocks of steps, laid out for a CPU. Each block of about BLOCK_IMAGES
  images (a few steps) goes through every layer before the next block starts, from the
  membrane potentials the last one left, and each convolution runs on a channels-last stack of
  the block's steps. BNTT and the neuron of a convolution layer are one compiled C++ kernel
  each way for the block's steps (`bntt.compiled.bntt_lif_block`), which reads the stack where
  the convolution left it. Elsewhere (the hidden FC layer, the ablation's other
  normalisations, BNTT across processes, and everywhere when compiling is off or fails:
  `bntt.compiled.enabled()`) the norm runs as it is, on a stack of steps laid out by one copy
  so that it is contiguous (where batch_norm's statistics are accurate), and the neuron is one autograd node for the block's
  steps (`bntt.neuron.lif_scan`). Blocks keep every tensor of a step the size of the cache and the
  allocator's reusable memory, where stacks of all T steps (210 MB a layer for VGG9 at T=25,
  batch 32) took fresh pages at every step. Under autocast the spikes are made in the
  autocast dtype, so the next convolution reads them without a cast. tdBN trains on the
  statistics of all steps at once: its training runs `multistep`.
- `fused`: `multistep` with BNTT + LIF (and the 2x2 pool after it) as one Triton kernel each
  way, channels-last maps and int8-saving convolutions (bntt/fused/). CUDA only (or the Triton
  interpreter, for tests).
- `auto`: `fused` on CUDA when Triton is available and T fits its kernels; `cpu` on a CPU,
  where it was measured fastest (docs/speed.md, section CPU); `multistep` on other devices.

All of them compute the same function (tests/test_engines.py, tests/test_fused.py,
tests/test_cpu_engine.py). A model chooses its engine with `model.set_engine(name)`, which also
prepares its memory format.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bntt import compiled
from bntt.bntt import BNTT
from bntt.names import check_name
from bntt.neuron import lif_scan
from bntt.norms import TDBN

ENGINES = ("auto", "reference", "multistep", "cpu", "fused")
BLOCK_IMAGES = 64  # images per convolution call of the cpu engine (docs/speed.md, CPU)


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


def block_steps(steps: int, batch: int) -> int:
    """How many time steps the cpu engine runs through the network at once: about BLOCK_IMAGES
    images."""
    return max(1, min(steps, round(BLOCK_IMAGES / batch)))


def spike_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype the next synapse computes in: autocast's, where it is on (spikes made in it
    need no cast there: 0 and 1 are exact in any float dtype), else None (the input's)."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def _norm_stack(out: torch.Tensor, batch: int, dtype: torch.dtype,
                training: bool = True) -> torch.Tensor:
    """Channels-last conv output [n * B, C, H, W] (n steps) -> [n, B, C, H, W] in `dtype`, by
    one copy, which also makes the cast to BNTT's float32 under autocast. Laid out so that
    BNTT's stack of steps [B, n * C, H, W] is, in training, contiguous ([B, n, C, H, W] memory),
    where batch_norm's statistics are accurate on a CPU (bntt.bntt.batch_norm), and in
    evaluation, which takes no statistics, a channels-last view ([B, H, W, n, C] memory), which
    batch_norm and the neuron's scan into the next convolution's channels-last input run
    fastest on."""
    steps = out.unflatten(0, (-1, batch))
    if training:
        z = torch.empty(steps.transpose(0, 1).shape, dtype=dtype, device=out.device)
        return z.copy_(steps.transpose(0, 1)).transpose(0, 1)
    steps_last = steps.permute(1, 3, 4, 0, 2)
    z = torch.empty(steps_last.shape, dtype=dtype, device=out.device)
    return z.copy_(steps_last).permute(3, 0, 4, 1, 2)


def run_cpu(model, spikes: torch.Tensor) -> torch.Tensor:
    steps, batch = spikes.shape[:2]
    layers = list(model.spiking_layers())
    if model.training and any(isinstance(norm, TDBN) for _, norm, _ in layers):
        return run_multistep(model, spikes)  # tdBN trains on the statistics of all steps at once
    # maps: blocks of steps, each block through every layer; vectors: all steps at once
    block = block_steps(steps, batch) if spikes.dim() == 5 else steps
    membranes = [None] * len(layers)
    currents = [_run_cpu_block(model, layers, spikes[first:first + block], first, membranes)
                for first in range(0, steps, block)]
    return torch.cat(currents) if len(currents) > 1 else currents[0]


def _run_cpu_block(model, layers, spikes: torch.Tensor, first: int, membranes: list):
    """Steps first..first+n-1 of `run_cpu` ([n, B, ...] input spikes), from the membrane
    potentials the previous block left in `membranes`, which it replaces by its own."""
    steps, batch = spikes.shape[:2]
    leak, threshold = model.neuron.leak, model.neuron.threshold
    out_dtype = spike_dtype(spikes)
    if spikes.dim() == 5:  # maps: channels-last [n * B, C, H, W]
        x = spikes.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    else:  # vectors: batch-major [B * n, F]
        x = spikes.transpose(0, 1).flatten(0, 1)
    below = None  # the pool after the layer below, applied where its spikes are used
    for i, (synapse, norm, pool) in enumerate(layers):
        if below is not None and x.dim() == 4:
            x = below(x)
        if (isinstance(synapse, nn.Conv2d) and isinstance(norm, BNTT) and norm.sync_group is None
                and compiled.enabled()):
            x, membranes[i] = compiled.bntt_lif_block(synapse(x), norm, model.neuron, first,
                                                      batch, membranes[i], out_dtype)
        elif isinstance(synapse, nn.Conv2d):
            out = synapse(x)
            z = _norm_stack(out, batch, torch.promote_types(out.dtype, synapse.weight.dtype),
                            norm.training)
            x, membranes[i] = lif_scan(norm(z, first_step=first), leak, threshold,
                                       membranes[i], out_dtype, torch.channels_last)
        else:
            if x.dim() == 4:  # the last maps, flattened in (C, H, W) order, batch-major rows
                x = x.unflatten(0, (steps, batch)).transpose(0, 1).flatten(2).flatten(0, 1)
            # batch-major rows: BNTT's stack of steps [B, n * F] is then a view
            z = synapse(x).unflatten(0, (batch, steps)).transpose(0, 1)
            s, membranes[i] = lif_scan(norm(z, first_step=first), leak, threshold,
                                       u0=membranes[i], spike_dtype=out_dtype)
            x = s.transpose(0, 1).flatten(0, 1)
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
