#!/usr/bin/env bash
# The normalisation ablation: the same recipe once per normalisation of the spiking layers
# (bntt, the paper's; bn, one BatchNorm shared by all steps; tdbn; the later tebn, tab and mpbn;
# none) and per seed, then a table of the final test top-1 of each norm, mean +- std over the
# seeds, and a figure of the test curves (scripts/reproduce/ablation_table.py).
# tdbn, tebn, tab and mpbn train on all steps at once: not with --engine reference.
#
#   [SEEDS="0 1 2"] [NORMS="bntt tdbn"] scripts/reproduce/ablation.sh NAME [train.py flags ...]
#
# Runs go to runs/ablation/NAME_<norm>_s<seed> (seed 0 alone by default); a run that already has
# a checkpoint is resumed, so an interrupted ablation continues where it stopped. Examples:
#   SEEDS="0 1 2" scripts/reproduce/ablation.sh vgg9_T8 --config configs/cifar10_vgg9.toml --num_steps 8
#   scripts/reproduce/ablation.sh seqfmnist --config configs/seqmnist_fc.toml --dataset seqfashionmnist
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?usage: [SEEDS=\"0 1 2\"] scripts/reproduce/ablation.sh NAME [train.py flags ...]}
shift
SEEDS=${SEEDS:-0}
NORMS=${NORMS:-"bntt bn tdbn tebn tab mpbn none"}
for seed in $SEEDS; do  # every norm of a seed before the next seed: early rows are complete
  for norm in $NORMS; do
    run_name=${name}_${norm}_s${seed}
    echo "== runs/ablation/$run_name"
    if [ -f "runs/ablation/$run_name/last.pt" ]; then
      python train.py --resume "runs/ablation/$run_name" "$@" --norm "$norm" --seed "$seed" \
        --out_dir runs/ablation --run_name "$run_name"
    else
      python train.py "$@" --norm "$norm" --seed "$seed" --out_dir runs/ablation --run_name "$run_name"
    fi
  done
done
python scripts/reproduce/ablation_table.py runs/ablation "$name" --norms $NORMS --seeds $SEEDS
