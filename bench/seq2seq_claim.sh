#!/usr/bin/env bash
# The seed's claim, measured: a fixed-length context vector forgets long sequences, attention
# does not. Trains gru (fixed context), gru-additive, gru-dot, gru-crf and transformer on the
# `reverse` task with the same time budget, then reports exact match by source length.
#
# usage: bench/seq2seq_claim.sh [BUILD_DIR] [BUDGET_SECONDS] [OUT_DIR]
#   BUILD_DIR       where bin/attnscope is (default: build)
#   BUDGET_SECONDS  training time per model (default: 180; CLOCK=cpu counts CPU seconds)
#   OUT_DIR         checkpoints and the table (default: /tmp/attnscope-seq2seq-claim)
# Environment: MODELS (default "gru gru-additive gru-dot gru-crf transformer"),
#   LENGTHS (default "10 20 40 80"), THREADS (LibTorch threads per run, default 1),
#   PARALLEL (trainings at a time, default 1; with THREADS=1 each training also gets
#   OPENBLAS_NUM_THREADS=1, i.e. one core), CLOCK (wall | cpu, default cpu),
#   TRANSFORMER_FLAGS (default "--dropout 0 --lr 0.004", the tuning of docs/seq2seq.md),
#   TRAIN_FLAGS (every model, default "--decay linear"),
#   TRAIN_MIN/TRAIN_MAX (training source lengths, default 5..80), COUNT (pairs per length, 200),
#   SIZES (model size flags, default: embedding 32, hidden 64, transformer width 64, ff 128).
set -euo pipefail

BUILD=${1:-build}
BUDGET=${2:-180}
OUT=${3:-/tmp/attnscope-seq2seq-claim}
MODELS=${MODELS:-"gru gru-additive gru-dot gru-crf transformer"}
LENGTHS=${LENGTHS:-"10 20 40 80"}
THREADS=${THREADS:-1}
PARALLEL=${PARALLEL:-1}
SIZES=${SIZES:-"--embedding-dim 32 --hidden-dim 64 --model-dim 64 --heads 4 --ff-dim 128"}
TRAIN_MIN=${TRAIN_MIN:-5}
TRAIN_MAX=${TRAIN_MAX:-80}
COUNT=${COUNT:-200}
CLOCK=${CLOCK:-cpu}
TRANSFORMER_FLAGS=${TRANSFORMER_FLAGS:-"--dropout 0 --lr 0.004"}
TRAIN_FLAGS=${TRAIN_FLAGS:-"--decay linear"}
if [[ "$THREADS" == 1 ]]; then export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}; fi
EXE="$BUILD/bin/attnscope"
[[ -x "$EXE" ]] || { echo "error: $EXE not found (build the attnscope target first)" >&2; exit 1; }
mkdir -p "$OUT"

running=0
for model in $MODELS; do
  extra=""
  if [[ "$model" == transformer ]]; then extra=$TRANSFORMER_FLAGS; fi
  "$EXE" --threads "$THREADS" seq2seq train --task reverse --model "$model" \
    --min-length "$TRAIN_MIN" --max-length "$TRAIN_MAX" --count 50000 --epochs 1000 \
    --time-budget "$BUDGET" --budget-clock "$CLOCK" $SIZES $TRAIN_FLAGS $extra --valid-size 0 --quiet --seed 1 \
    --out "$OUT/$model" >"$OUT/$model.train.log" 2>&1 &
  running=$((running + 1))
  if (( running % PARALLEL == 0 )); then wait; fi
done
wait

{
  printf '| model |'
  for n in $LENGTHS; do printf ' length %s |' "$n"; done
  printf ' training steps |\n| --- |'
  for n in $LENGTHS; do printf ' ---: |'; done
  printf ' ---: |\n'
  for model in $MODELS; do
    printf '| `%s` |' "$model"
    for n in $LENGTHS; do
      json=$("$EXE" --threads "$THREADS" seq2seq evaluate --model "$OUT/$model/model.h5" \
        --task reverse --min-length "$n" --max-length "$n" --count "$COUNT" --seed 777 --json)
      python3 -c 'import json,sys; print(" %.1f%% |" % (100 * json.loads(sys.argv[1])["exact_match"]), end="")' "$json"
    done
    steps=$(sed -n 's/.*(\([0-9]*\) steps.*/\1/p' "$OUT/$model.train.log" | tail -1)
    printf ' %s |\n' "$steps"
  done
} | tee "$OUT/table.md"
echo "budget ${BUDGET}s ($CLOCK clock) per model, trained on reverse lengths ${TRAIN_MIN}-${TRAIN_MAX}, ${THREADS} thread(s); table in $OUT/table.md"
