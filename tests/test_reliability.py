"""Runs that cannot be corrupted: one process per run folder, a divergence guard that keeps the
last good checkpoint, resume that refuses what would change the run, stale temporaries removed,
and one line (exit 2) for every bad input instead of a traceback."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import evaluate
import train
from bntt.run_folder import RunLog
from bntt.checkpoint import load_checkpoint, write_atomic
from bntt.cli import UsageError, memory_for
from bntt.runlock import RunFolderUnsafe, RunLock
from helpers import cli_error, tiny_args

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_args()


@pytest.fixture(scope="module")
def one_epoch_of_two(tmp_path_factory):
    """A run folder after epoch 1 of 2 (so it can be resumed), made once for the module."""
    out = tmp_path_factory.mktemp("runs")
    assert train.cli([*TINY, "--num_epochs", "1", "--out_dir", str(out), "--run_name", "r"]) == 0
    ckpt = torch.load(out / "r" / "last.pt", weights_only=True)
    ckpt["config"]["num_epochs"] = 2  # as if stopped after epoch 1 of a 2-epoch run
    torch.save(ckpt, out / "r" / "last.pt")
    return out / "r"


def snapshot(folder: Path) -> dict:
    """Every entry of `folder`: its bytes (or link target) and modification time."""
    return {p.name: (os.readlink(p) if p.is_symlink() else p.read_bytes(), p.lstat().st_mtime_ns)
            for p in folder.iterdir()}


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def copy_run(run_dir: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for f in run_dir.iterdir():
        if f.is_file():
            (to / f.name).write_bytes(f.read_bytes())
    ckpt = torch.load(to / "last.pt", weights_only=True)
    ckpt["config"]["out_dir"], ckpt["config"]["run_name"] = str(to.parent), to.name
    torch.save(ckpt, to / "last.pt")
    return to


# -- 1. one process per run folder ------------------------------------------------------------

@pytest.mark.slow
def test_a_second_process_on_a_folder_in_use_stops_and_a_killed_holder_does_not_block(tmp_path, capsys):
    args = [*TINY, "--train_samples", "512", "--num_epochs", "30", "--out_dir", str(tmp_path),
            "--run_name", "busy"]
    env = dict(os.environ, TQDM_DISABLE="1", BNTT_OFFLINE="1")
    holder = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "busy"

    def wait_for(condition):
        deadline = time.time() + 120
        while not condition() and holder.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert holder.poll() is None and condition(), "the first run did not get that far"

    def refused(argv):
        code, err = cli_error(capsys, train.cli, argv)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"is in use by process {holder.pid} " in err, err

    try:
        lock = folder / ".lock"
        wait_for(lambda: lock.exists() and f"process {holder.pid} " in lock.read_text())
        refused([*TINY, "--num_epochs", "30", "--out_dir", str(tmp_path), "--run_name", "busy"])
        wait_for(lambda: (folder / "last.pt").exists())
        metrics_before = (folder / "metrics.jsonl").read_text()
        refused(["--resume", str(folder)])
        # the refused processes wrote nothing: the metrics only grow by the holder's own epochs
        assert (folder / "metrics.jsonl").read_text().startswith(metrics_before)
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    RunLock(folder).acquire().release()  # the kernel dropped the dead holder's lock


def test_the_lock_never_writes_through_a_link(tmp_path):
    target = tmp_path / "precious"
    target.write_bytes(b"not the run's\n")
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / ".lock").symlink_to(target)
    with pytest.raises(RunFolderUnsafe, match="is a symbolic link"):
        RunLock(folder).acquire()
    assert target.read_bytes() == b"not the run's\n"


@pytest.mark.parametrize("name", [".lock", "last.pt", "best.pt", "metrics.jsonl", "config.json",
                                  "events.out.tfevents.1700000000.host.1.0"])
def test_a_link_where_a_run_file_goes_is_refused_and_its_target_kept(one_epoch_of_two, tmp_path,
                                                                     capsys, name):
    run_dir = copy_run(one_epoch_of_two, tmp_path / "runs" / "r")
    target = tmp_path / "elsewhere"
    # a last.pt link leads to a real checkpoint, so that the resume would get as far as writing
    target.write_bytes((run_dir / name).read_bytes() if name == "last.pt" else b"not the run's\n")
    before = target.read_bytes()
    (run_dir / name).unlink(missing_ok=True)
    (run_dir / name).symlink_to(target)
    code, err = cli_error(capsys, train.cli, ["--resume", str(run_dir)])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{run_dir / name} is a symbolic link" in err
    assert target.read_bytes() == before and (run_dir / name).is_symlink()


def test_a_run_folder_that_is_a_link_is_refused(tmp_path, capsys):
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "runs"
    elsewhere.mkdir()
    out.mkdir()
    (out / "r").symlink_to(elsewhere)
    code, err = cli_error(capsys, train.cli, [*TINY, "--num_epochs", "1", "--out_dir", str(out),
                                              "--run_name", "r"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"run folder {out / 'r'} is a symbolic link" in err
    assert list(elsewhere.iterdir()) == []


def test_a_fifo_where_a_run_file_goes_is_refused_without_hanging(tmp_path, capsys):
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "metrics.jsonl")  # reading or appending to it would block
    code, err = cli_error(capsys, train.cli, [*TINY, "--num_epochs", "1", "--out_dir",
                                              str(tmp_path / "runs"), "--run_name", "r"])
    assert code == 2 and f"{folder / 'metrics.jsonl'} is not a regular file" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.jsonl"]


# -- 2. divergence ----------------------------------------------------------------------------

def test_divergence_from_the_start_writes_no_checkpoint(tmp_path, capsys):
    code, err = cli_error(capsys, train.cli, [*TINY, "--lr", "1e6", "--batch_size", "8", "--num_epochs", "2",
                                              "--out_dir", str(tmp_path), "--run_name", "d"])
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "diverged" in err or "loss became" in err
    assert not (tmp_path / "d" / "last.pt").exists() and not (tmp_path / "d" / "best.pt").exists()


def test_divergence_keeps_the_last_good_checkpoint_byte_identical(one_epoch_of_two, tmp_path, capsys):
    run_dir = copy_run(one_epoch_of_two, tmp_path / "runs" / "r")
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    ckpt["config"].update(lr=1e6, batch_size=8)  # epoch 2: eight steps at this rate
    torch.save(ckpt, run_dir / "last.pt")
    before = {name: (run_dir / name).read_bytes() for name in ("last.pt", "best.pt")}
    code, err = cli_error(capsys, train.cli, ["--resume", str(run_dir)])
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "diverged in epoch 2" in err or "loss became" in err
    for name, data in before.items():
        assert (run_dir / name).read_bytes() == data, name
    assert [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1]


# -- 3-5. resume keeps its promises -----------------------------------------------------------

def test_resume_takes_another_worker_count_and_refuses_a_config_file_that_changes_the_run(
        one_epoch_of_two, tmp_path, capsys):
    # the batches follow from (seed, epoch), not from the workers (tests/test_data.py)
    cfg, _ = train.resolve_config(["--resume", str(one_epoch_of_two), "--num_workers", "2"])
    assert cfg.num_workers == 2
    code, err = cli_error(capsys, train.cli, ["--resume", str(one_epoch_of_two), "--bntt_sync", "local"])
    assert code == 2 and "cannot change bntt_sync when resuming" in err
    other = tmp_path / "other.toml"
    other.write_text("lr = 0.5\n")
    code, err = cli_error(capsys, train.cli, ["--resume", str(one_epoch_of_two), "--config", str(other)])
    assert code == 2 and "cannot change lr when resuming" in err and len(err.splitlines()) == 1
    same = tmp_path / "same.toml"
    same.write_text("lr = 0.1\nnum_workers = 0\narch = \"vgg9\"\n")  # repeats the run's values
    cfg, _ = train.resolve_config(["--resume", str(one_epoch_of_two), "--config", str(same)])
    assert cfg.lr == 0.1 and cfg.num_epochs == 2


def test_resume_removes_stale_temporaries_and_a_cut_metrics_line(one_epoch_of_two, tmp_path):
    run_dir = copy_run(one_epoch_of_two, tmp_path / "runs" / "r")
    stale = [run_dir / ".last.pt.k1ll3d.tmp", run_dir / ".best.pt.x9.tmp"]
    for f in stale:
        f.write_bytes(b"\0" * 4096)  # what a kill during a checkpoint write leaves
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lr": 0.1, "train_lo')  # a kill during the metrics write
    assert train.cli(["--resume", str(run_dir)]) == 0
    assert not any(f.exists() for f in stale)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_damaged_metrics_line_is_one_line_and_rewrites_nothing(one_epoch_of_two, tmp_path, capsys):
    run_dir = copy_run(one_epoch_of_two, tmp_path / "runs" / "r")
    good = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "metrics.jsonl").write_text("garbage\n" + good)
    config_before = (run_dir / "config.json").read_bytes()
    code, err = cli_error(capsys, train.cli, ["--resume", str(run_dir)])
    assert code == 2 and "metrics.jsonl line 1 is not a metrics record" in err
    assert (run_dir / "config.json").read_bytes() == config_before
    assert not list(run_dir.glob(".*.tmp"))


def test_resuming_a_finished_run_touches_nothing(one_epoch_of_two, tmp_path, capsys):
    run_dir = copy_run(one_epoch_of_two, tmp_path / "runs" / "r")
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    ckpt["config"]["num_epochs"] = 1  # epoch 1 of 1: finished
    torch.save(ckpt, run_dir / "last.pt")
    before = snapshot(run_dir)
    assert train.cli(["--resume", str(run_dir)]) == 0
    assert f"nothing to do: {run_dir} already finished 1 epochs" in capsys.readouterr().out
    assert snapshot(run_dir) == before


def test_a_first_evaluation_at_zero_percent_is_the_best_so_far(tmp_path, capsys):
    assert train.cli([*TINY, "--test_samples", "1", "--num_epochs", "1", "--out_dir", str(tmp_path),
                      "--run_name", "r"]) == 0
    out = capsys.readouterr().out
    # the untrained network's logits tie, so it answers class 0, which test image 0 is not
    assert rows_of(tmp_path / "r")[0]["test_top1"] == 0
    assert "(best top-1 0.00% at epoch 1)" in out, out
    assert torch.load(tmp_path / "r" / "best.pt", weights_only=True)["best_epoch"] == 1


def test_drop_last_test_that_would_score_nothing_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "runs"  # TINY: 40 test images, test batches of 2 x 32
    code, err = cli_error(capsys, train.cli, [*TINY, "--drop_last_test", "--num_epochs", "1",
                                              "--out_dir", str(out)])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--drop_last_test scores only full test batches of 64 images" in err
    assert "there are 40 test images: nothing would be scored" in err
    assert not out.exists()


def test_resume_gets_out_of_a_run_whose_drop_last_test_scores_nothing(one_epoch_of_two, tmp_path, capsys):
    run_dir = copy_run(one_epoch_of_two, tmp_path / "runs" / "r")
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    ckpt["config"]["drop_last_test"] = True  # its epoch 1 was not scored, epoch 2 would divide by 0
    torch.save(ckpt, run_dir / "last.pt")
    before = snapshot(run_dir)
    code, err = cli_error(capsys, train.cli, ["--resume", str(run_dir)])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "resume with --no-drop_last_test to score them all" in err
    assert snapshot(run_dir) == before
    assert train.cli(["--resume", str(run_dir), "--no-drop_last_test"]) == 0
    assert [(r["epoch"], r.get("test_images")) for r in rows_of(run_dir)] == [(1, 40), (2, 40)]
    assert load_checkpoint(run_dir)["config"]["drop_last_test"] is False


def test_resume_keeps_drop_last_test_where_it_scored_test_images(one_epoch_of_two, tmp_path, capsys):
    ckpt = torch.load(one_epoch_of_two / "last.pt", weights_only=True)
    ckpt["config"].update(drop_last_test=True, batch_size=16)  # full test batches of 32 of 40
    path = tmp_path / "hand.pt"
    torch.save(ckpt, path)
    code, err = cli_error(capsys, train.cli, ["--resume", str(path), "--no-drop_last_test"])
    assert code == 2 and "cannot change drop_last_test when resuming" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hand.pt"]


# -- 6-7, 11. one line for every bad input ----------------------------------------------------

@pytest.mark.parametrize("extra,message", [
    (["--seed", "-1"], "seed must be in 0..4294967295, got -1"),
    (["--seed", str(2 ** 32)], "seed must be in 0..4294967295"),
    (["--run_name", "../x"], "run_name must be a plain folder name"),
    (["--run_name", "/tmp/elsewhere"], "run_name must be a plain folder name"),
    (["--run_name", "."], "run_name must be a plain folder name"),
    (["--run_name", "x" * 300], "run_name must be a plain folder name"),
    (["--num_steps", "10000000000"], "num_steps must be at most 4096, got 10000000000"),
    (["--num_workers", "100000"], "num_workers must be in 0..256, got 100000"),
    (["--fc_hidden", "256,1000000000"], "fc_hidden must be at most 64 sizes of at most 16384"),
    (["--device", "meta"], "device 'meta' is not supported; choose from auto, cpu, cuda, cuda:N"),
    (["--device", "xpu"], "device 'xpu' is not supported"),
    (["--device", "cuda:x"], "device 'cuda:x' is not supported"),
    (["--device", "cuda:99"], "device cuda:99 requested but"),
])
def test_bad_flags_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "runs"
    code, err = cli_error(capsys, train.cli, [*TINY, "--num_epochs", "1", "--out_dir", str(out),
                                              *extra])
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_out_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, err = cli_error(capsys, train.cli, [*TINY, "--out_dir", str(blocker), "--run_name", "r"])
    assert code == 2 and len(err.splitlines()) == 1 and "cannot create the run folder" in err


@pytest.mark.parametrize("content,message", [
    (b"lr = \xff\xfe 0.1\n", "is not UTF-8 text"),
    (None, "is a directory"),
])
def test_config_that_is_not_text_or_not_a_file(tmp_path, capsys, content, message):
    path = tmp_path / "c.toml"
    path.mkdir() if content is None else path.write_bytes(content)
    code, err = cli_error(capsys, train.cli, ["--config", str(path)])
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("break_it,message", [
    (lambda c: c.pop("rng"), "no rng"),
    (lambda c: c.pop("epoch"), "no epoch"),
    (lambda c: c.update(optimizer={"state": {}, "param_groups": []}), "does not hold a training state"),
    (lambda c: c.update(rng={"torch": torch.zeros(3, dtype=torch.uint8)}), "does not hold a training state"),
    (lambda c: c["config"].update(num_steps="2"), "num_steps in {path} must be int, got '2'"),
    (lambda c: c["config"].update(lr=[0.1]), "lr in {path} must be float, got [0.1]"),
    (lambda c: c["config"].update(amp=1), "amp in {path} must be bool, got 1"),
])
def test_hand_made_checkpoints_are_one_line(one_epoch_of_two, tmp_path, capsys, break_it, message):
    ckpt = torch.load(one_epoch_of_two / "last.pt", weights_only=True)
    break_it(ckpt)
    path = tmp_path / "hand.pt"
    torch.save(ckpt, path)
    code, err = cli_error(capsys, train.cli, ["--resume", str(path)])
    assert code == 2 and message.format(path=path) in err and len(err.splitlines()) == 1, err


def test_random_bytes_checkpoint_never_suggests_unsafe_loading(tmp_path, capsys):
    path = tmp_path / "random.pt"
    path.write_bytes(os.urandom(4096))
    code, err = cli_error(capsys, train.cli, ["--resume", str(path)])
    assert code == 2 and "is not a readable checkpoint" in err and len(err.splitlines()) == 1
    assert "weights_only" not in err and "will likely succeed" not in err


@pytest.mark.parametrize("extra,message", [
    (["--leak_mem", "5"], "leak_mem must be in (0, 1], got 5.0"),
    (["--test_samples", "-5"], "test_samples must be >= 0, got -5"),
    (["--device", "meta"], "device 'meta' is not supported; choose from auto, cpu, cuda, cuda:N"),
    (["--device", "xpu"], "device 'xpu' is not supported"),
])
def test_evaluate_bad_flags_are_one_line(one_epoch_of_two, capsys, extra, message):
    code, err = cli_error(capsys, evaluate.cli, ["--checkpoint", str(one_epoch_of_two), *extra])
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (one_epoch_of_two / "early_exit").exists()


def test_an_allocation_failure_is_one_line():
    # 1 PiB: more than any machine's memory and address space, refused at once
    with pytest.raises(UsageError, match=r"^not enough memory for the network \(tried to allocate "
                                         r"1125899906842624 bytes\)$"):
        with memory_for("the network"):
            torch.empty(2 ** 50, dtype=torch.uint8)


def test_evaluate_out_dir_that_is_a_file(one_epoch_of_two, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, err = cli_error(capsys, evaluate.cli, ["--checkpoint", str(one_epoch_of_two),
                                                 "--out_dir", str(blocker)])
    assert code == 2 and "is a file, not a folder" in err and len(err.splitlines()) == 1


# -- saving: a full disk and Ctrl-C leave the previous checkpoint as it was --------------------

def test_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "last.pt"
    write_atomic(target, lambda f: f.write(b"old checkpoint"))

    def interrupted(f):
        f.write(b"half of a new one")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, interrupted)
    assert target.read_bytes() == b"old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.fixture
def small_disk(tmp_path):
    """A 160 MiB tmpfs, where a mount is allowed (root on Linux); skipped elsewhere."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_while_saving_is_one_line_and_keeps_the_old_checkpoint(one_epoch_of_two, small_disk, capsys):
    run_dir = copy_run(one_epoch_of_two, small_disk / "runs" / "r")
    filler = small_disk / "filler"  # leave about a third of a checkpoint free
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - (run_dir / "last.pt").stat().st_size // 3))
    before = (run_dir / "last.pt").read_bytes()
    code, err = cli_error(capsys, train.cli, ["--resume", str(run_dir)])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "no space left on device" in err and "is intact" in err
    assert (run_dir / "last.pt").read_bytes() == before
    assert not list(run_dir.glob(".*.tmp"))
    assert load_checkpoint(run_dir)["epoch"] == 1


def test_disk_full_at_the_end_of_an_epoch_is_one_line_and_loses_nothing(one_epoch_of_two, small_disk,
                                                                         capsys):
    """The logs are written before the checkpoint: a full disk there must stop the run the same
    way, with no traceback from TensorBoard's writer, and leave a run that resumes."""
    run_dir = copy_run(one_epoch_of_two, small_disk / "runs" / "r")
    page = os.statvfs(small_disk).f_frsize
    row = rows_of(run_dir)[0]
    row["pad"] = "x" * (page - len(json.dumps({**row, "pad": ""})) - 1)
    (run_dir / "metrics.jsonl").write_text(json.dumps(row) + "\n")  # one page, full
    # one free page: each file rewritten at the start frees its old page, the new events file
    # takes the last one, and epoch 2's events or metrics line needs another
    free = os.statvfs(small_disk).f_bavail * page
    (small_disk / "filler").write_bytes(b"\0" * (free - page))
    before = {name: (run_dir / name).read_bytes() for name in ("last.pt", "best.pt")}
    code, err = cli_error(capsys, train.cli, ["--resume", str(run_dir)])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "(no space left on device); last.pt still holds epoch 1" in err
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert not list(run_dir.glob(".*.tmp"))
    (small_disk / "filler").unlink()
    assert train.cli(["--resume", str(run_dir)]) == 0
    assert [r["epoch"] for r in rows_of(run_dir)] == [1, 2]


def test_tensorboard_events_are_written_by_the_calling_thread(one_epoch_of_two, tmp_path):
    """A background writer thread would print its own traceback when the disk fills up."""
    run_dir = copy_run(one_epoch_of_two, tmp_path / "runs" / "r")
    cfg, _ = train.resolve_config(["--resume", str(run_dir)])
    threads = set(threading.enumerate())
    outputs = RunLog(run_dir, cfg, start_epoch=1)
    try:
        assert set(threading.enumerate()) == threads
    finally:
        outputs.close()
