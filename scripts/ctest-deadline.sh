#!/usr/bin/env bash
# Runs ctest in the current build folder until a deadline (scripts/test-asan.sh, .ci/run).
#   ctest-deadline.sh DEADLINE [CTEST_ARGS...]
# DEADLINE: seconds since 1970, or 0 for none. Tests the deadline stopped (ctest's --stop-time
# ends them as "Timeout") or never started are said in one line and do not fail the run; a
# test that failed otherwise does (exit 1). With under ATTNSCOPE_DEADLINE_MIN_S seconds (default
# 60) left, nothing runs. Tested by Scripts.CtestDeadlineCutsTestsWithoutFailingTheRun.
set -uo pipefail
deadline=${1:?usage: ctest-deadline.sh DEADLINE [CTEST_ARGS...]}
shift
[[ $deadline =~ ^[0-9]+$ ]] || { echo "ctest-deadline.sh: not a time: $deadline" >&2; exit 2; }
args=(--output-on-failure "$@")
total=$(ctest -N "$@" | sed -n 's/^Total Tests: //p')
if ((deadline > 0)); then
  left=$((deadline - $(date +%s)))
  if ((left < ${ATTNSCOPE_DEADLINE_MIN_S:-60})); then
    echo "deadline: no time left for ${total:-0} tests (ctest $*)"
    exit 0
  fi
  # ctest takes a time of day (local time; one that has passed means tomorrow, hence the check).
  args+=(--stop-time "$(date -d "@$deadline" +%H:%M:%S)")
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
ctest "${args[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
((rc == 0)) && exit 0
failed=$(sed -n '/The following tests FAILED:/,$p' "$log" | grep -E '^[[:space:]]+[0-9]+ - ' || true)
if ((deadline > 0)) && (($(date +%s) >= deadline - 5)); then
  ran=$(sed -n 's/.* tests failed out of \([0-9][0-9]*\).*/\1/p' "$log" | tail -1)
  stopped=$(grep -c '(Timeout)$' <<<"$failed")
  failed=$(grep -v '(Timeout)$' <<<"$failed")
  echo "deadline: of ${total:-0} tests, $((${total:-0} - ${ran:-0})) not started and $stopped stopped at the deadline (ctest $*)"
  if [[ -z $failed ]]; then
    exit 0
  fi
fi
echo "FAILED:"
echo "${failed:-ctest exited with $rc}"
exit 1
