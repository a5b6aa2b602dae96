"""Random draws named by what they are for, so that no process count or worker count changes them.

Training draws three kinds of random numbers (docs/spec.md, section 6):
- the order of the training images in epoch e: a permutation seeded by (seed, e);
- the augmentation of image i in epoch e (crop offsets, flip): uniforms hashed from
  (seed, e, i), whichever process or data-loader worker makes the sample;
- the Poisson input spikes of epoch e: a generator seeded by (seed, e) that draws the uniforms
  of the whole global batch, of which each process keeps its own images' share
  (`bntt.coding.poisson_spikes`, `shard`).

So the same seed trains on the same batches with the same spikes on 1 process or 8, with any
--num_workers, and an epoch can be replayed from its number alone.

Scoring a network (the test pass of training, evaluate.py, the analyses) draws its Poisson
spikes from `eval_generator(eval_seed)`: a generator seeded with the number itself, so that a
score can be redone from the eval_seed a run records.

The hash is SplitMix64 (Steele, Lea and Flood, OOPSLA 2014), a bijective 64-bit mixer, chained
over the keys; vectorised over NumPy uint64 arrays, whose arithmetic wraps modulo 2^64.
"""
from __future__ import annotations

import numpy as np
import torch

# Stream names: a key of their own, so two kinds of draws of one epoch never coincide.
SHUFFLE, AUGMENT, POISSON = 1, 2, 3

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_keys(*keys) -> np.ndarray:
    """64-bit hash of a sequence of non-negative integer keys; a key may be an array, and the
    result broadcasts over it."""
    h = np.zeros((), dtype=np.uint64)
    for key in keys:
        h = _splitmix64(h ^ np.asarray(key, dtype=np.uint64))
    return h


def stream_seed(*keys) -> int:
    """A seed for torch.Generator.manual_seed from the keys (63 bits: always a valid seed)."""
    return int(hash_keys(*keys) >> np.uint64(1))


def generator(*keys, device="cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded from the keys."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(*keys))
    return gen


def eval_generator(seed: int, device="cpu") -> torch.Generator:
    """A generator on `device` seeded with `seed` as it is (not hashed): that of the Poisson
    draws of a scoring pass, and of the analyses' other draws from a seed given by the user.

        spikes = model.encode(images, eval_generator(0, images.device))
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def uniforms(keys: tuple, indices, count: int) -> np.ndarray:
    """float64 [len(indices), count] in [0, 1): draw k of sample i depends on (keys, i, k) only."""
    h = hash_keys(*keys, np.asarray(indices, dtype=np.uint64)[:, None],
                  np.arange(count, dtype=np.uint64)[None, :])
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # the top 53 bits, exactly


def crop_flip_draws(keys: tuple, indices, span: int):
    """Per sample: (top, left) offsets in 0..span-1 of a random crop and whether it is
    mirrored (probability 1/2), as int64 arrays [len(indices)] and a bool array."""
    u = uniforms(keys, indices, 3)
    offsets = np.minimum((u[:, :2] * span).astype(np.int64), span - 1)
    return offsets[:, 0], offsets[:, 1], u[:, 2] < 0.5
