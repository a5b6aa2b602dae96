"""Downloading a dataset into data_dir, all or nothing, and the switch that forbids it.

Only torchvision's own URLs and checksums are used; torchvision is imported by the fetch
functions that need it, so a machine without it still gets a one-line error saying where to
put the files.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from bntt.data.errors import DataUnavailable, first_line

OFFLINE_ENV = "BNTT_OFFLINE"  # set to 1 to never try a download


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def download(fetch, data_dir: Path, what: str, instructions: str) -> None:
    """Run fetch(tmp_folder) and move what it produced into data_dir; on any failure remove it
    all and raise DataUnavailable ("<what>; ... <instructions>"), so nothing half-written is
    left behind."""
    if offline():
        raise DataUnavailable(f"{what}; {OFFLINE_ENV} is set, so no download was tried. {instructions}")
    tmp = Path(tempfile.mkdtemp(prefix="bntt-download-"))
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)
    try:
        try:
            fetch(tmp)
        except ImportError as exc:
            raise DataUnavailable(f"{what}, and downloading it needs torchvision, which cannot be "
                                  f"imported ({first_line(exc)}). {instructions}") from None
        data_dir.mkdir(parents=True, exist_ok=True)
        for item in tmp.iterdir():
            target = data_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), str(target))
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise DataUnavailable(f"{what} and the download failed ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else exc!r}). {instructions}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
        shutil.rmtree(tmp, ignore_errors=True)
