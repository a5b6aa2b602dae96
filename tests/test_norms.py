"""The normalisation ablation (--norm): each normalisation against a plain float64 statement of
its equations, forward and backward; runs record their norm and the evaluator says the gamma
rule is BNTT's alone. Every backend agrees with the reference for each norm:
tests/test_equivalence.py."""
import json

import pytest
import torch

import evaluate
import train
from bntt.models import build_model
from bntt.norms import NoNorm, SharedBN, TDBN
from helpers import tiny_args

EPS, MOMENTUM = 1e-4, 0.1


def stack(seed, shape=(3, 5, 4, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.float64, generator=g) * 1.7 + 0.4


def gradients(fn, z, seed=9):
    z = z.clone().requires_grad_()
    y = fn(z)
    weights = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(seed))
    (y * weights).sum().backward()
    return y.detach(), z.grad


def set_params(norm, seed=4):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=g, dtype=torch.float64) + 0.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g, dtype=torch.float64))
        norm.running_mean.copy_(torch.randn(norm.running_mean.shape, generator=g, dtype=torch.float64))
        norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=g, dtype=torch.float64) + 0.5)
    return norm


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_shared_bn_is_one_batchnorm_reused_at_every_step(training):
    z = stack(0)
    bn = set_params(SharedBN(4, 3).double()).train(training)
    gamma, mean0, var0 = bn.weight.detach().clone(), bn.running_mean.clone(), bn.running_var.clone()

    def plain(z):
        out, mean, var = [], mean0.clone(), var0.clone()
        for z_t in z.unbind(0):
            if training:  # this step's batch statistics, one running update per step
                mu = z_t.mean(dim=(0, 2, 3))
                sigma2 = z_t.var(dim=(0, 2, 3), unbiased=False)
                n = z_t.numel() // z_t.shape[1]
                mean = (1 - MOMENTUM) * mean + MOMENTUM * mu.detach()
                var = (1 - MOMENTUM) * var + MOMENTUM * sigma2.detach() * n / (n - 1)
            else:
                mu, sigma2 = mean0, var0
            out.append(gamma.view(1, -1, 1, 1) * (z_t - mu.view(1, -1, 1, 1))
                       / torch.sqrt(sigma2.view(1, -1, 1, 1) + EPS))
        plain.stats = (mean, var)
        return torch.stack(out)

    y_ref, dz_ref = gradients(plain, z)
    y, dz = gradients(bn, z)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dz, dz_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn.running_mean, plain.stats[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, plain.stats[1], rtol=1e-12, atol=1e-12)
    assert int(bn.num_batches_tracked) == (3 if training else 0)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_tdbn_normalises_over_time_batch_and_space_together(training):
    z = stack(1)
    bn = set_params(TDBN(4, 3, alpha=0.7).double()).train(training)
    gamma, beta = bn.weight.detach().clone(), bn.bias.detach().clone()
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()

    def plain(z):
        if training:
            mu = z.mean(dim=(0, 1, 3, 4))
            sigma2 = z.var(dim=(0, 1, 3, 4), unbiased=False)
            n = z.numel() // z.shape[2]
            plain.stats = ((1 - MOMENTUM) * mean0 + MOMENTUM * mu.detach(),
                           (1 - MOMENTUM) * var0 + MOMENTUM * sigma2.detach() * n / (n - 1))
        else:
            mu, sigma2 = mean0, var0
            plain.stats = (mean0, var0)
        shape = (1, 1, -1, 1, 1)
        x_hat = (z - mu.view(shape)) / torch.sqrt(sigma2.view(shape) + EPS)
        return gamma.view(shape) * 0.7 * 1.0 * x_hat + beta.view(shape)  # alpha * threshold

    y_ref, dz_ref = gradients(plain, z)
    y, dz = gradients(bn, z)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dz, dz_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn.running_mean, plain.stats[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, plain.stats[1], rtol=1e-12, atol=1e-12)


def test_tdbn_refuses_step_by_step_training_and_no_norm_is_the_identity():
    with pytest.raises(RuntimeError, match="normalises over all time steps at once"):
        TDBN(4, 3).train()(torch.randn(5, 4, 3, 3), 0)
    with pytest.raises(RuntimeError, match="normalises over all time steps at once"):
        TDBN(4, 3).train()(torch.randn(1, 5, 4, 3, 3), first_step=1)  # a stack of later steps
    z = stack(2)
    y, dz = gradients(NoNorm(4, 3), z)
    assert torch.equal(y, z) and torch.equal(dz, torch.randn(z.shape, dtype=z.dtype,
                                                             generator=torch.Generator().manual_seed(9)))


def small(norm, steps=3, seed=0):
    torch.manual_seed(seed)
    model = build_model("vgg9", num_steps=steps, img_size=16, norm=norm).double()
    for _, module in model.named_modules():
        if isinstance(module, (SharedBN, TDBN)):
            set_params(module, seed + 2)
    return model


def test_tdbn_trains_on_the_multistep_engine_as_its_equations_say():
    model = small("tdbn").train()
    model.engine = "multistep"
    spikes = torch.sign(torch.randn(3, 4, 3, 16, 16, dtype=torch.float64))
    out = model.forward_spikes(spikes)
    out.sum().backward()
    assert model.bntt1.weight.grad.abs().max() > 0 and int(model.bntt1.num_batches_tracked) == 1


TINY = tiny_args(batch_size=16, train_samples=32, test_samples=20, num_epochs=1)


def test_a_run_records_its_norm_and_the_evaluator_keeps_the_gamma_rule_to_bntt(tmp_path, capsys):
    assert train.cli([*TINY, "--norm", "bn", "--out_dir", str(tmp_path), "--run_name", "bn"]) == 0
    ckpt = torch.load(tmp_path / "bn" / "last.pt", weights_only=True)
    assert ckpt["config"]["norm"] == "bn" and ckpt["state_dict"]["bntt1.weight"].shape == (64,)
    capsys.readouterr()
    code = evaluate.cli(["--checkpoint", str(tmp_path / "bn"), "--out_dir", str(tmp_path / "ee"),
                         "--test_samples", "20", "--batch_size", "32"])
    out = capsys.readouterr().out
    assert code == 0
    assert "gamma exit: not applicable (the gamma rule applies to BNTT only; this network uses norm bn)" in out
    report = json.loads((tmp_path / "ee" / "early_exit.json").read_text())
    assert report["gamma"] == [] and not report["gamma_exit"]["applicable"]
    assert len(report["per_step"]) == 2  # the accuracy after t steps works for every norm
    assert not (tmp_path / "ee" / "gamma.png").exists()


def test_tdbn_with_the_reference_engine_is_one_line(tmp_path, capsys):
    code = train.cli([*TINY, "--norm", "tdbn", "--engine", "reference", "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train it with --engine multistep" in err and len(err.splitlines()) == 1
