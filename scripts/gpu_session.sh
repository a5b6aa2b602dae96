#!/usr/bin/env bash
# The GPU measurements that issue 3 asks for, cut into calls that each end inside the device
# tool's 10-minute limit. Results go to $OUT (the device tool's folder; ./gpu_out elsewhere).
#
#   bash scripts/gpu_session.sh kernels     # fused-kernel check, benchmark bf16 + fp32, profile
#   bash scripts/gpu_session.sh reference   # Fashion-MNIST VGG9 T=25, reference engine, fp32
#   bash scripts/gpu_session.sh bf16        # the same, fused engine under bf16 autocast
#   bash scripts/gpu_session.sh fp32        # the same, fused engine in fp32 (seed-to-seed spread)
#   bash scripts/gpu_session.sh accuracy    # reference, bf16 and fp32 side by side on one GPU,
#                                           # stopped after BUDGET s (default 500), then summarized
#
# The Fashion-MNIST phases read data/fashion-mnist (copy /usr/share/datasets/fashion-mnist
# there and carry `data`). EPOCHS (default 6) and SEEDS (default: 0 for reference, "0 1 2" for
# bf16, "1 2" for fp32) change the runs; size EPOCHS from the kernels phase's reference
# numbers so that EPOCHS * (60000 / train img/s + 10000 / eval img/s) stays under ~500 s.
# EXTRA adds train.py flags to every run (EXTRA="--train_samples 256 --num_steps 2" is a
# dry run of the whole pipeline on a CPU).
# Run folders live in runs/parity, which stays on a warm machine between calls: a phase that
# is called again resumes its unfinished runs.
set -euo pipefail
phase=${1:?usage: bash scripts/gpu_session.sh kernels|reference|bf16|fp32|accuracy}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 BNTT_OFFLINE=1
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

ALL_RUNS="reference:fp32:0 fused:bf16:0 fused:bf16:1 fused:bf16:2 fused:fp32:1 fused:fp32:2"

parity() {  # engine precision seeds...
    local engine=$1 precision=$2 runs=()
    shift 2
    for seed in "$@"; do runs+=(--run "$engine:$precision:$seed"); done
    python3 scripts/accuracy_parity.py --config configs/fashionmnist_vgg9.toml \
        --num_epochs "${EPOCHS:-6}" "${runs[@]}" --out_dir runs/parity \
        --json "$OUT/parity_${engine}_${precision}.json" -- --data_dir data \
        --num_workers "${WORKERS:-6}" \
        ${EXTRA:-} 2>&1 | tee "$OUT/parity_${engine}_${precision}.log"
}

case "$phase" in
kernels)
    # each step runs even if one before it failed: one call should bring back all it can
    for step in "scripts/check_fused.py --json $OUT/check.json" \
                "scripts/benchmark.py --json $OUT/bench_fp32.json" \
                "scripts/benchmark.py --amp --json $OUT/bench_amp.json" \
                "scripts/profile_step.py --trace $OUT/vgg9_trace.json"; do
        echo "== python3 $step"
        python3 $step || echo "FAILED: python3 $step"
    done 2>&1 | tee "$OUT/kernels.log"
    if grep -q "^FAILED" "$OUT/kernels.log"; then exit 1; fi
    ;;
reference) parity reference fp32 ${SEEDS:-0} ;;
bf16) parity fused bf16 ${SEEDS:-0 1 2} ;;
fp32) parity fused fp32 ${SEEDS:-1 2} ;;
accuracy)
    # The three groups share the GPU, so their img/s are not speeds to report; what counts is
    # the accuracy. A run still going after BUDGET s is stopped (timeout signals the whole
    # process group) and reported with the epochs it finished. Each group logs to $OUT.
    export WORKERS=${WORKERS:-4}
    for group in reference bf16 fp32; do
        timeout "${BUDGET:-500}" bash "$0" "$group" >/dev/null 2>&1 &
    done
    wait
    runs=(); for r in $ALL_RUNS; do runs+=(--run "$r"); done
    python3 scripts/accuracy_parity.py --report "${runs[@]}" --out_dir runs/parity \
        --json "$OUT/parity_all.json"
    ;;
*) echo "unknown phase $phase: choose kernels, reference, bf16, fp32 or accuracy" >&2; exit 2 ;;
esac
