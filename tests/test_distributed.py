"""Training on several processes: the same network as one process, data and spikes that do not
depend on the process count, and train.py under torchrun (gloo on the CPU)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bntt import seeding
from bntt.coding import SequenceEncoder, poisson_spikes
from bntt.data import ImageDataset
from bntt.data.sampling import GlobalBatchSampler, set_epoch, shard_bounds
from helpers import triton_interpreter_broken, needs_triton_interpreter

pytestmark = pytest.mark.slow  # subprocesses or compilation: outside the inner loop

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def child_env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    return env


# -- two processes train the one-process network ----------------------------------------------

ENGINES = ("reference", "multistep", "cpu") + (() if triton_interpreter_broken() else ("fused",))
CASES = tuple(f"{engine}:global" for engine in ENGINES) + ("multistep:local",)


@pytest.fixture(scope="module")
def step_results(tmp_path_factory):
    """distributed_steps.py run as one plain process (batch 8) and as 2 torchrun processes
    (batch 4 each) on the same global batch."""
    out = tmp_path_factory.mktemp("steps")
    script = str(ROOT / "tests" / "distributed_steps.py")
    one, two = out / "one.pt", out / "two.pt"
    subprocess.run([sys.executable, script, str(one), *CASES[:-1]], check=True, env=child_env(),
                   cwd=ROOT, timeout=300)
    subprocess.run([*TORCHRUN, "--nproc_per_node", "2", script, str(two), *CASES], check=True,
                   env=child_env(), cwd=ROOT, timeout=300, capture_output=True)
    return torch.load(one), torch.load(two)


def largest_difference(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("engine", ["reference", "multistep", "cpu",
                                    pytest.param("fused", marks=needs_triton_interpreter)])
def test_two_processes_equal_one_process(step_results, engine):
    one, two = step_results
    single, split = one[f"{engine}:global"], two[f"{engine}:global"]
    # weights, BNTT gammas and running statistics after 3 SGD steps, and the last gradients
    assert largest_difference(single["state"], split["state"]) < 1e-10
    assert largest_difference(single["grads"], split["grads"]) < 1e-10
    assert single["state"]["bntt1.1.running_var"].sub(1).abs().max() > 1e-3  # they did move


def test_local_statistics_train_another_network(step_results):
    """What plain DDP does: each process normalises with its half of the batch."""
    one, two = step_results
    assert largest_difference(one["multistep:global"]["grads"], two["multistep:local"]["grads"]) > 1e-3


# -- data and spikes do not depend on the process count ---------------------------------------

@pytest.mark.parametrize("size,batch,drop_last,shuffle", [(100, 16, True, True), (50, 16, False, False),
                                                          (33, 32, False, False)])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_processes_share_out_each_global_batch(size, batch, drop_last, shuffle, world):
    whole = list(GlobalBatchSampler(size, batch, shuffle, drop_last, seed=7))
    parts = [GlobalBatchSampler(size, batch, shuffle, drop_last, rank, world, seed=7)
             for rank in range(world)]
    slices = [list(part) for part in parts]
    for k, global_batch in enumerate(whole):
        joined = []
        for rank, part in enumerate(parts):
            if k < len(slices[rank]):
                offset, total = part.shard(k)
                assert total == len(global_batch)
                assert global_batch[offset:offset + len(slices[rank][k])] == slices[rank][k]
                joined += slices[rank][k]
        assert joined == global_batch
    assert [len(p) for p in parts] == [len(s) for s in slices]
    scored = sorted(i for s in slices for b in s for i in b)
    expected = size - size % batch if drop_last else size
    assert len(scored) == expected and len(set(scored)) == expected  # each image once


def test_shuffle_follows_seed_and_epoch():
    sampler = GlobalBatchSampler(64, 8, True, True, seed=3)
    first = list(sampler)
    assert list(GlobalBatchSampler(64, 8, True, True, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert sorted(sum(first, [])) == list(range(64))


def test_shard_bounds_split_evenly():
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]


def test_poisson_share_equals_the_share_of_the_global_draw():
    x = torch.randn(6, 3, 4, 4)
    whole = poisson_spikes(x, 5, torch.Generator().manual_seed(1))
    for lo, hi in [(0, 3), (3, 6), (2, 5)]:
        part = poisson_spikes(x[lo:hi], 5, torch.Generator().manual_seed(1), shard=(lo, 6))
        assert torch.equal(part, whole[:, lo:hi])
    seq = SequenceEncoder("pixels", "poisson")
    images = torch.rand(6, 1, 4, 4)
    whole = seq(images, 16, torch.Generator().manual_seed(2))
    part = seq(images[4:], 16, torch.Generator().manual_seed(2), shard=(4, 6))
    assert torch.equal(part, whole[:, 4:])


def test_augmentation_of_an_image_depends_on_seed_epoch_and_index_only():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 8, 8), generator=g, dtype=torch.uint8)
    data = ImageDataset(images, torch.zeros(20, dtype=torch.long), (0.5,) * 3, (0.25,) * 3,
                        augment=True, padding=2)
    data.draw_key = (5, 1)
    batch = torch.stack([x for x, _ in data.__getitems__(list(range(20)))])
    alone = torch.stack([data[i][0] for i in (13, 2, 7)])
    assert torch.equal(alone, batch[[13, 2, 7]])  # other batch, other order: same samples
    tops, lefts, flips = seeding.crop_flip_draws((5, 1, seeding.AUGMENT), [13], 5)
    crop = torch.nn.functional.pad(images[13], (2,) * 4)[:, tops[0]:tops[0] + 8, lefts[0]:lefts[0] + 8]
    crop = crop.flip(-1) if flips[0] else crop
    assert torch.equal(batch[13], crop.float().mul(1.0 / 255).sub(0.5).div(0.25))
    data.draw_key = (5, 2)
    assert not torch.equal(torch.stack([x for x, _ in data.__getitems__(list(range(20)))]), batch)


def test_crop_and_flip_draws_are_uniform():
    tops, lefts, flips = seeding.crop_flip_draws((0, 0, seeding.AUGMENT), np.arange(90_000), 9)
    for offsets in (tops, lefts):
        freq = np.bincount(offsets, minlength=9) / 90_000
        assert offsets.min() == 0 and offsets.max() == 8
        assert np.abs(freq - 1 / 9).max() < 0.005  # ~5 standard deviations
    assert abs(flips.mean() - 0.5) < 0.006
    assert abs(np.corrcoef(tops, lefts)[0, 1]) < 0.02


def test_set_epoch_reaches_a_subset_dataset():
    from torch.utils.data import DataLoader, Subset
    data = ImageDataset(torch.zeros(8, 1, 4, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.long),
                        (0.0,), (1.0,), augment=True, padding=1)
    sampler = GlobalBatchSampler(4, 2, True, True, seed=9)
    loader = DataLoader(Subset(data, range(4)), batch_sampler=sampler)
    set_epoch(loader, 9, 3)
    assert data.draw_key == (9, 3) and sampler.epoch == 3


# -- train.py under torchrun -------------------------------------------------------------------

TINY = ["--config", "configs/quickstart.toml", "--num_steps", "2", "--train_samples", "320",
        "--num_epochs", "3", "--test_display_freq", "3", "--num_workers", "0"]


def torchrun_train(args, **kwargs):
    return subprocess.Popen([*TORCHRUN, "--nproc_per_node", "2", *kwargs.pop("launcher", []),
                             "train.py", *args], cwd=ROOT, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def workers_of(launcher: subprocess.Popen) -> dict:
    """{rank: pid} of the training processes torchrun started."""
    found = {}
    for child in Path(f"/proc/{launcher.pid}/task").glob("*/children"):
        for pid in child.read_text().split():
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(pid)
    return found


def kill_rank_after_first_checkpoint(launcher, folder: Path, rank: int = 1):
    deadline = time.time() + 240
    while not (folder / "last.pt").exists():
        assert launcher.poll() is None, launcher.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(workers_of(launcher)[rank], signal.SIGKILL)  # in epoch 2, mid-training


def assert_finished_cleanly(folder: Path, epochs: int = 3):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, epochs + 1))
    assert rows[-1]["test_images"] == 500  # every test image once, across both processes
    assert all(row["train_images"] == 320 for row in rows)
    ckpt = torch.load(folder / "last.pt", weights_only=False)
    assert ckpt["epoch"] == epochs
    assert not list(folder.glob(".*.tmp"))


def test_torchrun_restart_continues_from_the_last_checkpoint(tmp_path):
    folder = tmp_path / "quickstart"
    job = torchrun_train([*TINY, "--out_dir", str(tmp_path)], launcher=["--max_restarts", "1"])
    kill_rank_after_first_checkpoint(job, folder)
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 0, output
    assert "resuming after epoch 1" in output
    assert_finished_cleanly(folder)


def test_killed_rank_stops_the_job_and_resume_under_torchrun_continues(tmp_path):
    folder = tmp_path / "quickstart"
    job = torchrun_train([*TINY, "--out_dir", str(tmp_path)])
    kill_rank_after_first_checkpoint(job, folder)
    output = job.communicate(timeout=300)[0]
    assert job.returncode != 0
    assert json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    assert torch.load(folder / "last.pt", weights_only=False)["epoch"] == 1  # intact
    job = torchrun_train(["--resume", str(folder)])
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 0, output
    assert "2 processes (BNTT statistics global)" in output and "resuming after epoch 1" in output
    assert "test accuracy: top-1" in output and "on 500 images" in output
    assert_finished_cleanly(folder)


def test_batch_that_does_not_divide_among_processes_is_refused(tmp_path):
    job = torchrun_train([*TINY, "--batch_size", "15", "--out_dir", str(tmp_path)])
    output = job.communicate(timeout=300)[0]
    assert job.returncode != 0
    assert "batch_size 15 is the global batch and must divide among the 2 processes" in output
    assert not (tmp_path / "quickstart").exists()


def test_a_job_on_a_folder_in_use_stops_every_process_with_one_line(tmp_path):
    """Only rank 0 takes the lock; the others must hear of a refusal before they train, or they
    would die at their first exchange with rank 0 gone, each with a long traceback."""
    from bntt.runlock import RunLock
    folder = tmp_path / "quickstart"
    folder.mkdir()
    with RunLock(folder):
        job = torchrun_train([*TINY, "--out_dir", str(tmp_path)])
        output = job.communicate(timeout=300)[0]
    assert job.returncode != 0
    refusals = [line for line in output.splitlines() if "error:" in line]
    assert refusals == [f"train.py: error: {folder} is in use by process {os.getpid()} on "
                        f"{refusals[0].split(' on ', 1)[1]}"], output
    # torchrun reports the exit codes itself; no process of train.py shows a traceback
    assert 'train.py", line' not in output and "gloo" not in output.lower(), output
    assert [p.name for p in folder.iterdir()] == [".lock"]


@pytest.mark.parametrize("arch,norm,message", [
    ("vgg9", "bn", "--norm bn shares one set of statistics by all steps"),
    ("vgg9", "tdbn", "--norm tdbn shares one set of statistics by all steps"),
    ("vgg9_ann", "bntt", "the ANN's BatchNorm layers synchronise across processes on GPUs only")])
def test_statistics_that_cannot_be_synchronised_are_refused(arch, norm, message):
    from bntt import distributed
    from helpers import network
    model = network(arch, "fashionmnist_subset", 2, engine="multistep", norm=norm)
    with pytest.raises(ValueError, match=message):
        distributed.prepare_model(model, distributed.World(size=2, launched=True), "global")
