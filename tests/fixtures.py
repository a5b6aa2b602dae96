"""Small datasets written in the exact on-disk formats the real ones use."""
import gzip
import io
import pickle
import struct

import numpy as np


class _Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 `str` (the BINSTRING opcodes), as the CIFAR files were written
    by Python 2's cPickle; Python 3 reads them with encoding='latin1'."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_images(n, offset):
    """n images whose pixel (c, 0, 0) is (offset + i + 10 * c) % 256 and the rest a ramp."""
    data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    data[:] = (np.arange(32 * 32) % 251).reshape(32, 32).astype(np.uint8)
    for i in range(n):
        for c in range(3):
            data[i, c, 0, 0] = (offset + i + 10 * c) % 256
    return data


def write_cifar10(root, per_batch=4, test=3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        images = cifar_images(per_batch, offset=100 * b)
        entry = {b"batch_label": f"training batch {b} of 5".encode(),
                 b"labels": [(b + i) % 10 for i in range(per_batch)],
                 b"data": images.reshape(per_batch, 3072),
                 b"filenames": [f"img_{b}_{i}.png".encode() for i in range(per_batch)]}
        (folder / f"data_batch_{b}").write_bytes(py2_pickle(entry))
    entry = {b"batch_label": b"testing batch 1 of 1", b"labels": [9 - i for i in range(test)],
             b"data": cifar_images(test, offset=7).reshape(test, 3072),
             b"filenames": [f"test_{i}.png".encode() for i in range(test)]}
    (folder / "test_batch").write_bytes(py2_pickle(entry))
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"airplane"] * 10,
                                                      b"num_cases_per_batch": per_batch,
                                                      b"num_vis": 3072}))
    return folder


def write_cifar100(root, train=6, test=2):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n, offset in (("train", train, 1), ("test", test, 50)):
        entry = {b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
                 b"batch_label": f"{name} batch".encode(),
                 b"fine_labels": [(i * 17) % 100 for i in range(n)],
                 b"coarse_labels": [i % 20 for i in range(n)],
                 b"data": cifar_images(n, offset).reshape(n, 3072)}
        (folder / name).write_bytes(py2_pickle(entry))
    (folder / "meta").write_bytes(py2_pickle({b"fine_label_names": [b"x"] * 100,
                                              b"coarse_label_names": [b"y"] * 20}))
    return folder


def write_idx(path, array, compress=True):
    """IDX: magic 0x00000803 (images) / 0x00000801 (labels), big-endian dims, then the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def write_fashion_mnist(folder, train=12, test=5, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)
    return folder
