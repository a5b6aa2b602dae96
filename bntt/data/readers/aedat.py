"""AEDAT 2.0, the event files of the DVS128 sensor: ASCII header lines starting with '#' (the
first `#!AER-DAT2.0`), then big-endian uint32 pairs (address, timestamp in microseconds).

The bit layout and the axis conventions follow SpikingJelly (fangwei123456/spikingjelly,
spikingjelly/datasets/cifar10_dvs.py): the sensor's column is bits 1-7 of the address, its row
bits 8-14 and the polarity bit 0. That file then swaps the two axes and mirrors both (image
x = 127 - sensor row, image y = 127 - sensor column) and inverts the polarity bit (p = 1 - bit 0,
so 1 is an ON event), which turns the recordings upright; an earlier SpikingJelly version, like
the CIFAR10-DVS authors' dat2mat.m, only mirrored x and kept y, which leaves the images
transposed (the change is explained there with a link to jackd/events-tfds pull request 1). We
use the current convention. Higher address bits are ignored, as SpikingJelly does.

Reads are bounded: a file or zip member larger than `MAX_RECORDING_BYTES` is refused before
its bytes are read or decompressed.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from bntt.data.errors import DataUnavailable, first_line

SENSOR = 128  # the DVS128's width and height
# A CIFAR10-DVS recording is a few hundred KB to a few MB of 8-byte events, and parsing one
# takes about ten times its size in memory. Several times the largest recording, yet small
# enough that a file or zip member at the limit parses in a few hundred MB: anything larger is
# damaged or not a recording, and a small zip must not expand into gigabytes.
MAX_RECORDING_BYTES = 32 * 2**20
_MAGIC = b"#!AER-DAT"


def parse_aedat(data: bytes, name) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, p, t) of an AEDAT 2.0 file's bytes; `name` is what an error message calls it."""
    if not data:
        raise DataUnavailable(f"{name} is empty; replace it with an intact copy")
    if not data.startswith(_MAGIC):
        raise DataUnavailable(f"{name} is not an AEDAT file (it does not begin with "
                              f"{_MAGIC.decode()}2.0)")
    pos = 0
    # The header ends at the first line not starting with '#'; no event can pass for one, as a
    # DVS128 address is below 2**15 and so its first (big-endian) byte is 0.
    while pos < len(data) and data[pos] == ord("#"):
        end = data.find(b"\n", pos)
        if end < 0:
            raise DataUnavailable(f"{name} is truncated: its header has no end (a '#' line is "
                                  "cut off); replace it with an intact copy")
        if pos == 0:
            version = data[len(_MAGIC):end].strip().decode("ascii", "replace")
            if not version.startswith("2."):
                raise DataUnavailable(f"{name} is AEDAT {version}, not the AEDAT 2.0 of "
                                      "the CIFAR10-DVS release")
        pos = end + 1
    body = len(data) - pos
    if body == 0:
        raise DataUnavailable(f"{name} holds no events; replace it with an intact copy")
    if body % 8:
        raise DataUnavailable(f"{name} is truncated: {body} bytes of events is not a whole "
                              "number of 8-byte events; replace it with an intact copy")
    words = np.frombuffer(data, dtype=">u4", offset=pos).reshape(-1, 2)
    if not words.any():  # space reserved for the file and never written
        raise DataUnavailable(f"{name} holds no events: its {body} bytes of events are all zero; "
                              "replace it with an intact copy")
    addr = words[:, 0].astype(np.int64)
    t = words[:, 1].astype(np.int64)
    if len(t) > 1 and t.min() == t.max():  # a recording's events span its duration
        raise DataUnavailable(f"{name} holds no valid events: all {len(t)} of them carry the "
                              f"timestamp {t[0]}, as no recording does; replace it with an "
                              "intact copy")
    sensor_col = (addr & 0xFE) >> 1
    sensor_row = (addr & 0x7F00) >> 8
    # SpikingJelly's orientation (see the module docstring): upright images, 1 = ON.
    x = (SENSOR - 1) - sensor_row
    y = (SENSOR - 1) - sensor_col
    p = 1 - (addr & 1)
    return x, y, p, t


def read_aedat(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, p, t) of one .aedat file: int64 arrays, x and y in 0..127 (column, row), p 1 for
    ON and 0 for OFF, t in microseconds.

        >>> x, y, p, t = read_aedat("CIFAR10-DVS/cat/cifar10_cat_0.aedat")
    """
    path = Path(path)
    try:
        data = read_recording_file(path)
    except OSError as exc:
        raise DataUnavailable(f"{path} cannot be read ({first_line(exc)})") from None
    return parse_aedat(data, path)


def too_large(name, size: str) -> DataUnavailable:
    """The error for a recording `name` that "<size>" (is / declares N bytes) over the limit."""
    return DataUnavailable(f"{name} {size}, more than the {MAX_RECORDING_BYTES} bytes "
                           "(MAX_RECORDING_BYTES) any CIFAR10-DVS recording fits in; replace it "
                           "with an intact copy")


def read_recording_file(path: Path) -> bytes:
    """The bytes of a recording file, refused unread when larger than MAX_RECORDING_BYTES."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_RECORDING_BYTES:
            raise too_large(path, f"is {size} bytes")
        # The size as found, not the limit: read(n) allocates n bytes before it reads. One
        # byte more tells a file that grew since from one that did not.
        data = f.read(size + 1)
    if len(data) > size:
        raise DataUnavailable(f"{path} grew while it was read; run again once it is complete")
    return data


def read_recording_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
    """The member's bytes, at most its declared size (checked against MAX_RECORDING_BYTES when
    listed). Not archive.read(info): it decompresses a deflated member whole before cutting it
    to the declared size, so a member whose entry understates its size expands in memory;
    read(n) decompresses about n bytes."""
    with archive.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise DataUnavailable(f"{name} holds more than the {info.file_size} bytes its zip entry "
                              "declares; replace the zip with an intact copy")
    return data
