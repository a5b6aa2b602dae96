"""The networks: the paper's spiking VGGs with BNTT (SNN_VGG9_BNTT, SNN_VGG11_BNTT), its
fully connected network for sequences (SpikingFC), and the spiking ResNet-19 of the later
normalisation papers (SpikingResNet19), all built from spiking blocks (bntt/blocks.py).

The VGGs have the same constructor, layer plan, initialisation and state_dict layout as the
authors' model.py (docs/spec.md, section 2); the top-level model.py re-exports them under the
authors' module name. A network defines its layers, from a stack of input steps to the readout
currents; the time loop and the backends are bntt/engines.py's, chosen with `set_engine`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from bntt import engines
from bntt.blocks import SpikingBlock, TimeState, mark_spikes
from bntt.bntt import BNTT
from bntt.coding import PoissonEncoder, SequenceEncoder
from bntt.names import check_name
from bntt.neuron import LIFNeuron, membrane_dtype
from bntt.norms import NORMS, make_norm
from bntt.paper import (GLOBAL_POOL, INIT_GAIN, LEAK_MEM, POOL, THRESHOLD, VGG9_PLAN,
                        VGG11_PLAN)


class SpikingNetwork(nn.Module):
    """What every network here shares: an input encoder, T, one LIF neuron for all its blocks
    (where the leak and the threshold live), the time loop, and the readout's mean over time
    (docs/spec.md, Eq. 10).

    A subclass builds its blocks and defines `layers(x, state)`: a stack of input steps
    [n, B, ...] -> the readout currents [n, B, classes], passing `state` to every block.

    Example (a small residual network of one's own)::

        class TinyResNet(SpikingNetwork):
            def __init__(self, num_steps=8):
                super().__init__(num_steps, leak_mem=0.95, num_cls=10, in_channels=1)
                conv = lambda cin, cout: nn.Conv2d(cin, cout, 3, padding=1, bias=False)
                self.stem = SpikingBlock(conv(1, 16), BNTT(16, num_steps), self.neuron)
                self.body = SpikingBlock(conv(16, 16), BNTT(16, num_steps), self.neuron)
                self.pool = Steps(nn.AvgPool2d(4))
                self.fc = SpikingBlock(nn.Linear(16 * 7 * 7, 10, bias=False))  # the readout

            def layers(self, x, state):
                s = self.stem(x, state)
                s = s + self.body(s, state)         # a residual add of spike maps
                return self.fc(self.pool(s), state)

        net = TinyResNet().set_engine("auto")
        logits = net(images)                        # images [B, 1, 28, 28] -> [B, 10]
    """

    def __init__(self, num_steps: int, leak_mem: float, num_cls: int, in_channels: int,
                 engine: str = "auto", encoder=None, norm: str = "bntt"):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.norm = check_name("norm", norm, NORMS)  # BNTT, or what the ablation puts there
        self.num_steps = num_steps  # T; a BNTT layer's is the length of its [T, C] tensors
        self.num_cls = num_cls
        self.in_channels = in_channels  # input channels, or input features of a sequence
        self.engine = engine  # the backend's name; resolved once per device
        self.encoder = encoder or PoissonEncoder()
        self.neuron = LIFNeuron(leak=leak_mem, threshold=THRESHOLD)

    @property
    def engine(self) -> str:
        return self._engine

    @engine.setter
    def engine(self, name: str) -> None:
        self._engine = check_name("engine", name, engines.ENGINES)
        self.backend, self._backend_device = None, None  # resolved at the next forward

    @property
    def leak_mem(self) -> float:
        return self.neuron.leak

    def norm_layer(self, num_features: int, residual: bool = False, fires: bool = True) -> nn.Module:
        """The --norm of this network for a layer of `num_features` channels; `residual`: one
        of the two branches of a residual add (tdBN scales those by 1 / sqrt(2)); `fires`:
        False for a current that no neuron of its own receives (a shortcut), which MPBN's
        BatchNorm of the membrane then does not have."""
        return make_norm(self.norm, num_features, self.num_steps,
                         alpha=1 / math.sqrt(2) if residual else 1.0, fires=fires)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight, gain=INIT_GAIN)

    def set_engine(self, name: str) -> "SpikingNetwork":
        """Run the network's blocks with the backend `name` (bntt/engines.py), resolved once
        for the device of its weights, with the memory format it wants. Returns the network.

        Call it after moving the model to its device: `auto` picks by device, and `fused`
        where it cannot run raises RuntimeError saying what it needs.
        """
        self.engine = name
        self.backend = engines.set_engine(self, name, self.num_steps)
        self._backend_device = next(self.parameters()).device.type
        return self

    def keep_steps(self, steps: int) -> "SpikingNetwork":
        """Run only the first `steps` time steps from now on: every per-step quantity keeps its
        first `steps` entries (the network an early exit deploys). Returns the network."""
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"steps must be in 1..{self.num_steps}, got {steps}")
        for m in self.modules():
            if m is not self and hasattr(m, "keep_steps"):
                m.keep_steps(steps)
        self.num_steps = steps
        return self

    def bntt_layers(self):
        """[(name, BNTT), ...] bottom to top, named as in the state_dict; empty when the layers
        are normalised otherwise (the ablation's --norm)."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, BNTT)]

    def layers(self, x: torch.Tensor, state: TimeState) -> torch.Tensor:
        raise NotImplementedError

    # -- forward -----------------------------------------------------------------------------

    def encode(self, inputs: torch.Tensor, generator: torch.Generator | None = None,
               num_steps: int | None = None, shard: tuple[int, int] | None = None) -> torch.Tensor:
        """A batch as the dataset serves it -> the input train [T, B, ...] (bntt/coding.py);
        `shard` = (offset, global batch) when the batch is one process's share."""
        return self.encoder(inputs, num_steps or self.num_steps, generator, shard)

    def readout_currents(self, spikes: torch.Tensor) -> torch.Tensor:
        """Input train [t, B, ...] (t <= num_steps) -> readout current per step [t, B, classes]."""
        if not 1 <= spikes.shape[0] <= self.num_steps:
            raise ValueError(f"model has {self.num_steps} time steps, got a spike train of "
                             f"{spikes.shape[0]} steps")
        if self._backend_device != spikes.device.type:
            self.backend = engines.assign(self, self.engine, spikes, self.num_steps)
            self._backend_device = spikes.device.type
        mark_spikes(spikes, getattr(self.encoder, "spike_scale", None))
        return engines.run_steps(self, self.layers, spikes, self.backend)

    def forward_spikes(self, spikes: torch.Tensor) -> torch.Tensor:
        currents = self.readout_currents(spikes)
        # Accumulate in at least float32: under bf16 autocast the readout currents are bf16.
        return currents.to(membrane_dtype(currents.dtype)).sum(0) / spikes.shape[0]

    def forward(self, inputs: torch.Tensor, generator: torch.Generator | None = None,
                shard: tuple[int, int] | None = None) -> torch.Tensor:
        """A batch (normalised images, for the paper's networks) -> logits [B, num_cls]."""
        return self.forward_spikes(self.encode(inputs, generator, shard=shard))

    def extra_repr(self) -> str:
        return (f"num_steps={self.num_steps}, leak_mem={self.leak_mem}, engine={self.engine!r}, "
                f"input={self.encoder.name!r}, norm={self.norm!r}")


class _Chain(SpikingNetwork):
    """A network whose layers are its blocks one after another (the VGGs, the FC network). The
    parts are registered on the network under the authors' names (conv1, bntt1, pool1, ...,
    fc2); the blocks only refer to them, so the state_dict keeps the authors' layout."""

    def _chain(self, layers, readout: nn.Linear) -> None:
        self.blocks = nn.ModuleList(
            [SpikingBlock(synapse, norm, self.neuron, pool, owns=False)
             for synapse, norm, pool in layers] + [SpikingBlock(readout, owns=False)])

    def layers(self, x: torch.Tensor, state: TimeState) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, state)
        return x

    @property
    def readout(self) -> nn.Linear:
        return self.blocks[-1].synapse


class SpikingVGG(_Chain):
    """Conv blocks (conv 3x3 no bias -> BNTT -> LIF [-> average pool]), a hidden spiking FC with
    BNTT, and the readout.

    `plan` lists conv widths, with POOL for a 2x2 average pool and GLOBAL_POOL for a global one;
    pools act on spikes, after the neuron.

    Example::

        net = SNN_VGG9_BNTT(num_steps=25, leak_mem=0.95).set_engine("auto")
        logits = net(images)                 # normalised images [B, 3, 32, 32] -> [B, 10]
    """

    def __init__(self, plan, hidden: int, num_steps: int, leak_mem: float = LEAK_MEM,
                 img_size: int = 32, num_cls: int = 10, in_channels: int = 3,
                 engine: str = "auto", encoder=None, norm: str = "bntt"):
        super().__init__(num_steps, leak_mem, num_cls, in_channels, engine, encoder, norm)
        halvings = plan.count(POOL)
        if img_size % (2 ** halvings) or img_size < 2 ** halvings:
            raise ValueError(f"img_size must be a multiple of {2 ** halvings} for this network, "
                             f"got {img_size}")
        self.img_size = img_size
        self.neuron_shapes = []  # (channels, height/width or None for a linear layer)

        # Modules are created in the authors' order (conv_i, bntt_i, pool_j, ..., fc1, bntt_fc,
        # fc2) so that, from the same seed, the initial weights are theirs.
        channels, size, n_conv, n_pool, layers = in_channels, img_size, 0, 0, []
        for entry in plan:
            if entry in (POOL, GLOBAL_POOL):
                n_pool += 1
                pool = nn.AvgPool2d(kernel_size=2) if entry == POOL else nn.AdaptiveAvgPool2d((1, 1))
                setattr(self, f"pool{n_pool}", pool)
                layers[-1][2] = pool
                size = size // 2 if entry == POOL else 1
                continue
            n_conv += 1
            conv = nn.Conv2d(channels, entry, kernel_size=3, stride=1, padding=1, bias=False)
            setattr(self, f"conv{n_conv}", conv)
            setattr(self, f"bntt{n_conv}", self.norm_layer(entry))
            layers.append([conv, getattr(self, f"bntt{n_conv}"), None])
            self.neuron_shapes.append((entry, size))
            channels = entry
        self.fc1 = nn.Linear(channels * size * size, hidden, bias=False)
        self.bntt_fc = self.norm_layer(hidden)
        self.fc2 = nn.Linear(hidden, num_cls, bias=False)
        self.neuron_shapes.append((hidden, None))
        self._chain(layers + [[self.fc1, self.bntt_fc, None]], self.fc2)
        self._init_weights()




class SNN_VGG9_BNTT(SpikingVGG):
    def __init__(self, num_steps, leak_mem=LEAK_MEM, img_size=32, num_cls=10, in_channels=3,
                 engine="auto", encoder=None, norm="bntt"):
        super().__init__(VGG9_PLAN, 1024, num_steps, leak_mem, img_size, num_cls, in_channels,
                         engine, encoder, norm)


class SNN_VGG11_BNTT(SpikingVGG):
    def __init__(self, num_steps, leak_mem=LEAK_MEM, img_size=32, num_cls=10, in_channels=3,
                 engine="auto", encoder=None, norm="bntt"):
        super().__init__(VGG11_PLAN, 4096, num_steps, leak_mem, img_size, num_cls, in_channels,
                         engine, encoder, norm)


class SpikingFC(_Chain):
    """Fully connected spiking network for sequences (Sequential MNIST): every hidden layer is
    Linear (no bias) -> BNTT -> LIF, then the readout `fc_out`. With the default
    SequenceEncoder a 28x28 image is read row by row: T = 28 steps of 28 inputs.

    Example::

        net = SpikingFC(num_steps=28)
        logits = net(images)                 # images [B, 1, 28, 28], one row per step -> [B, 10]
    """

    def __init__(self, num_steps: int, leak_mem: float = LEAK_MEM, in_features: int = 28,
                 hidden=(256, 256), num_cls: int = 10, engine: str = "auto", encoder=None,
                 norm: str = "bntt"):
        super().__init__(num_steps, leak_mem, num_cls, in_features,
                         engine, encoder or SequenceEncoder(), norm)
        self.hidden = tuple(hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}")
        width, layers = in_features, []
        for i, size in enumerate(self.hidden, 1):
            setattr(self, f"fc{i}", nn.Linear(width, size, bias=False))
            setattr(self, f"bntt{i}", self.norm_layer(size))
            layers.append((getattr(self, f"fc{i}"), getattr(self, f"bntt{i}"), None))
            width = size
        self.fc_out = nn.Linear(width, num_cls, bias=False)
        self._chain(layers, self.fc_out)
        self._init_weights()


class ResidualBlock(nn.Module):
    """tdBN's basic residual block (Zheng et al. 2021): two 3x3 conv blocks, and a shortcut
    whose current is added to the second block's normalised current before its neuron fires.
    The shortcut is the input spikes, or, where the shape changes, a 1x1 conv and its norm.
    `norm_layer(channels, residual=False, fires=True)` makes each norm (`norm_layer` of
    SpikingNetwork).

    Example::

        neuron = LIFNeuron(leak=0.95)
        block = ResidualBlock(64, 128, stride=2, norm_layer=lambda c, **_: BNTT(c, 25),
                              neuron=neuron)
        s = block(x)                         # x [25, B, 64, 32, 32] -> spikes [25, B, 128, 16, 16]
    """

    def __init__(self, in_channels: int, channels: int, stride: int, norm_layer, neuron,
                 pool: nn.Module | None = None):
        super().__init__()
        conv = lambda cin, k, s: nn.Conv2d(cin, channels, k, s, k // 2, bias=False)  # noqa: E731
        self.conv1 = SpikingBlock(conv(in_channels, 3, stride), norm_layer(channels), neuron)
        self.conv2 = SpikingBlock(conv(channels, 3, 1), norm_layer(channels, residual=True),
                                  neuron, pool)
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = SpikingBlock(conv(in_channels, 1, stride),
                                         norm_layer(channels, residual=True, fires=False))

    def forward(self, x: torch.Tensor, state: TimeState | None = None) -> torch.Tensor:
        state = state or TimeState()
        shortcut = x if self.shortcut is None else self.shortcut(x, state)
        return self.conv2(self.conv1(x, state), state, residual=shortcut)


# (width, residual blocks, stride of the first) per stage: ResNet-19 of tdBN (docs/spec.md, 2)
RESNET19_STAGES = ((128, 3, 1), (256, 3, 2), (512, 2, 2))


class SpikingResNet19(SpikingNetwork):
    """The spiking ResNet-19 of tdBN (Zheng et al., AAAI 2021), on which the later SNN
    normalisation papers report CIFAR-10: a 3x3 conv block of 128 channels, three stages of
    residual blocks (3 x 128, 3 x 256, 2 x 512 channels; the last two stages start with stride
    2), a global average pool of the last spikes, a spiking FC of 256 and the readout. Every
    conv and FC block has the network's --norm (BNTT by default).

    Example::

        net = SpikingResNet19(num_steps=4).set_engine("auto")
        logits = net(images)                 # normalised images [B, 3, 32, 32] -> [B, 10]
    """

    def __init__(self, num_steps: int, leak_mem: float = LEAK_MEM, img_size: int = 32,
                 num_cls: int = 10, in_channels: int = 3, engine: str = "auto", encoder=None,
                 norm: str = "bntt"):
        super().__init__(num_steps, leak_mem, num_cls, in_channels, engine, encoder, norm)
        if img_size < 4:
            raise ValueError(f"img_size must be at least 4 for this network, got {img_size}")
        self.img_size = img_size
        width = RESNET19_STAGES[0][0]
        self.conv1 = SpikingBlock(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  self.norm_layer(width), self.neuron)
        channels, last = width, len(RESNET19_STAGES)
        for i, (width, count, stride) in enumerate(RESNET19_STAGES, 1):
            stage = nn.ModuleList()
            for j in range(count):
                pool = nn.AdaptiveAvgPool2d((1, 1)) if (i, j) == (last, count - 1) else None
                stage.append(ResidualBlock(channels, width, stride if j == 0 else 1,
                                           self.norm_layer, self.neuron, pool))
                channels = width
            setattr(self, f"layer{i}", stage)
        self.fc1 = SpikingBlock(nn.Linear(channels, 256, bias=False), self.norm_layer(256),
                                self.neuron)
        self.fc2 = SpikingBlock(nn.Linear(256, num_cls, bias=False))
        self._init_weights()

    def layers(self, x: torch.Tensor, state: TimeState) -> torch.Tensor:
        x = self.conv1(x, state)
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                x = block(x, state)
        return self.fc2(self.fc1(x, state), state)

    @property
    def readout(self) -> nn.Linear:
        return self.fc2.synapse


MODELS = {"vgg9": SNN_VGG9_BNTT, "vgg11": SNN_VGG11_BNTT, "resnet19": SpikingResNet19,
          "fc": SpikingFC}
ARCHS = tuple(MODELS)


def build_model(arch: str, **kwargs) -> SpikingNetwork:
    """The network `arch` ("vgg9", "vgg11", "resnet19" or "fc"), with the constructor arguments of its
    class."""
    return MODELS[check_name("arch", arch, ARCHS)](**kwargs)
