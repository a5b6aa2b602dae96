"""One on-disk cache of a dataset's decoded arrays, kept next to its source files.

Decoding some datasets takes minutes (Tiny-ImageNet's 110,000 JPEGs, CIFAR10-DVS's 10,000
event recordings), so their arrays are saved once as `<source folder>/bntt-cache/<stem>.npy`
and reused while the source is unchanged. The key is a fingerprint: a sha256 over the cache
version, the settings the arrays were made with, and each source file's relative path, size
and mtime_ns (`fingerprint`, `source_stats`).

A cache file is three arrays saved one after the other with np.save: a 0-d string of JSON
(the fingerprint, and the shape and CRC-32 of the samples and of the labels), the labels
(int64 [N]) and the samples (uint8 [N, ...]); read them back with three np.load calls on one
open file. It is written atomically, so a killed build leaves the old file or none, never one
that looks valid but is half-written. A file that is absent, not a regular file (a FIFO, whose
open would block), truncated, garbled, or of another fingerprint, shape or checksum is not
served: the arrays are decoded again and the file replaced. Where the folder cannot be
written (read-only data), one line warns and the arrays decoded in memory are used.
"""
from __future__ import annotations

import hashlib
import json
import sys
import zlib
from pathlib import Path

import numpy as np

from bntt.checkpoint import write_atomic
from bntt.data.errors import DataUnavailable, first_line

CACHE_FOLDER = "bntt-cache"
CACHE_VERSION = 2  # bump when what is cached changes meaning or layout: old caches are rebuilt


def source_stats(root: Path, paths) -> list[tuple[str, int, int]]:
    """(path relative to root, size, mtime_ns) of each source file, sorted: what tells an
    unchanged source from an edited one without reading it."""
    stats = []
    for path in paths:
        try:
            st = path.stat()
        except OSError as exc:  # listed a moment ago: removed or made unreadable since
            raise DataUnavailable(f"{path} cannot be read ({first_line(exc)})") from None
        stats.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return sorted(stats)


def fingerprint(settings: dict, sources: list) -> str:
    """The key of arrays made with `settings` (JSON-able) from `sources` (`source_stats`)."""
    key = {"version": CACHE_VERSION, "settings": settings, "sources": sources}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def crc32(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


class ArrayCache:
    """The cache folder of one dataset's source folder `root`; `name` says whose it is in the
    warning a failed write prints.

        >>> cache = ArrayCache(Path("data/tiny-imagenet-200"), "Tiny-ImageNet")
        >>> key = fingerprint({"size": 64}, source_stats(cache.root, jpeg_paths))
        >>> found = cache.load("train", key, (3, 64, 64))  # (images, labels) or None
        >>> if found is None:
        ...     cache.save("train", key, images, labels)
    """

    def __init__(self, root: Path, name: str):
        self.root, self.name = Path(root), name
        self.folder = self.root / CACHE_FOLDER
        self.writable = True  # False after a failed write: one warning, not one per split

    def path(self, stem: str) -> Path:
        return self.folder / f"{stem}.npy"

    def load(self, stem: str, key: str, sample_shape: tuple):
        """(samples, labels) if the cache file `stem` is intact, made under `key`, and its
        samples are uint8 [N, *sample_shape]; else None."""
        path = self.path(stem)
        if not path.is_file():  # absent, or a FIFO whose open would block
            return None
        try:
            with open(path, "rb") as f:
                meta = json.loads(str(np.load(f, allow_pickle=False)))
                if meta.get("fingerprint") != key:
                    return None
                labels = np.load(f, allow_pickle=False)
                samples = np.load(f, allow_pickle=False)
        except Exception:  # truncated or garbage: any failure just means "decode again"
            return None
        if (samples.dtype != np.uint8 or labels.dtype != np.int64
                or samples.shape[1:] != tuple(sample_shape) or labels.shape != samples.shape[:1]
                or list(samples.shape) != meta.get("samples_shape")
                or crc32(samples) != meta.get("samples_crc32")
                or crc32(labels) != meta.get("labels_crc32")):
            return None
        return samples, labels

    def save(self, stem: str, key: str, samples: np.ndarray, labels: np.ndarray) -> None:
        """Write the cache file `stem`; on read-only data warn in one line and go on without."""
        if not self.writable:
            return
        meta = {"fingerprint": key, "samples_shape": list(samples.shape),
                "samples_crc32": crc32(samples), "labels_crc32": crc32(labels)}

        def write(f):
            np.save(f, np.array(json.dumps(meta)))
            np.save(f, labels)
            np.save(f, samples)

        try:
            self.folder.mkdir(exist_ok=True)
            write_atomic(self.path(stem), write)
        except OSError as exc:
            self.writable = False
            print(f"warning: cannot write the {self.name} cache {self.path(stem)} "
                  f"({first_line(exc)}); using the arrays decoded in memory, which every run "
                  "will decode again", file=sys.stderr)
