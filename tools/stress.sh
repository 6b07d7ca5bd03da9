#!/usr/bin/env bash
# The test command, RUNS times, JOBS at a time, each in a fresh clone of HEAD
# with its own venv and temp folders, the way CI runs it (CI=true). Finds
# flaky tests: every run must pass (docs/testing.md "Stress run").
#
#   bash tools/stress.sh [RUNS] [JOBS]      # default 10 runs, 2 at a time
#
# One line per run (pass/fail, seconds, the pytest summary), the logs kept
# in the printed folder for failed runs; exit 1 if any run failed.
set -uo pipefail
runs=${1:-10}
jobs=${2:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/pc-stress-XXXXXX")
head=$(git -C "$repo" rev-parse --short HEAD)
echo "stress: $runs runs of the test command, $jobs at a time, at $head, in $work"
one() {
  local i=$1 d="$work/run-$1" t0 rc
  mkdir -p "$d"
  [ -d "$repo/../shared" ] && cp -r "$repo/../shared" "$d/shared"
  git clone -q "$repo" "$d/main"
  t0=$(date +%s)
  (cd "$d/main" && CI=true bash .ci/run </dev/null >"$d/log" 2>&1)
  rc=$?
  local summary
  summary=$(grep -E '^[0-9]+ (passed|failed)|[0-9]+ passed.* in ' "$d/log" | head -1)
  if [ $rc = 0 ]; then
    echo "run $i: pass in $(( $(date +%s) - t0 )) s ($summary)"
    rm -rf "$d/main/.venv"
  else
    echo "run $i: FAIL (exit $rc) in $(( $(date +%s) - t0 )) s ($summary); log: $d/log"
    grep -E '^FAILED|^ERROR' "$d/log" | head -5 | sed 's/^/    /'
  fi
  return $rc
}
fail=0
i=0
while [ $i -lt "$runs" ]; do
  pids=()
  for _ in $(seq 1 "$jobs"); do
    [ $i -lt "$runs" ] || break
    i=$((i + 1))
    one $i & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fail=$((fail + 1)); done
done
echo "stress: $((runs - fail)) of $runs runs passed"
[ $fail = 0 ] && rm -rf "$work"
[ $fail = 0 ]
