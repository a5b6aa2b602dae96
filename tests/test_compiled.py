"""The cpu engine's compiled BNTT + LIF block (bntt/compiled.py) against BNTT followed by
lif_scan, the path it replaces (and which the other tests run: tests/conftest.py): spikes,
the membrane it leaves, the gradients of the input, of gamma and of the membrane it starts
from, and the running statistics, in float64 to 1e-12; under bf16 autocast; the cpu engine
with it against the reference engine; and what happens where no C++ compiler can be found."""
import copy
import os
import subprocess
import sys
import warnings

import pytest
import torch

from bntt import compiled as compiled_module
from bntt import engines
from bntt.bntt import BNTT
from bntt.compiled import bntt_lif_block
from bntt.engines import _norm_stack
from bntt.neuron import LIFNeuron, lif_scan
from helpers import assert_close_relative, small_model
from test_cpu_engine import assert_same_under_autocast, pair
from test_equivalence import check

pytestmark = pytest.mark.slow  # subprocesses or compilation: outside the inner loop

STEPS, BATCH, CHANNELS, SIZE = 5, 4, 8, 6


@pytest.fixture
def compiled(monkeypatch):
    """Compiling on (the tests run without it: tests/conftest.py), and no fallback warning."""
    monkeypatch.setitem(compiled_module._state, "compile", True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield
    assert compiled_module.enabled()


def layer(dtype, training, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = BNTT(CHANNELS, STEPS).to(dtype).train(training)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.weight.shape, dtype=dtype, generator=g) + 0.5)
        bn.running_mean.copy_(torch.rand(bn.running_mean.shape, dtype=dtype, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, dtype=dtype, generator=g) + 0.5)
    return bn, g


def channels_last(*shape, dtype, generator, scale=1.0, shift=0.0):
    x = torch.randn(*shape, dtype=dtype, generator=generator) * scale + shift
    return x.contiguous(memory_format=torch.channels_last)


def run_both(n, first_step, dtype, training, from_rest):
    """(compiled, eager): spikes, u_n, dL/da, dL/dgamma, dL/du0 (None from rest) and the BNTT
    buffers after one forward and backward of a block of n steps."""
    bn, g = layer(dtype, training)
    a = channels_last(n * BATCH, CHANNELS, SIZE, SIZE, dtype=dtype, generator=g, scale=2.0)
    u0 = None if from_rest else channels_last(BATCH, CHANNELS, SIZE, SIZE, dtype=dtype, generator=g)
    grad_s = torch.randn(a.shape, dtype=dtype, generator=g)
    grad_u = torch.randn(BATCH, CHANNELS, SIZE, SIZE, dtype=dtype, generator=g)
    results = []
    for compiled in (True, False):
        norm, a_in = copy.deepcopy(bn), a.clone().requires_grad_()
        u_in = None if u0 is None else u0.clone().requires_grad_()
        if compiled:
            s, u = bntt_lif_block(a_in, norm, LIFNeuron(0.9), first_step, BATCH, u_in)
        else:
            z = norm(_norm_stack(a_in, BATCH, dtype), first_step=first_step)
            s, u = lif_scan(z, 0.9, 1.0, u_in, None, torch.channels_last)
        torch.autograd.backward((s, u), (grad_s, grad_u))
        results.append({"spikes": s, "u_n": u, "dL/da": a_in.grad, "dL/dgamma": norm.weight.grad,
                        "dL/du0": None if u_in is None else u_in.grad,
                        **dict(norm.named_buffers())})
    return results


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("n, first_step, from_rest", [(2, 0, True), (3, 2, False), (1, 4, False)])
def test_block_equals_bntt_then_lif_scan_in_float64(n, first_step, from_rest, training,
                                                     compiled):
    block, eager = run_both(n, first_step, torch.float64, training, from_rest)
    spikes = eager["spikes"]
    assert spikes.is_contiguous(memory_format=torch.channels_last)
    assert block["spikes"].stride() == spikes.stride() and 0.1 < spikes.mean() < 0.6
    assert torch.equal(block["spikes"], spikes)
    assert eager["dL/da"].abs().max() > 0.1 and eager["dL/dgamma"][first_step].abs().max() > 0.1
    for name, value in eager.items():
        if name == "spikes":
            continue
        if value is None:  # no membrane to start from
            assert block[name] is None, name
        elif value.is_floating_point():
            assert_close_relative(block[name], value, 1e-12, name)
        else:
            assert torch.equal(block[name], value), name
    steps = slice(first_step, first_step + n)  # only the block's steps move
    assert (eager["dL/dgamma"][steps] != 0).all() and not eager["dL/dgamma"][:first_step].any()
    counted = [int(training and first_step <= t < first_step + n) for t in range(STEPS)]
    assert eager["num_batches_tracked"].tolist() == counted


def test_block_under_bf16_autocast(compiled):
    """bf16 convolution output in, bf16 spikes out for the next convolution, float32 membrane
    and arithmetic: the spikes are those of the float32 path on the same input."""
    bn, g = layer(torch.float32, True)
    a = channels_last(2 * BATCH, CHANNELS, SIZE, SIZE, dtype=torch.float32, generator=g,
                      scale=2.0).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, u = bntt_lif_block(a, copy.deepcopy(bn), LIFNeuron(0.9), 0, BATCH,
                              spike_dtype=torch.bfloat16)
    assert s.dtype == torch.bfloat16 and u.dtype == torch.float32
    s32, u32 = bntt_lif_block(a.detach().float(), bn, LIFNeuron(0.9), 0, BATCH)
    assert torch.equal(s.float(), s32) and torch.equal(u, u32)
    (s.float() * torch.randn(s.shape, generator=g)).sum().backward()
    assert a.grad.dtype == torch.bfloat16 and a.grad.abs().max() > 0


def test_block_refuses_what_bntt_refuses(compiled):
    bn, g = layer(torch.float32, True)
    a = channels_last(2 * BATCH, CHANNELS, SIZE, SIZE, dtype=torch.float32, generator=g)
    with pytest.raises(ValueError, match="BNTT with 5 steps got a stack of 2 steps from step 4"):
        bntt_lif_block(a, bn, LIFNeuron(0.9), 4, BATCH)
    with pytest.raises(ValueError, match="BNTT expects 8 channels, got 4"):
        bntt_lif_block(a[:, :4], bn, LIFNeuron(0.9), 0, BATCH)
    with pytest.raises(ValueError, match="more than 1 value per channel when training, got 1"):
        bntt_lif_block(a[:2, :, :1, :1], bn, LIFNeuron(0.9), 0, 1)


def test_without_a_compiler_the_functions_run_uncompiled(tmp_path):
    """No C++ compiler: one warning, then the same numbers from the uncompiled functions."""
    script = (
        "import warnings, torch\n"
        "from test_compiled import run_both\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    block, eager = run_both(2, 1, torch.float64, True, False)\n"
        "ours = [str(w.message) for w in caught if 'cpu engine' in str(w.message)]\n"
        "print(len(ours), ours[0][:60])\n"
        "import bntt.compiled\n"
        "assert not bntt.compiled.enabled()  # the engine runs BNTT and lif_scan from here on\n"
        "assert torch.equal(block['spikes'], eager['spikes'])\n"
        "for name in ('u_n', 'dL/da', 'dL/dgamma', 'dL/du0', 'running_var'):\n"
        "    assert torch.allclose(block[name], eager[name], rtol=1e-12, atol=0), name\n")
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, BNTT_COMPILE="1", CXX=str(tmp_path / "no-such-compiler"),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([tests, os.path.dirname(tests),
                                           os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script], cwd=tests, env=env, check=False,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1 torch.compile cannot build the cpu engine's BNTT + LIF kerne"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cpu_engine_with_the_block_equals_the_reference_in_float64(training, compiled, monkeypatch):
    """VGG9, 5 steps of batch 4 in blocks of 2, 2 and 1 steps: a cell of the equivalence matrix
    (tests/test_equivalence.py) with the compiled block."""
    monkeypatch.setattr(engines, "BLOCK_IMAGES", 8)
    assert engines.block_steps(5, 4) == 2
    check("vgg9", "bntt", "cpu", "train" if training else "eval", "f64", steps=5)


def test_cpu_engine_with_the_block_under_bf16_autocast(compiled, monkeypatch):
    """Against the reference engine under autocast, as tests/test_cpu_engine.py checks the
    uncompiled path: a rare spike flips where float32 sums run in another order."""
    monkeypatch.setattr(engines, "BLOCK_IMAGES", 8)
    assert_same_under_autocast(*pair(small_model("vgg9", 4, torch.float32).train()))
