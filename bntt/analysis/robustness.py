"""Robustness of a trained SNN and its ANN twin to Gaussian noise and to FGSM and PGD attacks.

    python analyze.py robustness --snn runs/<snn run> --ann runs/<ann run>
    python analyze.py robustness --snn runs/<snn run> --eps 0 4 8 --pgd_steps 10 --eot 4

Either network alone also works. Both are scored on the same test images, rebuilt as pixels in
[0, 1] from the loader's normalised images; every perturbation is made on those pixels
(bntt/analysis/attacks.py), and the networks see them normalised again. Reports top-1 against
sigma (Gaussian noise, mean over --noise_draws draws) and against epsilon (in 1/255 of the pixel
range) for FGSM and PGD, side by side: a table, robustness.json, robustness.csv, TensorBoard
scalars and robustness.png (default folder: <the SNN's run folder, else the ANN's>/robustness).

The settings are ours: the paper's noise levels, attack strengths, PGD steps and step size are
not known here. The defaults (sigma 0..0.2; eps 1..16/255; PGD 7 steps of 2/255 without random
start; one Poisson draw per gradient) are common choices for CIFAR-sized images, and the JSON
says they are ours ("settings_are_ours").

Random draws are paired, so that a difference between rows is the perturbation's and not the
coder's: for the SNN, the clean images and every attacked image of a batch are scored with the
same Poisson draws (seed --seed); noise draw d uses Gaussian noise of its own seed and the
Poisson draws of seed --seed + d, the same for every sigma, so sigma = 0 of draw 0 is the clean
score. The attacker's own Poisson draws (and PGD's random start) come from a third stream: it
does not know the draws its images will be scored with. An eps of 0 is the clean image. The
SNN's input gradients run through its surrogate gradient and a straight-through Poisson coder,
averaged over --eot draws (attacks.py says why). The clean top-1 is that of the rebuilt pixels
with these draws and batches, so it can differ a little from train.py's test top-1.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bntt.analysis.attacks import (ann_logits_fn, fgsm, gaussian_noise, normaliser, pgd,
                                   snn_logits_fn, to_pixels)
from bntt.analysis.report import Report
from bntt.checkpoint import run_folder_of
from bntt.cli import UsageError, pick_device, require
from bntt.data import DATASETS, dataset_info
from bntt.engines import ENGINES
from bntt.seeding import eval_generator
from bntt.trained import Trained, load_trained, load_trained_ann, test_loader

DEFAULT_SIGMAS = (0.0, 0.02, 0.05, 0.1, 0.2)
DEFAULT_EPS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)  # in 1/255
SEED_RANGE = 2 ** 32
# The three random streams (see the module docstring) get disjoint seeds: Poisson draws
# seed + d, Gaussian noise seed + NOISE + d, the attacker seed + ATTACK + batch index.
NOISE_SEED_OFFSET, ATTACK_SEED_OFFSET = 2 ** 32, 2 ** 33
SETTINGS_NOTE = ("noise levels, attack strengths, PGD steps and step size, EOT draws and seeds are "
                 "our choices: the paper's exact settings are not known here")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snn", metavar="RUN",
                   help="the spiking network: a run folder (its last.pt) or a .pt file")
    p.add_argument("--ann", metavar="RUN",
                   help="its ANN twin (arch vgg9_ann / vgg11_ann): a run folder or a .pt file")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS),
                   help="standard deviations of the Gaussian noise on pixels in [0, 1] "
                        "(default: %(default)s)")
    p.add_argument("--eps", type=float, nargs="+", default=list(DEFAULT_EPS),
                   help="L-infinity budgets of FGSM and PGD, in 1/255 (default: %(default)s)")
    p.add_argument("--pgd_steps", type=int, default=7, help="PGD iterations (default: 7)")
    p.add_argument("--pgd_step_size", type=float, default=2.0, help="PGD step, in 1/255 (default: 2)")
    p.add_argument("--pgd_random_start", action="store_true",
                   help="start PGD at a uniform point of the eps-ball")
    p.add_argument("--eot", type=int, default=1,
                   help="SNN: average each input gradient over this many Poisson draws "
                        "(expectation over transformation; default: 1)")
    p.add_argument("--noise_draws", type=int, default=3,
                   help="noise draws per sigma, seeds seed..seed+N-1 (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    p.add_argument("--test_samples", type=int, default=0, help="only the first N test images")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--dataset", choices=list(DATASETS), help="default: the checkpoints'")
    p.add_argument("--leak_mem", type=float, help="SNN: default: the checkpoint's (needed for the "
                                                  "authors' checkpoints)")
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", default="auto", choices=ENGINES, help="the SNN's time loop")
    p.add_argument("--data_dir", default=None, help="default: the checkpoint's, else ./data")
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--out_dir", default=None)
    p.add_argument("--no_plots", action="store_true", help="skip the PNG figure")


def check_args(args) -> None:
    if not (args.snn or args.ann):
        raise UsageError("give --snn, --ann or both")
    for values, name in ((args.sigmas, "--sigmas"), (args.eps, "--eps")):
        for v in values:
            if not (math.isfinite(v) and v >= 0):
                raise UsageError(f"{name} must be non-negative numbers, got {v}")
    if not (math.isfinite(args.pgd_step_size) and args.pgd_step_size > 0):
        raise UsageError(f"--pgd_step_size must be a positive number, got {args.pgd_step_size}")
    checks = [
        (args.pgd_steps >= 1, f"--pgd_steps must be >= 1, got {args.pgd_steps}"),
        (args.eot >= 1, f"--eot must be >= 1, got {args.eot}"),
        (args.noise_draws >= 1, f"--noise_draws must be >= 1, got {args.noise_draws}"),
        (args.batch_size >= 1, f"--batch_size must be >= 1, got {args.batch_size}"),
        (args.test_samples >= 0, f"--test_samples must be >= 0, got {args.test_samples}"),
        (args.num_workers >= 0, f"--num_workers must be >= 0, got {args.num_workers}"),
        (0 <= args.seed < SEED_RANGE, f"--seed must be in 0..{SEED_RANGE - 1}, got {args.seed}"),
        (args.leak_mem is None or 0 < args.leak_mem <= 1,
         f"--leak_mem must be in (0, 1], got {args.leak_mem}"),
    ]
    require(checks)


# -- loading ---------------------------------------------------------------------------------

def load_networks(args) -> dict:
    """{"snn": Trained, "ann": Trained} for the networks given, checked to be of one image
    dataset."""
    nets = {}
    if args.snn:
        nets["snn"] = load_trained(args.snn, args.dataset, args.leak_mem)
        if not nets["snn"].spiking:
            raise UsageError(f"{nets['snn'].source} is an ANN checkpoint: pass it with --ann")
    if args.ann:
        nets["ann"] = load_trained_ann(args.ann, args.dataset)
    datasets = {key: t.dataset for key, t in nets.items()}
    if len(set(datasets.values())) > 1:
        raise UsageError(f"--snn is a network for {datasets['snn']} and --ann for {datasets['ann']}: "
                         "compare networks of one dataset")
    dataset = next(iter(datasets.values()))
    info = dataset_info(dataset)
    poisson = "snn" not in nets or getattr(nets["snn"].model.encoder, "name", "") == "poisson"
    if not info.poisson_images or not poisson:
        raise UsageError(f"robustness is measured on images coded as Poisson spikes; {dataset} "
                         f"serves {info.kind}")
    return nets


# -- the measurement -------------------------------------------------------------------------

@dataclass
class Tally:
    """Correct predictions and summed cross-entropy of one perturbation setting."""
    correct: int = 0
    loss: float = 0.0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct += int((logits.argmax(-1) == labels).sum())
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        self.loss += float(F.cross_entropy(logits, labels, reduction="sum"))


def measure(key: str, trained: Trained, loader, device, args) -> dict:
    """One pass over the test set: clean, noisy and attacked top-1 of one network."""
    model = trained.model
    info = dataset_info(trained.dataset)
    normalise = normaliser(info.mean, info.std)
    spiking = key == "snn"
    poisson = [eval_generator(args.seed + d, device) for d in range(args.noise_draws)]
    noise = [eval_generator(args.seed + NOISE_SEED_OFFSET + d, device) for d in range(args.noise_draws)]

    def logits_fn(generator):
        return snn_logits_fn(model, normalise, generator) if spiking else ann_logits_fn(model, normalise)

    clean = Tally()
    noisy = [[Tally() for _ in range(args.noise_draws)] for _ in args.sigmas]
    # eps 0 is the clean image: the same tally, without a wasted gradient
    attacked = {name: [clean if eps == 0 else Tally() for eps in args.eps] for name in ("fgsm", "pgd")}
    eot = args.eot if spiking else 1  # the ANN is deterministic: one gradient is exact
    n = 0
    for batch, (images, labels) in enumerate(tqdm(loader, desc=f"{key} robustness", leave=False,
                                                  dynamic_ncols=True)):
        images, labels = images.to(device), labels.to(device)
        pixels = to_pixels(images, info.mean, info.std)
        n += labels.shape[0]
        # Every setting of this batch starts from the same generator states (paired draws);
        # each scoring pass consumes as many draws, so the batches after see the same states
        # whatever the settings.
        starts = [g.get_state() for g in poisson]
        noise_starts = [g.get_state() for g in noise]

        def score(x, tally, draw=0):
            poisson[draw].set_state(starts[draw])
            with torch.no_grad():
                tally.add(logits_fn(poisson[draw])(x), labels)

        score(pixels, clean)
        for i, sigma in enumerate(args.sigmas):
            for d in range(args.noise_draws):
                noise[d].set_state(noise_starts[d])
                score(gaussian_noise(pixels, sigma, noise[d]), noisy[i][d], d)
        for j, eps in enumerate(args.eps):
            if eps == 0:
                continue
            # every attack on a batch starts from the same draws of the attacker
            attacker = eval_generator(args.seed + ATTACK_SEED_OFFSET + batch, device)
            adv = fgsm(logits_fn(attacker), pixels, labels, eps / 255, eot)
            score(adv, attacked["fgsm"][j])
            attacker = eval_generator(args.seed + ATTACK_SEED_OFFSET + batch, device)
            adv = pgd(logits_fn(attacker), pixels, labels, eps / 255, args.pgd_steps,
                      args.pgd_step_size / 255, args.pgd_random_start, attacker, eot)
            score(adv, attacked["pgd"][j])

    def pct(correct):
        return 100.0 * correct / n

    noise_rows = []
    for sigma, draws in zip(args.sigmas, noisy):
        per_draw = [pct(t.correct) for t in draws]
        mean = sum(per_draw) / len(per_draw)
        std = math.sqrt(sum((a - mean) ** 2 for a in per_draw) / len(per_draw))
        noise_rows.append({"sigma": sigma, "top1": mean, "top1_std": std, "top1_per_draw": per_draw,
                           "loss": sum(t.loss for t in draws) / (n * len(draws))})
    result = {"checkpoint": str(trained.source), "arch": trained.arch,
              "num_steps": model.num_steps, "test_images": n,
              "clean_top1": pct(clean.correct), "clean_loss": clean.loss / n, "noise": noise_rows}
    for name, tallies in attacked.items():
        result[name] = [{"eps": eps, "eps_pixels": eps / 255, "top1": pct(t.correct), "loss": t.loss / n}
                        for eps, t in zip(args.eps, tallies)]
    return result


# -- the report ------------------------------------------------------------------------------

def side_by_side(results: dict) -> list:
    """One row per perturbation setting, a top-1 and a loss column per network."""
    first = next(iter(results.values()))
    settings = [("clean", 0.0, lambda r: (r["clean_top1"], r["clean_loss"]))]
    settings += [("noise", row["sigma"], lambda r, i=i: (r["noise"][i]["top1"], r["noise"][i]["loss"]))
                 for i, row in enumerate(first["noise"])]
    settings += [(name, row["eps"], lambda r, name=name, i=i: (r[name][i]["top1"], r[name][i]["loss"]))
                 for name in ("fgsm", "pgd") for i, row in enumerate(first[name])]
    rows = []
    for perturbation, strength, get in settings:
        row = {"perturbation": perturbation, "strength": strength}
        for key, result in results.items():
            row[f"{key}_top1"], row[f"{key}_loss"] = get(result)
        rows.append(row)
    return rows


def build_report(results: dict, dataset: str, args) -> dict:
    return {
        "settings_are_ours": True,
        "note": SETTINGS_NOTE,
        "dataset": dataset,
        "test_images": next(iter(results.values()))["test_images"],
        "units": {"noise": "sigma, on pixels in [0, 1]", "fgsm": "eps, in 1/255",
                  "pgd": "eps, in 1/255"},
        "settings": {"sigmas": args.sigmas, "eps": args.eps, "pgd_steps": args.pgd_steps,
                     "pgd_step_size": args.pgd_step_size, "pgd_random_start": args.pgd_random_start,
                     "eot": args.eot, "noise_draws": args.noise_draws, "seed": args.seed,
                     "batch_size": args.batch_size,
                     "snn_input_gradient": "surrogate BPTT; Poisson coder straight-through, "
                                           "dE[s]/dx = 1/2 for |x| < 2"},
        "networks": results,
        "table": side_by_side(results),
    }


def _strength(row) -> str:
    if row["perturbation"] == "clean":
        return ""
    if row["perturbation"] == "noise":
        return f"sigma={row['strength']:g}"
    return f"eps={row['strength']:g}/255"


def print_report(report: dict) -> None:
    keys = list(report["networks"])
    s = report["settings"]
    print(f"\ntop-1 (%) on {report['test_images']} {report['dataset']} test images")
    print(f"{'perturbation':<13}{'strength':<14}" + "".join(f"{k.upper():>9}" for k in keys))
    for row in report["table"]:
        print(f"{row['perturbation']:<13}{_strength(row):<14}"
              + "".join(f"{row[f'{k}_top1']:>9.2f}" for k in keys))
    start = ", random start" if s["pgd_random_start"] else ""
    print(f"\nnoise: mean of {s['noise_draws']} draws; PGD: {s['pgd_steps']} steps of "
          f"{s['pgd_step_size']:g}/255{start}"
          + (f"; SNN gradients: {s['eot']} Poisson draw(s) each" if "snn" in keys else ""))
    reach = s["pgd_steps"] * s["pgd_step_size"]
    if any(eps > reach for eps in s["eps"]):
        print(f"note: {s['pgd_steps']} PGD steps of {s['pgd_step_size']:g}/255 move at most "
              f"{reach:g}/255 from the clean image; larger eps are not used up (raise --pgd_steps "
              "or --pgd_step_size)")
    print(f"settings are ours: {report['note']}")


def add_outputs(report: dict, out: Report) -> None:
    """The report's files, events and figure, to be written by out.write()."""
    out.json("robustness.json", report)
    out.csv("robustness.csv", report["table"])
    events = out.events
    for key, result in report["networks"].items():
        events.scalar(f"robustness/{key}/clean_top1", result["clean_top1"], 0)
        for i, row in enumerate(result["noise"]):
            events.scalar(f"robustness/{key}/noise_top1", row["top1"], i)
        for name in ("fgsm", "pgd"):
            for i, row in enumerate(result[name]):
                events.scalar(f"robustness/{key}/{name}_top1", row["top1"], i)
    # TensorBoard steps are integers: step i is the i-th sigma / eps listed here.
    events.text("robustness/settings", json.dumps(report["settings"]))
    plot(report, out)


def plot(report: dict, out: Report) -> None:
    plt = out.pyplot()
    if plt is None:
        return

    colours = {"snn": "tab:blue", "ann": "tab:orange"}
    fig, (noise_ax, attack_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for key, result in report["networks"].items():
        label, colour = key.upper(), colours[key]
        noise_ax.errorbar([r["sigma"] for r in result["noise"]], [r["top1"] for r in result["noise"]],
                          yerr=[r["top1_std"] for r in result["noise"]], marker="o", markersize=3,
                          capsize=2, color=colour, label=label)
        for name, style in (("fgsm", "-"), ("pgd", "--")):
            attack_ax.plot([r["eps"] for r in result[name]], [r["top1"] for r in result[name]],
                           marker="o", markersize=3, linestyle=style, color=colour,
                           label=f"{label} {name.upper()}")
    noise_ax.set(xlabel="Gaussian noise sigma (pixels in [0, 1])", ylabel="test top-1 (%)",
                 title="noise")
    attack_ax.set(xlabel="eps (1/255)", ylabel="test top-1 (%)", title="FGSM and PGD")
    for ax in (noise_ax, attack_ax):
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['dataset']}, {report['test_images']} test images (settings are ours)",
                 fontsize=10)
    fig.tight_layout()
    out.figure("robustness.png", fig)


def run(args) -> int:
    check_args(args)
    first = args.snn or args.ann
    out_dir = Path(args.out_dir) if args.out_dir else run_folder_of(first) / "robustness"
    out = Report(out_dir, plots=not args.no_plots)  # checked before the long pass, not after it
    device = pick_device(args.device)
    nets = load_networks(args)
    for key, trained in nets.items():
        trained.model.to(device)
        if key == "snn":
            try:
                trained.model.set_engine(args.engine)
            except RuntimeError as err:
                raise UsageError(f"--engine {args.engine}: {err}") from None
    reference = next(iter(nets.values()))
    loader = test_loader(reference, args.data_dir, args.batch_size, args.test_samples,
                         args.num_workers, pin_memory=device.type == "cuda")
    results = {key: measure(key, trained, loader, device, args) for key, trained in nets.items()}
    report = build_report(results, reference.dataset, args)
    print_report(report)
    add_outputs(report, out)
    out.write()
    return 0
