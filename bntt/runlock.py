"""One process at a time per run folder.

A run folder is written by exactly one training process: two processes writing into one folder
would interleave their metrics and overwrite each other's checkpoints. The lock is an advisory
`flock` on `<run folder>/.lock`, which the operating system drops when its process ends however
it ends (kill -9 included), so a killed run never leaves a lock that blocks its resume. The file
itself stays and names the last holder: process id, host and start time.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunFolderBusy(Exception):
    """Another process holds the run folder; the message names it."""


class RunLock:
    """`with RunLock(folder):` holds the folder's lock for the block (or raises RunFolderBusy);
    so does `with lock:` for a lock already acquired."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderBusy(f"{self.path.parent} is in use by {holder}; wait for it to "
                                "finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"process {os.getpid()} on {socket.gethostname()}, started "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
