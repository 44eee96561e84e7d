#!/bin/sh
# Resident memory of one `attnscope classify` run over time (docs/performance.md, "Batch
# classification"): does memory grow with the number of images, or level off?
#   bench/classify_rss_curve.sh [ARCH] [IMAGES] [EVERY_S]   from the repository root, after
#                                                           ./scripts/build.sh release
# An untrained ARCH (default attn_small) at 224 px classifies IMAGES (default 5000) of
# ../shared/data/isic-uda1 (the first 500 repeated through a list file), batch 16, 2 decoding
# workers; every EVERY_S seconds (default 2) one line: seconds, VmRSS in MiB, images done (from
# the plain progress lines, about every 10 %), and at the end the peak (VmHWM).
set -eu
ARCH=${1:-attn_small}
N=${2:-5000}
EVERY=${3:-2}
BIN=build/bin
DATA=../shared/data/isic-uda1/images
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ls "$DATA"/*.jpg | head -500 > "$WORK/500.txt"
: > "$WORK/list.txt"
while [ "$(wc -l < "$WORK/list.txt")" -lt "$N" ]; do cat "$WORK/500.txt" >> "$WORK/list.txt"; done
head -n "$N" "$WORK/list.txt" > "$WORK/n.txt"
"$BIN/bench_classify" checkpoint "$ARCH" 224 "$WORK/model.h5"
"$BIN/attnscope" classify --model "$WORK/model.h5" --input @"$WORK/n.txt" --out "$WORK/out" \
  --batch-size 16 --threads 2 > "$WORK/progress.log" 2>&1 &
pid=$!
# The launcher executes attnscope.real in the same process, so $pid is the classify process.
start=$(date +%s)
echo "seconds,rss_MiB,images_done"
hwm=0
while kill -0 "$pid" 2> /dev/null; do
  rss=$(awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status" 2> /dev/null || true)
  h=$(awk '/^VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status" 2> /dev/null || true)
  [ -n "$h" ] && hwm=$h
  done_n=$(tr '\r' '\n' < "$WORK/progress.log" | sed -n 's|^\([0-9]*\)/[0-9]* images.*|\1|p' | tail -1)
  [ -n "$rss" ] && echo "$(($(date +%s) - start)),$rss,${done_n:-0}"
  sleep "$EVERY"
done
wait "$pid"
echo "peak_MiB,$hwm"
