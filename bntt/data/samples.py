"""The torch Datasets that serve a dataset's uint8 arrays as network inputs, with the paper's
crop-and-flip augmentation.

`CropFlipDataset` holds samples [N, ..., H, W] and labels [N]. With `augment`, sample i is a
random HxW crop of itself zero-padded by `padding` pixels on each side, mirrored left-right
with probability 1/2: the paper's CIFAR recipe for images, and a shift and flip of the whole
recording (every step alike) for event frames. The crop offsets and the flip of sample i are
drawn from (seed, epoch, i) alone (`bntt.seeding.crop_flip_draws`, with `draw_key` = (seed,
epoch) set by `bntt.data.sampling.set_epoch`), so they do not depend on which process or loader
worker makes the sample. Samples are made a batch at a time through `__getitems__`, which
DataLoader calls; each subclass says how a batch of uint8 samples becomes floats (`convert`).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from bntt.seeding import AUGMENT, crop_flip_draws


def crop_and_flip(padded, indices, size, span: int, draw_key, pad=None) -> torch.Tensor:
    """The random crops of size (H, W) of padded[i] for i in indices, each mirrored or not,
    stacked: offsets in 0..span-1 and flips from (draw_key, i) (bntt.seeding). `pad`, if
    given, pads each sample first (for sets too large to pad whole)."""
    height, width = size
    tops, lefts, flips = crop_flip_draws((*draw_key, AUGMENT), indices, span)
    crops = []
    for i, top, left, flip in zip(indices, tops.tolist(), lefts.tolist(), flips.tolist()):
        sample = padded[i] if pad is None else pad(padded[i])
        crop = sample[..., top:top + height, left:left + width]
        crops.append(crop.flip(-1) if flip else crop)
    return torch.stack(crops)


class CropFlipDataset(Dataset):
    """uint8 samples [N, ..., H, W] and int64 labels [N], served as (convert(sample), label);
    with `augment`, randomly cropped from the sample zero-padded by `padding` and flipped (the
    module docstring). Subclasses define `convert`.

        >>> class Scaled(CropFlipDataset):
        ...     def convert(self, batch):
        ...         return batch.float() / 255
        >>> data = Scaled(torch.zeros(10, 1, 8, 8, dtype=torch.uint8), torch.zeros(10).long(),
        ...               augment=True, padding=2)
        >>> x, y = data[3]  # x: float32 [1, 8, 8], a crop of image 3 padded to 12x12
    """

    draw_key = (0, 0)
    # Padding the whole set once is fastest; a set for which a padded copy is too large
    # (event frames) pads each sample of a batch instead. The numbers are the same.
    pad_whole_set = True

    def __init__(self, samples: torch.Tensor, labels: torch.Tensor, augment: bool, padding: int):
        self.samples, self.labels, self.augment, self.padding = samples, labels, augment, padding
        self._padded = (F.pad(samples, (padding,) * 4)
                        if augment and self.pad_whole_set else None)

    def convert(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices):
        indices = [int(i) for i in indices]
        if not self.augment:
            batch = self.samples[indices]
        elif self._padded is not None:
            batch = crop_and_flip(self._padded, indices, self.samples.shape[-2:],
                                  2 * self.padding + 1, self.draw_key)
        else:
            p = self.padding
            batch = crop_and_flip(self.samples, indices, self.samples.shape[-2:], 2 * p + 1,
                                  self.draw_key, pad=lambda x: F.pad(x, (p,) * 4))
        return list(zip(self.convert(batch).unbind(0), self.labels[indices].unbind(0)))

    def __getitem__(self, i):
        return self.__getitems__([i])[0]


class ImageDataset(CropFlipDataset):
    """uint8 images [N, C, H, W] and int64 labels [N], served as float32 images normalised per
    channel, (pixels / 255 - mean) / std; with `augment`, the paper's random crop of the image
    zero-padded by `padding` pixels and horizontal flip. One loader process makes ~13,000
    augmented CIFAR images/s (docs/speed.md): the padding is done once for the whole set and
    the float conversion once per batch.

        >>> train = ImageDataset(images, labels, CIFAR_MEAN, CIFAR_STD, augment=True)
        >>> train.draw_key = (seed, epoch)  # bntt.data.sampling.set_epoch does this
        >>> x, y = train[0]  # float32 [3, 32, 32], int64
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, augment: bool,
                 padding: int = 4):
        super().__init__(images, labels, augment, padding)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    @property
    def images(self) -> torch.Tensor:
        return self.samples

    def convert(self, batch):
        return batch.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)


class FrameDataset(CropFlipDataset):
    """Frames uint8 [N, T, 2, S, S] and labels [N], served as (float32 [T, 2, S, S], label).

    The input spikes are binary (a pixel spikes in a step if it had any event), or with
    counts=True the event counts clipped at max_count. With augment=True each sample is mirrored
    left-right with probability 1/2 and translated by up to `shift` pixels in x and y with zero
    fill; the shift and the flip are the same for every step of the sample, so the recording
    moves as a whole.

        >>> train = FrameDataset(frames, labels, augment=True)
        >>> x, y = train[0]  # float32 [T, 2, 48, 48] of 0s and 1s
    """

    pad_whole_set = False

    def __init__(self, frames, labels, augment: bool = False, shift: int = 4,
                 counts: bool = False, max_count: int = 4):
        frames = torch.as_tensor(frames)
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[2] != 2:
            raise ValueError(f"frames must be uint8 [N, T, 2, S, S], not {frames.dtype} "
                             f"{tuple(frames.shape)}")
        if labels.shape != frames.shape[:1]:
            raise ValueError(f"{len(frames)} samples but labels of shape {tuple(labels.shape)}")
        if shift < 0 or max_count < 1:
            raise ValueError(f"need shift >= 0 and max_count >= 1, not {shift}, {max_count}")
        super().__init__(frames, labels, augment, shift)
        self.counts, self.max_count = counts, max_count

    @property
    def frames(self) -> torch.Tensor:
        return self.samples

    @property
    def shift(self) -> int:
        return self.padding

    def convert(self, batch):
        if self.counts:
            return batch.clamp(max=self.max_count).to(torch.float32)
        return batch.gt(0).to(torch.float32)
