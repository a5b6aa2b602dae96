"""Where the time of one training step goes: torch.profiler over a few steps, kernels grouped
by name, with their share of device time and of the step.

    python scripts/speed/profile_step.py                   # GPU: fused VGG9, T=25, batch 256, bf16
    python scripts/speed/profile_step.py --arch vgg11 --engine multistep --no-amp
    python scripts/speed/profile_step.py --device cpu --steps 2 --batch 4 --engine multistep

Writes a Chrome trace (--trace FILE) for chrome://tracing or Perfetto when asked.
"""
import argparse
from pathlib import Path

import torch
from bench_common import make_step
from torch.profiler import ProfilerActivity, profile

from bntt.paper import PAPER_RUNS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="vgg9", choices=["vgg9", "vgg11"])
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--steps", type=int, help="T (default: the paper's: 25 for vgg9, 30 for vgg11)")
    parser.add_argument("--batch", type=int, help="default: 256 for vgg9, 128 for vgg11")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--trace", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    steps = args.steps or PAPER_RUNS[args.arch].num_steps
    batch = args.batch or PAPER_RUNS[args.arch].batch_size
    step = make_step(args.arch, steps, batch, args.engine, device, args.amp and device.type == "cuda")
    for _ in range(2):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.iters):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top))
    if args.trace:
        prof.export_chrome_trace(str(args.trace))


if __name__ == "__main__":
    main()
