"""IDX, the format of MNIST and Fashion-MNIST: a magic number, big-endian dimensions, then the
values; here unsigned bytes only, gzip-compressed or not."""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from bntt.data.errors import DataUnavailable, first_line

# The largest MNIST-format file holds 47 million values (60,000 images of 28x28); one whose
# header declares more is damaged, and its body is not decompressed.
MAX_IDX_VALUES = 2**28


def read_idx(path: Path) -> np.ndarray:
    """An IDX file, gzip-compressed (.gz) or not, as a uint8 array. The header is read first and
    the body no further than one value past what it declares (at most `MAX_IDX_VALUES`), so a
    small .gz cannot decompress into more memory than that.

        >>> read_idx(Path("t10k-labels-idx1-ubyte.gz")).shape
        (10000,)
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:3] != b"\0\0\x08":
                raise DataUnavailable(f"{path} is not an unsigned-byte IDX file")
            header = 4 + 4 * magic[3]
            dims = f.read(header - 4)
            if len(dims) < header - 4:
                raise DataUnavailable(f"{path} is truncated: its header ends after "
                                      f"{4 + len(dims)} of {header} bytes")
            shape = tuple(int.from_bytes(dims[i:i + 4], "big") for i in range(0, len(dims), 4))
            expected = math.prod(shape)  # exact: np.prod wraps around in int64 for absurd headers
            if expected > MAX_IDX_VALUES:
                raise DataUnavailable(f"{path} declares an array of shape {list(shape)}, more "
                                      f"than the {MAX_IDX_VALUES} values (MAX_IDX_VALUES) of any "
                                      "MNIST-format file; replace it with an intact copy")
            data = f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataUnavailable(f"{path} cannot be read ({first_line(exc)}); "
                              "replace it with an intact copy") from None
    if len(data) > expected:
        raise DataUnavailable(f"{path} holds more than the {expected} values its header "
                              f"declares (shape {list(shape)}); replace it with an intact copy")
    if len(data) < expected:
        raise DataUnavailable(f"{path} is truncated: expected {expected} values, "
                              f"found {len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file (the format `read_idx` reads)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime=0: byte-identical reruns
        f.write(header + array.tobytes())


def find_idx(folder: Path, stem: str) -> Path | None:
    """`folder`/`stem`.gz, else `folder`/`stem`, whichever is a file first; None if neither."""
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None
