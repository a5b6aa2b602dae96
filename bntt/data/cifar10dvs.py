"""CIFAR10-DVS (Li et al., 2017): the original AEDAT 2.0 release, read into frames of DVS events.

The release (figshare, "CIFAR10-DVS", one zip per class) holds 1,000 recordings per class of a
128x128 DVS sensor watching CIFAR-10 images move on a screen, as AEDAT 2.0 files
(bntt/data/readers/aedat.py decodes them). Expected layout:

    <data_dir>/CIFAR10-DVS/<class>/cifar10_<class>_<i>.aedat     (an unpacked class zip), or
    <data_dir>/CIFAR10-DVS/<class>.zip                           (the zip as downloaded)

with the classes airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck (labels 0..9
in that order). A folder wins over a zip of the same class.

Frames. A recording is cut into `steps` slices and its events counted per polarity and pixel,
then reduced from 128x128 to size x size (default 48) by area resampling of the counts
(bntt/data/events.py). 48x48 is a common choice in SNN work on this dataset: ~7x fewer inputs
than 128x128, and 48 = 6 x 2^3 goes through the VGG9 plan's three 2x2 poolings evenly.

Split. The release has no train/test split. Ours is deterministic: each class's recordings
sorted by their numeric index, the first ones train and the last `test_per_class` (100) test,
so 9,000 / 1,000. Published DVS-CIFAR10 numbers use other splits (random 90/10, or the first 100
per class for testing as in the TEBN paper) and other frame settings (number of steps, size,
binning), so they are not directly comparable with numbers from this reader.

Cache. Parsing 10,000 files takes minutes, so the frames of each split and setting are saved once
as `<data_dir>/CIFAR10-DVS/bntt-cache/<split>_T<steps>_S<size>_<mode>.npy` (bntt/data/cache.py),
keyed by the sources (their relative paths, sizes and mtime_ns) and the settings, the split
included; a cache of other sources or settings, or a damaged one, is rebuilt.

A missing or damaged source (an unreadable zip, an .aedat file cut short, with no events, with
no valid events (all zero bytes, or every event at one timestamp), or with no end of header)
raises `DataUnavailable` with one line naming the file, or saying where the files go.

Size. A recording is refused, with one line naming the file (or the zip and its member), when it
is larger than `MAX_RECORDING_BYTES` (32 MiB): a zip member by the size its zip entry declares,
before anything of it is decompressed. A member is then decompressed no further than one byte
past that size, so one whose entry understates its size cannot expand in memory (it fails its
CRC check instead). Only stored and deflated zip members are read (the release's zips are
deflated; zipfile decompresses the others a whole chunk at a time, however large it expands):
unpack such a zip with another tool into its class folder. Files that are not regular files
(a FIFO, a device) are skipped, however they are named.
"""
from __future__ import annotations

import itertools
import re
import zipfile
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bntt.data.cache import ArrayCache, fingerprint, source_stats
from bntt.data.errors import DataUnavailable, first_line
from bntt.data.events import MODES, downsample, events_to_frames
from bntt.data.info import FrameInfo
from bntt.data.readers.aedat import (MAX_RECORDING_BYTES, SENSOR, parse_aedat, read_aedat,
                                     read_recording_file, read_recording_member, too_large)
from bntt.data.samples import FrameDataset

__all__ = ["CIFAR10_DVS", "CIFAR10_DVS_FOLDER", "CLASSES", "FrameDataset", "MAX_RECORDING_BYTES",
           "downsample", "events_to_frames", "find_recordings", "load_cifar10_dvs",
           "parse_aedat", "read_aedat"]

CIFAR10_DVS_FOLDER = "CIFAR10-DVS"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEFAULT_STEPS, DEFAULT_SIZE, DEFAULT_TEST_PER_CLASS = 20, 48, 100
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_RECORDING = re.compile(r"cifar10_([a-z]+)_(\d+)\.aedat")
_WHERE = ('download the ten per-class zips of the "CIFAR10-DVS" release on figshare '
          "(airplane.zip ... truck.zip) and unpack each into {root}/<class>/ "
          "(or leave them there as {root}/<class>.zip)")


# -- the release on disk ---------------------------------------------------------------------

@dataclass(frozen=True)
class Recording:
    label: int
    index: int  # the <i> of cifar10_<class>_<i>.aedat
    name: str  # what error messages call it: a path, or zip:member
    source: Path  # its class folder or zip
    read: Callable[[], bytes]


def _folder_recordings(folder: Path, label: int) -> tuple[list[Recording], list[Path]]:
    recordings, paths = [], []
    for path in folder.iterdir():
        match = _RECORDING.fullmatch(path.name)
        if not match or match.group(1) != CLASSES[label] or not path.is_file():
            continue
        st = path.stat()
        if st.st_size > MAX_RECORDING_BYTES:
            raise too_large(path, f"is {st.st_size} bytes")
        recordings.append(Recording(label, int(match.group(2)), str(path), folder,
                                    lambda path=path: read_recording_file(path)))
        paths.append(path)
    return recordings, paths


def _zip_recordings(path: Path, label: int, stack: ExitStack) -> list[Recording]:
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = archive.infolist()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DataUnavailable(f"{path} is not a readable zip ({first_line(exc)}); "
                              "replace it with an intact copy") from None
    recordings = []
    for info in members:
        base = info.filename.rsplit("/", 1)[-1]
        match = _RECORDING.fullmatch(base)
        if (not match or match.group(1) != CLASSES[label] or info.is_dir()
                or info.filename.startswith("__MACOSX/")):
            continue
        name = f"{path}:{info.filename}"
        # Checked from the zip's directory, before a byte of the member is decompressed.
        if info.file_size > MAX_RECORDING_BYTES:
            raise too_large(name, f"declares {info.file_size} bytes uncompressed")
        if info.compress_type not in _ZIP_METHODS or info.flag_bits & 0x1:
            how = ("encrypted" if info.flag_bits & 0x1
                   else f"compressed with zip method {info.compress_type}")
            raise DataUnavailable(f"{name} is {how}; only stored and deflated members are read "
                                  f"here: unpack {path} with another tool into its class folder")
        recordings.append(Recording(
            label, int(match.group(2)), name, path,
            lambda info=info, name=name: read_recording_member(archive, info, name)))
    return recordings


def find_recordings(root: Path, stack: ExitStack) -> tuple[list[list[Recording]], list[Path]]:
    """Per class (in CLASSES order) its recordings sorted by index, and the source files (the
    recordings of class folders, the class zips) for the cache's fingerprint. Zips stay open
    in `stack`."""
    present = {cls: (root / cls).is_dir() or (root / f"{cls}.zip").is_file() for cls in CLASSES}
    if not any(present.values()):
        raise DataUnavailable(f"CIFAR10-DVS not found in {root}: " + _WHERE.format(root=root))
    missing = [cls for cls in CLASSES if not present[cls]]
    if missing:
        raise DataUnavailable(f"CIFAR10-DVS in {root} lacks the class(es) {', '.join(missing)} "
                              f"(expected {root}/<class>/ or {root}/<class>.zip): "
                              + _WHERE.format(root=root))
    per_class, sources = [], []
    for label, cls in enumerate(CLASSES):
        where = root / cls if (root / cls).is_dir() else root / f"{cls}.zip"
        try:
            if where.is_dir():
                recordings, paths = _folder_recordings(where, label)
                sources += paths
            else:
                recordings = _zip_recordings(where, label, stack)
                sources.append(where)
        except OSError as exc:
            raise DataUnavailable(f"{where} cannot be read ({first_line(exc)})") from None
        if not recordings:
            raise DataUnavailable(f"{where} holds no cifar10_{cls}_<i>.aedat recordings: "
                                  + _WHERE.format(root=root))
        recordings.sort(key=lambda r: r.index)
        for a, b in itertools.pairwise(recordings):
            if a.index == b.index:
                raise DataUnavailable(f"{where} holds recording {a.index} twice: {a.name} and "
                                      f"{b.name}")
        per_class.append(recordings)
    return per_class, sources


def recording_frames(recording: Recording, steps: int, size: int, mode: str) -> np.ndarray:
    try:
        data = recording.read()
    except NotImplementedError as exc:  # e.g. a zip re-packed with Deflate64
        raise DataUnavailable(f"{recording.name} cannot be read ({first_line(exc)}); unpack "
                              f"{recording.source} with another tool into its class folder") from None
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataUnavailable(f"{recording.name} cannot be read ({first_line(exc)}); "
                              "replace it with an intact copy") from None
    x, y, p, t = parse_aedat(data, recording.name)
    return downsample(events_to_frames(x, y, p, t, steps, mode), size)


# -- the dataset -----------------------------------------------------------------------------

def load_cifar10_dvs(data_dir, steps: int = DEFAULT_STEPS, size: int = DEFAULT_SIZE,
                     mode: str = "count", test_per_class: int | None = DEFAULT_TEST_PER_CLASS):
    """(train frames, train labels, test frames, test labels) as torch tensors: frames uint8
    [N, steps, 2, size, size], labels int64 [N], in class order then recording index. Read from
    the cache when it is current, else parsed from the release and cached (see the module
    docstring). `test_per_class` None tests on the last tenth of each class's recordings."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if steps < 1 or not 1 <= size <= SENSOR or (test_per_class is not None and test_per_class < 1):
        raise ValueError(f"need steps >= 1, size in 1..{SENSOR} and test_per_class >= 1; got "
                         f"{steps}, {size}, {test_per_class}")
    root = Path(data_dir) / CIFAR10_DVS_FOLDER
    cache = ArrayCache(root, "CIFAR10-DVS")
    stems = [f"{split}_T{steps}_S{size}_{mode}" for split in ("train", "test")]
    with ExitStack() as stack:
        per_class, sources = find_recordings(root, stack)
        settings = {"dataset": "cifar10dvs", "steps": steps, "size": size, "mode": mode,
                    "test_per_class": test_per_class}
        key = fingerprint(settings, source_stats(root, sources))
        arrays = [cache.load(stem, key, (steps, 2, size, size)) for stem in stems]
        if any(a is None for a in arrays):
            arrays = _build(per_class, steps, size, mode, test_per_class)
            for stem, (frames, labels) in zip(stems, arrays):
                cache.save(stem, key, frames, labels)
    (train_x, train_y), (test_x, test_y) = arrays
    return (torch.from_numpy(train_x), torch.from_numpy(train_y),
            torch.from_numpy(test_x), torch.from_numpy(test_y))


def _build(per_class, steps, size, mode, test_per_class):
    if test_per_class is None:  # a tenth of each class: 100 of the release's 1,000
        test_per_class = max(1, min(len(rs) for rs in per_class) // 10)
    for recordings in per_class:
        if len(recordings) <= test_per_class:
            first = recordings[0]
            raise DataUnavailable(f"{first.source} holds {len(recordings)} {CLASSES[first.label]} "
                                  f"recordings; the split tests on the last {test_per_class} of "
                                  "each class and needs at least one more to train on")
    splits = {"train": [r for rs in per_class for r in rs[:-test_per_class]],
              "test": [r for rs in per_class for r in rs[-test_per_class:]]}
    arrays = {split: (np.empty((len(rs), steps, 2, size, size), dtype=np.uint8),
                      np.array([r.label for r in rs], dtype=np.int64))
              for split, rs in splits.items()}
    total = sum(len(rs) for rs in splits.values())
    with tqdm(total=total, desc="CIFAR10-DVS: parsing", unit="file", leave=False) as bar:
        for split, recordings in splits.items():
            frames = arrays[split][0]
            for i, recording in enumerate(recordings):
                frames[i] = recording_frames(recording, steps, size, mode)
                bar.update()
    return [arrays["train"], arrays["test"]]


def read(info, data_dir: Path, download_missing: bool, num_steps):
    """The frames for a run of `num_steps` steps (DEFAULT_STEPS where not given), at the entry's
    size; the last tenth of each class tests."""
    steps = DEFAULT_STEPS if num_steps is None else num_steps
    return (load_cifar10_dvs(data_dir, steps=steps, size=info.img_size, test_per_class=None),
            data_dir / CIFAR10_DVS_FOLDER)


# Event frames of two polarities at 48x48, flipped and shifted by up to 4 pixels as whole
# recordings.
CIFAR10_DVS = FrameInfo("cifar10dvs", 10, 2, DEFAULT_SIZE, padding=4, read=read)
