"""A registry entry: what a network needs to know of a dataset, and how the dataset is read.

An entry is an instance of the class of its kind of sample:

- `ImageInfo`: images [C, H, W], normalised per channel, augmented with the paper's crop and
  flip, and coded by the network as Poisson spikes (Eq. 1);
- `FrameInfo`: event frames [T, C, H, W] that are spikes already, shifted and flipped as whole
  recordings;
- `SequenceInfo`: images [1, H, W] read one row (or one pixel) per step, not augmented.

The class answers everything that depends on the kind (a sample's shape, the encoder, the
number of steps a sequence takes, the torch Datasets that serve it), so no caller branches on
`kind`, which is kept for messages. The entry's `read` function is where its arrays come from:
`read(info, data_dir, download, num_steps)` returns ((train samples, train labels, test
samples, test labels), the folder they came from), uint8 samples and int64 labels;
`load_arrays` checks them against the entry before anything else sees them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from bntt.coding import FrameEncoder, PoissonEncoder, SequenceEncoder
from bntt.data.errors import DataUnavailable
from bntt.data.samples import FrameDataset, ImageDataset


@dataclass(frozen=True)
class DatasetInfo:
    """The fields every kind of dataset has: its `name` (the `--dataset` value), `num_cls`
    classes, samples of `in_channels` x `img_size` x `img_size`, the per-channel `mean` and
    `std` images are normalised with, and the `padding` of the crop-and-flip augmentation of
    training samples (0: none). Instantiate one of the kinds below, not this class."""
    name: str
    num_cls: int
    in_channels: int
    img_size: int
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    padding: int = 4
    read: Callable = field(kw_only=True, repr=False, compare=False)

    kind: ClassVar[str]
    # Its samples are images the network codes as Poisson spikes (Eq. 1): what the ANN twins
    # and the robustness measurements take.
    poisson_images: ClassVar[bool] = False

    def sample_shape(self, num_steps: int | None = None) -> tuple:
        """The shape of one stored sample ([C, H, W] unless the kind says otherwise)."""
        return (self.in_channels, self.img_size, self.img_size)

    def make_encoder(self, seq_order: str = "rows", seq_coding: str = "direct"):
        """The encoder (bntt/coding.py) that turns a batch of samples into input spikes."""
        raise NotImplementedError

    def sequence_steps(self, seq_order: str = "rows") -> int | None:
        """The number of steps T a sample read in `seq_order` takes; None where a sample is
        not a sequence (any T then works)."""
        return None

    def input_features(self, seq_order: str = "rows") -> int | None:
        """The inputs per step of a sequence read in `seq_order` (the width of the FC
        network's first layer); None where a sample is not a sequence."""
        return None

    def make_sets(self, train_x, train_y, test_x, test_y):
        """(train set, test set): torch Datasets serving the checked arrays."""
        raise NotImplementedError

    def check_arrays(self, where, arrays, num_steps: int | None = None) -> None:
        """Both splits are what the network of the dataset is built for: uint8 samples of the
        dataset's shape (`sample_shape`), int64 labels [N] as many as the samples, and every
        label one of the dataset's classes. Any of these would otherwise fail deep in training
        (a shape at the first batch, the test set's after a whole epoch), or pass silently as a
        negative index, after the run folder was written. `where` names the source."""
        name, num_cls = self.name, self.num_cls
        expected = self.sample_shape(num_steps)
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
                raise DataUnavailable(f"{name} {split} set in {where} has {len(images)} images "
                                      f"but {len(labels)} labels")
            outside = (labels < 0) | (labels >= num_cls)
            if bool(outside.any()):
                first = int(labels[outside][0])
                raise DataUnavailable(f"{name} {split} labels in {where} include {first} "
                                      f"({int(outside.sum())} outside the allowed range "
                                      f"0..{num_cls - 1} of its {num_cls} classes)")

    def load_arrays(self, data_dir, download: bool = False, num_steps: int | None = None):
        """(train samples, train labels, test samples, test labels), read and checked."""
        arrays, where = self.read(self, Path(data_dir), download, num_steps)
        self.check_arrays(where, arrays, num_steps)
        return arrays

    def make_datasets(self, data_dir, download: bool = False, num_steps: int | None = None):
        """(train set, test set); `num_steps` is the number of event frames, where it matters."""
        return self.make_sets(*self.load_arrays(data_dir, download, num_steps))


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ImageInfo(DatasetInfo):
    """Images [C, H, W]: normalised, crop-and-flip augmented in training, Poisson-coded.

        >>> CIFAR10 = ImageInfo("cifar10", 10, 3, 32, CIFAR_MEAN, CIFAR_STD, read=read_cifar)
        >>> CIFAR10.make_encoder()
        <bntt.coding.PoissonEncoder object ...>
    """
    kind: ClassVar[str] = "image"
    poisson_images: ClassVar[bool] = True

    def make_encoder(self, seq_order: str = "rows", seq_coding: str = "direct"):
        return PoissonEncoder()

    def make_sets(self, train_x, train_y, test_x, test_y):
        return (ImageDataset(train_x, train_y, self.mean, self.std, augment=self.padding > 0,
                             padding=self.padding),
                ImageDataset(test_x, test_y, self.mean, self.std, augment=False))


@dataclass(frozen=True)
class SequenceInfo(ImageInfo):
    """Images [1, H, W] with intensities in [0, 1] (mean 0, std 1: not normalised), not
    augmented, read as a sequence: H steps of W inputs (rows) or H*W steps of 1 (pixels).

        >>> SEQ = SequenceInfo("seqmnist", 10, 1, 28, read=read_mnist)
        >>> SEQ.sequence_steps("rows"), SEQ.input_features("rows")
        (28, 28)
    """
    padding: int = 0
    kind: ClassVar[str] = "sequence"
    poisson_images: ClassVar[bool] = False

    def make_encoder(self, seq_order: str = "rows", seq_coding: str = "direct"):
        return SequenceEncoder(seq_order, seq_coding)

    def sequence_steps(self, seq_order: str = "rows") -> int:
        return SequenceEncoder(seq_order).steps(self.img_size, self.img_size)

    def input_features(self, seq_order: str = "rows") -> int:
        return SequenceEncoder(seq_order).features(self.img_size)


@dataclass(frozen=True)
class FrameInfo(DatasetInfo):
    """Event frames [T, C, H, W], spikes already (FrameEncoder); training samples are shifted
    by up to `padding` pixels and flipped, every step alike. T is the run's num_steps.

        >>> DVS = FrameInfo("cifar10dvs", 10, 2, 48, read=read_cifar10_dvs)
        >>> DVS.sample_shape(num_steps=20)
        (20, 2, 48, 48)
    """
    kind: ClassVar[str] = "frames"

    def sample_shape(self, num_steps: int | None = None) -> tuple:
        return (num_steps, self.in_channels, self.img_size, self.img_size)

    def make_encoder(self, seq_order: str = "rows", seq_coding: str = "direct"):
        return FrameEncoder()

    def make_sets(self, train_x, train_y, test_x, test_y):
        return (FrameDataset(train_x, train_y, augment=self.padding > 0, shift=self.padding),
                FrameDataset(test_x, test_y, augment=False))
