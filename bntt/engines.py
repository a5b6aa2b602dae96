"""Backends: the ways to run a spiking block's steps (bntt/blocks.py), and the time loop that
takes a network's input through its blocks.

The time loop (`run_steps`) is the paper's, written once: the input train [T, B, ...] goes
through the network's layers a stack of steps at a time, each stack starting from the
membrane potentials the previous one left. How many steps a stack holds, and how each block
computes its stack, is the backend's choice:

- `reference`: one step at a time through every layer (the authors' order), each block by
  `SpikingBlock.step`: the definition the others are checked against.
- `multistep`: all T steps at once. A layer at step t only depends on the layer below at step t
  and on its own state, so each synapse runs once over the [T * B] stack, the norm normalises
  all steps in one call, and only the neuron steps through time.
- `cpu`: `multistep` in stacks of about BLOCK_IMAGES images (a few steps), laid out for a CPU.
  Each stack goes through every layer before the next starts, so every tensor of a layer stays
  the size of the cache and of the allocator's reusable memory, where stacks of all T steps
  (210 MB a layer for VGG9 at T=25, batch 32) took fresh pages at every step. Convolutions run
  on channels-last stacks. A conv block with BNTT runs BNTT + LIF as one compiled C++ kernel
  each way (`bntt.compiled.bntt_lif_block`), reading the stack where the convolution left it.
  Other blocks (linear ones, the ablation's other norms, BNTT across processes, a residual
  current, and every block when compiling is off or fails: `bntt.compiled.enabled()`) run the
  norm on a copy of the stack laid out so that its statistics are accurate (`_norm_stack`) and
  the neuron as one autograd node (`bntt.neuron.lif_scan`). Under autocast the spikes are made
  in the autocast dtype, so the next convolution reads them without a cast. A norm whose
  training statistics span all steps (tdBN) makes the stack all T steps.
- `fused`: `multistep` with BNTT + LIF (and a 2x2 pool after it) as one Triton kernel each way,
  channels-last maps and int8-saving convolutions (bntt/fused/). CUDA only (or the Triton
  interpreter, for tests).
- `auto`: `fused` on CUDA when Triton is available and T fits its kernels; `cpu` on a CPU,
  where it was measured fastest (docs/speed.md, section CPU); `multistep` on other devices.

A backend that cannot run a block one way runs it another, block by block, and all of them
compute the same function (tests/test_equivalence.py). `set_engine(module, name)` resolves the name
once for any module tree and gives its weights the memory format the backend wants.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bntt import compiled, fused
from bntt.blocks import REFERENCE, Backend, SpikingBlock, TimeState, blocks
from bntt.bntt import BNTT
from bntt.names import check_name
from bntt.neuron import lif_scan

ENGINES = ("auto", "reference", "multistep", "cpu", "fused")
BLOCK_IMAGES = 64  # images per convolution call of the cpu engine (docs/speed.md, CPU)


class Multistep(Backend):
    """All steps of a stack at once; only the neuron steps through time."""

    name = "multistep"

    def steps_per_call(self, network: nn.Module, spikes: torch.Tensor) -> int:
        return spikes.shape[0]

    def fire(self, block: SpikingBlock, x, u0, first_step: int, residual=None):
        """The block's output before its pool (its spikes, or z without a neuron), and u_n."""
        a = block.synapse(block.synapse_input(x.flatten(0, 1))).unflatten(0, x.shape[:2])
        return block.fire(a, u0, first_step, residual)

    def run(self, block: SpikingBlock, x, u0, first_step: int, residual=None):
        s, u = self.fire(block, x, u0, first_step, residual)
        return block.pool_stack(s), u


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


class Cpu(Backend):
    """Stacks of about BLOCK_IMAGES images, channels-last convolutions, compiled BNTT + LIF."""

    name = "cpu"

    def steps_per_call(self, network: nn.Module, spikes: torch.Tensor) -> int:
        steps, batch = spikes.shape[:2]
        if any(getattr(m, "needs_all_steps", False) and m.training for m in network.modules()):
            return steps  # tdBN trains on the statistics of all steps at once
        return block_steps(steps, batch) if spikes.dim() == 5 else steps

    def run(self, block: SpikingBlock, x, u0, first_step: int, residual=None):
        synapse, norm, neuron = block.synapse, block.norm, block.neuron
        steps, batch = x.shape[:2]
        out_dtype = spike_dtype(x)
        if isinstance(synapse, nn.Conv2d):
            a = synapse(x.flatten(0, 1).contiguous(memory_format=torch.channels_last))
            if (isinstance(norm, BNTT) and norm.sync_group is None and neuron is not None
                    and residual is None and compiled.enabled()):
                s, u = compiled.bntt_lif_block(a, norm, neuron, first_step, batch, u0, out_dtype)
                return block.pool_stack(s.unflatten(0, (steps, batch))), u
            if norm is None:
                a = a.unflatten(0, (steps, batch))
            else:
                dtype = torch.promote_types(a.dtype, synapse.weight.dtype)
                a = _norm_stack(a, batch, dtype, norm.training)
            memory_format = torch.channels_last
        else:
            # batch-major rows [B * n, F]: BNTT's stack of steps [B, n * F] is then a view, and
            # the spikes of a linear block are the next one's rows without a copy
            rows = block.synapse_input(x.transpose(0, 1), leading=2).flatten(0, 1)
            a = synapse(rows).unflatten(0, (batch, steps)).transpose(0, 1)
            memory_format = None
        z = block.current(a, first_step, residual)
        if neuron is None:
            return z, None
        s, u = lif_scan(z, neuron.leak, neuron.threshold, u0, out_dtype, memory_format,
                        block.membrane_norm)
        if memory_format is not None:
            s = s.unflatten(0, (steps, batch))
        return block.pool_stack(s), u


MULTISTEP, CPU = Multistep(), Cpu()
BACKENDS = {"reference": REFERENCE, "multistep": MULTISTEP, "cpu": CPU, "fused": fused.FUSED}


def resolve(engine: str, like: torch.Tensor, num_steps: int = 1) -> str:
    """The engine that will run `num_steps` steps on tensors like `like`: `auto` becomes `fused`,
    `cpu` or `multistep`; `fused` where it cannot run is an error that says what it needs."""
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


def set_engine(module: nn.Module, name: str, num_steps: int | None = None) -> Backend:
    """Run every spiking block in `module` with the backend `name` (one of ENGINES), resolved
    once for the device of module's weights and `num_steps` steps (default: the longest BNTT
    in it), and give the weights the memory format that backend wants: channels-last for
    `fused` (what its convolutions are fed), the default layout otherwise. Returns the backend.

    Call it after moving the module to its device: `auto` picks by device, and `fused` where it
    cannot run raises RuntimeError saying what it needs.

    Example::

        net = MyNetwork().to("cuda")
        set_engine(net, "auto")             # fused on a GPU with Triton, cpu on a CPU
    """
    like = next(module.parameters(), None)
    if like is None:
        like = next(module.buffers(), torch.empty(0))
    backend = assign(module, name, like, num_steps)
    layout = torch.channels_last if backend is fused.FUSED else torch.contiguous_format
    module.to(memory_format=layout)
    return backend


def assign(module: nn.Module, name: str, like: torch.Tensor, num_steps: int | None = None) -> Backend:
    """`set_engine` for tensors like `like`, without touching the weights' memory format."""
    if num_steps is None:
        num_steps = max((m.num_steps for m in module.modules() if isinstance(m, BNTT)), default=1)
    backend = BACKENDS[resolve(name, like, num_steps)]
    for block in blocks(module):
        block.backend = backend
    return backend


def run_steps(network: nn.Module, layers, spikes: torch.Tensor, backend: Backend) -> torch.Tensor:
    """The time loop: the input train [T, B, ...] through `layers(x, state)` (a network's
    layers, from a stack of input steps to the stack of readout currents), in stacks of the
    steps the backend runs at once, each from where the last one left. Returns [T, B, ...]."""
    steps = spikes.shape[0]
    stack = backend.steps_per_call(network, spikes)
    state = TimeState()
    if stack >= steps:  # the train itself, with what is recorded on it (bntt.blocks.mark_spikes)
        return layers(spikes, state)
    outputs = []
    for first in range(0, steps, stack):
        state.first_step = first
        outputs.append(layers(spikes[first:first + stack], state))
    return torch.cat(outputs)


class running_on:
    """`with running_on(module, backend):` every block of `module` runs with `backend` inside,
    and with its own again after (the analyses count with a backend of their own)."""

    def __init__(self, module: nn.Module, backend: Backend):
        self.blocks, self.backend = blocks(module), backend

    def __enter__(self):
        self.saved = [b.backend for b in self.blocks]
        for b in self.blocks:
            b.backend = self.backend
        return self.backend

    def __exit__(self, *exc):
        for b, backend in zip(self.blocks, self.saved):
            b.backend = backend
