"""Time the fused BNTT + LIF backward over its launch shapes, at the VGG9 layer shapes.

    python scripts/maintenance/tune_fused.py --json tune.json      # GPU only

For every (values per tile, programs per SM, warps) the forward + backward of all eight VGG9
BNTT layers (T=25, batch 256; the three with a pool after them pooled inside the kernels, as
the fused engine runs them) is timed in bf16 and float32 (CUDA events, median of --iters);
the table is sorted by the bf16 total. The chosen shape is bntt/fused/kernels.py's
BACKWARD_TILE, PROGRAMS_PER_SM and BACKWARD_WARPS.
"""
import argparse
import itertools
import json
import statistics
from pathlib import Path

import torch

from bntt import BNTT, LIFNeuron
from bntt.fused import kernels
from bntt.fused.engine import pool_size
from bntt.models import build_model


def layer_inputs(steps, batch, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    out = []
    model = build_model("vgg9", num_steps=steps)
    for (channels, size), block in zip(model.neuron_shapes, model.blocks):
        k = pool_size(block.pool) or 1
        shape = (steps, batch, channels) + ((size, size) if size else ())
        z = (torch.randn(shape, device=device, generator=g) * 2 + 0.3).to(dtype)
        if size:
            z = z.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
        pooled = shape[:3] + ((size // k, size // k) if size else ())
        grad = torch.randn(pooled, device=device, generator=g).to(dtype)
        out.append((z, grad, BNTT(channels, steps).to(device), k))
    return out


def total_ms(layers, iters):
    neuron = LIFNeuron(leak=0.95)

    def once():
        for z, grad, bn, pool in layers:
            kernels.bntt_lif(z.requires_grad_(), bn, neuron, pool=pool).backward(grad)
            z.grad = None

    once()  # compile this launch shape
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        once()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--programs", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    device = torch.device("cuda")
    inputs = {d: layer_inputs(25, 256, d, device) for d in (torch.bfloat16, torch.float32)}
    rows = []
    for tile, programs, warps in itertools.product(args.tiles, args.programs, args.warps):
        kernels.BACKWARD_TILE, kernels.PROGRAMS_PER_SM, kernels.BACKWARD_WARPS = tile, programs, warps
        row = {"tile": tile, "programs_per_sm": programs, "warps": warps}
        for dtype, layers in inputs.items():
            row[str(dtype).split(".")[-1] + "_ms"] = total_ms(layers, args.iters)
        rows.append(row)
        print(row, flush=True)
    rows.sort(key=lambda r: r["bfloat16_ms"])
    print(f"\n{'tile':>5} {'prog/SM':>8} {'warps':>6} {'bf16 ms':>8} {'fp32 ms':>8}   (8 VGG9 layers, fwd+bwd)")
    for r in rows:
        print(f"{r['tile']:>5} {r['programs_per_sm']:>8} {r['warps']:>6} "
              f"{r['bfloat16_ms']:>8.2f} {r['float32_ms']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
