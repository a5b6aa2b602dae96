"""Test top-1 of trained runs with their norms' running statistics (evaluation, as deployed) and
with each test batch's own statistics (the norms in training mode, as in training): a gap
between the two is a network whose training-time and test-time normalisation differ.

    python scripts/reproduce/batch_statistics.py runs/ablation/vgg9_T4_mpbn_s0 runs/ablation/vgg9_T4_bntt_s0

Each run is scored on the first --test_samples test images in batches of --batch_size, with the
Poisson draws of --eval_seed (train.py's test pass: its test batches are twice its batch_size), on the cpu engine (or the one given); nothing is written and no
checkpoint changes (the running statistics the training mode updates belong to a copy).
"""
from __future__ import annotations

import argparse
import copy

import torch

from bntt.seeding import eval_generator
from bntt.trained import load_trained, test_loader
from bntt.training import correct_topk


def top1(model, trained, batch_size: int, test_samples: int, eval_seed: int) -> float:
    generator = eval_generator(eval_seed)
    hits = seen = 0
    with torch.no_grad():
        for x, y in test_loader(trained, None, batch_size, test_samples):
            hits += correct_topk(model(x, generator=generator), y)[0]  # train.py's count
            seen += len(y)
    return 100.0 * hits / seen


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (or checkpoints) of train.py")
    p.add_argument("--test_samples", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--eval_seed", type=int, default=0)
    p.add_argument("--engine", default="cpu")
    args = p.parse_args(argv)
    print(f"{'run':<40} {'norm':<6} {'running statistics':>19} {'batch statistics':>17}")
    for run in args.runs:
        trained = load_trained(run)
        model = trained.model.set_engine(args.engine).eval()
        deployed = top1(model, trained, args.batch_size, args.test_samples, args.eval_seed)
        per_batch = top1(copy.deepcopy(model).train(), trained, args.batch_size, args.test_samples,
                         args.eval_seed)
        print(f"{run:<40} {trained.config.norm:<6} {deployed:>18.2f}% {per_batch:>16.2f}%")


if __name__ == "__main__":
    main()
