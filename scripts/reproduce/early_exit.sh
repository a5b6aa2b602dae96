#!/usr/bin/env bash
# The paper's early-exit rows from trained checkpoints: accuracy after every step, BNTT gamma
# through time, and the gamma-threshold exit (paper: CIFAR-10 VGG9 trained at T=25 exits at
# about 20 steps with 90.3% instead of 90.5%; alpha = 0.1 is the commonly quoted threshold).
#
#   scripts/reproduce/early_exit.sh [RUN_DIR_OR_CHECKPOINT ...] [-- extra evaluate.py flags]
#
# With no argument it evaluates the run folders of the two paper configs, after
#   python train.py --config configs/cifar10_vgg9.toml
#   python train.py --config configs/cifar100_vgg11.toml
# A run folder is evaluated from its last.pt, the model whose accuracy is reported; name
# <run>/best.pt to score the best-on-test checkpoint the authors reported.
# A checkpoint of the authors' train.py needs --leak_mem and --dataset after the "--".
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do runs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
if [ ${#runs[@]} -eq 0 ]; then
  runs=(runs/cifar10_vgg9_T25_lr0.3_ep100_leak0.95_seed0 runs/cifar100_vgg11_T30_lr0.3_ep100_leak0.99_seed0)
fi
for run in "${runs[@]}"; do
  echo "== $run"
  python evaluate.py --checkpoint "$run" --exit_threshold 0.1 --eval_seed 0 "$@"
done
