#!/bin/sh
# attnscope classify throughput and memory (docs/performance.md, "Batch classification").
#   bench/classify_bench.sh [RUNS]      from the repository root, after ./scripts/build.sh release
# For attn_small and attn_resnet18 (untrained, 224 px) on ../shared/data/isic-uda1:
#   forward-only images/s (bench_classify forward), the model stage with classify's default
#   maps (bench_classify gradcam: forward + Grad-CAM) and end-to-end `attnscope classify`
#   images/s at the same batch size (median of RUNS; also the time of a 16-image run, start-up
#   included, and the steady-state rate 484 / (T(500) - T(16))), peak RSS after 500 and 5,000 images (the folder
#   repeated through a list file), and the --faithfulness cost per image.
# MODEL_THREADS=N gives the model N LibTorch threads on both sides (attnscope's global --threads,
# bench_classify's ATTNSCOPE_THREADS; default: every core) and WORKERS=M classify's decoding
# workers (default 2): MODEL_THREADS=1 WORKERS=1 on 2 cores leaves one core to the rest of the
# pipeline, the case where decoding and writing can hide behind inference.
set -eu
RUNS=${1:-3}
ARCHS=${ARCHS:-attn_small attn_resnet18}
BIG=${BIG:-5000}   # images of the second peak-RSS run
FA=${FA:-10}       # images of the --faithfulness cost run
BIN=build/bin
DATA=../shared/data/isic-uda1/images
BATCH=16
MODEL_THREADS=${MODEL_THREADS:-0}
WORKERS=${WORKERS:-2}
export ATTNSCOPE_THREADS=$MODEL_THREADS
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ls "$DATA"/*.jpg | head -500 > "$WORK/500.txt"
head -16 "$WORK/500.txt" > "$WORK/16.txt"
: > "$WORK/big.txt"
while [ "$(wc -l < "$WORK/big.txt")" -lt "$BIG" ]; do cat "$WORK/500.txt" >> "$WORK/big.txt"; done
head -n "$BIG" "$WORK/big.txt" > "$WORK/big2.txt"; mv "$WORK/big2.txt" "$WORK/big.txt"
echo "arch,batch,forward_images_s,forward_gradcam_images_s,classify_images_s,ratio,classify_16_s,classify_steady_images_s,rss500_MiB,rss${BIG}_MiB,faithfulness_s_per_image"
for arch in $ARCHS; do
  "$BIN/bench_classify" checkpoint $arch 224 "$WORK/$arch.h5"
  fwd=""; cam=""; cls=""; st=""; one=""
  r=0; while [ $r -lt "$RUNS" ]; do
    fwd="$fwd $("$BIN/bench_classify" forward "$WORK/$arch.h5" $BATCH 256)"
    cam="$cam $("$BIN/bench_classify" gradcam "$WORK/$arch.h5" $BATCH 256)"
    rm -rf "$WORK/out"
    t0=$(date +%s.%N)
    "$BIN/attnscope" --threads $MODEL_THREADS classify --model "$WORK/$arch.h5" --input @"$WORK/500.txt" --out "$WORK/out" \
      --batch-size $BATCH --threads $WORKERS > /dev/null 2>&1
    t1=$(date +%s.%N)
    cls="$cls $(echo "$t0 $t1" | awk '{printf "%.2f", 500 / ($2 - $1)}')"
    # One batch alone: start-up and the first batch; steady state = 484 / (T(500) - T(16)).
    rm -rf "$WORK/out"
    t2=$(date +%s.%N)
    "$BIN/attnscope" --threads $MODEL_THREADS classify --model "$WORK/$arch.h5" --input @"$WORK/16.txt" --out "$WORK/out" \
      --batch-size $BATCH --threads $WORKERS > /dev/null 2>&1
    t3=$(date +%s.%N)
    st="$st $(echo "$t0 $t1 $t2 $t3" | awk '{printf "%.2f", 484 / (($2 - $1) - ($4 - $3))}')"
    one="$one $(echo "$t2 $t3" | awk '{printf "%.2f", $2 - $1}')"
    r=$((r+1))
  done
  f=$(echo $fwd | tr ' ' '\n' | median); c=$(echo $cls | tr ' ' '\n' | median)
  g=$(echo $cam | tr ' ' '\n' | median); s=$(echo $st | tr ' ' '\n' | median)
  o=$(echo $one | tr ' ' '\n' | median)
  rss() {
    rm -rf "$WORK/out"
    /usr/bin/time -f %M "$BIN/attnscope" --threads $MODEL_THREADS classify --model "$WORK/$arch.h5" --input @"$1" \
      --out "$WORK/out" --batch-size $BATCH --threads $WORKERS 2>&1 >/dev/null | tail -1 |
      awk '{printf "%.0f", $1 / 1024}'
  }
  r500=$(rss "$WORK/500.txt"); r5000=$(rss "$WORK/big.txt")
  head -n "$FA" "$WORK/500.txt" > "$WORK/50.txt"
  rm -rf "$WORK/out"
  t0=$(date +%s.%N)
  "$BIN/attnscope" --threads $MODEL_THREADS classify --model "$WORK/$arch.h5" --input @"$WORK/50.txt" --out "$WORK/out" \
    --batch-size $BATCH --threads $WORKERS > /dev/null 2>&1
  t1=$(date +%s.%N)
  rm -rf "$WORK/out"
  "$BIN/attnscope" --threads $MODEL_THREADS classify --model "$WORK/$arch.h5" --input @"$WORK/50.txt" --out "$WORK/out" \
    --batch-size $BATCH --threads $WORKERS --faithfulness > /dev/null 2>&1
  t2=$(date +%s.%N)
  fa=$(echo "$t0 $t1 $t2" | awk -v n="$FA" '{printf "%.2f", (($3 - $2) - ($2 - $1)) / n}')
  echo "$arch,$BATCH,$f,$g,$c,$(echo "$c $f" | awk '{printf "%.2f", $1 / $2}'),$o,$s,$r500,$r5000,$fa"
done
