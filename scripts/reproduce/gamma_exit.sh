#!/usr/bin/env bash
# Why BNTT's gamma exit fires: VGG9-BNTT on Fashion-MNIST trained twice from the same seed, with
# weight decay on every parameter (the paper's optimiser) and with BNTT's gammas exempt from it
# (--no-gamma_decay), then each evaluated: accuracy after every step, gammas through time, the
# gamma exit and the per-sample exit (evaluate.py), energy along time and at the exit
# (analyze.py activity), and the gammas of every epoch against weight decay alone
# (gamma_training.py). docs/early-exit/README.md explains the choice of settings and reads the
# results.
#
#   scripts/reproduce/gamma_exit.sh            # OUT=runs/gamma-exit SEED=0 THREADS=1
#
# The two trainings run side by side, THREADS threads each (on a 2-core CPU: one each, about
# 75 minutes); an interrupted training is resumed from its last epoch when run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/gamma-exit}
SEED=${SEED:-0}
THREADS=${THREADS:-1}
RECIPE=(--config configs/fashionmnist_vgg9.toml --num_steps 8 --batch_size 16 --lr 0.3
        --weight_decay 5e-4 --amp --train_samples 8000 --test_samples 1000 --num_epochs 8
        --num_workers 0 --test_display_freq 1 --seed "$SEED" --out_dir "$OUT")
suffix=$([ "$SEED" = 0 ] && echo "" || echo "_s$SEED")
decay=vgg9_T8_decay$suffix
exempt=vgg9_T8_nodecay$suffix

train() {  # run name, extra flags
  local name=$1; shift
  local resume=()
  [ -f "$OUT/$name/last.pt" ] && resume=(--resume "$OUT/$name")
  OMP_NUM_THREADS=$THREADS python train.py "${RECIPE[@]}" "$@" --run_name "$name" "${resume[@]}"
}
mkdir -p "$OUT"
train "$decay" >> "$OUT/$decay.log" 2>&1 &
first=$!
train "$exempt" --no-gamma_decay >> "$OUT/$exempt.log" 2>&1 &
second=$!
wait $first || { echo "training $decay failed: see $OUT/$decay.log" >&2; exit 1; }
wait $second || { echo "training $exempt failed: see $OUT/$exempt.log" >&2; exit 1; }

for name in "$decay" "$exempt"; do
  echo "== $name"
  python evaluate.py --checkpoint "$OUT/$name" --batch_size 100 --amp --out_dir "$OUT/$name/early_exit"
  python analyze.py activity --checkpoint "$OUT/$name" --test_samples 1000 --batch_size 100 \
      --out_dir "$OUT/$name/activity"
done
python scripts/reproduce/gamma_training.py "$OUT/$decay" "$OUT/$exempt" --out_dir "$OUT"
