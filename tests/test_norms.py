"""The normalisation ablation (--norm): each normalisation against a plain float64 statement of
its equations, forward and backward; runs record their norm and the evaluator says the gamma
rule is BNTT's alone. The norms after BNTT (tebn, tab, mpbn) are checked against
tests/spec_equations.py, and MPBN's folded threshold against its unfolded BatchNorm. Every
backend agrees with the reference for each norm: tests/test_equivalence.py."""
import copy
import json

import pytest
import torch

import evaluate
import spec_equations as spec
import train
from bntt import engines
from bntt.distributed import World, prepare_model
from bntt.models import SpikingFC, build_model
from bntt.neuron import LIFNeuron
from bntt.norms import MPBN, TAB, TEBN, TRAINS_ON_ALL_STEPS, MembraneBN, NoNorm, SharedBN, TDBN
from helpers import assert_close_relative, needs_triton_interpreter, reproduce_script, tiny_args

EPS, MOMENTUM = 1e-4, 0.1
AFTER_BNTT = ("tebn", "tab", "mpbn")


def stack(seed, shape=(3, 5, 4, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.float64, generator=g) * 1.7 + 0.4


def gradients(fn, z, seed=9):
    z = z.clone().requires_grad_()
    y = fn(z)
    weights = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(seed))
    (y * weights).sum().backward()
    return y.detach(), z.grad


def set_params(norm, seed=4):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=g, dtype=torch.float64) + 0.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g, dtype=torch.float64))
        norm.running_mean.copy_(torch.randn(norm.running_mean.shape, generator=g, dtype=torch.float64))
        norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=g, dtype=torch.float64) + 0.5)
    return norm


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_shared_bn_is_one_batchnorm_reused_at_every_step(training):
    z = stack(0)
    bn = set_params(SharedBN(4, 3).double()).train(training)
    gamma, mean0, var0 = bn.weight.detach().clone(), bn.running_mean.clone(), bn.running_var.clone()

    def plain(z):
        out, mean, var = [], mean0.clone(), var0.clone()
        for z_t in z.unbind(0):
            if training:  # this step's batch statistics, one running update per step
                mu = z_t.mean(dim=(0, 2, 3))
                sigma2 = z_t.var(dim=(0, 2, 3), unbiased=False)
                n = z_t.numel() // z_t.shape[1]
                mean = (1 - MOMENTUM) * mean + MOMENTUM * mu.detach()
                var = (1 - MOMENTUM) * var + MOMENTUM * sigma2.detach() * n / (n - 1)
            else:
                mu, sigma2 = mean0, var0
            out.append(gamma.view(1, -1, 1, 1) * (z_t - mu.view(1, -1, 1, 1))
                       / torch.sqrt(sigma2.view(1, -1, 1, 1) + EPS))
        plain.stats = (mean, var)
        return torch.stack(out)

    y_ref, dz_ref = gradients(plain, z)
    y, dz = gradients(bn, z)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dz, dz_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn.running_mean, plain.stats[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, plain.stats[1], rtol=1e-12, atol=1e-12)
    assert int(bn.num_batches_tracked) == (3 if training else 0)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_tdbn_normalises_over_time_batch_and_space_together(training):
    z = stack(1)
    bn = set_params(TDBN(4, 3, alpha=0.7).double()).train(training)
    gamma, beta = bn.weight.detach().clone(), bn.bias.detach().clone()
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()

    def plain(z):
        if training:
            mu = z.mean(dim=(0, 1, 3, 4))
            sigma2 = z.var(dim=(0, 1, 3, 4), unbiased=False)
            n = z.numel() // z.shape[2]
            plain.stats = ((1 - MOMENTUM) * mean0 + MOMENTUM * mu.detach(),
                           (1 - MOMENTUM) * var0 + MOMENTUM * sigma2.detach() * n / (n - 1))
        else:
            mu, sigma2 = mean0, var0
            plain.stats = (mean0, var0)
        shape = (1, 1, -1, 1, 1)
        x_hat = (z - mu.view(shape)) / torch.sqrt(sigma2.view(shape) + EPS)
        return gamma.view(shape) * 0.7 * 1.0 * x_hat + beta.view(shape)  # alpha * threshold

    y_ref, dz_ref = gradients(plain, z)
    y, dz = gradients(bn, z)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dz, dz_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn.running_mean, plain.stats[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, plain.stats[1], rtol=1e-12, atol=1e-12)


def test_tdbn_refuses_step_by_step_training_and_no_norm_is_the_identity():
    with pytest.raises(RuntimeError, match="normalises over all time steps at once"):
        TDBN(4, 3).train()(torch.randn(5, 4, 3, 3), 0)
    with pytest.raises(RuntimeError, match="normalises over all time steps at once"):
        TDBN(4, 3).train()(torch.randn(1, 5, 4, 3, 3), first_step=1)  # a stack of later steps
    z = stack(2)
    y, dz = gradients(NoNorm(4, 3), z)
    assert torch.equal(y, z) and torch.equal(dz, torch.randn(z.shape, dtype=z.dtype,
                                                             generator=torch.Generator().manual_seed(9)))


def small(norm, steps=3, seed=0):
    torch.manual_seed(seed)
    model = build_model("vgg9", num_steps=steps, img_size=16, norm=norm).double()
    for _, module in model.named_modules():
        if isinstance(module, (SharedBN, TDBN)):
            set_params(module, seed + 2)
    return model


def test_tdbn_trains_on_the_multistep_engine_as_its_equations_say():
    model = small("tdbn").train()
    model.engine = "multistep"
    spikes = torch.sign(torch.randn(3, 4, 3, 16, 16, dtype=torch.float64))
    out = model.forward_spikes(spikes)
    out.sum().backward()
    assert model.bntt1.weight.grad.abs().max() > 0 and int(model.bntt1.num_batches_tracked) == 1


TINY = tiny_args(batch_size=16, train_samples=32, test_samples=20, num_epochs=1)


def test_a_run_records_its_norm_and_the_evaluator_keeps_the_gamma_rule_to_bntt(tmp_path, capsys):
    assert train.cli([*TINY, "--norm", "bn", "--out_dir", str(tmp_path), "--run_name", "bn"]) == 0
    ckpt = torch.load(tmp_path / "bn" / "last.pt", weights_only=True)
    assert ckpt["config"]["norm"] == "bn" and ckpt["state_dict"]["bntt1.weight"].shape == (64,)
    capsys.readouterr()
    code = evaluate.cli(["--checkpoint", str(tmp_path / "bn"), "--out_dir", str(tmp_path / "ee"),
                         "--test_samples", "20", "--batch_size", "32"])
    out = capsys.readouterr().out
    assert code == 0
    assert "gamma exit: not applicable (the gamma rule applies to BNTT only; this network uses norm bn)" in out
    report = json.loads((tmp_path / "ee" / "early_exit.json").read_text())
    assert report["gamma"] == [] and not report["gamma_exit"]["applicable"]
    assert len(report["per_step"]) == 2  # the accuracy after t steps works for every norm
    assert not (tmp_path / "ee" / "gamma.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", AFTER_BNTT)
def test_each_later_norm_trains_resumes_bit_exactly_and_evaluates(kind, tmp_path, capsys):
    args = [*TINY, "--norm", kind, "--out_dir", str(tmp_path)]
    assert train.cli([*args, "--num_epochs", "2", "--run_name", "full"]) == 0
    assert train.cli([*args, "--num_epochs", "1", "--run_name", "cut"]) == 0
    ckpt = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    ckpt["config"]["num_epochs"] = 2  # as if stopped after epoch 1 of 2
    torch.save(ckpt, tmp_path / "cut" / "last.pt")
    assert train.cli(["--resume", str(tmp_path / "cut")]) == 0
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert resumed["epoch"] == full["epoch"] == 2 and resumed["config"]["norm"] == kind
    for key, value in full["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    capsys.readouterr()
    assert evaluate.cli(["--checkpoint", str(tmp_path / "cut"), "--out_dir", str(tmp_path / "ee"),
                         "--test_samples", "20", "--batch_size", "32"]) == 0
    assert f"not applicable (the gamma rule applies to BNTT only; this network uses norm {kind})" \
        in capsys.readouterr().out
    assert len(json.loads((tmp_path / "ee" / "early_exit.json").read_text())["per_step"]) == 2


@pytest.mark.parametrize("norm", TRAINS_ON_ALL_STEPS)
def test_training_an_all_steps_norm_with_the_reference_engine_is_one_line(norm, tmp_path, capsys):
    code = train.cli([*TINY, "--norm", norm, "--engine", "reference", "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"norm {norm} normalises over all steps at once: train it with --engine multistep" in err
    assert not any(tmp_path.iterdir())


# -- the norms after BNTT: tebn, tab, mpbn -----------------------------------------------------


def randomize_norms(model, seed):
    """Every parameter and running statistic of the norms away from its initial value (as
    after training), some membrane lambdas negative, so that every term and eval are exercised."""
    g = torch.Generator().manual_seed(seed)
    uniform = lambda t, lo, hi: torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo  # noqa: E731
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, (TEBN, TAB, MPBN, MembraneBN)):
                continue
            m.weight.copy_(uniform(m.weight, 0.6, 1.4))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype) * 0.3)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=m.running_mean.dtype) * 0.3)
            m.running_var.copy_(uniform(m.running_var, 0.5, 1.5))
            if hasattr(m, "scale"):
                m.scale.copy_(uniform(m.scale, 0.8, 1.2))
            if isinstance(m, MembraneBN):
                m.weight[::5].neg_()  # a channel whose BN falls as its membrane rises
                m.bias.add_(0.5)  # so that BN(v) reaches the threshold from a membrane near 0
    return model


def leaves(state, names):
    """The state_dict tensors `names` as leaves that take gradients (the others as they are)."""
    return {k: (v.clone().requires_grad_() if k in names else v.clone()) for k, v in state.items()}


def against_statement(norm, statement, a, training, forward=None, vanishing=()):
    """forward(a) (default: norm(a)) and its gradients (input and the norm's parameters)
    against `statement(a, p, "n", training, new_stats)` in float64, p the norm's state_dict
    under the name "n", and the running statistics it leaves; the parameters `vanishing` have
    a gradient of zero but rounding. Returns the output."""
    names = [f"n.{k}" for k, _ in norm.named_parameters()]
    p = leaves({f"n.{k}": v for k, v in norm.state_dict().items()}, names)
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    a_ref, a_got = a.clone().requires_grad_(), a.clone().requires_grad_()
    new_stats = {}
    expected = statement(a_ref, p, "n", training, new_stats)
    weights = torch.randn(expected.shape, dtype=a.dtype, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((expected * weights).sum(), [a_ref] + [p[k] for k in names])
    got = (forward or norm)(a_got)
    (got * weights).sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_got.grad, grads[0], rtol=1e-10, atol=1e-12)
    for (name, param), grad in zip(norm.named_parameters(), grads[1:]):
        assert name in vanishing or grad.abs().max() > 0, name
        torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12, msg=name)
    after = norm.state_dict()
    if training:
        assert new_stats and all(not torch.equal(after[k[2:]], before[k[2:]]) for k in new_stats)
        for key, value in new_stats.items():
            torch.testing.assert_close(after[key[2:]], value, rtol=1e-12, atol=1e-12, msg=key)
        assert (after["num_batches_tracked"] == 1).all()
    else:
        assert all(torch.equal(after[k], before[k]) for k in after)
    return got


@pytest.mark.parametrize("shape", [(4, 5, 6, 3, 3), (5, 7, 6)], ids=["maps", "features"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["tebn", "tab"])
def test_tebn_and_tab_compute_their_equations(kind, training, shape):
    cls = {"tebn": TEBN, "tab": TAB}[kind]
    norm = randomize_norms(cls(6, shape[0]).double(), 1).train(training)
    a = stack(7, shape)
    against_statement(norm, getattr(spec, kind), a, training)


@pytest.mark.parametrize("kind", ["tebn", "tab"])
def test_tebn_and_tab_in_evaluation_step_by_step_and_in_stacks_equal_all_steps(kind):
    norm = randomize_norms({"tebn": TEBN, "tab": TAB}[kind](4, 3).double(), 2).eval()
    a = stack(8)
    whole = norm(a)
    assert torch.equal(torch.stack([norm(a[t], t) for t in range(3)]), whole)
    assert torch.equal(norm(a[1:], first_step=1), whole[1:])


def test_tab_step_t_depends_on_the_steps_before_it_only():
    norm = TAB(4, 3).double().train()
    a = stack(9)
    changed = a.clone()
    changed[2] += 1.0  # the last step: steps 1 and 2 keep their statistics
    y, y_changed = norm(a), norm(changed)
    assert torch.equal(y[:2], y_changed[:2]) and not torch.allclose(y[2], y_changed[2])


@pytest.mark.parametrize("shape", [(4, 5, 6, 3, 3), (5, 7, 6)], ids=["maps", "features"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_mpbn_computes_its_equations(training, shape):
    """MPBN's first BatchNorm and the neuron with its membrane BatchNorm, against Eq. M1-M3."""
    norm = randomize_norms(MPBN(6, shape[0]).double(), 3).train(training)
    neuron = LIFNeuron(leak=0.8)

    def statement(a, p, name, training, new_stats):
        z = spec.bn_over_steps(a, p, name, training, new_stats)
        return spec.mpbn_spikes(z, p, name, 0.8, training, new_stats)

    def layer(a):  # the norm, then the neuron with the norm's membrane BatchNorm, as a block
        return neuron.run(norm(a), None, norm.membrane)[0]

    # in training beta of the first BatchNorm shifts all membranes of a channel alike, which
    # the membrane's BatchNorm subtracts again (docs/spec.md, after Eq. M3)
    s = against_statement(norm, statement, stack(10, shape) * 2, training, layer,
                          vanishing=("bias",) if training else ())
    assert 0.05 < s.mean() < 0.95  # the neurons fire, and not always
    assert int(norm.membrane.num_batches_tracked) == (shape[0] if training else 0)  # every step


def small_network(kind, arch, seed=0):
    torch.manual_seed(seed)
    if arch == "vgg9":
        model = build_model("vgg9", num_steps=3, img_size=16, norm=kind)
    else:
        model = SpikingFC(5, leak_mem=0.9, in_features=5, hidden=(12, 8), num_cls=4, norm=kind)
    return randomize_norms(model.double(), seed + 1)


def network_input(arch, seed=5):
    g = torch.Generator().manual_seed(seed)
    if arch == "vgg9":
        x = torch.sign(torch.randn(3, 4, 3, 16, 16, dtype=torch.float64, generator=g)) * (
            torch.rand(3, 4, 3, 16, 16, dtype=torch.float64, generator=g) < 0.5)
        return x, torch.randn(4, 10, dtype=torch.float64, generator=g)
    currents = torch.rand(5, 3, 5, dtype=torch.float64, generator=g) * 2.5  # direct coding
    return currents, torch.randn(3, 4, dtype=torch.float64, generator=g)


def network_statement(model, arch, kind):
    if arch == "vgg9":
        return lambda p, x, training: spec.spec_norm_logits(p, spec.VGG9_LAYERS, x, model.leak_mem,
                                                            training, kind)
    return lambda p, x, training: spec.spec_fc_norm_logits(p, len(model.hidden), x, model.leak_mem,
                                                           training, kind)


ENGINE_CASES = [pytest.param(kind, arch, engine, training,
                             id=f"{kind}-{arch}-{engine}-{'train' if training else 'eval'}",
                             marks=[*([needs_triton_interpreter] if engine == "fused" else []),
                                    *([pytest.mark.slow] if arch == "vgg9" and engine != "multistep" else [])])
                for kind in AFTER_BNTT for arch in ("vgg9", "fc")
                for engine in ("reference", "multistep", "cpu", "fused") for training in (True, False)
                if not (engine == "reference" and training)]  # refused: see below


@pytest.mark.parametrize("kind,arch,engine,training", ENGINE_CASES)
def test_every_engine_computes_the_equations_of_each_norm(kind, arch, engine, training, monkeypatch):
    """Logits, every parameter gradient and the running statistics of VGG9 and the FC network
    with tebn, tab or mpbn, on each engine, against tests/spec_equations.py in float64. The
    reference engine is one of them in evaluation; training it is refused (below). The cpu
    engine runs the evaluation in stacks of two steps, each from where the last one left."""
    monkeypatch.setattr(engines, "BLOCK_IMAGES", 8)  # 2 steps of batch 4 (or 3) per stack
    model = small_network(kind, arch).train(training)
    model.engine = engine
    x, weights = network_input(arch)
    state = model.state_dict()
    params = dict(model.named_parameters())
    p = leaves(state, params)
    expected, new_stats = network_statement(model, arch, kind)(p, x, training)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [p[k] for k in params])
    before = {k: v.clone() for k, v in state.items()}

    logits = model.forward_spikes(x)
    (logits * weights).sum().backward()

    assert expected.abs().max() > 0.05  # spikes reach the readout
    assert_close_relative(logits, expected, 1e-10, "logits")
    for (name, param), grad in zip(params.items(), expected_grads):
        if kind == "mpbn" and training and name.endswith("bias") and "membrane" not in name:
            # beta of MPBN's first BatchNorm shifts every membrane of a channel alike, which the
            # membrane's BatchNorm subtracts again in training: its gradient is 0 but rounding
            assert grad.abs().max() < 1e-15 and param.grad.abs().max() < 1e-15, name
            continue
        assert grad.abs().max() > 0, name
        assert_close_relative(param.grad, grad, 1e-10, f"grad of {name}")
    after = model.state_dict()
    if training:
        for key, value in new_stats.items():
            assert_close_relative(after[key], value, 1e-10, key)
        assert {k.rsplit(".", 1)[0] for k in new_stats} == {
            name for name, m in model.named_modules() if hasattr(m, "running_mean")}
    else:
        assert all(torch.equal(after[k], before[k]) for k in after)


@pytest.mark.parametrize("kind", AFTER_BNTT)
def test_the_reference_engine_refuses_to_train_them_in_one_line(kind):
    model = small_network(kind, "fc").train()
    model.engine = "reference"
    with pytest.raises(RuntimeError) as error:
        model.forward_spikes(network_input("fc")[0])
    message = str(error.value)
    assert "all time steps at once" in message and "\n" not in message


@pytest.mark.parametrize("kind", AFTER_BNTT)
def test_they_are_refused_under_torchrun_with_global_statistics(kind):
    model = small_network(kind, "fc")
    with pytest.raises(ValueError) as error:
        prepare_model(model, World(size=2, launched=True), "global")
    message = str(error.value)
    assert message.startswith(f"--norm {kind} ") and message.endswith(
        "which is kept per process: train it with --bntt_sync local") and "\n" not in message


@pytest.mark.parametrize("kind,keys", [
    ("tebn", {"weight": (64,), "bias": (64,), "scale": (3,), "running_mean": (64,),
              "running_var": (64,), "num_batches_tracked": ()}),
    ("tab", {"weight": (3, 64), "bias": (3, 64), "scale": (3,), "running_mean": (3, 64),
             "running_var": (3, 64), "num_batches_tracked": (3,)}),
    ("mpbn", {f"{part}{name}": shape for part in ("", "membrane.") for name, shape in
              (("weight", (64,)), ("bias", (64,)), ("running_mean", (64,)), ("running_var", (64,)),
               ("num_batches_tracked", ()))})])
def test_state_is_kept_under_the_layers_bntt_name_and_loads_back(kind, keys):
    model = small_network(kind, "vgg9").eval()
    state = model.state_dict()
    assert {k.removeprefix("bntt1."): tuple(v.shape) for k, v in state.items()
            if k.startswith("bntt1.")} == keys
    fresh = build_model("vgg9", num_steps=3, img_size=16, norm=kind).double()
    fresh.load_state_dict(state)  # strict
    x = network_input("vgg9")[0]
    with torch.no_grad():
        assert torch.equal(fresh.eval().forward_spikes(x), model.forward_spikes(x))


def test_a_resnet_shortcut_has_no_membrane_batchnorm_of_its_own():
    """The 1x1 shortcut's current joins the second conv's before that block's neuron fires, so
    only the neuron's own block normalises the membrane: no parameter is left without use."""
    model = build_model("resnet19", num_steps=2, img_size=4, norm="mpbn")
    norms = {name: m for name, m in model.named_modules() if isinstance(m, MPBN)}
    shortcuts = {name for name in norms if ".shortcut." in name}
    assert shortcuts == {"layer2.0.shortcut.norm", "layer3.0.shortcut.norm"}
    assert all((norms[name].membrane is None) == (name in shortcuts) for name in norms)
    assert not any(".shortcut." in name and "membrane" in name for name in model.state_dict())


@pytest.mark.parametrize("kind", ["tebn", "tab"])
def test_keep_steps_keeps_the_first_steps_of_the_per_step_quantities(kind):
    model = small_network(kind, "fc").eval()
    x = network_input("fc")[0][:3]
    with torch.no_grad():
        expected = model.forward_spikes(x)
        shorter = copy.deepcopy(model).keep_steps(3)
        assert shorter.bntt1.scale.shape == (3,) and torch.equal(shorter.forward_spikes(x), expected)


def test_the_folded_threshold_fires_exactly_where_the_membrane_batchnorm_does():
    """Eq. M4 for every sign of lambda: positive, negative, and zero with beta above or below
    the threshold (then a channel always or never fires)."""
    g = torch.Generator().manual_seed(11)
    bn = MembraneBN(5).double().eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.7, -1.3, 0.0, 0.0, 2.1], dtype=torch.float64))
        bn.bias.copy_(torch.tensor([0.2, 0.4, 1.5, 0.5, -0.3], dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(5, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(5, generator=g, dtype=torch.float64) + 0.5)
    v = torch.randn(64, 5, 4, 4, generator=g, dtype=torch.float64) * 3
    unfolded = (bn(v) > 1.0).to(v.dtype)
    with torch.no_grad():
        folded = bn.spikes(v, 1.0)
    assert torch.equal(folded, unfolded)
    assert folded[:, 2].all() and not folded[:, 3].any()  # lambda = 0: beta above / below
    assert 0.1 < folded[:, [0, 1, 4]].mean() < 0.9
    theta, slope = bn.folded_threshold(1.0)
    expected = bn.running_mean + (1.0 - bn.bias) * torch.sqrt(bn.running_var + 1e-4) / bn.weight
    torch.testing.assert_close(theta[[0, 1, 4]], expected[[0, 1, 4]], rtol=1e-14, atol=0)


@pytest.mark.parametrize("arch", ["vgg9", "fc"])
def test_mpbn_folded_into_the_threshold_gives_the_unfolded_network(arch):
    """In evaluation without gradients the neurons compare their membrane with the folded
    thresholds and no membrane BatchNorm runs; the spikes of every layer are those of the
    unfolded BatchNorm, and the logits agree to 1e-12."""
    model = small_network("mpbn", arch).eval()
    model.engine = "reference"
    x = network_input(arch)[0]
    membranes = [m for m in model.modules() if isinstance(m, MembraneBN)]
    calls, outputs = [], []
    for m in membranes:
        m.register_forward_hook(lambda *_: calls.append(1))
    for block in model.blocks:
        block.register_forward_hook(lambda _m, _i, out: outputs[-1].append(out))

    def run(fold):
        for m in membranes:
            m.fold_at_inference = fold
        outputs.append([])
        with torch.no_grad():
            return model.forward_spikes(x)

    folded = run(True)
    assert not calls
    unfolded = run(False)
    assert calls
    assert len(outputs[0]) == len(outputs[1]) == len(model.blocks) * model.num_steps  # a step at a time
    for out_folded, out_unfolded in zip(*outputs):
        assert torch.equal(out_folded, out_unfolded)
    assert folded.abs().max() > 0.05
    torch.testing.assert_close(folded, unfolded, rtol=0, atol=1e-12)


def test_the_ablation_table_is_the_mean_and_sample_std_over_seeds(tmp_path, capsys):
    """scripts/reproduce/ablation_table.py on hand-written metrics of two norms and three seeds."""
    finals = {"bntt": (80.0, 82.0, 84.0), "none": (10.0, 10.0, 13.0)}
    for norm, values in finals.items():
        for seed, final in enumerate(values):
            run = tmp_path / f"x_{norm}_s{seed}"
            run.mkdir()
            rows = [{"epoch": 1, "train_top1": 50.0, "test_top1": final - 5},
                    {"epoch": 2, "train_top1": 60.0 + seed, "test_top1": final}]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ablation_table = reproduce_script("ablation_table")
    argv = [str(tmp_path), "x", "--norms", "bntt", "none", "--seeds", "0", "1", "2"]
    assert ablation_table.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| `bntt` | 80.00 | 82.00 | 84.00 | 82.00 +- 2.00 | 61.00 |" in printed
    assert "| `none` | 10.00 | 10.00 | 13.00 | 11.00 +- 1.73 | 61.00 |" in printed
    summary = json.loads((tmp_path / "x.json").read_text())
    assert summary["epochs"] == 2 and summary["norms"]["bntt"]["curve_mean"] == [77.0, 82.0]
    assert summary["norms"]["none"]["curve_min"] == [5.0, 10.0]
    (tmp_path / "x_none_s2" / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_top1": 1.0,
                                                                     "test_top1": 8.0}) + "\n")
    with pytest.raises(SystemExit) as stop:  # exit status 1, the message on stderr
        ablation_table.main(argv)
    assert stop.value.code == "runs with fewer tested epochs than the others: x_none_s2"


def test_batch_statistics_scores_as_train_py_does_and_changes_nothing(tiny_trained_run, capsys):
    """scripts/reproduce/batch_statistics.py: with the run's test images, test batch (twice its
    batch_size, 32) and eval seed its running-statistics column is the top-1 train.py reported; its batch-statistics column runs
    the norms in training mode on a copy, so the checkpoint's statistics stay as they were."""
    batch_statistics = reproduce_script("batch_statistics")
    before = (tiny_trained_run / "last.pt").read_bytes()
    reported = json.loads((tiny_trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    batch_statistics.main([str(tiny_trained_run), "--test_samples", "20", "--batch_size", "32"])
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[:2] == [str(tiny_trained_run), "bntt"]
    assert float(row[2].rstrip("%")) == pytest.approx(reported["test_top1"], abs=1e-9)
    assert 0 <= float(row[3].rstrip("%")) <= 100
    assert (tiny_trained_run / "last.pt").read_bytes() == before
