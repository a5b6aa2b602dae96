"""Train a BNTT spiking VGG (Kim & Panda 2021) from the command line.

    python train.py --config configs/quickstart.toml
    python train.py --num_steps 25 --lr 0.3 --arch vgg9 --dataset cifar10 --batch_size 256 \
        --leak_mem 0.95 --num_workers 4 --num_epochs 100
    python train.py --resume runs/<run folder>
    torchrun --standalone --nproc_per_node 4 train.py --config configs/cifar10_vgg9.toml

Flags keep the authors' names and defaults; --config reads the same keys from a TOML file and
flags given on the command line override it. A run folder holds last.pt and best.pt
(checkpoints), metrics.jsonl (one line per epoch), config.json and TensorBoard events.
Under torchrun each process trains its share of every global batch (--batch_size) and rank 0
writes the run folder (bntt/distributed.py); a job restarted by torchrun continues from the
run folder's last.pt.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import tomllib
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from bntt import distributed, seeding
from bntt.ann import ANN_ARCHS
from bntt.checkpoint import (BEST_CHECKPOINT, RUN_CHECKPOINT, CheckpointError, EventFile,
                             append_bytes, checkpoint_file, load_checkpoint, load_model_state,
                             model_state, reported_write, rng_state, run_folder_of, save_atomic,
                             set_rng_state)
from bntt.checkpoint import write_atomic
from bntt.cli import (DEVICES, StoppedByRank0, UsageError, amp_warning, autocast, memory_for,
                      pick_device, require, run_cli)
from bntt.coding import SEQUENCE_CODINGS, SEQUENCE_ORDERS
from bntt.data import DATASETS, make_datasets, make_loaders
from bntt.data.sampling import set_epoch
from bntt.engines import ENGINES
from bntt.names import check_name
from bntt.norms import NORMS
from bntt.paper import lr_at_epoch, sgd
from bntt.runlock import LOCK_NAME, RunFolderBusy, RunFolderUnsafe, RunLock, check_run_folder
from bntt.models import ARCHS, build_for_dataset
from utill import correct_topk

# name: (type, default, help). Defaults up to test_display_freq are the authors'.
OPTIONS = {
    "seed": (int, 0, "random seed"),
    "num_steps": (int, 25, "number of time steps T (at most 4096)"),
    "batch_size": (int, 128, "training batch size (the test batch is twice this)"),
    "lr": (float, 0.1, "initial learning rate (divided by 10 after 50%%, 70%%, 90%% of the epochs)"),
    "leak_mem": (float, 0.99, "membrane leak lambda"),
    "arch": (str, "vgg11", f"network: {', '.join(ARCHS + ANN_ARCHS)} (fc: for the sequence "
                           "datasets; *_ann: the non-spiking twins)"),
    "dataset": (str, "cifar100", f"dataset: {', '.join(DATASETS)}"),
    "num_epochs": (int, 120, "number of epochs"),
    "num_workers": (int, 4, "data loader worker processes (at most 256)"),
    "train_display_freq": (int, 10, "print the training loss every N epochs"),
    "test_display_freq": (int, 10, "evaluate on the test set every N epochs (and after the last)"),
    "data_dir": (str, "./data", "where datasets are read from (and downloaded to)"),
    "download": (bool, False, "download the dataset even if it is present"),
    "device": (str, "auto", f"{DEVICES} (auto: CUDA if available)"),
    "out_dir": (str, "runs", "parent folder of run folders"),
    "run_name": (str, "", "run folder name (default: built from the hyperparameters)"),
    "resume": (str, "", "continue the run in this run folder (its last.pt) or from this checkpoint file"),
    "amp": (bool, False, "bf16 autocast (CUDA or CPU; the membrane stays float32)"),
    "engine": (str, "auto", "time-stepping engine: auto (fused on CUDA, cpu on a CPU, else "
                            "multistep), reference (per-step loop), multistep, cpu, fused"),
    "drop_last_test": (bool, False, "score only full test batches, as the authors did (9,728 of "
                                    "10,000 CIFAR images with batch 256)"),
    "eval_seed": (int, 0, "seed of the Poisson draws of every evaluation"),
    "train_samples": (int, 0, "use only the first N training images (0: all)"),
    "test_samples": (int, 0, "use only the first N test images (0: all)"),
    "seq_order": (str, "rows", "sequence datasets: read an image row by row (T = 28) or by pixels "
                               "(T = 784)"),
    "seq_coding": (str, "direct", "sequence datasets: feed intensities as input currents (direct) "
                                  "or as spikes firing with their probability (poisson)"),
    "fc_hidden": (str, "256,256", "arch fc: hidden layer sizes, comma-separated (at most 64 "
                                  "layers of at most 16384)"),
    "norm": (str, "bntt", "normalisation of every spiking layer: bntt (the paper), bn (one "
                          "BatchNorm shared by all steps), tdbn (threshold-dependent), none"),
    "bntt_sync": (str, "global", "under torchrun: BNTT statistics of every step over the global "
                                 "batch (global: the one-process network) or per process (local)"),
}
# Flags that may differ between a run and its resumption; the others would change the run.
# The batches, augmentation and spikes of an epoch follow from (seed, epoch) alone
# (bntt/seeding.py), so the worker count may change. A resumed run is bit-identical to an
# uninterrupted one on the same device (docs/reliability.md).
RESUME_OVERRIDABLE = {"device", "data_dir", "download", "train_display_freq", "test_display_freq",
                      "resume", "num_workers"}
# What a checkpoint must hold to be resumed.
TRAINING_STATE = ("state_dict", "optimizer", "epoch", "accuracy", "best_epoch", "rng", "config")
SEED_RANGE = 2 ** 32  # NumPy's seeds are 32-bit
# Upper bounds, so that a typo is one line rather than an allocation failure or a fork storm:
# the paper's runs use T <= 30 and Sequential MNIST read by pixels T = 784.
MAX_STEPS, MAX_WORKERS, MAX_HIDDEN_LAYERS, MAX_HIDDEN_SIZE = 4096, 256, 64, 16384
METRICS, CONFIG = "metrics.jsonl", "config.json"
# The files a run writes in its folder (fnmatch patterns): none may be a link, or the run would
# write through it (bntt/runlock.py). Temporaries of write_atomic are created new, never opened.
RUN_FILES = (LOCK_NAME, RUN_CHECKPOINT, BEST_CHECKPOINT, METRICS, CONFIG, "events.out.tfevents.*")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="FILE.toml",
                        help="read options from a TOML file; command-line flags override it")
    for name, (kind, default, text) in OPTIONS.items():
        shown = f" (default: {default})" if default not in ("", False) else ""
        if kind is bool:  # --amp / --no-amp, so a flag can undo a config file's `amp = true`
            parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(f"--{name}", type=kind, help=text + shown)
    return parser


def read_config_file(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"config file {path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text (TOML files are)") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    for key in values:
        if key not in OPTIONS:
            raise UsageError(f"unknown key {key!r} in {path}")
    return typed_options(values, path)


def typed_options(values: dict, source) -> dict:
    """`values` (options read from `source`: a config file or a checkpoint's config) with each
    of the type OPTIONS gives it (an int is taken for a float); any other type is a UsageError."""
    typed = {}
    for key, value in values.items():
        kind = OPTIONS[key][0]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UsageError(f"{key} in {source} must be {kind.__name__}, got {value!r}")
        typed[key] = value
    return typed


def validate(cfg: dict) -> None:
    try:
        for kind, choices in (("arch", ARCHS + ANN_ARCHS), ("dataset", DATASETS), ("engine", ENGINES),
                              ("seq_order", SEQUENCE_ORDERS), ("seq_coding", SEQUENCE_CODINGS),
                              ("norm", NORMS), ("bntt_sync", distributed.SYNC_MODES)):
            check_name(kind, cfg[kind], choices)
        hidden_sizes(cfg)
    except ValueError as err:
        raise UsageError(str(err)) from None
    checks = [
        (cfg["num_steps"] >= 1, f"num_steps must be >= 1, got {cfg['num_steps']}"),
        (cfg["num_steps"] <= MAX_STEPS, f"num_steps must be at most {MAX_STEPS}, got {cfg['num_steps']}"),
        (cfg["batch_size"] >= 1, f"batch_size must be >= 1, got {cfg['batch_size']}"),
        (cfg["num_epochs"] >= 1, f"num_epochs must be >= 1, got {cfg['num_epochs']}"),
        (cfg["lr"] > 0 and math.isfinite(cfg["lr"]), f"lr must be positive, got {cfg['lr']}"),
        (0 < cfg["leak_mem"] <= 1, f"leak_mem must be in (0, 1], got {cfg['leak_mem']}"),
        (0 <= cfg["num_workers"] <= MAX_WORKERS,
         f"num_workers must be in 0..{MAX_WORKERS}, got {cfg['num_workers']}"),
        (cfg["train_display_freq"] >= 1 and cfg["test_display_freq"] >= 1,
         "train_display_freq and test_display_freq must be >= 1"),
        (cfg["train_samples"] >= 0 and cfg["test_samples"] >= 0,
         "train_samples and test_samples must be >= 0"),
        (0 <= cfg["seed"] < SEED_RANGE, f"seed must be in 0..{SEED_RANGE - 1}, got {cfg['seed']}"),
        (not (cfg["norm"] == "tdbn" and cfg["engine"] == "reference"),
         "norm tdbn normalises over all steps at once: train it with --engine multistep, fused "
         "or auto, not reference"),
        (0 <= cfg["eval_seed"] < SEED_RANGE,
         f"eval_seed must be in 0..{SEED_RANGE - 1}, got {cfg['eval_seed']}"),
        (plain_folder_name(cfg["run_name"]) or not cfg["run_name"],
         f"run_name must be a plain folder name (no '/', not '.' or '..', at most 255 bytes), "
         f"got {cfg['run_name']!r}"),
    ]
    require(checks)


def hidden_sizes(cfg: dict) -> tuple[int, ...]:
    """fc_hidden "256,256" -> (256, 256)."""
    try:
        sizes = tuple(int(part) for part in cfg["fc_hidden"].split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ValueError(f"fc_hidden must be positive sizes separated by commas, got {cfg['fc_hidden']!r}")
    if len(sizes) > MAX_HIDDEN_LAYERS or max(sizes) > MAX_HIDDEN_SIZE:
        raise ValueError(f"fc_hidden must be at most {MAX_HIDDEN_LAYERS} sizes of at most "
                         f"{MAX_HIDDEN_SIZE}, got {cfg['fc_hidden']!r}")
    return sizes


def build_network(cfg: dict):
    """The network a run configuration describes (bntt.models.build_for_dataset)."""
    return build_for_dataset(cfg["arch"], cfg["dataset"], cfg["num_steps"], cfg["leak_mem"],
                             cfg["engine"], cfg["seq_order"], cfg["seq_coding"], hidden_sizes(cfg),
                             cfg["norm"])


def plain_folder_name(name: str) -> bool:
    """A single folder name: run folders stay inside out_dir."""
    return (name not in ("", ".", "..") and "/" not in name and "\0" not in name
            and len(name.encode(errors="surrogateescape")) <= 255)


def parse_flags(argv) -> dict:
    """The options given on the command line, and only those."""
    return vars(build_parser().parse_args(argv))


def resolve_config(argv) -> tuple[dict, dict | None]:
    """Defaults < config file < command line; with --resume, the checkpoint's config instead of
    the first two, and the file's values like flags: only those that repeat the run's own or
    are in RESUME_OVERRIDABLE are accepted. Returns (config, checkpoint or None)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    explicit = parse_flags(argv)
    cfg = {name: default for name, (_, default, _) in OPTIONS.items()}
    given = read_config_file(explicit.pop("config")) if "config" in explicit else {}
    given.update(explicit)
    cfg.update(given)
    ckpt = None
    if cfg["resume"]:
        ckpt = load_checkpoint(cfg["resume"])
        missing = [key for key in TRAINING_STATE if key not in ckpt]
        if missing:
            raise UsageError(f"{checkpoint_file(cfg['resume'])} has no training state to resume "
                             f"(no {', '.join(missing)}; was it written by this train.py?)")
        if not isinstance(ckpt["config"], dict):
            raise UsageError(f"{checkpoint_file(cfg['resume'])} holds no run configuration")
        saved = typed_options({k: v for k, v in ckpt["config"].items() if k in OPTIONS},
                              checkpoint_file(cfg["resume"]))
        for key, value in given.items():
            if key in RESUME_OVERRIDABLE or (key == "drop_last_test" and not value):
                saved[key] = value  # drop_last_test: the way out of a run that scored nothing
            elif saved.get(key) != value:
                raise UsageError(f"cannot change {key} when resuming: the checkpoint was trained "
                                 f"with {key}={saved.get(key)!r}, not {value!r}")
        cfg = {name: saved.get(name, default) for name, (_, default, _) in OPTIONS.items()}
    validate(cfg)
    if not cfg["resume"] and distributed.restart_count() and (run_folder(cfg) / RUN_CHECKPOINT).exists():
        # torchrun restarted the job after a failure: continue from its last checkpoint
        return resolve_config([*argv, "--resume", str(run_folder(cfg))])
    return cfg, ckpt


def run_folder(cfg: dict) -> Path:
    """The run folder: the one being resumed, or out_dir/run_name (a name made from the
    hyperparameters when none is given)."""
    if cfg["resume"]:
        return run_folder_of(cfg["resume"])
    name = cfg["run_name"] or (f"{cfg['dataset']}_{cfg['arch']}_T{cfg['num_steps']}_lr{cfg['lr']}"
                               f"_ep{cfg['num_epochs']}_leak{cfg['leak_mem']}_seed{cfg['seed']}")
    return Path(cfg["out_dir"]) / name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device


@dataclass
class Run:
    """What the epochs of one run share. Built by `prepare_run` before anything is written."""
    cfg: dict
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

    @property
    def amp(self) -> bool:
        return self.cfg["amp"]


def load_data(cfg: dict, pin_memory: bool, world: distributed.World):
    """(train loader, test loader) of this process; a missing dataset or a bad size stops the
    run here."""
    train_set, test_set = make_datasets(cfg["dataset"], cfg["data_dir"], cfg["download"],
                                        cfg["num_steps"])
    if cfg["train_samples"]:
        train_set = Subset(train_set, range(min(cfg["train_samples"], len(train_set))))
    if cfg["test_samples"]:
        test_set = Subset(test_set, range(min(cfg["test_samples"], len(test_set))))
    if len(train_set) < cfg["batch_size"]:
        raise UsageError(f"batch_size {cfg['batch_size']} is larger than the {len(train_set)} "
                         "training images (training drops the last partial batch)")
    if cfg["drop_last_test"] and len(test_set) < 2 * cfg["batch_size"]:
        raise UsageError(f"--drop_last_test scores only full test batches of {2 * cfg['batch_size']} "
                         f"images (twice batch_size), and there are {len(test_set)} test images: "
                         "nothing would be scored; "
                         + ("resume with --no-drop_last_test to score them all" if cfg["resume"]
                            else "drop --drop_last_test or lower --batch_size"))
    return make_loaders(train_set, test_set, cfg["batch_size"], 2 * cfg["batch_size"],
                        cfg["num_workers"], cfg["drop_last_test"], pin_memory=pin_memory,
                        seed=cfg["seed"], rank=world.rank, world=world.size)


def prepare_run(cfg: dict, ckpt: dict | None, world: distributed.World | None = None) -> Run:
    """Data, model and optimiser, restored from `ckpt` when resuming. Writes nothing, so that
    every bad input stops the run before its folder is touched. `world`: this process's place
    under torchrun (a world of one without)."""
    world = world or distributed.World()
    device = pick_device(process_device(cfg["device"]))
    folder = run_folder(cfg)
    try:
        check_run_folder(folder, RUN_FILES)
    except RunFolderUnsafe as exc:
        raise UsageError(str(exc)) from None
    if not cfg["resume"] and (folder / RUN_CHECKPOINT).exists():
        raise UsageError(f"{folder} already holds a run; continue it with --resume {folder} "
                         "or pick another --run_name")
    if cfg["batch_size"] % world.size:
        raise UsageError(f"batch_size {cfg['batch_size']} is the global batch and must divide "
                         f"among the {world.size} processes")
    seed_everything(cfg["seed"])
    try:  # the initial weights are the first draws after the seed (loading data draws none)
        with memory_for("the network"):
            model = build_network(cfg)
    except ValueError as err:
        raise UsageError(str(err)) from None
    train_loader, test_loader = load_data(cfg, device.type == "cuda", world)
    if (ckpt is not None and ckpt["config"].get("drop_last_test") is True and not cfg["drop_last_test"]
            and len(test_loader.dataset) >= 2 * cfg["batch_size"]):  # it scored test images
        raise UsageError("cannot change drop_last_test when resuming: the checkpoint was trained "
                         "with drop_last_test=True, not False")
    try:
        with memory_for("the network"):
            model = model.to(device).set_engine(cfg["engine"])
    except RuntimeError as err:
        raise UsageError(f"--engine {cfg['engine']}: {err}") from None
    try:
        net = distributed.prepare_model(model, world, cfg["bntt_sync"])
    except ValueError as err:
        raise UsageError(str(err)) from None
    model = distributed.unwrap(net)  # the ANN twin's BatchNorms may have become SyncBatchNorms
    run = Run(cfg, folder, device, model, sgd(model.parameters(), cfg["lr"]), train_loader,
              test_loader, engine=model.backend.name if model.backend else cfg["engine"],
              world=world, net=net)
    if ckpt is not None:
        restore(run, ckpt)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return run


def process_device(name: str) -> str:
    try:
        return distributed.process_device(name)
    except ValueError as err:
        raise UsageError(str(err)) from None


def restore(run: Run, ckpt: dict) -> None:
    """Model, optimiser, epoch counters and random generators from a checkpoint; a checkpoint
    whose parts do not fit (made by hand, or by another program) is one CheckpointError."""
    source = checkpoint_file(run.cfg["resume"])
    load_model_state(run.model, model_state(ckpt), run.cfg["arch"], source=str(source))
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.start_epoch, run.best_acc, run.best_epoch = (int(ckpt["epoch"]), float(ckpt["accuracy"]),
                                                         int(ckpt["best_epoch"]))
        set_rng_state(ckpt["rng"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{source} does not hold a training state this run can continue "
                              f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                              ) from None
    if not 0 <= run.start_epoch <= run.cfg["num_epochs"]:
        raise CheckpointError(f"{source} says it finished epoch {run.start_epoch} of "
                              f"{run.cfg['num_epochs']}")


def train_epoch(run: Run, epoch: int, desc: str) -> dict:
    """Train 0-based `epoch`: its batches, augmentation and input spikes are those of
    (seed, epoch) (bntt/seeding.py), on one process or many."""
    model, optimizer, device, world = run.model, run.optimizer, run.device, run.world
    model.train()
    set_epoch(run.train_loader, run.cfg["seed"], epoch)
    spikes_from = seeding.generator(run.cfg["seed"], epoch, seeding.POISSON, device=device)
    batches = run.train_loader.batch_sampler
    loss_sum, correct1, correct5, count = 0.0, 0, 0, 0
    bar = tqdm(run.train_loader, desc=desc, leave=False, dynamic_ncols=True, disable=not world.is_main)
    for k, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        offset, global_size = batches.shard(k)
        with autocast(device, run.amp):
            output = run.net(images, generator=spikes_from, shard=(offset, global_size))
        loss = distributed.global_batch_loss(output.float(), labels, global_size, world)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
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
            "train_top5": 100.0 * correct5 / count, "train_images": int(count)}


@torch.no_grad()
def evaluate(run: Run, desc: str) -> dict:
    """Top-1/top-5 over every test image (each scored once, by one process), with Poisson draws
    fixed by eval_seed."""
    model, device, world = run.model, run.device, run.world
    if run.cfg["bntt_sync"] == "local":
        distributed.share_buffers(model, world)  # every process scores with rank 0's statistics
    model.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(run.cfg["eval_seed"])
    batches = run.test_loader.batch_sampler
    loss_sum, correct1, correct5, total = 0.0, 0, 0, 0
    for k, (images, labels) in enumerate(tqdm(run.test_loader, desc=desc, leave=False,
                                              dynamic_ncols=True, disable=not world.is_main)):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, run.amp):
            output = model(images, generator=generator, shard=batches.shard(k))
        n = labels.size(0)
        loss_sum += run.criterion(output.float(), labels).item() * n
        c1, c5 = correct_topk(output, labels, topk=(1, 5))
        correct1, correct5, total = correct1 + c1, correct5 + c5, total + n
    loss_sum, correct1, correct5, total = distributed.sum_over_processes(
        (loss_sum, correct1, correct5, total), world, device)
    return {"test_loss": loss_sum / total, "test_top1": 100.0 * correct1 / total,
            "test_top5": 100.0 * correct5 / total, "test_images": int(total)}


def claim_folder(run: Run) -> RunLock:
    """Create the run folder and lock it for this process; then no other process writes there,
    and temporaries left by a killed checkpoint write can go."""
    try:
        run.folder.mkdir(parents=True, exist_ok=True)
        check_run_folder(run.folder, RUN_FILES)  # again: mkdir accepts a link to a folder
        lock = RunLock(run.folder).acquire()
    except (RunFolderBusy, RunFolderUnsafe) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot create the run folder {run.folder}: "
                         f"{exc.strerror or exc.__class__.__name__}") from None
    if not run.cfg["resume"] and (run.folder / RUN_CHECKPOINT).exists():
        lock.release()  # another run finished there since prepare_run looked
        raise UsageError(f"{run.folder} already holds a run; continue it with --resume "
                         f"{run.folder} or pick another --run_name")
    for name in (RUN_CHECKPOINT, BEST_CHECKPOINT):
        for stale in run.folder.glob(f".{name}.*.tmp"):  # see bntt.checkpoint.write_atomic
            if stale.is_symlink() or stale.is_file():  # unlinking a link leaves its target
                stale.unlink()
    return lock


def claim_folder_for_job(run: Run):
    """claim_folder on rank 0, whose answer every process learns before the first exchange of
    training: a folder in use stops the whole job with rank 0's one line."""
    lock, refusal = None, None
    if run.world.is_main:
        try:
            lock = claim_folder(run)
        except BaseException as exc:  # told to the others before it stops this process
            refusal = exc
    if not distributed.rank0_says(refusal is None, run.world, run.device):
        raise refusal if run.world.is_main else StoppedByRank0()
    return lock if lock is not None else nullcontext()


def kept_checkpoint(epoch: int) -> str:
    """What the run folder holds when 1-based `epoch` stops before its checkpoint."""
    return f"{RUN_CHECKPOINT} still holds epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written"


class Outputs:
    """The run folder's logs: config.json, metrics.jsonl (one line per epoch) and TensorBoard
    events. A write that fails (a full disk) is one WriteError that says what was kept."""

    def __init__(self, run: Run):
        self.metrics_path = run.folder / METRICS
        kept = read_metrics(self.metrics_path, run.start_epoch)  # epochs the checkpoint holds
        for path, data in ((run.folder / CONFIG, json.dumps(run.cfg, indent=2) + "\n"),
                           (self.metrics_path, "".join(line + "\n" for line in kept))):
            with reported_write(path, f"the previous {path.name}, if any, is intact"):
                write_atomic(path, lambda f: f.write(data.encode()))
        self.events = EventFile(run.folder, purge_step=run.start_epoch + 1 if run.start_epoch else None)
        with reported_write(self.events.path, "no checkpoint was changed"):
            self.events.write()

    def log(self, row: dict, model) -> None:
        epoch, events = row["epoch"], self.events
        for key in ("train_loss", "train_top1", "train_top5", "test_loss", "test_top1", "test_top5"):
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


def save_checkpoints(run: Run, epoch: int, improved: bool) -> None:
    """last.pt every epoch, best.pt when the test top-1 improved; each written atomically, so a
    failed or interrupted write leaves the previous file as it was."""
    ckpt = {"state_dict": run.model.state_dict(), "global_step": epoch, "accuracy": run.best_acc,
            "best_epoch": run.best_epoch, "epoch": epoch, "optimizer": run.optimizer.state_dict(),
            "rng": rng_state(), "config": run.cfg}
    for name in ([BEST_CHECKPOINT] if improved else []) + [RUN_CHECKPOINT]:
        with reported_write(run.folder / name, f"the previous {name}, if any, is intact"):
            save_atomic(ckpt, run.folder / name)


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


def run_epoch(run: Run, epoch: int) -> dict:
    """Train 0-based `epoch`, evaluate when it is due; returns its metrics row."""
    cfg = run.cfg
    lr = lr_at_epoch(cfg["lr"], epoch, cfg["num_epochs"])
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
    if (epoch + 1) % cfg["test_display_freq"] == 0 or epoch + 1 == cfg["num_epochs"]:
        row.update(evaluate(run, f"epoch {epoch + 1} test"))
    return row


def train_epochs(run: Run, outputs: Outputs) -> dict | None:
    """The epoch loop: train, evaluate, log, checkpoint. Returns the last evaluation."""
    cfg, last_eval = run.cfg, None
    epochs = tqdm(range(run.start_epoch, cfg["num_epochs"]), desc="epochs", initial=run.start_epoch,
                  total=cfg["num_epochs"], dynamic_ncols=True, disable=outputs is None)
    for epoch in epochs:
        row = run_epoch(run, epoch)
        # the first evaluation is the best so far whatever it scored (0% included)
        improved = "test_top1" in row and (run.best_epoch == 0 or row["test_top1"] > run.best_acc)
        if "test_top1" in row:
            last_eval = {k: v for k, v in row.items() if k.startswith("test_")}
        if improved:
            run.best_acc, run.best_epoch = row["test_top1"], epoch + 1
        row["best_top1"] = run.best_acc
        if outputs is None:  # not rank 0: rank 0 writes the run folder
            continue
        outputs.log(row, run.model)
        save_checkpoints(run, epoch + 1, improved)

        summary = f"epoch {epoch + 1}/{cfg['num_epochs']} lr {row['lr']:g} train loss {row['train_loss']:.4f}"
        if "test_top1" in row:
            summary += f" test top-1 {row['test_top1']:.2f}% (best {run.best_acc:.2f}%)"
        if (epoch + 1) % cfg["train_display_freq"] == 0 or "test_top1" in row or epoch + 1 == cfg["num_epochs"]:
            tqdm.write(summary + f" [{row['epoch_seconds']:.1f}s]")
    epochs.close()
    return last_eval


def main(argv=None) -> int:
    cfg, ckpt = resolve_config(argv)
    world = distributed.start(pick_device(process_device(cfg["device"])))
    try:
        run = prepare_run(cfg, ckpt, world)
        if run.start_epoch == cfg["num_epochs"]:  # a finished run: its folder is left untouched
            if world.is_main:
                print(f"nothing to do: {run.folder} already finished {run.start_epoch} epochs "
                      f"(best top-1 {run.best_acc:.2f}% at epoch {run.best_epoch})")
            return 0
        with claim_folder_for_job(run):
            return train_in_folder(run)
    finally:
        distributed.stop(world)


def train_in_folder(run: Run) -> int:
    """The epochs; only rank 0 writes the run folder and prints."""
    cfg, world = run.cfg, run.world
    if not world.is_main:
        train_epochs(run, None)
        return 0
    outputs = Outputs(run)
    n_params = sum(p.numel() for p in run.model.parameters())
    processes = f", {world.size} processes (BNTT statistics {cfg['bntt_sync']})" if world.launched else ""
    tqdm.write(f"{cfg['arch']} on {cfg['dataset']} ({len(run.train_loader.dataset)} train / "
               f"{len(run.test_loader.dataset)} test images), "
               f"{'an ANN: no time steps' if cfg['arch'] in ANN_ARCHS else 'T=' + str(cfg['num_steps'])}, "
               f"{n_params:,} parameters, {run.device}{processes}"
               f"{'' if cfg['arch'] in ANN_ARCHS else ', engine ' + run.engine}"
               f"{', bf16 autocast' if run.amp and run.device.type in ('cuda', 'cpu') else ''}"
               f"{f', resuming after epoch {run.start_epoch}' if run.start_epoch else ''}")
    if warning := amp_warning(run.device, run.amp):
        tqdm.write(warning)
    try:
        last_eval = train_epochs(run, outputs)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python train.py --resume {run.folder} "
              "(it restarts the unfinished epoch)", file=sys.stderr)
        raise
    finally:
        outputs.close()
    print(f"test accuracy: top-1 {last_eval['test_top1']:.2f}%, top-5 {last_eval['test_top5']:.2f}% "
          f"on {last_eval['test_images']} images (best top-1 {run.best_acc:.2f}% at epoch "
          f"{run.best_epoch}); run folder {run.folder}")
    return 0


def cli(argv=None) -> int:
    return run_cli(main, "train.py", argv)


if __name__ == "__main__":
    sys.exit(cli())
