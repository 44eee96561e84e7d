#!/usr/bin/env bash
# Bootstraps, builds (Release) and runs attnscope's main job.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
./scripts/build.sh release
if ./build/bin/attnscope --help | grep -q '^  demo '; then
  ./build/bin/attnscope demo "$@"
else
  ./build/bin/attnscope info
fi
