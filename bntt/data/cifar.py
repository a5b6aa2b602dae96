"""CIFAR-10 and CIFAR-100, the paper's datasets, from their "python version" archives.

    <data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch}     labels: "labels"
    <data_dir>/cifar-100-python/{train,test}                        labels: "fine_labels"

Missing files are downloaded through torchvision's URL and checksum unless offline
(bntt/data/download.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bntt.data.download import download
from bntt.data.info import ImageInfo
from bntt.data.readers.cifar_pickle import read_cifar_batch

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)

CIFAR = {
    # name: (folder inside data_dir, train files, test files, label key, torchvision class, URL)
    # The URL is torchvision's, written out so that saying where to get the files does not
    # need torchvision; the download itself uses torchvision's URL and checksum.
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels", "CIFAR10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "CIFAR100",
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


def _read_files(folder: Path, files, label_key):
    images, labels = zip(*(read_cifar_batch(folder / name, label_key) for name in files))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar(name: str, data_dir: Path):
    """(train images uint8 [N, 3, 32, 32], train labels int64 [N], test images, test labels)."""
    folder_name, train_files, test_files, label_key, _, _ = CIFAR[name]
    folder = data_dir / folder_name
    return (*_read_files(folder, train_files, label_key),
            *_read_files(folder, test_files, label_key))


def cifar_present(name: str, data_dir: Path) -> bool:
    folder_name, train_files, test_files, _, _, _ = CIFAR[name]
    return all((data_dir / folder_name / f).is_file() for f in train_files + test_files)


def _fetch(name: str):
    def fetch(tmp: Path) -> None:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive
        cls = getattr(tvd, CIFAR[name][4])
        download_and_extract_archive(cls.url, str(tmp), filename=cls.filename, md5=cls.tgz_md5,
                                     remove_finished=True)
    return fetch


def read(info, data_dir: Path, download_missing: bool, num_steps):
    folder_name, url = CIFAR[info.name][0], CIFAR[info.name][5]
    if not cifar_present(info.name, data_dir) or download_missing:
        download(_fetch(info.name), data_dir,
                 f"{info.name.upper()} not found in {data_dir / folder_name}",
                 f"Extract {url} (the python version) into {data_dir}, so that "
                 f"{data_dir / folder_name} holds its files, or run with --download on a "
                 "machine with internet.")
    return load_cifar(info.name, data_dir), data_dir / folder_name


CIFAR10 = ImageInfo("cifar10", 10, 3, 32, CIFAR_MEAN, CIFAR_STD, read=read)
CIFAR100 = ImageInfo("cifar100", 100, 3, 32, CIFAR_MEAN, CIFAR_STD, read=read)
