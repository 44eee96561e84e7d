#!/usr/bin/env bash
# Builds the `asan` preset (AddressSanitizer + UndefinedBehaviorSanitizer, build-asan/) and runs
# the test suite under it. Any sanitizer report fails the run (halt_on_error).
# Suppressions for prebuilt third-party libraries only: tests/sanitizers/*.supp.
# Two phases: first the executables of the input readers (test_runtime, test_preprocessing,
# test_datasets: image decoding, CSV/TSV/JSON, the ISIC readers, their fuzz corpora; the ctest
# label `parsers`, about a fifth of the build), then the rest of the build and its tests.
#   --parsers          the first phase only.
#   --deadline EPOCH   stop building and testing at this time (seconds since 1970; .ci/run
#                      gives CI's limit less a margin). What the deadline cut short (a build,
#                      tests stopped by ctest's --stop-time, tests never started) is said in
#                      lines starting "deadline:" and does not fail the run; a test that
#                      failed before it does (scripts/ctest-deadline.sh).
# Other arguments go to ctest, e.g.  ./scripts/test-asan.sh -R CliFault
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
parsers_only=0
deadline=
while (($#)); do
  case "$1" in
    --parsers) parsers_only=1 ;;
    --deadline)
      deadline=${2:?--deadline needs a time in seconds since 1970}
      [[ $deadline =~ ^[0-9]+$ ]] || { echo "--deadline: not a number: $deadline" >&2; exit 2; }
      shift ;;
    *) break ;;
  esac
  shift
done
ctest_extra=("$@")
status=0
cut=()

# build WHAT [TARGET...]: builds under the deadline; fails (1) when the deadline stopped it.
build() {
  local what=$1 start rc
  shift
  start=$(date +%s)
  if [[ ! -f build-asan/build.ninja ]]; then
    cmake --preset asan >/dev/null
  fi
  # Under a deadline ninja runs under timeout, which ninja answers by stopping its compilers.
  local bounded=()
  if [[ -n $deadline ]]; then
    local left_s=$((deadline - $(date +%s)))
    if ((left_s < 60)); then
      cut+=("the $what build (no time left)")
      return 1
    fi
    bounded=(timeout -k 30 "$left_s")
  fi
  set +e
  "${bounded[@]}" ninja -C build-asan -j "$(nproc)" "$@"
  rc=$?
  set -e
  echo "asan build ($what): $(($(date +%s) - start)) s"
  if ((rc == 124 || rc == 137)) && [[ -n $deadline ]]; then
    cut+=("the $what build (stopped at the deadline)")
    return 1
  fi
  ((rc == 0)) || exit "$rc"
}

# run_tests CTEST_ARGS...: ctest under the deadline (scripts/ctest-deadline.sh); a test that
# failed before it sets status=1.
run_tests() {
  local start
  start=$(date +%s)
  # Without a filter of the user's, finding no tests is an error (a label lost).
  local none=()
  ((${#ctest_extra[@]})) || none=(--no-tests=error)
  (cd build-asan && "$root/scripts/ctest-deadline.sh" "${deadline:-0}" -j "$(nproc)" \
    --timeout 1800 "${none[@]}" "$@" "${ctest_extra[@]}") || status=1
  echo "asan tests ($*): $(($(date +%s) - start)) s"
}

export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=0:allocator_may_return_null=1"
export LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$root/tests/sanitizers/ubsan.supp"
# Sanitized code runs 2-5x slower: a longer per-test timeout (1800 s) than the release run.
if build "input readers'" test_runtime test_preprocessing test_datasets; then
  run_tests -L '^parsers$'
  if ((parsers_only == 0)) && build "whole"; then
    run_tests -LE '^parsers$'
  fi
fi
if ((${#cut[@]})); then
  printf 'deadline: %s\n' "${cut[@]}"
fi
if ((status != 0)); then
  echo "asan: FAILED (the tests listed above)"
fi
exit "$status"
