"""The spiking block: a synapse, its normalisation, the LIF neuron and an optional pool, the
unit every network here is built from (docs/spec.md, section 6, "Spiking blocks and backends").

For the input x_t of step t, a block computes (Eq. 2-9):

    a_t        = synapse(x_t)              conv or linear (maps are flattened for a linear one)
    z_t        = norm(a_t, t) + r_t        BNTT or another --norm; r_t a residual current, if any
    s_t, u_t   = LIF(z_t, u_{t-1})         the neuron, from rest (u_0 = 0) at the first step;
                                           with MPBN it fires where norm.membrane(v_t) > threshold
    output_t   = pool(s_t)                 optional: pools act on spikes

Every part but the synapse is optional: without a neuron a block returns z_t (a residual
shortcut), without a norm as well it is a plain synaptic layer (the readout).

A block has two calls:

- `block.step(x_t, t, u)`: one step, with the state passed and returned explicitly. This is
  the paper's loop, and the definition every faster way is checked against.
- `block(x, state)`: a stack of steps [n, B, ...] at once, run by the block's backend
  (bntt/engines.py: reference, multistep, cpu or fused, chosen once by `set_engine`). `state`
  (a `TimeState`) says which step the stack starts at and holds the membrane potential each
  block left at the end of the previous stack; without one, the stack is steps 0..n-1 from rest.

A network is any module that passes a `TimeState` to its blocks; between blocks it may do
anything to the [n, B, ...] stacks (add them for a residual, for example), and a plain module
that works on one step can be applied to all of them with `Steps`.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class TimeState:
    """Where one pass over time stands: the first step of the stack being run, and the
    membrane potential every block left at the end of the previous stack (none: at rest)."""

    def __init__(self):
        self.first_step = 0
        self.membranes = {}


class Backend:
    """A way to run a block's steps (bntt/engines.py). `run` returns the block's output for the
    stack x [n, B, ...] of steps first_step.., and the membrane potential it leaves;
    `steps_per_call` is how many steps of a network's input it runs through all layers at once."""

    name = "reference"

    def steps_per_call(self, network: nn.Module, spikes: torch.Tensor) -> int:
        return 1  # step by step: the authors' order

    def run(self, block: "SpikingBlock", x, u0, first_step: int, residual=None):
        return block.run_steps(x, u0, first_step, residual)


REFERENCE = Backend()


class SpikingBlock(nn.Module):
    """synapse -> norm (+ residual) -> LIF neuron -> pool, over time (see the module docstring).

    Example::

        neuron = LIFNeuron(leak=0.95)
        block = SpikingBlock(nn.Conv2d(3, 64, 3, padding=1, bias=False), BNTT(64, num_steps=25),
                             neuron, pool=nn.AvgPool2d(2))
        s, u = block.step(x0, t=0)           # one step: x0 [B, 3, 32, 32] -> spikes [B, 64, 16, 16]
        spikes = block(x)                    # all steps: x [25, B, 3, 32, 32] -> [25, B, 64, 16, 16]

    `owns=False` keeps the parts out of the block's own state_dict, for networks that register
    them under names of their own (the paper's VGGs keep the authors' keys conv1, bntt1, ...).
    """

    def __init__(self, synapse: nn.Module, norm: nn.Module | None = None,
                 neuron: nn.Module | None = None, pool: nn.Module | None = None, owns: bool = True):
        super().__init__()
        if not isinstance(synapse, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"a block's synapse is a Conv2d or a Linear, not {type(synapse).__name__}")
        if neuron is None and pool is not None:
            raise ValueError("a block without a neuron has no spikes to pool")
        parts = {"synapse": synapse, "norm": norm, "neuron": neuron, "pool": pool}
        for name, part in parts.items():
            if owns:
                setattr(self, name, part)
            else:  # a plain attribute: the module is registered by the network
                object.__setattr__(self, name, part)
        self.backend = REFERENCE  # set_engine (bntt/engines.py) chooses another

    @property
    def membrane_norm(self) -> nn.Module | None:
        """The BatchNorm of the membrane that MPBN's norm holds, which the neuron applies
        before it fires (bntt.norms.MembraneBN); None for every other norm."""
        return getattr(self.norm, "membrane", None)

    # -- the equations, one step at a time ---------------------------------------------------

    def synapse_input(self, x: torch.Tensor, leading: int = 1) -> torch.Tensor:
        """x as the synapse takes it: maps flattened in (C, H, W) order for a linear synapse;
        `leading` is the number of batch-like dimensions in front."""
        if isinstance(self.synapse, nn.Linear) and x.dim() > leading + 1:
            return x.flatten(leading)
        return x

    def step(self, x: torch.Tensor, t: int, u: torch.Tensor | None = None,
             residual: torch.Tensor | None = None):
        """Step t: input x [B, ...], membrane u (None: at rest) -> (output, new membrane)."""
        z = self.synapse(self.synapse_input(x))
        if self.norm is not None:
            z = self.norm(z, t)
        if residual is not None:
            z = z + residual
        if self.neuron is None:
            return z, None
        s, u = self.neuron.step(z, u, self.membrane_norm)
        return (self.pool(s) if self.pool is not None else s), u

    def run_steps(self, x: torch.Tensor, u: torch.Tensor | None = None, first_step: int = 0,
                  residual: torch.Tensor | None = None):
        """`step` over the stack x [n, B, ...] of steps first_step..: (outputs [n, B, ...], u_n)."""
        outputs = []
        for i, x_t in enumerate(x.unbind(0)):
            out, u = self.step(x_t, first_step + i, u, None if residual is None else residual[i])
            outputs.append(out)
        return torch.stack(outputs), u

    # -- all steps of a stack ----------------------------------------------------------------

    def forward(self, x: torch.Tensor, state: TimeState | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """The stack x [n, B, ...] of steps state.first_step.. (from step 0 at rest without a
        state) -> the block's output [n, B, ...], by the block's backend."""
        if state is None:
            state = TimeState()
        out, u = self.backend.run(self, x, state.membranes.get(self), state.first_step, residual)
        state.membranes[self] = u
        return out

    def current(self, a: torch.Tensor, first_step: int = 0,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """The neuron's input for a stack of synaptic currents a [n, B, ...] of steps
        first_step..: the norm over all of them in one call, plus the residual current."""
        z = self.norm(a, first_step=first_step) if self.norm is not None else a
        return z if residual is None else z + residual

    def fire(self, a: torch.Tensor, u: torch.Tensor | None = None, first_step: int = 0,
             residual: torch.Tensor | None = None):
        """The rest of the block after the synapse, for a stack of synaptic currents a: `current`,
        then the neuron step by step. Returns (spikes before the pool, or the current without a
        neuron; u_n)."""
        z = self.current(a, first_step, residual)
        if self.neuron is None:
            return z, None
        return self.neuron.run(z, u, self.membrane_norm)

    def pool_stack(self, s: torch.Tensor) -> torch.Tensor:
        """The pool applied to a stack [n, B, C, H, W] of spike maps (none: s)."""
        if self.pool is None:
            return s
        return self.pool(s.flatten(0, 1)).unflatten(0, s.shape[:2])

    def extra_repr(self) -> str:
        names = [type(p).__name__ for p in (self.synapse, self.norm, self.neuron, self.pool)
                 if p is not None]
        return f"{' -> '.join(names)}, backend={self.backend.name!r}"


class Steps(nn.Module):
    """A module of one step ([B, ...] -> [B, ...]: a pool, a flatten, a dropout) applied to a
    stack [n, B, ...] of steps as one batch of n * B.

    Example::

        pool = Steps(nn.AvgPool2d(2))
        y = pool(x)                          # x [T, B, C, 32, 32] -> y [T, B, C, 16, 16]
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, state: TimeState | None = None) -> torch.Tensor:
        return self.module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def mark_spikes(x: torch.Tensor, scale: int | None = 1, codes: torch.Tensor | None = None,
                maker: nn.Module | None = None):
    """Record on x that x * scale holds integers in [-128, 127] (spikes; k x k average-pooled
    spikes with scale k * k), and, where one was made with x, their int8 copy `codes` [n * B,
    ...] and the block that made them. A backend may then keep x for the backward in one byte
    (the fused engine's convolutions). scale None records nothing. Returns x."""
    if scale is not None:
        x._bntt_spikes = (scale, codes, maker)
    return x


def spike_codes(x: torch.Tensor):
    """(scale, int8 codes or None, the block that made them) where `mark_spikes` marked x,
    else None."""
    return getattr(x, "_bntt_spikes", None)


def blocks(module: nn.Module) -> list:
    """The spiking blocks in a module tree, in registration order."""
    return [m for m in module.modules() if isinstance(m, SpikingBlock)]
