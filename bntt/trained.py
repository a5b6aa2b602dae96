"""A trained network and the test set it is scored on, from a checkpoint: what evaluate.py and
analyze.py share.

Checkpoints of train.py record their configuration; those of the authors' train.py hold only
the weights, so their leak and dataset must be given (the classes and input channels are read
from the weights and must fit the dataset).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bntt.ann import ANN_ARCHS, ANN_MODELS
from bntt.checkpoint import (CheckpointError, checkpoint_file, describe_state, load_checkpoint,
                             load_model_state, model_state)
from bntt.data import DATASETS, dataset_info, make_datasets, make_test_loader
from bntt.models import build_for_dataset


@dataclass
class Trained:
    model: torch.nn.Module
    dataset: str
    config: dict  # the run's configuration ({} for the authors' checkpoints)
    source: Path  # the checkpoint file
    arch: str


def load_trained_ann(path, dataset: str | None = None):
    """The ANN in checkpoint `path` (a file, or a run folder: its last.pt) as a
    bntt.trained.Trained, on the CPU, in eval mode. The checkpoint's config must name its arch
    ("vgg9_ann" or "vgg11_ann") and, unless `dataset` is given, its dataset; the network is
    shaped for the dataset and the weights are loaded strictly. CheckpointError, in one line,
    for anything else."""
    source = checkpoint_file(path)
    ckpt = load_checkpoint(source)
    state = model_state(ckpt)
    cfg = ckpt.get("config", {}) if isinstance(ckpt.get("config"), dict) else {}
    arch = cfg.get("arch")
    if arch not in ANN_MODELS:
        raise CheckpointError(f"{source} is not an ANN checkpoint: its config names arch {arch!r}, "
                              f"not one of {', '.join(ANN_ARCHS)}")
    dataset = dataset or cfg.get("dataset")
    if dataset is None:
        raise CheckpointError(f"{source} does not record its dataset; pass --dataset")
    if dataset not in DATASETS:
        raise CheckpointError(f"{source} names dataset {dataset!r}, not one of {', '.join(DATASETS)}")
    info = DATASETS[dataset]
    if info.kind != "image":
        raise CheckpointError(f"{source}: the ANNs take images, and {dataset} serves {info.kind}")
    model = ANN_MODELS[arch](num_cls=info.num_cls, in_channels=info.in_channels,
                             img_size=info.img_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source} does not fit {arch} on {dataset}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    return Trained(model.eval(), dataset, cfg, source, arch)


def _infer_dataset(desc: dict) -> str:
    if desc["in_channels"] == 1:
        return "fashionmnist"
    return "cifar100" if desc["num_cls"] == 100 else "cifar10"


def load_trained(path, dataset: str | None = None, leak_mem: float | None = None) -> Trained:
    """The network in checkpoint `path` (a file, or a run folder: its last.pt), on the CPU, in
    eval mode; an ANN twin's checkpoint gives the ANN. `dataset` and `leak_mem` override the checkpoint's (and are needed for the
    authors' checkpoints)."""
    source = checkpoint_file(path)
    ckpt = load_checkpoint(source)
    if isinstance(ckpt.get("config"), dict) and ckpt["config"].get("arch") in ANN_ARCHS:
        return load_trained_ann(source, dataset)
    state = model_state(ckpt)
    desc = describe_state(state)
    cfg = ckpt.get("config", {}) if isinstance(ckpt.get("config"), dict) else {}
    leak = leak_mem if leak_mem is not None else cfg.get("leak_mem")
    if leak is None:
        raise CheckpointError(f"{source} does not record leak_mem (a checkpoint of the authors' "
                              "train.py?); pass --leak_mem, e.g. 0.95 for their VGG9/CIFAR-10 command")
    dataset = dataset or cfg.get("dataset") or _infer_dataset(desc)
    info = dataset_info(dataset)
    if desc["arch"] != "fc" and (info.num_cls, info.in_channels) != (desc["num_cls"], desc["in_channels"]):
        raise CheckpointError(f"{source} has {desc['num_cls']} classes and {desc['in_channels']} "
                              f"input channels; {dataset} has {info.num_cls} and {info.in_channels}")
    steps = desc["num_steps"] or cfg.get("num_steps")
    if steps is None:
        raise CheckpointError(f"{source} records neither per-step BNTT weights nor num_steps")
    try:
        model = build_for_dataset(desc["arch"], dataset, steps, leak,
                                  seq_order=cfg.get("seq_order", "rows"),
                                  seq_coding=cfg.get("seq_coding", "direct"),
                                  fc_hidden=desc.get("hidden", ()), norm=cfg.get("norm", "bntt"))
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    load_model_state(model, state, desc["arch"], source=str(source))
    return Trained(model.eval(), dataset, cfg, source, desc["arch"])


def test_loader(trained: Trained, data_dir=None, batch_size: int = 256, test_samples: int = 0,
                num_workers: int = 0, pin_memory: bool = False):
    """The test set of the trained network's dataset (the first `test_samples` if given)."""
    data_dir = data_dir or trained.config.get("data_dir", "./data")
    _, test_set = make_datasets(trained.dataset, data_dir, download=False,
                                num_steps=getattr(trained.model, "num_steps", None))
    if test_samples:
        test_set = torch.utils.data.Subset(test_set, range(min(test_samples, len(test_set))))
    return make_test_loader(test_set, batch_size, num_workers, pin_memory=pin_memory)
