"""Attacks in pixel space (bntt/analysis/attacks.py) on tiny networks, and `analyze.py
robustness` end to end on a tiny trained SNN and a hand-saved ANN."""
import csv
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import analyze
import train
from bntt.analysis import attacks
from bntt.ann import ANN_VGG9
from bntt.coding import FrameEncoder, poisson_spikes
from bntt.models import POOL, SpikingVGG, build_model
from helpers import needs_triton_interpreter, randomize_bntt

MEAN, STD = (0.2190,), (0.3318,)  # Fashion-MNIST's
NORMALISE = attacks.normaliser(MEAN, STD)


def tiny_snn():
    torch.manual_seed(0)
    model = build_model("vgg9", num_steps=2, img_size=16, in_channels=1)
    return randomize_bntt(model, torch.Generator().manual_seed(1)).eval()


def shallow_snn():
    # In a random 8-layer VGG9 at T <= 4 the surrogate gradient says next to nothing about the
    # loss (FGSM does no better than a random sign of the same size), so the test that FGSM
    # finds a worse input uses two spiking conv blocks, where it does clearly better.
    torch.manual_seed(0)
    model = SpikingVGG([16, POOL, 32, POOL], 32, num_steps=2, img_size=16, in_channels=1)
    return randomize_bntt(model, torch.Generator().manual_seed(1)).eval()


def tiny_ann():
    torch.manual_seed(0)
    model = ANN_VGG9(num_cls=10, in_channels=1, img_size=16)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # running statistics and affine parameters as after training
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def batches(n=4, size=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, 1, 16, 16, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]


def logits_fn(kind, model, seed):
    """The network as a function of pixels; for the SNN, Poisson draws from `seed`."""
    if kind == "ann":
        return attacks.ann_logits_fn(model, NORMALISE)
    return attacks.snn_logits_fn(model, NORMALISE, torch.Generator().manual_seed(seed))


def loss(kind, model, pixels, labels, seed=7):
    with torch.no_grad():
        return F.cross_entropy(logits_fn(kind, model, seed)(pixels), labels).item()


# -- the pieces ------------------------------------------------------------------------------

def test_straight_through_coder_on_hand_values():
    x = torch.tensor([-3.0, -2.0, -1.99, -0.5, 0.0, 0.5, 1.99, 2.0, 3.0], requires_grad=True)
    spikes = attacks.poisson_spikes_st(x, 3, torch.Generator().manual_seed(4))
    # the forward pass is the coder itself, draw for draw
    assert torch.equal(spikes, poisson_spikes(x.detach(), 3, torch.Generator().manual_seed(4)))
    weights = torch.tensor([1.0, 2.0, -0.5]).view(3, 1)  # a different upstream gradient per step
    (spikes * weights).sum().backward()
    inside = torch.tensor([0, 0, 1, 1, 1, 1, 1, 0, 0], dtype=torch.float32)
    # d E[s_t] / dx = 1/2 inside |x| < 2, 0 outside, at every step
    assert torch.equal(x.grad, 0.5 * inside * weights.sum())


def test_pixel_space_round_trip():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pixels = torch.rand(2, 3, 4, 4)
    images = attacks.normaliser(mean, std)(pixels)
    assert torch.allclose(images[:, 1], (pixels[:, 1] - 0.4) / 0.25)
    assert torch.allclose(attacks.to_pixels(images, mean, std), pixels, atol=1e-6)
    assert attacks.to_pixels(torch.full((1, 3, 1, 1), 100.0), mean, std).max() == 1.0


def test_gaussian_noise():
    pixels = torch.rand(4, 1, 8, 8)
    assert torch.equal(attacks.gaussian_noise(pixels, 0.0, torch.Generator().manual_seed(0)), pixels)
    noisy = attacks.gaussian_noise(pixels, 0.1, torch.Generator().manual_seed(0))
    z = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, (pixels + 0.1 * z).clamp(0, 1))
    loud = attacks.gaussian_noise(pixels, 5.0, torch.Generator().manual_seed(0))
    assert loud.min() == 0.0 and loud.max() == 1.0 and ((loud == 0) | (loud == 1)).float().mean() > 0.8


@pytest.mark.parametrize("kind", ["ann", "snn"])
def test_fgsm_raises_the_loss_on_every_batch(kind):
    model = tiny_ann() if kind == "ann" else shallow_snn()
    for i, (pixels, labels) in enumerate(batches()):
        for eps in (8 / 255, 32 / 255):
            # the attacker's Poisson draws (seed 99) are not those it is scored with (seed 7);
            # clean and attacked images are scored with the same draws (paired)
            adv = attacks.fgsm(logits_fn(kind, model, 99), pixels, labels, eps)
            assert loss(kind, model, adv, labels) > loss(kind, model, pixels, labels), (i, eps)


def test_fgsm_beats_a_random_sign_on_the_snn():
    model, gain_fgsm, gain_random = shallow_snn(), 0.0, 0.0
    for i, (pixels, labels) in enumerate(batches()):
        eps = 16 / 255
        clean = loss("snn", model, pixels, labels)
        adv = attacks.fgsm(logits_fn("snn", model, 99), pixels, labels, eps)
        noise = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(i)).sign()
        gain_fgsm += loss("snn", model, adv, labels) - clean
        gain_random += loss("snn", model, (pixels + eps * noise).clamp(0, 1), labels) - clean
    assert gain_fgsm > 0.2 and gain_fgsm > 3 * max(gain_random, 0.0)


@pytest.mark.parametrize("kind", ["ann", "snn"])
def test_pgd_one_step_of_eps_is_fgsm_to_the_bit(kind):
    model = tiny_ann() if kind == "ann" else tiny_snn()
    pixels, labels = batches(1)[0]
    eps = 8 / 255
    adv_fgsm = attacks.fgsm(logits_fn(kind, model, 99), pixels, labels, eps)
    adv_pgd = attacks.pgd(logits_fn(kind, model, 99), pixels, labels, eps, steps=1, step_size=eps)
    assert torch.equal(adv_fgsm, adv_pgd)
    assert not torch.equal(adv_fgsm, pixels)


@pytest.mark.parametrize("kind", ["ann", "snn"])
def test_eps_zero_changes_nothing(kind):
    model = tiny_ann() if kind == "ann" else tiny_snn()
    pixels, labels = batches(1)[0]
    for adv in (attacks.fgsm(logits_fn(kind, model, 99), pixels, labels, 0.0),
                attacks.pgd(logits_fn(kind, model, 99), pixels, labels, 0.0, 3, 2 / 255,
                            random_start=True, generator=torch.Generator().manual_seed(5))):
        assert torch.equal(adv, pixels)
        with torch.no_grad():
            assert torch.equal(logits_fn(kind, model, 7)(adv).argmax(-1),
                               logits_fn(kind, model, 7)(pixels).argmax(-1))


@pytest.mark.parametrize("kind", ["ann", "snn"])
def test_perturbations_stay_in_the_ball_and_in_the_image(kind):
    model = tiny_ann() if kind == "ann" else tiny_snn()
    pixels, labels = batches(1, size=8)[0]
    pixels[:, :, :4] = 0.0  # pixels at the edges of [0, 1], where clipping matters
    pixels[:, :, 4:8] = 1.0
    eps = 16 / 255
    for adv in (attacks.fgsm(logits_fn(kind, model, 99), pixels, labels, eps),
                attacks.pgd(logits_fn(kind, model, 99), pixels, labels, eps, 4, 6 / 255),
                attacks.pgd(logits_fn(kind, model, 99), pixels, labels, eps, 3, 6 / 255,
                            random_start=True, generator=torch.Generator().manual_seed(5))):
        assert (adv - pixels).abs().max() <= eps + 1e-6
        assert adv.min() >= 0.0 and adv.max() <= 1.0
        assert not adv.requires_grad


def test_snn_input_gradient_is_the_chain_rule_through_the_coder():
    model = tiny_snn().double()
    pixels, labels = batches(1, size=4)[0]
    pixels = pixels.double()
    grad = attacks.input_gradient(logits_fn("snn", model, 3), pixels, labels)
    # by hand: the same draws, the gradient with respect to the spikes, then the coder's 1/2
    # inside |x| < 2 and the normalisation's 1/std
    x = NORMALISE(pixels)
    spikes = poisson_spikes(x, 2, torch.Generator().manual_seed(3)).requires_grad_(True)
    F.cross_entropy(model.forward_spikes(spikes), labels, reduction="sum").backward()
    expected = spikes.grad.sum(0) * 0.5 * (x.abs() < 2) / STD[0]
    assert torch.allclose(grad, expected, rtol=1e-12, atol=0)
    assert (grad != 0).any()


@pytest.mark.parametrize("engine", ["reference", pytest.param("fused", marks=needs_triton_interpreter)])
def test_input_gradient_is_the_same_with_every_engine(engine):
    # what an attack sees does not depend on how the time loop runs (the fused kernels'
    # eval-mode backward included: on CUDA, `auto` picks them)
    pixels, labels = batches(1, size=2)[0]
    model = tiny_snn().set_engine("multistep")
    expected = attacks.input_gradient(logits_fn("snn", model, 3), pixels, labels)
    model.set_engine(engine)
    grad = attacks.input_gradient(logits_fn("snn", model, 3), pixels, labels)
    scale = expected.abs().max()
    assert scale > 0 and torch.allclose(grad, expected, rtol=1e-4, atol=1e-5 * scale)


def test_eot_averages_the_gradient_over_poisson_draws():
    model = tiny_snn().double()
    pixels, labels = batches(1, size=4)[0]
    pixels = pixels.double()
    averaged = attacks.input_gradient(logits_fn("snn", model, 3), pixels, labels, eot_samples=3)
    shared = logits_fn("snn", model, 3)  # one generator: three consecutive draws
    singles = [attacks.input_gradient(shared, pixels, labels) for _ in range(3)]
    assert torch.allclose(averaged, sum(singles) / 3, rtol=1e-12, atol=0)
    assert not torch.equal(singles[0], singles[1])


def test_attacks_run_in_eval_mode():
    model = tiny_snn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pixels, labels = batches(1, size=4)[0]
    attacks.pgd(logits_fn("snn", model, 1), pixels, labels, 8 / 255, 2, 4 / 255)
    assert not model.training  # the builder put it in eval mode: running statistics are used
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_snn_attacks_need_poisson_images():
    model = SpikingVGG([8, POOL], 16, num_steps=2, img_size=16, in_channels=2, encoder=FrameEncoder())
    with pytest.raises(ValueError, match="Poisson-coded image input"):
        attacks.snn_logits_fn(model, NORMALISE)


def test_bad_attack_arguments():
    model = tiny_ann()
    pixels, labels = batches(1, size=2)[0]
    with pytest.raises(ValueError, match="steps must be >= 1"):
        attacks.pgd(logits_fn("ann", model, 0), pixels, labels, 0.1, 0, 0.1)
    with pytest.raises(ValueError, match="eot_samples must be >= 1"):
        attacks.fgsm(logits_fn("ann", model, 0), pixels, labels, 0.1, eot_samples=0)


# -- analyze.py robustness -------------------------------------------------------------------

@pytest.fixture(scope="module")
def snn_run(tiny_trained_run):
    return tiny_trained_run


@pytest.fixture(scope="module")
def ann_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    ann = ANN_VGG9(num_cls=10, in_channels=1, img_size=32)
    path = tmp_path_factory.mktemp("ann") / "ann.pt"
    torch.save({"state_dict": ann.state_dict(),
                "config": {"arch": "vgg9_ann", "dataset": "fashionmnist_subset", "data_dir": "./data"}},
               path)
    return path


SMALL = ["--sigmas", "0", "0.1", "--eps", "0", "8", "--pgd_steps", "2", "--noise_draws", "2",
         "--test_samples", "20", "--batch_size", "8", "--device", "cpu", "--no_plots"]


def check_report(out, keys):
    report = json.loads((out / "robustness.json").read_text())
    assert report["settings_are_ours"] is True and "not known" in report["note"]
    assert report["dataset"] == "fashionmnist_subset" and report["test_images"] == 20
    assert set(report["networks"]) == set(keys)
    for key in keys:
        net = report["networks"][key]
        for name in ("fgsm", "pgd"):
            assert [r["eps"] for r in net[name]] == [0, 8]
            assert net[name][0]["top1"] == net["clean_top1"]  # eps 0 is the clean image
            assert net[name][0]["loss"] == net["clean_loss"]
            if key == "ann":  # a deterministic network: the gradient step cannot miss
                assert net[name][1]["loss"] > net["clean_loss"]
        assert [r["sigma"] for r in net["noise"]] == [0, 0.1]
        # sigma 0, draw 0: the clean images with the clean Poisson draws
        assert net["noise"][0]["top1_per_draw"][0] == net["clean_top1"]
        assert len(net["noise"][1]["top1_per_draw"]) == 2
    rows = list(csv.DictReader((out / "robustness.csv").open()))
    assert [(r["perturbation"], float(r["strength"])) for r in rows] == [
        ("clean", 0), ("noise", 0), ("noise", 0.1), ("fgsm", 0), ("fgsm", 8), ("pgd", 0), ("pgd", 8)]
    assert all(f"{key}_top1" in rows[0] for key in keys)
    assert list(out.glob("events.out.tfevents.*"))
    return report


@pytest.fixture(scope="module")
def snn_alone(snn_run):
    code = analyze.cli(["robustness", "--snn", str(snn_run), *SMALL])
    assert code == 0
    return snn_run / "robustness"  # the default: the run folder's


@pytest.fixture(scope="module")
def ann_alone(ann_checkpoint):
    assert analyze.cli(["robustness", "--ann", str(ann_checkpoint), *SMALL]) == 0
    return ann_checkpoint.parent / "robustness"  # the default: the checkpoint's folder


@pytest.mark.slow
def test_robustness_snn_end_to_end(snn_alone):
    report = check_report(snn_alone, ["snn"])
    assert report["networks"]["snn"]["num_steps"] == 2 and report["networks"]["snn"]["arch"] == "vgg9"
    assert not (snn_alone / "robustness.png").exists()


def test_robustness_ann_end_to_end(ann_alone):
    report = check_report(ann_alone, ["ann"])
    assert report["networks"]["ann"]["num_steps"] == 1
    assert report["networks"]["ann"]["arch"] == "vgg9_ann"


@pytest.mark.slow
def test_robustness_side_by_side(snn_run, ann_checkpoint, snn_alone, ann_alone, tmp_path, capsys):
    out = tmp_path / "both"
    code = analyze.cli(["robustness", "--snn", str(snn_run), "--ann", str(ann_checkpoint),
                        "--out_dir", str(out), *SMALL[:-1]])  # with the figure
    printed = capsys.readouterr().out
    assert code == 0
    both = check_report(out, ["snn", "ann"])
    # the same seeds give the same numbers, alone or side by side
    for key, alone in (("snn", snn_alone), ("ann", ann_alone)):
        report = json.loads((alone / "robustness.json").read_text())
        assert both["networks"][key] == report["networks"][key]
    assert "settings are ours" in printed and "eps=8/255" in printed and "SNN      ANN" in printed
    pytest.importorskip("matplotlib")
    assert (out / "robustness.png").stat().st_size > 1000


def test_robustness_bad_input(snn_run, ann_checkpoint, tmp_path, capsys):
    def err(*argv):
        code = analyze.cli(["robustness", *argv])
        message = capsys.readouterr().err.strip()
        assert len(message.splitlines()) == 1, message
        return code, message

    snn = ["--snn", str(snn_run)]
    assert err() == (2, "analyze.py: error: give --snn, --ann or both")
    code, msg = err(*snn, "--eps", "-1")
    assert code == 2 and "--eps must be non-negative numbers, got -1.0" in msg
    code, msg = err(*snn, "--sigmas", "0", "-0.1")
    assert code == 2 and "--sigmas must be non-negative" in msg
    code, msg = err(*snn, "--pgd_steps", "0")
    assert code == 2 and "--pgd_steps must be >= 1" in msg
    code, msg = err(*snn, "--eot", "0")
    assert code == 2 and "--eot must be >= 1" in msg
    code, msg = err(*snn, "--pgd_step_size", "0")
    assert code == 2 and "--pgd_step_size must be a positive number" in msg
    code, msg = err("--snn", str(tmp_path / "missing.pt"))
    assert code == 2 and "missing.pt does not exist" in msg
    code, msg = err("--snn", str(ann_checkpoint))
    assert code == 2 and "is an ANN checkpoint: pass it with --ann" in msg
    code, msg = err("--ann", str(snn_run))
    assert code == 2 and "is not an ANN checkpoint" in msg
    cifar = tmp_path / "cifar_ann.pt"
    torch.save({"state_dict": ANN_VGG9(num_cls=10, in_channels=3).state_dict(),
                "config": {"arch": "vgg9_ann", "dataset": "cifar10"}}, cifar)
    code, msg = err(*snn, "--ann", str(cifar))
    assert code == 2 and "compare networks of one dataset" in msg
    (tmp_path / "file").write_text("")
    code, msg = err(*snn, "--out_dir", str(tmp_path / "file"))
    assert code == 2 and "is a file, not a folder" in msg


def test_robustness_out_dir_that_cannot_be_made_fails_before_the_pass(snn_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "out"  # no user, root included, can create a folder under a file
    code = analyze.cli(["robustness", "--snn", str(snn_run), "--out_dir", str(out), *SMALL])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""  # no table printed: no network was attacked
    assert captured.err.strip() == (f"analyze.py: error: cannot create the output folder {out}: "
                                    f"{tmp_path / 'afile'} is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
