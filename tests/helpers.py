"""Small builders shared by the tests."""
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bntt.config import Config
from bntt.networks import build_network
from model import build_model


ROOT = Path(__file__).resolve().parents[1]


def reproduce_script(name):
    """The module of scripts/reproduce/<name>.py, imported in this process."""
    sys.path.insert(0, str(ROOT / "scripts" / "reproduce"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


# A train.py run small enough for a test: VGG9 at T=2 on a few bundled Fashion-MNIST images.
TINY_RUN = {"dataset": "fashionmnist_subset", "arch": "vgg9", "num_steps": 2, "batch_size": 32,
            "lr": 0.1, "leak_mem": 0.95, "num_workers": 0, "train_samples": 64,
            "test_samples": 40, "device": "cpu"}


def network(arch, dataset, num_steps, leak_mem=0.95, fc_hidden=None, **options):
    """The network train.py builds for these options (fc_hidden as a tuple of sizes)."""
    if fc_hidden is not None:
        options["fc_hidden"] = ",".join(map(str, fc_hidden))
    return build_network(Config(arch=arch, dataset=dataset, num_steps=num_steps,
                                leak_mem=leak_mem, **options))


def tiny_args(**changes) -> list:
    """TINY_RUN with `changes` (None leaves an option to train.py's default) as command-line
    arguments."""
    options = {**TINY_RUN, **changes}
    return [arg for key, value in options.items() if value is not None
            for arg in (f"--{key}", str(value))]


def cli_error(capsys, main, argv):
    """Exit code and stderr of `main(argv)`, without the progress bars of epochs that ran."""
    code = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.strip() and "%|" not in line and line.strip() != "\x1b[A"]
    return code, "\n".join(lines)


def triton_interpreter_broken() -> bool:
    """Triton's interpreter before 3.7 turns loop bounds into Python ints with int(array), which
    NumPy 2.4 made an error (seen with torch 2.11, Triton 3.6, NumPy 2.4.6). The compiled kernels
    are not affected (test_kernels_compile_for_hopper); NumPy < 2.4 or Triton >= 3.7 run these."""
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return False
    try:
        import triton
    except ImportError:
        return False
    version = lambda text: tuple(int(x) for x in text.split("+")[0].split(".")[:2])  # noqa: E731
    return version(triton.__version__) < (3, 7) and version(np.__version__) >= (2, 4)


needs_triton_interpreter = pytest.mark.skipif(
    triton_interpreter_broken(), reason="this Triton's interpreter fails under NumPy >= 2.4 "
                                  "(fixed in Triton 3.7); see tests/helpers.py")


def assert_close_relative(actual, expected, rel, what):
    """max |actual - expected| <= rel * max |expected|: relative to the tensor's scale, so a
    float32 sum that lands a few ulps away from a near-zero element is not a failure, while a
    single flipped spike (an O(1) change) is."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= rel * scale, f"{what}: max error {error:.3g} > {rel:g} x {scale:.3g}"


def randomize_bntt(model, generator=None):
    """Give every BNTT layer non-trivial gammas and running statistics (as after training), so
    that eval mode and the per-step indexing are really exercised."""
    with torch.no_grad():
        for _, bn in model.bntt_layers():
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=generator) * 0.3)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) + 0.5)
    return model


def small_model(arch, steps, dtype=torch.float64, img_size=16, engine="reference", leak=0.95,
                seed=0, in_channels=3):
    torch.manual_seed(seed)
    model = build_model(arch, num_steps=steps, leak_mem=leak, img_size=img_size, num_cls=10,
                        in_channels=in_channels, engine=engine)
    g = torch.Generator().manual_seed(seed + 1)
    return randomize_bntt(model, g).to(dtype)


def grads_in_authors_layout(model):
    """Parameter gradients keyed like the authors' state_dict (bntt{i}.{t}.weight per step)."""
    grads = {}
    bntt_names = {name for name, _ in model.bntt_layers()}
    for name, p in model.named_parameters():
        layer = name.rsplit(".", 1)[0]
        if layer in bntt_names:
            for t in range(p.shape[0]):
                grads[f"{layer}.{t}.weight"] = p.grad[t]
        else:
            grads[name] = p.grad
    return grads
