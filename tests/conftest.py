import os

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
