"""Early exit: accuracy after every time step, BNTT's gammas, and two rules to stop sooner.

One pass over the test set gives the accuracy after every step (the readout accumulates), the
gamma of every BNTT layer at every step, the paper's gamma-threshold exit and a per-sample
confidence exit (the rules are in bntt/early_exit.py). evaluate.py is this command under the
name users know; the two take the same flags and write the same report:

    python analyze.py early-exit --checkpoint runs/<run>   # = python evaluate.py --checkpoint runs/<run>

Writes into --out_dir (default: <checkpoint folder>/early_exit): early_exit.json,
accuracy_per_step.csv, gamma.csv, sample_exit.csv, TensorBoard events, and gamma.png /
accuracy.png when matplotlib is installed.
"""
from __future__ import annotations

import argparse
import json

from bntt import early_exit
from bntt.analysis.report import Report
from bntt.analysis.scoring import open_checkpoint, prefix_logits_pass
from bntt.cli import UsageError, check_scoring_flags, require_positive
from bntt.data import DATASETS
from bntt.engines import ENGINES
from bntt.trained import test_loader

DEFAULT_CONFIDENCES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a .pt file, or a run folder (its last.pt; name best.pt to score that)")
    p.add_argument("--exit_threshold", type=float, default=early_exit.EXIT_THRESHOLD,
                   help="alpha of the gamma rule: exit at the first step where every BNTT layer's "
                        f"mean gamma is below it (default: {early_exit.EXIT_THRESHOLD})")
    p.add_argument("--confidence", type=float, nargs="+", default=list(DEFAULT_CONFIDENCES),
                   help="softmax-margin thresholds of the per-sample exit")
    p.add_argument("--eval_seed", type=int, default=0, help="seed of the Poisson draws (default: 0)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--dataset", choices=list(DATASETS), help="default: the checkpoint's")
    p.add_argument("--leak_mem", type=float, help="default: the checkpoint's")
    p.add_argument("--data_dir", default=None, help="default: the checkpoint's, else ./data")
    p.add_argument("--test_samples", type=int, default=0, help="only the first N test images")
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", default="auto", choices=ENGINES)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA or CPU)")
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--out_dir", default=None)
    p.add_argument("--no_plots", action="store_true", help="skip the PNG figures")


def per_step_pass(model, loader, device, amp: bool, eval_seed: int) -> early_exit.PrefixScores:
    """One pass: per-step top-1/top-5 counts, and per sample the softmax margin and the
    correctness of the prediction after every step."""
    scores = early_exit.PrefixScores(model.num_steps)
    for logits, labels in prefix_logits_pass(model, loader, device, eval_seed, amp,
                                             desc="early-exit evaluation"):
        scores.add(logits, labels)
    return scores


def build_report(model, scores: early_exit.PrefixScores, alpha: float, confidences) -> dict:
    n = scores.images
    acc1 = (100.0 * scores.top1.double() / n).tolist()
    acc5 = (100.0 * scores.top5.double() / n).tolist()
    steps = model.num_steps
    gammas = early_exit.gamma_statistics(model)
    gamma_exit = early_exit.gamma_exit(gammas, acc1, model.norm, alpha)
    return {
        "num_steps": steps, "test_images": n,
        "per_step": [{"t": t + 1, "top1": acc1[t], "top5": acc5[t]} for t in range(steps)],
        "gamma": [{"layer": name, "t": t + 1, "mean": gammas.mean[i, t].item(),
                   "std": gammas.std[i, t].item(), "min": gammas.min[i, t].item(),
                   "max": gammas.max[i, t].item()}
                  for i, name in enumerate(gammas.layers) for t in range(steps)],
        "gamma_exit": gamma_exit,
        "sample_exit": [dict(zip(("threshold", "top1", "mean_steps"),
                                 (c, *early_exit.sample_exit(scores.margins, scores.correct, c))))
                        for c in confidences],
    }


def print_report(report: dict, layers: list) -> None:
    steps = report["num_steps"]
    print(f"\naccuracy after t of {steps} steps ({report['test_images']} test images)")
    print(f"{'t':>3} {'top-1':>7} {'top-5':>7}   mean gamma: " + " ".join(f"{n:>8}" for n in layers))
    means = {(g["layer"], g["t"]): g["mean"] for g in report["gamma"]}
    for row in report["per_step"]:
        t = row["t"]
        print(f"{t:>3} {row['top1']:>7.2f} {row['top5']:>7.2f}               "
              + " ".join(f"{means[(n, t)]:>8.4f}" for n in layers))
    ge = report["gamma_exit"]
    when = (f"step {ge['exit_step']} of {steps}" if ge["triggered"]
            else f"never (every step has a layer with mean gamma >= {ge['alpha']:g}), so all {steps} steps")
    if not ge["applicable"]:
        print(f"\ngamma exit: not applicable ({ge['note']})")
    else:
        print(f"\ngamma exit (alpha={ge['alpha']:g}): {when}: top-1 {ge['top1_at_exit']:.2f}% vs "
              f"{ge['top1_full']:.2f}% at T={steps}, {ge['steps_saved']} steps saved")
    print("\nper-sample exit (softmax margin >= threshold)")
    print(f"{'threshold':>9} {'top-1':>7} {'mean steps':>10}")
    for row in report["sample_exit"]:
        print(f"{row['threshold']:>9g} {row['top1']:>7.2f} {row['mean_steps']:>10.2f}")


def add_outputs(report: dict, layers: list, out: Report) -> None:
    """The report's files, events and figures, to be written by out.write()."""
    out.json("early_exit.json", report)
    out.csv("accuracy_per_step.csv", report["per_step"])
    out.csv("gamma.csv", report["gamma"])
    out.csv("sample_exit.csv", report["sample_exit"])
    events = out.events
    for row in report["per_step"]:
        events.scalar("early_exit/top1_after_t_steps", row["top1"], row["t"])
    for g in report["gamma"]:
        events.scalar(f"early_exit/gamma_mean/{g['layer']}", g["mean"], g["t"])
    for i, row in enumerate(report["sample_exit"]):
        events.scalar("early_exit/sample_exit_top1", row["top1"], i)
        events.scalar("early_exit/sample_exit_mean_steps", row["mean_steps"], i)
    events.text("early_exit/summary", json.dumps(report["gamma_exit"]))
    plot(report, layers, out)


def plot_gammas(plt, ts, layers, means, ge, out: Report) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in layers:
        ax.plot(ts, [means[(name, t)] for t in ts], label=name)
    ax.axhline(ge["alpha"], color="k", linestyle="--", linewidth=1, label=f"alpha = {ge['alpha']:g}")
    if ge["triggered"]:
        ax.axvline(ge["exit_step"], color="r", linestyle=":", label=f"exit at t = {ge['exit_step']}")
    ax.set(xlabel="time step t", ylabel="mean gamma", title="BNTT gamma through time")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    out.figure("gamma.png", fig)


def plot(report: dict, layers: list, out: Report) -> None:
    plt = out.pyplot()
    if plt is None:
        return

    steps = report["num_steps"]
    ts = list(range(1, steps + 1))
    ge = report["gamma_exit"]
    means = {(g["layer"], g["t"]): g["mean"] for g in report["gamma"]}
    if layers:  # no gamma per step outside BNTT
        plot_gammas(plt, ts, layers, means, ge, out)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(ts, [r["top1"] for r in report["per_step"]], marker="o", markersize=3,
            label="all samples stop after t steps")
    ax.plot([r["mean_steps"] for r in report["sample_exit"]], [r["top1"] for r in report["sample_exit"]],
            marker="s", markersize=3, label="per-sample exit (softmax margin)")
    if ge["applicable"]:
        label = (f"gamma exit (alpha={ge['alpha']:g}): t={ge['exit_step']}, {ge['top1_at_exit']:.2f}%"
                 if ge["triggered"] else f"gamma rule (alpha={ge['alpha']:g}) never fires: all {steps} steps")
        ax.plot([ge["exit_step"]], [ge["top1_at_exit"]], marker="*", markersize=14, color="r",
                linestyle="", label=label)
    ax.set(xlabel="time steps (mean over samples for the per-sample exit)", ylabel="test top-1 (%)",
           title="accuracy vs latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.figure("accuracy.png", fig)


def run(args) -> int:
    require_positive([(args.exit_threshold, "--exit_threshold")]
                     + [(c, "--confidence") for c in args.confidence])
    check_scoring_flags(args)
    source, out, device, trained = open_checkpoint(args, "early_exit")
    if not trained.spiking:
        raise UsageError(f"{source} holds the ANN {trained.arch}: early exit is for spiking networks")
    try:
        model = trained.model.to(device).set_engine(args.engine)
    except RuntimeError as err:
        raise UsageError(f"--engine {args.engine}: {err}") from None
    loader = test_loader(trained, args.data_dir, args.batch_size, args.test_samples, args.num_workers,
                         pin_memory=device.type == "cuda")

    scores = per_step_pass(model, loader, device, args.amp, args.eval_seed)
    layers = [name for name, _ in model.bntt_layers()]
    report = build_report(model, scores, args.exit_threshold, args.confidence)
    report.update({"checkpoint": str(source), "dataset": trained.dataset, "eval_seed": args.eval_seed,
                   "batch_size": args.batch_size, "arch": trained.arch,
                   "leak_mem": model.leak_mem})
    print_report(report, layers)
    add_outputs(report, layers, out)
    out.write()
    return 0
