import os

import torch

# Without a GPU, the fused engine's Triton kernels run in the Triton interpreter. It is chosen
# when the kernels are defined, so it must be set before bntt.fused is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
