#!/usr/bin/env bash
# Report generation time and size, and the time headless Chromium takes to load the page, for
# results files of 500 and 5,000 images (224 px synthetic dermoscopy, two maps, TTA spread,
# faithfulness measures). Fixtures are written by tests/python/make_results_fixture.py (h5py).
#
#   bench/report_bench.sh [COUNTS...]      (default: 500 5000; needs build/bin/attnscope, chromium)
#   TOP=100 bench/report_bench.sh 20000    (the report of the first 100 cards only: --top 100)
#
# Prints one line per count: generation wall seconds (median of 3), its peak RSS (MiB, the
# largest of the 3), HTML MiB, the time from
# navigation start until the page's script has built the first page of cards (the page
# records performance.now() in <body data-ready-ms>; read from --dump-dom), the Chromium
# --dump-dom and --screenshot wall seconds (median of 3 each), and Chromium on an empty page for
# comparison (its start-up cost on this machine).
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
((${#counts[@]})) || counts=(500 5000)
exe=${ATTNSCOPE:-build/bin/attnscope}
work=$(mktemp -d /tmp/attnscope-report-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
py=/usr/bin/python3

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
seconds() {  # wall seconds of a command
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || true
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
top=()
[[ -n "${TOP:-}" ]] && top=(--top "$TOP")
report() {  # one report run; its peak RSS (KiB) kept in $work/rss
  /usr/bin/time -f %M -o "$work/rss.one" "$exe" report "$@" "${top[@]}" >/dev/null 2>&1 || true
  cat "$work/rss.one" >>"$work/rss"
}
chrome() {
  /usr/bin/chromium --headless --disable-gpu --no-sandbox --user-data-dir="$work/profile" \
    --hide-scrollbars "$@"
}

"$exe" synth --out "$work/synth" --count 200 --size 224 --placement anywhere --workers 2 >/dev/null
echo "<!DOCTYPE html><title>empty</title>" >"$work/empty.html"
base_dom=$(for _ in 1 2 3; do seconds chrome --dump-dom "file://$work/empty.html"; done | median)
printf 'chromium on an empty page: --dump-dom %.2f s\n' "$base_dom"
printf '%8s %12s %10s %10s %10s %14s %16s\n' images "generate s" "RSS MiB" "HTML MiB" \
  "ready ms" "dump-dom s" "screenshot s"
for n in "${counts[@]}"; do
  "$py" tests/python/make_results_fixture.py "$work/r$n.h5" --n "$n" --size 224 --tta \
    --measures --errors 5 --images-from "$work/synth/images"
  : >"$work/rss"
  gen=$(for _ in 1 2 3; do seconds report --results "$work/r$n.h5" --out "$work/r$n.html"; done | median)
  rss=$(sort -n "$work/rss" | tail -1 | awk '{printf "%.0f", $1 / 1024}')
  mib=$(stat -c %s "$work/r$n.html" | awk '{printf "%.1f", $1 / 1048576}')
  dom=$(for _ in 1 2 3; do seconds chrome --dump-dom "file://$work/r$n.html"; done | median)
  ready=$(for _ in 1 2 3; do
    chrome --dump-dom "file://$work/r$n.html" 2>/dev/null | grep -o 'data-ready-ms="[0-9]*"' |
      tr -dc 0-9
    echo
  done | median)
  shot=$(for _ in 1 2 3; do
    seconds chrome --screenshot="$work/shot.png" --window-size=1280,2000 "file://$work/r$n.html"
  done | median)
  printf '%8s %12.2f %10s %10s %10s %14.2f %16.2f\n' "$n" "$gen" "$rss" "$mib" "$ready" "$dom" "$shot"
done
