"""The output folder of an analysis and the report files written into it: JSON, CSV tables,
TensorBoard events and figures, for evaluate.py and every `analyze.py` subcommand alike.

The folder is checked before the pass over the test set (a folder that cannot be made stops the
command before the work, not after it) and created only when the report is written, so a
command that fails leaves no empty folder behind. Every file is made whole in memory first,
figures included, then written under a temporary name and renamed (write_atomic): a reader sees
the old file or the new one, and a failed write is one line naming the file.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from functools import cached_property
from pathlib import Path

from bntt.checkpoint import EventFile, reported_write, write_atomic
from bntt.cli import UsageError, pyplot


def check_out_dir(out_dir: Path) -> None:
    """UsageError, in one line, unless `out_dir` is a folder this process can write into, or
    one it can create. It creates nothing (make_out_dir does)."""
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
    """Create `out_dir` (checked by check_out_dir before the work) to write the report into."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out_dir}: "
                         f"{exc.strerror or exc.__class__.__name__}") from None


def csv_bytes(rows: list) -> bytes:
    """Rows of dicts (the keys of the first are the columns) as CSV; no rows, an empty file
    (the gamma table of a network without BNTT)."""
    if not rows:
        return b""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def finite_json(obj):
    """`obj` with every non-finite float (a ratio to zero energy) as None: JSON has no infinity
    or NaN, so a strict reader would reject them."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


class Report:
    """The report of one analysis: the files it writes into `out_dir`, gathered in memory and
    written together, and the line that lists them.

        report = Report(Path("runs/r/activity"), plots=True)  # checks the folder, makes nothing
        ...                                                    # the pass over the test set
        report.json("activity.json", summary)
        report.csv("rates.csv", [{"layer": "bntt1", "mean_rate": 0.21}])
        report.events.scalar("activity/top1", 65.0, 0)
        plt = report.pyplot()  # None with plots off or without matplotlib
        if plt is not None:
            fig, ax = plt.subplots()
            report.figure("rates.png", fig)
        report.write()  # prints "wrote activity.json, rates.csv, rates.png and TensorBoard events to ..."
    """

    def __init__(self, out_dir: Path, plots: bool = True):
        check_out_dir(out_dir)
        self.out_dir = out_dir
        self.plots = plots
        self.files: dict[str, bytes] = {}
        self.figures: dict[str, bytes] = {}

    @cached_property
    def events(self) -> EventFile:
        """The TensorBoard events, written after the files."""
        return EventFile(self.out_dir)

    def json(self, name: str, obj) -> None:
        self.files[name] = (json.dumps(finite_json(obj), indent=2) + "\n").encode()

    def csv(self, name: str, rows: list) -> None:
        self.files[name] = csv_bytes(rows)

    def pyplot(self):
        """matplotlib.pyplot to draw the figures with, or None: plots off, or no matplotlib."""
        return pyplot() if self.plots else None

    def figure(self, name: str, fig, dpi: int = 120) -> None:
        """Render `fig` as a PNG named `name` (written with the files), and close it."""
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=dpi)
        finally:
            import matplotlib.pyplot as plt  # the figure was drawn with it: it is installed
            plt.close(fig)
        self.figures[name] = buf.getvalue()

    def write(self) -> list:
        """Create the folder and write the files, then the figures, each whole, then the
        TensorBoard events, all in this thread, so that a failed write (a full disk) is one
        WriteError line naming the file and not a traceback of TensorBoard's writer thread.
        Prints and returns the names written."""
        make_out_dir(self.out_dir)
        events = self.events
        for name, data in {**self.files, **self.figures}.items():
            with reported_write(self.out_dir / name, "the files written before it are whole"):
                write_atomic(self.out_dir / name, lambda f, data=data: f.write(data))
        with reported_write(events.path, "the report files are whole"):
            try:
                events.write()
            finally:
                events.close()
        written = [*self.files, *self.figures]
        print(f"\nwrote {', '.join(written)} and TensorBoard events to {self.out_dir}")
        return written
