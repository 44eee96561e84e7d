#!/usr/bin/env bash
# Builds the `asan` preset (AddressSanitizer + UndefinedBehaviorSanitizer, build-asan/) and runs
# the whole test suite under it. Any sanitizer report fails the run (halt_on_error).
# Suppressions for prebuilt third-party libraries only: tests/sanitizers/*.supp.
#   --parsers   only the executables of the input readers (test_runtime, test_preprocessing,
#               test_datasets: image decoding, CSV/TSV/JSON, the ISIC readers, their fuzz
#               corpora), about a fifth of the build; .ci/run takes it when time is short.
# Other arguments go to ctest, e.g.  ./scripts/test-asan.sh -R CliFault
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
targets=()
ctest_args=()
if [[ ${1:-} == --parsers ]]; then
  shift
  targets=(--target test_runtime test_preprocessing test_datasets)
  # The other executables are not built; each is one failing test named EXE_NOT_BUILT.
  ctest_args=(-E '_NOT_BUILT$')
fi
start=$(date +%s)
./scripts/build.sh asan "${targets[@]}"
echo "asan build: $(($(date +%s) - start)) s"
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=0:allocator_may_return_null=1"
export LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$root/tests/sanitizers/ubsan.supp"
start=$(date +%s)
cd build-asan
# Sanitized code runs 2-5x slower: a longer per-test timeout than the release run.
ctest --output-on-failure -j "$(nproc)" --timeout 1800 "${ctest_args[@]}" "$@"
echo "asan tests: $(($(date +%s) - start)) s"
