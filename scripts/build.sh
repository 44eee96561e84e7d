#!/usr/bin/env bash
# Configures (once) and builds a preset: release (default), debug or asan. Further arguments
# go to `cmake --build`, e.g.  ./scripts/build.sh release --target test_datasets
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-release}
case "$preset" in
  release) dir=build ;;
  *) dir=build-$preset ;;
esac
if [[ ! -f $dir/build.ninja ]]; then
  cmake --preset "$preset" >/dev/null
fi
cmake --build "$dir" -j "$(nproc)" "${@:2}"
