"""The training and evaluation steps that benchmark.py and profile_step.py time."""
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import build_model  # noqa: E402

CLASSES = {"vgg9": 10, "vgg11": 100}  # CIFAR-10 for VGG9, CIFAR-100 for VGG11, as in the paper
LEAK = {"vgg9": 0.95, "vgg11": 0.99}


def make_model(arch, steps, engine, device):
    torch.manual_seed(0)
    model = build_model(arch, num_steps=steps, leak_mem=LEAK[arch], num_cls=CLASSES[arch],
                        engine=engine).to(device)
    if device.type == "cuda" and engine in ("auto", "fused"):
        model = model.to(memory_format=torch.channels_last)
    return model


def autocast_for(device, amp):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp else nullcontext()


def make_step(arch, steps, batch, engine, device, amp, model=None):
    """One SGD step (Poisson coding, forward, backward, update) on CIFAR-shaped random images."""
    model = model or make_model(arch, steps, engine, device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, CLASSES[arch], (batch,), device=device)

    def step():
        with autocast_for(device, amp):
            out = model(images)
        loss = F.cross_entropy(out.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def make_eval_step(model, batch, device, amp):
    images = torch.randn(batch, 3, 32, 32, device=device)

    @torch.no_grad()
    def step():
        model.eval()
        with autocast_for(device, amp):
            model(images)
    return step
