#!/usr/bin/env bash
# Downloads the official ISIC challenge archives (and HAM10000, which is ISIC 2018 Task 3's
# training set) into DIR/<dataset>/, unpacks them and checks them: every zip passes `unzip -t`,
# each ground-truth CSV has the documented number of rows, every listed image is present, and
# a SHA-256 manifest (DIR/<dataset>/SHA256SUMS) is written on the first download and verified
# on every later run, so a changed or truncated archive is noticed. Not run in CI (tens of GB).
#
# usage: scripts/fetch-isic.sh DIR [2016 2017 2018 ham10000 2019 2020 ...]   (default: 2016)
# Needs curl, unzip, sha256sum. The archives are published by the ISIC Archive
# (https://challenge.isic-archive.com/data/) under CC0 or CC-BY-NC 4.0 depending on
# the year: read the licence of each before use.
set -euo pipefail

BASE=https://isic-challenge-data.s3.amazonaws.com
DIR=${1:?usage: scripts/fetch-isic.sh DIR [dataset ...]}
shift
SETS=${*:-2016}

fetch() {  # dest url
  if [[ -s "$1" ]]; then return; fi
  echo "downloading $2" >&2
  curl --fail --location --retry 3 --continue-at - --output "$1.part" "$2"
  mv "$1.part" "$1"
}

check_zip() {  # zip
  unzip -tq "$1" >/dev/null || { echo "error: $1 is damaged (unzip -t failed)" >&2; exit 1; }
}

check_rows() {  # csv expected-data-rows [header-lines]
  local rows
  rows=$(($(grep -c . "$1") - ${3:-1}))
  if [[ "$rows" != "$2" ]]; then
    echo "error: $1 has $rows rows, expected $2" >&2
    exit 1
  fi
}

manifest() {  # folder
  (
    cd "$1"
    if [[ -f SHA256SUMS ]]; then
      sha256sum --quiet --check SHA256SUMS || { echo "error: $1 differs from its SHA256SUMS" >&2; exit 1; }
    else
      sha256sum -- *.zip *.csv > SHA256SUMS
    fi
  )
}

for set in $SETS; do
  out="$DIR/$set"
  mkdir -p "$out"
  case "$set" in
    2016)
      fetch "$out/train.zip" "$BASE/2016/ISBI2016_ISIC_Part3_Training_Data.zip"
      fetch "$out/train.csv" "$BASE/2016/ISBI2016_ISIC_Part3_Training_GroundTruth.csv"
      fetch "$out/test.zip" "$BASE/2016/ISBI2016_ISIC_Part3_Test_Data.zip"
      fetch "$out/test.csv" "$BASE/2016/ISBI2016_ISIC_Part3_Test_GroundTruth.csv"
      check_rows "$out/train.csv" 900 0
      check_rows "$out/test.csv" 379 0
      ;;
    2017)
      fetch "$out/train.zip" "$BASE/2017/ISIC-2017_Training_Data.zip"
      fetch "$out/train.csv" "$BASE/2017/ISIC-2017_Training_Part3_GroundTruth.csv"
      fetch "$out/val.zip" "$BASE/2017/ISIC-2017_Validation_Data.zip"
      fetch "$out/val.csv" "$BASE/2017/ISIC-2017_Validation_Part3_GroundTruth.csv"
      fetch "$out/test.zip" "$BASE/2017/ISIC-2017_Test_v2_Data.zip"
      fetch "$out/test.csv" "$BASE/2017/ISIC-2017_Test_v2_Part3_GroundTruth.csv"
      check_rows "$out/train.csv" 2000
      check_rows "$out/val.csv" 150
      check_rows "$out/test.csv" 600
      ;;
    2018 | ham10000)
      fetch "$out/train.zip" "$BASE/2018/ISIC2018_Task3_Training_Input.zip"
      fetch "$out/train_gt.zip" "$BASE/2018/ISIC2018_Task3_Training_GroundTruth.zip"
      fetch "$out/lesion_groupings.csv" "$BASE/2018/ISIC2018_Task3_Training_LesionGroupings.csv"
      check_rows "$out/lesion_groupings.csv" 10015
      ;;
    2019)
      fetch "$out/train.zip" "$BASE/2019/ISIC_2019_Training_Input.zip"
      fetch "$out/train.csv" "$BASE/2019/ISIC_2019_Training_GroundTruth.csv"
      fetch "$out/metadata.csv" "$BASE/2019/ISIC_2019_Training_Metadata.csv"
      check_rows "$out/train.csv" 25331
      ;;
    2020)
      fetch "$out/train.zip" "$BASE/2020/ISIC_2020_Training_JPEG.zip"
      fetch "$out/train.csv" "$BASE/2020/ISIC_2020_Training_GroundTruth_v2.csv"
      check_rows "$out/train.csv" 33126
      ;;
    *)
      echo "error: unknown dataset '$set' (2016 2017 2018 ham10000 2019 2020)" >&2
      exit 2
      ;;
  esac
  for zip in "$out"/*.zip; do
    check_zip "$zip"
    name=$(basename "$zip" .zip)
    if [[ ! -d "$out/$name" ]]; then
      unzip -q "$zip" -d "$out/$name.part"
      mv "$out/$name.part" "$out/$name"
    fi
  done
  manifest "$out"
  echo "ok: $out" >&2
done
