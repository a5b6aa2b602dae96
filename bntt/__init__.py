"""bntt: Batch Normalization Through Time (Kim & Panda 2021) for spiking networks in PyTorch."""
from bntt.blocks import SpikingBlock, Steps, TimeState
from bntt.bntt import BNTT
from bntt.coding import poisson_spikes
from bntt.engines import set_engine
from bntt.models import (SNN_VGG9_BNTT, SNN_VGG11_BNTT, ResidualBlock, SpikingNetwork,
                         SpikingResNet19, build_model)
from bntt.neuron import LIFNeuron, lif_step, spike_fn, surrogate_grad

__all__ = ["BNTT", "LIFNeuron", "ResidualBlock", "SNN_VGG9_BNTT", "SNN_VGG11_BNTT",
           "SpikingBlock", "SpikingNetwork", "SpikingResNet19", "Steps", "TimeState",
           "build_model", "lif_step", "poisson_spikes", "set_engine", "spike_fn", "surrogate_grad"]
