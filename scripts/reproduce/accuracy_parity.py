"""Does an engine or precision change what a network learns? Train the same recipe several
ways, several seeds each, and compare final test accuracy with the seed-to-seed spread.

    python scripts/reproduce/accuracy_parity.py --config configs/fashionmnist_vgg9.toml \
        --num_epochs 6 --run reference:fp32:0 --run fused:bf16:0 --run fused:bf16:1 \
        --run fused:fp32:1 --out_dir runs/parity --json parity.json

Each --run is ENGINE:PRECISION:SEED (precision fp32, or bf16 for autocast). Every run is a
plain train.py process (--config, --num_epochs and any train.py flags after `--` apply to all)
in OUT_DIR/ENGINE_PRECISION_seedSEED; a run folder that already holds a checkpoint is resumed
with the same flags (train.py accepts flags that repeat the run's own values), so an
interrupted comparison continues where it stopped. The summary (final and best top-1 per
run, mean and sample standard deviation per engine/precision, end-to-end training img/s from
train.py's epoch times) is printed and written to --json after every run. With --report nothing
is trained: the runs found in OUT_DIR (finished or not) are summarized, e.g. after several
comparisons ran side by side or one was stopped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


from bntt.checkpoint import RUN_CHECKPOINT, write_atomic

TRAIN = Path(__file__).resolve().parents[2] / "train.py"
PRECISIONS = {"fp32": "--no-amp", "bf16": "--amp"}


def parse_run(text: str) -> tuple[str, str, int]:
    parts = text.split(":")
    if len(parts) != 3 or parts[1] not in PRECISIONS or not parts[2].lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(
            f"--run {text!r}: expected ENGINE:PRECISION:SEED, e.g. fused:bf16:0 "
            f"(precision {' or '.join(PRECISIONS)})")
    return parts[0], parts[1], int(parts[2])


def run_name(engine: str, precision: str, seed: int) -> str:
    return f"{engine}_{precision}_seed{seed}"


def train_argv(args, engine: str, precision: str, seed: int) -> list[str]:
    """train.py's flags for one run; the same flags plus --resume once it has a checkpoint."""
    name = run_name(engine, precision, seed)
    argv = ["--config", str(args.config)] if args.config else []
    if args.num_epochs:
        argv += ["--num_epochs", str(args.num_epochs)]
    argv += [*args.train_flags, "--engine", engine, PRECISIONS[precision], "--seed", str(seed),
             "--out_dir", str(args.out_dir), "--run_name", name]
    if (args.out_dir / name / RUN_CHECKPOINT).exists():
        argv = ["--resume", str(args.out_dir / name), *argv]
    return argv


def summarize_run(folder: Path) -> dict:
    """Final and best test top-1 and the end-to-end training speed, from metrics.jsonl."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
    tested = [r for r in rows if "test_top1" in r]
    seconds = sum(r["epoch_seconds"] for r in rows)
    images = sum(r["train_images"] for r in rows)
    return {"epochs": len(rows), "final_top1": tested[-1]["test_top1"] if tested else None,
            "best_top1": max(r["test_top1"] for r in tested) if tested else None,
            "test_images": tested[-1]["test_images"] if tested else None,
            "train_seconds": seconds, "train_img_s": images / seconds if seconds else None,
            "curve": [[r["epoch"], r.get("test_top1")] for r in rows]}


def group_stats(runs: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["engine"], r["precision"]), []).append(r)
    out = []
    for (engine, precision), members in groups.items():
        finals = [m["final_top1"] for m in members if m["final_top1"] is not None]
        speeds = [m["train_img_s"] for m in members if m["train_img_s"]]
        out.append({"engine": engine, "precision": precision, "runs": len(finals),
                    "mean_top1": statistics.fmean(finals) if finals else None,
                    "std_top1": statistics.stdev(finals) if len(finals) > 1 else None,
                    "train_img_s": statistics.median(speeds) if speeds else None})
    return out


def print_table(runs: list[dict], groups: list[dict]) -> None:
    print(f"\n{'run':<28} {'epochs':>6} {'final top-1':>12} {'best top-1':>11} {'train img/s':>12}")
    for r in runs:
        final = f"{r['final_top1']:.2f}" if r["final_top1"] is not None else "-"
        best = f"{r['best_top1']:.2f}" if r["best_top1"] is not None else "-"
        speed = f"{r['train_img_s']:.0f}" if r["train_img_s"] else "-"
        print(f"{r['name']:<28} {r['epochs']:>6} {final:>12} {best:>11} {speed:>12}")
    print(f"\n{'engine / precision':<28} {'runs':>6} {'mean top-1':>12} {'std':>11}")
    for g in groups:
        mean = f"{g['mean_top1']:.2f}" if g["mean_top1"] is not None else "-"
        std = f"{g['std_top1']:.2f}" if g["std_top1"] is not None else "-"
        print(f"{g['engine'] + ' ' + g['precision']:<28} {g['runs']:>6} {mean:>12} {std:>11}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] [-- train.py flags]")
    parser.add_argument("--run", dest="runs", action="append", type=parse_run, required=True,
                        metavar="ENGINE:PRECISION:SEED", help="one training run (repeat the flag)")
    parser.add_argument("--config", type=Path, help="train.py config file for every run")
    parser.add_argument("--num_epochs", type=int, default=0, help="override the config's epochs")
    parser.add_argument("--out_dir", type=Path, default=Path("runs/parity"),
                        help="parent of the run folders (default: runs/parity)")
    parser.add_argument("--json", type=Path, help="write the summary here after every run")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: summarize the run folders that exist")
    args = parser.parse_args(argv)
    if args.report:
        return report(args)
    args.train_flags = train_flags

    runs = []
    for engine, precision, seed in args.runs:
        print(f"== {run_name(engine, precision, seed)}", flush=True)
        code = subprocess.run([sys.executable, str(TRAIN), *train_argv(args, engine, precision, seed)]).returncode
        if code != 0:
            return code
        runs.append(run_entry(args.out_dir, engine, precision, seed))
        write_summary(args.json, runs)
    print_table(runs, group_stats(runs))
    return 0


def report(args) -> int:
    runs = []
    for engine, precision, seed in args.runs:
        folder = args.out_dir / run_name(engine, precision, seed)
        if (folder / "metrics.jsonl").exists():
            runs.append(run_entry(args.out_dir, engine, precision, seed))
        else:
            print(f"{folder}: no metrics.jsonl, left out")
    write_summary(args.json, runs)
    print_table(runs, group_stats(runs))
    return 0


def run_entry(out_dir: Path, engine: str, precision: str, seed: int) -> dict:
    name = run_name(engine, precision, seed)
    return {"name": name, "engine": engine, "precision": precision, "seed": seed,
            **summarize_run(out_dir / name)}


def write_summary(path: Path | None, runs: list[dict]) -> None:
    if path:
        payload = json.dumps({"runs": runs, "groups": group_stats(runs)}, indent=2) + "\n"
        write_atomic(path, lambda f: f.write(payload.encode()))


if __name__ == "__main__":
    sys.exit(main())
