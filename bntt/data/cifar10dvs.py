"""CIFAR10-DVS (Li et al., 2017): the original AEDAT 2.0 release, read into frames of DVS events.

The release (figshare, "CIFAR10-DVS", one zip per class) holds 1,000 recordings per class of a
128x128 DVS sensor watching CIFAR-10 images move on a screen, as AEDAT 2.0 files. Expected layout:

    <data_dir>/CIFAR10-DVS/<class>/cifar10_<class>_<i>.aedat     (an unpacked class zip), or
    <data_dir>/CIFAR10-DVS/<class>.zip                           (the zip as downloaded)

with the classes airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck (labels 0..9
in that order). A folder wins over a zip of the same class.

Decoding. An AEDAT 2.0 file is ASCII header lines starting with '#' (the first `#!AER-DAT2.0`),
then big-endian uint32 pairs (address, timestamp in microseconds). The bit layout and the axis
conventions follow SpikingJelly (fangwei123456/spikingjelly, spikingjelly/datasets/cifar10_dvs.py):
the sensor's column is bits 1-7 of the address, its row bits 8-14 and the polarity bit 0. That
file then swaps the two axes and mirrors both (image x = 127 - sensor row, image y = 127 - sensor
column) and inverts the polarity bit (p = 1 - bit 0, so 1 is an ON event), which turns the
recordings upright; an earlier SpikingJelly version, like the dataset authors' dat2mat.m, only
mirrored x and kept y, which leaves the images transposed (the change is explained there with a
link to jackd/events-tfds pull request 1). We use the current convention. Higher address bits
are ignored, as SpikingJelly does.

Frames. A recording is cut into `steps` slices with equal event counts (mode="count", the
default: slices differ by at most one event) or equal durations (mode="time"), and each
polarity is counted per pixel in its channel (0 = OFF, 1 = ON), clipped at 255: uint8
[steps, 2, 128, 128], rows y, columns x. The frames are then reduced to size x size (default
48) by area resampling of the counts: every sensor pixel hands its count to the output pixels
it overlaps, in proportion to the overlap, so the total count is kept; where 128 is a multiple
of `size` (64, 32, ...) this is exactly the sum of the 2x2, 4x4, ... blocks, and for 48 it is
area interpolation (the weights of OpenCV's INTER_AREA, times the area ratio so counts stay
counts), rounded to the nearest integer and clipped to uint8. 48x48 is a common choice in SNN
work on this dataset: ~7x fewer inputs than 128x128, and 48 = 6 x 2^3 goes through the VGG9
plan's three 2x2 poolings evenly.

Split. The release has no train/test split. Ours is deterministic: each class's recordings
sorted by their numeric index, the first ones train and the last `test_per_class` (100) test,
so 9,000 / 1,000. Published DVS-CIFAR10 numbers use other splits (random 90/10, or the first 100
per class for testing as in the TEBN paper) and other frame settings (number of steps, size,
binning), so they are not directly comparable with numbers from this reader.

Cache. Parsing 10,000 files takes minutes, so the frames of each split and setting are saved once
as `<data_dir>/CIFAR10-DVS/bntt-cache/<split>_T<steps>_S<size>_<mode>.npy` (uint8
[N, steps, 2, size, size]) with `..._labels.npy` (int64 [N]) and `....json`, which records a
fingerprint of the sources (their sorted relative paths, sizes and mtime_ns, and the settings,
the split included) and CRC-32s of both arrays. Each file is written atomically, the .json last;
a cache whose fingerprint differs, or that is truncated or corrupt, is rebuilt.

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

import hashlib
import itertools
import json
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from bntt.checkpoint import write_atomic
from bntt.data import DataUnavailable, _first_line, crop_and_flip

CIFAR10_DVS_FOLDER = "CIFAR10-DVS"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SENSOR = 128  # the DVS128's width and height
MODES = ("count", "time")
CACHE_FOLDER = "bntt-cache"
CACHE_VERSION = 1  # bump when the frames' meaning changes, so old caches are rebuilt
DEFAULT_STEPS, DEFAULT_SIZE, DEFAULT_TEST_PER_CLASS = 20, 48, 100

# A CIFAR10-DVS recording is a few hundred KB to a few MB of 8-byte events, and parsing one
# takes about ten times its size in memory. Several times the largest recording, yet small
# enough that a file or zip member at the limit parses in a few hundred MB: anything larger is
# damaged or not a recording, and a small zip must not expand into gigabytes.
MAX_RECORDING_BYTES = 32 * 2**20
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_MAGIC = b"#!AER-DAT"
_RECORDING = re.compile(r"cifar10_([a-z]+)_(\d+)\.aedat")
_WHERE = ('download the ten per-class zips of the "CIFAR10-DVS" release on figshare '
          "(airplane.zip ... truck.zip) and unpack each into {root}/<class>/ "
          "(or leave them there as {root}/<class>.zip)")


# -- one recording ---------------------------------------------------------------------------

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
    ON and 0 for OFF, t in microseconds."""
    path = Path(path)
    try:
        data = _read_file(path)
    except OSError as exc:
        raise DataUnavailable(f"{path} cannot be read ({_first_line(exc)})") from None
    return parse_aedat(data, path)


def _too_large(name, size: str) -> DataUnavailable:
    return DataUnavailable(f"{name} {size}, more than the {MAX_RECORDING_BYTES} bytes "
                           "(MAX_RECORDING_BYTES) any CIFAR10-DVS recording fits in; replace it "
                           "with an intact copy")


def _read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_RECORDING_BYTES:
            raise _too_large(path, f"is {size} bytes")
        # The size as found, not the limit: read(n) allocates n bytes before it reads. One
        # byte more tells a file that grew since from one that did not.
        data = f.read(size + 1)
    if len(data) > size:
        raise DataUnavailable(f"{path} grew while it was read; run again once it is complete")
    return data


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
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


def events_to_frames(x, y, p, t, steps: int, mode: str = "count") -> np.ndarray:
    """uint8 [steps, 2, 128, 128]: the events of slice k counted per polarity channel (0 OFF,
    1 ON) and pixel (row y, column x), clipped at 255. mode="count" gives each slice an equal
    share of the events in file order (shares differ by at most one); mode="time" gives each an
    equal share of the time from the first timestamp to the last."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    x, y, p, t = (np.asarray(a, dtype=np.int64) for a in (x, y, p, t))
    n = len(t)
    if not len(x) == len(y) == len(p) == n:
        raise ValueError(f"x, y, p, t differ in length: {len(x)}, {len(y)}, {len(p)}, {n}")
    for name, values, high in (("x", x, SENSOR - 1), ("y", y, SENSOR - 1), ("p", p, 1)):
        if n and (values.min() < 0 or values.max() > high):
            raise ValueError(f"{name} must lie in 0..{high}")
    if mode == "count":
        slot = np.arange(n, dtype=np.int64) * steps // max(n, 1)
    else:
        start = t.min() if n else 0
        span = (t.max() - start + 1) if n else 1  # +1: the last event falls in the last slice
        slot = (t - start) * steps // span
    flat = ((slot * 2 + p) * SENSOR + y) * SENSOR + x
    counts = np.bincount(flat, minlength=steps * 2 * SENSOR * SENSOR)
    return np.minimum(counts, 255).astype(np.uint8).reshape(steps, 2, SENSOR, SENSOR)


def _area_weights(size: int) -> np.ndarray:
    """[size, 128]: how much of sensor pixel k lies in output pixel i (each column sums to 1)."""
    edges = np.arange(size + 1) * (SENSOR / size)
    k = np.arange(SENSOR)
    overlap = (np.minimum(edges[1:, None], k + 1) - np.maximum(edges[:-1, None], k))
    return np.clip(overlap, 0.0, None)


def downsample(frames, size: int) -> np.ndarray:
    """uint8 [..., size, size] from counts [..., 128, 128] by area resampling (see the module
    docstring): block sums when 128 is a multiple of size, overlap-weighted sums otherwise,
    rounded half up and clipped at 255."""
    frames = np.asarray(frames)
    if frames.shape[-2:] != (SENSOR, SENSOR):
        raise ValueError(f"frames must end in {SENSOR}x{SENSOR}, not {frames.shape}")
    if not 1 <= size <= SENSOR:
        raise ValueError(f"size must be in 1..{SENSOR}, not {size}")
    if size == SENSOR:
        return np.minimum(frames, 255).astype(np.uint8)
    if SENSOR % size == 0:  # the same sums, exactly, in integers
        block = SENSOR // size
        sums = frames.astype(np.int64).reshape(*frames.shape[:-2], size, block, size, block)
        return np.minimum(sums.sum(axis=(-3, -1)), 255).astype(np.uint8)
    w = _area_weights(size)
    out = w @ frames.astype(np.float64) @ w.T
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


# -- the release on disk ---------------------------------------------------------------------

@dataclass(frozen=True)
class Recording:
    label: int
    index: int  # the <i> of cifar10_<class>_<i>.aedat
    name: str  # what error messages call it: a path, or zip:member
    source: Path  # its class folder or zip
    read: Callable[[], bytes]


def _folder_recordings(folder: Path, label: int) -> tuple[list[Recording], list]:
    recordings, stats = [], []
    for path in folder.iterdir():
        match = _RECORDING.fullmatch(path.name)
        if not match or match.group(1) != CLASSES[label] or not path.is_file():
            continue
        st = path.stat()
        if st.st_size > MAX_RECORDING_BYTES:
            raise _too_large(path, f"is {st.st_size} bytes")
        stats.append((f"{folder.name}/{path.name}", st.st_size, st.st_mtime_ns))
        recordings.append(Recording(label, int(match.group(2)), str(path), folder,
                                    lambda path=path: _read_file(path)))
    return recordings, stats


def _zip_recordings(path: Path, label: int, stack: ExitStack) -> list[Recording]:
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = archive.infolist()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DataUnavailable(f"{path} is not a readable zip ({_first_line(exc)}); "
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
            raise _too_large(name, f"declares {info.file_size} bytes uncompressed")
        if info.compress_type not in _ZIP_METHODS or info.flag_bits & 0x1:
            how = ("encrypted" if info.flag_bits & 0x1
                   else f"compressed with zip method {info.compress_type}")
            raise DataUnavailable(f"{name} is {how}; only stored and deflated members are read "
                                  f"here: unpack {path} with another tool into its class folder")
        recordings.append(Recording(label, int(match.group(2)), name, path,
                                    lambda info=info, name=name: _read_member(archive, info, name)))
    return recordings


def find_recordings(root: Path, stack: ExitStack) -> tuple[list[list[Recording]], list]:
    """Per class (in CLASSES order) its recordings sorted by index, and the sources'
    (relative path, size, mtime_ns) for the cache's fingerprint. Zips stay open in `stack`."""
    present = {cls: (root / cls).is_dir() or (root / f"{cls}.zip").is_file() for cls in CLASSES}
    if not any(present.values()):
        raise DataUnavailable(f"CIFAR10-DVS not found in {root}: " + _WHERE.format(root=root))
    missing = [cls for cls in CLASSES if not present[cls]]
    if missing:
        raise DataUnavailable(f"CIFAR10-DVS in {root} lacks the class(es) {', '.join(missing)} "
                              f"(expected {root}/<class>/ or {root}/<class>.zip): "
                              + _WHERE.format(root=root))
    per_class, stats = [], []
    for label, cls in enumerate(CLASSES):
        where = root / cls if (root / cls).is_dir() else root / f"{cls}.zip"
        try:
            if where.is_dir():
                recordings, found = _folder_recordings(where, label)
                stats += found
            else:
                st = where.stat()
                stats.append((where.name, st.st_size, st.st_mtime_ns))
                recordings = _zip_recordings(where, label, stack)
        except OSError as exc:
            raise DataUnavailable(f"{where} cannot be read ({_first_line(exc)})") from None
        if not recordings:
            raise DataUnavailable(f"{where} holds no cifar10_{cls}_<i>.aedat recordings: "
                                  + _WHERE.format(root=root))
        recordings.sort(key=lambda r: r.index)
        for a, b in itertools.pairwise(recordings):
            if a.index == b.index:
                raise DataUnavailable(f"{where} holds recording {a.index} twice: {a.name} and "
                                      f"{b.name}")
        per_class.append(recordings)
    return per_class, sorted(stats)


def recording_frames(recording: Recording, steps: int, size: int, mode: str) -> np.ndarray:
    try:
        data = recording.read()
    except NotImplementedError as exc:  # e.g. a zip re-packed with Deflate64
        raise DataUnavailable(f"{recording.name} cannot be read ({_first_line(exc)}); unpack "
                              f"{recording.source} with another tool into its class folder") from None
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataUnavailable(f"{recording.name} cannot be read ({_first_line(exc)}); "
                              "replace it with an intact copy") from None
    x, y, p, t = parse_aedat(data, recording.name)
    return downsample(events_to_frames(x, y, p, t, steps, mode), size)


# -- the cache -------------------------------------------------------------------------------

def _cache_stem(split: str, steps: int, size: int, mode: str) -> str:
    return f"{split}_T{steps}_S{size}_{mode}"


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _read_cached_split(cache: Path, stem: str, fingerprint: str, sample: tuple):
    """(frames, labels) if the cache of this split is complete, intact and current, and its
    frames are of shape [N, *sample], else None."""
    names = (f"{stem}.json", f"{stem}.npy", f"{stem}_labels.npy")
    if not all((cache / name).is_file() for name in names):  # a FIFO there would block a read
        return None
    try:
        meta = json.loads((cache / f"{stem}.json").read_text())
        if meta.get("fingerprint") != fingerprint:
            return None
        frames = np.load(cache / f"{stem}.npy", allow_pickle=False)
        labels = np.load(cache / f"{stem}_labels.npy", allow_pickle=False)
    except Exception:  # missing, truncated or garbled: any of these means rebuild
        return None
    if (frames.dtype != np.uint8 or labels.dtype != np.int64 or frames.shape[1:] != sample
            or list(frames.shape) != meta.get("frames_shape") or labels.shape != frames.shape[:1]
            or _crc(frames) != meta.get("frames_crc32") or _crc(labels) != meta.get("labels_crc32")):
        return None
    return frames, labels


def _write_cached_split(cache: Path, stem: str, fingerprint: str, frames, labels) -> None:
    write_atomic(cache / f"{stem}.npy", lambda f: np.save(f, frames))
    write_atomic(cache / f"{stem}_labels.npy", lambda f: np.save(f, labels))
    meta = {"fingerprint": fingerprint, "frames_shape": list(frames.shape),
            "frames_crc32": _crc(frames), "labels_crc32": _crc(labels)}
    # Last: until it is replaced, an older .json's fingerprint does not match the new arrays.
    write_atomic(cache / f"{stem}.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))


def _fingerprint(stats, steps, size, mode, test_per_class) -> str:
    settings = {"version": CACHE_VERSION, "steps": steps, "size": size, "mode": mode,
                "test_per_class": test_per_class, "sources": stats}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


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
    cache = root / CACHE_FOLDER
    stems = {split: _cache_stem(split, steps, size, mode) for split in ("train", "test")}
    with ExitStack() as stack:
        per_class, stats = find_recordings(root, stack)
        fingerprint = _fingerprint(stats, steps, size, mode, test_per_class)
        cached = [_read_cached_split(cache, stems[split], fingerprint, (steps, 2, size, size))
                  for split in stems]
        if all(c is not None for c in cached):
            arrays = cached
        else:
            arrays = _build(per_class, steps, size, mode, test_per_class)
            try:
                cache.mkdir(exist_ok=True)
                for split, (frames, labels) in zip(stems, arrays):
                    _write_cached_split(cache, stems[split], fingerprint, frames, labels)
            except OSError as exc:  # a read-only copy of the data still trains, only slower
                warnings.warn(f"CIFAR10-DVS frames not cached in {cache} ({_first_line(exc)})")
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


class FrameDataset(Dataset):
    """Frames uint8 [N, T, 2, S, S] and labels [N], served as (float32 [T, 2, S, S], label).

    The input spikes are binary (a pixel spikes in a step if it had any event), or with
    counts=True the event counts clipped at max_count. With augment=True each sample is mirrored
    left-right with probability 1/2 and translated by up to `shift` pixels in x and y with zero
    fill; the shift and the flip are the same for every step of the sample, so the recording
    moves as a whole. They are drawn from (seed, epoch, sample) as ImageDataset's crops are
    (`draw_key`). Samples are made a batch at a time through `__getitems__`.
    """

    draw_key = (0, 0)

    def __init__(self, frames, labels, augment: bool = False, shift: int = 4,
                 counts: bool = False, max_count: int = 4):
        self.frames = torch.as_tensor(frames)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if self.frames.dtype != torch.uint8 or self.frames.dim() != 5 or self.frames.shape[2] != 2:
            raise ValueError(f"frames must be uint8 [N, T, 2, S, S], not {self.frames.dtype} "
                             f"{tuple(self.frames.shape)}")
        if self.labels.shape != self.frames.shape[:1]:
            raise ValueError(f"{len(self.frames)} samples but labels of shape "
                             f"{tuple(self.labels.shape)}")
        if shift < 0 or max_count < 1:
            raise ValueError(f"need shift >= 0 and max_count >= 1, not {shift}, {max_count}")
        self.augment, self.shift, self.counts, self.max_count = augment, shift, counts, max_count

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices):
        indices = [int(i) for i in indices]
        if self.augment:
            s = self.shift
            batch = crop_and_flip(self.frames, indices, self.frames.shape[-2:], 2 * s + 1,
                                  self.draw_key, pad=lambda x: torch.nn.functional.pad(x, (s,) * 4))
        else:
            batch = self.frames[indices]
        if self.counts:
            batch = batch.clamp(max=self.max_count).to(torch.float32)
        else:
            batch = batch.gt(0).to(torch.float32)
        return list(zip(batch.unbind(0), self.labels[indices].unbind(0)))

    def __getitem__(self, i):
        return self.__getitems__([i])[0]
