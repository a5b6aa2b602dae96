"""The one error every dataset reader raises, and how it quotes a lower-level failure.

A dataset that is missing, damaged or inconsistent raises `DataUnavailable` with one line that
names the file at fault, or says where the files must be and how to get them; the command-line
programs print that line and exit with code 2 (bntt/cli.py).
"""
from __future__ import annotations


class DataUnavailable(Exception):
    """The dataset's files are missing, damaged or cannot be fetched; the message says what to do.

        >>> raise DataUnavailable("data/cifar-10-batches-py/test_batch is truncated")
    """


def first_line(exc: BaseException) -> str:
    """`exc` as "Type: first line of its message", for quoting inside a one-line error."""
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0]}" if text else exc.__class__.__name__
