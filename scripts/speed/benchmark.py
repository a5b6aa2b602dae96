"""Training and evaluation speed and peak memory of each engine, on the paper's two settings.

    python scripts/speed/benchmark.py                       # GPU: VGG9 T=25 b256, VGG11 T=30 b128
    python scripts/speed/benchmark.py --device cpu --quick  # CPU: tiny sizes, to see it run
    python scripts/speed/benchmark.py --engines fused --amp --json bench.json
    python scripts/speed/benchmark.py --device cpu --setting vgg9:25:32 --setting vgg9:4:16 \
        --warmup 1 --iters 3                                # CPU: the settings of docs/speed.md
    python scripts/speed/benchmark.py --device cpu --engines reference cpu+bf16 --quick

Training img/s is one full step (Poisson coding, forward, backward, SGD update) on
CIFAR-shaped random images; evaluation img/s is a no-grad forward in eval mode. After warm-up
steps, each step is timed on its own (CUDA events on a GPU) and the median is reported. Peak
memory is torch.cuda.max_memory_allocated over the training steps.

An engine named ENGINE+bf16 runs under bf16 autocast (`--amp` puts every engine under it).
On a CPU the default rows are reference, cpu and, where the CPU has bf16 instructions
(AVX512-BF16 or AMX), cpu+bf16. The engines of one setting take turns (reference, cpu, then
cpu, reference, ...), two steps each of which the second is timed, so that a load that comes
and goes on a shared machine falls on all of them alike while no engine is timed on the step
after another's; each row is also given as a ratio to the float32 reference engine of the same
run (the baseline that stands in for the authors' code, which is float32 only).
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
from bntt.cli import cpu_has_bf16
from bntt.paper import PAPER_RUNS

SETTINGS = {arch: (arch, run.num_steps, run.batch_size) for arch, run in PAPER_RUNS.items()}
# multistep frees gigabytes per step at these sizes, which slowed the engine that ran after it
# in the same process by about 4% for several steps: compare it in a run of its own
CPU_ENGINES = ["reference", "cpu"]
BF16 = "+bf16"
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


def split_name(name, amp):
    """ENGINE or ENGINE+bf16 -> (engine, bf16 autocast or not)."""
    return (name[:-len(BF16)], True) if name.endswith(BF16) else (name, amp)


def measure_in_turn(setting, names, device, amp, warmup, iters):
    """measure() for several engines on a CPU, taking turns (see the module docstring); the
    rows of `names`, in order."""
    arch, steps, batch = setting
    runs = []
    for name in names:
        engine, bf16 = split_name(name, amp)
        model = make_model(arch, steps, engine, device)
        runs.append((make_step(arch, steps, batch, engine, device, bf16, model=model),
                     make_eval_step(model, batch, device, bf16)))
    timer = Timer(device)
    train_times, eval_times = [[] for _ in names], [[] for _ in names]
    for column, times in ((0, train_times), (1, eval_times)):
        for _ in range(warmup):
            for run in runs:
                run[column]()
        for i in range(iters):
            for k in range(len(runs)):
                j = (i + k) % len(runs)  # each round starts with the next engine
                # A step right after another engine's pays for what that one leaves behind
                # (gigabytes freed by multistep, a cold cache): untimed, then the timed one.
                runs[j][column]()
                times[j].append(timer(runs[j][column]))
    rows = []
    probe = torch.empty(0, device=device)
    for name, train, evaluation in zip(names, train_times, eval_times):
        engine, bf16 = split_name(name, amp)
        train_s, eval_s = statistics.median(train), statistics.median(evaluation)
        rows.append({"arch": arch, "num_steps": steps, "batch": batch,
                     "engine": engines.resolve(engine, probe, steps), "amp": bf16,
                     "train_img_s": batch / train_s, "eval_img_s": batch / eval_s, "peak_gib": None,
                     "train_ms": 1000 * train_s, "eval_ms": 1000 * eval_s,
                     "train_spread_ms": 1000 * (max(train) - min(train)),
                     "train_steps_ms": [1000 * t for t in train]})
    return rows


def add_ratios(rows):
    """Each row's img/s over those of the reference engine of its setting, float32 where there
    is one, where there is one."""
    for row in rows:
        bases = [r for r in rows if r["engine"] == "reference"
                 and (r["arch"], r["num_steps"], r["batch"]) == (row["arch"], row["num_steps"], row["batch"])]
        base = min(bases, key=lambda r: r["amp"], default=None)
        if base is not None:
            row["train_vs_reference"] = row["train_img_s"] / base["train_img_s"]
            row["eval_vs_reference"] = row["eval_img_s"] / base["eval_img_s"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def parse_setting(text):
    """ARCH:T:BATCH, e.g. vgg9:25:32."""
    try:
        arch, steps, batch = text.split(":")
        steps, batch = int(steps), int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is ARCH:T:BATCH, e.g. vgg9:25:32, not {text!r}") from None
    if arch not in SETTINGS or steps < 1 or batch < 1:
        raise argparse.ArgumentTypeError(f"a setting is ARCH:T:BATCH with ARCH one of "
                                         f"{', '.join(SETTINGS)} and T, BATCH >= 1, not {text!r}")
    return arch, steps, batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--engines", nargs="+", default=None,
                        help="ENGINE or ENGINE+bf16 (under bf16 autocast); default: reference "
                             "multistep, plus fused where it can run; on a CPU: reference cpu, "
                             "plus cpu+bf16 where the CPU has bf16 instructions")
    parser.add_argument("--archs", nargs="+", default=["vgg9", "vgg11"], choices=list(SETTINGS))
    parser.add_argument("--setting", action="append", type=parse_setting, metavar="ARCH:T:BATCH",
                        help="run this setting instead of the paper's (repeatable), e.g. vgg9:25:32")
    parser.add_argument("--amp", action="store_true", help="every engine under bf16 autocast")
    parser.add_argument("--quick", action="store_true", help="tiny T and batch (for a CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    names = args.engines or (CPU_ENGINES + (["cpu" + BF16] if cpu_has_bf16() else []) if cpu else
                             ["reference", "multistep"] + (
        ["fused"] if fused.available(torch.empty(0, device=device)) else []))
    if cpu and "reference" in names:  # the baseline of the ratios: first, then the others
        names = ["reference"] + [n for n in names if n != "reference"]
    if not cpu and any(n.endswith(BF16) for n in names):
        parser.error("ENGINE+bf16 is for a CPU; on a GPU, --amp runs every engine in bf16")
    table = QUICK if args.quick else SETTINGS
    settings = args.setting or [table[arch] for arch in args.archs]
    results = []
    for setting in settings:
        rows = (measure_in_turn(setting, names, device, args.amp, args.warmup, args.iters) if cpu else
                [measure(setting, engine, device, args.amp, args.warmup, args.iters) for engine in names])
        for row in rows:
            results.append(row)
            print(f"  {row['arch']} T={row['num_steps']} b{row['batch']} {row['engine']}: train "
                  f"{row['train_img_s']:.1f} img/s, eval {row['eval_img_s']:.1f} img/s",
                  file=sys.stderr, flush=True)
    add_ratios(results)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = f", {torch.get_num_threads()} threads" if cpu else ""
    cpu_name = f" ({cpu_model()})" if cpu else ""
    print(f"\n{gpu}{cpu_name}, torch {torch.__version__}{threads}")
    ratio = cpu and any("train_vs_reference" in r for r in results)
    print(f"{'setting':<22} {'engine':<10} {'dtype':<6} {'train img/s':>12} {'eval img/s':>11} {'peak GiB':>9}"
          + (f" {'train x ref':>12} {'eval x ref':>11}" if ratio else ""))
    for r in results:
        setting = f"{r['arch']} T={r['num_steps']} b{r['batch']}"
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        dtype = "bf16" if r["amp"] else "fp32"
        line = (f"{setting:<22} {r['engine']:<10} {dtype:<6} {r['train_img_s']:>12.1f} "
                f"{r['eval_img_s']:>11.1f} {peak:>9}")
        if ratio and "train_vs_reference" in r:
            line += f" {r['train_vs_reference']:>12.2f} {r['eval_vs_reference']:>11.2f}"
        print(line)
    if device.type == "cuda" and not args.quick and not args.setting:
        for arch in args.archs:
            train, mem, ev = AUTHORS_H100[arch]
            print(f"{arch}: the authors' code on an H100 (docs/spec.md): train {train} img/s, "
                  f"{mem} GiB, eval {ev} img/s")
    if args.json:
        about = {"device": gpu, "torch": torch.__version__, "amp": args.amp}
        if cpu:
            about.update(threads=torch.get_num_threads(), cpu=cpu_model())
        args.json.write_text(json.dumps({**about, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
