"""A trained network and the test set it is scored on, from a checkpoint: what evaluate.py and
analyze.py share.

Checkpoints of train.py record their configuration (bntt/config.py), which builds the network
(bntt/networks.py). Those of the authors' train.py hold only the weights of a VGG, so their
leak and dataset must be given; the classes and input channels are read from the weights and
must fit the dataset.

    trained = load_trained("runs/quickstart")          # a run folder: its last.pt
    trained.model, trained.dataset, trained.config.num_steps
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bntt.checkpoint import (CheckpointError, authors_network, checkpoint_file, load_checkpoint,
                             load_weights, model_state)
from bntt.cli import UsageError
from bntt.config import Config, saved_config
from bntt.data import DATASETS, dataset_info, make_datasets, make_test_loader
from bntt.networks import ANN_ARCHS, SPIKING_ARCHS, build_network


@dataclass
class Trained:
    model: torch.nn.Module
    config: Config  # the run's, or, for the authors' checkpoints, what their weights say
    source: Path  # the checkpoint file

    @property
    def dataset(self) -> str:
        return self.config.dataset

    @property
    def arch(self) -> str:
        return self.config.arch

    @property
    def spiking(self) -> bool:
        return self.config.spiking


def _infer_dataset(net: dict) -> str:
    if net["in_channels"] == 1:
        return "fashionmnist"
    return "cifar100" if net["num_cls"] == 100 else "cifar10"


def checkpoint_config(ckpt: dict, source, dataset: str | None = None,
                      leak_mem: float | None = None) -> Config:
    """The configuration of the network in `ckpt`: the one it records, or, for the authors'
    checkpoints, the one their weights describe. `dataset` and `leak_mem` replace the
    recorded ones; a dataset of other classes or input channels is refused."""
    saved = saved_config(ckpt, source)
    if saved is None:  # the authors' train.py: only weights
        net = authors_network(model_state(ckpt))
        if leak_mem is None:
            raise CheckpointError(f"{source} does not record leak_mem (a checkpoint of the authors' "
                                  "train.py?); pass --leak_mem, e.g. 0.95 for their VGG9/CIFAR-10 "
                                  "command")
        if net["num_steps"] is None:
            raise CheckpointError(f"{source} records neither per-step BNTT weights nor num_steps")
        saved = {"arch": net["arch"], "num_steps": net["num_steps"],
                 "dataset": dataset or _infer_dataset(net)}
        shape = net["num_cls"], net["in_channels"]
    else:
        if "dataset" not in saved and dataset is None:
            raise CheckpointError(f"{source} does not record its dataset; pass --dataset")
        if "dataset" in saved and saved["dataset"] not in DATASETS:
            raise CheckpointError(f"{source} names dataset {saved['dataset']!r}, not one of "
                                  f"{', '.join(DATASETS)}")
        recorded = dataset_info(saved.get("dataset") or dataset)
        shape = recorded.num_cls, recorded.in_channels
    if dataset is not None:
        info = dataset_info(dataset)
        if saved.get("arch") != "fc" and shape != (info.num_cls, info.in_channels):
            raise CheckpointError(f"{source} has {shape[0]} classes and {shape[1]} input channels; "
                                  f"{dataset} has {info.num_cls} and {info.in_channels}")
        saved["dataset"] = dataset
    if leak_mem is not None:
        saved["leak_mem"] = leak_mem
    try:
        return Config(**saved)
    except UsageError as err:
        raise CheckpointError(f"{source}: {err}") from None


def load_trained(path, dataset: str | None = None, leak_mem: float | None = None,
                 spiking: bool | None = None) -> Trained:
    """The network in checkpoint `path` (a file, or a run folder: its last.pt), on the CPU, in
    eval mode; an ANN twin's checkpoint gives the ANN. `dataset` and `leak_mem` replace the
    checkpoint's (and are needed for the authors' checkpoints). `spiking` True or False
    refuses a checkpoint of the other kind of network."""
    source = checkpoint_file(path)
    ckpt = load_checkpoint(source)
    cfg = checkpoint_config(ckpt, source, dataset, leak_mem)
    if spiking is not None and cfg.spiking != spiking:
        raise CheckpointError(f"{source} is not {'a spiking' if spiking else 'an ANN'} checkpoint: "
                              f"its config names arch {cfg.arch!r}, not one of "
                              f"{', '.join(SPIKING_ARCHS if spiking else ANN_ARCHS)}")
    try:
        model = build_network(cfg)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    load_weights(model, model_state(ckpt), source, f"{cfg.arch} on {cfg.dataset}")
    return Trained(model.eval(), cfg, source)


def load_trained_ann(path, dataset: str | None = None) -> Trained:
    """load_trained for a checkpoint that must hold one of the non-spiking twins."""
    return load_trained(path, dataset, spiking=False)


def test_loader(trained: Trained, data_dir=None, batch_size: int = 256, test_samples: int = 0,
                num_workers: int = 0, pin_memory: bool = False):
    """The test set of the trained network's dataset (the first `test_samples` if given)."""
    _, test_set = make_datasets(trained.dataset, data_dir or trained.config.data_dir,
                                download=False, num_steps=getattr(trained.model, "num_steps", None))
    if test_samples:
        test_set = torch.utils.data.Subset(test_set, range(min(test_samples, len(test_set))))
    return make_test_loader(test_set, batch_size, num_workers, pin_memory=pin_memory)

