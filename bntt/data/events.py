"""DVS events binned into frames: the input spikes of an event-camera dataset.

A recording's events (x, y, polarity, time) are cut into `steps` slices with equal event counts
(mode="count": slices differ by at most one event) or equal durations (mode="time"), and each
polarity is counted per pixel in its channel (0 = OFF, 1 = ON), clipped at 255: uint8
[steps, 2, 128, 128], rows y, columns x. `downsample` then reduces the frames to size x size by
area resampling of the counts: every sensor pixel hands its count to the output pixels it
overlaps, in proportion to the overlap, so the total count is kept; where 128 is a multiple of
`size` (64, 32, ...) this is exactly the sum of the 2x2, 4x4, ... blocks, and otherwise it is
area interpolation (the weights of OpenCV's INTER_AREA, times the area ratio so counts stay
counts), rounded to the nearest integer and clipped to uint8.
"""
from __future__ import annotations

import numpy as np

from bntt.data.readers.aedat import SENSOR

MODES = ("count", "time")


def events_to_frames(x, y, p, t, steps: int, mode: str = "count") -> np.ndarray:
    """uint8 [steps, 2, 128, 128]: the events of slice k counted per polarity channel (0 OFF,
    1 ON) and pixel (row y, column x), clipped at 255. mode="count" gives each slice an equal
    share of the events in file order (shares differ by at most one); mode="time" gives each an
    equal share of the time from the first timestamp to the last."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    x, y, p, t = (np.asarray(a, dtype=np.int64) for a in (x, y, p, t))
    n = len(t)
    if not len(x) == len(y) == len(p) == n:
        raise ValueError(f"x, y, p, t differ in length: {len(x)}, {len(y)}, {len(p)}, {n}")
    for name, values, high in (("x", x, SENSOR - 1), ("y", y, SENSOR - 1), ("p", p, 1)):
        if n and (values.min() < 0 or values.max() > high):
            raise ValueError(f"{name} must lie in 0..{high}")
    if mode == "count":
        slot = np.arange(n, dtype=np.int64) * steps // max(n, 1)
    else:
        start = t.min() if n else 0
        span = (t.max() - start + 1) if n else 1  # +1: the last event falls in the last slice
        slot = (t - start) * steps // span
    flat = ((slot * 2 + p) * SENSOR + y) * SENSOR + x
    counts = np.bincount(flat, minlength=steps * 2 * SENSOR * SENSOR)
    return np.minimum(counts, 255).astype(np.uint8).reshape(steps, 2, SENSOR, SENSOR)


def _area_weights(size: int) -> np.ndarray:
    """[size, 128]: how much of sensor pixel k lies in output pixel i (each column sums to 1)."""
    edges = np.arange(size + 1) * (SENSOR / size)
    k = np.arange(SENSOR)
    overlap = (np.minimum(edges[1:, None], k + 1) - np.maximum(edges[:-1, None], k))
    return np.clip(overlap, 0.0, None)


def downsample(frames, size: int) -> np.ndarray:
    """uint8 [..., size, size] from counts [..., 128, 128] by area resampling (see the module
    docstring): block sums when 128 is a multiple of size, overlap-weighted sums otherwise,
    rounded half up and clipped at 255."""
    frames = np.asarray(frames)
    if frames.shape[-2:] != (SENSOR, SENSOR):
        raise ValueError(f"frames must end in {SENSOR}x{SENSOR}, not {frames.shape}")
    if not 1 <= size <= SENSOR:
        raise ValueError(f"size must be in 1..{SENSOR}, not {size}")
    if size == SENSOR:
        return np.minimum(frames, 255).astype(np.uint8)
    if SENSOR % size == 0:  # the same sums, exactly, in integers
        block = SENSOR // size
        sums = frames.astype(np.int64).reshape(*frames.shape[:-2], size, block, size, block)
        return np.minimum(sums.sum(axis=(-3, -1)), 255).astype(np.uint8)
    w = _area_weights(size)
    out = w @ frames.astype(np.float64) @ w.T
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
