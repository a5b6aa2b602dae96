"""Every backend computes what the reference backend computes (one step at a time,
`SpikingBlock.step`): one matrix of architecture x norm x backend x train/eval x dtype, each cell
on the same weights and the same input spikes, comparing the logits, every parameter gradient
and every buffer (running statistics, step counts) after one forward and backward.

The architectures are the library's (bntt.models.MODELS) and a network of one's own built from
spiking blocks; the norms and backends are the library's lists (bntt.norms.NORMS,
bntt.engines.BACKENDS), so a new one is in the matrix as soon as it is registered. The reference
itself is checked against an independent statement of the equations in tests/test_model_spec.py
and tests/test_blocks.py. Without a GPU the fused backend's Triton kernels run in the Triton
interpreter (tests/conftest.py).
"""
import copy

import pytest
import torch
import torch.nn as nn

from bntt import engines, fused
from bntt.blocks import SpikingBlock, Steps, blocks
from bntt.coding import poisson_spikes
from bntt.models import MODELS, SpikingNetwork, build_model
from bntt.norms import MPBN, NORMS, TRAINS_ON_ALL_STEPS
from helpers import assert_close_relative, needs_triton_interpreter


class TinyResNet(SpikingNetwork):
    """A network of one's own: residual adds of spike maps, a pool inside a block and one
    between blocks, a readout."""

    def __init__(self, num_steps, leak_mem=0.9, norm="bntt"):
        super().__init__(num_steps, leak_mem=leak_mem, num_cls=5, in_channels=2, norm=norm)
        self.img_size = 8
        conv = lambda cin, cout: nn.Conv2d(cin, cout, 3, padding=1, bias=False)  # noqa: E731
        self.stem = SpikingBlock(conv(2, 6), self.norm_layer(6), self.neuron)
        self.body = SpikingBlock(conv(6, 6), self.norm_layer(6), self.neuron, nn.AvgPool2d(1))
        self.down = SpikingBlock(conv(6, 8), self.norm_layer(8), self.neuron, nn.AvgPool2d(2))
        self.pool = Steps(nn.AvgPool2d(2))
        self.fc = SpikingBlock(nn.Linear(8 * 2 * 2, 5, bias=False))
        self._init_weights()

    def layers(self, x, state):
        s = self.stem(x, state)
        s = s + self.body(s, state)  # spikes in {0, 1, 2}
        return self.fc(self.pool(self.down(s, state)), state)


ARCHS = (*MODELS, "own")
BACKENDS = tuple(name for name in engines.BACKENDS if name != "reference")
MODES = ("train", "eval")
DTYPES = {"f64": torch.float64, "f32": torch.float32}
# max |backend - reference| <= RELATIVE * max |reference|, per tensor: relative to the tensor's
# scale, so a float32 sum that lands a few ulps away from a near-zero element is not a failure,
# while a single flipped spike (an O(1) change) is
RELATIVE = {torch.float64: 1e-10, torch.float32: 1e-5}
# The gradient of TEBN's and TAB's per-step scale p_t is one sum over every value of a layer at
# that step, whose terms largely cancel in training (x_hat has zero mean): float32 rounding of
# a different summation order is then ~1.5e-5 of the result, still far from a flipped spike
WHOLE_LAYER_SUMS, RELATIVE_WHOLE_LAYER_F32 = ("scale",), 1e-4
STEPS, BATCH, LEAK = 3, 4, 0.9
# the smallest inputs each network takes: its pools need img_size a multiple of 8 (VGG9), of 16
# (VGG11), ResNet-19's two strides at least 4; the FC network reads 5 features a step
SIZES = {"vgg9": {"img_size": 8}, "vgg11": {"img_size": 16}, "resnet19": {"img_size": 4},
         "fc": {"in_features": 5, "hidden": (12, 8)}}
# Without a norm, currents of Xavier weights fade before the readout: the synapses are scaled
# up so that spikes reach it.
GAIN_WITHOUT_NORM = {"vgg9": 4.0, "vgg11": 4.0, "resnet19": 2.0, "fc": 2.0, "own": 2.0}

# What a backend cannot run, and why: (norm, backend, mode) -> reason. The baseline of such a
# norm in such a mode is the first backend that runs it; the cell of that backend checks that
# the others listed here still refuse, so a backend that learns to run it shows up here.
CANNOT_RUN = {
    (norm, "reference", "train"): f"{norm}'s training statistics span all time steps at once; "
                                  "the reference runs one step at a time"
    for norm in TRAINS_ON_ALL_STEPS}


def baseline(norm, mode):
    return next(name for name in ("reference", *BACKENDS) if (norm, name, mode) not in CANNOT_RUN)


def is_slow(arch, norm, backend, dtype):
    """The inner loop (-m "not slow") keeps every norm, backend, mode and dtype on the two tiny
    networks, every norm in float64 on VGG9, and BNTT in float32 on VGG11 and ResNet-19. The
    fused backend's kernels run in the Triton interpreter, slowly, on the others' hundreds of
    channels; VGG11's and ResNet-19's float64 convolutions take seconds a cell."""
    if arch in ("fc", "own"):
        return False
    if backend == "fused":
        return True
    if arch == "vgg9":
        return dtype != "f64"
    return (norm, dtype) != ("bntt", "f32")


def cell(*values, backend, slow):
    """A pytest parameter set named by its values; the fused backend's needs Triton."""
    marks = [pytest.mark.slow] if slow else []
    if backend == "fused":
        marks += [pytest.mark.skipif(fused.triton is None, reason="Triton is not installed"),
                  needs_triton_interpreter]
    return pytest.param(*values, marks=marks, id="-".join(str(v) for v in values))


def cells():
    for arch in ARCHS:
        for norm in NORMS:
            for backend in BACKENDS:
                for mode in MODES:
                    for dtype in DTYPES:
                        yield cell(arch, norm, backend, mode, dtype, backend=backend,
                                   slow=is_slow(arch, norm, backend, dtype))


def build(arch, norm, dtype, steps=STEPS, seed=0):
    """The network `arch` with `norm`, on the reference backend in `dtype`, with the norms'
    gammas, betas and running statistics away from their initial values (as after training),
    so that every per-step index and eval mode are really exercised."""
    torch.manual_seed(seed)
    if arch == "own":
        model = TinyResNet(steps, LEAK, norm=norm)
    else:
        model = build_model(arch, num_steps=steps, leak_mem=LEAK, num_cls=10, norm=norm,
                            engine="reference", **SIZES[arch])
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in blocks(model):
            norm_layer = block.norm
            if norm_layer is None:  # the readout
                continue
            if not list(norm_layer.parameters()):
                block.synapse.weight.mul_(GAIN_WITHOUT_NORM[arch])
                continue
            for layer in norm_layer.modules():  # MPBN's BatchNorm of the membrane too
                for name, p in layer.named_parameters(recurse=False):  # gammas, scales, betas
                    shifted = name == "bias"
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3 if shifted
                            else torch.rand(p.shape, generator=g) + 0.5)
                layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=g) * 0.3)
                layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=g) + 0.5)
    return model.to(dtype).set_engine("reference")


def inputs(model, dtype, seed=1):
    """The input train [T, B, ...] (Poisson spikes of images; currents for the FC network, which
    reads its inputs directly) and the weights of the logits in the loss."""
    g = torch.Generator().manual_seed(seed)
    steps = model.num_steps
    if hasattr(model, "img_size"):
        size = model.img_size
        images = torch.randn(BATCH, model.in_channels, size, size, dtype=dtype, generator=g) * 1.5
        train = poisson_spikes(images, steps, generator=g)
    else:
        train = torch.rand(steps, BATCH, model.in_channels, dtype=dtype, generator=g) * 2.5
    return train, torch.randn(BATCH, model.num_cls, dtype=dtype, generator=g)


def run(model, train, weights):
    out = model.forward_spikes(train)
    (out * weights).sum().backward()
    return out


def vanishing_gradients(model):
    """The parameters whose gradient is zero: in training, the beta of each MPBN current, whose
    shift of every membrane of a channel the membrane's BatchNorm takes out again (every current
    of an MPBN network, shortcuts included, reaches such a neuron; docs/spec.md, after Eq. M3)."""
    if not model.training:
        return set()
    return {f"{name}.bias" for name, m in model.named_modules() if isinstance(m, MPBN)}


def assert_same_run(fast, reference, train, weights, rel):
    """Logits, every parameter gradient and every buffer (running statistics, step counts) of
    `fast` equal those of `reference` after one forward and backward, in shape, dtype and value
    to `rel` of each tensor's largest magnitude."""
    before = {name: b.clone() for name, b in reference.named_buffers()}
    out_ref, out = run(reference, train, weights), run(fast, train, weights)
    assert out.shape == out_ref.shape == (train.shape[1], reference.num_cls)
    assert out.dtype == out_ref.dtype == weights.dtype
    assert out_ref.abs().max() > 0.05  # spikes reach the readout
    assert_close_relative(out, out_ref, rel, "logits")
    named, named_ref = dict(fast.named_parameters()), dict(reference.named_parameters())
    assert list(named) == list(named_ref)
    vanishing = vanishing_gradients(reference)
    largest = max(p.grad.abs().max().item() for p in named_ref.values())
    for name, p_ref in named_ref.items():
        grad, grad_ref = named[name].grad, p_ref.grad
        assert grad.shape == grad_ref.shape and grad.dtype == grad_ref.dtype, name
        if name in vanishing:  # zero but rounding, in both
            assert max(grad.abs().max(), grad_ref.abs().max()) <= rel * largest, name
            continue
        assert grad_ref.abs().max() > 0, name
        summed = grad.dtype == torch.float32 and name.rsplit(".", 1)[-1] in WHOLE_LAYER_SUMS
        assert_close_relative(grad, grad_ref, RELATIVE_WHOLE_LAYER_F32 if summed else rel,
                              f"grad of {name}")
    named, named_ref = dict(fast.named_buffers()), dict(reference.named_buffers())
    assert list(named) == list(named_ref)
    for name, b_ref in named_ref.items():
        b = named[name]
        assert b.shape == b_ref.shape and b.dtype == b_ref.dtype, name
        if b_ref.is_floating_point():
            assert_close_relative(b, b_ref, rel, name)
        else:
            assert torch.equal(b, b_ref), name
    moved = [name for name, b in named_ref.items() if not torch.equal(b, before[name])]
    if reference.training:  # every running statistic takes the step
        assert sorted(moved) == sorted(before), set(before) - set(moved)
    else:
        assert moved == []


def check(arch, norm, backend, mode, dtype, steps=STEPS):
    """One cell: `arch` with `norm` on `backend` against the baseline (the reference, or where
    CANNOT_RUN says it cannot, the first backend that can), from copies of one network."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    first = baseline(norm, mode)
    reference = build(arch, norm, dtype, steps).train(mode == "train").set_engine(first)
    train, weights = inputs(reference, dtype)
    if backend == first:  # what it is the baseline for still cannot be run elsewhere
        refusing = [name for name in ("reference", *BACKENDS) if (norm, name, mode) in CANNOT_RUN]
        assert refusing
        for name in refusing:
            try:
                run(copy.deepcopy(reference).set_engine(name), train, weights)
            except RuntimeError:
                continue
            pytest.fail(f"{name} now runs {norm} in {mode}: CANNOT_RUN says it cannot, as "
                        f"{CANNOT_RUN[norm, name, mode]!r}")
        return
    fast = copy.deepcopy(reference).set_engine(backend)
    assert {b.backend.name for b in blocks(fast)} == {backend}
    assert_same_run(fast, reference, train, weights, RELATIVE[dtype])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The networks here are tiny: a second thread costs more in synchronisation than it saves,
    and many times more on a machine whose cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def stacks_of_two_steps(monkeypatch):
    """The cpu backend runs the 3 steps of batch 4 in stacks of 2 and 1 steps, each from the
    membranes the last one left."""
    monkeypatch.setattr(engines, "BLOCK_IMAGES", 2 * BATCH)
    assert engines.block_steps(STEPS, BATCH) == 2


@pytest.mark.parametrize("arch,norm,backend,mode,dtype", cells())
def test_backend_equals_reference(arch, norm, backend, mode, dtype):
    check(arch, norm, backend, mode, dtype)


def step_cells():
    """VGG9 and VGG11 with BNTT over 1 and 7 steps; the inner loop keeps VGG9 in float64 on the
    backends that run without the Triton interpreter."""
    for arch in ("vgg9", "vgg11"):
        for steps in (1, 7):
            for backend in BACKENDS:
                for mode in MODES:
                    for dtype in DTYPES:
                        slow = arch == "vgg11" or backend == "fused" or dtype != "f64"
                        yield cell(arch, f"T{steps}", backend, mode, dtype, backend=backend,
                                   slow=slow)


@pytest.mark.parametrize("arch,steps,backend,mode,dtype", step_cells())
def test_any_number_of_steps(arch, steps, backend, mode, dtype):
    """One step, and seven: the cpu backend's stacks of 2, 2, 2 and 1 steps."""
    check(arch, "bntt", backend, mode, dtype, int(steps[1:]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stack", [1, 5], ids=["step-by-step", "one-stack"])
def test_cpu_backend_in_stacks_of_any_size(stack, mode, monkeypatch):
    """VGG9's 5 steps one stack at a time, and in one stack."""
    monkeypatch.setattr(engines, "BLOCK_IMAGES", stack * BATCH)
    assert engines.block_steps(5, BATCH) == stack
    check("vgg9", "bntt", "cpu", mode, "f64", steps=5)
