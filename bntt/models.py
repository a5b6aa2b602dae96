"""The paper's spiking VGG networks with BNTT: SNN_VGG9_BNTT and SNN_VGG11_BNTT.

Same constructor, layer plan, initialisation and state_dict layout as the authors' model.py
(docs/spec.md, section 2); the top-level model.py re-exports them under the authors' module
name. The arithmetic lives in bntt/ (neuron, BNTT, Poisson coding) and the time loop in
bntt/engines.py, chosen per model with `set_engine`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bntt import engines
from bntt.bntt import BNTT
from bntt.coding import FrameEncoder, PoissonEncoder, SequenceEncoder
from bntt.names import check_name
from bntt.neuron import LIFNeuron, membrane_dtype
from bntt.norms import NORMS, make_norm
from bntt.paper import INIT_GAIN, THRESHOLD

POOL, GLOBAL_POOL = "P", "G"


class SpikingNetwork(nn.Module):
    """What every network here shares: spiking layers (synapse -> BNTT -> LIF [-> pool]) listed
    bottom to top, a non-spiking readout that accumulates over time and divides by T
    (docs/spec.md, Eq. 10), an input encoder, and the engine that runs the time loop.
    Subclasses create their layers with `_add_layer` and name their `readout`."""

    def __init__(self, num_steps: int, leak_mem: float, num_cls: int, in_channels: int,
                 engine: str, encoder=None, norm: str = "bntt"):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        check_name("engine", engine, engines.ENGINES)
        self.norm = check_name("norm", norm, NORMS)  # BNTT, or what the ablation puts there
        self.num_steps = num_steps
        self.leak_mem = leak_mem
        self.num_cls = num_cls
        self.in_channels = in_channels  # input channels, or input features of a sequence
        self.engine = engine  # how forward runs; set_engine also prepares the memory format
        self.encoder = encoder or PoissonEncoder()
        self.neuron = LIFNeuron(leak=leak_mem, threshold=THRESHOLD)
        self._layer_names = []  # (synapse, bntt, pool or None) attribute names, bottom to top
        self.neuron_shapes = []  # (channels, height/width or None for a linear layer)

    def _norm(self, num_features: int) -> nn.Module:
        return make_norm(self.norm, num_features, self.num_steps)

    def _add_layer(self, synapse: str, bntt: str, shape) -> None:
        self._layer_names.append((synapse, bntt, None))
        self.neuron_shapes.append(shape)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight, gain=INIT_GAIN)

    def set_engine(self, name: str) -> "SpikingVGG":
        """Run the time loop with engine `name` (bntt/engines.py) and give the weights the
        memory format it wants: channels-last for `fused` (what its convolutions are fed),
        the default layout otherwise. Returns the model.

        Call it after moving the model to its device: `auto` picks by device, and `fused`
        where it cannot run raises RuntimeError saying what it needs.
        """
        like = next(self.parameters())
        resolved = engines.resolve(name, like, self.num_steps)
        self.engine = name
        layout = torch.channels_last if resolved == "fused" else torch.contiguous_format
        return self.to(memory_format=layout)

    # -- structure used by the engines, the early-exit evaluator and the logger --------------

    def spiking_layers(self):
        for synapse, bn, pool in self._layer_names:
            yield getattr(self, synapse), getattr(self, bn), getattr(self, pool) if pool else None

    def bntt_layers(self):
        """[(name, BNTT), ...] bottom to top, named as in the state_dict; empty when the layers
        are normalised otherwise (the ablation's --norm)."""
        return [(bn, getattr(self, bn)) for _, bn, _ in self._layer_names
                if isinstance(getattr(self, bn), BNTT)]

    @property
    def readout(self) -> nn.Linear:
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
        return engines.run(self.engine, self, spikes)

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


class SpikingVGG(SpikingNetwork):
    """Conv blocks (conv 3x3 no bias -> BNTT -> LIF [-> average pool]), a hidden spiking FC with
    BNTT, and the readout.

    `plan` lists conv widths, with POOL for a 2x2 average pool and GLOBAL_POOL for a global one;
    pools act on spikes, after the neuron.
    """

    def __init__(self, plan, hidden: int, num_steps: int, leak_mem: float = 0.95,
                 img_size: int = 32, num_cls: int = 10, in_channels: int = 3,
                 engine: str = "auto", encoder=None, norm: str = "bntt"):
        super().__init__(num_steps, leak_mem, num_cls, in_channels, engine, encoder, norm)
        halvings = plan.count(POOL)
        if img_size % (2 ** halvings) or img_size < 2 ** halvings:
            raise ValueError(f"img_size must be a multiple of {2 ** halvings} for this network, "
                             f"got {img_size}")
        self.img_size = img_size

        # Modules are created in the authors' order (conv_i, bntt_i, pool_j, ..., fc1, bntt_fc,
        # fc2) so that, from the same seed, the initial weights are theirs.
        channels, size, n_conv, n_pool = in_channels, img_size, 0, 0
        for entry in plan:
            if entry in (POOL, GLOBAL_POOL):
                n_pool += 1
                pool = nn.AvgPool2d(kernel_size=2) if entry == POOL else nn.AdaptiveAvgPool2d((1, 1))
                setattr(self, f"pool{n_pool}", pool)
                synapse, bn, _ = self._layer_names[-1]
                self._layer_names[-1] = (synapse, bn, f"pool{n_pool}")
                size = size // 2 if entry == POOL else 1
                continue
            n_conv += 1
            setattr(self, f"conv{n_conv}",
                    nn.Conv2d(channels, entry, kernel_size=3, stride=1, padding=1, bias=False))
            setattr(self, f"bntt{n_conv}", self._norm(entry))
            self._add_layer(f"conv{n_conv}", f"bntt{n_conv}", (entry, size))
            channels = entry
        self.fc1 = nn.Linear(channels * size * size, hidden, bias=False)
        self.bntt_fc = self._norm(hidden)
        self.fc2 = nn.Linear(hidden, num_cls, bias=False)
        self._add_layer("fc1", "bntt_fc", (hidden, None))
        self._init_weights()

    @property
    def readout(self) -> nn.Linear:
        return self.fc2


VGG9_PLAN = [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL]
VGG11_PLAN = [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, GLOBAL_POOL]


class SNN_VGG9_BNTT(SpikingVGG):
    def __init__(self, num_steps, leak_mem=0.95, img_size=32, num_cls=10, in_channels=3,
                 engine="auto", encoder=None, norm="bntt"):
        super().__init__(VGG9_PLAN, 1024, num_steps, leak_mem, img_size, num_cls, in_channels,
                         engine, encoder, norm)


class SNN_VGG11_BNTT(SpikingVGG):
    def __init__(self, num_steps, leak_mem=0.95, img_size=32, num_cls=10, in_channels=3,
                 engine="auto", encoder=None, norm="bntt"):
        super().__init__(VGG11_PLAN, 4096, num_steps, leak_mem, img_size, num_cls, in_channels,
                         engine, encoder, norm)


class SpikingFC(SpikingNetwork):
    """Fully connected spiking network for sequences (Sequential MNIST): every hidden layer is
    Linear (no bias) -> BNTT -> LIF, then the readout `fc_out`. With the default
    SequenceEncoder a 28x28 image is read row by row: T = 28 steps of 28 inputs."""

    def __init__(self, num_steps: int, leak_mem: float = 0.95, in_features: int = 28,
                 hidden=(256, 256), num_cls: int = 10, engine: str = "auto", encoder=None,
                 norm: str = "bntt"):
        super().__init__(num_steps, leak_mem, num_cls, in_features,
                         engine, encoder or SequenceEncoder(), norm)
        self.hidden = tuple(hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}")
        width = in_features
        for i, size in enumerate(self.hidden, 1):
            setattr(self, f"fc{i}", nn.Linear(width, size, bias=False))
            setattr(self, f"bntt{i}", self._norm(size))
            self._add_layer(f"fc{i}", f"bntt{i}", (size, None))
            width = size
        self.fc_out = nn.Linear(width, num_cls, bias=False)
        self._init_weights()

    @property
    def readout(self) -> nn.Linear:
        return self.fc_out


MODELS = {"vgg9": SNN_VGG9_BNTT, "vgg11": SNN_VGG11_BNTT, "fc": SpikingFC}
ARCHS = tuple(MODELS)


def build_model(arch: str, **kwargs) -> SpikingNetwork:
    """The network `arch` ("vgg9", "vgg11" or "fc"), with the constructor arguments of its
    class."""
    return MODELS[check_name("arch", arch, ARCHS)](**kwargs)


def build_for_dataset(arch: str, dataset: str, num_steps: int, leak_mem: float,
                      engine: str = "auto", seq_order: str = "rows", seq_coding: str = "direct",
                      fc_hidden=(256, 256), norm: str = "bntt") -> SpikingNetwork:
    """The network `arch` shaped for `dataset` (classes, input channels and size) with the
    encoder its samples need; `vgg9_ann` and `vgg11_ann` are the non-spiking twins
    (bntt/ann.py). ValueError, saying why, for a pair that does not fit."""
    from bntt.ann import ANN_ARCHS, ANN_MODELS  # imported here: bntt.ann builds on this module
    from bntt.data import dataset_info  # imported here: the data registry is not needed otherwise

    check_name("arch", arch, ARCHS + ANN_ARCHS)
    info = dataset_info(dataset)
    if arch in ANN_ARCHS:  # the non-spiking twin, for the energy and robustness comparisons
        if info.kind != "image":
            raise ValueError(f"{arch} takes images, and {dataset} serves {info.kind}")
        return ANN_MODELS[arch](num_cls=info.num_cls, in_channels=info.in_channels,
                                img_size=info.img_size)
    if info.kind == "sequence":
        if arch != "fc":
            raise ValueError(f"{dataset} is a sequence dataset: use --arch fc, not {arch}")
        encoder = SequenceEncoder(seq_order, seq_coding)
        length = encoder.steps(info.img_size, info.img_size)
        if num_steps != length:
            raise ValueError(f"{dataset} read by {seq_order} is a sequence of {length} steps: "
                             f"set num_steps = {length}, not {num_steps}")
        return SpikingFC(num_steps, leak_mem, encoder.features(info.img_size), fc_hidden,
                         info.num_cls, engine, encoder, norm)
    if arch == "fc":
        raise ValueError(f"arch fc is the network for the sequence datasets, not {dataset}")
    encoder = FrameEncoder() if info.kind == "frames" else PoissonEncoder()
    return build_model(arch, num_steps=num_steps, leak_mem=leak_mem, img_size=info.img_size,
                       num_cls=info.num_cls, in_channels=info.in_channels, engine=engine,
                       encoder=encoder, norm=norm)
