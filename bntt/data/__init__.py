"""Datasets: CIFAR-10/100 (the paper's), Fashion-MNIST, and a bundled real Fashion-MNIST subset.

Each dataset is read from its standard on-disk format into uint8 tensors [N, C, H, W] and
served as float images with the CIFAR recipe of the paper (random 32x32 crop of the
4-pixel zero-padded image, horizontal flip, per-channel normalisation) for training, and
normalisation only for testing. Fashion-MNIST is zero-padded from 28x28 to 32x32 with one
channel, then follows the same recipe.

A dataset that is missing, damaged or inconsistent (a label outside the classes, images of
another size than the dataset's, in either split) raises `DataUnavailable` with one line saying
which file is at fault, or where the files must be and how to get them, when the dataset is
built; nothing is written in that case.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import socket
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bntt.names import check_name

BUNDLED_FASHION_MNIST = Path(__file__).resolve().parents[1] / "assets" / "fashion-mnist-subset"
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_SIZE = 28  # the height and width of every MNIST-format image, Fashion-MNIST's too
# The largest MNIST-format file read here holds 47 million values (60,000 images of 28x28);
# one whose header declares more is damaged, and its body is not decompressed.
MAX_IDX_VALUES = 2**28
OFFLINE_ENV = "BNTT_OFFLINE"  # set to 1 to never try a download


class DataUnavailable(Exception):
    """The dataset's files are missing, damaged or cannot be fetched; the message says what to do."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0]}" if text else exc.__class__.__name__


@dataclass(frozen=True)
class DatasetInfo:
    """What a network needs to know of a dataset. `kind` is what a sample is: an "image"
    (Poisson-coded, Eq. 1), "frames" (event frames [T, C, H, W], spikes already) or a
    "sequence" (an image read row by row or pixel by pixel). Training images are augmented with
    a random crop of the image zero-padded by `padding` pixels and a horizontal flip; 0: none."""
    name: str
    num_cls: int
    in_channels: int
    img_size: int
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    kind: str = "image"
    padding: int = 4

    def make_encoder(self, seq_order: str = "rows", seq_coding: str = "direct"):
        """The encoder that turns this dataset's samples into the network's input steps."""
        from bntt.coding import FrameEncoder, PoissonEncoder, SequenceEncoder
        if self.kind == "sequence":
            return SequenceEncoder(seq_order, seq_coding)
        return FrameEncoder() if self.kind == "frames" else PoissonEncoder()

    def sequence_steps(self, seq_order: str = "rows") -> int | None:
        """The T a sequence dataset is read in; None for the others."""
        if self.kind != "sequence":
            return None
        return self.make_encoder(seq_order).steps(self.img_size, self.img_size)


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# Pixel statistics of the Fashion-MNIST training set after zero-padding to 32x32.
FASHION_MEAN, FASHION_STD = (0.2190,), (0.3318,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, CIFAR_MEAN, CIFAR_STD),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, CIFAR_MEAN, CIFAR_STD),
    "fashionmnist": DatasetInfo("fashionmnist", 10, 1, 32, FASHION_MEAN, FASHION_STD),
    "fashionmnist_subset": DatasetInfo("fashionmnist_subset", 10, 1, 32, FASHION_MEAN, FASHION_STD),
    # VGG11 at 64x64 with ImageNet statistics, as the authors' later code trains it; the
    # 4-pixel padding of the CIFAR recipe is our choice (docs/spec.md, section 6).
    "tinyimagenet": DatasetInfo("tinyimagenet", 200, 3, 64, IMAGENET_MEAN, IMAGENET_STD),
    # Event frames of two polarities at 48x48, flipped and shifted as whole sequences.
    "cifar10dvs": DatasetInfo("cifar10dvs", 10, 2, 48, kind="frames"),
    # 28x28 images as sequences of intensities in [0, 1] (mean 0, std 1: no normalisation),
    # not augmented; the bundled subset serves the tests.
    "seqmnist": DatasetInfo("seqmnist", 10, 1, 28, kind="sequence", padding=0),
    "seqfashionmnist": DatasetInfo("seqfashionmnist", 10, 1, 28, kind="sequence", padding=0),
    "seqfashionmnist_subset": DatasetInfo("seqfashionmnist_subset", 10, 1, 28, kind="sequence",
                                          padding=0),
}


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS[check_name("dataset", name, DATASETS)]


# -- readers of the on-disk formats ---------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzip-compressed or not, as a uint8 array. The header is
    read first and the body no further than one value past what it declares (at most
    `MAX_IDX_VALUES`), so a small .gz cannot decompress into more memory than that."""
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
        raise DataUnavailable(f"{path} cannot be read ({_first_line(exc)}); "
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


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_folder(candidates) -> Path | None:
    stems = [s for pair in FASHION_MNIST_FILES.values() for s in pair]  # MNIST's names too
    for folder in candidates:
        if all(_find_idx(folder, s) for s in stems):
            return folder
    return None


def fashion_mnist_folder(data_dir: Path) -> Path | None:
    """First folder holding the four Fashion-MNIST files: data_dir itself, its torchvision
    layout (FashionMNIST/raw), a fashion-mnist subfolder, then the Debian package's folder."""
    return _idx_folder([data_dir, data_dir / "FashionMNIST" / "raw", data_dir / "fashion-mnist",
                        SYSTEM_FASHION_MNIST])


def mnist_folder(data_dir: Path) -> Path | None:
    """MNIST's four files in torchvision's layout (MNIST/raw) or an mnist subfolder. Not
    data_dir itself: MNIST's files have Fashion-MNIST's names, so a folder of either would
    serve both."""
    return _idx_folder([data_dir / "MNIST" / "raw", data_dir / "mnist"])


def load_fashion_mnist(folder: Path, pad: int = 2):
    """Both splits of an MNIST-format folder: uint8 [N, 1, 28 + 2 pad, ...] and int64 labels
    (pad 2: zero-padded to 32x32, the size of the paper's networks). Each file's shape is
    checked here, so that a wrong one is named before training starts rather than found as a
    shape mismatch at the first batch (or after an epoch, for the test files)."""
    splits = []
    for split in ("train", "test"):
        images_path, labels_path = (_find_idx(folder, s) for s in FASHION_MNIST_FILES[split])
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
            raise DataUnavailable(f"{images_path} holds an array of shape {list(images.shape)}, "
                                  f"not the [N, {MNIST_SIZE}, {MNIST_SIZE}] images of an "
                                  "MNIST-format image file")
        if labels.ndim != 1:
            raise DataUnavailable(f"{labels_path} holds an array of shape {list(labels.shape)}, "
                                  "not the [N] labels of an MNIST-format label file")
        if len(labels) != len(images):
            raise DataUnavailable(f"{split} files in {folder} do not match: {images_path.name} "
                                  f"holds {len(images)} images, {labels_path.name} "
                                  f"{len(labels)} labels")
        images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))[:, None]
        splits += [torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))]
    return tuple(splits)


CIFAR = {
    # name: (folder inside data_dir, train files, test files, label key, torchvision class, URL)
    # The URL is torchvision's, written out so that saying where to get the files does not
    # need torchvision; the download itself uses torchvision's URL and checksum.
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels", "CIFAR10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "CIFAR100",
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}
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
    arrays) and nothing else: plain pickle.load would call whatever a crafted file names."""

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


def _read_cifar_file(path: Path, label_key: str):
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) of one batch file, checked."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, path).load()
    except DataUnavailable:
        raise
    except Exception as exc:  # a damaged pickle can fail in any way
        raise DataUnavailable(f"{path} is not a readable CIFAR batch ({_first_line(exc)}); "
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
        raise bad(f"{label_key!r} is not a list of integers ({_first_line(exc)})") from None
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise bad(f"{label_key!r} is not a list of integers")
    if labels.dtype == np.uint64 and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise bad(f"{label_key!r} holds {labels.max()}, too large for a label")
    if len(labels) != len(images):
        raise bad(f"{len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)


def _read_cifar_files(folder: Path, files, label_key):
    images, labels = zip(*(_read_cifar_file(folder / name, label_key) for name in files))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar(name: str, data_dir: Path):
    folder_name, train_files, test_files, label_key, _, _ = CIFAR[name]
    folder = data_dir / folder_name
    return (*_read_cifar_files(folder, train_files, label_key),
            *_read_cifar_files(folder, test_files, label_key))


def cifar_present(name: str, data_dir: Path) -> bool:
    folder_name, train_files, test_files, _, _, _ = CIFAR[name]
    return all((data_dir / folder_name / f).is_file() for f in train_files + test_files)


# -- downloading (only through torchvision's own URLs and checksums) ------------------------

def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def _download(fetch, data_dir: Path, what: str, instructions: str) -> None:
    """Run fetch(tmp_folder) and move what it produced into data_dir; on any failure remove it
    all and raise DataUnavailable, so nothing half-written is left behind."""
    if _offline():
        raise DataUnavailable(f"{what}; {OFFLINE_ENV} is set, so no download was tried. {instructions}")
    tmp = Path(tempfile.mkdtemp(prefix="bntt-download-"))
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)
    try:
        try:
            fetch(tmp)
        except ImportError as exc:  # torchvision is imported only here, where it is needed
            raise DataUnavailable(f"{what}, and downloading it needs torchvision, which cannot be "
                                  f"imported ({_first_line(exc)}). {instructions}") from None
        data_dir.mkdir(parents=True, exist_ok=True)
        for item in tmp.iterdir():
            target = data_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), str(target))
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise DataUnavailable(f"{what} and the download failed ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else exc!r}). {instructions}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch_cifar(name: str):
    def fetch(tmp: Path) -> None:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive
        cls = getattr(tvd, CIFAR[name][4])
        download_and_extract_archive(cls.url, str(tmp), filename=cls.filename, md5=cls.tgz_md5,
                                     remove_finished=True)
    return fetch


def _fetch_idx(torchvision_class: str, folder_name: str):
    def fetch(tmp: Path) -> None:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_url
        cls = getattr(tvd, torchvision_class)
        for filename, md5 in cls.resources:
            download_url(cls.mirrors[0] + filename, str(tmp / folder_name), filename=filename, md5=md5)
    return fetch


_fetch_fashion_mnist = _fetch_idx("FashionMNIST", "fashion-mnist")


def sample_shape(name: str, num_steps: int | None = None) -> tuple:
    """The shape of one stored sample of dataset `name`: [C, H, W] for images and sequences,
    [T, C, H, W] for event frames (T = `num_steps`, None where it is not known)."""
    info = dataset_info(name)
    shape = (info.in_channels, info.img_size, info.img_size)
    return (num_steps, *shape) if info.kind == "frames" else shape


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def check_arrays(name: str, where, arrays, num_steps: int | None = None) -> None:
    """Both splits are what the network of the dataset is built for: uint8 samples of the
    dataset's shape (`sample_shape`), int64 labels [N] as many as the samples, and every label
    one of the dataset's classes. Any of these would otherwise fail deep in training (a shape
    at the first batch, the test set's after a whole epoch), or pass silently as a negative
    index, after the run folder was written."""
    num_cls = dataset_info(name).num_cls
    expected = sample_shape(name, num_steps)
    shown = ", ".join("T" if size is None else str(size) for size in expected)
    for split, images, labels in (("train", *arrays[:2]), ("test", *arrays[2:])):
        shape = tuple(images.shape[1:])
        if (images.dtype != torch.uint8 or len(shape) != len(expected)
                or any(e is not None and e != s for e, s in zip(expected, shape))):
            raise DataUnavailable(f"{name} {split} samples in {where} are {_dtype(images)} "
                                  f"{list(images.shape)}, not the uint8 [N, {shown}] of {name}")
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise DataUnavailable(f"{name} {split} labels in {where} are {_dtype(labels)} "
                                  f"{list(labels.shape)}, not int64 [N]")
        if len(images) != len(labels):
            raise DataUnavailable(f"{name} {split} set in {where} has {len(images)} images but "
                                  f"{len(labels)} labels")
        outside = (labels < 0) | (labels >= num_cls)
        if bool(outside.any()):
            first = int(labels[outside][0])
            raise DataUnavailable(f"{name} {split} labels in {where} include {first} "
                                  f"({int(outside.sum())} outside the allowed range 0..{num_cls - 1} "
                                  f"of its {num_cls} classes)")


def load_arrays(name: str, data_dir, download: bool = False, num_steps: int | None = None):
    """(train samples, train labels, test samples, test labels): uint8 [N, C, H, W] images (or
    [N, T, C, H, W] event frames, `num_steps` of them) and int64 labels [N]."""
    arrays, where = _read_arrays(name, Path(data_dir), download, num_steps)
    check_arrays(name, where, arrays, num_steps)
    return arrays


def _read_arrays(name: str, data_dir: Path, download: bool, num_steps: int | None):
    """The arrays of dataset `name` and the folder they came from."""
    pad = 0 if dataset_info(name).kind == "sequence" else 2  # 28x28: sequences keep it
    if name in ("fashionmnist_subset", "seqfashionmnist_subset"):
        return load_fashion_mnist(BUNDLED_FASHION_MNIST, pad), BUNDLED_FASHION_MNIST
    if name in ("fashionmnist", "seqfashionmnist"):
        folder = fashion_mnist_folder(data_dir)
        if folder is None or download:
            _download(_fetch_fashion_mnist, data_dir,
                      f"Fashion-MNIST not found in {data_dir} or {SYSTEM_FASHION_MNIST}",
                      "Install it with 'apt-get install dataset-fashion-mnist', or put "
                      "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                      f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in {data_dir}.")
            folder = fashion_mnist_folder(data_dir)
        return load_fashion_mnist(folder, pad), folder
    if name == "seqmnist":
        folder = mnist_folder(data_dir)
        if folder is None or download:
            _download(_fetch_idx("MNIST", "mnist"), data_dir, f"MNIST not found in {data_dir / 'mnist'}",
                      "Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                      f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in {data_dir / 'mnist'}, "
                      "or run with --download on a machine with internet.")
            folder = mnist_folder(data_dir)
        return load_fashion_mnist(folder, pad), folder
    if name == "tinyimagenet":
        from bntt.data.tinyimagenet import TINY_IMAGENET_FOLDER, load_tiny_imagenet
        return load_tiny_imagenet(data_dir), data_dir / TINY_IMAGENET_FOLDER
    if name == "cifar10dvs":
        from bntt.data.cifar10dvs import CIFAR10_DVS_FOLDER, load_cifar10_dvs
        size = dataset_info(name).img_size
        return (load_cifar10_dvs(data_dir, steps=num_steps, size=size, test_per_class=None),
                data_dir / CIFAR10_DVS_FOLDER)
    folder_name, url = CIFAR[name][0], CIFAR[name][5]
    if not cifar_present(name, data_dir) or download:
        _download(_fetch_cifar(name), data_dir,
                  f"{name.upper()} not found in {data_dir / folder_name}",
                  f"Extract {url} (the python version) into {data_dir}, so that "
                  f"{data_dir / folder_name} holds its files, or run with --download on a "
                  "machine with internet.")
    return load_cifar(name, data_dir), data_dir / folder_name


# -- datasets and loaders -------------------------------------------------------------------

class ImageDataset(Dataset):
    """uint8 images [N, C, H, W] and int64 labels [N], served as normalised float32 images.

    With `augment`, each sample is first a random HxW crop of the image zero-padded by
    `padding` pixels, flipped left-right with probability 1/2 (the paper's CIFAR recipe). The
    crop offsets and the flip of image i are drawn from (seed, epoch, i) alone
    (`bntt.seeding.crop_flip_draws`, with `draw_key` = (seed, epoch) set by
    `bntt.data.sampling.set_epoch`), so they do not depend on which process or loader worker
    makes the sample. Samples are made a batch at a time through `__getitems__`, which
    DataLoader calls: the padding is done once for the whole set and the float conversion once
    per batch, so one loader process makes ~13,000 augmented CIFAR images/s (docs/speed.md).
    """

    draw_key = (0, 0)

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, augment: bool,
                 padding: int = 4):
        self.images, self.labels, self.augment, self.padding = images, labels, augment, padding
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self._padded = (torch.nn.functional.pad(images, (padding,) * 4) if augment else None)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices):
        indices = [int(i) for i in indices]
        if self.augment:
            batch = crop_and_flip(self._padded, indices, self.images.shape[-2:],
                                  2 * self.padding + 1, self.draw_key)
        else:
            batch = self.images[indices]
        batch = batch.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)
        return list(zip(batch.unbind(0), self.labels[indices].unbind(0)))

    def __getitem__(self, i):
        return self.__getitems__([i])[0]


def crop_and_flip(padded, indices, size, span: int, draw_key, pad=None) -> torch.Tensor:
    """The random crops of size (H, W) of padded[i] for i in indices, each mirrored or not,
    stacked: offsets and flips from (draw_key, i) (bntt.seeding). `pad`, if given, pads each
    sample first (for sets too large to pad whole)."""
    from bntt.seeding import AUGMENT, crop_flip_draws

    height, width = size
    tops, lefts, flips = crop_flip_draws((*draw_key, AUGMENT), indices, span)
    crops = []
    for i, top, left, flip in zip(indices, tops.tolist(), lefts.tolist(), flips.tolist()):
        sample = padded[i] if pad is None else pad(padded[i])
        crop = sample[..., top:top + height, left:left + width]
        crops.append(crop.flip(-1) if flip else crop)
    return torch.stack(crops)


def make_datasets(name: str, data_dir, download: bool = False, num_steps: int | None = None):
    """(train set, test set) of dataset `name`; `num_steps` is the number of event frames."""
    info = dataset_info(name)
    train_x, train_y, test_x, test_y = load_arrays(name, data_dir, download, num_steps)
    if info.kind == "frames":
        from bntt.data.cifar10dvs import FrameDataset
        return FrameDataset(train_x, train_y, augment=True), FrameDataset(test_x, test_y, augment=False)
    augment = info.padding > 0
    return (ImageDataset(train_x, train_y, info.mean, info.std, augment=augment, padding=info.padding),
            ImageDataset(test_x, test_y, info.mean, info.std, augment=False))


def make_loaders(train_set, test_set, batch_size: int, test_batch_size: int, num_workers: int = 0,
                 drop_last_test: bool = False, pin_memory: bool = False, seed: int = 0,
                 rank: int = 0, world: int = 1):
    """(train loader, test loader) of process `rank` of `world`; the batch sizes are global
    (bntt/data/sampling.py). Training batches are shuffled by (seed, epoch) and the last
    partial one dropped (every BNTT step sees a full batch, as in the authors' code). The test
    set is scored whole unless drop_last_test reproduces the authors' truncation. Call
    `bntt.data.sampling.set_epoch` before each epoch."""
    from bntt.data.sampling import GlobalBatchSampler

    train = DataLoader(train_set, num_workers=num_workers, pin_memory=pin_memory,
                       batch_sampler=GlobalBatchSampler(len(train_set), batch_size, True, True,
                                                        rank, world, seed))
    return train, make_test_loader(test_set, test_batch_size, num_workers, drop_last_test,
                                   pin_memory, rank, world)


def make_test_loader(test_set, batch_size: int, num_workers: int = 0, drop_last: bool = False,
                     pin_memory: bool = False, rank: int = 0, world: int = 1):
    from bntt.data.sampling import GlobalBatchSampler

    return DataLoader(test_set, num_workers=num_workers, pin_memory=pin_memory,
                      batch_sampler=GlobalBatchSampler(len(test_set), batch_size, False, drop_last,
                                                       rank, world))
