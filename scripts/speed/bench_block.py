"""Time the cpu engine's BNTT + LIF of one block of steps at VGG9's layer shapes, both ways it
runs them: the compiled kernels (`bntt.compiled.bntt_lif_block`) and, as with BNTT_COMPILE=0,
the layout copy, BNTT and `lif_scan`. With --against, another checkout's same paths are timed
in alternation with this one's, so that a change to them is measured against the code before
it on the same machine at the same moment:

    python scripts/speed/bench_block.py
    git worktree add ../before HEAD~1 && python scripts/speed/bench_block.py --against ../before

Training is forward and backward, evaluation a no-grad forward; each row is the median of
--iters calls. VGG9 at T=25, batch 32 runs blocks of 2 steps through two layers of each of
the first two shapes and three of the last, 13 blocks a step.
"""
import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch

SHAPES = [(64, 32), (128, 16), (256, 8)]  # (channels, side) of VGG9's conv layers at 32x32


def load_paths(checkout: Path | None):
    """(compiled block, uncompiled block) functions of `checkout`'s bntt (None: this one's)."""
    saved_path, saved = list(sys.path), {k: v for k, v in sys.modules.items()
                                         if k == "bntt" or k.startswith("bntt.")}
    if checkout is not None:  # import that checkout's bntt beside this one's
        for name in saved:
            del sys.modules[name]
        sys.path.insert(0, str(checkout.resolve()))
    try:
        from bntt import compiled, engines, neuron
        from bntt.bntt import BNTT
        stack = getattr(engines, "_norm_stack", None) or getattr(engines, "_steps_last")
    finally:
        if checkout is not None:
            sys.path[:] = saved_path
            for name in [k for k in sys.modules if k == "bntt" or k.startswith("bntt.")]:
                del sys.modules[name]
            sys.modules.update(saved)

    def block_compiled(a, bn, lif, batch):
        return compiled.bntt_lif_block(a, bn, lif, 0, batch)

    takes_mode = "training" in inspect.signature(stack).parameters  # laid out by mode

    def block_uncompiled(a, bn, lif, batch):
        z = bn(stack(a, batch, a.dtype, bn.training) if takes_mode else stack(a, batch, a.dtype))
        return neuron.lif_scan(z, lif.leak, lif.threshold, None, None, torch.channels_last)

    return BNTT, neuron.LIFNeuron, {"compiled": block_compiled, "uncompiled": block_uncompiled}


def time_call(block, a, bn, lif, batch, training: bool) -> float:
    bn.train(training)
    start = time.perf_counter()
    if training:
        spikes, u = block(a, bn, lif, batch)
        (spikes.sum() + u.sum()).backward()
    else:
        with torch.no_grad():
            block(a, bn, lif, batch)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="a checkout of another version")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--block", type=int, default=2, help="steps per block")
    parser.add_argument("--iters", type=int, default=15)
    args = parser.parse_args(argv)
    versions = {"this": load_paths(None)}
    if args.against:
        versions["against"] = load_paths(args.against)
    g = torch.Generator().manual_seed(0)
    print(f"{torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, blocks of "
          f"{args.block} steps; median ms of {args.iters} calls")
    for channels, side in SHAPES:
        a = (torch.randn(args.block * args.batch, channels, side, side, generator=g) * 2 + 1)
        a = a.contiguous(memory_format=torch.channels_last).requires_grad_()
        for path in ("compiled", "uncompiled"):
            for training in (True, False):
                calls = {}
                for name, (bntt_class, lif_class, blocks) in versions.items():
                    bn, lif = bntt_class(channels, args.block), lif_class(0.95)
                    calls[name] = (blocks[path], bn, lif)
                    for _ in range(2):  # compiling, first touch of the memory
                        time_call(blocks[path], a, bn, lif, args.batch, training)
                times = {name: [] for name in calls}
                for i in range(args.iters):  # in turns, each first half of the time
                    for name in (list(calls) if i % 2 else list(calls)[::-1]):
                        block, bn, lif = calls[name]
                        times[name].append(time_call(block, a, bn, lif, args.batch, training))
                row = {name: statistics.median(t) * 1e3 for name, t in times.items()}
                text = ", ".join(f"{name} {ms:.2f}" for name, ms in row.items())
                if "against" in row:
                    text += f" ({row['this'] / row['against']:.2f}x)"
                print(f"{channels:3d} x {side:2d}x{side:<2d} {path:10s} "
                      f"{'train' if training else 'eval ':5s} {text}", flush=True)


if __name__ == "__main__":
    main()
