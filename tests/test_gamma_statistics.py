"""The gamma analysis of training: --no-gamma_decay, --weight_decay, the per-step gradient
statistic of BNTT's gammas and their means through training (docs/early-exit/README.md)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import train
from bntt import paper, seeding
from bntt.bntt import BNTT
from bntt.config import Config
from bntt.data.sampling import set_epoch
from bntt.paper import WEIGHT_DECAY
from bntt.training import GammaGradients, prepare_run, train_epoch
from helpers import TINY_RUN, reproduce_script, tiny_args

ONE_BATCH = {**TINY_RUN, "train_samples": 32, "test_samples": 8, "num_epochs": 1}


def one_sgd_step_of_zero_gradient(run):
    """Parameters after one SGD step whose loss gradient is zero: only weight decay moves them."""
    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    for p in run.model.parameters():
        p.grad = torch.zeros_like(p)
    run.optimizer.step()
    return before, dict(run.model.named_parameters())


@pytest.mark.parametrize("gamma_decay,weight_decay", [(True, WEIGHT_DECAY), (False, WEIGHT_DECAY),
                                                      (True, 5e-4), (False, 5e-4)])
def test_no_gamma_decay_exempts_the_gammas_and_nothing_else(tmp_path, gamma_decay, weight_decay):
    run = prepare_run(Config(**ONE_BATCH, out_dir=str(tmp_path), gamma_decay=gamma_decay,
                             weight_decay=weight_decay), None)
    gammas = {f"{name}.weight" for name, _ in run.model.bntt_layers()}
    assert len(gammas) == 8  # VGG9: seven conv blocks and fc1
    before, after = one_sgd_step_of_zero_gradient(run)
    lr = run.cfg.lr
    for name, p in after.items():
        decays = gamma_decay or name not in gammas
        # first step of momentum SGD: the buffer is the decay term itself, w -= lr * wd * w
        expected = before[name] * (1 - lr * weight_decay) if decays else before[name]
        # decay moves a weight by lr * wd = 1e-5 of itself; float32 rounds at 1e-7
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-12, msg=name)
    assert len(run.optimizer.param_groups) == (1 if gamma_decay else 2)


def test_gamma_gradient_statistic_is_the_mean_and_spread_over_channels_of_the_batch(tmp_path):
    cfg = Config(**ONE_BATCH, out_dir=str(tmp_path))
    row = train_epoch(prepare_run(cfg, None), 0, "epoch 1")
    # the same batch, spikes and weights, by hand
    run = prepare_run(cfg, None)
    set_epoch(run.train_loader, cfg.seed, 0)
    images, labels = next(iter(run.train_loader))
    run.model.train()
    spikes_from = seeding.generator(cfg.seed, 0, seeding.POISSON, device=torch.device("cpu"))
    logits = run.model(images, generator=spikes_from, shard=run.train_loader.batch_sampler.shard(0))
    F.cross_entropy(logits, labels).backward()
    for name, bn in run.model.bntt_layers():
        g = bn.weight.grad.double()  # [T, C]
        mean = g.sum(1) / g.shape[1]
        spread = ((g - mean[:, None]) ** 2).sum(1).div(g.shape[1]).sqrt()
        assert len(row["gamma_grad_mean"][name]) == cfg.num_steps
        torch.testing.assert_close(torch.tensor(row["gamma_grad_mean"][name], dtype=torch.float64),
                                   mean, rtol=1e-5, atol=1e-9, msg=name)
        torch.testing.assert_close(torch.tensor(row["gamma_grad_std"][name], dtype=torch.float64),
                                   spread, rtol=1e-5, atol=1e-9, msg=name)
    assert any(max(map(abs, v)) > 0 for v in row["gamma_grad_mean"].values())


def test_gamma_gradient_statistic_averages_the_batches():
    bn = BNTT(3, num_steps=2)
    stats = GammaGradients([("bntt1", bn)])
    for grad in ([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], [[3.0, 4.0, 5.0], [2.0, 2.0, 8.0]]):
        bn.weight.grad = torch.tensor(grad)
        stats.add()
    row = stats.row()
    assert row["gamma_grad_mean"]["bntt1"] == pytest.approx([3.0, 2.0])  # (2 + 4) / 2, (0 + 4) / 2
    sd = (2 / 3) ** 0.5  # of (1, 2, 3) and of (3, 4, 5); (2, 2, 8) has sqrt(8)
    assert row["gamma_grad_std"]["bntt1"] == pytest.approx([sd, (0 + 8 ** 0.5) / 2])
    assert GammaGradients([]).row() == {}


def test_train_py_logs_the_statistic_and_the_gammas_and_records_the_flags(tmp_path):
    argv = tiny_args(train_samples=32, test_samples=8, num_epochs=1) + [
        "--out_dir", str(tmp_path), "--run_name", "r", "--no-gamma_decay", "--weight_decay", "5e-4"]
    assert train.cli(argv) == 0
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    names = ["bntt1", "bntt2", "bntt3", "bntt4", "bntt5", "bntt6", "bntt7", "bntt_fc"]
    assert sorted(row["gamma_grad_mean"]) == sorted(row["gamma_grad_std"]) == names
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert ckpt["config"]["gamma_decay"] is False and ckpt["config"]["weight_decay"] == 5e-4
    assert [g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]] == [5e-4, 0.0]
    # the gammas the epoch ended with, the ones its checkpoint holds (its one step moved some)
    moved = False
    for name in names:
        steps = len(row["gamma_mean"][name])
        # the authors' layout: one BatchNorm per step, bntt1.<t>.weight
        gamma = torch.stack([ckpt["state_dict"][f"{name}.{t}.weight"] for t in range(steps)])
        torch.testing.assert_close(torch.tensor(row["gamma_mean"][name]), gamma.mean(1))
        moved |= row["gamma_mean"][name] != pytest.approx([1.0] * steps, abs=1e-7)
    assert moved


@pytest.mark.parametrize("weight_decay", [WEIGHT_DECAY, 5e-4])
def test_decay_alone_is_what_the_papers_sgd_makes_of_a_parameter_without_gradient(weight_decay):
    """paper.decay_alone against torch's SGD (paper.sgd, the LR schedule of train.py) stepping a
    float64 parameter of 1 whose gradient is always 0, epoch by epoch; and the rule of thumb."""
    num_epochs, steps = 6, 40  # LR drops after epochs 3, 4 and 5 (0-based)
    param = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
    optimizer = paper.sgd([param], lr=0.3, weight_decay=weight_decay)
    stepped = []
    for epoch in range(num_epochs):
        for group in optimizer.param_groups:
            group["lr"] = paper.lr_at_epoch(0.3, epoch, num_epochs)
        for _ in range(steps):
            param.grad = torch.zeros_like(param)
            optimizer.step()
        stepped.append(param.item())
    assert paper.decay_alone(0.3, num_epochs, steps, weight_decay) == pytest.approx(stepped, rel=1e-12)
    assert stepped[2] < stepped[1] < stepped[0] < 1 and stepped[-1] < stepped[3]
    # about f = lr * wd / (1 - momentum) a step at a fixed lr, once the velocity has built up
    # over the first momentum / (1 - momentum) = 9 steps: 1 to 0.1 in 7,675 + 9 steps at lr 0.3
    # and the paper's decay, 1,535 + 9 at 5e-4; f is first order in lr * wd (the second order
    # takes 0.6% and 3% off at these two)
    f = 0.3 * weight_decay / (1 - paper.SGD_MOMENTUM)
    assert paper.decay_alone(0.3, 100, round(math.log(10) / f) + 9, weight_decay)[0] == \
        pytest.approx(0.1, rel=0.04)
    assert paper.decay_alone(0.3, 100, 195, weight_decay)[:2] == pytest.approx(
        [(1 - f) ** (195 - 9), (1 - f) ** (390 - 9)], rel=1e-3 if weight_decay == WEIGHT_DECAY else 1e-2)


def test_gamma_training_table_reads_the_gammas_against_decay_alone(tmp_path, capsys):
    """scripts/reproduce/gamma_training.py on a hand-written run folder of 2 epochs at T = 2."""
    gamma_training = reproduce_script("gamma_training")
    rows = [{"bntt1": [0.05, 0.5], "bntt_fc": [0.08, 0.02]},   # every layer below 0.1 at t = 1
            {"bntt1": [0.5, 0.05], "bntt_fc": [0.12, 0.02]}]   # at t = 2 only
    for name, gamma_decay in (("decay", True), ("exempt", False)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(
            {"lr": 0.3, "weight_decay": 5e-4, "num_epochs": 2, "batch_size": 16, "num_steps": 2,
             "gamma_decay": gamma_decay}))
        (folder / "metrics.jsonl").write_text("".join(json.dumps(
            {"epoch": e + 1, "lr": 0.3, "train_images": 800, "test_top1": 50.0 + e,
             "gamma_mean": g, "gamma_grad_std": {n: [1e-3, 1e-8] for n in g}}) + "\n"
            for e, g in enumerate(rows)))
    assert gamma_training.main([str(tmp_path / "decay"), str(tmp_path / "exempt")]) == 0
    runs = json.loads((tmp_path / "gamma_training.json").read_text())
    decay, exempt = runs
    assert decay["steps_per_epoch"] == 50
    assert [e["decay_alone"] for e in decay["epochs"]] == pytest.approx(paper.decay_alone(0.3, 2, 50, 5e-4))
    assert [e["decay_alone"] for e in exempt["epochs"]] == [1.0, 1.0]
    assert [(e["exit_step"], e["fires"]) for e in decay["epochs"]] == [(1, True), (2, True)]
    assert decay["epochs"][1]["last_step"] == {"bntt1": 0.05, "bntt_fc": 0.02}
    out = capsys.readouterr().out
    assert "| 1 | 0.3 | 50.00 | 0.940 |" in out and "| t = 2 |" in out
    assert gamma_training.main([str(tmp_path / "decay"), "--alpha", "0.03"]) == 0
    assert [e["fires"] for e in json.loads((tmp_path / "gamma_training.json").read_text())[0]["epochs"]] \
        == [False, False]
