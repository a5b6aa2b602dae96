"""Checkpoints: atomic writes, safe loading, RNG state, and clear errors for mismatched models;
and how a run writes its other files (metrics lines, TensorBoard events).

A checkpoint is a dict readable with `torch.load(path, weights_only=True)`. It keeps the keys of
the authors' train.py (`state_dict`, `global_step` = completed epochs, `accuracy` = best test
top-1) so each side can load the other's weights, and adds what a resumable run needs:
`optimizer`, `epoch`, `best_epoch`, `rng` and `config`.

A run folder holds `last.pt` (the end of the last finished epoch) and `best.pt` (the epoch with
the best test top-1). Wherever a command takes a checkpoint, a run folder stands for its
last.pt: the model whose accuracy is reported, and the one a resumed run continues from.
best.pt is read only when named.

Every file a run writes is created new or replaced whole, never opened through a symbolic link:
a link planted where a run file goes is replaced (write_atomic) or refused (append_bytes,
create_new, EventFile), and the file it points to stays as it was. Each write happens in the
calling thread, so a failure (a full disk) reaches the caller, which `reported_write` turns into
one line.
"""
from __future__ import annotations

import errno
import io
import itertools
import os
import random
import re
import socket
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


RUN_CHECKPOINT = "last.pt"  # what a run folder means (see the module docstring)
BEST_CHECKPOINT = "best.pt"


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or does not fit the model; the message says which."""


class WriteError(Exception):
    """A file could not be written (a full disk, no permission); the message says which file
    and what is left as it was."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write) -> None:
    """Call write(f) on a temporary binary file in the same folder, then rename it to `path`: a
    reader (or a resumed run after a kill) sees either the old file or the new one, never half
    of one. The file gets the permissions a plain open() would give (mkstemp's are 0600)."""
    path = Path(path)
    # mkstemp opens with O_EXCL | O_NOFOLLOW, and the rename replaces whatever `path` is, a link
    # included, without writing through it
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


def create_new(path) -> int:
    """A write-only descriptor of a file that did not exist: a file or link already at `path`
    is an OSError (EEXIST), never opened."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` in this thread, so that a failure is an OSError here."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def append_bytes(path, data: bytes) -> None:
    """Append `data` to the regular file `path` (created if missing); a link or anything but a
    regular file at `path` is an OSError, and the file it points to is not opened for writing."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                 | os.O_NONBLOCK, 0o666)  # O_NONBLOCK: a FIFO in the way must not hang the run
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        write_all(fd, data)
    finally:
        os.close(fd)


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError that `exc` is or that led to it, if any."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ or exc.__context__
    return exc


@contextmanager
def reported_write(path, kept: str):
    """Turn a failed write of `path` (an OSError, or torch's zip writer's RuntimeError caused by
    one) into a one-line WriteError: `cannot write PATH (REASON); KEPT`."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        cause = os_error_in(exc)
        if cause is None:
            raise
        reason = "no space left on device" if cause.errno == errno.ENOSPC else cause.strerror
        raise WriteError(f"cannot write {path} ({reason or cause}); {kept}") from None


_event_files = itertools.count()  # keeps apart the names of this process's events files


def tensorflow_bins() -> list[float]:
    """The histogram buckets of torch's SummaryWriter.add_histogram (bins="tensorflow")."""
    v, buckets = 1e-12, []
    while v < 1e20:
        buckets.append(v)
        v *= 1.1
    return [-b for b in reversed(buckets)] + [0] + buckets


class EventFile:
    """A TensorBoard events file in `folder`, written by the calling thread at each `write()`.
    torch's SummaryWriter writes from a thread of its own, which prints its own traceback when
    the disk is full, and opens its file through a link planted under its name; here a failed
    write is an OSError in the caller, and the file is created new (create_new)."""

    def __init__(self, folder, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        self.path = Path(folder) / (f"events.out.tfevents.{int(time.time()):010d}."
                                    f"{socket.gethostname()}.{os.getpid()}.{next(_event_files)}")
        self._fd: int | None = None
        self._pending = io.BytesIO()
        self._bins = tensorflow_bins()
        self._add(Event(file_version="brain.Event:2"))
        if purge_step is not None:  # TensorBoard drops the older files' steps >= purge_step
            self._add(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def _add(self, event) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        event.wall_time = time.time()
        RecordWriter(self._pending).write(event.SerializeToString())

    def scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from torch.utils.tensorboard.summary import scalar

        self._add(Event(step=step, summary=scalar(tag, value)))

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from torch.utils.tensorboard.summary import histogram

        self._add(Event(step=step, summary=histogram(tag, values, self._bins)))

    def text(self, tag: str, text: str, step: int = 0) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from torch.utils.tensorboard.summary import text as text_summary

        self._add(Event(step=step, summary=text_summary(tag, text)))

    def write(self) -> None:
        """Write the events added since the last call; the first call creates the file."""
        if self._fd is None:
            self._fd = create_new(self.path)
        data = self._pending.getvalue()
        self._pending = io.BytesIO()
        write_all(self._fd, data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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


def authors_network(state: dict) -> dict:
    """What network a state_dict of the authors' train.py is for, read from its keys (their
    checkpoints record no configuration): arch ("vgg9" or "vgg11"), num_steps, num_cls and
    in_channels. The VGGs here keep their layout, so this reads ours too."""
    if "conv1.weight" not in state or "fc2.weight" not in state:
        raise CheckpointError("state_dict is not one of the authors' VGGs (no conv1/fc2) and "
                              "its checkpoint records no configuration")
    steps = {int(m.group(1)) for k in state if (m := re.fullmatch(r"bntt1\.(\d+)\.weight", k))}
    return {
        "arch": "vgg11" if "conv8.weight" in state else "vgg9",
        "num_steps": max(steps) + 1 if steps else None,
        "num_cls": state["fc2.weight"].shape[0],
        "in_channels": state["conv1.weight"].shape[1],
    }


def load_weights(model, state: dict, source="checkpoint", network: str = "the model") -> None:
    """Strictly load `state` into `model` (`network` names it); a state that does not fit is
    one CheckpointError."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source} does not fit {network}: "
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
