"""Spiking blocks and their backends (bntt/blocks.py, bntt/engines.py): the spiking ResNet-19
against its equations on every backend, one step against all steps, the engine resolved once,
one leak and one T, and the import order of the package. Every backend against the reference,
for every network (a residual network of one's own among them) and norm:
tests/test_equivalence.py."""
import ast
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bntt import BNTT, LIFNeuron, engines
from bntt.blocks import SpikingBlock, TimeState, blocks
from bntt.models import build_model
from helpers import needs_triton_interpreter, small_model
from spec_equations import spec_resnet19_logits
from test_model_spec import check_against_spec, deterministic_images

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["reference", "multistep", "cpu", pytest.param("fused", marks=needs_triton_interpreter)]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("engine", BACKENDS)
def test_resnet19_matches_its_equations(engine, training):
    """Logits, every parameter gradient and the running statistics of ResNet-19 in float64,
    against tests/spec_equations.py (residual adds before the neuron, 1x1 shortcuts)."""
    leak = 0.9
    model = small_model("resnet19", 2, torch.float64, img_size=8, engine=engine, leak=leak)
    new_stats = check_against_spec(model.train(training), spec_resnet19_logits,
                                   deterministic_images(4, 3, 8, seed=1), leak, training,
                                   grad_rtol=1e-9)
    assert len(new_stats) == (2 * 2 * 20 if training else 0)  # 20 BNTT layers, 2 steps


def test_resnet19_layout_and_parameters():
    model = build_model("resnet19", num_steps=1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [m.kernel_size for m in convs].count((3, 3)) == 17  # the stem and 8 blocks of two
    assert [m.kernel_size for m in convs].count((1, 1)) == 2  # the shortcuts of stages 2 and 3
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [256, 10]
    # 17 + 2 conv weights and 2 FC weights, and one gamma per channel (T = 1) of 20 BNTTs
    weights = sum(m.weight.numel() for m in convs) + 512 * 256 + 256 * 10
    stages = (3 * 128 * 9 + 6 * 128 * 128 * 9, 128 * 256 * 9 + 5 * 256 * 256 * 9 + 128 * 256,
              256 * 512 * 9 + 3 * 512 * 512 * 9 + 256 * 512)
    assert weights == sum(stages) + 512 * 256 + 256 * 10 == 12_687_232
    gammas = sum(bn.weight.numel() for _, bn in model.bntt_layers())
    assert sum(p.numel() for p in model.parameters()) == weights + gammas == 12_692_736


def test_one_step_at_a_time_equals_all_steps_at_once():
    torch.manual_seed(0)
    neuron = LIFNeuron(leak=0.8)
    block = SpikingBlock(nn.Conv2d(3, 4, 3, padding=1, bias=False), BNTT(4, 5), neuron,
                         nn.AvgPool2d(2)).double()
    x = torch.randn(5, 2, 3, 6, 6, dtype=torch.float64) * 2
    engines.set_engine(block, "multistep")
    together = block(x)
    u, steps = None, []
    for t in range(5):
        s, u = block.step(x[t], t, u)
        steps.append(s)
    assert torch.equal(together, torch.stack(steps))
    assert together.shape == (5, 2, 4, 3, 3) and 0 < together.mean() < 1
    # stacks of 2, 2 and 1 steps handing the membrane on, as the cpu engine runs them
    state, parts = TimeState(), []
    for first in (0, 2, 4):
        state.first_step = first
        parts.append(block(x[first:first + 2], state))
    assert torch.equal(torch.cat(parts), together)


def test_block_refuses_what_it_cannot_be():
    with pytest.raises(TypeError, match="a Conv2d or a Linear, not ReLU"):
        SpikingBlock(nn.ReLU())
    with pytest.raises(ValueError, match="no spikes to pool"):
        SpikingBlock(nn.Linear(2, 2), BNTT(2, 1), pool=nn.AvgPool2d(2))


def test_the_engine_is_resolved_once(monkeypatch):
    calls = []
    resolve = engines.resolve
    monkeypatch.setattr(engines, "resolve", lambda *a: calls.append(a) or resolve(*a))
    model = small_model("vgg9", 2, torch.float32, engine="auto").set_engine("auto")
    assert len(calls) == 1 and model.backend is engines.CPU
    assert all(b.backend is engines.CPU for b in model.blocks)
    spikes = (torch.rand(2, 2, 3, 16, 16) < 0.3).float()
    for _ in range(3):
        model.forward_spikes(spikes)
    assert len(calls) == 1
    model.engine = "multistep"  # a new name is resolved at the next forward, once
    model.forward_spikes(spikes)
    model.forward_spikes(spikes)
    assert len(calls) == 2 and all(b.backend is engines.MULTISTEP for b in model.blocks)


def test_leak_and_steps_live_in_one_place():
    model = build_model("resnet19", num_steps=6, leak_mem=0.9)
    neurons = {id(b.neuron) for b in blocks(model) if b.neuron is not None}
    assert neurons == {id(model.neuron)} and model.leak_mem == 0.9
    model.neuron.leak = 0.5
    assert model.leak_mem == 0.5
    assert {bn.num_steps for _, bn in model.bntt_layers()} == {6}
    model.keep_steps(4)
    assert model.num_steps == 4 and {bn.num_steps for _, bn in model.bntt_layers()} == {4}
    assert {int(k.split(".")[-2]) for k in model.state_dict() if ".norm." in k} == {0, 1, 2, 3}
    assert "conv1.norm.3.weight" in model.state_dict()
    assert "conv1.norm.4.weight" not in model.state_dict()


def _imports(path: Path, modules) -> set:
    """Every bntt module a module imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bntt"):
            for a in node.names:  # `from bntt import engines` imports bntt.engines
                name = f"{node.module}.{a.name}"
                found.add(name if name in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bntt"))
    return found


def test_the_package_imports_without_a_circle():
    package = ROOT / "bntt"
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}
    graph = {name: {m for m in _imports(path, modules) if m in modules and m != name}
             for name, path in modules.items()}
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", " -> ".join(trail + [name])
        state[name] = "open"
        for dep in sorted(graph[name]):
            visit(dep, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])
    assert "bntt.fused" in graph["bntt.engines"] and "bntt.engines" not in graph["bntt.fused.engine"]


@pytest.mark.slow
def test_resnet19_trains_and_is_evaluated_and_analysed(tmp_path, capsys):
    import analyze
    import evaluate
    import train

    assert train.cli(["--dataset", "fashionmnist_subset", "--arch", "resnet19", "--num_steps", "2",
                      "--batch_size", "8", "--lr", "0.02", "--num_workers", "0", "--train_samples", "16",
                      "--test_samples", "8", "--num_epochs", "1", "--device", "cpu",
                      "--out_dir", str(tmp_path), "--run_name", "r"]) == 0
    run = tmp_path / "r"
    assert evaluate.cli(["--checkpoint", str(run), "--test_samples", "8", "--device", "cpu",
                         "--out_dir", str(tmp_path / "ev"), "--no_plots"]) == 0
    report = json.loads((tmp_path / "ev" / "early_exit.json").read_text())
    layers = list(dict.fromkeys(g["layer"] for g in report["gamma"]))
    assert len(layers) == 20 and layers[0] == "conv1.norm" and layers[-1] == "fc1.norm"
    assert analyze.cli(["activity", "--checkpoint", str(run), "--test_samples", "8", "--batch_size", "8",
                        "--device", "cpu", "--no_plots"]) == 0
    activity = json.loads((run / "activity" / "activity.json").read_text())
    layers = [r["layer"] for r in activity["energy"]["layers"]]
    assert len(layers) == 21 and layers[:2] == ["conv1", "layer1.0.conv1"]  # 19 convs, 2 FC
    sources = {r["layer"]: r["inputs_from"] for r in activity["energy"]["layers"]}
    assert sources["layer2.0.shortcut"] == sources["layer2.0.conv1"] == "layer1.2.conv2"
    assert sources["fc1"] == "layer3.1.conv2 pooled"
    capsys.readouterr()
