"""Train a BNTT spiking network (Kim & Panda 2021) from the command line.

    python train.py --config configs/quickstart.toml
    python train.py --num_steps 25 --lr 0.3 --arch vgg9 --dataset cifar10 --batch_size 256 \
        --leak_mem 0.95 --num_workers 4 --num_epochs 100
    python train.py --resume runs/<run folder>
    torchrun --standalone --nproc_per_node 4 train.py --config configs/cifar10_vgg9.toml

Flags keep the authors' names and defaults; --config reads the same keys from a TOML file and
flags given on the command line override it (bntt/config.py). A run folder holds last.pt and
best.pt (checkpoints), metrics.jsonl (one line per epoch), config.json and TensorBoard events
(bntt/run_folder.py). Under torchrun each process trains its share of every global batch
(--batch_size) and rank 0 writes the run folder (bntt/distributed.py); a job restarted by
torchrun continues from the run folder's last.pt.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext

from tqdm import tqdm

from bntt import distributed
from bntt.checkpoint import RUN_CHECKPOINT
from bntt.cli import StoppedByRank0, amp_warning, run_cli
from bntt.config import resolve
from bntt.run_folder import RunLog, claim, run_folder
from bntt.training import describe, fit, pick_process_device, prepare_run


def resolve_config(argv=None):
    """(config, checkpoint or None) of this command line; after a restart by torchrun, the run
    goes on from its folder's last checkpoint."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg, ckpt = resolve(argv, __doc__.split("\n\n")[0])
    if not cfg.resume and distributed.restart_count() and (run_folder(cfg) / RUN_CHECKPOINT).exists():
        return resolve([*argv, "--resume", str(run_folder(cfg))])
    return cfg, ckpt


def claim_for_job(run):
    """The run folder's lock on rank 0, whose answer every process learns before the first
    exchange of training: a folder in use stops the whole job with rank 0's one line."""
    lock, refusal = None, None
    if run.world.is_main:
        try:
            lock = claim(run.folder, resuming=bool(run.cfg.resume))
        except BaseException as exc:  # told to the others before it stops this process
            refusal = exc
    if not distributed.rank0_says(refusal is None, run.world, run.device):
        raise refusal if run.world.is_main else StoppedByRank0()
    return lock if lock is not None else nullcontext()


def main(argv=None) -> int:
    cfg, ckpt = resolve_config(argv)
    world = distributed.start(pick_process_device(cfg.device))
    try:
        run = prepare_run(cfg, ckpt, world)
        if run.start_epoch == cfg.num_epochs:  # a finished run: its folder is left untouched
            if world.is_main:
                print(f"nothing to do: {run.folder} already finished {run.start_epoch} epochs "
                      f"(best top-1 {run.best_acc:.2f}% at epoch {run.best_epoch})")
            return 0
        with claim_for_job(run):
            if not world.is_main:
                fit(run, None)
                return 0
            tqdm.write(describe(run))
            if warning := amp_warning(run.device, cfg.amp):
                tqdm.write(warning)
            log = RunLog(run.folder, cfg, run.start_epoch)
            try:
                last = fit(run, log)
            except KeyboardInterrupt:
                print(f"\ninterrupted; continue with: python train.py --resume {run.folder} "
                      "(it restarts the unfinished epoch)", file=sys.stderr)
                raise
            finally:
                log.close()
            print(f"test accuracy: top-1 {last['test_top1']:.2f}%, top-5 {last['test_top5']:.2f}% "
                  f"on {last['test_images']} images (best top-1 {run.best_acc:.2f}% at epoch "
                  f"{run.best_epoch}); run folder {run.folder}")
            return 0
    finally:
        distributed.stop(world)


def cli(argv=None) -> int:
    return run_cli(main, "train.py", argv)


if __name__ == "__main__":
    sys.exit(cli())
