"""Rebuild the bundled Fashion-MNIST subset (bntt/assets/fashion-mnist-subset) from the full set.

    python scripts/maintenance/make_fashion_subset.py [--source /usr/share/datasets/fashion-mnist]

Takes a class-balanced random sample (seed 0) of 200 training and 50 test images per class,
in their original order, and writes them in the original IDX format (gzip), so the same
reader serves the subset and the full dataset.
"""
import argparse
from pathlib import Path

import numpy as np

from bntt.data import (BUNDLED_FASHION_MNIST, FASHION_MNIST_FILES, SYSTEM_FASHION_MNIST, find_idx,
                       read_idx, write_idx)


def balanced_sample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SYSTEM_FASHION_MNIST)
    parser.add_argument("--out", type=Path, default=BUNDLED_FASHION_MNIST)
    parser.add_argument("--train_per_class", type=int, default=200)
    parser.add_argument("--test_per_class", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        images_stem, labels_stem = FASHION_MNIST_FILES[split]
        images = read_idx(find_idx(args.source, images_stem))
        labels = read_idx(find_idx(args.source, labels_stem))
        keep = balanced_sample(labels, per_class, rng)
        write_idx(args.out / f"{images_stem}.gz", images[keep])
        write_idx(args.out / f"{labels_stem}.gz", labels[keep])
        print(f"{split}: {len(keep)} images")


if __name__ == "__main__":
    main()
