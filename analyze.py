"""Analyses of trained checkpoints, one subcommand each; every one prints a table and writes
JSON, CSV, TensorBoard events and a figure (when matplotlib is installed) into --out_dir.

    python analyze.py early-exit --checkpoint runs/<run>   # accuracy after every step, BNTT's
                                                           # gammas, exit rules (= evaluate.py)
    python analyze.py activity --checkpoint runs/<run>     # spike rates per layer and step, energy
                                                           # (of an ANN twin: its MACs)
    python analyze.py robustness --snn runs/<snn run> --ann runs/<ann run>   # noise, FGSM, PGD

A run folder stands for its last.pt. What each analysis counts, and which settings are ours
rather than the paper's, is in docs/spec.md.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from bntt.cli import run_cli

# subcommand: the module that adds its arguments (add_arguments) and runs it (run)
SUBCOMMANDS = {"early-exit": "bntt.analysis.early_exit_report", "activity": "bntt.analysis.activity",
               "robustness": "bntt.analysis.robustness"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.__doc__.splitlines()[0],
                                  description=module.__doc__.split("\n\n")[0])
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def cli(argv=None) -> int:
    return run_cli(main, "analyze.py", argv)


if __name__ == "__main__":
    sys.exit(cli())
