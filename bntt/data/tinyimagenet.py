"""Tiny-ImageNet-200 (the paper's VGG11 at 64x64), read from the official unpacked zip.

    <data_dir>/tiny-imagenet-200/wnids.txt                      class index = line order
    <data_dir>/tiny-imagenet-200/train/<wnid>/images/*.JPEG
    <data_dir>/tiny-imagenet-200/val/images/*.JPEG
    <data_dir>/tiny-imagenet-200/val/val_annotations.txt        file, wnid, x0, y0, x1, y1

`val` is the test set (the official `test/` split has no labels). Decoding the 110,000 JPEGs
takes minutes, so each split is decoded once into `<root>/bntt-cache/<split>.npy`
(bntt/data/cache.py) and reused while its source is unchanged: the paths, sizes and mtime_ns
of wnids.txt, val_annotations.txt for val, and every JPEG of the split.

wnids.txt must list the 200 classes of the set: the network has an output for each, and a list
of fewer (an interrupted unzip, a hand-made subset) would train a 200-way classifier on them
without a word. Only regular files (or links to them) are read as images (bntt/data/readers/
jpeg.py); an annotation naming anything else is refused. It is not downloaded automatically,
as no checksummed mirror of it exists.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from bntt.data.cache import ArrayCache, fingerprint, source_stats
from bntt.data.errors import DataUnavailable, first_line
from bntt.data.info import ImageInfo
from bntt.data.readers.jpeg import decode_jpegs, jpeg_names

TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
SIZE = 64
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NUM_CLASSES = 200


def load_tiny_imagenet(data_dir, num_classes: int = NUM_CLASSES):
    """(train images uint8 [N, 3, 64, 64], train labels int64 [N], val images, val labels).
    wnids.txt must list `num_classes` classes (the set's 200)."""
    data_dir = Path(data_dir)
    root = data_dir / TINY_IMAGENET_FOLDER
    wnids_file = root / "wnids.txt"
    classes = _read_wnids(wnids_file, data_dir, num_classes)
    annotations = root / "val" / "val_annotations.txt"
    splits = {"train": (_train_files(root, classes, data_dir), [wnids_file]),
              "val": (_val_files(root, classes, data_dir), [wnids_file, annotations])}
    cache = ArrayCache(root, "Tiny-ImageNet")
    arrays = []
    for split, (files, texts) in splits.items():
        labels = np.array([label for _, label in files], dtype=np.int64)
        paths = [path for path, _ in files]
        key = fingerprint({"dataset": "tinyimagenet", "split": split},
                          source_stats(root, texts + paths))
        cached = cache.load(split, key, (3, SIZE, SIZE))
        if cached is not None and np.array_equal(cached[1], labels):
            images = cached[0]
        else:
            images = decode_jpegs(paths, SIZE, "Tiny-ImageNet", split)
            cache.save(split, key, images, labels)
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
        raise DataUnavailable(f"{path} cannot be read ({first_line(exc)}); "
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
    names = jpeg_names(folder)
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


def read(info, data_dir: Path, download_missing: bool, num_steps):
    return load_tiny_imagenet(data_dir, info.num_cls), data_dir / TINY_IMAGENET_FOLDER


# VGG11 at 64x64 with ImageNet statistics, as the authors' later code trains it; the 4-pixel
# padding of the CIFAR recipe is our choice (docs/spec.md, section 6).
TINY_IMAGENET = ImageInfo("tinyimagenet", NUM_CLASSES, 3, SIZE, IMAGENET_MEAN, IMAGENET_STD,
                          read=read)
