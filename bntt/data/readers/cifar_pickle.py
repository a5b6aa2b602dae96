"""CIFAR's "python version" batches: pickled dicts of uint8 rows of 3 x 32 x 32 pixels and a
list of labels, written by Python 2. Unpickled through an allow-list, since plain pickle.load
would call whatever a crafted file names."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from bntt.data.errors import DataUnavailable, first_line

CIFAR_ROW = 3 * 32 * 32


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """`_codecs.encode` as Python 3 pickles bytes at protocols 0-2, limited to that use."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


def _numpy_pickle_globals() -> dict:
    # Taken from the reductions numpy itself uses, so the functions are the right ones
    # whichever numpy is installed; pickles name them under numpy.core (numpy 1.x, the real
    # CIFAR files) or numpy._core (numpy 2.x).
    reconstruct = np.zeros(1, dtype=np.uint8).__reduce__()[0]
    frombuffer = np.zeros(1, dtype=np.uint8).__reduce_ex__(5)[0]  # protocol 5 pickles
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR python-version file holds (dicts, lists, strings, ints and NumPy
    arrays) and nothing else."""

    ALLOWED = _numpy_pickle_globals()

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # the files were written by Python 2
        self.path = path

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise DataUnavailable(f"{self.path} is not a CIFAR batch: its pickle refers to "
                              f"{module}.{name}, which CIFAR files never do, so it was not loaded")

    def persistent_load(self, pid):
        raise DataUnavailable(f"{self.path} is not a CIFAR batch: its pickle holds a persistent id")


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) of one batch file, its labels under
    `label_key` ("labels" in CIFAR-10, "fine_labels" in CIFAR-100), checked.

        >>> images, labels = read_cifar_batch(Path("cifar-10-batches-py/test_batch"), "labels")
    """
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, path).load()
    except DataUnavailable:
        raise
    except Exception as exc:  # a damaged pickle can fail in any way
        raise DataUnavailable(f"{path} is not a readable CIFAR batch ({first_line(exc)}); "
                              "replace it with an intact copy") from None

    def bad(what):
        return DataUnavailable(f"{path} is not a CIFAR batch: {what}")

    if not isinstance(entry, dict):
        raise bad(f"it holds a {type(entry).__name__}, not a dict")
    for key in ("data", label_key):
        if key not in entry:
            raise bad(f"it has no {key!r} entry")
    images = entry["data"]
    # Rows exactly, not any array of a multiple of the size: a transposed or merged array
    # would reshape into as many images of scrambled pixels.
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2
            or images.shape[1] != CIFAR_ROW):
        shown = (f"a {images.dtype} array of shape {images.shape}"
                 if isinstance(images, np.ndarray) else f"a {type(images).__name__}")
        raise bad(f"'data' is {shown}, not uint8 rows of {CIFAR_ROW} values")
    images = images.reshape(-1, 3, 32, 32)
    try:
        labels = np.asarray(entry[label_key])
    except (ValueError, OverflowError) as exc:
        raise bad(f"{label_key!r} is not a list of integers ({first_line(exc)})") from None
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise bad(f"{label_key!r} is not a list of integers")
    if labels.dtype == np.uint64 and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise bad(f"{label_key!r} holds {labels.max()}, too large for a label")
    if len(labels) != len(images):
        raise bad(f"{len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)
