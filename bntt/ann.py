"""The non-spiking twins of the paper's VGG networks (ANN_VGG9, ANN_VGG11), the baseline of its
energy and robustness comparisons.

Same plan, widths, pools and weight shapes as SpikingVGG, with each BNTT + LIF pair replaced by
an ordinary BatchNorm + ReLU:

    conv 3x3 pad 1 no bias -> BatchNorm2d -> ReLU [-> the same average pool] ... ->
    fc1 (no bias) -> BatchNorm1d -> ReLU -> fc2 readout (no bias)

The BatchNorms use BNTT's eps and momentum (bntt/paper.py) and keep their shift (beta): a
standard ANN, not a one-step SNN. Weights get the same Xavier-uniform init, and modules are
created in the same order as SpikingVGG's, so that from the same seed the conv and linear
weights start equal to the SNN's. The analyses and train.py treat it like a SpikingNetwork:
`forward(x, generator=None)` (no randomness: the generator is ignored), `num_steps = 1`,
`bntt_layers() == []`, `set_engine(name)` returns the model (there is no time loop).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bntt.engines import ENGINES
from bntt.names import check_name
from bntt.paper import BN_EPS, BN_MOMENTUM, GLOBAL_POOL, INIT_GAIN, POOL, VGG9_PLAN, VGG11_PLAN


class ANNVGG(nn.Module):
    """Conv blocks (conv 3x3 no bias -> BatchNorm2d -> ReLU [-> pool]), a hidden FC with
    BatchNorm1d and ReLU, and the readout fc2. `plan` is a SpikingVGG plan (conv widths, POOL,
    GLOBAL_POOL)."""

    num_steps = 1       # one pass: what an SNN's T is to the analyses
    encoder = None      # the normalised image is the input
    leak_mem = None
    engine = None
    backend = None      # no time loop to run

    def __init__(self, plan, hidden: int, num_cls: int = 10, in_channels: int = 3,
                 img_size: int = 32):
        super().__init__()
        halvings = plan.count(POOL)
        if img_size % (2 ** halvings) or img_size < 2 ** halvings:
            raise ValueError(f"img_size must be a multiple of {2 ** halvings} for this network, "
                             f"got {img_size}")
        self.num_cls, self.in_channels, self.img_size = num_cls, in_channels, img_size
        self._blocks = []  # (conv, bn, pool or None) attribute names, bottom to top

        channels, size, n_conv, n_pool = in_channels, img_size, 0, 0
        for entry in plan:
            if entry in (POOL, GLOBAL_POOL):
                n_pool += 1
                pool = nn.AvgPool2d(kernel_size=2) if entry == POOL else nn.AdaptiveAvgPool2d((1, 1))
                setattr(self, f"pool{n_pool}", pool)
                self._blocks[-1] = (*self._blocks[-1][:2], f"pool{n_pool}")
                size = size // 2 if entry == POOL else 1
                continue
            n_conv += 1
            setattr(self, f"conv{n_conv}",
                    nn.Conv2d(channels, entry, kernel_size=3, stride=1, padding=1, bias=False))
            setattr(self, f"bn{n_conv}", nn.BatchNorm2d(entry, eps=BN_EPS, momentum=BN_MOMENTUM))
            self._blocks.append((f"conv{n_conv}", f"bn{n_conv}", None))
            channels = entry
        self.fc1 = nn.Linear(channels * size * size, hidden, bias=False)
        self.bn_fc = nn.BatchNorm1d(hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.fc2 = nn.Linear(hidden, num_cls, bias=False)
        self.relu = nn.ReLU()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight, gain=INIT_GAIN)

    @property
    def readout(self) -> nn.Linear:
        return self.fc2

    def bntt_layers(self):
        return []

    def set_engine(self, name: str) -> "ANNVGG":
        check_name("engine", name, ENGINES)  # a typo is still an error, as for the SNNs
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the input of fc1, flattened in (channel, row, column) order as in the SNN."""
        for conv, bn, pool in self._blocks:
            x = self.relu(getattr(self, bn)(getattr(self, conv)(x)))
            if pool is not None:
                x = getattr(self, pool)(x)
        return x.flatten(1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                shard=None) -> torch.Tensor:
        """Normalised images [B, C, H, W] -> logits [B, num_cls]; `generator` and `shard` (of
        the spiking networks' input coding) are ignored."""
        return self.fc2(self.relu(self.bn_fc(self.fc1(self.features(x)))))

    def extra_repr(self) -> str:
        return "non-spiking twin of SpikingVGG (BatchNorm + ReLU in place of BNTT + LIF)"


class ANN_VGG9(ANNVGG):
    def __init__(self, num_cls=10, in_channels=3, img_size=32):
        super().__init__(VGG9_PLAN, 1024, num_cls, in_channels, img_size)


class ANN_VGG11(ANNVGG):
    def __init__(self, num_cls=10, in_channels=3, img_size=32):
        super().__init__(VGG11_PLAN, 4096, num_cls, in_channels, img_size)


ANN_MODELS = {"vgg9_ann": ANN_VGG9, "vgg11_ann": ANN_VGG11}
ANN_ARCHS = tuple(ANN_MODELS)
