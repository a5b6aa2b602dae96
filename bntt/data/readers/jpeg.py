"""Folders of JPEG images, decoded by PIL into uint8 RGB arrays.

Only regular files (or links to them) are read as images: anything else named *.JPEG (a FIFO,
a device, a folder) is skipped, since opening a FIFO waits for a writer forever.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bntt.data.errors import DataUnavailable, first_line

JPEG_SUFFIXES = (".jpeg", ".jpg")


def jpeg_names(folder: Path) -> list[str]:
    """The sorted names of the JPEG files in `folder` (regular files only, any letter case)."""
    # is_file follows links; anything but a regular file is skipped (the module docstring)
    return sorted(entry.name for entry in os.scandir(folder)
                  if entry.name.lower().endswith(JPEG_SUFFIXES) and entry.is_file())


def decode_jpegs(paths: list[Path], size: int, name: str, split: str) -> np.ndarray:
    """uint8 [N, 3, size, size]: the images at `paths`, each converted to RGB (grayscale and
    CMYK included). An image of another size, or one that does not decode, is a
    DataUnavailable naming it; `name` and `split` say what is decoded in messages and in the
    progress bar.

        >>> decode_jpegs([Path("val/images/val_0.JPEG")], 64, "Tiny-ImageNet", "val").shape
        (1, 3, 64, 64)
    """
    images = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(tqdm(paths, desc=f"decoding {name} {split}", leave=False, unit="img")):
        try:
            with Image.open(path) as img:
                if img.size != (size, size):
                    raise DataUnavailable(f"{path} is {img.size[0]}x{img.size[1]}, not the "
                                          f"{size}x{size} of every {name} image")
                img.load()  # a truncated or damaged JPEG fails here, not at open
                pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataUnavailable(f"{path} is not a readable JPEG ({first_line(exc)}); "
                                  "replace it with an intact copy") from None
        images[i] = pixels.transpose(2, 0, 1)
    return images
