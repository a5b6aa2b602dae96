"""The fused BNTT + LIF kernels (bntt/fused/kernels.py) against LIFNeuron(BNTT(z)) of the library.

Without a GPU they run in the Triton interpreter (tests/conftest.py);
test_kernels_compile_for_hopper compiles them for the H100 (sm_90) to catch what the interpreter
accepts and the compiler does not.
"""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bntt import BNTT, LIFNeuron, fused
from helpers import needs_triton_interpreter

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(fused.triton is None, reason="Triton is not installed")


def make_layer(channels, steps, dtype, training, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = BNTT(channels, steps).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
    return bn.train(training)


def run_both(z, bn, neuron, grad_seed=1):
    bn_ref = copy.deepcopy(bn)
    z_fused = z.clone().requires_grad_()
    z_ref = z.clone().requires_grad_()
    weights = torch.randn(z.shape, dtype=z.dtype, generator=torch.Generator().manual_seed(grad_seed))
    s_fused = fused.bntt_lif(z_fused, bn, neuron)
    (s_fused * weights).sum().backward()
    s_ref = neuron(bn_ref(z_ref))
    (s_ref * weights).sum().backward()
    return (s_fused, z_fused.grad, bn), (s_ref, z_ref.grad, bn_ref)


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape,layout", [((4, 6, 5, 3, 3), "nchw"), ((4, 6, 5, 3, 3), "channels_last"),
                                          ((3, 8, 20), "fc"), ((1, 5, 7, 2, 2), "nchw")])
@needs_triton_interpreter
def test_fused_equals_library_composition(shape, layout, training, dtype, rel):
    g = torch.Generator().manual_seed(sum(shape))
    z = torch.randn(shape, dtype=dtype, generator=g) * 2 + 0.5
    if layout == "channels_last":
        z = z.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    bn = make_layer(shape[2], shape[0] + 2, dtype, training)  # more BNTT steps than used
    (s, dz, bn_f), (s_ref, dz_ref, bn_r) = run_both(z, bn, LIFNeuron(leak=0.9, threshold=1.0))

    assert torch.equal(s, s_ref)
    assert 0.05 < s_ref.mean() < 0.95
    assert (dz - dz_ref).abs().max() <= rel * dz_ref.abs().max()
    assert (bn_f.weight.grad - bn_r.weight.grad).abs().max() <= rel * bn_r.weight.grad.abs().max()
    assert bn_f.weight.grad[shape[0]:].abs().max() == 0  # steps not run get no gradient
    for name in ("running_mean", "running_var"):
        a, b = getattr(bn_f, name), getattr(bn_r, name)
        assert (a - b).abs().max() <= rel * b.abs().max(), name
    assert torch.equal(bn_f.num_batches_tracked, bn_r.num_batches_tracked)


@needs_triton_interpreter
def test_forward_kernel_writes_the_spikes_as_int8_codes():
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(3, 4, 6, 5, 5, generator=g) + 0.5).flatten(0, 1)
    z = z.contiguous(memory_format=torch.channels_last).unflatten(0, (3, 4))
    bn = make_layer(6, 3, torch.float32, True)
    spikes, codes = fused.bntt_lif(z, copy.deepcopy(bn), LIFNeuron(), codes=True)
    alone = fused.bntt_lif(z, copy.deepcopy(bn), LIFNeuron())
    assert 0.05 < alone.mean() < 0.95 and torch.equal(spikes, alone)
    assert codes.dtype == torch.int8 and torch.equal(codes, alone.to(torch.int8))
    assert codes.stride() == spikes.stride()


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-12), (torch.float32, 1e-5)],
                         ids=["f64", "f32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("k,hw", [(2, (6, 4)), (4, (4, 8))], ids=["2x2", "4x4"])
@needs_triton_interpreter
def test_pooling_kernels_equal_avg_pool_of_the_spikes(k, hw, training, dtype, rel):
    """bntt_lif(..., pool=k): the pooled spikes and their window counts from the forward kernel,
    the gradient through the pool from the backward, against nn.AvgPool2d(k) of the spikes."""
    g = torch.Generator().manual_seed(k)
    shape = (3, 4, 5, *hw)
    z = (torch.randn(shape, dtype=dtype, generator=g) * 2 + 0.5).flatten(0, 1)
    z = z.contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    bn = make_layer(5, 4, dtype, training)
    bn_ref, neuron, pool = copy.deepcopy(bn), LIFNeuron(leak=0.9, threshold=1.0), nn.AvgPool2d(k)
    z_fused, z_ref = z.clone().requires_grad_(), z.clone().requires_grad_()
    pooled, codes = fused.bntt_lif(z_fused, bn, neuron, codes=True, pool=k)
    ref = pool(neuron(bn_ref(z_ref)).flatten(0, 1)).unflatten(0, shape[:2])
    assert pooled.shape == ref.shape == (3, 4, 5, hw[0] // k, hw[1] // k)
    assert torch.equal(pooled, ref) and 0 < ref.mean() < 1
    assert ((ref > 0) & (ref < 1)).any()  # windows with some but not all spikes
    assert codes.dtype == torch.int8 and torch.equal(codes, (ref * k * k).to(torch.int8))
    assert codes.stride() == pooled.stride()
    assert torch.equal(fused.bntt_lif(z, copy.deepcopy(bn_ref), neuron, pool=k), ref)

    weights = torch.randn(ref.shape, dtype=dtype, generator=g)
    (pooled * weights).sum().backward()
    (ref * weights).sum().backward()
    assert (z_fused.grad - z_ref.grad).abs().max() <= rel * z_ref.grad.abs().max()
    assert (bn.weight.grad - bn_ref.weight.grad).abs().max() <= rel * bn_ref.weight.grad.abs().max()
    for name in ("running_mean", "running_var"):
        a, b = getattr(bn, name), getattr(bn_ref, name)
        assert (a - b).abs().max() <= rel * b.abs().max(), name


@needs_triton_interpreter
def test_pooling_kernels_refuse_what_they_cannot_pool():
    bn, neuron = BNTT(4, 2), LIFNeuron()
    with pytest.raises(ValueError, match="not k=2 over 5x6"):
        fused.bntt_lif(torch.randn(2, 3, 4, 5, 6), bn, neuron, pool=2)
    with pytest.raises(ValueError, match="not k=3 over 6x6"):
        fused.bntt_lif(torch.randn(2, 3, 4, 6, 6), bn, neuron, pool=3)
    with pytest.raises(ValueError, match="not k=2 over vectors"):
        fused.bntt_lif(torch.randn(2, 3, 4), bn, neuron, pool=2)


@needs_triton_interpreter
def test_the_engine_casts_to_int8_only_where_no_kernel_wrote_the_codes():
    """VGG9: conv1 reads the input spikes, which are cast to int8; the other six convolutions
    read a layer's spikes (conv2, conv4, conv6, conv7) or its pooled spikes (conv3, conv5),
    whose codes the kernel wrote. The gradients are checked against the reference in
    tests/test_equivalence.py."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from helpers import small_model

    class Int8Casts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.int8:
                Int8Casts.count += 1
            return func(*args, **kwargs)

    model = small_model("vgg9", 2, torch.float32, engine="fused").set_engine("fused").train()
    spikes = (torch.rand(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) < 0.5).float()
    with Int8Casts():
        out = model.forward_spikes(spikes)
    out.sum().backward()
    assert Int8Casts.count == 1
    assert model.conv2.weight.grad.abs().max() > 0


def test_batch_statistics_survive_a_large_mean():
    # float32 data with mean 1e4 and spread 1: a sum-of-squares variance keeps no correct digit
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(2, 3000, 8, generator=g, dtype=torch.float64) + 1e4).float()
    mean, var = fused.batch_stats(z)
    var64, mean64 = torch.var_mean(z.double(), dim=1, unbiased=False)
    assert (mean.double() - mean64).abs().max() < 2e-3  # about an ulp of 1e4 in float32
    assert ((var.double() / var64) - 1).abs().max() < 1e-5


def test_refuses_too_many_steps_and_single_rows():
    bn = BNTT(4, fused.MAX_STEPS + 1)
    with pytest.raises(ValueError, match="at most 64 time steps"):
        fused.bntt_lif(torch.randn(fused.MAX_STEPS + 1, 2, 4), bn, LIFNeuron())
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fused.bntt_lif(torch.randn(2, 1, 4), BNTT(4, 2), LIFNeuron())


@pytest.mark.slow
def test_kernels_compile_for_hopper():
    """The real compiler, down to SASS for sm_90 with the ptxas that ships with Triton."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "maintenance" / "compile_kernels.py"), "--steps", "4"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(r[0], "POOL=2" in r[1]) for r in rows] == [
        ("_stats_kernel", False), ("_forward_kernel", False), ("_forward_kernel", True),
        ("_backward_scan_kernel", False), ("_backward_scan_kernel", False),
        ("_backward_scan_kernel", True), ("_batchnorm_grad_kernel", False)]
    assert all(int(r[2]) > 0 for r in rows)  # ptxas produced code and reported registers


@needs_triton_interpreter
@pytest.mark.slow
def test_check_script_covers_the_pooled_layers(tmp_path):
    """scripts/maintenance/check_fused.py, the check run on a GPU, in the interpreter: every
    VGG9 layer, the three with a pool after them pooled by the kernels, agrees in float64."""
    out = tmp_path / "check.json"
    script = ROOT / "scripts" / "maintenance" / "check_fused.py"
    result = subprocess.run([sys.executable, str(script), "--quick", "--device", "cpu",
                             "--dtypes", "float64", "--json", str(out)],
                            capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [(r["channels"], r["size"], r["pool"]) for r in report["layers"]] == [
        (64, 32, 1), (64, 32, 2), (128, 16, 1), (128, 16, 2), (256, 8, 1), (256, 8, 1),
        (256, 8, 2), (1024, None, 1)]
    assert all(r["neurons_differing"] == 0 and r["dz"] < 1e-12 and r["dgamma"] < 1e-12
               for r in report["layers"])
    assert report["model"]["logits"] < 1e-12 and report["model"]["worst_parameter_grad"] < 1e-12


@needs_triton_interpreter
def test_a_vgg9_training_step_launches_no_more_work():
    """The kernels, copies and dtype casts of a second VGG9 training step (forward and
    backward) on the fused engine, counted at PyTorch's dispatcher and at the Triton launches
    (the interpreter's own work inside a launch is not counted). The budget is what the engine
    took before it ran on spiking blocks: 8 launches of each of the four kernels (7 conv layers
    and the FC), 44 copies and casts, 7 convolutions each way, 625 dispatched operations."""
    import collections

    import triton.runtime.interpreter as interpreter
    from torch.utils._python_dispatch import TorchDispatchMode

    from helpers import small_model

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops, self.inside = collections.Counter(), 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not self.inside:
                self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    count = Count()
    launch = interpreter.GridExecutor.__call__

    def counted_launch(self, *args, **kwargs):
        count.ops["launch " + self.fn.__name__] += 1
        count.inside += 1
        try:
            return launch(self, *args, **kwargs)
        finally:
            count.inside -= 1

    model = small_model("vgg9", 2, torch.float32, engine="fused").set_engine("fused").train()
    spikes = (torch.rand(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) < 0.5).float()
    model.forward_spikes(spikes).sum().backward()  # the first step learns where codes are read
    interpreter.GridExecutor.__call__ = counted_launch
    try:
        with count:
            model.forward_spikes(spikes).sum().backward()
    finally:
        interpreter.GridExecutor.__call__ = launch
    ops = count.ops
    assert {k: v for k, v in ops.items() if k.startswith("launch")} == {
        "launch _stats_kernel": 8, "launch _forward_kernel": 8, "launch _backward_scan_kernel": 8,
        "launch _batchnorm_grad_kernel": 8}
    assert ops["copy_"] + ops["clone"] + ops["_to_copy"] <= 44
    assert ops["convolution"] == ops["convolution_backward"] == 7
    assert ops["zeros"] + ops["zeros_like"] + ops["empty_like"] <= 36
    assert sum(ops.values()) <= 625
