"""Both models compute the equations of docs/spec.md (tests/spec_equations.py) in float64:
logits, every parameter gradient and the running statistics, in train and eval mode, for both
engines."""
import pytest
import torch

from helpers import grads_in_authors_layout, small_model
from spec_equations import VGG9_LAYERS, VGG11_LAYERS, input_spikes, spec_logits

LAYERS = {"vgg9": VGG9_LAYERS, "vgg11": VGG11_LAYERS}


def deterministic_images(batch, channels, size, seed):
    """Pixels in {-2.5, 0, 2.5}: the Poisson coder's output is then certain."""
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([-2.5, 0.0, 2.5], dtype=torch.float64)
    return values[torch.randint(0, 3, (batch, channels, size, size), generator=g)]


def check_against_spec(model, spec, images, leak, training, grad_rtol=1e-10):
    """One forward and backward of `model` (float64) against `spec(state, input spikes, leak,
    training)` -> (logits, new running statistics) of tests/spec_equations.py: logits, every
    parameter gradient and the updated running statistics. Returns the spec's statistics."""
    steps = model.num_steps
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weights = torch.randn(images.shape[0], 10, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(2))

    logits = model(images)
    (logits * weights).sum().backward()

    params = {k: v.requires_grad_() for k, v in state.items() if k.endswith("weight")}
    expected, new_stats = spec(state, input_spikes(images, steps), leak, training)
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(params.values()))

    assert logits.std() > 0.01  # the network is really spiking
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-12)
    got_grads = grads_in_authors_layout(model)
    assert set(got_grads) == set(params)
    for key, grad in zip(params, expected_grads):
        torch.testing.assert_close(got_grads[key], grad, rtol=grad_rtol, atol=1e-12, msg=key)
    assert sum(float(g.abs().sum()) for g in expected_grads) > 0
    after = model.state_dict()
    if training:
        assert len(new_stats) == 2 * steps * len(model.bntt_layers())
        for key, value in new_stats.items():
            torch.testing.assert_close(after[key], value, rtol=1e-10, atol=1e-12, msg=key)
            assert not torch.equal(after[key], state[key])
    else:
        for key in state:
            assert torch.equal(after[key], state[key]), key
    return new_stats


@pytest.mark.parametrize("engine", ["reference", "multistep"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("arch", ["vgg9", "vgg11"])
def test_model_matches_spec_equations(arch, training, engine):
    steps, leak = 3, 0.9
    model = small_model(arch, steps, torch.float64, img_size=32, engine=engine, leak=leak)
    model.train(training)
    check_against_spec(model, lambda p, spikes, lk, tr: spec_logits(p, LAYERS[arch], spikes, lk, tr),
                       deterministic_images(4, 3, 32, seed=1), leak, training)
