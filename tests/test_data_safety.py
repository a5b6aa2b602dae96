"""Damaged or hostile dataset files: every one ends in a one-line `DataUnavailable` naming the
file, a crafted CIFAR pickle cannot run code, labels outside the classes are refused before
anything is written, and the offline path needs no torchvision."""
import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bntt import data
from bntt.data import DataUnavailable, cifar, load_arrays
from fixtures import cifar_images, py2_pickle, write_cifar10, write_cifar100, write_fashion_mnist
from fixtures import write_idx as fixture_write_idx

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(name, folder, naming):
    with pytest.raises(DataUnavailable) as err:
        load_arrays(name, folder)
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    assert str(naming) in message
    return message


def cifar_entry(n=4, labels=None, **changes):
    entry = {b"batch_label": b"training batch 1 of 5",
             b"labels": list(range(n)) if labels is None else labels,
             b"data": cifar_images(n, offset=0).reshape(n, 3072),
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    entry.update(changes)
    return entry


# -- 1. truncated or garbage files -----------------------------------------------------------

RNG_BYTES = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
IDX_DAMAGE = {
    "first half of the gzip": lambda raw: gzip.compress(raw)[:len(gzip.compress(raw)) // 2],
    "random bytes named .gz": lambda raw: RNG_BYTES,
    "gzip with a cut header": lambda raw: gzip.compress(raw[:6]),
    "gzip of random bytes": lambda raw: gzip.compress(RNG_BYTES),
    "gzip then garbage": lambda raw: gzip.compress(raw) + b"garbage!" * 4,
    # 65536**4 wraps to 0 in int64: an empty body must not pass as the right size
    "dims whose product overflows": lambda raw: gzip.compress(
        bytes([0, 0, 8, 4]) + (65536).to_bytes(4, "big") * 4),
}


@pytest.mark.parametrize("damage", list(IDX_DAMAGE))
def test_damaged_fashion_mnist_gz_is_one_line_naming_the_file(tmp_path, damage):
    folder = write_fashion_mnist(tmp_path / "fm", train=6, test=3)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(IDX_DAMAGE[damage](raw))
    one_line_error("fashionmnist", folder, path)


@pytest.mark.parametrize("cut", [0, 3, 5, 7])
def test_truncated_idx_header_is_one_line_naming_the_file(tmp_path, cut):
    folder = write_fashion_mnist(tmp_path / "fm", train=6, test=3, compress=False)
    path = folder / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:cut])
    one_line_error("fashionmnist", folder, path)


def test_idx_gz_is_decompressed_no_further_than_its_header_declares(tmp_path):
    """A .gz of 50 KB holding a 6-image header and 50 MB of values: refused once one value
    past the declared 6 x 28 x 28 is read, not decompressed whole."""
    import tracemalloc
    folder = write_fashion_mnist(tmp_path / "fm", train=6, test=3)
    path = folder / "train-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (6, 28, 28))
    path.write_bytes(gzip.compress(header + bytes(50 * 2**20), compresslevel=1))
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        message = one_line_error("fashionmnist", folder, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20, peak
    assert "holds more than the 4704 values its header declares (shape [6, 28, 28])" in message


def test_idx_header_declaring_more_than_any_mnist_file_is_refused_unread(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", train=6, test=3)
    path = folder / "t10k-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (2**20, 28, 28))
    path.write_bytes(gzip.compress(header + bytes(4704)))
    message = one_line_error("fashionmnist", folder, path)
    assert f"declares an array of shape [{2**20}, 28, 28], more than the" in message
    assert "MAX_IDX_VALUES" in message


class Unrelated:  # an importable class: the pickle below refers to it by name
    pass


CIFAR_DAMAGE = {
    "first half": lambda raw: raw[:len(raw) // 2],
    "random bytes": lambda raw: RNG_BYTES,
    "empty file": lambda raw: b"",
    "a list, not a dict": lambda raw: py2_pickle([1, 2, 3]),
    "no data key": lambda raw: py2_pickle({b"labels": [1, 2]}),
    "no labels key": lambda raw: py2_pickle({b"data": cifar_images(2, 0).reshape(2, 3072)}),
    "rows of 3000 values": lambda raw: py2_pickle(cifar_entry(
        data=np.zeros((4, 3000), dtype=np.uint8))),
    "data is a string": lambda raw: py2_pickle(cifar_entry(data=b"abc")),
    "float data": lambda raw: py2_pickle(cifar_entry(data=np.zeros((4, 3072)))),
    "more labels than images": lambda raw: py2_pickle(cifar_entry(labels=[0, 1, 2, 3, 4])),
    "text labels": lambda raw: py2_pickle(cifar_entry(labels=[b"cat"] * 4)),
    "nested labels": lambda raw: py2_pickle(cifar_entry(labels=[[0], [1], [2], [3]])),
    # the right number of values in the wrong layout, each of which reshapes into 4 images
    "two images per row": lambda raw: py2_pickle(cifar_entry(
        data=cifar_images(4, 0).reshape(2, 2 * 3072))),
    "rows transposed": lambda raw: py2_pickle(cifar_entry(
        data=np.ascontiguousarray(cifar_images(4, 0).reshape(4, 3072).T))),
    "one flat row": lambda raw: py2_pickle(cifar_entry(data=cifar_images(4, 0).reshape(-1))),
    "images as [N, 3, 32, 32]": lambda raw: py2_pickle(cifar_entry(data=cifar_images(4, 0))),
}


@pytest.mark.parametrize("damage", list(CIFAR_DAMAGE))
def test_damaged_cifar_batch_is_one_line_naming_the_file(tmp_path, damage):
    folder = write_cifar10(tmp_path)
    path = folder / "data_batch_1"
    path.write_bytes(CIFAR_DAMAGE[damage](path.read_bytes()))
    one_line_error("cifar10", tmp_path, path)


def test_damaged_cifar100_file_is_one_line_naming_the_file(tmp_path):
    folder = write_cifar100(tmp_path)
    path = folder / "test"
    path.write_bytes(path.read_bytes()[:100])
    one_line_error("cifar100", tmp_path, path)


# -- 2. offline without torchvision ----------------------------------------------------------

NO_TORCHVISION = """
import sys
sys.modules["torchvision"] = None  # any `import torchvision...` now raises ImportError
from bntt.cli import run_cli
from bntt.data import load_arrays
sys.exit(run_cli(lambda argv: load_arrays("cifar10", sys.argv[1]) and 0, "prog"))
"""


@pytest.mark.parametrize("offline", ["1", ""])
@pytest.mark.slow
def test_missing_cifar_needs_no_torchvision_to_say_so(tmp_path, offline):
    target = tmp_path / "absent"
    env = dict(os.environ, BNTT_OFFLINE=offline)
    result = subprocess.run([sys.executable, "-c", NO_TORCHVISION, str(target)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    err = result.stderr.strip()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("prog: error: CIFAR10 not found in " + str(target / "cifar-10-batches-py"))
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in err
    if offline:
        assert "BNTT_OFFLINE is set" in err
    else:  # a download was wanted, and torchvision (which does it) is not there
        assert "torchvision" in err
    assert list(tmp_path.iterdir()) == []


# -- 3. a CIFAR pickle cannot run code -------------------------------------------------------

class RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


# protocol 2 names them as Python 2 did: posix.system, __builtin__.exec
@pytest.mark.parametrize("func,refused", [(os.system, ".system"), (exec, "builtin__.exec")])
def test_crafted_cifar_pickle_does_not_run_code(tmp_path, func, refused):
    folder = write_cifar10(tmp_path / "d")
    witness = tmp_path / "pwned"
    code = (f"touch {witness}" if func is os.system
            else f"open({str(witness)!r}, 'w').close()")
    path = folder / "data_batch_1"
    path.write_bytes(pickle.dumps(cifar_entry(data=RunsCode(func, code)), protocol=2))
    message = one_line_error("cifar10", tmp_path / "d", path)
    assert refused in message
    assert not witness.exists()


def test_pickle_referring_to_any_other_class_is_refused(tmp_path):
    folder = write_cifar10(tmp_path)
    path = folder / "test_batch"
    path.write_bytes(pickle.dumps(cifar_entry(filenames=Unrelated()), protocol=2))
    assert "test_data_safety.Unrelated" in one_line_error("cifar10", tmp_path, path)


def numpy1_py2_pickle(entry):
    """The real CIFAR files: Python 2 cPickle, numpy 1.x's module name for _reconstruct."""
    raw = py2_pickle(entry)
    assert b"cnumpy._core.multiarray\n" in raw
    return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


WRITERS = {
    "python 2 / numpy 1.x": numpy1_py2_pickle,
    "python 2 / numpy 2.x": py2_pickle,
    **{f"python 3 protocol {p}": (lambda p: lambda entry: pickle.dumps(
        {k.decode(): v for k, v in entry.items()}, protocol=p))(p) for p in (2, 4, 5)},
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_cifar_pickles_from_any_numpy_still_load(tmp_path, writer):
    folder = write_cifar10(tmp_path)
    expected = load_arrays("cifar10", tmp_path)
    entry = {b"batch_label": b"training batch 1 of 5", b"labels": [1, 2, 3, 4],
             b"data": cifar_images(4, offset=100).reshape(4, 3072),
             b"filenames": [f"img_1_{i}.png".encode() for i in range(4)]}
    (folder / "data_batch_1").write_bytes(WRITERS[writer](entry))
    for got, want in zip(load_arrays("cifar10", tmp_path), expected):
        assert got.dtype == want.dtype and torch.equal(got, want)


# -- 4. labels within the classes ------------------------------------------------------------

def test_fashion_mnist_label_outside_classes(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", train=6, test=3)
    fixture_write_idx(folder / "t10k-labels-idx1-ubyte", [1, 10, 2])
    message = one_line_error("fashionmnist", folder, folder)
    assert "test" in message and "10" in message and "0..9" in message


@pytest.mark.parametrize("split,file,labels,bad", [
    ("train", "data_batch_3", [0, 1, 10, 2], 10),
    ("test", "test_batch", [-1, 0, 1], -1),
])
def test_cifar10_label_outside_classes(tmp_path, split, file, labels, bad):
    folder = write_cifar10(tmp_path)
    n = len(labels)
    (folder / file).write_bytes(py2_pickle(cifar_entry(n=n, labels=labels)))
    message = one_line_error("cifar10", tmp_path, folder)
    assert f"{split} labels" in message and f"include {bad}" in message and "0..9" in message


def test_cifar100_fine_label_outside_classes(tmp_path):
    folder = write_cifar100(tmp_path, train=6, test=2)
    entry = {b"fine_labels": [5, 100], b"coarse_labels": [0, 1],
             b"data": cifar_images(2, 0).reshape(2, 3072)}
    (folder / "test").write_bytes(py2_pickle(entry))
    message = one_line_error("cifar100", tmp_path, folder)
    assert "test labels" in message and "include 100" in message and "0..99" in message


def test_images_and_labels_count_mismatch(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    x = torch.zeros((3, 3, 32, 32), dtype=torch.uint8)
    y = torch.zeros(2, dtype=torch.int64)
    monkeypatch.setattr(cifar, "load_cifar", lambda name, data_dir: (x, y, x, y[:1].repeat(3)))
    message = one_line_error("cifar10", tmp_path, tmp_path)
    assert "train" in message and "3 images" in message and "2 labels" in message


# -- 5. shapes: what the network of the dataset is built for ----------------------------------

def write_mnist_format(folder, shapes=None):
    """The four IDX files of an MNIST-format folder, uncompressed; `shapes` overrides the
    array written to a file (by stem), pixels 1..255 and labels 0..9 whatever the shape."""
    folder.mkdir(parents=True, exist_ok=True)
    normal = {"train-images-idx3-ubyte": (6, 28, 28), "train-labels-idx1-ubyte": (6,),
              "t10k-images-idx3-ubyte": (3, 28, 28), "t10k-labels-idx1-ubyte": (3,)}
    normal.update(shapes or {})
    for stem, shape in normal.items():
        values = np.arange(int(np.prod(shape))).reshape(shape)
        fixture_write_idx(folder / stem, values % 10 if "labels" in stem else values % 255 + 1,
                          compress=False)
    return folder


# (dataset, the folder inside data_dir its files are read from)
MNIST_FORMAT = [("fashionmnist", "fashion-mnist"), ("seqfashionmnist", "fashion-mnist"),
                ("seqmnist", "mnist")]
WRONG_SHAPES = {
    "train images 30x30": ("train-images-idx3-ubyte", (6, 30, 30), "[6, 30, 30]"),
    "test images 28x27": ("t10k-images-idx3-ubyte", (3, 28, 27), "[3, 28, 27]"),
    "test images flattened": ("t10k-images-idx3-ubyte", (3, 784), "[3, 784]"),
    "train images with a channel axis": ("train-images-idx3-ubyte", (6, 1, 28, 28),
                                         "[6, 1, 28, 28]"),
    "test labels [N, 1]": ("t10k-labels-idx1-ubyte", (3, 1), "[3, 1]"),
}


@pytest.mark.parametrize("wrong", list(WRONG_SHAPES))
@pytest.mark.parametrize("name,subfolder", MNIST_FORMAT)
def test_idx_file_of_the_wrong_shape_is_one_line_naming_it(tmp_path, name, subfolder, wrong):
    stem, shape, shown = WRONG_SHAPES[wrong]
    folder = write_mnist_format(tmp_path / subfolder, {stem: shape})
    message = one_line_error(name, tmp_path, folder / stem)
    assert f"holds an array of shape {shown}, not the [N" in message


def test_idx_images_and_labels_that_do_not_pair_name_both_files(tmp_path):
    folder = write_mnist_format(tmp_path / "fashion-mnist", {"t10k-labels-idx1-ubyte": (4,)})
    message = one_line_error("fashionmnist", tmp_path, folder)
    assert "t10k-images-idx3-ubyte holds 3 images, t10k-labels-idx1-ubyte 4 labels" in message


U8, I64 = torch.uint8, torch.int64


@pytest.mark.parametrize("name,good,num_steps,split,sample,labels,shown", [
    ("cifar10", (3, 32, 32), None, "train", ((4, 1, 32, 32), U8), ((4,), I64),
     "uint8 [4, 1, 32, 32]"),
    ("cifar10", (3, 32, 32), None, "test", ((4, 3, 32, 32), torch.float32), ((4,), I64),
     "float32 [4, 3"),
    ("fashionmnist", (1, 32, 32), None, "test", ((4, 1, 28, 28), U8), ((4,), I64),
     "[4, 1, 28, 28]"),
    ("seqmnist", (1, 28, 28), None, "train", ((4, 1, 32, 32), U8), ((4,), I64), "[4, 1, 32, 32]"),
    ("tinyimagenet", (3, 64, 64), None, "test", ((4, 3, 32, 32), U8), ((4,), I64),
     "[4, 3, 32, 32]"),
    ("cifar10dvs", (2, 2, 48, 48), 2, "test", ((4, 3, 2, 48, 48), U8), ((4,), I64),
     "[4, 3, 2, 48, 48]"),
    ("cifar10dvs", (2, 2, 48, 48), None, "train", ((4, 2, 2, 64, 64), U8), ((4,), I64),
     "[4, 2, 2, 64, 64]"),
    ("cifar10", (3, 32, 32), None, "test", ((4, 3, 32, 32), U8), ((4,), torch.int32), "int32 [4]"),
    ("cifar10", (3, 32, 32), None, "train", ((4, 3, 32, 32), U8), ((4, 1), I64), "int64 [4, 1]"),
])
def test_arrays_of_another_shape_than_the_dataset_are_refused(name, good, num_steps, split,
                                                              sample, labels, shown):
    """The check every reader's arrays pass in load_arrays, whatever the reader."""
    steps = [num_steps] if num_steps else []  # T is checked only where it is known
    arrays = [torch.zeros((4, *good), dtype=U8), torch.zeros(4, dtype=I64)] * 2
    data.check_arrays(name, "somewhere", arrays, *steps)
    at = 0 if split == "train" else 2
    arrays[at] = torch.zeros(sample[0], dtype=sample[1])
    arrays[at + 1] = torch.zeros(labels[0], dtype=labels[1])
    with pytest.raises(DataUnavailable) as err:
        data.check_arrays(name, "somewhere", arrays, *steps)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{name} {split} ")
    assert "in somewhere" in message and shown in message


def _train_and_evaluate_argv(name, data_dir, out, tmp_path):
    """train.py's and evaluate.py's arguments for a tiny run of dataset `name`; evaluate.py
    scores a checkpoint as the authors' train.py writes it (weights only), or, for the FC
    network, which they do not have, with its configuration."""
    from helpers import network
    arch, steps = ("fc", "28") if data.dataset_info(name).kind == "sequence" else ("vgg9", "1")
    model = network(arch, name, int(steps), 0.95, **({"fc_hidden": (8,)} if arch == "fc" else {}))
    checkpoint = tmp_path / "authors.pt"
    config = {"arch": arch, "dataset": name, "num_steps": int(steps), "fc_hidden": "8"}
    torch.save({"state_dict": model.state_dict(), **({"config": config} if arch == "fc" else {})},
               checkpoint)
    common = ["--dataset", name, "--data_dir", str(data_dir), "--device", "cpu",
              "--num_workers", "0", "--batch_size", "2", "--out_dir", str(out)]
    return ([*common, "--arch", arch, "--num_steps", steps, "--num_epochs", "1"]
            + (["--fc_hidden", "8"] if arch == "fc" else []),
            [*common, "--checkpoint", str(checkpoint), "--leak_mem", "0.95", "--no_plots"])


@pytest.mark.parametrize("program", ["train", "evaluate"])
@pytest.mark.parametrize("name,subfolder", MNIST_FORMAT)
def test_cli_test_images_of_the_wrong_shape_exit_2_before_writing(tmp_path, capsys, monkeypatch,
                                                                  name, subfolder, program):
    """Only the test file is wrong: found when the datasets are built, not after an epoch of
    training (train.py) or at the first batch (evaluate.py), and no folder is made."""
    import evaluate
    import train
    monkeypatch.setenv("BNTT_OFFLINE", "1")
    folder = write_mnist_format(tmp_path / "data" / subfolder,
                                {"t10k-images-idx3-ubyte": (3, 28, 30)})
    out = tmp_path / "out"
    argv = _train_and_evaluate_argv(name, tmp_path / "data", out, tmp_path)
    cli = train.cli if program == "train" else evaluate.cli
    code = cli(argv[0] if program == "train" else argv[1])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"{program}.py: error: ")
    assert f"{folder / 't10k-images-idx3-ubyte'} holds an array of shape [3, 28, 30]" in err
    assert not out.exists()


# -- 6. end to end: nothing written ----------------------------------------------------------

def test_train_cli_bad_label_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import train
    monkeypatch.setenv("BNTT_OFFLINE", "1")
    folder = write_cifar10(tmp_path / "data")
    (folder / "data_batch_2").write_bytes(py2_pickle(cifar_entry(labels=[0, 1, 2, 11])))
    before = sorted(p.name for p in folder.iterdir())
    out_dir = tmp_path / "runs"
    code = train.cli(["--dataset", "cifar10", "--data_dir", str(tmp_path / "data"), "--arch", "vgg9",
                      "--device", "cpu", "--num_steps", "1", "--batch_size", "4", "--num_epochs", "1",
                      "--num_workers", "0", "--out_dir", str(out_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("train.py: error: ")
    assert "train labels" in err and "include 11" in err
    assert not out_dir.exists()
    assert sorted(p.name for p in folder.iterdir()) == before
