"""A few SGD steps of a small float64 VGG9-BNTT on a fixed global batch, run as a plain process
or under torchrun; rank 0 saves the weights, gradients and BNTT statistics after the steps.

    python tests/distributed_steps.py OUT.pt ENGINE:SYNC ...
    torchrun --standalone --nproc_per_node 2 tests/distributed_steps.py OUT.pt ENGINE:SYNC ...

tests/test_distributed.py compares the two.
"""
import sys

import torch

from bntt import distributed, seeding
from bntt.data.sampling import shard_bounds
from bntt.models import SNN_VGG9_BNTT
from bntt.paper import sgd

GLOBAL_BATCH, STEPS, TIME_STEPS = 8, 3, 2


def run(engine: str, sync: str, world) -> dict:
    torch.manual_seed(0)
    model = SNN_VGG9_BNTT(num_steps=TIME_STEPS, img_size=8, engine=engine).double().set_engine(engine)
    net = distributed.prepare_model(model, world, sync)
    optimizer = sgd(model.parameters(), 0.1)
    data = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=data, dtype=torch.float64) * 1.5
    labels = torch.randint(0, 10, (GLOBAL_BATCH,), generator=data)
    lo, hi = shard_bounds(GLOBAL_BATCH, world.rank, world.size)
    grads = {}
    for step in range(STEPS):
        spikes_from = seeding.generator(0, step, seeding.POISSON)
        logits = net(images[lo:hi], generator=spikes_from, shard=(lo, GLOBAL_BATCH))
        loss = distributed.global_batch_loss(logits, labels[lo:hi], GLOBAL_BATCH, world)
        optimizer.zero_grad()
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        optimizer.step()
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "grads": grads}


def main(out: str, *cases: str) -> None:
    world = distributed.start(torch.device("cpu"))
    results = {case: run(*case.split(":"), world) for case in cases}
    if world.is_main:
        torch.save(results, out)
    distributed.stop(world)


if __name__ == "__main__":
    main(*sys.argv[1:])
