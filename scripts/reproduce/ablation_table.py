"""The table and figure of a normalisation ablation (scripts/reproduce/ablation.sh): for each norm,
the final test top-1 of every seed, their mean +- sample std and the mean train top-1 of the last
epoch, and the test top-1 after each epoch, mean and spread over the seeds, as a figure.

    python scripts/reproduce/ablation_table.py runs/ablation vgg9_T4 --seeds 0 1 2

It reads runs/ablation/NAME_<norm>_s<seed>/metrics.jsonl, prints a Markdown table and writes
NAME.json (every number of the table) and, when matplotlib is installed, NAME.png beside the
runs. A run that is missing or has fewer epochs than the others is named in one line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

NORMS = ("bntt", "bn", "tdbn", "tebn", "tab", "mpbn", "none")
LABELS = {"bntt": "BNTT (the paper's)", "bn": "BN shared by all steps", "tdbn": "tdBN",
          "tebn": "TEBN", "tab": "TAB", "mpbn": "MPBN", "none": "none"}


def read_run(folder: Path) -> tuple[list[float], float]:
    """The test top-1 after each tested epoch of one run, and its last epoch's train top-1."""
    metrics = folder / "metrics.jsonl"
    if not metrics.exists():
        raise SystemExit(f"{folder} has no metrics.jsonl: run scripts/reproduce/ablation.sh first")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r["test_top1"] for r in rows if "test_top1" in r], rows[-1]["train_top1"]


def summarise(root: Path, name: str, norms, seeds) -> dict:
    read = {norm: [read_run(root / f"{name}_{norm}_s{seed}") for seed in seeds] for norm in norms}
    curves = {norm: [curve for curve, _ in runs] for norm, runs in read.items()}
    epochs = {len(c) for runs in curves.values() for c in runs}
    if len(epochs) != 1:
        short = [f"{name}_{n}_s{s}" for n in norms for s, c in zip(seeds, curves[n])
                 if len(c) < max(epochs)]
        raise SystemExit(f"runs with fewer tested epochs than the others: {', '.join(short)}")
    rows = {}
    for norm, runs in curves.items():
        final = [c[-1] for c in runs]
        rows[norm] = {"final": final, "mean": statistics.fmean(final),
                      "std": statistics.stdev(final) if len(final) > 1 else 0.0,
                      "train_mean": statistics.fmean(train for _, train in read[norm]),
                      "curve_mean": [statistics.fmean(e) for e in zip(*runs)],
                      "curve_min": [min(e) for e in zip(*runs)],
                      "curve_max": [max(e) for e in zip(*runs)]}
    return {"name": name, "seeds": list(seeds), "epochs": epochs.pop(), "norms": rows}


def markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    lines = ["| norm | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean +- std | train top-1, last epoch (mean) |",
             "| --- |" + " --- |" * len(seeds) + " --- | --- |"]
    for norm, row in summary["norms"].items():
        lines.append(f"| `{norm}` | " + " | ".join(f"{v:.2f}" for v in row["final"])
                     + f" | {row['mean']:.2f} +- {row['std']:.2f} | {row['train_mean']:.2f} |")
    return "\n".join(lines)


def figure(summary: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    epochs = range(1, summary["epochs"] + 1)
    for norm, row in summary["norms"].items():
        line, = ax.plot(epochs, row["curve_mean"], marker="o", label=LABELS.get(norm, norm))
        ax.fill_between(epochs, row["curve_min"], row["curve_max"], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_xticks(list(epochs))
    ax.set_title(f"{summary['name']}: mean over seeds {', '.join(map(str, summary['seeds']))} "
                 "(band: min-max)", fontsize=9)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    partial = path.with_name(path.name + ".partial")
    fig.savefig(partial, format="png", dpi=120)
    plt.close(fig)
    partial.replace(path)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="the folder of the ablation's runs (runs/ablation)")
    p.add_argument("name", help="the NAME given to ablation.sh")
    p.add_argument("--norms", nargs="+", default=list(NORMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = p.parse_args(argv)
    summary = summarise(args.root, args.name, args.norms, args.seeds)
    print(markdown(summary))
    out = args.root / f"{args.name}.json"
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(summary, indent=1) + "\n")
    partial.replace(out)
    if figure(summary, args.root / f"{args.name}.png"):
        print(f"figure: {args.root / (args.name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
