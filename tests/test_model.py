"""The models' structure: parameter counts, the authors' initialisation and state_dict layout,
grayscale input, dtypes, bad arguments."""
import pytest
import torch
import torch.nn as nn

from model import SNN_VGG9_BNTT, SNN_VGG11_BNTT, build_model

VGG9_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
VGG11_CONVS = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]


def test_parameter_counts_match_the_paper_networks():
    vgg9 = SNN_VGG9_BNTT(num_steps=25, leak_mem=0.95, img_size=32, num_cls=10)
    assert sum(p.numel() for p in vgg9.parameters()) == 5_993_280
    assert sum(bn.weight.numel() for _, bn in vgg9.bntt_layers()) == 54_400
    vgg11 = SNN_VGG11_BNTT(num_steps=30, leak_mem=0.99, img_size=32, num_cls=100)
    assert sum(p.numel() for p in vgg11.parameters()) == 11_929_920


class AuthorsLayout(nn.Module):
    """Only the module structure of the authors' model.py (no forward): convs, ModuleLists of
    per-step BatchNorms with the bias removed, fc1, bntt_fc, fc2, created in their order."""

    def __init__(self, convs, hidden, fc_in, steps, classes):
        super().__init__()
        for i, (cin, cout) in enumerate(convs, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, 3, 1, 1, bias=False))
            setattr(self, f"bntt{i}", nn.ModuleList(nn.BatchNorm2d(cout, eps=1e-4, momentum=0.1)
                                                    for _ in range(steps)))
        self.fc1 = nn.Linear(fc_in, hidden, bias=False)
        self.bntt_fc = nn.ModuleList(nn.BatchNorm1d(hidden, eps=1e-4, momentum=0.1) for _ in range(steps))
        self.fc2 = nn.Linear(hidden, classes, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.bias = None
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight, gain=2)


@pytest.mark.parametrize("arch,convs,hidden,fc_in", [("vgg9", VGG9_CONVS, 1024, 256 * 4 * 4),
                                                    ("vgg11", VGG11_CONVS, 4096, 512)])
def test_same_initial_weights_and_state_dict_as_the_authors(arch, convs, hidden, fc_in):
    torch.manual_seed(0)
    theirs = AuthorsLayout(convs, hidden, fc_in, steps=3, classes=10)
    torch.manual_seed(0)
    ours = build_model(arch, num_steps=3, leak_mem=0.95, img_size=32, num_cls=10)
    sd_theirs, sd_ours = theirs.state_dict(), ours.state_dict()
    assert list(sd_ours) == list(sd_theirs)  # same keys, same order
    for key in sd_theirs:
        assert sd_ours[key].shape == sd_theirs[key].shape, key
        assert torch.equal(sd_ours[key], sd_theirs[key]), key  # Xavier gain 2, same RNG order

    # their trained-looking checkpoint loads strictly into ours, and ours into theirs
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p))
        for m in theirs.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert torch.equal(ours.bntt2.weight[1], theirs.bntt2[1].weight)
    assert torch.equal(ours.bntt_fc.running_var[2], theirs.bntt_fc[2].running_var)
    assert ours.bntt1.num_batches_tracked.tolist() == [7, 7, 7]
    fresh = AuthorsLayout(convs, hidden, fc_in, steps=3, classes=10)
    fresh.load_state_dict(ours.state_dict(), strict=True)
    for key, value in theirs.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_checkpoint_survives_weights_only_round_trip(tmp_path):
    model = SNN_VGG9_BNTT(num_steps=2, img_size=16)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]
    other = SNN_VGG9_BNTT(num_steps=2, img_size=16)
    other.load_state_dict(loaded, strict=True)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_grayscale_input_keeps_the_cifar_layout():
    rgb = SNN_VGG9_BNTT(num_steps=2)
    gray = SNN_VGG9_BNTT(num_steps=2, in_channels=1)
    assert gray.conv1.weight.shape == (64, 1, 3, 3)
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items() if k != "conv1.weight"}
    assert shapes(gray) == shapes(rgb)
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_runs_in_other_dtypes(dtype):
    model = SNN_VGG11_BNTT(num_steps=2, img_size=16).to(dtype)
    out = model(torch.randn(2, 3, 16, 16, dtype=dtype))
    # logits accumulate over time in at least float32
    assert out.dtype == torch.promote_types(dtype, torch.float32)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.float().sum().backward()
    assert model.conv1.weight.grad.dtype == dtype


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown arch 'resnet'"):
        build_model("resnet", num_steps=2)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        SNN_VGG9_BNTT(num_steps=0)
    with pytest.raises(ValueError, match="multiple of 16"):
        SNN_VGG11_BNTT(num_steps=2, img_size=24)
    with pytest.raises(ValueError, match="unknown engine"):
        SNN_VGG9_BNTT(num_steps=2, engine="warp")
    with pytest.raises(ValueError, match="3 time steps, got a spike train of 4"):
        SNN_VGG9_BNTT(num_steps=3, img_size=8).forward_spikes(torch.zeros(4, 1, 3, 8, 8))
