"""One process at a time per run folder.

A run folder is written by exactly one training process: two processes writing into one folder
would interleave their metrics and overwrite each other's checkpoints. The lock is an advisory
`flock` on `<run folder>/.lock`, which the operating system drops when its process ends however
it ends (kill -9 included), so a killed run never leaves a lock that blocks its resume. The file
itself stays and names the last holder: process id, host and start time.

A run writes only regular files of its own in its folder. A symbolic link planted where one of
them goes (the folder itself, `.lock`, a checkpoint, a log) would make the run write through it
into a file elsewhere: `check_run_folder` refuses such a folder before anything is written, and
the lock is opened without following links.
"""
from __future__ import annotations

import fcntl
import fnmatch
import os
import socket
import stat
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunFolderBusy(Exception):
    """Another process holds the run folder; the message names it."""


class RunFolderUnsafe(Exception):
    """The run folder, or a file the run writes in it, is a symbolic link or not a regular
    file; the message names it."""


def check_run_folder(folder: Path, patterns) -> None:
    """Refuse a run folder that is a symbolic link, or whose entries named by `patterns`
    (file names or fnmatch patterns) are anything but regular files. A missing folder passes."""
    folder = Path(folder)
    if folder.is_symlink():
        raise RunFolderUnsafe(f"run folder {folder} is a symbolic link; a run writes only into a "
                              "real folder (use the folder it points to)")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise RunFolderUnsafe(f"run folder {folder} is not a folder")
    with os.scandir(folder) as entries:
        for entry in entries:
            if not any(fnmatch.fnmatchcase(entry.name, p) for p in patterns):
                continue
            if entry.is_symlink():
                raise RunFolderUnsafe(f"{folder / entry.name} is a symbolic link; the run writes "
                                      "that file itself and never through a link (remove it)")
            if not entry.is_file(follow_symlinks=False):
                raise RunFolderUnsafe(f"{folder / entry.name} is not a regular file; the run "
                                      "writes that file itself (remove it)")


class RunLock:
    """`with RunLock(folder):` holds the folder's lock for the block (or raises RunFolderBusy);
    so does `with lock:` for a lock already acquired."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:  # O_NOFOLLOW: a link planted as .lock would have its target overwritten below
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError:
            if self.path.is_symlink():
                raise RunFolderUnsafe(f"{self.path} is a symbolic link, not the run folder's lock "
                                      "file (remove it)") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunFolderUnsafe(f"{self.path} is not a regular file, not the run folder's lock "
                                  "file (remove it)")
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
