"""Float32 BNTT statistics as accurate on every path as on the reference engine's.

A spiking network in float32 is chaotic: a membrane within rounding of the threshold fires or
not, and the flip spreads through the batch statistics of the layers above. How far two
engines drift apart therefore depends on how accurately each computes the per-(step, channel)
mean and variance of Eq. 3 over thousands of values. The reference path (batch_norm on a
contiguous stack) keeps them within about one rounding of float64; a sum that adds a channel's
values one after another in float32 loses several bits. Random inputs of zero mean and
small reductions hide that; these tests use the pre-activations of VGG9's conv2 and conv4
(32,768 and 8,192 values per step and channel) for 32 real Fashion-MNIST test images of the
bundled subset, Poisson-coded, made in float64, and compare every path in float32 with float64:

- `reference`: BNTT one step at a time, as the reference engine calls it;
- `multistep`: BNTT over the whole [T, B, C, H, W] stack;
- `cpu`: BNTT on the channels-last convolution output the cpu engine hands it, without the
  compiled kernels (`_norm_stack`), and the compiled BNTT + LIF block;
- `fused`: the Triton kernels (under the interpreter on a CPU).

Each path's statistics are read from the running buffers after one training step with
momentum 1 (running mean = the batch mean, running variance = the unbiased batch variance),
and its normalised output directly where the path returns one (the compiled block returns the
membrane, which from rest with an unreachable threshold is the normalised input itself).
"""
import pytest
import torch

from bntt import fused
from bntt.bntt import BNTT
from bntt.coding import poisson_spikes
from bntt.compiled import bntt_lif_block
from bntt.data import make_datasets
from bntt.engines import _norm_stack
from bntt.models import build_model
from bntt.neuron import LIFNeuron
from helpers import needs_triton_interpreter
from test_compiled import compiled  # noqa: F401  (fixture: compiling on)

STEPS, IMAGES = 2, 32
LAYERS = {"conv2": 1, "conv4": 3}  # index among VGG9's spiking layers
# The reference path's errors on these inputs: variance 7e-8 relative, mean 5e-8 of the
# standard deviation, normalised output 6.5e-7. A float32 sum over one channel's values in
# sequence is off by 1e-6 to 2e-5 in the variance.
VAR_REL, MEAN_REL, OUT_ABS = 2e-7, 2e-7, 1e-6
UNREACHABLE = 1e9  # a threshold no membrane reaches: the membrane is then the neuron's input


@pytest.fixture(scope="module")
def pre_activations():
    """{layer: float64 [T, B, C, H, W]} of a VGG9 (seed 0) on real images, in train mode."""
    _, test_set = make_datasets("fashionmnist_subset", "data")
    images = torch.stack([test_set[i][0] for i in range(IMAGES)]).double()
    torch.manual_seed(0)
    model = build_model("vgg9", num_steps=STEPS, leak_mem=0.95, img_size=32, num_cls=10,
                        in_channels=1, engine="reference").double().train()
    spikes = poisson_spikes(images, STEPS, generator=torch.Generator().manual_seed(3))
    found = {}
    for name, i in LAYERS.items():
        model.blocks[i].synapse.register_forward_hook(
            lambda module, args, out, name=name: found.setdefault(name, []).append(out.detach()))
    with torch.no_grad():
        model.forward_spikes(spikes)
    return {name: torch.stack(outs) for name, outs in found.items()}


def fresh_bntt(channels: int) -> BNTT:
    """Gamma 1, and buffers that one momentum-1 update replaces by the batch's statistics."""
    bn = BNTT(channels, STEPS)
    bn.momentum = 1.0
    return bn


def run_path(path: str, z: torch.Tensor):
    """(normalised output [T, B, C, H, W] or None, running mean, running var) of one float32
    training step of `path` on z."""
    steps, batch, channels = z.shape[:3]
    bn = fresh_bntt(channels)
    if path == "reference":
        y = torch.stack([bn(z[t], t) for t in range(steps)])
    elif path == "multistep":
        y = bn(z)
    elif path == "cpu, uncompiled":  # the cpu engine's convolution output is channels-last
        a = z.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        y = bn(_norm_stack(a, batch, z.dtype))
    elif path == "cpu, compiled":
        a = z.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        neuron = LIFNeuron(0.95, threshold=UNREACHABLE)
        y = torch.stack([bntt_lif_block(a[t * batch:(t + 1) * batch], bn, neuron, t, batch)[1]
                         for t in range(steps)])
    else:
        spikes = fused.bntt_lif(z, bn, LIFNeuron(0.95, threshold=UNREACHABLE))
        assert not spikes.any()
        y = None
    return y, bn.running_mean, bn.running_var


def errors(path: str, z64: torch.Tensor) -> dict:
    var, mean = torch.var_mean(z64, (1, 3, 4), correction=0)
    count = z64[:, :, 0].numel() // STEPS
    y, running_mean, running_var = run_path(path, z64.float())
    found = {
        "var": ((running_var.double() / (var * count / (count - 1)) - 1).abs().max().item()),
        "mean": ((running_mean.double() - mean).abs() / var.sqrt()).max().item(),
    }
    if y is not None:
        y64 = (z64 - mean[:, None, :, None, None]) / torch.sqrt(var + 1e-4)[:, None, :, None, None]
        found["output"] = (y.double() - y64).abs().max().item()
    return found


def assert_as_accurate_as_reference(path: str, z64: torch.Tensor) -> None:
    found = errors(path, z64)
    bounds = {"var": VAR_REL, "mean": MEAN_REL, "output": OUT_ABS}
    assert all(found[k] <= bounds[k] for k in found), f"{path}: {found} against {bounds}"


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("path", ["reference", "multistep", "cpu, uncompiled"])
def test_eager_paths(path, layer, pre_activations):
    assert_as_accurate_as_reference(path, pre_activations[layer])


@pytest.mark.parametrize("layer", LAYERS)
def test_compiled_cpu_block(layer, pre_activations, compiled):  # noqa: F811
    assert_as_accurate_as_reference("cpu, compiled", pre_activations[layer])


@pytest.mark.skipif(fused.triton is None, reason="Triton is not installed")
@needs_triton_interpreter
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.slow
def test_fused_kernels(layer, pre_activations):
    assert_as_accurate_as_reference("fused", pre_activations[layer])


def test_inputs_are_what_these_tests_need(pre_activations):
    """Thousands of values per channel, with means that are not small against the spread:
    what makes a float32 sum in sequence lose bits."""
    for name, z in pre_activations.items():
        var, mean = torch.var_mean(z, (1, 3, 4), correction=0)
        assert z[:, :, 0].numel() // STEPS >= 8192, name
        assert (mean.abs() / var.sqrt()).mean() > 0.3, name
