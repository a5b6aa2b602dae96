"""The paper's analyses of trained networks, one module per `analyze.py` subcommand: spike
rates and energy (activity.py) and robustness to noise and attacks (robustness.py); and the
output folder that they and evaluate.py write their reports into."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from bntt.checkpoint import EventFile, reported_write, write_atomic
from bntt.cli import UsageError


def check_out_dir(out_dir: Path) -> None:
    """UsageError, in one line, unless `out_dir` is a folder this process can write into, or
    one it can create. Called before the pass over the test set, so that a folder that cannot be
    made stops the command before the work rather than after it; it creates nothing, so a
    command that fails later leaves no empty folder behind (make_out_dir creates it)."""
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"--out_dir {out_dir} is a file, not a folder")
        existing = out_dir
        # a dangling link counts as existing: it is in the way of the folder, as a file is
        while not (existing.exists() or existing.is_symlink()) and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            raise UsageError(f"cannot create the output folder {out_dir}: {existing} is not a folder")
        # os.access asks what this process may do (root may write where the mode bits say no;
        # nobody may on a read-only file system), which is what mkdir and the writes will find
        if not os.access(existing, os.W_OK | os.X_OK):
            what = "write into" if existing == out_dir else "create"
            raise UsageError(f"cannot {what} the output folder {out_dir}: {existing} is not writable")
    except OSError as exc:  # a folder on the way that may not even be looked into
        raise UsageError(f"cannot create the output folder {out_dir}: "
                         f"{exc.strerror or exc.__class__.__name__}") from None


def make_out_dir(out_dir: Path) -> None:
    """Create `out_dir` (checked by check_out_dir before the work) to write the reports into."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out_dir}: "
                         f"{exc.strerror or exc.__class__.__name__}") from None


def csv_bytes(rows: list) -> bytes:
    """Rows of dicts (the keys of the first are the columns) as CSV; no rows, an empty file
    (evaluate.py's gamma table of a network without BNTT)."""
    if not rows:
        return b""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def write_report(out_dir: Path, files: dict, events: EventFile) -> list:
    """Write each of `files` ({name: bytes}) whole into out_dir (write_atomic), then the
    TensorBoard events, all in this thread, so that a failed write (a full disk) is one
    WriteError line naming the file and not a traceback of TensorBoard's writer thread.
    Returns the names written."""
    for name, data in files.items():
        with reported_write(out_dir / name, "the files written before it are whole"):
            write_atomic(out_dir / name, lambda f, data=data: f.write(data))
    with reported_write(events.path, "the report files are whole"):
        try:
            events.write()
        finally:
            events.close()
    return list(files)
