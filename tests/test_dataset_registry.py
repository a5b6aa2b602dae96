"""The dataset registry: a dataset is one module plus one registry line, its entry states what
the network needs, and an unknown name is one clear error. A toy dataset, written here as a
module of its own and registered with one line, trains through the same path as the real ones."""
import ast
import importlib
from pathlib import Path

import pytest
import torch

from bntt.coding import FrameEncoder, PoissonEncoder, SequenceEncoder
from bntt.data import (DATASETS, dataset_info, load_arrays, make_datasets, make_loaders,
                       sample_shape)
from bntt.data.sampling import set_epoch
from bntt.seeding import AUGMENT, crop_flip_draws
from helpers import network

ROOT = Path(__file__).resolve().parents[1]

# The whole of a new dataset: 8x8 images of two channels, four classes. Image i of a split
# has one lit pixel, channel 0 at row i % 8 and column (3 * i) % 8, of value 255; its label is
# i % 4. `padding=1`: training crops move the image by up to one pixel.
TOY_MODULE = '''
"""Toy corners: one lit pixel per 8x8 image, four classes."""
import torch

from bntt.data import ImageInfo


def images(n):
    x = torch.zeros(n, 2, 8, 8, dtype=torch.uint8)
    for i in range(n):
        x[i, 0, i % 8, (3 * i) % 8] = 255
    return x, torch.arange(n, dtype=torch.int64) % 4


def read(info, data_dir, download, num_steps):
    return (*images(12), *images(4)), data_dir / "toy"


TOY = ImageInfo("toy", 4, 2, 8, mean=(0.5, 0.25), std=(0.5, 0.5), padding=1, read=read)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    (tmp_path / "toy_corners.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_corners")
    monkeypatch.delitem(__import__("sys").modules, "toy_corners")
    monkeypatch.setitem(DATASETS, "toy", module.TOY)  # the one registry line
    return module.TOY


def lit_pixel(i):
    return i % 8, (3 * i) % 8


def test_toy_dataset_serves_its_arrays(toy, tmp_path):
    train_x, train_y, test_x, test_y = load_arrays("toy", tmp_path)
    assert train_x.shape == (12, 2, 8, 8) and test_x.shape == (4, 2, 8, 8)
    assert train_y.tolist() == [0, 1, 2, 3] * 3 and test_y.tolist() == [0, 1, 2, 3]
    assert sample_shape("toy") == (2, 8, 8) and dataset_info("toy") is toy
    train_set, test_set = make_datasets("toy", tmp_path)
    image, label = test_set[3]
    # normalised per channel: (0 - 0.5) / 0.5 = -1 and (0 - 0.25) / 0.5 = -0.5 for the dark
    # pixels, (1 - 0.5) / 0.5 = 1 for the lit one
    assert image.dtype == torch.float32 and int(label) == 3
    assert image[0, 3, 1] == 1.0 and (image[0] == -1.0).sum() == 63
    assert bool((image[1] == -0.5).all())


def test_toy_dataset_augments_with_the_papers_crop_and_flip(toy, tmp_path):
    """Training image 5 (lit at row 5, column 7), padded by one pixel and cropped at offset
    (top, left), has its pixel at (5 + 1 - top, 7 + 1 - left), then at column 7 - c if flipped,
    or nowhere if the crop cut it off; the offsets and flip are those drawn for (seed, epoch, 5)."""
    train_set, _ = make_datasets("toy", tmp_path)
    seen = set()
    for epoch in range(8):
        train_set.draw_key = (11, epoch)
        image = train_set[5][0]
        tops, lefts, flips = crop_flip_draws((11, epoch, AUGMENT), [5], 3)
        row, col = lit_pixel(5)
        row, col = row + 1 - int(tops[0]), col + 1 - int(lefts[0])
        col = 7 - col if flips[0] else col
        lit = (image[0] == 1.0).nonzero().tolist()
        assert lit == ([[row, col]] if 0 <= row < 8 and 0 <= col < 8 else [])
        assert int((image[0] == -1.0).sum()) == 64 - len(lit) and bool((image[1] == -0.5).all())
        seen.add((row, col))
    assert len(seen) > 2  # the draws differ from epoch to epoch


def test_toy_dataset_trains_through_the_loaders_and_a_network(toy, tmp_path):
    train_set, test_set = make_datasets("toy", tmp_path)
    train, test = make_loaders(train_set, test_set, batch_size=5, test_batch_size=3, seed=2)
    set_epoch(train, 2, 0)
    batches = list(train)
    assert [len(y) for _, y in batches] == [5, 5]  # the last partial batch is dropped
    order = [i for batch in train.batch_sampler for i in batch]
    assert torch.cat([y for _, y in batches]).tolist() == [i % 4 for i in order]
    assert [y.tolist() for _, y in test] == [[0, 1, 2], [3]]
    torch.manual_seed(0)
    model = network("vgg9", "toy", 2, 0.9)  # what train.py builds for --dataset toy
    assert isinstance(model.encoder, PoissonEncoder)
    assert model.conv1.weight.shape[1] == 2 and model.fc2.weight.shape[0] == 4
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = batches[0]
    before = model.conv1.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss) and not torch.equal(model.conv1.weight, before)


# name: (encoder class, sample_shape(num_steps=5), sequence_steps and input_features by
# rows and by pixels, Poisson-coded images)
STATED = {
    "cifar10": (PoissonEncoder, (3, 32, 32), (None, None, None, None), True),
    "cifar100": (PoissonEncoder, (3, 32, 32), (None, None, None, None), True),
    "fashionmnist": (PoissonEncoder, (1, 32, 32), (None, None, None, None), True),
    "fashionmnist_subset": (PoissonEncoder, (1, 32, 32), (None, None, None, None), True),
    "tinyimagenet": (PoissonEncoder, (3, 64, 64), (None, None, None, None), True),
    "cifar10dvs": (FrameEncoder, (5, 2, 48, 48), (None, None, None, None), False),
    "seqmnist": (SequenceEncoder, (1, 28, 28), (28, 28, 784, 1), False),
    "seqfashionmnist": (SequenceEncoder, (1, 28, 28), (28, 28, 784, 1), False),
    "seqfashionmnist_subset": (SequenceEncoder, (1, 28, 28), (28, 28, 784, 1), False),
}


def test_the_registry_lists_each_dataset_once_in_the_help_order():
    assert list(DATASETS) == list(STATED)
    assert all(info.name == name for name, info in DATASETS.items())


@pytest.mark.parametrize("name", list(STATED))
def test_each_entry_states_what_its_network_needs(name):
    encoder, shape, steps, poisson = STATED[name]
    info = dataset_info(name)
    made = info.make_encoder("pixels", "poisson")
    assert type(made) is encoder
    if encoder is SequenceEncoder:
        assert (made.order, made.coding) == ("pixels", "poisson")
    assert info.sample_shape(5) == shape
    assert (info.sequence_steps("rows"), info.input_features("rows"),
            info.sequence_steps("pixels"), info.input_features("pixels")) == steps
    assert info.poisson_images is poisson


def test_the_bundled_sequence_dataset_feeds_its_network():
    info = dataset_info("seqfashionmnist_subset")
    model = network("fc", info.name, info.sequence_steps("rows"), 0.9, fc_hidden=(8,))
    assert model.num_steps == 28 and model.fc1.weight.shape == (8, info.input_features("rows"))


UNKNOWN = ("unknown dataset 'imagenet'; choose from cifar10, cifar100, fashionmnist, "
           "fashionmnist_subset, tinyimagenet, cifar10dvs, seqmnist, seqfashionmnist, "
           "seqfashionmnist_subset")


@pytest.mark.parametrize("call", [
    lambda d: make_datasets("imagenet", d), lambda d: load_arrays("imagenet", d),
    lambda d: dataset_info("imagenet"), lambda d: sample_shape("imagenet")])
def test_an_unknown_name_is_one_line_listing_the_choices(tmp_path, call):
    with pytest.raises(ValueError) as err:
        call(tmp_path / "data")
    assert str(err.value) == UNKNOWN
    assert list(tmp_path.iterdir()) == []


def test_a_registered_toy_is_one_of_the_choices(toy):
    with pytest.raises(ValueError, match=r"choose from .*seqfashionmnist_subset, toy$"):
        dataset_info("imagenet")


def test_no_data_module_imports_a_private_name_of_another():
    """Each module uses the others through their public names only."""
    for path in sorted((ROOT / "bntt" / "data").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bntt"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(ROOT)} imports {private} from {node.module}"
