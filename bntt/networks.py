"""Which network a configuration describes: the one registry of architectures, the spiking
networks (bntt/models.py) and their non-spiking twins (bntt/ann.py) alike.

    model = build_network(cfg)          # cfg: a bntt.config.Config (arch, dataset, T, leak, ...)

A network is shaped for its dataset (classes, input channels and size) and reads the dataset's
samples with the dataset's encoder (bntt/data). A new architecture is one entry of NETWORKS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from bntt.ann import ANN_VGG9, ANN_VGG11
from bntt.data import dataset_info
from bntt.models import SNN_VGG9_BNTT, SNN_VGG11_BNTT, SpikingFC, SpikingResNet19
from bntt.names import check_name

# What a dataset's samples are, in words (the `kind` of its registry entry, bntt/data/info.py).
SAMPLES = {"image": "images", "frames": "event frames", "sequence": "sequences"}


def _convolutional(cls):
    def build(cfg, info, encoder):
        return cls(num_steps=cfg.num_steps, leak_mem=cfg.leak_mem, img_size=info.img_size,
                   num_cls=info.num_cls, in_channels=info.in_channels, engine=cfg.engine,
                   encoder=encoder, norm=cfg.norm)
    return build


def _fully_connected(cfg, info, encoder):
    return SpikingFC(cfg.num_steps, cfg.leak_mem, info.input_features(cfg.seq_order),
                     cfg.fc_hidden_sizes, info.num_cls, cfg.engine, encoder, cfg.norm)


def _twin(cls):
    def build(cfg, info, encoder):
        return cls(num_cls=info.num_cls, in_channels=info.in_channels, img_size=info.img_size)
    return build


@dataclass(frozen=True)
class Architecture:
    """How to build one network: `build(cfg, dataset info, encoder)`, the kinds of samples it
    reads, and whether it spikes (the twins have no time steps)."""
    build: Callable[..., nn.Module]
    reads: tuple[str, ...]
    spiking: bool = True


NETWORKS = {
    "vgg9": Architecture(_convolutional(SNN_VGG9_BNTT), ("image", "frames")),
    "vgg11": Architecture(_convolutional(SNN_VGG11_BNTT), ("image", "frames")),
    "resnet19": Architecture(_convolutional(SpikingResNet19), ("image", "frames")),
    "fc": Architecture(_fully_connected, ("sequence",)),
    "vgg9_ann": Architecture(_twin(ANN_VGG9), ("image",), spiking=False),
    "vgg11_ann": Architecture(_twin(ANN_VGG11), ("image",), spiking=False),
}
ARCHS = tuple(NETWORKS)
SPIKING_ARCHS = tuple(name for name, a in NETWORKS.items() if a.spiking)
ANN_ARCHS = tuple(name for name, a in NETWORKS.items() if not a.spiking)


def build_network(cfg) -> nn.Module:
    """The network `cfg.arch` shaped for `cfg.dataset`, with the dataset's encoder. ValueError,
    saying why, for a pair that does not fit."""
    arch = NETWORKS[check_name("arch", cfg.arch, ARCHS)]
    info = dataset_info(cfg.dataset)
    if info.kind not in arch.reads:
        fits = [name for name, a in NETWORKS.items() if info.kind in a.reads]
        raise ValueError(f"arch {cfg.arch} reads {' or '.join(SAMPLES[k] for k in arch.reads)}, "
                         f"and {cfg.dataset} serves {SAMPLES[info.kind]}: use --arch "
                         f"{' or '.join(fits)}")
    encoder = info.make_encoder(cfg.seq_order, cfg.seq_coding)
    steps = info.sequence_steps(cfg.seq_order)
    if arch.spiking and steps is not None and cfg.num_steps != steps:
        raise ValueError(f"{cfg.dataset} read by {cfg.seq_order} is a sequence of {steps} steps: "
                         f"set num_steps = {steps}, not {cfg.num_steps}")
    return arch.build(cfg, info, encoder)
