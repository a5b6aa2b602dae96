"""The seeded pass over a test set that early exit and the activity analysis score with: the
network in eval mode, its Poisson input drawn from seeding.eval_generator(eval_seed) as
train.py's test pass draws it, and the logits after every prefix of steps."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from bntt import early_exit
from bntt.analysis.report import Report
from bntt.checkpoint import checkpoint_file
from bntt.cli import UsageError, autocast, pick_device
from bntt.seeding import eval_generator
from bntt.trained import Trained, load_trained


def open_checkpoint(args, name: str) -> tuple:
    """What an analysis of one checkpoint starts from: (the checkpoint file, its Report in
    --out_dir or <run folder>/<name>, the device, the trained network). The output folder is
    checked first, so that a bad one stops the command before the long pass, not after it."""
    source = checkpoint_file(args.checkpoint)
    out = Report(Path(args.out_dir) if args.out_dir else source.parent / name,
                 plots=not args.no_plots)
    device = pick_device(args.device)
    trained: Trained = load_trained(source, args.dataset, args.leak_mem)
    return source, out, device, trained


def prefix_logits_pass(model, loader, device, eval_seed: int = 0, amp: bool = False,
                       desc: str = "scoring",
                       readout: Callable[[torch.Tensor], torch.Tensor] | None = None
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For every batch of `loader`: (logits after each prefix of steps [T, B, classes], labels
    [B]), on `device`, without gradients, under bf16 autocast if `amp`. `readout` maps the
    encoded input [T, B, ...] to the readout currents [T, B, classes]; model.readout_currents
    unless given (the activity analysis counts as it runs). UsageError if the loader is empty.

        scores = early_exit.PrefixScores(model.num_steps)
        for logits, labels in prefix_logits_pass(model, loader, torch.device("cpu"), eval_seed=0):
            scores.add(logits, labels)
    """
    model.eval()
    generator = eval_generator(eval_seed, device)
    readout = readout or model.readout_currents
    images = 0
    for inputs, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        inputs, labels = inputs.to(device), labels.to(device)
        with torch.no_grad(), autocast(device, amp):
            logits = early_exit.prefix_logits(readout(model.encode(inputs, generator)))
        images += labels.shape[0]
        yield logits, labels
    if not images:
        raise UsageError("the test set is empty")
