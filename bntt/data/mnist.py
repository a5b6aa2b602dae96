"""MNIST-format datasets: Fashion-MNIST (zero-padded to 32x32 images, the paper's networks'
size), its bundled class-balanced subset, and Sequential MNIST / Fashion-MNIST (28x28 images
read as sequences). All are the four IDX files of an MNIST-format folder.

Fashion-MNIST is looked for in data_dir itself, its torchvision layout (FashionMNIST/raw), a
fashion-mnist subfolder, then the folder of the Debian package dataset-fashion-mnist; MNIST in
torchvision's layout (MNIST/raw) or an mnist subfolder. Missing files are downloaded through
torchvision's URLs and checksums unless offline (bntt/data/download.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bntt.data.download import download
from bntt.data.errors import DataUnavailable
from bntt.data.info import ImageInfo, SequenceInfo
from bntt.data.readers.idx import find_idx, read_idx

BUNDLED_FASHION_MNIST = Path(__file__).resolve().parents[1] / "assets" / "fashion-mnist-subset"
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_SIZE = 28  # the height and width of every MNIST-format image, Fashion-MNIST's too
# Pixel statistics of the Fashion-MNIST training set after zero-padding to 32x32.
FASHION_MEAN, FASHION_STD = (0.2190,), (0.3318,)


def _idx_folder(candidates) -> Path | None:
    stems = [s for pair in FASHION_MNIST_FILES.values() for s in pair]  # MNIST's names too
    for folder in candidates:
        if all(find_idx(folder, s) for s in stems):
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


def load_mnist_format(folder: Path, pad: int = 2):
    """Both splits of an MNIST-format folder: uint8 [N, 1, 28 + 2 pad, ...] and int64 labels
    (pad 2: zero-padded to 32x32, the size of the paper's networks). Each file's shape is
    checked here, so that a wrong one is named before training starts rather than found as a
    shape mismatch at the first batch (or after an epoch, for the test files)."""
    splits = []
    for split in ("train", "test"):
        images_path, labels_path = (find_idx(folder, s) for s in FASHION_MNIST_FILES[split])
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


def _fetch(torchvision_class: str, folder_name: str):
    def fetch(tmp: Path) -> None:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_url
        cls = getattr(tvd, torchvision_class)
        for filename, md5 in cls.resources:
            download_url(cls.mirrors[0] + filename, str(tmp / folder_name), filename=filename, md5=md5)
    return fetch


def _pad(info) -> int:
    """The zero border that makes a 28x28 image the entry's size: 2 for the 32x32 images of
    the paper's networks, 0 for sequences."""
    return (info.img_size - MNIST_SIZE) // 2


def read_fashion_mnist(info, data_dir: Path, download_missing: bool, num_steps):
    folder = fashion_mnist_folder(data_dir)
    if folder is None or download_missing:
        download(_fetch("FashionMNIST", "fashion-mnist"), data_dir,
                 f"Fashion-MNIST not found in {data_dir} or {SYSTEM_FASHION_MNIST}",
                 "Install it with 'apt-get install dataset-fashion-mnist', or put "
                 "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                 f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in {data_dir}.")
        folder = fashion_mnist_folder(data_dir)
    return load_mnist_format(folder, _pad(info)), folder


def read_bundled(info, data_dir: Path, download_missing: bool, num_steps):
    """The bundled subset, whatever data_dir says: it serves the tests and quick runs."""
    return load_mnist_format(BUNDLED_FASHION_MNIST, _pad(info)), BUNDLED_FASHION_MNIST


def read_mnist(info, data_dir: Path, download_missing: bool, num_steps):
    folder = mnist_folder(data_dir)
    if folder is None or download_missing:
        download(_fetch("MNIST", "mnist"), data_dir, f"MNIST not found in {data_dir / 'mnist'}",
                 "Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                 f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in {data_dir / 'mnist'}, "
                 "or run with --download on a machine with internet.")
        folder = mnist_folder(data_dir)
    return load_mnist_format(folder, _pad(info)), folder


FASHION_MNIST = ImageInfo("fashionmnist", 10, 1, 32, FASHION_MEAN, FASHION_STD,
                          read=read_fashion_mnist)
FASHION_MNIST_SUBSET = ImageInfo("fashionmnist_subset", 10, 1, 32, FASHION_MEAN, FASHION_STD,
                                 read=read_bundled)
# 28x28 images as sequences of intensities in [0, 1]; the bundled subset serves the tests.
SEQ_MNIST = SequenceInfo("seqmnist", 10, 1, 28, read=read_mnist)
SEQ_FASHION_MNIST = SequenceInfo("seqfashionmnist", 10, 1, 28, read=read_fashion_mnist)
SEQ_FASHION_MNIST_SUBSET = SequenceInfo("seqfashionmnist_subset", 10, 1, 28, read=read_bundled)
