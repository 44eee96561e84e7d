#!/usr/bin/env bash
# Bootstraps, builds (Release) and runs the whole test suite with ctest.
# Extra arguments go to ctest, e.g.  ./scripts/test.sh -L data   or   -R Crf
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
start=$(date +%s)
./scripts/build.sh release
echo "build: $(($(date +%s) - start)) s"
cd build
start=$(date +%s)
ctest --output-on-failure -j "$(nproc)" "$@"
echo "tests: $(($(date +%s) - start)) s"
