"""One run's configuration: the options table, read from defaults, a TOML file, the command
line or a checkpoint, and checked once.

    cfg, ckpt = resolve(["--config", "configs/quickstart.toml", "--lr", "0.05"])
    cfg.lr, cfg.fc_hidden_sizes, cfg.to_dict()        # 0.05, (256, 256), {...}
    model = bntt.networks.build_network(cfg)

The same `Config` builds the network (bntt/networks.py), names and fills the run folder, and is
stored in every checkpoint as a plain dict (`to_dict`), so that a checkpoint says what network
it holds. Defaults up to `test_display_freq` are the authors' flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
from dataclasses import dataclass, field

from bntt import distributed
from bntt.checkpoint import checkpoint_file, load_checkpoint
from bntt.cli import DEVICES, UsageError, require
from bntt.coding import SEQUENCE_CODINGS, SEQUENCE_ORDERS
from bntt.data import DATASETS
from bntt.engines import ENGINES
from bntt.names import check_name
from bntt.networks import ARCHS, SPIKING_ARCHS
from bntt.norms import NORMS, TRAINS_ON_ALL_STEPS
from bntt.paper import WEIGHT_DECAY

SEED_RANGE = 2 ** 32  # NumPy's seeds are 32-bit
# Upper bounds, so that a typo is one line rather than an allocation failure or a fork storm:
# the paper's runs use T <= 30 and Sequential MNIST read by pixels T = 784.
MAX_STEPS, MAX_WORKERS, MAX_HIDDEN_LAYERS, MAX_HIDDEN_SIZE = 4096, 256, 64, 16384


def option(default, text: str):
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class Config:
    """The options of train.py, one field each (the flag --<field>, the TOML key <field>).

    Example::

        cfg = Config(arch="vgg9", dataset="cifar10", num_steps=25, lr=0.3, leak_mem=0.95)
        cfg = dataclasses.replace(cfg, lr=0.1)     # checked again
    """
    seed: int = option(0, "random seed")
    num_steps: int = option(25, f"number of time steps T (at most {MAX_STEPS})")
    batch_size: int = option(128, "training batch size (the test batch is twice this)")
    lr: float = option(0.1, "initial learning rate (divided by 10 after 50%%, 70%%, 90%% of the "
                            "epochs)")
    leak_mem: float = option(0.99, "membrane leak lambda")
    arch: str = option("vgg11", f"network: {', '.join(ARCHS)} (fc: for the sequence datasets; "
                                "*_ann: the non-spiking twins)")
    dataset: str = option("cifar100", f"dataset: {', '.join(DATASETS)}")
    num_epochs: int = option(120, "number of epochs")
    num_workers: int = option(4, f"data loader worker processes (at most {MAX_WORKERS})")
    train_display_freq: int = option(10, "print the training loss every N epochs")
    test_display_freq: int = option(10, "evaluate on the test set every N epochs (and after the "
                                        "last)")
    data_dir: str = option("./data", "where datasets are read from (and downloaded to)")
    download: bool = option(False, "download the dataset even if it is present")
    device: str = option("auto", f"{DEVICES} (auto: CUDA if available)")
    out_dir: str = option("runs", "parent folder of run folders")
    run_name: str = option("", "run folder name (default: built from the hyperparameters)")
    resume: str = option("", "continue the run in this run folder (its last.pt) or from this "
                             "checkpoint file")
    amp: bool = option(False, "bf16 autocast (CUDA or CPU; the membrane stays float32)")
    engine: str = option("auto", "time-stepping engine: auto (fused on CUDA, cpu on a CPU, else "
                                 "multistep), reference (per-step loop), multistep, cpu, fused")
    drop_last_test: bool = option(False, "score only full test batches, as the authors did "
                                         "(9,728 of 10,000 CIFAR images with batch 256)")
    eval_seed: int = option(0, "seed of the Poisson draws of every evaluation")
    train_samples: int = option(0, "use only the first N training images (0: all)")
    test_samples: int = option(0, "use only the first N test images (0: all)")
    seq_order: str = option("rows", "sequence datasets: read an image row by row (T = 28) or by "
                                    "pixels (T = 784)")
    seq_coding: str = option("direct", "sequence datasets: feed intensities as input currents "
                                       "(direct) or as spikes firing with their probability "
                                       "(poisson)")
    fc_hidden: str = option("256,256", f"arch fc: hidden layer sizes, comma-separated (at most "
                                       f"{MAX_HIDDEN_LAYERS} layers of at most {MAX_HIDDEN_SIZE})")
    norm: str = option("bntt", "normalisation of every spiking layer: bntt (the paper), bn (one "
                               "BatchNorm shared by all steps), tdbn (threshold-dependent), tebn "
                               "(temporal effective), tab (temporal accumulated), mpbn (a second "
                               "BatchNorm on the membrane potential), none")
    bntt_sync: str = option("global", "under torchrun: BNTT statistics of every step over the "
                                      "global batch (global: the one-process network) or per "
                                      "process (local)")
    weight_decay: float = option(WEIGHT_DECAY, "SGD weight decay on every parameter (the paper: "
                                               "1e-4); another value is an analysis of the early "
                                               "exit, not the paper's recipe")
    gamma_decay: bool = option(True, "weight decay on BNTT's gammas, as on every parameter (the "
                                     "paper); --no-gamma_decay exempts the gammas only: an "
                                     "analysis of the early exit, not the paper's recipe")

    def __post_init__(self):
        self.check()

    @property
    def fc_hidden_sizes(self) -> tuple[int, ...]:
        """fc_hidden "256,256" -> (256, 256)."""
        return parse_hidden(self.fc_hidden)

    @property
    def spiking(self) -> bool:
        """Whether the network has time steps (the *_ann twins have none)."""
        return self.arch in SPIKING_ARCHS

    def to_dict(self) -> dict:
        """The options as plain values: what config.json and every checkpoint hold."""
        return dataclasses.asdict(self)

    def check(self) -> None:
        """UsageError, in one line, for the first option that is out of its range."""
        try:
            for kind, choices in (("arch", ARCHS), ("dataset", DATASETS), ("engine", ENGINES),
                                  ("seq_order", SEQUENCE_ORDERS), ("seq_coding", SEQUENCE_CODINGS),
                                  ("norm", NORMS), ("bntt_sync", distributed.SYNC_MODES)):
                check_name(kind, getattr(self, kind), choices)
            parse_hidden(self.fc_hidden)
        except ValueError as err:
            raise UsageError(str(err)) from None
        require([
            (self.num_steps >= 1, f"num_steps must be >= 1, got {self.num_steps}"),
            (self.num_steps <= MAX_STEPS, f"num_steps must be at most {MAX_STEPS}, got {self.num_steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.num_epochs >= 1, f"num_epochs must be >= 1, got {self.num_epochs}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0 and math.isfinite(self.weight_decay),
             f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 < self.leak_mem <= 1, f"leak_mem must be in (0, 1], got {self.leak_mem}"),
            (0 <= self.num_workers <= MAX_WORKERS,
             f"num_workers must be in 0..{MAX_WORKERS}, got {self.num_workers}"),
            (self.train_display_freq >= 1 and self.test_display_freq >= 1,
             "train_display_freq and test_display_freq must be >= 1"),
            (self.train_samples >= 0 and self.test_samples >= 0,
             "train_samples and test_samples must be >= 0"),
            (0 <= self.seed < SEED_RANGE, f"seed must be in 0..{SEED_RANGE - 1}, got {self.seed}"),
            (not (self.norm in TRAINS_ON_ALL_STEPS and self.engine == "reference"),
             f"norm {self.norm} normalises over all steps at once: train it with --engine "
             "multistep, cpu, fused or auto, not reference"),
            (0 <= self.eval_seed < SEED_RANGE,
             f"eval_seed must be in 0..{SEED_RANGE - 1}, got {self.eval_seed}"),
            (plain_folder_name(self.run_name) or not self.run_name,
             f"run_name must be a plain folder name (no '/', not '.' or '..', at most 255 "
             f"bytes), got {self.run_name!r}"),
        ])

    @classmethod
    def from_dict(cls, values: dict, source) -> "Config":
        """The options in `values` (read from `source`: a config file or a checkpoint) over the
        defaults, each checked to be of its field's type (an int is taken for a float)."""
        return cls(**typed(values, source))


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Options that may differ between a run and its resumption; the others would change the run.
# The batches, augmentation and spikes of an epoch follow from (seed, epoch) alone
# (bntt/seeding.py), so the worker count may change. A resumed run is bit-identical to an
# uninterrupted one on the same device (docs/reliability.md).
RESUME_OVERRIDABLE = {"device", "data_dir", "download", "train_display_freq", "test_display_freq",
                      "resume", "num_workers"}
# What a checkpoint must hold to be resumed.
TRAINING_STATE = ("state_dict", "optimizer", "epoch", "accuracy", "best_epoch", "rng", "config")


def typed(values: dict, source) -> dict:
    """`values` with each of the type its field has; any other type is a UsageError."""
    out = {}
    for key, value in values.items():
        kind = type(FIELDS[key].default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UsageError(f"{key} in {source} must be {kind.__name__}, got {value!r}")
        out[key] = value
    return out


def parse_hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ValueError(f"fc_hidden must be positive sizes separated by commas, got {text!r}")
    if len(sizes) > MAX_HIDDEN_LAYERS or max(sizes) > MAX_HIDDEN_SIZE:
        raise ValueError(f"fc_hidden must be at most {MAX_HIDDEN_LAYERS} sizes of at most "
                         f"{MAX_HIDDEN_SIZE}, got {text!r}")
    return sizes


def plain_folder_name(name: str) -> bool:
    """A single folder name: run folders stay inside out_dir."""
    return (name not in ("", ".", "..") and "/" not in name and "\0" not in name
            and len(name.encode(errors="surrogateescape")) <= 255)


# -- where the options come from --------------------------------------------------------------

def build_parser(description: str = "") -> argparse.ArgumentParser:
    """--config FILE.toml and one flag per option; a flag not given is absent from the result,
    so that the layers below it (defaults, file, checkpoint) show through."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="FILE.toml",
                        help="read options from a TOML file; command-line flags override it")
    for name, f in FIELDS.items():
        text = f.metadata["help"]
        if isinstance(f.default, bool):  # --amp / --no-amp: a flag can undo a file's `amp = true`
            parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, help=text)
        else:
            shown = f" (default: {f.default})" if f.default not in ("", False) else ""
            parser.add_argument(f"--{name}", type=type(f.default), help=text + shown)
    return parser


def read_config_file(path: str) -> dict:
    """The options of a TOML file, typed; an unknown key or an unreadable file is a UsageError."""
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
        if key not in FIELDS:
            raise UsageError(f"unknown key {key!r} in {path}")
    return typed(values, path)


def saved_config(ckpt: dict, source) -> dict | None:
    """The options a checkpoint of train.py records (typed; options of a later version are
    left out), or None for a checkpoint that records none (the authors')."""
    cfg = ckpt.get("config")
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise UsageError(f"{source} holds no run configuration")
    return typed({k: v for k, v in cfg.items() if k in FIELDS}, source)


def resolve(argv, description: str = "") -> tuple[Config, dict | None]:
    """Defaults < config file < command line. With --resume, the checkpoint's configuration
    replaces the first two, and the others count as flags: only those that repeat the run's own
    or are in RESUME_OVERRIDABLE are accepted. Returns (config, the checkpoint or None)."""
    explicit = vars(build_parser(description).parse_args(argv))
    given = read_config_file(explicit.pop("config")) if "config" in explicit else {}
    given.update(explicit)
    if not given.get("resume"):
        return Config(**given), None
    source = checkpoint_file(given["resume"])
    ckpt = load_checkpoint(given["resume"])
    missing = [key for key in TRAINING_STATE if key not in ckpt]
    if missing:
        raise UsageError(f"{source} has no training state to resume (no {', '.join(missing)}; "
                         "was it written by this train.py?)")
    saved = saved_config(ckpt, source)
    for key, value in given.items():
        if key in RESUME_OVERRIDABLE or (key == "drop_last_test" and not value):
            saved[key] = value  # drop_last_test: the way out of a run that scored nothing
        elif saved.get(key) != value:
            raise UsageError(f"cannot change {key} when resuming: the checkpoint was trained "
                             f"with {key}={saved.get(key)!r}, not {value!r}")
    return Config(**saved), ckpt
