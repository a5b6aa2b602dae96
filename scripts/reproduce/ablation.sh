#!/usr/bin/env bash
# The normalisation ablation: the same recipe once per normalisation of the spiking layers
# (bntt, the paper's; bn, one BatchNorm shared by all steps; tdbn; the later tebn, tab and mpbn;
# none), then a table of the final and best test top-1 of each run from its metrics.jsonl.
# tdbn, tebn, tab and mpbn train on all steps at once: not with --engine reference.
#
#   scripts/reproduce/ablation.sh NAME [train.py flags ...]
#
# Runs go to runs/ablation/NAME_<norm>; a run that already has a checkpoint is resumed, so an
# interrupted ablation continues where it stopped. Examples:
#   scripts/reproduce/ablation.sh vgg9_T8 --config configs/cifar10_vgg9.toml --num_steps 8
#   scripts/reproduce/ablation.sh seqfmnist --config configs/seqmnist_fc.toml --dataset seqfashionmnist
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?usage: scripts/reproduce/ablation.sh NAME [train.py flags ...]}
shift
NORMS="bntt bn tdbn tebn tab mpbn none"
for norm in $NORMS; do
  run=runs/ablation/${name}_${norm}
  echo "== $run"
  if [ -f "$run/last.pt" ]; then
    python train.py --resume "$run" "$@" --norm "$norm" --out_dir runs/ablation --run_name "${name}_${norm}"
  else
    python train.py "$@" --norm "$norm" --out_dir runs/ablation --run_name "${name}_${norm}"
  fi
done
python - "$name" $NORMS <<'PY'
import json, sys
from pathlib import Path
name, norms = sys.argv[1], sys.argv[2:]
print(f"\n{'norm':<6} {'epochs':>6} {'final top-1':>12} {'best top-1':>11}")
for norm in norms:
    rows = [json.loads(line) for line in
            (Path("runs/ablation") / f"{name}_{norm}" / "metrics.jsonl").read_text().splitlines()]
    tested = [r for r in rows if "test_top1" in r]
    print(f"{norm:<6} {len(rows):>6} {tested[-1]['test_top1']:>12.2f} "
          f"{max(r['test_top1'] for r in tested):>11.2f}")
PY
