"""bntt: Batch Normalization Through Time (Kim & Panda 2021) for spiking networks in PyTorch."""
from bntt.bntt import BNTT
from bntt.coding import poisson_spikes
from bntt.neuron import LIFNeuron, lif_step, spike_fn, surrogate_grad

__all__ = ["BNTT", "LIFNeuron", "lif_step", "poisson_spikes", "spike_fn", "surrogate_grad"]
