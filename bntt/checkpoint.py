"""Checkpoints: atomic writes, safe loading, RNG state, and clear errors for mismatched models.

A checkpoint is a dict readable with `torch.load(path, weights_only=True)`. It keeps the keys of
the authors' train.py (`state_dict`, `global_step` = completed epochs, `accuracy` = best test
top-1) so each side can load the other's weights, and adds what a resumable run needs:
`optimizer`, `epoch`, `best_epoch`, `rng` and `config`.

A run folder holds `last.pt` (the end of the last finished epoch) and `best.pt` (the epoch with
the best test top-1). Wherever a command takes a checkpoint, a run folder stands for its
last.pt: the model whose accuracy is reported, and the one a resumed run continues from.
best.pt is read only when named.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch


RUN_CHECKPOINT = "last.pt"  # what a run folder means (see the module docstring)
BEST_CHECKPOINT = "best.pt"


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or does not fit the model; the message says which."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write) -> None:
    """Call write(f) on a temporary binary file in the same folder, then rename it to `path`: a
    reader (or a resumed run after a kill) sees either the old file or the new one, never half
    of one. The file gets the permissions a plain open() would give (mkstemp's are 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(obj, path) -> None:
    """torch.save `obj` to `path` atomically (see write_atomic)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def checkpoint_file(path) -> Path:
    """The checkpoint file that `path` names: itself, or a run folder's last.pt."""
    path = Path(path)
    return path / RUN_CHECKPOINT if path.is_dir() else path


def run_folder_of(path) -> Path:
    """The run folder that `path` (a run folder or a checkpoint file in one) belongs to."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def load_checkpoint(path, map_location="cpu") -> dict:
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not ours"
        raise CheckpointError(f"{path} is not a readable checkpoint ({_load_failure(exc)})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def _load_failure(exc: Exception) -> str:
    """Why torch.load refused a file, without torch's advice to retry with weights_only=False:
    a file that needs it can run code, and one from elsewhere must not be loaded that way."""
    advice = ("weights_only", "Weights only load failed", "Check the documentation", "file an issue")
    lines = [line.replace("WeightsUnpickler error:", "").strip() for line in str(exc).splitlines()
             if not any(a in line for a in advice)]
    lines = [line for line in lines if line]
    return lines[0] if lines else exc.__class__.__name__


def model_state(ckpt: dict) -> dict:
    """The model's state_dict from one of our checkpoints, the authors', or a bare state_dict."""
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("checkpoint holds no model state_dict")
    return state


def describe_state(state: dict) -> dict:
    """What network a state_dict is for: arch, num_steps, num_cls, in_channels (and the hidden
    sizes of an fc network). num_steps is None when the layers are not BNTT (the ablation's
    --norm): nothing in the weights is per step then, and the run's config says it."""
    steps = {int(m.group(1)) for k in state if (m := re.fullmatch(r"bntt1\.(\d+)\.weight", k))}
    num_steps = max(steps) + 1 if steps else None
    if "fc_out.weight" in state and "fc1.weight" in state:
        hidden = []
        while f"fc{len(hidden) + 1}.weight" in state:
            hidden.append(state[f"fc{len(hidden) + 1}.weight"].shape[0])
        return {"arch": "fc", "num_steps": num_steps, "num_cls": state["fc_out.weight"].shape[0],
                "in_channels": state["fc1.weight"].shape[1], "hidden": tuple(hidden)}
    if "conv1.weight" not in state or "fc2.weight" not in state:
        raise CheckpointError("state_dict is not a spiking network of this repository (no "
                              "conv1/fc2 or fc1/fc_out)")
    return {
        "arch": "vgg11" if "conv8.weight" in state else "vgg9",
        "num_steps": num_steps,
        "num_cls": state["fc2.weight"].shape[0],
        "in_channels": state["conv1.weight"].shape[1],
    }


def load_model_state(model, state: dict, arch: str, source="checkpoint") -> None:
    """Strictly load `state` into `model`, first comparing the networks they describe so that a
    mismatch reads as one sentence instead of hundreds of missing keys."""
    have = describe_state(state)
    want = {"arch": arch, "num_steps": model.num_steps, "num_cls": model.num_cls,
            "in_channels": model.in_channels}
    diffs = [f"{k}={have[k]} (this model: {want[k]})" for k in want
             if have[k] is not None and have[k] != want[k]]
    if diffs:
        raise CheckpointError(f"{source} is for a different network: {', '.join(diffs)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source} does not fit the model: "
                              f"{' '.join(str(exc).split())[:300]}") from None


# -- random number generator state ----------------------------------------------------------

def rng_state() -> dict:
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
