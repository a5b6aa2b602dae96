"""Training and evaluation speed and peak memory of each engine, on the paper's two settings.

    python scripts/speed/benchmark.py                       # GPU: VGG9 T=25 b256, VGG11 T=30 b128
    python scripts/speed/benchmark.py --device cpu --quick  # CPU: tiny sizes, to see it run
    python scripts/speed/benchmark.py --engines fused --amp --json bench.json

Training img/s is one full step (Poisson coding, forward, backward, SGD update) on
CIFAR-shaped random images; evaluation img/s is a no-grad forward in eval mode. After warm-up
steps, each step is timed on its own (CUDA events on a GPU) and the median is reported. Peak
memory is torch.cuda.max_memory_allocated over the training steps.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_common import make_eval_step, make_model, make_step

from bntt import engines, fused
from bntt.paper import PAPER_RUNS

SETTINGS = {arch: (arch, run.num_steps, run.batch_size) for arch, run in PAPER_RUNS.items()}
QUICK = {"vgg9": ("vgg9", 2, 8), "vgg11": ("vgg11", 2, 4)}
# The authors' code on one H100 (docs/spec.md, section 7): train img/s, peak GiB, eval img/s.
AUTHORS_H100 = {"vgg9": (802, 19.4, 1602), "vgg11": (431, 8.9, 1516)}


class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started


def measure(setting, engine, device, amp, warmup, iters):
    arch, steps, batch = setting
    model = make_model(arch, steps, engine, device)
    train_step = make_step(arch, steps, batch, engine, device, amp, model=model)
    eval_step = make_eval_step(model, batch, device, amp)
    timer = Timer(device)
    for _ in range(warmup):
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    train_times = [timer(train_step) for _ in range(iters)]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    for _ in range(warmup):
        eval_step()
    eval_times = [timer(eval_step) for _ in range(iters)]
    train_s, eval_s = statistics.median(train_times), statistics.median(eval_times)
    probe = torch.empty(0, device=device)
    return {"arch": arch, "num_steps": steps, "batch": batch, "engine": engines.resolve(engine, probe),
            "amp": amp, "train_img_s": batch / train_s, "eval_img_s": batch / eval_s,
            "peak_gib": peak, "train_ms": 1000 * train_s, "eval_ms": 1000 * eval_s,
            "train_spread_ms": 1000 * (max(train_times) - min(train_times))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--engines", nargs="+", default=None,
                        help="default: reference multistep, plus fused where it can run")
    parser.add_argument("--archs", nargs="+", default=["vgg9", "vgg11"], choices=list(SETTINGS))
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--quick", action="store_true", help="tiny T and batch (for a CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    names = args.engines or ["reference", "multistep"] + (
        ["fused"] if fused.available(torch.empty(0, device=device)) else [])
    table = QUICK if args.quick else SETTINGS
    results = []
    for arch in args.archs:
        for engine in names:
            row = measure(table[arch], engine, device, args.amp, args.warmup, args.iters)
            results.append(row)
            print(f"  {arch} {engine}: train {row['train_img_s']:.1f} img/s, eval "
                  f"{row['eval_img_s']:.1f} img/s", file=sys.stderr, flush=True)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{gpu}, torch {torch.__version__}, {'bf16 autocast' if args.amp else 'fp32'}")
    print(f"{'setting':<22} {'engine':<10} {'train img/s':>12} {'eval img/s':>11} {'peak GiB':>9}")
    for r in results:
        setting = f"{r['arch']} T={r['num_steps']} b{r['batch']}"
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(f"{setting:<22} {r['engine']:<10} {r['train_img_s']:>12.1f} {r['eval_img_s']:>11.1f} {peak:>9}")
    if device.type == "cuda" and not args.quick:
        for arch in args.archs:
            train, mem, ev = AUTHORS_H100[arch]
            print(f"{arch}: the authors' code on an H100 (docs/spec.md): train {train} img/s, "
                  f"{mem} GiB, eval {ev} img/s")
    if args.json:
        args.json.write_text(json.dumps({"device": gpu, "torch": torch.__version__, "amp": args.amp,
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
