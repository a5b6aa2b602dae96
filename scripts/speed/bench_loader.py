"""Images/s that one data-loading process makes with the paper's augmentation: bntt's batched
ImageDataset (draws named by seed, epoch and image) against torchvision's per-sample v2
pipeline of the same distribution.

    python scripts/speed/bench_loader.py              # CIFAR-shaped uint8 images, batch 256
    python scripts/speed/bench_loader.py --channels 1 # Fashion-MNIST-shaped
"""
import argparse
import time

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from bntt.data import CIFAR_MEAN, CIFAR_STD, ImageDataset


class PerSample(Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def images_per_second(dataset, batch: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=0)
    it = iter(loader)
    next(it)  # warm-up
    started = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args(argv)
    n = args.batch * (args.batches + 1)
    images = torch.randint(0, 256, (n, args.channels, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    mean, std = CIFAR_MEAN[:args.channels], CIFAR_STD[:args.channels]
    torchvision_train = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                                    v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    rows = [("bntt ImageDataset", "train", ImageDataset(images, labels, mean, std, augment=True)),
            ("torchvision v2, per sample", "train", PerSample(images, labels, torchvision_train)),
            ("bntt ImageDataset", "test", ImageDataset(images, labels, mean, std, augment=False))]
    print(f"{args.channels}x32x32 uint8, batch {args.batch}, one process (num_workers 0)")
    for name, split, dataset in rows:
        print(f"  {name:<28} {split:<6} {images_per_second(dataset, args.batch, args.batches):>9,.0f} img/s")


if __name__ == "__main__":
    main()
