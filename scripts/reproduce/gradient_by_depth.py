"""The gradient each layer of a freshly built network gets, relative to its weights: how far the
loss's gradient reaches down a deep spiking network at initialisation.

    python scripts/reproduce/gradient_by_depth.py --arch resnet19
    python scripts/reproduce/gradient_by_depth.py --arch vgg9 --num_steps 4 --images 16

One batch of the bundled Fashion-MNIST subset (seed 0, the cpu engine, train mode): for every
conv and linear weight and every BNTT's [T, C] gammas, ||dL/dW|| / ||W|| for the
cross-entropy loss of the batch.
"""
import argparse

import torch
import torch.nn.functional as F

from bntt.data import make_datasets
from bntt.config import Config
from bntt.models import ARCHS
from bntt.networks import build_network


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=[a for a in ARCHS if a != "fc"], default="resnet19")
    p.add_argument("--num_steps", type=int, default=4)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--leak_mem", type=float, default=0.95)
    args = p.parse_args()
    torch.manual_seed(0)
    train_set, _ = make_datasets("fashionmnist_subset", "data")
    images = torch.stack([train_set[i][0] for i in range(args.images)])
    labels = torch.tensor([train_set[i][1] for i in range(args.images)])
    model = build_network(Config(arch=args.arch, dataset="fashionmnist_subset",
                                 num_steps=args.num_steps, leak_mem=args.leak_mem))
    model = model.set_engine("cpu").train()
    F.cross_entropy(model(images, torch.Generator().manual_seed(0)), labels).backward()
    print(f"{args.arch}, T={args.num_steps}, {args.images} images: ||dL/dW|| / ||W|| per weight")
    for name, param in model.named_parameters():
        if param.dim() > 1:
            print(f"{name:36s} {param.grad.norm().item() / param.norm().item():.2e}")


if __name__ == "__main__":
    main()
