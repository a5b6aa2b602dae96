"""Sequential MNIST: images read as sequences by SequenceEncoder, the fully connected BNTT
network (SpikingFC) on every engine, its checkpoints, the early-exit evaluator, the MNIST
reader, and train.py / evaluate.py end to end on the bundled Fashion-MNIST subset."""
import json

import numpy as np
import pytest
import torch

import evaluate
import train
from bntt import early_exit
from bntt.coding import SequenceEncoder
from bntt.data import DATASETS, load_arrays, write_idx
from bntt.models import SpikingFC
from helpers import network, randomize_bntt, tiny_args

TINY = tiny_args(dataset="seqfashionmnist_subset", arch="fc", num_steps=28, train_samples=96,
                 test_samples=50, fc_hidden="32,16")


def test_rows_and_pixels_are_the_image_in_reading_order():
    images = torch.arange(2 * 28 * 28, dtype=torch.float64).reshape(2, 1, 28, 28)
    rows = SequenceEncoder("rows")(images, 28)
    assert rows.shape == (28, 2, 28)
    assert torch.equal(rows[5, 1], images[1, 0, 5])  # step t is row t
    pixels = SequenceEncoder("pixels")(images, 784)
    assert pixels.shape == (784, 2, 1)
    assert torch.equal(pixels[28 * 3 + 7, 0, 0], images[0, 0, 3, 7])
    assert SequenceEncoder("rows")(images, 10).shape[0] == 10  # a shorter network: first rows


def test_poisson_sequence_fires_with_the_intensity():
    images = torch.full((4000, 1, 28, 28), 0.3, dtype=torch.float64)
    images[:, :, :, :14] = 0.0
    spikes = SequenceEncoder("rows", "poisson")(images, 28, torch.Generator().manual_seed(0))
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    assert spikes[..., :14].sum() == 0
    rate = spikes[..., 14:].mean().item()  # 4000 * 28 * 14 draws: std of the mean ~ 3e-4
    assert abs(rate - 0.3) < 2e-3


def small_fc(steps=6, dtype=torch.float64, seed=0, hidden=(12, 8), in_features=5):
    torch.manual_seed(seed)
    model = SpikingFC(steps, leak_mem=0.9, in_features=in_features, hidden=hidden, num_cls=4)
    return randomize_bntt(model, torch.Generator().manual_seed(seed + 1)).to(dtype)


def test_fc_layer_equations_by_hand():
    """One hidden layer, two steps, eval mode, written out: Linear, BNTT with running
    statistics, LIF with soft reset, accumulating readout."""
    model = small_fc(steps=2, hidden=(3,), in_features=2).eval()
    x = torch.tensor([[[1.0, -0.5]], [[0.2, 2.0]]], dtype=torch.float64)  # [T=2, B=1, 2]
    bn = model.bntt1
    u, total = torch.zeros(3, dtype=torch.float64), 0.0
    for t in range(2):
        a = model.fc1.weight @ x[t, 0]
        z = bn.weight[t] * (a - bn.running_mean[t]) / torch.sqrt(bn.running_var[t] + 1e-4)
        v = 0.9 * u + z
        s = (v > 1.0).double()
        u = v - s
        total = total + model.fc_out.weight @ s
    with torch.no_grad():
        torch.testing.assert_close(model.forward_spikes(x)[0], total / 2, rtol=1e-12, atol=1e-12)


def test_fc_checkpoint_round_trip():
    model = network("fc", "seqmnist", 28, fc_hidden=(64, 32))
    assert [model.fc1.in_features, model.fc1.out_features, model.fc2.out_features,
            model.fc_out.out_features, model.num_steps] == [28, 64, 32, 10, 28]
    other = network("fc", "seqmnist", 28, fc_hidden=(64, 32))
    other.load_state_dict(model.state_dict(), strict=True)
    images = torch.rand(3, 1, 28, 28)
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(model(images), other(images))
    pixels = network("fc", "seqmnist", 784, seq_order="pixels")
    assert pixels.in_channels == 1 and pixels.num_steps == 784


def test_fc_early_exit_curve_is_the_shorter_networks():
    model = small_fc(steps=5, in_features=28, hidden=(16,)).eval()
    model.encoder = SequenceEncoder("rows")
    images = torch.rand(4, 1, 5, 28, dtype=torch.float64)  # five rows: T = 5
    with torch.no_grad():
        curve = early_exit.cumulative_logits(model, model.encode(images))
        for t in range(1, 6):
            torch.testing.assert_close(curve[t - 1], early_exit.truncate_steps(model, t)(images),
                                       rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch,dataset,steps,message", [
    ("vgg9", "seqmnist", 28, "arch vgg9 reads images or event frames, and seqmnist serves "
                             "sequences: use --arch fc"),
    ("fc", "cifar10", 25, "arch fc reads sequences, and cifar10 serves images: use --arch vgg9 or "
                          "vgg11 or resnet19 or vgg9_ann or vgg11_ann"),
    ("fc", "seqmnist", 10, "set num_steps = 28"),
])
def test_arch_dataset_mismatch_is_one_line(capsys, tmp_path, arch, dataset, steps, message):
    out = tmp_path / "runs"
    code = train.cli(["--arch", arch, "--dataset", dataset, "--num_steps", str(steps),
                      "--out_dir", str(out), "--data_dir", str(tmp_path / "nodata")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_mnist_reader_reads_its_own_folder_only(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    for stem, array in (("train-images-idx3-ubyte", images[:8]), ("train-labels-idx1-ubyte", labels[:8]),
                        ("t10k-images-idx3-ubyte", images[8:]), ("t10k-labels-idx1-ubyte", labels[8:])):
        write_idx(folder / f"{stem}.gz", array)
    train_x, train_y, test_x, test_y = load_arrays("seqmnist", tmp_path)
    assert train_x.shape == (8, 1, 28, 28) and test_x.shape == (4, 1, 28, 28)  # not padded
    assert torch.equal(train_x[3, 0], torch.from_numpy(images[3]))
    assert train_y.tolist() == labels[:8].tolist() and test_y.dtype == torch.int64
    assert DATASETS["seqmnist"].kind == "sequence"


def test_train_and_evaluate_end_to_end(tmp_path, capsys):
    assert train.cli([*TINY, "--num_epochs", "1", "--out_dir", str(tmp_path), "--run_name", "s"]) == 0
    run_dir = tmp_path / "s"
    row = json.loads((run_dir / "metrics.jsonl").read_text())
    assert row["test_images"] == 50 and row["train_images"] == 96
    capsys.readouterr()
    code = evaluate.cli(["--checkpoint", str(run_dir), "--batch_size", "64", "--test_samples", "50",
                         "--out_dir", str(tmp_path / "ee"),
                         "--no_plots"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "ee" / "early_exit.json").read_text())
    assert len(report["per_step"]) == 28 and report["arch"] == "fc"
    assert report["per_step"][-1]["top1"] == pytest.approx(row["test_top1"])  # same eval as train.py
    assert [g["layer"] for g in report["gamma"]][::28] == ["bntt1", "bntt2"]
