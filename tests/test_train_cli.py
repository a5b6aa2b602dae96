"""train.py end to end on the bundled Fashion-MNIST subset (CPU), resume after a kill, config
precedence, and the one-line errors for bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from helpers import cli_error, tiny_args

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_args(train_samples=128, test_samples=70, test_display_freq=1, device=None)


def run_train(args, **kwargs):
    env = dict(os.environ, TQDM_DISABLE="1", BNTT_OFFLINE="1")
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, **kwargs)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_writes_checkpoints(tmp_path):
    result = run_train([*TINY, "--num_epochs", "3", "--out_dir", str(tmp_path), "--run_name", "r"])
    assert result.returncode == 0, result.stderr
    assert "test accuracy: top-1" in result.stdout
    run_dir = tmp_path / "r"
    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[0]["test_images"] == 70  # the whole (sub)set is scored, no partial batch dropped
    assert [r["train_images"] for r in rows] == [128] * 3  # 4 full batches of 32
    assert rows[0]["train_img_s"] == pytest.approx(128 / rows[0]["epoch_seconds"])
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.01])
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert ckpt["global_step"] == ckpt["epoch"] == 3
    assert ckpt["state_dict"]["bntt1.1.weight"].shape == (64,)
    assert "bntt1.2.weight" not in ckpt["state_dict"]
    assert ckpt["config"]["num_steps"] == 2 and ckpt["accuracy"] == rows[-1]["best_top1"]
    assert (run_dir / "best.pt").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir)).Reload()
    scalars, histograms = events.Tags()["scalars"], events.Tags()["histograms"]
    for tag in ("train/loss", "train/top1", "train/top5", "test/loss", "test/top1", "test/top5",
                "lr", "time/epoch_seconds", "time/train_img_s"):
        assert tag in scalars, tag
    assert [e.value for e in events.Scalars("test/top1")] == pytest.approx([r["test_top1"] for r in rows])
    expected = {f"gamma/{layer}/t{t:02d}" for layer in [f"bntt{i}" for i in range(1, 8)] + ["bntt_fc"]
                for t in range(2)}
    assert set(histograms) == expected
    assert events.Histograms("gamma/bntt_fc/t01")[0].histogram_value.num == 1024
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_amp_trains_in_bf16_on_a_cpu(tmp_path):
    """--amp autocasts on a CPU too: the losses move off the float32 run's by bf16 rounding
    (so the convolutions did run in bf16), stay near them, and the weights stay float32."""
    losses = {}
    for name, flag in (("fp32", "--no-amp"), ("bf16", "--amp")):
        result = run_train([*TINY, "--num_epochs", "1", "--out_dir", str(tmp_path), "--run_name", name,
                            "--device", "cpu", flag])
        assert result.returncode == 0, result.stderr
        assert ("bf16 autocast" in result.stdout) == (name == "bf16")
        losses[name] = metrics(tmp_path / name)[0]["train_loss"]
    assert losses["bf16"] != losses["fp32"]
    # Near, not close: an untrained VGG9 at T=2 has many membranes near the threshold, so bf16's
    # rounding flips spikes, and the flips grow over the epoch's 4 SGD steps. The float32
    # engines themselves land 0.11 apart here (train loss 2.57 and 2.68); a broken bf16 path
    # (NaN, no learning, a wrong cast) lands far from both.
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.25)
    state = torch.load(tmp_path / "bf16" / "last.pt", weights_only=True)["state_dict"]
    assert state["conv1.weight"].dtype == torch.float32


@pytest.mark.slow
def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path):
    args = [*TINY, "--num_epochs", "3", "--out_dir", str(tmp_path)]
    assert run_train([*args, "--run_name", "full"]).returncode == 0

    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "--run_name", "cut"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cut = tmp_path / "cut"
    deadline = time.time() + 300
    while not (cut / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = metrics(cut)
    assert 1 <= len(done) < 3, "the run was not cut in the middle"

    result = run_train(["--resume", str(cut)])
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch" in result.stdout
    full_rows, cut_rows = metrics(tmp_path / "full"), metrics(cut)
    assert len(cut_rows) == 3
    for a, b in zip(full_rows, cut_rows):
        for key in ("train_loss", "train_top1", "test_loss", "test_top1", "lr"):
            assert a[key] == b[key], (a["epoch"], key)  # bit-exact, not approximately
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["state_dict"]
    resumed = torch.load(cut / "last.pt", weights_only=True)["state_dict"]
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_config_file_and_command_line_precedence(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('arch = "vgg9"\nlr = 0.3\nbatch_size = 64\nnum_steps = 5\namp = true\n')
    cfg, _ = train.resolve_config(["--config", str(cfg_file), "--lr", "0.2"])
    assert (cfg.arch, cfg.lr, cfg.batch_size, cfg.num_steps) == ("vgg9", 0.2, 64, 5)
    assert cfg.leak_mem == 0.99 and cfg.amp is True  # leak: the authors' default
    cfg, _ = train.resolve_config(["--config", str(cfg_file), "--no-amp"])
    assert cfg.amp is False


@pytest.mark.parametrize("name,expected", [
    ("cifar10_vgg9", dict(arch="vgg9", dataset="cifar10", num_steps=25, lr=0.3, batch_size=256,
                          leak_mem=0.95, num_epochs=100)),
    ("cifar100_vgg11", dict(arch="vgg11", dataset="cifar100", num_steps=30, lr=0.3, batch_size=128,
                            leak_mem=0.99, num_epochs=100)),
    ("fashionmnist_vgg9", dict(arch="vgg9", dataset="fashionmnist", num_steps=25)),
    ("quickstart", dict(arch="vgg9", dataset="fashionmnist_subset")),
])
def test_shipped_configs(name, expected):
    cfg, _ = train.resolve_config(["--config", str(ROOT / "configs" / f"{name}.toml")])
    assert {k: getattr(cfg, k) for k in expected} == expected


@pytest.mark.parametrize("argv,message", [
    (["--arch", "resnet18"], "unknown arch 'resnet18'; choose from vgg9, vgg11"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--num_steps", "0"], "num_steps must be >= 1, got 0"),
    (["--leak_mem", "1.5"], "leak_mem must be in (0, 1]"),
    (["--weight_decay", "-0.0001"], "weight_decay must be >= 0, got -0.0001"),
    (["--weight_decay", "nan"], "weight_decay must be >= 0, got nan"),
    (["--config", "no/such.toml"], "config file no/such.toml does not exist"),
    (["--resume", "no/such/run"], "checkpoint no/such/run does not exist"),
])
def test_bad_input_is_one_clear_line(capsys, argv, message):
    code, err = cli_error(capsys, train.cli, argv)
    assert code == 2
    assert message in err and len(err.splitlines()) == 1


def test_unknown_config_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("num_step = 3\n")
    code, err = cli_error(capsys, train.cli, ["--config", str(bad)])
    assert code == 2 and f"unknown key 'num_step' in {bad}" in err


@pytest.mark.slow
def test_missing_data_offline_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    result = run_train(["--dataset", "cifar10", "--arch", "vgg9", "--data_dir", str(tmp_path / "data"),
                        "--out_dir", str(out)])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CIFAR10 not found in" in lines[0] and "--download" in lines[0]
    assert not out.exists() and not (tmp_path / "data").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fused engine runs where CUDA is")
def test_engine_this_machine_cannot_run_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "runs"
    code, err = cli_error(capsys, train.cli, [*TINY, "--device", "cpu", "--engine", "fused", "--out_dir", str(out)])
    assert code == 2 and len(err.splitlines()) == 1
    assert "--engine fused: the fused engine needs a CUDA device" in err
    assert not out.exists()


@pytest.mark.slow
def test_resume_refuses_another_arch_or_T_and_mismatched_checkpoints(tmp_path, capsys):
    result = run_train([*TINY, "--num_epochs", "1", "--out_dir", str(tmp_path), "--run_name", "r"])
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "r"
    code, err = cli_error(capsys, train.cli, ["--resume", str(run_dir), "--num_steps", "4"])
    assert code == 2 and "cannot change num_steps when resuming" in err and "num_steps=2" in err
    code, err = cli_error(capsys, train.cli, ["--resume", str(run_dir), "--arch", "vgg11"])
    assert code == 2 and "cannot change arch when resuming" in err
    code, err = cli_error(capsys, train.cli, [*TINY, "--out_dir", str(tmp_path), "--run_name", "r"])
    assert code == 2 and "already holds a run" in err and "--resume" in err

    from bntt.checkpoint import CheckpointError, load_weights
    from model import build_model
    state = torch.load(run_dir / "last.pt", weights_only=True)["state_dict"]
    for arch, steps, fragment in (("vgg9", 5, 'Missing key(s) in state_dict: "bntt1.2.weight"'),
                                  ("vgg11", 2, 'Missing key(s) in state_dict: "conv8.weight"')):
        model = build_model(arch, num_steps=steps, in_channels=1)
        with pytest.raises(CheckpointError, match="x.pt does not fit vgg: Error") as caught:
            load_weights(model, state, "x.pt", "vgg")
        assert fragment in str(caught.value) and len(str(caught.value).splitlines()) == 1
    not_a_ckpt = tmp_path / "junk.pt"
    not_a_ckpt.write_bytes(b"definitely not a zip file")
    code, err = cli_error(capsys, train.cli, ["--resume", str(not_a_ckpt)])
    assert code == 2 and "is not a readable checkpoint" in err
