"""The training loop of train.py: a run is assembled from its configuration (data, network,
optimiser, restored from a checkpoint when resuming), then trained epoch by epoch, on one
process or many (bntt/distributed.py).

    run = prepare_run(cfg, ckpt)                 # writes nothing: bad input stops here
    with claim(run.folder, resuming=bool(cfg.resume)):
        last_test = fit(run, RunLog(run.folder, cfg, run.start_epoch))

An epoch's batches, augmentation and input spikes follow from (seed, epoch) alone
(bntt/seeding.py), so a resumed run is bit-identical to an uninterrupted one on the same device.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from bntt import distributed, seeding
from bntt.checkpoint import (CheckpointError, checkpoint_file, load_weights, model_state,
                             rng_state, set_rng_state)
from bntt.cli import UsageError, autocast, memory_for, pick_device
from bntt.config import Config
from bntt.data import make_datasets, make_loaders
from bntt.data.sampling import set_epoch
from bntt.networks import build_network
from bntt.paper import lr_at_epoch, sgd
from bntt.run_folder import RunLog, check_free, kept_checkpoint, run_folder, save_checkpoints


@dataclass
class Run:
    """What the epochs of one run share. Built by `prepare_run` before anything is written."""
    cfg: Config
    folder: Path
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    test_loader: DataLoader
    engine: str  # the engine that runs (`auto` resolved)
    world: distributed.World = field(default_factory=distributed.World)
    net: nn.Module | None = None  # what trains: the model, or the model in DDP
    start_epoch: int = 0
    best_acc: float = 0.0
    best_epoch: int = 0
    criterion: nn.Module = field(default_factory=nn.CrossEntropyLoss)


# -- assembling a run --------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device


def process_device(name: str) -> str:
    try:
        return distributed.process_device(name)
    except ValueError as err:
        raise UsageError(str(err)) from None


def load_data(cfg: Config, pin_memory: bool, world: distributed.World):
    """(train loader, test loader) of this process; a missing dataset or a bad size stops the
    run here."""
    train_set, test_set = make_datasets(cfg.dataset, cfg.data_dir, cfg.download, cfg.num_steps)
    if cfg.train_samples:
        train_set = Subset(train_set, range(min(cfg.train_samples, len(train_set))))
    if cfg.test_samples:
        test_set = Subset(test_set, range(min(cfg.test_samples, len(test_set))))
    if len(train_set) < cfg.batch_size:
        raise UsageError(f"batch_size {cfg.batch_size} is larger than the {len(train_set)} "
                         "training images (training drops the last partial batch)")
    if cfg.drop_last_test and len(test_set) < 2 * cfg.batch_size:
        raise UsageError(f"--drop_last_test scores only full test batches of {2 * cfg.batch_size} "
                         f"images (twice batch_size), and there are {len(test_set)} test images: "
                         "nothing would be scored; "
                         + ("resume with --no-drop_last_test to score them all" if cfg.resume
                            else "drop --drop_last_test or lower --batch_size"))
    return make_loaders(train_set, test_set, cfg.batch_size, 2 * cfg.batch_size, cfg.num_workers,
                        cfg.drop_last_test, pin_memory=pin_memory, seed=cfg.seed, rank=world.rank,
                        world=world.size)


def prepare_run(cfg: Config, ckpt: dict | None, world: distributed.World | None = None) -> Run:
    """Data, model and optimiser, restored from `ckpt` when resuming. Writes nothing, so that
    every bad input stops the run before its folder is touched. `world`: this process's place
    under torchrun (a world of one without)."""
    world = world or distributed.World()
    device = pick_process_device(cfg.device)
    folder = run_folder(cfg)
    check_free(folder, resuming=bool(cfg.resume))
    if cfg.batch_size % world.size:
        raise UsageError(f"batch_size {cfg.batch_size} is the global batch and must divide "
                         f"among the {world.size} processes")
    seed_everything(cfg.seed)
    try:  # the initial weights are the first draws after the seed (loading data draws none)
        with memory_for("the network"):
            model = build_network(cfg)
    except ValueError as err:
        raise UsageError(str(err)) from None
    train_loader, test_loader = load_data(cfg, device.type == "cuda", world)
    if (ckpt is not None and ckpt["config"].get("drop_last_test") is True and not cfg.drop_last_test
            and len(test_loader.dataset) >= 2 * cfg.batch_size):  # it scored test images
        raise UsageError("cannot change drop_last_test when resuming: the checkpoint was trained "
                         "with drop_last_test=True, not False")
    try:
        with memory_for("the network"):
            model = model.to(device).set_engine(cfg.engine)
    except RuntimeError as err:
        raise UsageError(f"--engine {cfg.engine}: {err}") from None
    try:
        net = distributed.prepare_model(model, world, cfg.bntt_sync)
    except ValueError as err:
        raise UsageError(str(err)) from None
    model = distributed.unwrap(net)  # the ANN twin's BatchNorms may have become SyncBatchNorms
    gammas = [] if cfg.gamma_decay else [bn.weight for _, bn in model.bntt_layers()]
    run = Run(cfg, folder, device, model, sgd(model.parameters(), cfg.lr, no_decay=gammas,
                                        weight_decay=cfg.weight_decay), train_loader,
              test_loader, engine=model.backend.name if model.backend else cfg.engine,
              world=world, net=net)
    if ckpt is not None:
        restore(run, ckpt)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return run


def pick_process_device(name: str) -> torch.device:
    """This process's device: `name`, or under torchrun the GPU of its local rank."""
    return pick_device(process_device(name))


def restore(run: Run, ckpt: dict) -> None:
    """Model, optimiser, epoch counters and random generators from a checkpoint; a checkpoint
    whose parts do not fit (made by hand, or by another program) is one CheckpointError."""
    source = checkpoint_file(run.cfg.resume)
    load_weights(run.model, model_state(ckpt), source)
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.start_epoch, run.best_acc, run.best_epoch = (int(ckpt["epoch"]), float(ckpt["accuracy"]),
                                                         int(ckpt["best_epoch"]))
        set_rng_state(ckpt["rng"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{source} does not hold a training state this run can continue "
                              f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                              ) from None
    if not 0 <= run.start_epoch <= run.cfg.num_epochs:
        raise CheckpointError(f"{source} says it finished epoch {run.start_epoch} of "
                              f"{run.cfg.num_epochs}")


def correct_topk(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[int]:
    """Number of samples whose target is among the k highest outputs, for each k."""
    with torch.no_grad():
        maxk = min(max(topk), output.shape[1])
        pred = output.topk(maxk, 1, True, True).indices
        correct = pred.eq(target.reshape(-1, 1))  # [B, maxk]; at most one hit per row
        return [int(correct[:, :k].sum()) for k in topk]



# -- one epoch -----------------------------------------------------------------------------

class GammaGradients:
    """Which time steps BNTT's gammas get gradient at: for every BNTT layer and step t, the
    mean and the spread (standard deviation, over channels) of dLoss/dgamma[t, :], averaged
    over the batches of an epoch. The gradient is the loss's, before the optimiser adds weight
    decay. Kept on the model's device, so that adding a batch costs no synchronisation. The row
    also holds each layer's mean gamma per step when it is made (after the epoch's updates), so
    that metrics.jsonl shows the gammas through training and where the gamma exit would fire.

    Example::

        stats = GammaGradients(model.bntt_layers())
        loss.backward(); stats.add()          # after every backward pass
        stats.row()   # {"gamma_grad_mean": {"bntt1": [T floats], ...}, "gamma_grad_std": {...},
                      #  "gamma_mean": {...}}
    """

    def __init__(self, layers):
        self.layers = layers  # [(name, BNTT), ...]
        self.sums = {name: None for name, _ in self.layers}
        self.batches = 0

    def add(self) -> None:
        self.batches += 1
        for name, bn in self.layers:
            grad = bn.weight.grad  # [T, C]; None: no step reached the loss
            grad = torch.zeros_like(bn.weight) if grad is None else grad.detach().float()
            both = torch.stack([grad.mean(1), grad.std(1, correction=0)])
            self.sums[name] = both if self.sums[name] is None else self.sums[name] + both

    def row(self) -> dict:
        if not self.batches or not self.layers:
            return {}
        means = {name: (s / self.batches).tolist() for name, s in self.sums.items()}
        return {"gamma_grad_mean": {name: m[0] for name, m in means.items()},
                "gamma_grad_std": {name: m[1] for name, m in means.items()},
                "gamma_mean": {name: bn.weight.detach().float().mean(1).tolist()
                               for name, bn in self.layers}}


def train_epoch(run: Run, epoch: int, desc: str) -> dict:
    """SGD over the training set for 0-based `epoch`: its batches, augmentation and input spikes
    are those of (seed, epoch) (bntt/seeding.py), on one process or many."""
    model, optimizer, device, world = run.model, run.optimizer, run.device, run.world
    model.train()
    set_epoch(run.train_loader, run.cfg.seed, epoch)
    spikes_from = seeding.generator(run.cfg.seed, epoch, seeding.POISSON, device=device)
    batches = run.train_loader.batch_sampler
    loss_sum, correct1, correct5, count = 0.0, 0, 0, 0
    gamma_grads = GammaGradients(model.bntt_layers())
    bar = tqdm(run.train_loader, desc=desc, leave=False, dynamic_ncols=True, disable=not world.is_main)
    for k, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        offset, global_size = batches.shard(k)
        with autocast(device, run.cfg.amp):
            output = run.net(images, generator=spikes_from, shard=(offset, global_size))
        loss = distributed.global_batch_loss(output.float(), labels, global_size, world)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gamma_grads.add()
        optimizer.step()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training loss became {loss_value}; try a lower --lr")
        c1, c5 = correct_topk(output, labels, topk=(1, 5))
        n = labels.size(0)
        # this process's summed loss: its loss is a share of the global batch's mean (see
        # global_batch_loss) when it runs under torchrun, its own batch's mean otherwise
        loss_sum += loss_value * (global_size / world.size if world.launched else n)
        correct1, correct5, count = correct1 + c1, correct5 + c5, count + n
        bar.set_postfix(loss=f"{loss_sum / count:.4f}", top1=f"{100.0 * correct1 / count:.2f}")
    loss_sum, correct1, correct5, count = distributed.sum_over_processes(
        (loss_sum, correct1, correct5, count), world, device)
    return {"train_loss": loss_sum / count, "train_top1": 100.0 * correct1 / count,
            "train_top5": 100.0 * correct5 / count, "train_images": int(count), **gamma_grads.row()}


@torch.no_grad()
def test_epoch(run: Run, desc: str) -> dict:
    """Top-1/top-5 over every test image (each scored once, by one process), with Poisson draws
    fixed by eval_seed."""
    model, device, world = run.model, run.device, run.world
    if run.cfg.bntt_sync == "local":
        distributed.share_buffers(model, world)  # every process scores with rank 0's statistics
    model.eval()
    generator = seeding.eval_generator(run.cfg.eval_seed, device)  # the analyses' draws too
    batches = run.test_loader.batch_sampler
    loss_sum, correct1, correct5, total = 0.0, 0, 0, 0
    for k, (images, labels) in enumerate(tqdm(run.test_loader, desc=desc, leave=False,
                                              dynamic_ncols=True, disable=not world.is_main)):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, run.cfg.amp):
            output = model(images, generator=generator, shard=batches.shard(k))
        n = labels.size(0)
        loss_sum += run.criterion(output.float(), labels).item() * n
        c1, c5 = correct_topk(output, labels, topk=(1, 5))
        correct1, correct5, total = correct1 + c1, correct5 + c5, total + n
    loss_sum, correct1, correct5, total = distributed.sum_over_processes(
        (loss_sum, correct1, correct5, total), world, device)
    return {"test_loss": loss_sum / total, "test_top1": 100.0 * correct1 / total,
            "test_top5": 100.0 * correct5 / total, "test_images": int(total)}


def check_finite(run: Run, epoch: int) -> None:
    """Stop before a diverged network reaches a checkpoint or the logs: a finite loss can hide
    inf running variances or weights (a huge learning rate does that)."""
    state = run.model.state_dict()
    momenta = {f"momentum of {name}": run.optimizer.state[p].get("momentum_buffer")
               for name, p in run.model.named_parameters() if p in run.optimizer.state}
    for name, value in {**state, **momenta}.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(value.isfinite().all()):
            raise FloatingPointError(f"training diverged in epoch {epoch}: {name} holds non-finite "
                                     f"values; {kept_checkpoint(epoch)}. Try a lower --lr")


def epoch_metrics(run: Run, epoch: int) -> dict:
    """Train 0-based `epoch` at the schedule's learning rate, and test when it is due; its
    metrics row."""
    cfg = run.cfg
    lr = lr_at_epoch(cfg.lr, epoch, cfg.num_epochs)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    started = time.perf_counter()
    row = {"epoch": epoch + 1, "lr": lr}
    row.update(train_epoch(run, epoch, f"epoch {epoch + 1} train"))
    check_finite(run, epoch + 1)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    row["epoch_seconds"] = time.perf_counter() - started
    row["train_img_s"] = row["train_images"] / row["epoch_seconds"]  # data loading included
    if (epoch + 1) % cfg.test_display_freq == 0 or epoch + 1 == cfg.num_epochs:
        row.update(test_epoch(run, f"epoch {epoch + 1} test"))
    return row


# -- the epochs ----------------------------------------------------------------------------

def checkpoint(run: Run, epoch: int) -> dict:
    """What last.pt and best.pt hold after 1-based `epoch` (bntt/checkpoint.py)."""
    return {"state_dict": run.model.state_dict(), "global_step": epoch, "accuracy": run.best_acc,
            "best_epoch": run.best_epoch, "epoch": epoch, "optimizer": run.optimizer.state_dict(),
            "rng": rng_state(), "config": run.cfg.to_dict()}


def fit(run: Run, log: RunLog | None) -> dict | None:
    """The epochs from run.start_epoch: train, test when due, log and checkpoint (`log` None:
    not rank 0, which writes the run folder). Returns the last test metrics."""
    cfg, last_test = run.cfg, None
    epochs = tqdm(range(run.start_epoch, cfg.num_epochs), desc="epochs", initial=run.start_epoch,
                  total=cfg.num_epochs, dynamic_ncols=True, disable=log is None)
    for epoch in epochs:
        row = epoch_metrics(run, epoch)
        # the first test is the best so far whatever it scored (0% included)
        improved = "test_top1" in row and (run.best_epoch == 0 or row["test_top1"] > run.best_acc)
        if "test_top1" in row:
            last_test = {k: v for k, v in row.items() if k.startswith("test_")}
        if improved:
            run.best_acc, run.best_epoch = row["test_top1"], epoch + 1
        row["best_top1"] = run.best_acc
        if log is None:
            continue
        log.epoch(row, run.model)
        save_checkpoints(run.folder, checkpoint(run, epoch + 1), improved)
        summary = f"epoch {epoch + 1}/{cfg.num_epochs} lr {row['lr']:g} train loss {row['train_loss']:.4f}"
        if "test_top1" in row:
            summary += f" test top-1 {row['test_top1']:.2f}% (best {run.best_acc:.2f}%)"
        if (epoch + 1) % cfg.train_display_freq == 0 or "test_top1" in row or epoch + 1 == cfg.num_epochs:
            tqdm.write(summary + f" [{row['epoch_seconds']:.1f}s]")
    epochs.close()
    return last_test


def describe(run: Run) -> str:
    """One line on what trains, printed before the first epoch."""
    cfg, world = run.cfg, run.world
    n_params = sum(p.numel() for p in run.model.parameters())
    processes = f", {world.size} processes (BNTT statistics {cfg.bntt_sync})" if world.launched else ""
    return (f"{cfg.arch} on {cfg.dataset} ({len(run.train_loader.dataset)} train / "
            f"{len(run.test_loader.dataset)} test images), "
            f"{'T=' + str(cfg.num_steps) if cfg.spiking else 'an ANN: no time steps'}, "
            f"{n_params:,} parameters, {run.device}{processes}"
            f"{', engine ' + run.engine if cfg.spiking else ''}"
            f"{', bf16 autocast' if cfg.amp and run.device.type in ('cuda', 'cpu') else ''}"
            f"{f', resuming after epoch {run.start_epoch}' if run.start_epoch else ''}")
