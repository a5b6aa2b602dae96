"""Early exit: the one-pass per-step curve, the seeded pass that gives it, the gamma rule, the
per-sample rule, evaluate.py and analyze.py early-exit."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import analyze
import evaluate
from bntt import early_exit
from bntt.analysis.scoring import prefix_logits_pass
from bntt.cli import UsageError
from bntt.seeding import eval_generator
from helpers import small_model
from model import SNN_VGG9_BNTT
from utill import correct_topk

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_per_step_curve_equals_running_with_t_steps(training):
    model = small_model("vgg9", 5, torch.float64, img_size=16).train(training)
    images = torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        curve = early_exit.cumulative_logits(model, model.encode(images, torch.Generator().manual_seed(7)))
        for t in range(1, 6):
            short = early_exit.truncate_steps(model, t).train(training)
            logits = short(images, generator=torch.Generator().manual_seed(7))  # t steps, same seed
            torch.testing.assert_close(curve[t - 1], logits, rtol=1e-12, atol=1e-12)
    fresh = SNN_VGG9_BNTT(num_steps=3, img_size=16)  # a truncated model is a valid T=3 checkpoint
    fresh.load_state_dict(early_exit.truncate_steps(model, 3).state_dict(), strict=True)
    assert torch.equal(fresh.bntt_fc.weight.double(), model.bntt_fc.weight[:3])


def test_seeded_pass_draws_from_eval_seed():
    model = small_model("vgg9", 3, torch.float64, img_size=16)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(10, 3, 16, 16, dtype=torch.float64, generator=g) * 1.5
    labels = torch.randint(0, 10, (10,), generator=g)
    loader = [(images[:6], labels[:6]), (images[6:], labels[6:])]

    def logits(seed):
        batches = list(prefix_logits_pass(model, loader, torch.device("cpu"), eval_seed=seed))
        assert all(torch.equal(y, labels[i * 6:i * 6 + len(y)]) for i, (_, y) in enumerate(batches))
        return torch.cat([x for x, _ in batches], 1)

    first, again, other = logits(0), logits(0), logits(1)
    assert first.shape == (3, 10, 10) and not model.training
    assert torch.equal(first, again) and not torch.equal(first, other)
    # batch after batch from one generator seeded with the number itself
    gen = eval_generator(1)
    with torch.no_grad():
        expected = [early_exit.cumulative_logits(model, model.encode(x, gen)) for x, _ in loader]
    assert torch.equal(other, torch.cat(expected, 1))
    with pytest.raises(UsageError, match="the test set is empty"):
        list(prefix_logits_pass(model, [], torch.device("cpu")))


def test_prefix_scores_count_as_correct_topk():
    """Tied logits (no spike reached the readout) are where topk(1), topk(5) and argmax can
    pick different classes; the scores count the class train.py's correct_topk picks."""
    logits = torch.zeros(2, 6, 100)  # step 1: every class ties
    logits[1, :3, 7] = 1.0  # step 2: the first three samples say class 7
    labels = torch.tensor([7, 7, 3, 65, 0, 65])
    scores = early_exit.PrefixScores(2)
    scores.add(logits[:, :4], labels[:4])
    scores.add(logits[:, 4:], labels[4:])
    for t in range(2):
        assert [scores.top1[t].item(), scores.top5[t].item()] == correct_topk(logits[t], labels, (1, 5))
    assert scores.images == 6 and scores.correct.shape == scores.margins.shape == (2, 6)
    assert torch.equal(scores.correct.sum(1), scores.top1)  # the per-sample exit counts alike
    assert scores.correct[1, :3].tolist() == [True, True, False]
    assert torch.equal(scores.margins[0], torch.zeros(6))


def test_gamma_exit_step_on_hand_set_gammas():
    means = torch.tensor([[1.0, 0.50, 0.09, 0.05, 0.20],
                          [1.0, 0.08, 0.20, 0.05, 0.01]])
    assert early_exit.gamma_exit_step(means, 0.1) == 4  # first step where both are below
    assert early_exit.gamma_exit_step(means, 0.21) == 3
    assert early_exit.gamma_exit_step(means, 2.0) == 1
    assert early_exit.gamma_exit_step(means, 0.05) == 5  # never strictly below: all T steps
    assert early_exit.gamma_exit_step(means, 0.01) == 5  # equal is not below
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number"):
            early_exit.gamma_exit_step(means, bad)


def test_gamma_statistics_of_a_model():
    model = SNN_VGG9_BNTT(num_steps=4, img_size=16)
    with torch.no_grad():
        for _, bn in model.bntt_layers():
            bn.weight[2:] = 0.05
        model.bntt3.weight[2, :10] = 1.0  # one layer's mean stays above 0.1 at step 3
    stats = early_exit.gamma_statistics(model)
    assert stats.layers[0] == "bntt1" and stats.layers[-1] == "bntt_fc"
    assert stats.mean.shape == (8, 4)
    assert stats.mean[2, 2].item() == pytest.approx((10 * 1.0 + 118 * 0.05) / 128)
    assert stats.max[2, 2].item() == 1.0 and stats.min[2, 2].item() == pytest.approx(0.05)
    assert early_exit.gamma_exit_step(stats.mean, 0.1) == 4


def test_sample_exit_on_hand_set_margins():
    margins = torch.tensor([[0.9, 0.1, 0.1],
                            [0.9, 0.6, 0.1],
                            [0.9, 0.7, 0.2]])
    correct = torch.tensor([[False, False, True],
                            [True, True, False],
                            [True, True, True]])
    # threshold 0.5: sample 0 stops at step 1 (wrong), 1 at step 2 (right), 2 never (step 3, right)
    top1, steps = early_exit.sample_exit(margins, correct, 0.5)
    assert top1 == pytest.approx(200 / 3) and steps == pytest.approx(2.0)
    top1, steps = early_exit.sample_exit(margins, correct, 0.95)  # nobody is that sure
    assert top1 == pytest.approx(100.0) and steps == 3.0
    margins_from_logits = early_exit.softmax_margin(torch.tensor([[2.0, 0.0, 0.0]]))
    p = torch.tensor([2.0, 0.0, 0.0]).softmax(0)
    assert margins_from_logits.item() == pytest.approx((p[0] - p[1]).item())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    args = ["--dataset", "fashionmnist_subset", "--arch", "vgg9", "--num_steps", "3", "--batch_size", "32",
            "--lr", "0.1", "--leak_mem", "0.95", "--num_workers", "0", "--train_samples", "64",
            "--test_samples", "80", "--num_epochs", "1", "--out_dir", str(out), "--run_name", "r"]
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True,
                            text=True, cwd=ROOT, env=dict(os.environ, TQDM_DISABLE="1"))
    assert result.returncode == 0, result.stderr
    return out / "r"


@pytest.mark.slow
def test_evaluate_cli_end_to_end(trained_run, tmp_path, capsys):
    out = tmp_path / "ee"
    code = evaluate.cli(["--checkpoint", str(trained_run), "--batch_size", "64", "--test_samples", "80",
                         "--out_dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "early_exit.json").read_text())
    assert [r["t"] for r in report["per_step"]] == [1, 2, 3] and report["test_images"] == 80
    # the full-T point is train.py's own evaluation (same eval seed and batch size)
    metrics = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["per_step"][-1]["top1"] == pytest.approx(metrics["test_top1"])
    assert report["gamma_exit"]["exit_step"] == 3 and not report["gamma_exit"]["triggered"]
    assert len(report["gamma"]) == 8 * 3 and len(report["sample_exit"]) == 11
    assert "gamma exit (alpha=0.1): never" in printed
    for name in ("accuracy_per_step.csv", "gamma.csv", "sample_exit.csv"):
        assert (out / name).read_text().count("\n") > 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (events,) = out.glob("events.out.tfevents.*")
    logged = EventAccumulator(str(events)).Reload()
    assert [(e.step, e.value) for e in logged.Scalars("early_exit/top1_after_t_steps")] == \
        [(r["t"], pytest.approx(r["top1"])) for r in report["per_step"]]
    assert "early_exit/summary/text_summary" in logged.Tags()["tensors"]
    pytest.importorskip("matplotlib")
    assert (out / "gamma.png").stat().st_size > 1000 and (out / "accuracy.png").stat().st_size > 1000


def test_analyze_early_exit_is_evaluate(trained_run, tmp_path, capsys):
    """`analyze.py early-exit` takes evaluate.py's flags and writes the same report, byte for byte."""
    reports = {}
    for name, cli in (("evaluate", evaluate.cli), ("analyze", lambda argv: analyze.cli(["early-exit", *argv]))):
        out = tmp_path / name
        code = cli(["--checkpoint", str(trained_run), "--test_samples", "40", "--batch_size", "16",
                    "--confidence", "0.1", "0.5", "--eval_seed", "3", "--out_dir", str(out), "--no_plots"])
        assert code == 0
        printed = capsys.readouterr().out
        assert printed.rstrip().endswith(f"wrote early_exit.json, accuracy_per_step.csv, gamma.csv, "
                                         f"sample_exit.csv and TensorBoard events to {out}")
        files = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith("events.")}
        reports[name] = printed.replace(str(out), "OUT"), files
    assert reports["analyze"] == reports["evaluate"]
    report = json.loads(reports["evaluate"][1]["early_exit.json"])
    assert report["test_images"] == 40 and report["eval_seed"] == 3 and len(report["sample_exit"]) == 2


def test_evaluate_report_that_cannot_be_written_is_one_line(trained_run, tmp_path, capsys):
    """A write that fails after the pass (here a folder where the report goes; a full disk is
    the same OSError) is one line naming the file, and no TensorBoard writer thread prints."""
    out = tmp_path / "ee"
    (out / "gamma.csv").mkdir(parents=True)
    code = evaluate.cli(["--checkpoint", str(trained_run), "--test_samples", "80", "--out_dir",
                         str(out), "--no_plots"])
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
           if line.strip() and "%|" not in line]  # without the progress bar
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"evaluate.py: error: cannot write {out / 'gamma.csv'} (")
    assert err[0].endswith("; the files written before it are whole")
    assert (out / "accuracy_per_step.csv").read_text().count("\n") > 1  # written before it
    assert not list(out.glob("events.out.tfevents.*")) and not list(out.glob(".*.tmp"))


def test_evaluate_exits_where_the_gammas_say(trained_run, tmp_path, capsys):
    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    for key, value in ckpt["state_dict"].items():
        if key.startswith("bntt") and key.endswith(".weight") and key.split(".")[1] != "0":
            value.fill_(0.05)  # every layer's gamma below 0.1 from step 2 on
    path = tmp_path / "shrunk.pt"
    torch.save(ckpt, path)
    code = evaluate.cli(["--checkpoint", str(path), "--test_samples", "40", "--out_dir", str(tmp_path / "o"),
                         "--no_plots"])
    assert code == 0
    report = json.loads((tmp_path / "o" / "early_exit.json").read_text())
    ge = report["gamma_exit"]
    assert ge["triggered"] and ge["exit_step"] == 2 and ge["steps_saved"] == 1
    assert ge["top1_at_exit"] == report["per_step"][1]["top1"]
    assert "gamma exit (alpha=0.1): step 2 of 3" in capsys.readouterr().out


def test_evaluate_bad_input(trained_run, tmp_path, capsys):
    def err(argv):
        code = evaluate.cli(argv)
        return code, capsys.readouterr().err.strip()

    code, msg = err(["--checkpoint", str(tmp_path / "missing.pt")])
    assert code == 2 and "missing.pt does not exist" in msg
    code, msg = err(["--checkpoint", str(trained_run), "--dataset", "cifar100"])
    assert code == 2 and "has 10 classes and 1 input channels; cifar100 has 100 and 3" in msg
    code, msg = err(["--checkpoint", str(trained_run), "--exit_threshold", "0"])
    assert code == 2 and "--exit_threshold must be a positive number" in msg
    authors = tmp_path / "authors_bestmodel.pth.tar"  # their train.py saves only these keys
    state = torch.load(trained_run / "best.pt", weights_only=True)["state_dict"]
    torch.save({"global_step": 1, "state_dict": state, "accuracy": 10.0}, authors)
    code, msg = err(["--checkpoint", str(authors)])
    assert code == 2 and "pass --leak_mem" in msg and len(msg.splitlines()) == 1
    code, _ = err(["--checkpoint", str(authors), "--leak_mem", "0.95", "--dataset", "fashionmnist_subset",
                   "--test_samples", "16", "--out_dir", str(tmp_path / "a"), "--no_plots"])
    assert code == 0


def test_evaluate_out_dir_that_cannot_be_made_fails_before_the_pass(trained_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "out"  # no user, root included, can create a folder under a file
    code = evaluate.cli(["--checkpoint", str(trained_run), "--test_samples", "80", "--out_dir", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""  # no report printed: the pass never ran
    assert captured.err.strip() == (f"evaluate.py: error: cannot create the output folder {out}: "
                                    f"{tmp_path / 'afile'} is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
