"""Spike rates and energy (bntt/analysis/activity.py): operation counts against brute force, rates
of hand-set networks, the ANN's MACs, the energy-vs-time curve, `analyze.py activity`."""
import itertools
import json
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import analyze
import train
from bntt import early_exit
from bntt.analysis import activity
from bntt.analysis.report import Report, check_out_dir
from bntt.checkpoint import WriteError, save_atomic
from bntt.cli import UsageError
from bntt.coding import SequenceEncoder
from bntt.models import build_model
from bntt.norms import NORMS
from bntt.trained import load_trained
from bntt.trained import test_loader as scoring_loader  # not collected as a test
from fixtures import write_fashion_mnist
from helpers import network, small_model
from utill import correct_topk


def brute_force_ops(conv: nn.Conv2d, spikes: torch.Tensor) -> torch.Tensor:
    """[T, B] ops: for every non-zero input element, the output elements (channels x positions)
    that a conv with an all-ones weight and the same geometry makes non-zero from it alone."""
    ones = torch.ones(conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size,
                      dtype=torch.float64)
    where = torch.nonzero(spikes)
    one_hot = torch.zeros(len(where), *spikes.shape[2:], dtype=torch.float64)  # one map per element
    one_hot[torch.arange(len(where)), where[:, 2], where[:, 3], where[:, 4]] = 1.0
    out = F.conv2d(one_hot, ones, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    ops = torch.zeros(spikes.shape[:2], dtype=torch.long)
    for (t, b), reached in zip(where[:, :2].tolist(), torch.count_nonzero(out.flatten(1), dim=1).tolist()):
        ops[t, b] += reached
    return ops


def hand_made_spikes(channels, height, width):
    """[2, 2, C, H, W]: every corner and edge of the map, an interior block, a random sprinkle, and
    the values pooled spikes and signed Poisson spikes take (all non-zero count the same)."""
    g = torch.Generator().manual_seed(3)
    s = (torch.rand(2, 2, channels, height, width, generator=g) < 0.15).double()
    s[0, 0, 0, [0, 0, -1, -1], [0, -1, 0, -1]] = 1.0  # the four corners
    s[0, 1, :, 0, :] = 1.0  # a whole top row
    s[1, 0, -1, :, -1] = 0.25  # a right column of pooled values
    s[1, 1, :, 2:4, 1:3] = -1.0  # an interior block of negative input spikes
    return s


@pytest.mark.parametrize("kernel, stride, padding, dilation, groups", [
    (3, 1, 1, 1, 1),  # the networks' convolutions
    (3, 2, 1, 1, 1),
    (3, 1, 0, 1, 1),
    (3, 2, 0, 1, 1),
    (2, 2, 0, 1, 1),
    (5, 3, 2, 1, 1),
    (3, 1, 2, 2, 1),
    (3, 1, 1, 1, 2),
    (3, 1, "same", 1, 1),
])
def test_conv_ops_equal_brute_force(kernel, stride, padding, dilation, groups):
    conv = nn.Conv2d(4, 6, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     bias=False)
    spikes = hand_made_spikes(4, 7, 6)  # odd sizes: a stride's floor leaves some inputs unread
    assert torch.equal(activity.synaptic_ops(conv, spikes), brute_force_ops(conv, spikes))


def test_conv_reach_of_a_full_map():
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    reach = activity.conv_reach(conv, 8, 6)
    assert reach[0, 0] == 4 and reach[0, 3] == 6 and reach[4, 3] == 9  # corner, edge, interior
    # All inputs firing: per dimension, the interior positions are covered 3 times, the borders 2
    ops = activity.synaptic_ops(conv, torch.ones(1, 1, 3, 8, 6))
    assert ops.item() == 3 * 5 * (3 * 8 - 2) * (3 * 6 - 2)


def test_linear_ops_are_nonzero_inputs_times_outputs():
    fc = nn.Linear(20, 7, bias=False)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 4, 20, generator=g) < 0.3).double() * torch.tensor([1.0, 0.5, -1.0, 0.25]).repeat(5)
    ops = activity.synaptic_ops(fc, x)
    assert torch.equal(ops, (x != 0).sum(-1) * 7)


def test_vgg9_ann_macs_at_32x32():
    model = build_model("vgg9", num_steps=1, img_size=32, in_channels=3, num_cls=10)
    rows = activity.ann_macs(model, (3, 32, 32))
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7",
                                          "fc1", "fc2"]
    expected = (3 * 9 * 64 * 32 * 32  # conv1:        1,769,472
                + 64 * 9 * 64 * 32 * 32  # conv2:    37,748,736
                + 64 * 9 * 128 * 16 * 16  # conv3:   18,874,368
                + 128 * 9 * 128 * 16 * 16  # conv4:  37,748,736
                + 128 * 9 * 256 * 8 * 8  # conv5:    18,874,368
                + 2 * 256 * 9 * 256 * 8 * 8  # conv6, conv7: 2 x 37,748,736
                + 256 * 4 * 4 * 1024  # fc1:          4,194,304
                + 1024 * 10)  # fc2:                     10,240
    assert expected == 194_717_696
    assert sum(r["macs"] for r in rows) == expected


def _loader(images, labels, batch):
    return [(images[i:i + batch], labels[i:i + batch]) for i in range(0, len(images), batch)]


def test_rates_of_a_layer_that_always_fires():
    steps, size = 2, 16
    model = build_model("vgg9", num_steps=steps, img_size=size, in_channels=1, num_cls=10).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.zero_()
        # conv1 gives 0, so BNTT gives gamma * (0 - running_mean) / sqrt(1 + eps) ~ 10 > threshold:
        # every neuron of layer 1 fires at every step; every later layer gets 0 and never fires.
        model.bntt1.weight.fill_(10.0)
        model.bntt1.running_mean.fill_(-1.0)
    g = torch.Generator().manual_seed(0)
    images = torch.where(torch.rand(64, 1, size, size, generator=g) < 0.5, -1.0, 1.0).double()
    labels = torch.randint(0, 10, (64,), generator=g)
    result = activity.activity_pass(model, _loader(images, labels, 32), torch.device("cpu"))
    report = activity.build_report(model, result, 0.9, 4.6, [0.5])

    rates = {r["layer"]: r for r in report["rates"]["layers"]}
    assert list(rates) == ["input", "bntt1", "bntt2", "bntt3", "bntt4", "bntt5", "bntt6", "bntt7", "bntt_fc"]
    assert rates["bntt1"]["per_step"] == [1.0, 1.0] and rates["bntt1"]["spikes_per_neuron"] == 2.0
    assert all(r["per_step"] == [0.0, 0.0] for name, r in rates.items() if name not in ("input", "bntt1"))
    # |x| = 1 fires with probability 1/2 (Eq. 1); 64 x 256 inputs per step: std 0.003
    for rate in rates["input"]["per_step"]:
        assert rate == pytest.approx(0.5, abs=0.015)
    assert report["rates"]["network"]["spikes_per_image"] == 64 * size * size * steps

    energy = {r["layer"]: r for r in report["energy"]["layers"]}
    # conv2 sees every spike of layer 1: 64 x 64 channels, (3H - 2)(3W - 2) covered positions
    assert energy["conv2"]["snn_ops_per_image"] == steps * 64 * 64 * (3 * size - 2) ** 2
    assert energy["conv2"]["inputs_from"] == "bntt1" and energy["conv3"]["inputs_from"] == "bntt2 pooled"
    assert all(energy[n]["snn_ops_per_image"] == 0 for n in ("conv3", "conv4", "conv7", "fc1", "fc2"))
    # conv1 on the input spikes, recounted from the same draws
    gen = torch.Generator().manual_seed(0)
    conv1 = sum(activity.synaptic_ops(model.conv1, model.encode(x, gen)).sum().item()
                for x, _ in _loader(images, labels, 32))
    assert energy["conv1"]["snn_ops_per_image"] == conv1 / 64 and energy["conv1"]["snn_op"] == "AC"
    total = report["energy"]["total"]
    assert total["snn_energy_pj"] == pytest.approx(0.9 * (conv1 / 64 + energy["conv2"]["snn_ops_per_image"]))
    assert total["snn_mac_per_image"] == 0


def test_energy_time_curve_and_accuracy():
    model = small_model("vgg9", 4, torch.float64, img_size=16, engine="multistep", in_channels=1).eval()
    g = torch.Generator().manual_seed(5)
    images = torch.randn(20, 1, 16, 16, generator=g, dtype=torch.float64) * 1.5
    labels = torch.randint(0, 10, (20,), generator=g)
    loader = _loader(images, labels, 8)
    result = activity.activity_pass(model, loader, torch.device("cpu"), eval_seed=11)
    report = activity.build_report(model, result, 0.9, 4.6, [1e-9, 0.5, 2.0])

    time, total = report["time"], report["energy"]["total"]
    energies = [r["snn_energy_uj"] for r in time]
    assert [r["t"] for r in time] == [1, 2, 3, 4]
    assert all(a <= b for a, b in itertools.pairwise(energies)) and energies[0] > 0
    assert energies[-1] == pytest.approx(total["snn_energy_uj"], rel=1e-12)
    assert time[-1]["snn_ops_per_image"] == pytest.approx(total["snn_ac_per_image"], rel=1e-12)
    # the readout is charged with exactly the spikes of the last hidden layer, one AC per class
    readout, fc_rate = report["energy"]["layers"][-1], report["rates"]["layers"][-1]
    assert readout["layer"] == "fc2" and readout["inputs_from"] == "bntt_fc"
    assert readout["snn_ops_per_image"] == pytest.approx(fc_rate["spikes_per_neuron"] * fc_rate["neurons"] * 10)

    # accuracy after T steps is the model's own on the same draws
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        hits = sum(correct_topk(model(x, generator=gen), y)[0] for x, y in loader)
    assert time[-1]["top1"] == pytest.approx(100.0 * hits / 20)

    # a threshold nobody reaches runs every sample for T steps; the others spend at most that
    never = report["sample_exit"][-1]
    assert never["mean_steps"] == 4 and never["snn_energy_uj"] == pytest.approx(total["snn_energy_uj"])
    for row in report["sample_exit"]:
        top1, mean_steps = early_exit.sample_exit(result.scores.margins, result.scores.correct, row["threshold"])
        assert row["top1"] == pytest.approx(top1) and row["mean_steps"] == pytest.approx(mean_steps)
        assert row["snn_energy_uj"] <= total["snn_energy_uj"] * (1 + 1e-12)


def test_gamma_exit_step_accuracy_and_energy_saved():
    model = small_model("vgg9", 4, torch.float64, img_size=16, engine="multistep", in_channels=1).eval()
    with torch.no_grad():  # every layer's gammas below 0.1 from step 3 on: the rule stops there
        for _, bn in model.bntt_layers():
            bn.weight[2:] = 0.05
    g = torch.Generator().manual_seed(5)
    images = torch.randn(20, 1, 16, 16, generator=g, dtype=torch.float64) * 1.5
    result = activity.activity_pass(model, _loader(images, torch.randint(0, 10, (20,), generator=g), 8),
                                    torch.device("cpu"))
    fires = activity.build_report(model, result, 0.9, 4.6, [0.5], alpha=0.1)
    time, ge = fires["time"], fires["gamma_exit"]
    assert (ge["exit_step"], ge["triggered"], ge["steps_saved"]) == (3, True, 1)
    assert ge["top1_at_exit"] == time[2]["top1"] and ge["top1_full"] == time[3]["top1"]
    assert ge["snn_energy_uj_at_exit"] == time[2]["snn_energy_uj"]
    assert ge["energy_saved_fraction"] == pytest.approx(1 - time[2]["snn_energy_uj"] / time[3]["snn_energy_uj"])
    assert 0 < ge["energy_saved_fraction"] < 1
    stays = activity.build_report(model, result, 0.9, 4.6, [0.5], alpha=0.05)["gamma_exit"]  # strictly below
    assert (stays["exit_step"], stays["triggered"], stays["energy_saved_fraction"]) == (4, False, 0.0)


def test_sequence_network_counts_direct_input_as_macs():
    steps = 4
    model = build_model("fc", num_steps=steps, in_features=5, hidden=(6, 7), num_cls=10,
                        encoder=SequenceEncoder("rows", "direct")).double().eval()
    images = torch.rand(3, 1, steps, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    result = activity.activity_pass(model, [(images, torch.zeros(3, dtype=torch.long))], torch.device("cpu"))
    report = activity.build_report(model, result, 0.9, 4.6, [0.5])
    layers = report["energy"]["layers"]
    assert [r["layer"] for r in layers] == ["fc1", "fc2", "fc_out"]
    assert [r["snn_op"] for r in layers] == ["MAC", "AC", "AC"]
    # intensities are real-valued currents: one MAC per non-zero input per output
    assert layers[0]["snn_ops_per_image"] == pytest.approx((images != 0).sum().item() / 3 * 6)
    assert report["ann_passes"] == steps  # the ANN reads one row per pass too
    assert report["energy"]["total"]["ann_macs_per_image"] == steps * (5 * 6 + 6 * 7 + 7 * 10)
    assert [r["layer"] for r in report["rates"]["layers"]] == ["input", "bntt1", "bntt2"]


@pytest.fixture
def trained_run(tiny_trained_run):
    return tiny_trained_run


@pytest.mark.slow
def test_analyze_activity_end_to_end(trained_run, tmp_path, capsys):
    out = tmp_path / "act"
    # batch 32 as train.py's test loader (2 x 16): the same Poisson draws per image
    code = analyze.cli(["activity", "--checkpoint", str(trained_run), "--test_samples", "20",
                        "--batch_size", "32", "--device", "cpu", "--out_dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "activity.json").read_text())
    for key in ("checkpoint", "eval_seed", "e_ac_pj", "e_mac_pj", "test_images", "conventions", "rates",
                "energy", "time", "sample_exit", "dataset", "arch", "technology"):
        assert key in report
    assert report["test_images"] == 20 and report["eval_seed"] == 0
    assert (report["e_ac_pj"], report["e_mac_pj"]) == (0.9, 4.6)
    assert report["checkpoint"].endswith("last.pt")
    assert {"snn_counted", "snn_not_counted", "ann_counted"} <= set(report["conventions"])
    assert [r["layer"] for r in report["energy"]["layers"]][-1] == "fc2"
    assert report["energy"]["total"]["ann_macs_per_image"] == 194_717_696 - 2 * 9 * 64 * 32 * 32  # 1 channel
    metrics = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["time"][-1]["top1"] == pytest.approx(metrics["test_top1"])
    assert "not counted: BNTT" in printed and "ANN/SNN" in printed
    assert (out / "rates.csv").read_text().splitlines()[0].startswith("layer,neurons,t1,t2,")
    assert (out / "energy_layers.csv").read_text().splitlines()[-1].startswith("total,")
    assert len((out / "energy_time.csv").read_text().splitlines()) == 3
    assert list(out.glob("events.out.tfevents.*"))
    pytest.importorskip("matplotlib")
    assert (out / "rates.png").stat().st_size > 1000 and (out / "energy.png").stat().st_size > 1000


def test_analyze_activity_bad_input(trained_run, tmp_path, capsys):
    def err(argv):
        code = analyze.cli(["activity", *argv])
        msg = capsys.readouterr().err.strip()
        assert len(msg.splitlines()) == 1
        return code, msg

    code, msg = err(["--checkpoint", str(tmp_path / "missing.pt")])
    assert code == 2 and "missing.pt does not exist" in msg
    assert not (tmp_path / "activity").exists()
    for flag, value in (("--e_ac", "0"), ("--e_ac", "-0.9"), ("--e_mac", "nan")):
        code, msg = err(["--checkpoint", str(trained_run), flag, value])
        assert code == 2 and f"{flag} must be a positive number" in msg
    afile = tmp_path / "a_file"
    afile.write_text("")
    code, msg = err(["--checkpoint", str(trained_run), "--out_dir", str(afile), "--test_samples", "4"])
    assert code == 2 and "is a file" in msg


# -- other normalisations and the ANN twin ----------------------------------------------------

# VGG9 on 1 x 32 x 32, by hand: C_in * 3 * 3 * C_out * H * W per conv, in * out per linear layer
VGG9_FMNIST_MACS = {"conv1": 1 * 9 * 64 * 32 * 32, "conv2": 64 * 9 * 64 * 32 * 32,
                    "conv3": 64 * 9 * 128 * 16 * 16, "conv4": 128 * 9 * 128 * 16 * 16,
                    "conv5": 128 * 9 * 256 * 8 * 8, "conv6": 256 * 9 * 256 * 8 * 8,
                    "conv7": 256 * 9 * 256 * 8 * 8, "fc1": 256 * 4 * 4 * 1024, "fc2": 1024 * 10}
VGG9_FMNIST_NEURONS = [1 * 32 * 32, 64 * 32 * 32, 64 * 32 * 32, 128 * 16 * 16, 128 * 16 * 16,
                       256 * 8 * 8, 256 * 8 * 8, 256 * 8 * 8, 1024]  # input first


def tiny_run(folder, arch, norm="bntt"):
    """A freshly built VGG9 (or its ANN twin) for the bundled Fashion-MNIST subset, saved as
    train.py saves a run. Its synapses are scaled up and its normalisations given statistics as
    after training, so that every layer spikes and the norms differ."""
    torch.manual_seed(0)
    model = network(arch, "fashionmnist_subset", 2, norm=norm)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(3.0)
            if getattr(m, "running_var", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    folder.mkdir()
    save_atomic({"state_dict": model.state_dict(),
                 "config": {"arch": arch, "dataset": "fashionmnist_subset", "num_steps": 2,
                            "leak_mem": 0.95, "norm": norm}}, folder / "last.pt")
    return folder


def direct_counts(run, images, batch):
    """Straight from the network's own forward pass (multistep engine, the analysis's Poisson
    draws): per layer (input first) the spikes at each step, and what conv2, fc1 and fc2 receive."""
    trained = load_trained(run)
    model = trained.model.set_engine("multistep")
    spikes, inputs = [], {}

    def count_spikes(module, args, out):
        spikes.append(torch.count_nonzero(out.flatten(2), dim=2).sum(1))

    def keep_input(name):
        def hook(module, args):
            inputs.setdefault(name, []).append(args[0].unflatten(0, (2, -1)))
        return hook

    run = model.neuron.run  # every spiking block's neuron: its spikes before any pool

    def counted_run(z, u=None, membrane=None):
        s, u = run(z, u, membrane)
        count_spikes(None, None, s)
        return s, u

    model.neuron.run = counted_run
    hooks = [getattr(model, n).register_forward_pre_hook(keep_input(n)) for n in ("conv1", "conv2", "fc1", "fc2")]
    g = torch.Generator().manual_seed(0)
    hits = 0
    with torch.no_grad():
        for x, y in scoring_loader(trained, None, batch, images):
            hits += int((model(x, generator=g).argmax(-1) == y).sum())
    for h in hooks:
        h.remove()
    del model.neuron.run
    layers = len(model.blocks) - 1  # the readout has no neuron
    per_layer = [sum(spikes[i::layers]) for i in range(layers)]
    received = {n: torch.cat(v, 1) for n, v in inputs.items()}
    per_layer.insert(0, torch.count_nonzero(received["conv1"].flatten(2), dim=2).sum(1))
    return per_layer, received, hits


@pytest.mark.parametrize("norm", [n for n in NORMS if n != "bntt"])
def test_analyze_activity_of_every_norm(norm, tmp_path, capsys):
    run = tiny_run(tmp_path / norm, "vgg9", norm)
    code = analyze.cli(["activity", "--checkpoint", str(run), "--test_samples", "8", "--batch_size", "8",
                        "--device", "cpu", "--no_plots"])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((run / "activity" / "activity.json").read_text())
    assert (report["kind"], report["norm"], report["test_images"]) == ("snn", norm, 8)

    spikes, received, hits = direct_counts(run, 8, 8)
    rates = report["rates"]["layers"]
    assert [r["layer"] for r in rates] == ["input", "bntt1", "bntt2", "bntt3", "bntt4", "bntt5", "bntt6",
                                           "bntt7", "bntt_fc"]
    assert [r["neurons"] for r in rates] == VGG9_FMNIST_NEURONS
    for r, counted in zip(rates, spikes):
        assert counted.min() > 0, r["layer"]  # every layer fires: the counts below mean something
        assert [rate * 8 * r["neurons"] for rate in r["per_step"]] == pytest.approx(counted.tolist(), abs=1e-6)
    hidden = sum(int(s.sum()) for s in spikes[1:])
    network = report["rates"]["network"]
    assert network["neurons"] == sum(VGG9_FMNIST_NEURONS[1:])
    assert network["spikes_per_image"] == pytest.approx(hidden / 8)
    assert network["mean_rate"] == pytest.approx(hidden / (8 * sum(VGG9_FMNIST_NEURONS[1:]) * 2))
    assert report["time"][-1]["top1"] == pytest.approx(100.0 * hits / 8)

    energy = {r["layer"]: r for r in report["energy"]["layers"]}
    # conv2: every spike of layer 1 reaches 64 channels at each of the 3x3 windows covering it,
    # which a 3x3 all-ones kernel over the map of spike counts sums up
    per_position = (received["conv2"] != 0).sum(2).flatten(0, 1).unsqueeze(1).double()
    covered = F.conv2d(per_position, torch.ones(1, 1, 3, 3, dtype=torch.float64), padding=1).sum().item()
    assert energy["conv2"]["snn_ops_per_image"] * 8 == covered * 64
    assert energy["fc1"]["snn_ops_per_image"] * 8 == torch.count_nonzero(received["fc1"]).item() * 1024
    assert energy["fc2"]["snn_ops_per_image"] * 8 == int(spikes[-1].sum()) * 10 > 0
    assert {k: r["ann_macs_per_image"] for k, r in energy.items()} == VGG9_FMNIST_MACS
    total = report["energy"]["total"]
    assert total["snn_energy_pj"] == pytest.approx(0.9 * sum(r["snn_ops_per_image"] for r in energy.values()))
    assert total["ann_over_snn"] == pytest.approx(4.6 * sum(VGG9_FMNIST_MACS.values()) / total["snn_energy_pj"])
    # no number depends on BNTT's gammas; what the report says it leaves out names this norm
    not_counted = report["conventions"]["snn_not_counted"][0]
    assert "BNTT" not in not_counted and not_counted == activity.NORM_NOT_COUNTED[norm]
    assert "not counted: BNTT" not in printed and "not counted: " in printed


def test_analyze_activity_of_the_ann_twin(tmp_path, capsys):
    run = tiny_run(tmp_path / "ann", "vgg9_ann")
    code = analyze.cli(["activity", "--checkpoint", str(run), "--test_samples", "8", "--batch_size", "4",
                        "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    out = run / "activity"
    report = json.loads((out / "activity.json").read_text())
    assert (report["kind"], report["arch"], report["num_steps"], report["test_images"]) == ("ann", "vgg9_ann", None, 8)
    assert "rates" not in report and "time" not in report and "no spikes" in report["note"]
    layers = report["energy"]["layers"]
    assert {r["layer"]: r["ann_macs_per_image"] for r in layers} == VGG9_FMNIST_MACS
    assert [r["layer"] for r in layers] == list(VGG9_FMNIST_MACS)  # in the order they run
    assert all(r["ann_energy_pj"] == r["ann_macs_per_image"] * 4.6 for r in layers)
    total = report["energy"]["total"]
    assert total["ann_macs_per_image"] == 193_538_048 == sum(VGG9_FMNIST_MACS.values())
    assert total["ann_energy_uj"] == pytest.approx(193_538_048 * 4.6e-6)
    # the ANN side of an SNN's report is the same count, layer by layer
    snn = network("vgg9", "fashionmnist_subset", 2)
    assert [(r["layer"], r["macs"]) for r in activity.ann_macs(snn, (1, 32, 32))] == \
        [(r["layer"], r["ann_macs_per_image"]) for r in layers]

    trained = load_trained(run)
    with torch.no_grad():
        hits = sum(int((trained.model(x).argmax(-1) == y).sum()) for x, y in scoring_loader(trained, None, 4, 8))
    assert report["top1"] == pytest.approx(100.0 * hits / 8)
    assert "no time steps and no spikes" in printed and "E_MAC = 4.6 pJ" in printed
    assert (out / "energy_layers.csv").read_text().splitlines()[-1].startswith("total,,193538048,")
    assert list(out.glob("events.out.tfevents.*")) and not list(out.glob("*.png"))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("events.")) == \
        ["activity.json", "energy_layers.csv"]


def test_check_out_dir_creates_nothing(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    check_out_dir(tmp_path)
    check_out_dir(tmp_path / "a" / "b" / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dangling"]
    for path, message in ((tmp_path / "afile", "is a file, not a folder"),
                          (tmp_path / "afile" / "out", "afile is not a folder"),
                          (tmp_path / "afile" / "a" / "b", "afile is not a folder"),
                          (tmp_path / "dangling" / "out", "dangling is not a folder")):
        with pytest.raises(UsageError, match=message):
            check_out_dir(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_check_out_dir_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(UsageError, match="locked is not writable"):
        check_out_dir(locked / "out")
    with pytest.raises(UsageError, match="cannot write into the output folder .*locked is not writable"):
        check_out_dir(locked)


def test_report_writes_whole_files_and_lists_them(tmp_path, capsys):
    out = tmp_path / "a" / "report"
    report = Report(out, plots=False)
    assert not (tmp_path / "a").exists()  # made only to write
    report.json("r.json", {"ratio": math.inf, "rates": [0.5, math.nan], "name": "bntt1"})
    report.csv("r.csv", [{"layer": "bntt1", "rate": 0.25}, {"layer": "bntt2", "rate": 0.5}])
    report.csv("empty.csv", [])
    report.events.scalar("activity/top1", 12.5, 3)
    assert report.pyplot() is None  # plots off
    assert report.write() == ["r.json", "r.csv", "empty.csv"]
    assert capsys.readouterr().out == f"\nwrote r.json, r.csv, empty.csv and TensorBoard events to {out}\n"
    # JSON has no infinity or NaN: a strict reader gets null
    assert json.loads((out / "r.json").read_text(), parse_constant=pytest.fail) == \
        {"ratio": None, "rates": [0.5, None], "name": "bntt1"}
    assert (out / "r.csv").read_bytes() == b"layer,rate\r\nbntt1,0.25\r\nbntt2,0.5\r\n"
    assert (out / "empty.csv").read_bytes() == b""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (events,) = out.glob("events.out.tfevents.*")
    logged = EventAccumulator(str(events)).Reload()
    assert [(e.step, e.value) for e in logged.Scalars("activity/top1")] == [(3, 12.5)]


def test_report_figures_are_written_with_the_files(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    report = Report(tmp_path, plots=True)
    plt = report.pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    report.figure("f.png", fig)
    assert not plt.get_fignums() and not list(tmp_path.iterdir())  # closed, nothing written yet
    report.csv("t.csv", [{"a": 1}])
    assert report.write() == ["t.csv", "f.png"]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_in_a_bad_folder_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for out, message in ((tmp_path / "afile", f"--out_dir {tmp_path / 'afile'} is a file, not a folder"),
                         (tmp_path / "afile" / "out", f"cannot create the output folder {tmp_path / 'afile' / 'out'}: "
                                                      f"{tmp_path / 'afile'} is not a folder")):
        with pytest.raises(UsageError) as err:
            Report(out)
        assert str(err.value) == message
    # a file that cannot be written (a folder in its place; a full disk is the same OSError):
    # one line naming it; the files before it are whole, none after it and no events are written
    out = tmp_path / "out"
    (out / "b.csv").mkdir(parents=True)
    report = Report(out)
    report.json("a.json", {"x": 1})
    report.csv("b.csv", [{"x": 1}])
    report.csv("c.csv", [{"x": 2}])
    report.events.scalar("x", 1.0, 0)
    with pytest.raises(WriteError) as err:
        report.write()
    assert str(err.value).startswith(f"cannot write {out / 'b.csv'} (")
    assert str(err.value).endswith("; the files written before it are whole")
    assert len(str(err.value).splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.csv"]  # no c.csv, events, temporaries
    assert json.loads((out / "a.json").read_text()) == {"x": 1}
    assert capsys.readouterr().out == ""  # no list of files that were not written


def test_analyze_activity_failure_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BNTT_OFFLINE", "1")  # a missing file is never fetched
    run = tiny_run(tmp_path / "r", "vgg9", "bn")

    def err(*argv):
        code = analyze.cli(["activity", "--checkpoint", str(run), "--test_samples", "4", "--device", "cpu",
                            *argv])
        captured = capsys.readouterr()
        assert len(captured.err.strip().splitlines()) == 1, captured.err
        return code, captured.err.strip(), captured.out

    # damaged data, found after the checkpoint is read: nothing is written
    write_fashion_mnist(tmp_path / "data")
    (tmp_path / "data" / "t10k-images-idx3-ubyte.gz").write_bytes(b"not a gzip file")
    code, msg, _ = err("--dataset", "fashionmnist", "--data_dir", str(tmp_path / "data"))
    assert code == 2 and "t10k-images-idx3-ubyte.gz cannot be read" in msg
    assert sorted(p.name for p in run.iterdir()) == ["last.pt"]
    # an output folder under a file: no pass over the test set, no report printed
    (tmp_path / "afile").write_text("")
    code, msg, out = err("--out_dir", str(tmp_path / "afile" / "out"))
    assert code == 2 and out == ""
    assert msg == (f"analyze.py: error: cannot create the output folder {tmp_path / 'afile' / 'out'}: "
                   f"{tmp_path / 'afile'} is not a folder")
    assert sorted(p.name for p in run.iterdir()) == ["last.pt"]
