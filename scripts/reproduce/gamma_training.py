"""BNTT's gammas through training, against what weight decay alone makes of them: for each run,
after every epoch, the mean gamma of every layer at the first and last step, the value of a
gamma that no loss gradient reaches (bntt.paper.decay_alone for the run's lr, weight decay and
steps per epoch), the gamma exit the rule would give (alpha, default 0.1) and the spread over
channels of dLoss/dgamma at the first and last step of the bottom and top layers.

    python scripts/reproduce/gamma_training.py runs/gamma-exit/vgg9_T8_decay runs/gamma-exit/vgg9_T8_nodecay

It reads each run's config.json and metrics.jsonl (train.py writes gamma_mean and
gamma_grad_std every epoch), prints a Markdown table per run and writes gamma_training.json and,
when matplotlib is installed, gamma_training.png into --out_dir (default: the first run's
parent folder).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bntt.early_exit import EXIT_THRESHOLD, gamma_exit_step
from bntt.paper import WEIGHT_DECAY, decay_alone


def read_run(folder: Path, alpha: float) -> dict:
    """One run's gammas per epoch, beside decay_alone for its recipe."""
    config, metrics = folder / "config.json", folder / "metrics.jsonl"
    if not (config.exists() and metrics.exists()):
        raise SystemExit(f"{folder} is not a run folder with config.json and metrics.jsonl")
    cfg = json.loads(config.read_text())
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows or "gamma_mean" not in rows[0]:
        raise SystemExit(f"{folder}/metrics.jsonl has no gamma_mean: train it with a train.py that "
                         "logs the gammas")
    steps_per_epoch = rows[0]["train_images"] // cfg["batch_size"]  # the loader drops a partial batch
    alone = decay_alone(cfg["lr"], cfg["num_epochs"], steps_per_epoch, cfg.get("weight_decay", WEIGHT_DECAY))
    epochs = []
    for row in rows:
        layers = list(row["gamma_mean"])
        mean = torch.tensor([row["gamma_mean"][name] for name in layers], dtype=torch.float64)  # [L, T]
        exit_step = gamma_exit_step(mean, alpha)
        epochs.append({
            "epoch": row["epoch"], "lr": row["lr"], "test_top1": row.get("test_top1"),
            # with the gammas exempt from weight decay, nothing moves a gamma without gradient
            "decay_alone": alone[row["epoch"] - 1] if cfg.get("gamma_decay", True) else 1.0,
            "first_step": dict(zip(layers, mean[:, 0].tolist())),
            "last_step": dict(zip(layers, mean[:, -1].tolist())),
            "grad_std_first": {n: row["gamma_grad_std"][n][0] for n in layers},
            "grad_std_last": {n: row["gamma_grad_std"][n][-1] for n in layers},
            "exit_step": exit_step, "fires": bool((mean[:, exit_step - 1] < alpha).all())})
    return {"run": folder.name, "lr": cfg["lr"], "weight_decay": cfg.get("weight_decay", WEIGHT_DECAY),
            "gamma_decay": cfg.get("gamma_decay", True), "num_steps": cfg["num_steps"],
            "steps_per_epoch": steps_per_epoch, "alpha": alpha, "epochs": epochs}


def markdown(run: dict) -> str:
    T, alpha = run["num_steps"], run["alpha"]
    layers = list(run["epochs"][0]["last_step"])
    bottom, top = layers[0], layers[-1]
    lines = [f"{run['run']}: lr {run['lr']:g}, weight decay {run['weight_decay']:g}"
             f"{'' if run['gamma_decay'] else ' (not on the gammas)'}, {run['steps_per_epoch']} "
             f"steps an epoch, T = {T}",
             "",
             f"| epoch | lr | test top-1 | decay alone | mean gamma at t = {T}, min-max over layers "
             f"| mean gamma at t = 1, min-max | dL/dgamma spread, t = 1 / t = {T}: {bottom} "
             f"| the same, {top} "
             f"| gamma exit (alpha {alpha:g}) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in run["epochs"]:
        last, first = e["last_step"].values(), e["first_step"].values()
        top1 = "" if e["test_top1"] is None else f"{e['test_top1']:.2f}"
        lines.append(f"| {e['epoch']} | {e['lr']:g} | {top1} | {e['decay_alone']:.3f} "
                     f"| {min(last):.3f} - {max(last):.3f} | {min(first):.3f} - {max(first):.3f} "
                     f"| {e['grad_std_first'][bottom]:.1e} / {e['grad_std_last'][bottom]:.1e} "
                     f"| {e['grad_std_first'][top]:.1e} / {e['grad_std_last'][top]:.1e} "
                     f"| {'t = ' + str(e['exit_step']) if e['fires'] else 'does not fire'} |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.2), squeeze=False, sharey=True)
    for ax, run in zip(axes[0], runs):
        epochs = [e["epoch"] for e in run["epochs"]]
        for name in run["epochs"][0]["last_step"]:
            ax.plot(epochs, [e["last_step"][name] for e in run["epochs"]], marker="o", markersize=3,
                    label=f"{name}, t = {run['num_steps']}")
        ax.plot(epochs, [e["decay_alone"] for e in run["epochs"]], "k--", linewidth=2,
                label="no gradient: weight decay alone")
        ax.axhline(run["alpha"], color="r", linestyle=":", label=f"alpha = {run['alpha']:g}")
        ax.set(xlabel="epoch", title=f"{run['run']} (T = {run['num_steps']})")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("mean gamma of the last step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders")
    p.add_argument("--alpha", type=float, default=EXIT_THRESHOLD, help="threshold of the gamma rule")
    p.add_argument("--out_dir", type=Path, default=None, help="default: the first run's parent")
    args = p.parse_args(argv)
    runs = [read_run(folder, args.alpha) for folder in args.runs]
    for run in runs:
        print(markdown(run) + "\n")
    out = args.out_dir or args.runs[0].parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "gamma_training.json").write_text(json.dumps(runs, indent=1) + "\n")
    if plot(runs, out / "gamma_training.png"):
        print(f"wrote {out / 'gamma_training.json'} and {out / 'gamma_training.png'}")
    else:
        print(f"wrote {out / 'gamma_training.json'} (no figure: matplotlib is not installed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
