"""Every shipped config resolves to a valid run, and the paper's two configs hold the paper's
commands as bntt/paper.py states them."""
from pathlib import Path

import pytest

import train
from bntt.networks import build_network
from bntt.paper import PAPER_RUNS

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_resolves_and_builds_its_network(path):
    cfg, _ = train.resolve_config(["--config", str(path)])
    model = build_network(cfg)
    assert model.num_steps == cfg.num_steps


@pytest.mark.parametrize("arch,name", [("vgg9", "cifar10_vgg9"), ("vgg11", "cifar100_vgg11")])
def test_paper_configs_are_the_paper_commands(arch, name):
    cfg, _ = train.resolve_config(["--config", str(CONFIGS[0].parent / f"{name}.toml")])
    run = PAPER_RUNS[arch]
    assert (cfg.arch, cfg.dataset, cfg.num_steps, cfg.lr, cfg.batch_size,
            cfg.leak_mem, cfg.num_epochs) == (run.arch, run.dataset, run.num_steps, run.lr,
                                                    run.batch_size, run.leak_mem, run.num_epochs)
