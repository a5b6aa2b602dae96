"""The ANN twins of the spiking VGGs: shapes, the same conv and linear weights as the SNNs, the
SNN-like interface, training, state_dict and checkpoint round trips."""
import pytest
import torch
import torch.nn as nn

from bntt.ann import ANN_VGG9, ANN_VGG11, ANNVGG
from bntt.trained import load_trained_ann
from bntt.checkpoint import CheckpointError
from bntt.models import POOL, SNN_VGG9_BNTT, SNN_VGG11_BNTT
from bntt.paper import BN_EPS, BN_MOMENTUM


@pytest.mark.parametrize("cls", [ANN_VGG9, ANN_VGG11])
@pytest.mark.parametrize("img_size", [32, 64])
def test_logits_shape(cls, img_size):
    model = cls(num_cls=7, in_channels=3, img_size=img_size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, img_size, img_size)).shape == (2, 7)


def test_grayscale_input_and_train_mode():
    model = ANN_VGG9(num_cls=10, in_channels=1, img_size=32).train()
    assert model(torch.randn(4, 1, 32, 32)).shape == (4, 10)


@pytest.mark.parametrize("ann_cls, snn_cls", [(ANN_VGG9, SNN_VGG9_BNTT), (ANN_VGG11, SNN_VGG11_BNTT)])
def test_same_weights_as_the_snn(ann_cls, snn_cls):
    torch.manual_seed(0)
    ann = ann_cls(num_cls=100, in_channels=3, img_size=32)
    torch.manual_seed(0)
    snn = snn_cls(num_steps=2, img_size=32, num_cls=100, in_channels=3)
    weights = lambda m: {n: p for n, p in m.named_parameters()  # noqa: E731
                         if n.startswith(("conv", "fc"))}
    ann_w, snn_w = weights(ann), weights(snn)
    assert list(ann_w) == list(snn_w)
    for name in ann_w:
        # same shapes, and from the same seed the same initial values (same creation order)
        assert torch.equal(ann_w[name], snn_w[name]), name
    assert sum(p.numel() for p in ann_w.values()) == sum(p.numel() for p in snn_w.values())
    # the rest: one BatchNorm (gamma and beta) per BNTT layer
    bn_names = [n for n, m in ann.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert bn_names == [n.replace("bntt", "bn") for n, _ in snn.bntt_layers()]
    for name in bn_names:
        bn = ann.get_submodule(name)
        assert bn.affine and bn.eps == BN_EPS and bn.momentum == BN_MOMENTUM


def test_vgg9_parameter_count():
    # 5,938,880 weights of the CIFAR-10 VGG9 (docs/spec.md, section 2) + gamma and beta of
    # 2,176 BatchNorm channels
    model = ANN_VGG9(num_cls=10, in_channels=3, img_size=32)
    assert sum(p.numel() for p in model.parameters()) == 5_938_880 + 2 * 2_176


def test_snn_like_interface():
    model = ANN_VGG9(num_cls=10, in_channels=1, img_size=32)
    assert model.num_steps == 1 and model.bntt_layers() == [] and model.encoder is None
    assert model.leak_mem is None and model.readout is model.fc2
    assert (model.num_cls, model.in_channels, model.img_size) == (10, 1, 32)
    assert model.set_engine("multistep") is model and model.set_engine("auto") is model
    with pytest.raises(ValueError, match="unknown engine"):
        model.set_engine("warp")
    model.eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        # no randomness: the generator changes nothing
        assert torch.equal(model(x), model(x, generator=torch.Generator().manual_seed(5)))


def test_bad_image_size():
    with pytest.raises(ValueError, match="multiple of 8"):
        ANN_VGG9(img_size=12)
    with pytest.raises(ValueError, match="multiple of 16"):
        ANNVGG([8, POOL, 8, POOL, 8, POOL, 8, POOL], 16, img_size=24)


def test_sgd_lowers_the_loss():
    torch.manual_seed(0)
    model = ANNVGG([8, POOL, 16, POOL], 32, num_cls=4, in_channels=1, img_size=8).train()
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ANN_VGG9(num_cls=10, in_channels=1, img_size=32)
    model.train()(torch.randn(8, 1, 32, 32))  # running statistics that differ from the defaults
    path = tmp_path / "ann.pt"
    torch.save(model.state_dict(), path)
    other = ANN_VGG9(num_cls=10, in_channels=1, img_size=32)
    other.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), other.eval()(x))
    assert "bn1.running_mean" in model.state_dict() and "bn_fc.bias" in model.state_dict()


def test_load_trained_ann(tmp_path):
    torch.manual_seed(0)
    model = ANN_VGG9(num_cls=10, in_channels=1, img_size=32)
    path = tmp_path / "ann.pt"
    torch.save({"state_dict": model.state_dict(),
                "config": {"arch": "vgg9_ann", "dataset": "fashionmnist_subset"}}, path)
    trained = load_trained_ann(path)
    assert isinstance(trained.model, ANN_VGG9) and not trained.model.training
    assert trained.dataset == "fashionmnist_subset" and trained.arch == "vgg9_ann"
    assert torch.equal(trained.model.conv1.weight, model.conv1.weight)
    (tmp_path / "run").mkdir()  # a run folder stands for its last.pt
    torch.save(torch.load(path, weights_only=True), tmp_path / "run" / "last.pt")
    assert load_trained_ann(tmp_path / "run").source == tmp_path / "run" / "last.pt"

    def fails(config, match, state=None):
        torch.save({"state_dict": state or model.state_dict(), "config": config}, path)
        with pytest.raises(CheckpointError, match=match):
            load_trained_ann(path)

    fails({"arch": "vgg9", "dataset": "fashionmnist_subset"}, "not an ANN checkpoint")
    fails({"arch": "vgg11_ann", "dataset": "fashionmnist_subset"}, "does not fit vgg11_ann")
    fails({"arch": "vgg9_ann", "dataset": "cifar10"}, "does not fit vgg9_ann on cifar10")
    fails({"arch": "vgg9_ann"}, "does not record its dataset; pass --dataset")
    fails({"arch": "vgg9_ann", "dataset": "imagenet"}, "names dataset 'imagenet'")
    fails({"arch": "vgg9_ann", "dataset": "cifar10dvs"}, "arch vgg9_ann reads images, and cifar10dvs serves event frames")
