#!/usr/bin/env bash
# Runs ctest in the current build folder until a deadline (scripts/test-asan.sh, .ci/run).
#   ctest-deadline.sh DEADLINE [CTEST_ARGS...]
# DEADLINE: seconds since 1970, or 0 for none. Tests the deadline stopped (ctest's --stop-time
# ends them as "Timeout") or never started are said in one line and do not fail the run; a
# test that failed otherwise does (exit 1), a Timeout seen before the deadline (the test's own
# --timeout) included. ctest runs under `timeout` a little past the deadline, in case it does
# not stop (a hanging test listing), and in UTC (ctest takes the stop time as a time of day in
# the local zone, and works out the zone's offset in whole hours). With under
# ATTNSCOPE_DEADLINE_MIN_S seconds (default 60) left, nothing runs.
# Tested by Scripts.CtestDeadlineCutsTestsWithoutFailingTheRun.
set -uo pipefail
deadline=${1:?usage: ctest-deadline.sh DEADLINE [CTEST_ARGS...]}
shift
[[ $deadline =~ ^[0-9]+$ ]] || { echo "ctest-deadline.sh: not a time: $deadline" >&2; exit 2; }
export TZ=UTC0
args=(--output-on-failure "$@")
bound=()
if ((deadline > 0)); then
  left=$((deadline - $(date +%s)))
  if ((left < ${ATTNSCOPE_DEADLINE_MIN_S:-60})); then
    echo "deadline: no time left for these tests (ctest $*)"
    exit 0
  fi
  bound=(timeout -k 30 $((left + 120)))
  # A time that has passed would mean tomorrow's: the check above keeps it ahead. (ctest lists
  # the tests before it stops any: a listing that ends after the deadline leaves the bound.)
  args+=(--stop-time "$(date -u -d "@$deadline" +%H:%M:%S)")
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Each line goes to the log with the second it came.
"${bound[@]}" ctest "${args[@]}" 2>&1 | while IFS= read -r line || [[ -n $line ]]; do
  printf '%s\n' "$line"
  printf '%(%s)T %s\n' -1 "$line" >>"$log"
done
rc=${PIPESTATUS[0]}
((rc == 0)) && exit 0

# One line per finished test: "TIME  3/6 Test  #3: NAME ....***Failed  0.01 sec".
cutoff=$((deadline > 0 ? deadline - 5 : 1 << 62))
failed=() ran=0 stopped=0 total=
while IFS= read -r line; do
  [[ $line =~ ^([0-9]+)\ +[0-9]+/([0-9]+)\ Test\ +#[0-9]+:\ ([^ ]+)\ [^*]*(\*\*\*([A-Za-z]+))? ]] ||
    continue
  ran=$((ran + 1))
  when=${BASH_REMATCH[1]} total=${BASH_REMATCH[2]} name=${BASH_REMATCH[3]}
  result=${BASH_REMATCH[5]}
  [[ $line == *'***Not Run (Disabled)'* ]] && result=Disabled
  case "$result" in
    '' | Skipped | Disabled) ;;
    Timeout)
      if ((when >= cutoff)); then
        stopped=$((stopped + 1))
      else
        failed+=("$name (Timeout before the deadline)")
      fi ;;
    *) failed+=("$name ($result)") ;;
  esac
done <"$log"
if ((deadline > 0)) && (($(date +%s) >= cutoff)); then
  if [[ -n $total ]]; then
    what="of $total tests, $((total - ran)) not started and $stopped stopped at the deadline"
  else
    what="no test finished: the others not started"
  fi
  if ((rc == 124 || rc == 137)); then what+="; ctest did not stop and was ended"; fi
  echo "deadline: $what (ctest $*)"
  ((${#failed[@]} == 0)) && exit 0
fi
echo "FAILED:"
if ((${#failed[@]})); then printf '  %s\n' "${failed[@]}"; else echo "  ctest exited with $rc"; fi
exit 1
