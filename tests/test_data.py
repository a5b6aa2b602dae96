"""Dataset readers on fixtures in the exact on-disk formats, the bundled subset, transforms,
and the one-line error for a dataset that is missing offline."""
import pytest
import torch

from bntt import data
from bntt.data import DataUnavailable, load_arrays, make_datasets, mnist
from fixtures import cifar_images, write_cifar10, write_cifar100, write_fashion_mnist


def test_cifar10_reader(tmp_path):
    write_cifar10(tmp_path, per_batch=4, test=3)
    train_x, train_y, test_x, test_y = load_arrays("cifar10", tmp_path)
    assert train_x.shape == (20, 3, 32, 32) and train_x.dtype == torch.uint8
    assert test_x.shape == (3, 3, 32, 32)
    # batches in order 1..5, channel-major pixels
    assert torch.equal(train_x[4:8], torch.from_numpy(cifar_images(4, offset=200)))
    assert train_x[5, 2, 0, 0].item() == (200 + 1 + 20) % 256
    assert train_y.tolist()[:8] == [1, 2, 3, 4, 2, 3, 4, 5]
    assert test_y.tolist() == [9, 8, 7]


def test_cifar100_reader_uses_fine_labels(tmp_path):
    write_cifar100(tmp_path, train=6, test=2)
    train_x, train_y, test_x, test_y = load_arrays("cifar100", tmp_path)
    assert train_x.shape == (6, 3, 32, 32) and test_x.shape == (2, 3, 32, 32)
    assert train_y.tolist() == [0, 17, 34, 51, 68, 85]
    assert torch.equal(test_x, torch.from_numpy(cifar_images(2, offset=50)))


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_is_padded_to_32_with_one_channel(tmp_path, compress):
    folder = write_fashion_mnist(tmp_path / "fm", train=12, test=5, compress=compress)
    train_x, train_y, test_x, test_y = load_arrays("fashionmnist", folder)
    assert train_x.shape == (12, 1, 32, 32) and test_x.shape == (5, 1, 32, 32)
    assert train_x[:, :, :2].sum() == 0 and train_x[:, :, :, -2:].sum() == 0  # zero border
    assert bool((train_x[:, :, 2:30, 2:30] > 0).all())  # fixture pixels are 1..255
    assert train_y.tolist() == [i % 10 for i in range(12)]


def test_fashion_mnist_torchvision_layout_is_found(tmp_path):
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", train=3, test=2)
    assert load_arrays("fashionmnist", tmp_path)[0].shape == (3, 1, 32, 32)


def test_bundled_subset_is_real_balanced_and_small():
    files = list(data.BUNDLED_FASHION_MNIST.iterdir())
    assert sum(f.stat().st_size for f in files) < 2 * 1024 * 1024
    train_x, train_y, test_x, test_y = load_arrays("fashionmnist_subset", "unused")
    assert train_x.shape == (2000, 1, 32, 32) and test_x.shape == (500, 1, 32, 32)
    assert train_y.bincount().tolist() == [200] * 10 and test_y.bincount().tolist() == [50] * 10
    # real clothing pictures: mean intensity and background like Fashion-MNIST's
    inner = train_x[:, :, 2:30, 2:30].float() / 255
    assert 0.25 < inner.mean() < 0.33
    assert (train_x == 0).float().mean() > 0.4


def test_transforms_normalise_and_augment(tmp_path):
    write_cifar10(tmp_path)
    train_set, test_set = make_datasets("cifar10", tmp_path)
    image, label = test_set[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 9
    mean, std = torch.tensor(data.CIFAR_MEAN), torch.tensor(data.CIFAR_STD)
    raw = test_set.images[0].float() / 255
    torch.testing.assert_close(image, (raw - mean.view(3, 1, 1)) / std.view(3, 1, 1))
    # a training sample is a shifted/flipped crop of the zero-padded image
    crops = []
    for epoch in range(20):  # the draws of an image change with the epoch
        train_set.draw_key = (3, epoch)
        crops.append(train_set[0][0])
    crops = torch.stack(crops)
    padded_value = (0 - mean) / std
    allowed = torch.cat([((raw - mean.view(3, 1, 1)) / std.view(3, 1, 1)).flatten(1),
                         padded_value.view(3, 1)], dim=1)
    for c in range(3):
        diffs = (crops[:, c].reshape(-1, 1) - allowed[c].view(1, -1)).abs().min(dim=1).values
        assert diffs.max() < 1e-5
    assert not all(torch.equal(crops[0], crops[i]) for i in range(1, 20))


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_samples_equal_torchvision_ops(channels):
    """Given the crop offsets and flips drawn for each image (bntt.seeding), the same float32
    numbers as torchvision's v2 pad, crop, flip, ToDtype and Normalize; a DataLoader with a
    Subset (train_samples) and with worker processes serves the same samples."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    from bntt.data.sampling import GlobalBatchSampler, set_epoch
    from bntt.seeding import AUGMENT, crop_flip_draws
    mean, std = data.CIFAR_MEAN[:channels], data.CIFAR_STD[:channels]
    gen = torch.Generator().manual_seed(channels)
    images = torch.randint(0, 256, (64, channels, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (64,), generator=gen)
    to_float = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    tops, lefts, flips = crop_flip_draws((7, 2, AUGMENT), range(64), 9)
    outputs = {}
    for augment in (True, False):
        dataset = data.ImageDataset(images, labels, mean, std, augment=augment)
        dataset.draw_key = (7, 2)
        expected = []
        for i in range(64):
            image = images[i]
            if augment:
                image = TF.crop(TF.pad(image, [4]), int(tops[i]), int(lefts[i]), 32, 32)
                image = TF.horizontal_flip(image) if flips[i] else image
            expected.append(to_float(image))
        expected = torch.stack(expected)
        assert torch.equal(torch.stack([dataset[i][0] for i in range(64)]), expected)
        subset = torch.utils.data.Subset(dataset, range(40))
        served = []
        for workers in (0, 2):
            loader = torch.utils.data.DataLoader(
                subset, num_workers=workers, batch_sampler=GlobalBatchSampler(40, 16, True, False, seed=7))
            set_epoch(loader, 7, 2)
            served.append(list(loader))
        assert [len(y) for _, y in served[0]] == [16, 16, 8]
        for (x, y), (x_w, y_w) in zip(*served):
            assert torch.equal(x, x_w) and torch.equal(y, y_w)
        sampler = GlobalBatchSampler(40, 16, True, False, seed=7)
        sampler.set_epoch(2)
        order = [i for batch in sampler for i in batch]
        assert torch.equal(torch.cat([x for x, _ in served[0]]), expected[order])
        assert served[0][0][0].dtype == torch.float32 and served[0][0][1].dtype == torch.int64
        outputs[augment] = expected
    # the augmentation did move pixels: most crops are shifted or flipped
    moved = (outputs[True] != outputs[False]).flatten(1).any(dim=1)
    assert moved.float().mean() > 0.8


def test_missing_dataset_offline_says_where_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    target = tmp_path / "absent"
    with pytest.raises(DataUnavailable) as err:
        load_arrays("cifar10", target)
    message = str(err.value)
    assert "\n" not in message
    assert str(target / "cifar-10-batches-py") in message
    assert "cifar-10-python.tar.gz" in message and "--download" in message
    assert not target.exists()
    monkeypatch.setattr(mnist, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")
    with pytest.raises(DataUnavailable, match="apt-get install dataset-fashion-mnist"):
        load_arrays("fashionmnist", target)
    assert list(tmp_path.iterdir()) == []


def test_truncated_idx_file_is_reported(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", compress=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataUnavailable, match="truncated"):
        load_arrays("fashionmnist", folder)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_arrays("mnist", ".")
