"""What train.py and evaluate.py share: devices, autocast, and one-line errors."""
from __future__ import annotations

import math
import os
import re
import sys
from contextlib import contextmanager, nullcontext

import torch

from bntt.checkpoint import CheckpointError, WriteError
from bntt.data import DataUnavailable


class UsageError(Exception):
    """Bad flags or files given on the command line; the message says which."""


class StoppedByRank0(Exception):
    """Under torchrun: rank 0 refused to go on and has said why; this process stops with it,
    silently, so that the reason is printed once."""


def require(checks) -> None:
    """Raise UsageError with the message of the first (ok, message) pair that is not ok."""
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def require_positive(named_values) -> None:
    """UsageError for the first (value, flag) whose value is not a positive finite number."""
    for value, name in named_values:
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be a positive number, got {value}")


def check_scoring_flags(args) -> None:
    """The flags every command that scores a checkpoint on a test set shares: batch_size,
    leak_mem, test_samples, eval_seed, and num_workers where the command has it."""
    checks = [
        (args.batch_size >= 1, f"batch_size must be >= 1, got {args.batch_size}"),
        (args.leak_mem is None or 0 < args.leak_mem <= 1, f"leak_mem must be in (0, 1], got {args.leak_mem}"),
        (args.test_samples >= 0, f"test_samples must be >= 0, got {args.test_samples}"),
        (getattr(args, "num_workers", 0) >= 0, f"num_workers must be >= 0, got {getattr(args, 'num_workers', 0)}"),
        (0 <= args.eval_seed < 2 ** 32, f"eval_seed must be in 0..{2 ** 32 - 1}, got {args.eval_seed}"),
    ]
    require(checks)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None, saying so in one line, when
    matplotlib (an optional extra) is not installed."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no figures (pip install matplotlib)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


DEVICES = "auto, cpu, cuda, cuda:N"


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA if available), `cpu`, `cuda` or `cuda:N`: the devices the engines, the
    autocast and the generators are written for. Any other name (meta, xpu, mps, ...) is a
    UsageError, raised before a command writes anything."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    cuda = re.fullmatch(r"cuda(?::(\d+))?", name)
    if cuda is None:
        raise UsageError(f"device {name!r} is not supported; choose from {DEVICES}")
    if not torch.cuda.is_available():
        raise UsageError(f"device {name} requested but CUDA is not available")
    if cuda.group(1) is not None and int(cuda.group(1)) >= torch.cuda.device_count():
        raise UsageError(f"device {name} requested but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


@contextmanager
def memory_for(what: str):
    """An allocation that fails in the block (CPU or GPU) is one UsageError naming `what`:
    sizes within the documented bounds can still exceed a machine's memory."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        if not isinstance(exc, torch.OutOfMemoryError) and "can't allocate memory" not in str(exc):
            raise
        tried = re.search(r"tried to allocate [^.(]*", str(exc))
        raise UsageError(f"not enough memory for {what}"
                         f"{f' ({tried.group(0).strip()})' if tried else ''}") from None


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA or a CPU when enabled; a no-op elsewhere."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def cpu_has_bf16() -> bool:
    """Whether this CPU has the bf16 instructions oneDNN uses (AVX512-BF16 or AMX). Without
    them bf16 convolutions are emulated, and slower than float32 ones."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def amp_warning(device: torch.device, enabled: bool) -> str | None:
    """A line to show when --amp will make a run slower rather than faster."""
    if enabled and device.type == "cpu" and not cpu_has_bf16():
        return ("warning: this CPU has no bf16 instructions (AVX512-BF16 or AMX): --amp runs "
                "slower than float32 here")
    return None


def run_cli(main, prog: str, argv=None) -> int:
    """Run main(argv); known failures become `prog: error: ...` on stderr and an exit code
    (2 for bad input, missing data or a failed write, 1 for a diverged run, 130 for Ctrl-C)."""
    if os.environ.get("RANK", "0") != "0" and os.environ.get("WORLD_SIZE", "1") != "1":
        prog = f"{prog} (rank {os.environ['RANK']})"  # under torchrun: which process says it
    try:
        return main(argv)
    except (UsageError, CheckpointError, DataUnavailable, WriteError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except StoppedByRank0:
        return 2
    except FloatingPointError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
