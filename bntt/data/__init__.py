"""Datasets: CIFAR-10/100 (the paper's), Fashion-MNIST and its bundled real subset,
Tiny-ImageNet, CIFAR10-DVS event frames, and Sequential (Fashion-)MNIST.

Each dataset is one registry entry (bntt/data/registry.py) made in one module of its own
(cifar.py, mnist.py, tinyimagenet.py, cifar10dvs.py). The entry says what the network needs
(classes, input channels and size, the encoder of its kind of sample, the steps of a sequence)
and how its files are read into uint8 tensors [N, C, H, W] (or [N, T, C, H, W] event frames)
and int64 labels. The on-disk formats have readers of their own (readers/), slow-to-decode sets
share one fingerprinted cache (cache.py), and the samples are served by Datasets with the
paper's crop-and-flip augmentation (samples.py): for training, a random crop of the image
zero-padded by 4 pixels and a horizontal flip, then per-channel normalisation; for testing,
normalisation only. Fashion-MNIST is zero-padded from 28x28 to 32x32 with one channel, then
follows the same recipe.

A dataset that is missing, damaged or inconsistent (a label outside the classes, images of
another size than the dataset's, in either split) raises `DataUnavailable` with one line saying
which file is at fault, or where the files must be and how to get them, when the dataset is
built; nothing is written in that case. Adding a dataset: docs/data.md.

    >>> train_set, test_set = make_datasets("fashionmnist_subset", "data")
    >>> train, test = make_loaders(train_set, test_set, batch_size=64, test_batch_size=256)
"""
from bntt.data.cifar import CIFAR_MEAN, CIFAR_STD
from bntt.data.download import OFFLINE_ENV
from bntt.data.errors import DataUnavailable
from bntt.data.info import DatasetInfo, FrameInfo, ImageInfo, SequenceInfo
from bntt.data.loaders import make_loaders, make_test_loader
from bntt.data.mnist import BUNDLED_FASHION_MNIST, FASHION_MNIST_FILES, SYSTEM_FASHION_MNIST
from bntt.data.readers.idx import find_idx, read_idx, write_idx
from bntt.data.registry import (DATASETS, check_arrays, dataset_info, load_arrays, make_datasets,
                                sample_shape)
from bntt.data.samples import CropFlipDataset, FrameDataset, ImageDataset, crop_and_flip

__all__ = ["BUNDLED_FASHION_MNIST", "CIFAR_MEAN", "CIFAR_STD", "CropFlipDataset", "DATASETS",
           "DataUnavailable", "DatasetInfo", "FASHION_MNIST_FILES", "FrameDataset", "FrameInfo",
           "ImageDataset", "ImageInfo", "OFFLINE_ENV", "SYSTEM_FASHION_MNIST", "SequenceInfo",
           "check_arrays", "crop_and_flip", "dataset_info", "find_idx", "load_arrays",
           "make_datasets", "make_loaders", "make_test_loader", "read_idx", "sample_shape",
           "write_idx"]
