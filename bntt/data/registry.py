"""The datasets by name: one line per dataset, each entry made in its own module.

Adding a dataset is one module that makes its entry (an ImageInfo, FrameInfo or SequenceInfo,
bntt/data/info.py, with the function that reads its arrays) and one line below; the networks,
train.py and the evaluation tools then take it by name (docs/data.md). An unknown name is one
ValueError listing the choices, in this order (also the order of `--dataset`'s help).
"""
from __future__ import annotations

from bntt.data import cifar, cifar10dvs, mnist, tinyimagenet
from bntt.data.info import DatasetInfo
from bntt.names import check_name

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (
    cifar.CIFAR10,
    cifar.CIFAR100,
    mnist.FASHION_MNIST,
    mnist.FASHION_MNIST_SUBSET,
    tinyimagenet.TINY_IMAGENET,
    cifar10dvs.CIFAR10_DVS,
    mnist.SEQ_MNIST,
    mnist.SEQ_FASHION_MNIST,
    mnist.SEQ_FASHION_MNIST_SUBSET,
)}


def dataset_info(name: str) -> DatasetInfo:
    """The entry of dataset `name`; ValueError("unknown dataset 'x'; choose from ...") if none.

        >>> dataset_info("cifar10").num_cls
        10
    """
    return DATASETS[check_name("dataset", name, DATASETS)]


def sample_shape(name: str, num_steps: int | None = None) -> tuple:
    """The shape of one stored sample of dataset `name`: [C, H, W] for images and sequences,
    [T, C, H, W] for event frames (T = `num_steps`, None where it is not known)."""
    return dataset_info(name).sample_shape(num_steps)


def check_arrays(name: str, where, arrays, num_steps: int | None = None) -> None:
    """DataUnavailable, in one line naming `where`, unless both splits of `arrays` are what the
    network of dataset `name` is built for (DatasetInfo.check_arrays)."""
    dataset_info(name).check_arrays(where, arrays, num_steps)


def load_arrays(name: str, data_dir, download: bool = False, num_steps: int | None = None):
    """(train samples, train labels, test samples, test labels): uint8 [N, C, H, W] images (or
    [N, T, C, H, W] event frames, `num_steps` of them) and int64 labels [N], checked."""
    return dataset_info(name).load_arrays(data_dir, download, num_steps)


def make_datasets(name: str, data_dir, download: bool = False, num_steps: int | None = None):
    """(train set, test set) of dataset `name`; `num_steps` is the number of event frames."""
    return dataset_info(name).make_datasets(data_dir, download, num_steps)
