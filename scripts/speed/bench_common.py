"""The training and evaluation steps that benchmark.py and profile_step.py time."""
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from bntt.models import build_model
from bntt.paper import PAPER_RUNS, sgd


def make_model(arch, steps, engine, device):
    """The paper's network for `arch` (VGG9: CIFAR-10, VGG11: CIFAR-100) at T=`steps`."""
    torch.manual_seed(0)
    paper = PAPER_RUNS[arch]
    model = build_model(arch, num_steps=steps, leak_mem=paper.leak_mem, num_cls=paper.num_cls)
    return model.to(device).set_engine(engine)


def autocast_for(device, amp):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp else nullcontext()


def make_step(arch, steps, batch, engine, device, amp, model=None):
    """One SGD step (Poisson coding, forward, backward, update) on CIFAR-shaped random images."""
    model = model or make_model(arch, steps, engine, device)
    model.train()
    optimizer = sgd(model.parameters(), lr=0.01)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, PAPER_RUNS[arch].num_cls, (batch,), device=device)

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
