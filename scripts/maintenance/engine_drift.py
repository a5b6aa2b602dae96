"""How far each engine's float32 logits land from float64 on real images.

    python scripts/maintenance/engine_drift.py                       # cpu, reference, multistep
    BNTT_COMPILE=0 python scripts/maintenance/engine_drift.py --engines cpu

VGG9-BNTT (initial weights of --seed) in train mode, one forward pass over the first --batch
images of the bundled Fashion-MNIST subset's test set, coded by Eq. 1 with each of --draws
Poisson seeds. For every draw, every engine runs the same weights on the same input spikes in
float32, and its logits are compared with the reference engine's in float64 (all engines agree
in float64). A float32 spiking network is chaotic: where a membrane lands within rounding of
the threshold a spike flips, and the flip spreads through the batch statistics above it, so
even the reference drifts on some draws. An engine whose statistics are less accurate drifts on
more. Prints, per engine, the number of draws whose largest logit difference exceeds --tol and
the median and largest difference.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch
from tqdm import tqdm

from bntt.coding import poisson_spikes
from bntt.data import make_datasets
from bntt.models import build_model


def logits(model, spikes, engine: str, dtype) -> torch.Tensor:
    net = copy.deepcopy(model).to(dtype).set_engine(engine).train()
    with torch.no_grad():
        return net.forward_spikes(spikes.to(dtype)).double()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["cpu", "reference", "multistep"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args(argv)

    _, test_set = make_datasets("fashionmnist_subset", "data")
    images = torch.stack([test_set[i][0] for i in range(args.batch)])
    torch.manual_seed(args.seed)
    model = build_model("vgg9", num_steps=args.steps, leak_mem=0.95, img_size=32, num_cls=10,
                        in_channels=1)
    gaps = {engine: [] for engine in args.engines}
    for draw in tqdm(range(args.draws), desc="draws"):
        spikes = poisson_spikes(images.double(), args.steps,
                                generator=torch.Generator().manual_seed(draw))
        exact = logits(model, spikes, "reference", torch.float64)
        for engine in args.engines:
            gaps[engine].append((logits(model, spikes, engine, torch.float32) - exact)
                                .abs().max().item())
    print(f"VGG9-BNTT, T={args.steps}, {args.batch} real images, train mode, {args.draws} "
          f"Poisson draws: float32 logits against float64")
    for engine, found in gaps.items():
        print(f"  {engine:10s} draws off by more than {args.tol:g}: "
              f"{sum(g > args.tol for g in found):2d} / {len(found)}; median "
              f"{statistics.median(found):.2e}, largest {max(found):.2e}")


if __name__ == "__main__":
    main()
