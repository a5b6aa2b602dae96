"""Tiny-ImageNet-200 (the paper's VGG11 at 64x64), read from the official unpacked zip.

    <data_dir>/tiny-imagenet-200/wnids.txt                      class index = line order
    <data_dir>/tiny-imagenet-200/train/<wnid>/images/*.JPEG
    <data_dir>/tiny-imagenet-200/val/images/*.JPEG
    <data_dir>/tiny-imagenet-200/val/val_annotations.txt        file, wnid, x0, y0, x1, y1

`val` is the test set (the official `test/` split has no labels). Decoding the 110,000 JPEGs
takes minutes, so each split is decoded once into `<root>/bntt-cache/<split>.npy` and reused
while the source's fingerprint (sha256 over the sorted relative paths, sizes and mtime_ns of
wnids.txt, val_annotations.txt for val, and every JPEG of the split) is unchanged.

wnids.txt must list the 200 classes of the set: the network has an output for each, and a list
of fewer (an interrupted unzip, a hand-made subset) would train a 200-way classifier on them
without a word. Only regular files (or links to them) are read as images; anything else named
*.JPEG (a FIFO, a device, a folder) is skipped, as the CIFAR10-DVS reader skips it: opening a
FIFO waits for a writer forever. An annotation naming such a file is refused.

A cache file is three arrays saved one after the other with np.save: the fingerprint (a 0-d
string), the labels (int64 [N]) and the images (uint8 [N, 3, 64, 64]); read them back with
three np.load calls on one open file. It is written atomically, so a killed build leaves the
old file or none, never one that looks valid but is half-written.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from bntt.checkpoint import write_atomic
from bntt.data import DataUnavailable, _first_line, dataset_info

TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
CACHE_FOLDER = "bntt-cache"
CACHE_VERSION = "bntt tiny-imagenet cache 1"  # part of the fingerprint: a new layout rebuilds
SIZE = 64
JPEG_SUFFIXES = (".jpeg", ".jpg")


def load_tiny_imagenet(data_dir, num_classes: int | None = None):
    """(train images uint8 [N, 3, 64, 64], train labels int64 [N], val images, val labels).
    wnids.txt must list `num_classes` classes (default: the registry's 200)."""
    data_dir = Path(data_dir)
    root = data_dir / TINY_IMAGENET_FOLDER
    wnids_file = root / "wnids.txt"
    if num_classes is None:
        num_classes = dataset_info("tinyimagenet").num_cls
    classes = _read_wnids(wnids_file, data_dir, num_classes)
    annotations = root / "val" / "val_annotations.txt"
    splits = {"train": (_train_files(root, classes, data_dir), [wnids_file]),
              "val": (_val_files(root, classes, data_dir), [wnids_file, annotations])}
    arrays, cache_writable = [], True
    for split, (files, texts) in splits.items():
        labels = np.array([label for _, label in files], dtype=np.int64)
        fingerprint = _fingerprint(root, texts + [path for path, _ in files])
        cache = root / CACHE_FOLDER / f"{split}.npy"
        images = _read_cache(cache, fingerprint, labels)
        if images is None:
            images = _decode([path for path, _ in files], split)
            if cache_writable:
                cache_writable = _write_cache(cache, fingerprint, labels, images)
        arrays += [torch.from_numpy(images), torch.from_numpy(labels)]
    return tuple(arrays)


def _missing(data_dir: Path, what: Path) -> DataUnavailable:
    root = data_dir / TINY_IMAGENET_FOLDER
    return DataUnavailable(
        f"Tiny-ImageNet not found: {what} does not exist. Unzip tiny-imagenet-200.zip (from the "
        f"CS231n site, {TINY_IMAGENET_URL}) into {data_dir}, so that {root}/wnids.txt, "
        f"{root}/train/<wnid>/images/ and {root}/val/ exist; it is not downloaded automatically, "
        "as no checksummed mirror of it exists")


def _not_regular(path: Path) -> DataUnavailable:
    return DataUnavailable(f"{path} is not a regular file (a FIFO, a device or a folder?); "
                           "replace it with the file of tiny-imagenet-200.zip")


def _read_text(path: Path, data_dir: Path) -> list[str]:
    if not path.is_file():
        raise _not_regular(path) if path.exists() else _missing(data_dir, path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataUnavailable(f"{path} cannot be read ({_first_line(exc)}); "
                              "replace it with an intact copy") from None


def _read_wnids(path: Path, data_dir: Path, num_classes: int) -> dict[str, int]:
    classes, lines = {}, {}
    for number, line in enumerate(_read_text(path, data_dir), start=1):
        wnid = line.strip()
        if not wnid:
            continue
        if wnid in classes:
            raise DataUnavailable(f"{path} line {number}: wnid {wnid!r} repeats line {lines[wnid]}")
        classes[wnid], lines[wnid] = len(classes), number
    if not classes:
        raise DataUnavailable(f"{path} lists no wnids")
    if len(classes) != num_classes:
        raise DataUnavailable(f"{path} lists {len(classes)} wnids, not the {num_classes} classes "
                              "of Tiny-ImageNet-200 that the network has outputs for; unzip "
                              "tiny-imagenet-200.zip again")
    return classes


def _jpegs(folder: Path, data_dir: Path) -> list[str]:
    if not folder.is_dir():
        raise _missing(data_dir, folder)
    # is_file follows links; anything but a regular file is skipped (the module docstring)
    names = sorted(entry.name for entry in os.scandir(folder)
                   if entry.name.lower().endswith(JPEG_SUFFIXES) and entry.is_file())
    if not names:  # an interrupted unzip, most likely: training without the class is wrong
        raise DataUnavailable(f"{folder} holds no JPEG images; unzip tiny-imagenet-200.zip again")
    return names


def _train_files(root: Path, classes: dict[str, int], data_dir: Path) -> list[tuple[Path, int]]:
    train = root / "train"
    if not train.is_dir():
        raise _missing(data_dir, train)
    for entry in sorted(os.scandir(train), key=lambda e: e.name):
        if entry.is_dir() and entry.name not in classes:
            raise DataUnavailable(f"{train / entry.name}: a train folder for wnid {entry.name!r}, "
                                  f"which {root / 'wnids.txt'} does not list")
    return [(train / wnid / "images" / name, label) for wnid, label in classes.items()
            for name in _jpegs(train / wnid / "images", data_dir)]


def _val_files(root: Path, classes: dict[str, int], data_dir: Path) -> list[tuple[Path, int]]:
    folder, path = root / "val" / "images", root / "val" / "val_annotations.txt"
    on_disk = set(_jpegs(folder, data_dir))
    labels, lines = {}, {}
    for number, line in enumerate(_read_text(path, data_dir), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split("\t")]
        where = f"{path} line {number}"
        if len(fields) != 6 or not all(_is_int(field) for field in fields[2:]):
            raise DataUnavailable(f"{where} is not 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1': "
                                  f"{line.strip()[:80]!r}")
        name, wnid = fields[:2]
        if wnid not in classes:
            raise DataUnavailable(f"{where}: wnid {wnid!r} is not in {root / 'wnids.txt'}")
        if name not in on_disk:
            found = "is not a regular file" if (folder / name).exists() else "does not exist"
            raise DataUnavailable(f"{where}: {folder / name} {found}")
        if name in labels:
            raise DataUnavailable(f"{where}: {name} was already annotated on line {lines[name]}")
        labels[name], lines[name] = classes[wnid], number
    unlabelled = sorted(on_disk - labels.keys())
    if unlabelled:  # an image without a label cannot be scored
        raise DataUnavailable(f"{folder / unlabelled[0]} has no line in {path} "
                              f"({len(unlabelled)} images in {folder} have none)")
    return [(folder / name, labels[name]) for name in sorted(labels)]


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _fingerprint(root: Path, paths: list[Path]) -> str:
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for rel, path in sorted((p.relative_to(root).as_posix(), p) for p in paths):
        try:
            st = path.stat()
        except OSError as exc:  # listed a moment ago: removed or made unreadable since
            raise DataUnavailable(f"{path} cannot be read ({_first_line(exc)})") from None
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode(paths: list[Path], split: str) -> np.ndarray:
    images = np.empty((len(paths), 3, SIZE, SIZE), dtype=np.uint8)
    for i, path in enumerate(tqdm(paths, desc=f"decoding Tiny-ImageNet {split}", leave=False,
                                  unit="img")):
        try:
            with Image.open(path) as img:
                if img.size != (SIZE, SIZE):
                    raise DataUnavailable(f"{path} is {img.size[0]}x{img.size[1]}, not the "
                                          f"{SIZE}x{SIZE} of every Tiny-ImageNet image")
                img.load()  # a truncated or damaged JPEG fails here, not at open
                pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataUnavailable(f"{path} is not a readable JPEG ({_first_line(exc)}); "
                                  "replace it with an intact copy") from None
        images[i] = pixels.transpose(2, 0, 1)
    return images


def _read_cache(path: Path, fingerprint: str, labels: np.ndarray) -> np.ndarray | None:
    """The cached images if `path` is an intact cache of this very source, else None."""
    if not path.is_file():  # absent, or a FIFO whose open would block
        return None
    try:
        with open(path, "rb") as f:
            if str(np.load(f, allow_pickle=False)) != fingerprint:
                return None
            cached_labels = np.load(f, allow_pickle=False)
            images = np.load(f, allow_pickle=False)
    except Exception:  # missing, truncated or garbage: any failure just means "decode again"
        return None
    if (images.dtype != np.uint8 or images.shape != (len(labels), 3, SIZE, SIZE)
            or not np.array_equal(cached_labels, labels)):
        return None
    return images


def _write_cache(path: Path, fingerprint: str, labels: np.ndarray, images: np.ndarray) -> bool:
    """Save the cache; on read-only data warn in one line and go on without it (False)."""
    def write(f):
        np.save(f, np.array(fingerprint))
        np.save(f, labels)
        np.save(f, images)

    try:
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, write)
    except OSError as exc:
        print(f"warning: cannot write the Tiny-ImageNet cache {path} ({_first_line(exc)}); "
              "using the images decoded in memory, which every run will decode again",
              file=sys.stderr)
        return False
    return True
