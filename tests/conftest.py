import os

import pytest
import torch

# Without a GPU, the fused engine's Triton kernels run in the Triton interpreter. It is chosen
# when the kernels are defined, so it must be set before bntt.fused is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The cpu engine compiles its BNTT + LIF kernels (bntt/compiled.py) once per layer shape, a few
# seconds each: across the many small networks of the tests that would take minutes. They run
# uncompiled here, as BNTT and lif_scan, except where a test turns compiling on (the
# `compiled` fixture of tests/test_compiled.py), which checks the kernels against that path.
os.environ.setdefault("BNTT_COMPILE", "0")


@pytest.fixture(scope="session")
def tiny_trained_run(tmp_path_factory):
    """One train.py run folder, made once for the whole session: VGG9 at T=2, one epoch on 32
    bundled Fashion-MNIST images, scored on 20. The analyses' tests read it, each writing its
    outputs into a folder of its own inside it."""
    import train
    from helpers import tiny_args

    out = tmp_path_factory.mktemp("runs")
    args = tiny_args(batch_size=16, leak_mem=None, train_samples=32, test_samples=20)
    assert train.cli([*args, "--num_epochs", "1", "--out_dir", str(out), "--run_name", "r"]) == 0
    return out / "r"
