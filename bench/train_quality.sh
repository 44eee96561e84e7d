#!/usr/bin/env bash
# The image-training quality figures of docs/training-on-isic.md (a benchmark, not a test):
#   synthetic  attn_small at 128 px on 2,000 generated images (80/20 split), BUDGET minutes
#   isic-uda1  ../shared/data/isic-uda1 (555 images, 397 benign / 158 melanoma), grouped
#              stratified 80/20 split, each of MODELS for BUDGET minutes
# Each run writes RUN/metrics.jsonl; the script prints the best validation AUC and when it was
# reached (wall seconds from timing.jsonl).
#
# usage: bench/train_quality.sh [BUILD_DIR] [BUDGET_MINUTES] [OUT_DIR]
# Environment: WHAT ("synthetic isic" by default), MODELS (isic; default "attn_small
#   attn_resnet18 vit_mini_patch8"), THREADS (LibTorch threads, default 0 = all cores),
#   EPOCHS (default 100: the budget stops the run), EXTRA (more train flags).
set -euo pipefail

BUILD=${1:-build}
BUDGET=${2:-5}
OUT=${3:-/tmp/attnscope-train-quality}
WHAT=${WHAT:-"synthetic isic"}
MODELS=${MODELS:-"attn_small attn_resnet18 vit_mini_patch8"}
THREADS=${THREADS:-0}
EPOCHS=${EPOCHS:-100}
EXTRA=${EXTRA:-}
HERE=$(cd "$(dirname "$0")/.." && pwd)
DATA=${DATA:-$HERE/../shared/data}
EXE="$BUILD/bin/attnscope"
[[ -x "$EXE" ]] || { echo "error: $EXE not found (build the attnscope target first)" >&2; exit 1; }
mkdir -p "$OUT"

summary() {  # run folder
  /usr/bin/python3 - "$1" <<'PY'
import json, sys
run = sys.argv[1]
m = [json.loads(l) for l in open(run + "/metrics.jsonl")]
t = [json.loads(l) for l in open(run + "/timing.jsonl")]
best = max(m, key=lambda r: r["val_auc"])
wall = sum(x["wall_s"] for x in t[: best["epoch"]])
ips = sum(x["images_per_s"] for x in t) / len(t)
print(f"{run}: best val AUC {best['val_auc']:.4f} at epoch {best['epoch']} "
      f"({wall:.0f} s of training), {len(m)} epochs, {ips:.1f} train images/s")
PY
}

if [[ " $WHAT " == *" synthetic "* ]]; then
  if [[ ! -f "$OUT/synth/labels.csv" ]]; then
    "$EXE" synth --out "$OUT/synth" --count 2000 --size 128 --seed 1 --workers 2
  fi
  rm -rf "$OUT/synthetic-attn_small"
  "$EXE" --threads "$THREADS" train --data "$OUT/synth/labels.csv" --model attn_small --size 128 \
    --epochs "$EPOCHS" --batch-size 32 --optimizer adamw --lr 1e-3 --weight-decay 0.05 \
    --schedule cosine --warmup-epochs 1 --time-budget "$BUDGET" --cache --progress-every 20 \
    --out "$OUT/synthetic-attn_small" $EXTRA
  summary "$OUT/synthetic-attn_small"
fi

if [[ " $WHAT " == *" isic "* ]]; then
  for model in $MODELS; do
    size=128
    [[ "$model" == attn_resnet18 ]] && size=224
    [[ "$model" == vit_mini_patch8 ]] && size=64
    rm -rf "$OUT/isic-$model"
    "$EXE" --threads "$THREADS" train --data "$DATA/isic-uda1/labels.csv" --model "$model" \
      --size "$size" --val-split 0.2 --epochs "$EPOCHS" --batch-size 32 --optimizer adamw \
      --lr 1e-3 --weight-decay 0.05 --schedule cosine --warmup-epochs 1 --loss weighted-ce \
      --time-budget "$BUDGET" --cache --progress-every 5 --out "$OUT/isic-$model" $EXTRA
    summary "$OUT/isic-$model"
  done
fi
