"""bntt: Batch Normalization Through Time (Kim & Panda 2021) for spiking networks in PyTorch."""
from bntt.bntt import BNTT
from bntt.coding import poisson_spikes
from bntt.models import SNN_VGG9_BNTT, SNN_VGG11_BNTT, build_model
from bntt.neuron import LIFNeuron, lif_step, spike_fn, surrogate_grad

__all__ = ["BNTT", "LIFNeuron", "SNN_VGG9_BNTT", "SNN_VGG11_BNTT", "build_model", "lif_step",
           "poisson_spikes", "spike_fn", "surrogate_grad"]
