"""The run folder of train.py: its name, its lock, and what is written in it.

    <out_dir>/<run_name>/
        last.pt, best.pt      checkpoints (bntt/checkpoint.py): the last epoch, the best test top-1
        metrics.jsonl         one line per finished epoch
        config.json           the run's configuration (bntt/config.py)
        events.out.tfevents.* TensorBoard: losses, accuracies, lr, speed, BNTT gammas and
                              their gradients per step
        .lock                 the process writing here (bntt/runlock.py)

Only rank 0 of a torchrun job writes here. Every write is atomic or an append that a resumed
run trims (`read_metrics`), and a failed one is one line saying what was kept.

    folder = run_folder(cfg)
    with claim(folder, resuming=False):
        log = RunLog(folder, cfg, start_epoch=0)
        log.epoch(row, model); save_checkpoints(folder, ckpt, improved=True); log.close()
"""
from __future__ import annotations

import json
from pathlib import Path

from bntt.checkpoint import (BEST_CHECKPOINT, RUN_CHECKPOINT, EventFile, append_bytes,
                             reported_write, run_folder_of, save_atomic, write_atomic)
from bntt.cli import UsageError
from bntt.runlock import LOCK_NAME, RunFolderBusy, RunFolderUnsafe, RunLock, check_run_folder

METRICS, CONFIG = "metrics.jsonl", "config.json"
# The files a run writes in its folder (fnmatch patterns): none may be a link, or the run would
# write through it (bntt/runlock.py). Temporaries of write_atomic are created new, never opened.
RUN_FILES = (LOCK_NAME, RUN_CHECKPOINT, BEST_CHECKPOINT, METRICS, CONFIG, "events.out.tfevents.*")
# The scalars of a metrics row that go to TensorBoard, under split/metric.
LOGGED = ("train_loss", "train_top1", "train_top5", "test_loss", "test_top1", "test_top5")


def run_folder(cfg) -> Path:
    """The run folder: the one being resumed, or out_dir/run_name (a name made from the
    hyperparameters when none is given)."""
    if cfg.resume:
        return run_folder_of(cfg.resume)
    name = cfg.run_name or (f"{cfg.dataset}_{cfg.arch}_T{cfg.num_steps}_lr{cfg.lr}"
                            f"_ep{cfg.num_epochs}_leak{cfg.leak_mem}_seed{cfg.seed}")
    return Path(cfg.out_dir) / name


def check_free(folder: Path, resuming: bool) -> None:
    """UsageError for a folder the run may not write in: one holding links where its files go,
    or, unless resuming, a finished or running run."""
    try:
        check_run_folder(folder, RUN_FILES)
    except RunFolderUnsafe as exc:
        raise UsageError(str(exc)) from None
    if not resuming and (folder / RUN_CHECKPOINT).exists():
        raise UsageError(f"{folder} already holds a run; continue it with --resume {folder} "
                         "or pick another --run_name")


def claim(folder: Path, resuming: bool) -> RunLock:
    """Create the run folder and lock it for this process; then no other process writes there,
    and temporaries left by a killed checkpoint write can go."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_run_folder(folder, RUN_FILES)  # again: mkdir accepts a link to a folder
        lock = RunLock(folder).acquire()
    except (RunFolderBusy, RunFolderUnsafe) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot create the run folder {folder}: "
                         f"{exc.strerror or exc.__class__.__name__}") from None
    try:
        check_free(folder, resuming)  # another run may have finished there since
    except UsageError:
        lock.release()
        raise
    for name in (RUN_CHECKPOINT, BEST_CHECKPOINT):
        for stale in folder.glob(f".{name}.*.tmp"):  # see bntt.checkpoint.write_atomic
            if stale.is_symlink() or stale.is_file():  # unlinking a link leaves its target
                stale.unlink()
    return lock


def kept_checkpoint(epoch: int) -> str:
    """What the run folder holds when 1-based `epoch` stops before its checkpoint."""
    return f"{RUN_CHECKPOINT} still holds epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written"


class RunLog:
    """The run folder's logs: config.json, metrics.jsonl (one line per epoch) and TensorBoard
    events. A write that fails (a full disk) is one WriteError that says what was kept.

    Example::

        log = RunLog(folder, cfg, start_epoch=0)
        log.epoch({"epoch": 1, "lr": 0.1, "train_loss": 2.3, ...}, model)
        log.close()
    """

    def __init__(self, folder: Path, cfg, start_epoch: int):
        self.metrics_path = folder / METRICS
        kept = read_metrics(self.metrics_path, start_epoch)  # epochs the checkpoint holds
        for path, data in ((folder / CONFIG, json.dumps(cfg.to_dict(), indent=2) + "\n"),
                           (self.metrics_path, "".join(line + "\n" for line in kept))):
            with reported_write(path, f"the previous {path.name}, if any, is intact"):
                write_atomic(path, lambda f: f.write(data.encode()))
        self.events = EventFile(folder, purge_step=start_epoch + 1 if start_epoch else None)
        with reported_write(self.events.path, "no checkpoint was changed"):
            self.events.write()

    def epoch(self, row: dict, model) -> None:
        """Log one epoch's metrics row, and the gammas of the model's BNTT layers per step."""
        epoch, events = row["epoch"], self.events
        for key in LOGGED:
            if key in row:
                split, metric = key.split("_")
                events.scalar(f"{split}/{metric}", row[key], epoch)
        events.scalar("lr", row["lr"], epoch)
        events.scalar("time/epoch_seconds", row["epoch_seconds"], epoch)
        events.scalar("time/train_img_s", row["train_img_s"], epoch)
        for name, bn in model.bntt_layers():
            gammas = bn.weight.detach().float().cpu()
            for t in range(bn.num_steps):
                events.histogram(f"gamma/{name}/t{t:02d}", gammas[t], epoch)
        for stat in ("gamma_grad_mean", "gamma_grad_std"):
            for name, per_step in row.get(stat, {}).items():
                for t, value in enumerate(per_step):
                    events.scalar(f"{stat}/{name}/t{t:02d}", value, epoch)
        with reported_write(events.path, kept_checkpoint(epoch)):
            events.write()
        with reported_write(self.metrics_path, kept_checkpoint(epoch)):
            # before the checkpoint (see read_metrics); never through a link planted there
            append_bytes(self.metrics_path, (json.dumps(row) + "\n").encode())

    def close(self) -> None:
        self.events.close()


def read_metrics(path: Path, up_to_epoch: int) -> list[str]:
    """The lines of metrics.jsonl for epochs 1..up_to_epoch. A last line cut short by a kill
    is dropped (its epoch has no checkpoint and is trained again); damage elsewhere is an error."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            epoch = json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break
            raise UsageError(f"{path} line {number} is not a metrics record; repair or remove "
                             "that line to resume") from None
        if epoch <= up_to_epoch:
            kept.append(line)
    return kept


def save_checkpoints(folder: Path, ckpt: dict, improved: bool) -> None:
    """last.pt every epoch, best.pt when the test top-1 improved; each written atomically, so a
    failed or interrupted write leaves the previous file as it was."""
    for name in ([BEST_CHECKPOINT] if improved else []) + [RUN_CHECKPOINT]:
        with reported_write(folder / name, f"the previous {name}, if any, is intact"):
            save_atomic(ckpt, folder / name)
