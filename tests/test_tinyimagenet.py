"""Tiny-ImageNet-200 from its official unpacked layout: decoded pixels equal PIL's, every mode
becomes RGB, the uint8 cache is reused until its source changes and rebuilt when damaged, and
missing or damaged files end in one line naming them. The tree is tiny but written with real
JPEG bytes by PIL, in the exact layout of tiny-imagenet-200.zip."""
import json
import os
import random
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from bntt.data import DataUnavailable
from bntt.data.tinyimagenet import TINY_IMAGENET_FOLDER, load_tiny_imagenet

WNIDS = ["n01443537", "n01629819", "n01641577"]
TRAIN_INDICES = [0, 1, 2, 10]  # "_10" sorts before "_2": the order is by file name
GRAY = {"n01629819_1.JPEG", "val_2.JPEG"}
CMYK = {"n01641577_10.JPEG"}
VAL_LABELS = {"val_0.JPEG": 2, "val_1.JPEG": 0, "val_2.JPEG": 1, "val_3.JPEG": 1,
              "val_4.JPEG": 0, "val_5.JPEG": 2}


def smooth_image(seed, mode="RGB"):
    """A smooth 64x64 picture (so JPEG keeps it close) that differs with `seed`."""
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([(x * 3 + seed * 17) % 256, (y * 3 + seed * 29) % 256,
                    ((x + y) * 2 + seed * 41) % 256], axis=-1).astype(np.uint8)
    image = Image.fromarray(rgb)
    return image if mode == "RGB" else image.convert(mode)


def write_jpeg(path, seed, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    smooth_image(seed, mode).save(path, "JPEG", quality=95)
    return path


def mode_of(name):
    return "L" if name in GRAY else "CMYK" if name in CMYK else "RGB"


def write_tiny_imagenet(data_dir, extra_classes=0):
    """The layout of tiny-imagenet-200.zip unzipped into data_dir: 3 classes x 4 train images,
    6 val images, some grayscale or CMYK, and `extra_classes` more classes of one train image
    each (197: the 200 of the set); returns data_dir."""
    root = data_dir / TINY_IMAGENET_FOLDER
    root.mkdir(parents=True)
    extra = [f"n{90000000 + i:08d}" for i in range(extra_classes)]
    (root / "wnids.txt").write_text("".join(w + "\n" for w in WNIDS + extra))
    (root / "words.txt").write_text("".join(f"{w}\tthing {i}\n"
                                            for i, w in enumerate(WNIDS + extra)))
    for i, wnid in enumerate(extra):
        write_jpeg(root / "train" / wnid / "images" / f"{wnid}_0.JPEG", 200 + i)
    seed = 0
    for wnid in WNIDS:
        boxes = []
        for i in TRAIN_INDICES:
            name = f"{wnid}_{i}.JPEG"
            write_jpeg(root / "train" / wnid / "images" / name, seed, mode_of(name))
            boxes.append(f"{name}\t0\t0\t63\t63\n")
            seed += 1
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    lines = []
    for name, label in VAL_LABELS.items():
        write_jpeg(root / "val" / "images" / name, seed, mode_of(name))
        lines.append(f"{name}\t{WNIDS[label]}\t1\t2\t60\t61\n")
        seed += 1
    random.Random(0).shuffle(lines)  # the val order must come from the file names, not this
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    write_jpeg(root / "test" / "images" / "test_0.JPEG", 99)  # unlabelled: must be ignored
    return data_dir


def load(data_dir):
    """The fixture's three classes, read as the set's 200 would be."""
    return load_tiny_imagenet(data_dir, num_classes=len(WNIDS))


@pytest.fixture
def data_dir(tmp_path):
    return write_tiny_imagenet(tmp_path / "data")


def root_of(data_dir):
    return data_dir / TINY_IMAGENET_FOLDER


def train_paths(data_dir):
    return [root_of(data_dir) / "train" / w / "images" / f"{w}_{i}.JPEG"
            for w in WNIDS for i in sorted(TRAIN_INDICES, key=lambda i: f"{w}_{i}.JPEG")]


def val_paths(data_dir):
    return [root_of(data_dir) / "val" / "images" / name for name in sorted(VAL_LABELS)]


def pil_decode(path):
    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy())


def cache_file(data_dir, split="train"):
    return root_of(data_dir) / "bntt-cache" / f"{split}.npy"


def stamp(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def one_line_error(data_dir, naming):
    with pytest.raises(DataUnavailable) as err:
        load(data_dir)
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    assert str(naming) in message, message
    return message


def no_tmp_files(data_dir):
    return not any(p.name.endswith(".tmp") for p in root_of(data_dir).rglob("*"))


# -- decoding ---------------------------------------------------------------------------------

def test_decodes_the_official_layout(data_dir):
    train_x, train_y, val_x, val_y = load(data_dir)
    assert train_x.dtype == val_x.dtype == torch.uint8
    assert train_y.dtype == val_y.dtype == torch.int64
    assert train_x.shape == (12, 3, 64, 64) and val_x.shape == (6, 3, 64, 64)
    assert train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert val_y.tolist() == [VAL_LABELS[name] for name in sorted(VAL_LABELS)]
    # same decoder, so the same pixels exactly, in (class, file name) and file-name order
    assert torch.equal(train_x, torch.stack([pil_decode(p) for p in train_paths(data_dir)]))
    assert torch.equal(val_x, torch.stack([pil_decode(p) for p in val_paths(data_dir)]))
    # and close to the pictures that were compressed (JPEG is lossy)
    source = np.asarray(smooth_image(0)).transpose(2, 0, 1).astype(np.float64)
    assert np.abs(train_x[0].numpy() - source).mean() < 3


def test_grayscale_and_cmyk_become_rgb(data_dir):
    train_x, _, val_x, _ = load(data_dir)
    order = [p.name for p in train_paths(data_dir)]
    gray = train_x[order.index("n01629819_1.JPEG")]
    with Image.open(train_paths(data_dir)[order.index("n01629819_1.JPEG")]) as img:
        assert img.mode == "L"
        luma = torch.from_numpy(np.asarray(img).copy())
    assert torch.equal(gray[0], luma) and torch.equal(gray[1], luma) and torch.equal(gray[2], luma)
    val_gray = val_x[sorted(VAL_LABELS).index("val_2.JPEG")]
    assert torch.equal(val_gray[0], val_gray[1]) and torch.equal(val_gray[0], val_gray[2])
    with Image.open(train_paths(data_dir)[order.index("n01641577_10.JPEG")]) as img:
        assert img.mode == "CMYK"
    assert train_x[order.index("n01641577_10.JPEG")].shape == (3, 64, 64)


def test_image_not_64x64_is_an_error_naming_it(data_dir):
    path = train_paths(data_dir)[5]
    smooth_image(3).resize((64, 56)).save(path, "JPEG")
    assert "64x56" in one_line_error(data_dir, path)


# -- the cache --------------------------------------------------------------------------------

def test_second_load_reads_the_cache(data_dir, capsys):
    first = load(data_dir)
    assert "decoding Tiny-ImageNet train" in capsys.readouterr().err
    stamps = {split: stamp(cache_file(data_dir, split)) for split in ("train", "val")}
    # Same size and mtime, other bytes: the fingerprint still matches, so a load that decoded
    # would fail on this file; one that reads the cache does not look at it.
    path = train_paths(data_dir)[0]
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = load(data_dir)
    assert "decoding" not in capsys.readouterr().err
    for got, want in zip(second, first):
        assert torch.equal(got, want)
    assert {split: stamp(cache_file(data_dir, split)) for split in ("train", "val")} == stamps


def test_changed_jpeg_rebuilds_the_cache(data_dir):
    load(data_dir)
    before = stamp(cache_file(data_dir, "val"))
    path = train_paths(data_dir)[6]
    old = path.stat()
    write_jpeg(path, seed=77)
    # what a later edit looks like, even if the clock has not ticked since the first load
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))
    train_x, _, _, _ = load(data_dir)
    assert torch.equal(train_x[6], pil_decode(path))
    assert not torch.equal(train_x[6], pil_decode(train_paths(data_dir)[5]))
    assert stamp(cache_file(data_dir, "val")) == before  # val's source did not change
    assert torch.equal(load(data_dir)[0][6], pil_decode(path))


def test_relabelled_val_rebuilds_the_cache(data_dir):
    load(data_dir)
    path = root_of(data_dir) / "val" / "val_annotations.txt"
    old = path.stat()
    path.write_text(path.read_text().replace(WNIDS[0], WNIDS[2]))  # the same size
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))
    _, _, _, val_y = load(data_dir)
    assert val_y.tolist() == [2 if y == 0 else y for y in
                              (VAL_LABELS[n] for n in sorted(VAL_LABELS))]


def resaved_with_small_images(raw_path):
    with open(raw_path, "rb") as f:
        header, labels, images = (np.load(f) for _ in range(3))
    with open(raw_path, "wb") as f:
        for array in (header, labels, images[:, :, :32, :32]):
            np.save(f, array)


def flip_byte(raw, at):
    raw = bytearray(raw)
    raw[at] ^= 0xFF
    return bytes(raw)


CACHE_DAMAGE = {
    "first half": lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2]),
    "first 100 bytes": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(5000)),
    "right fingerprint, wrong shape": resaved_with_small_images,
    # inside the images, where only their checksum tells
    "a flipped pixel": lambda p: p.write_bytes(flip_byte(p.read_bytes(), -5)),
}


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE))
def test_damaged_cache_is_rebuilt(data_dir, damage):
    first = load(data_dir)
    path = cache_file(data_dir)
    size = path.stat().st_size
    CACHE_DAMAGE[damage](path)
    for got, want in zip(load(data_dir), first):
        assert torch.equal(got, want)
    assert path.stat().st_size == size


def test_interrupted_cache_write_leaves_no_cache(data_dir, monkeypatch):
    real_save = np.save

    def killed_on_the_images(f, array, *args, **kwargs):
        if array.ndim == 4:
            f.write(b"half an array")
            raise KeyboardInterrupt
        real_save(f, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", killed_on_the_images)
    with pytest.raises(KeyboardInterrupt):
        load(data_dir)
    monkeypatch.undo()
    assert not cache_file(data_dir).exists() and no_tmp_files(data_dir)
    first = load(data_dir)
    assert torch.equal(first[0], torch.stack([pil_decode(p) for p in train_paths(data_dir)]))


def test_unwritable_cache_folder_falls_back_with_a_one_line_warning(data_dir, capsys):
    (root_of(data_dir) / "bntt-cache").write_text("not a folder")  # fails for root users too
    train_x, train_y, val_x, val_y = load(data_dir)
    assert torch.equal(train_x, torch.stack([pil_decode(p) for p in train_paths(data_dir)]))
    assert len(val_y) == 6
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "bntt-cache" in warnings[0], warnings
    assert (root_of(data_dir) / "bntt-cache").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_data_falls_back_with_a_one_line_warning(data_dir, capsys):
    root = root_of(data_dir)
    root.chmod(0o555)
    try:
        train_x = load(data_dir)[0]
    finally:
        root.chmod(0o755)
    assert train_x.shape == (12, 3, 64, 64)
    assert len([line for line in capsys.readouterr().err.splitlines() if "warning" in line]) == 1
    assert not (root / "bntt-cache").exists()


# -- missing and damaged source files ---------------------------------------------------------

@pytest.mark.parametrize("cut", [0.5, 0.9, 100])
def test_truncated_jpeg_is_one_line_naming_it(data_dir, cut):
    path = train_paths(data_dir)[5]  # mid-way through the train split
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * cut) if cut < 1 else cut])
    message = one_line_error(data_dir, path)
    assert "not a readable JPEG" in message
    assert no_tmp_files(data_dir) and not cache_file(data_dir).exists()


def test_corrupt_jpeg_after_a_good_build_keeps_no_half_cache(data_dir):
    load(data_dir)
    path = val_paths(data_dir)[3]
    path.write_bytes(b"this is not a JPEG")
    one_line_error(data_dir, path)
    assert no_tmp_files(data_dir)


def rewrite_annotations(data_dir, line_number, new_line):
    path = root_of(data_dir) / "val" / "val_annotations.txt"
    lines = path.read_text().splitlines()
    lines[line_number - 1] = new_line
    path.write_text("\n".join(lines) + "\n")
    return path


def test_unknown_wnid_in_val_annotations(data_dir):
    path = rewrite_annotations(data_dir, 3, "val_4.JPEG\tn99999999\t0\t0\t10\t10")
    message = one_line_error(data_dir, f"{path} line 3")
    assert "n99999999" in message and "wnids.txt" in message


@pytest.mark.parametrize("bad_line", [
    "val_4.JPEG n01443537 0 0 10 10",           # spaces, not tabs
    "val_4.JPEG\tn01443537\t0\t0\t10",          # a field short
    "val_4.JPEG\tn01443537\t0\tzero\t10\t10",   # a coordinate that is no number
])
def test_malformed_annotation_line(data_dir, bad_line):
    path = rewrite_annotations(data_dir, 2, bad_line)
    one_line_error(data_dir, f"{path} line 2")


def test_annotation_naming_a_missing_image(data_dir):
    path = rewrite_annotations(data_dir, 4, "val_9.JPEG\tn01443537\t0\t0\t10\t10")
    assert "val_9.JPEG" in one_line_error(data_dir, f"{path} line 4")


def test_val_image_without_annotation(data_dir):
    extra = write_jpeg(root_of(data_dir) / "val" / "images" / "val_6.JPEG", 5)
    one_line_error(data_dir, extra)


def test_train_folder_for_an_unknown_wnid(data_dir):
    folder = root_of(data_dir) / "train" / "n00000001"
    write_jpeg(folder / "images" / "n00000001_0.JPEG", 5)
    assert "wnids.txt" in one_line_error(data_dir, folder)


def test_repeated_wnid(data_dir):
    path = root_of(data_dir) / "wnids.txt"
    path.write_text(path.read_text() + WNIDS[0] + "\n")
    one_line_error(data_dir, f"{path} line 4")


@pytest.mark.parametrize("missing", ["", "wnids.txt", "train", f"train/{WNIDS[1]}/images",
                                     "val/images", "val/val_annotations.txt"])
def test_missing_files_say_where_they_must_be(data_dir, missing):
    target = root_of(data_dir) / missing
    if missing == "":
        shutil.rmtree(target)
        target = root_of(data_dir) / "wnids.txt"
    elif target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    message = one_line_error(data_dir, target)
    assert "tiny-imagenet-200.zip" in message and "CS231n" in message
    assert f"into {data_dir}" in message and str(root_of(data_dir) / "train") in message
    assert not (root_of(data_dir) / "bntt-cache").exists()


# -- files that are not images, and classes that are not the set's ------------------------------

def load_within(data_dir, fifos, seconds=30):
    """load(data_dir) in a thread; if it is still running after `seconds` (blocked opening one
    of `fifos`), open each FIFO for writing and close it, so that the blocked open returns
    and the test fails instead of hanging. Returns (arrays or None, DataUnavailable or None)."""
    outcome = {}

    def run():
        try:
            outcome["arrays"] = load(data_dir)
        except DataUnavailable as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    hung = thread.is_alive()
    while thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: nobody has this one open for reading
                pass
        thread.join(0.1)
    assert not hung, "the load blocked on a FIFO"
    return outcome.get("arrays"), outcome.get("error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("where", [f"train/{WNIDS[1]}/images/{WNIDS[1]}_99.JPEG",
                                   "val/images/val_9.JPEG"])
def test_fifo_named_jpeg_is_skipped_not_opened(data_dir, where):
    expected = load(data_dir)
    shutil.rmtree(root_of(data_dir) / "bntt-cache")
    fifo = root_of(data_dir) / where
    os.mkfifo(fifo)
    arrays, error = load_within(data_dir, [fifo])
    assert error is None, error
    for got, want in zip(arrays, expected):
        assert torch.equal(got, want)
    assert fifo.is_fifo() and cache_file(data_dir, "val").is_file()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifo_that_an_annotation_names_is_refused_not_opened(data_dir):
    fifo = root_of(data_dir) / "val" / "images" / "val_9.JPEG"
    os.mkfifo(fifo)
    path = root_of(data_dir) / "val" / "val_annotations.txt"
    with open(path, "a") as f:
        f.write("val_9.JPEG\tn01443537\t0\t0\t10\t10\n")
    _, error = load_within(data_dir, [fifo])
    line = len(VAL_LABELS) + 1
    assert str(error) == f"{path} line {line}: {fifo} is not a regular file", error


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("name", ["wnids.txt", "val/val_annotations.txt"])
def test_fifo_in_place_of_a_text_file_is_refused_not_opened(data_dir, name):
    fifo = root_of(data_dir) / name
    fifo.unlink()
    os.mkfifo(fifo)
    _, error = load_within(data_dir, [fifo])
    assert str(error).startswith(f"{fifo} is not a regular file"), error


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifo_in_place_of_the_cache_is_replaced_not_opened(data_dir):
    expected = load(data_dir)
    fifo = cache_file(data_dir, "train")
    fifo.unlink()
    os.mkfifo(fifo)
    arrays, error = load_within(data_dir, [fifo])
    assert error is None, error
    assert torch.equal(arrays[0], expected[0]) and fifo.is_file()


def test_wnids_of_fewer_classes_than_the_set_is_refused(data_dir, tmp_path, capsys):
    """The fixture lists 3 wnids, consistent with its folders: as the set's 200-way dataset it
    is refused when the dataset is built, before a run folder is made."""
    import train
    path = root_of(data_dir) / "wnids.txt"
    message = (f"{path} lists 3 wnids, not the 200 classes of Tiny-ImageNet-200 that the "
               "network has outputs for; unzip tiny-imagenet-200.zip again")
    with pytest.raises(DataUnavailable) as refused:
        load_tiny_imagenet(data_dir)
    assert str(refused.value) == message
    out = tmp_path / "runs"
    code = train.cli(["--dataset", "tinyimagenet", "--arch", "vgg11", "--data_dir", str(data_dir),
                      "--num_steps", "1", "--batch_size", "4", "--num_epochs", "1",
                      "--num_workers", "0", "--device", "cpu", "--out_dir", str(out)])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"train.py: error: {message}"
    assert not out.exists() and not (root_of(data_dir) / "bntt-cache").exists()


@pytest.mark.slow
def test_train_one_tiny_epoch_on_the_fixture(tmp_path):
    """train.py end to end: VGG11 at 64x64 with the 200 outputs of the set, on the fixture with
    the set's 200 classes (the first 12 training images: the fixture's first three classes)."""
    import train
    data_dir = write_tiny_imagenet(tmp_path / "data", extra_classes=197)
    out = tmp_path / "runs"
    code = train.cli(["--dataset", "tinyimagenet", "--arch", "vgg11", "--data_dir", str(data_dir),
                      "--num_steps", "2", "--batch_size", "4", "--lr", "0.05", "--num_epochs", "1",
                      "--num_workers", "0", "--device", "cpu", "--out_dir", str(out),
                      "--run_name", "t", "--train_samples", "12"])
    assert code == 0
    row = json.loads((out / "t" / "metrics.jsonl").read_text())
    assert row["train_images"] == 12 and row["test_images"] == 6
    ckpt = torch.load(out / "t" / "last.pt", weights_only=True)
    assert ckpt["state_dict"]["fc2.weight"].shape == (200, 4096)  # the 200 classes of the set
    assert ckpt["state_dict"]["conv1.weight"].shape == (64, 3, 3, 3)
