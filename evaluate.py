"""Evaluate a trained BNTT checkpoint for early exit: accuracy after every time step, the
gamma of every BNTT layer at every step, the paper's gamma-threshold exit, and a per-sample
confidence exit, in one pass over the test set.

    python evaluate.py --checkpoint runs/<run>            # its last.pt; or name a .pt file
    python evaluate.py --checkpoint authors_bestmodel.pth.tar --dataset cifar10 --leak_mem 0.95

Works with checkpoints of train.py and of the authors' train.py (whose files do not record
leak_mem or the dataset: pass them). Writes into --out_dir (default: <checkpoint folder>/
early_exit): early_exit.json, accuracy_per_step.csv, gamma.csv, sample_exit.csv, TensorBoard
events, and gamma.png / accuracy.png when matplotlib is installed. `python analyze.py early-exit`
is the same command (bntt/analysis/early_exit_report.py).
"""
from __future__ import annotations

import argparse
import sys

from bntt.analysis import early_exit_report
from bntt.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    early_exit_report.add_arguments(parser)
    return parser


def main(argv=None) -> int:
    return early_exit_report.run(build_parser().parse_args(argv))


def cli(argv=None) -> int:
    return run_cli(main, "evaluate.py", argv)


if __name__ == "__main__":
    sys.exit(cli())
