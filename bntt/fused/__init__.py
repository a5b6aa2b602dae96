"""The fused backend: Triton kernels for BNTT + LIF (kernels.py) and the backend that runs a
block with them, with channels-last pooling and int8-saving spike convolutions (engine.py).

Without a GPU the kernels run under the Triton interpreter when TRITON_INTERPRET=1 is set
before this package is first imported (slowly; that is how the tests cover them).
"""
from bntt.fused.engine import FUSED, Fused
from bntt.fused.kernels import BNTTLIF, MAX_STEPS, available, batch_stats, bntt_lif, triton

__all__ = ["BNTTLIF", "FUSED", "Fused", "MAX_STEPS", "available", "batch_stats", "bntt_lif",
           "triton"]
