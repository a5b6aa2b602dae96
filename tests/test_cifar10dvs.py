"""CIFAR10-DVS: AEDAT 2.0 decoding with SpikingJelly's orientation, binning into frames, area
downsampling, the per-class split, the fingerprinted cache, one-line errors for damaged files,
and FrameDataset's input spikes and augmentation. All on tiny hand-written .aedat files."""
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bntt.data import DataUnavailable
from bntt.data.cache import crc32
from bntt.data import cifar10dvs as dvs
from bntt.data.cifar10dvs import (CLASSES, FrameDataset, downsample, events_to_frames,
                                  load_cifar10_dvs, read_aedat)

HEADER = (b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
          b"# Data format is int32 address, int32 timestamp (8 bytes total)\n"
          b"# Timestamps tick is 1 us\r\n")


def aedat(addr, t, header=HEADER) -> bytes:
    return header + np.stack([np.asarray(addr), np.asarray(t)], axis=1).astype(">u4").tobytes()


def address(x, y, p):
    """The raw address of an event at image (x, y) with polarity p (1 = ON), inverting the
    decoding checked literally in test_read_aedat_decodes_known_addresses."""
    sensor_col, sensor_row, bit = 127 - np.asarray(y), 127 - np.asarray(x), 1 - np.asarray(p)
    return (sensor_row << 8) | (sensor_col << 1) | bit


def one_line(call, *naming):
    with pytest.raises(DataUnavailable) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    for name in naming:
        assert str(name) in message, message
    return message


# -- decoding --------------------------------------------------------------------------------

def test_read_aedat_decodes_known_addresses(tmp_path):
    # address: sensor column in bits 1-7, sensor row in bits 8-14, polarity bit 0; SpikingJelly
    # maps them to x = 127 - row, y = 127 - column, p = 1 - bit.
    addr = [0x0000, 0x7FFF, (5 << 8) | (9 << 1) | 1, (100 << 8) | (3 << 1)]
    t = [7, 8, 1000, 4_000_000_000]
    path = tmp_path / "rec.aedat"
    path.write_bytes(aedat(addr, t))
    x, y, p, ts = read_aedat(path)
    assert x.tolist() == [127, 0, 122, 27]
    assert y.tolist() == [127, 0, 118, 124]
    assert p.tolist() == [1, 0, 0, 1]
    assert ts.dtype == np.int64 and ts.tolist() == t  # uint32 microseconds, no wrap-around


def test_address_helper_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x, y, p = rng.integers(0, 128, 50), rng.integers(0, 128, 50), rng.integers(0, 2, 50)
    path = tmp_path / "rec.aedat"
    path.write_bytes(aedat(address(x, y, p), np.arange(50)))
    got = read_aedat(path)
    for a, b in zip(got, (x, y, p, np.arange(50))):
        assert a.tolist() == b.tolist()


DAMAGE = {
    "body cut mid-event": lambda raw: raw[:-3],
    "header only": lambda raw: HEADER,
    "header without its end": lambda raw: HEADER + b"# cut off here",
    "cut inside the first line": lambda raw: b"#!AER-DA",
    "empty": lambda raw: b"",
    "not AEDAT": lambda raw: b"\x00\x01garbage" * 3,
    "AEDAT 3.1": lambda raw: b"#!AER-DAT3.1\r\n" + raw[len(HEADER):],
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_aedat_is_one_line_naming_the_file(tmp_path, damage):
    path = tmp_path / "cifar10_cat_7.aedat"
    path.write_bytes(DAMAGE[damage](aedat([1, 2], [3, 4])))
    one_line(lambda: read_aedat(path), path)


# -- frames ----------------------------------------------------------------------------------

def test_count_binning_puts_events_in_the_right_slices_and_channels():
    # 10 events into 4 slices of equal counts: event k goes to slice k * 4 // 10.
    x = np.arange(10) + 20
    y = np.full(10, 5)
    p = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1])
    t = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 1000])  # times do not matter in this mode
    frames = events_to_frames(x, y, p, t, steps=4)
    assert frames.shape == (4, 2, 128, 128) and frames.dtype == np.uint8
    expected = np.zeros_like(frames)
    for k, slot in enumerate([0, 0, 0, 1, 1, 2, 2, 2, 3, 3]):
        expected[slot, p[k], 5, 20 + k] = 1
    assert np.array_equal(frames, expected)


def test_time_binning_splits_the_duration_evenly():
    # span from the first to the last timestamp is 100..499 (400 us): slices of 100 us.
    t = np.array([100, 150, 199, 200, 350, 499])
    x, y, p = np.array([1, 1, 2, 3, 4, 4]), np.array([0, 0, 0, 0, 9, 9]), np.array([0, 0, 1, 0, 1, 1])
    frames = events_to_frames(x, y, p, t, steps=4, mode="time")
    expected = np.zeros_like(frames)
    expected[0, 0, 0, 1] = 2  # two events on one pixel in slice 0
    expected[0, 1, 0, 2] = 1
    expected[1, 0, 0, 3] = 1
    expected[2, 1, 9, 4] = 1
    expected[3, 1, 9, 4] = 1
    assert np.array_equal(frames, expected)


def test_counts_clip_at_255():
    n = 300
    frames = events_to_frames(np.zeros(n), np.zeros(n), np.ones(n), np.arange(n), steps=1)
    assert frames[0, 1, 0, 0] == 255 and frames.sum() == 255


def test_downsample_sums_blocks_when_128_divides():
    frames = np.zeros((1, 2, 128, 128), dtype=np.uint8)
    frames[0, 0, 0:2, 0:2] = [[1, 2], [3, 4]]  # one 2x2 block -> 10
    frames[0, 1, 126, 127] = 7
    frames[0, 1, 10:12, 20:22] = 100  # 400 -> clipped to 255
    out = downsample(frames, 64)
    assert out.shape == (1, 2, 64, 64) and out.dtype == np.uint8
    assert out[0, 0, 0, 0] == 10 and out[0, 1, 63, 63] == 7 and out[0, 1, 5, 10] == 255
    assert out.sum() == 10 + 7 + 255
    assert np.array_equal(downsample(frames, 128), frames)


def test_downsample_to_48_shares_counts_by_area():
    # 128 / 48 = 8/3: output pixel 0 covers sensor pixels 0, 1 and 2/3 of pixel 2.
    frames = np.zeros((1, 1, 128, 128), dtype=np.uint8)
    frames[0, 0, 0, 0] = 9
    frames[0, 0, 0, 2] = 9  # 2/3 of it to output column 0, 1/3 to column 1
    frames[0, 0, 2, 4] = 9  # rows: 2/3 and 1/3; column 4 lies wholly in output column 1
    out = downsample(frames, 48)
    assert out.shape == (1, 1, 48, 48)
    assert out[0, 0, 0, 0] == 9 + 6 and out[0, 0, 0, 1] == 3 + 6 and out[0, 0, 1, 1] == 3
    assert out.sum() == 27
    ones = downsample(np.ones((128, 128), dtype=np.uint8), 48)
    assert ones.min() == ones.max() == 7  # (8/3)^2 = 7.1 counts per output pixel, rounded


# -- the release on disk ---------------------------------------------------------------------

INDICES = (0, 2, 10)  # numeric order; as text "10" would sort before "2"


def recording(label, index, events=None):
    """Events at image pixel (x=2*label, y=2*index): after 2x2 summing, pixel (index, label)."""
    n = events or 3 + index
    return aedat(address(np.full(n, 2 * label), np.full(n, 2 * index), np.arange(n) % 2),
                 np.arange(n) * 10)


def write_tree(data_dir: Path, zipped=()):
    root = data_dir / "CIFAR10-DVS"
    for label, cls in enumerate(CLASSES):
        files = {f"cifar10_{cls}_{i}.aedat": recording(label, i) for i in INDICES}
        if cls in zipped:
            root.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(root / f"{cls}.zip", "w", zipfile.ZIP_DEFLATED) as z:
                for name, raw in files.items():
                    z.writestr(f"{cls}/{name}", raw)
        else:
            (root / cls).mkdir(parents=True)
            for name, raw in files.items():
                (root / cls / name).write_bytes(raw)
    return root


def load(data_dir, **kw):
    kw = {"steps": 2, "size": 64, "test_per_class": 1, **kw}
    return load_cifar10_dvs(data_dir, **kw)


def cache_files(root):
    return sorted((root / "bntt-cache").iterdir())


def test_tiny_tree_split_shapes_labels(tmp_path):
    write_tree(tmp_path)
    train_x, train_y, test_x, test_y = load(tmp_path)
    assert train_x.shape == (20, 2, 2, 64, 64) and test_x.shape == (10, 2, 2, 64, 64)
    assert train_x.dtype == test_x.dtype == torch.uint8
    assert train_y.dtype == test_y.dtype == torch.int64
    assert train_y.tolist() == [c for c in range(10) for _ in range(2)]
    assert test_y.tolist() == list(range(10))
    # which recording each sample is: its events sit at row index, column label (size 64)
    for frames, labels, indices in ((train_x, train_y, [0, 2] * 10), (test_x, test_y, [10] * 10)):
        for sample, label, index in zip(frames, labels, indices):
            total = sample.sum(dim=(0, 1))
            assert total[index, label] == 3 + index and total.sum() == 3 + index
    default = load_cifar10_dvs(tmp_path, steps=3, test_per_class=1)
    assert default[0].shape == (20, 3, 2, 48, 48) and default[2].shape == (10, 3, 2, 48, 48)


def test_second_call_reads_the_cache(tmp_path, monkeypatch):
    root = write_tree(tmp_path)
    first = load(tmp_path)
    names = [p.name for p in cache_files(root)]
    assert names == ["test_T2_S64_count.npy", "train_T2_S64_count.npy"]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache_files(root)}

    def no_parsing(*args):
        raise AssertionError("parsed although the cache is current")

    monkeypatch.setattr(dvs, "parse_aedat", no_parsing)
    second = load(tmp_path)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache_files(root)} == before
    with pytest.raises(AssertionError, match="parsed"):  # another setting is not cached yet
        load(tmp_path, mode="time")


def test_other_settings_get_their_own_cache(tmp_path):
    root = write_tree(tmp_path)
    load(tmp_path)
    load(tmp_path, steps=3, mode="time", size=32)
    names = {p.name for p in cache_files(root)}
    assert names == {f"{split}_{setting}.npy" for split in ("train", "test")
                     for setting in ("T2_S64_count", "T3_S32_time")}


def test_changed_source_rebuilds(tmp_path):
    root = write_tree(tmp_path)
    _, _, test_x, _ = load(tmp_path)
    path = root / "dog" / "cifar10_dog_10.aedat"
    path.write_bytes(recording(CLASSES.index("dog"), 10, events=40))
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # a different mtime even on coarse clocks
    _, _, rebuilt, _ = load(tmp_path)
    dog = CLASSES.index("dog")
    assert test_x[dog].sum() == 13 and rebuilt[dog].sum() == 40
    assert torch.equal(rebuilt[:dog], test_x[:dog])


def read_cache_file(path):
    """The three arrays of a cache file: its JSON header, the labels and the frames."""
    with open(path, "rb") as f:
        return json.loads(str(np.load(f))), np.load(f), np.load(f)


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "garbage"])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    root = write_tree(tmp_path)
    first = load(tmp_path)
    path = root / "bntt-cache" / "train_T2_S64_count.npy"
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:len(raw) // 2]
    elif damage == "flip a byte":  # inside the frames: only their checksum tells
        raw[-5] ^= 0xFF
    else:
        raw = b"not a numpy file"
    path.write_bytes(bytes(raw))
    again = load(tmp_path)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    meta, labels, frames = read_cache_file(path)
    assert np.array_equal(frames, first[0].numpy()) and np.array_equal(labels, first[1].numpy())
    assert meta["samples_shape"] == [20, 2, 2, 64, 64]


def test_cache_of_another_shape_is_rebuilt(tmp_path):
    """A cache whose fingerprint and checksums match but whose frames are not [N, steps, 2,
    size, size] (written by hand, or by another version) is not served."""
    root = write_tree(tmp_path)
    first = load(tmp_path)
    path = root / "bntt-cache" / "train_T2_S64_count.npy"
    meta, labels, frames = read_cache_file(path)
    frames = np.ascontiguousarray(frames[:, :1])
    meta.update(samples_shape=list(frames.shape), samples_crc32=crc32(frames))
    with open(path, "wb") as f:
        for array in (np.array(json.dumps(meta)), labels, frames):
            np.save(f, array)
    for a, b in zip(load(tmp_path), first):
        assert torch.equal(a, b)


def test_zip_per_class_layout(tmp_path):
    write_tree(tmp_path / "folders")
    write_tree(tmp_path / "zips", zipped=CLASSES[::2])
    for a, b in zip(load(tmp_path / "folders"), load(tmp_path / "zips")):
        assert torch.equal(a, b)


def test_missing_folder_says_where_the_files_go(tmp_path):
    root = tmp_path / "CIFAR10-DVS"
    one_line(lambda: load(tmp_path), root, "figshare", f"{root}/<class>/")
    assert not root.exists()


def test_missing_class_is_named(tmp_path):
    root = write_tree(tmp_path)
    for path in (root / "frog").iterdir():
        path.unlink()
    (root / "frog").rmdir()
    one_line(lambda: load(tmp_path), "frog", root)


def test_truncated_aedat_in_the_tree_names_it(tmp_path):
    root = write_tree(tmp_path)
    path = root / "horse" / "cifar10_horse_2.aedat"
    path.write_bytes(path.read_bytes()[:-4])
    one_line(lambda: load(tmp_path), path, "truncated")
    assert not (root / "bntt-cache").exists()


def test_damaged_zip_names_it(tmp_path):
    root = write_tree(tmp_path, zipped=("ship",))
    path = root / "ship.zip"
    path.write_bytes(path.read_bytes()[:40])
    one_line(lambda: load(tmp_path), path)


def test_too_few_recordings_for_the_split(tmp_path):
    root = write_tree(tmp_path)
    one_line(lambda: load(tmp_path, test_per_class=3), root / "airplane", "3 airplane recordings")


# -- sizes, and events that are no recording ---------------------------------------------------

def events_of_zeros(total: int) -> bytes:
    """An AEDAT header, then zero bytes (whole events) to at least `total` bytes in all."""
    body = -(-(total - len(HEADER)) // 8) * 8
    return HEADER + bytes(body)


def add_to_zip(path, member, raw, method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "a", method) as z:
        z.writestr(member, raw)


def peak_traced_bytes(call):
    """Run call() (it must raise DataUnavailable) and return the peak of the memory Python and
    NumPy allocated meanwhile, and the one-line message."""
    import tracemalloc
    tracemalloc.start()
    try:
        with pytest.raises(DataUnavailable) as err:
            call()
        return tracemalloc.get_traced_memory()[1], str(err.value)
    finally:
        tracemalloc.stop()


def test_zip_member_declaring_more_than_the_limit_is_refused_unread(tmp_path):
    """A zip of a few hundred KB whose member expands past MAX_RECORDING_BYTES: refused from
    the size its zip entry declares, before it is decompressed."""
    root = write_tree(tmp_path, zipped=("cat",))
    add_to_zip(root / "cat.zip", "cat/cifar10_cat_5.aedat",
               events_of_zeros(dvs.MAX_RECORDING_BYTES + 1))
    assert (root / "cat.zip").stat().st_size < 100_000
    peak, message = peak_traced_bytes(lambda: load(tmp_path))
    assert peak < 1_000_000, peak
    assert "\n" not in message and "MAX_RECORDING_BYTES" in message
    assert message.startswith(f"{root / 'cat.zip'}:cat/cifar10_cat_5.aedat declares ")
    assert not (root / "bntt-cache").exists()


def test_file_larger_than_the_limit_is_refused_unread(tmp_path):
    root = write_tree(tmp_path)
    path = root / "deer" / "cifar10_deer_5.aedat"
    with open(path, "wb") as f:  # sparse: the disk holds the header only
        f.write(HEADER)
        f.truncate(dvs.MAX_RECORDING_BYTES + 8)
    for call in (lambda: load(tmp_path), lambda: read_aedat(path)):
        peak, message = peak_traced_bytes(call)
        assert peak < 1_000_000, peak
        assert message.startswith(f"{path} is {dvs.MAX_RECORDING_BYTES + 8} bytes, more than")
        assert "MAX_RECORDING_BYTES" in message


def declare_size(path, member, size):
    """Rewrite the uncompressed size that `path`'s local header and central directory declare
    for `member` (a zip without data descriptors)."""
    raw = bytearray(path.read_bytes())
    name = member.encode()
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(member).header_offset
    assert raw[local:local + 4] == b"PK\x03\x04" and raw[local + 30:local + 30 + len(name)] == name
    raw[local + 22:local + 26] = size.to_bytes(4, "little")
    central = raw.index(b"PK\x01\x02")
    while raw[central + 46:central + 46 + len(name)] != name:
        central = raw.index(b"PK\x01\x02", central + 4)
    raw[central + 24:central + 28] = size.to_bytes(4, "little")
    path.write_bytes(bytes(raw))


def test_zip_member_understating_its_size_is_read_no_further(tmp_path):
    root = write_tree(tmp_path, zipped=("dog",))
    member = "dog/cifar10_dog_5.aedat"
    add_to_zip(root / "dog.zip", member, recording(5, 5, events=1_000_000))  # 8 MB
    declare_size(root / "dog.zip", member, 800)
    with zipfile.ZipFile(root / "dog.zip") as z:
        assert z.getinfo(member).file_size == 800
    peak, message = peak_traced_bytes(lambda: load(tmp_path))
    assert peak < 4_000_000, peak  # the recordings parsed before it; the member is 8 MB
    assert message.startswith(f"{root / 'dog.zip'}:{member} cannot be read (BadZipFile")


def test_zip_member_of_a_method_read_without_a_bound_is_refused_unread(tmp_path):
    """bzip2 decompresses a whole chunk at once in zipfile: a 45-byte member declaring 800
    bytes would expand to 16 MiB in memory before the declared size is looked at."""
    root = write_tree(tmp_path, zipped=("frog",))
    member = "frog/cifar10_frog_5.aedat"
    add_to_zip(root / "frog.zip", member, events_of_zeros(16 * 2**20), zipfile.ZIP_BZIP2)
    declare_size(root / "frog.zip", member, 800)
    peak, message = peak_traced_bytes(lambda: load(tmp_path))
    assert peak < 1_000_000, peak
    assert message == (f"{root / 'frog.zip'}:{member} is compressed with zip method 12; only "
                       f"stored and deflated members are read here: unpack {root / 'frog.zip'} "
                       "with another tool into its class folder")


@pytest.mark.parametrize("zipped", [False, True], ids=["folder", "zip"])
@pytest.mark.parametrize("body,says", [
    (bytes(800), "holds no events: its 800 bytes of events are all zero"),
    (b"\xff" * 800, "holds no valid events: all 100 of them carry the timestamp 4294967295"),
    (np.stack([address(np.arange(5), np.arange(5), np.ones(5, dtype=int)), np.full(5, 7)],
              axis=1).astype(">u4").tobytes(),
     "holds no valid events: all 5 of them carry the timestamp 7"),
])
def test_recording_without_valid_events_is_refused(tmp_path, zipped, body, says):
    root = write_tree(tmp_path, zipped=("ship",) if zipped else ())
    if zipped:
        add_to_zip(root / "ship.zip", "ship/cifar10_ship_5.aedat", HEADER + body)
        name = f"{root / 'ship.zip'}:ship/cifar10_ship_5.aedat"
    else:
        name = root / "ship" / "cifar10_ship_5.aedat"
        name.write_bytes(HEADER + body)
    assert says in one_line(lambda: load(tmp_path), name)
    assert not (root / "bntt-cache").exists()


# -- FrameDataset ----------------------------------------------------------------------------

def frames_with_steps(n=3, steps=4, size=16):
    """Step k of each sample is one spatial pattern times k + 1, so a per-step difference in
    the augmentation would show."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(0, 3, (n, 1, 2, size, size), generator=gen, dtype=torch.uint8)
    base[:, :, :, :6, :6] = 0  # an asymmetric corner, so flips are visible
    return base * torch.arange(1, steps + 1, dtype=torch.uint8).view(1, steps, 1, 1, 1)


def test_frame_dataset_binary_and_counts():
    frames = frames_with_steps()
    labels = torch.tensor([3, 1, 4])
    binary = FrameDataset(frames, labels)
    x, y = binary[1]
    assert x.dtype == torch.float32 and x.shape == (4, 2, 16, 16) and int(y) == 1
    assert set(x.unique().tolist()) <= {0.0, 1.0} and torch.equal(x, (frames[1] > 0).float())
    counts = FrameDataset(frames, labels, counts=True, max_count=3)
    x, _ = counts[2]
    assert torch.equal(x, frames[2].clamp(max=3).float()) and x.max() == 3
    batch = next(iter(DataLoader(binary, batch_size=3)))
    assert batch[0].shape == (3, 4, 2, 16, 16) and batch[1].tolist() == [3, 1, 4]


def transforms(image, shift):
    """Every translation by up to `shift` pixels (zero fill), with and without a flip."""
    size = image.shape[-1]
    padded = torch.nn.functional.pad(image, (shift,) * 4)
    for top in range(2 * shift + 1):
        for left in range(2 * shift + 1):
            moved = padded[..., top:top + size, left:left + size]
            yield moved
            yield moved.flip(-1)


def test_frame_dataset_augmentation_moves_every_step_alike():
    frames = frames_with_steps()
    data = FrameDataset(frames, torch.zeros(3, dtype=torch.int64), augment=True, shift=2,
                        counts=True, max_count=255)
    seen = set()
    for epoch in range(6):
        data.draw_key = (5, epoch)
        batch = data.__getitems__([0, 1, 2])
        for i, (x, _) in enumerate(batch):
            assert x.shape == (4, 2, 16, 16)
            first = x[0]
            for k in range(4):
                assert torch.equal(x[k], first * (k + 1))  # the same move at every step
            matches = [j for j, t in enumerate(transforms(frames[i, 0].float(), 2))
                       if torch.equal(t, first)]
            assert matches, "not a translation (and flip) of the sample"
            seen.add(matches[0])
    assert len(seen) > 3  # it does move


def test_frame_dataset_augmentation_is_fixed_by_seed_epoch_and_sample():
    data = FrameDataset(frames_with_steps(), torch.zeros(3, dtype=torch.int64), augment=True)
    runs = []
    for key in ((1, 0), (1, 0), (2, 0), (1, 1)):
        data.draw_key = key
        runs.append(torch.stack([x for x, _ in data.__getitems__([0, 1, 2, 0, 1, 2])]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2]) and not torch.equal(runs[0], runs[3])
    assert torch.equal(runs[0][:3], runs[0][3:])  # a sample's draws do not depend on the batch


@pytest.mark.slow
def test_registry_split_is_the_last_tenth_and_train_py_runs_one_epoch(tmp_path):
    """The dataset as train.py reads it (VGG9 on 2 x 48 x 48 frames, `--dataset cifar10dvs`):
    the last tenth of each class (here 1 of 3) is the test set."""
    import train
    from bntt.data import load_arrays
    write_tree(tmp_path)
    train_x, _, test_x, test_y = load_arrays("cifar10dvs", tmp_path, num_steps=2)
    assert train_x.shape == (20, 2, 2, 48, 48) and test_y.tolist() == list(range(10))
    out = tmp_path / "runs"
    code = train.cli(["--dataset", "cifar10dvs", "--arch", "vgg9", "--data_dir", str(tmp_path),
                      "--num_steps", "2", "--batch_size", "4", "--lr", "0.05", "--num_epochs", "1",
                      "--num_workers", "0", "--device", "cpu", "--out_dir", str(out), "--run_name", "d"])
    assert code == 0
    row = json.loads((out / "d" / "metrics.jsonl").read_text())
    assert row["train_images"] == 20 and row["test_images"] == 10
    state = torch.load(out / "d" / "last.pt", weights_only=True)["state_dict"]
    assert state["conv1.weight"].shape == (64, 2, 3, 3)  # the two polarities
    assert state["fc1.weight"].shape == (1024, 256 * 6 * 6)  # 48 / 2^3 = 6
    import evaluate  # the early-exit evaluator reads the frames the same way
    assert evaluate.cli(["--checkpoint", str(out / "d"), "--out_dir", str(tmp_path / "ee"),
                         "--no_plots", "--batch_size", "8"]) == 0
    report = json.loads((tmp_path / "ee" / "early_exit.json").read_text())
    assert report["test_images"] == 10 and report["per_step"][-1]["top1"] == row["test_top1"]
