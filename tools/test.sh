#!/usr/bin/env bash
# The one test command: sets up (tools/setup.sh), then runs two lanes side
# by side, each in its own process group, and shows each lane's whole
# output when it ends:
#   pytest      every CPython suite, on pytest-xdist workers; the tests
#               marked `slow` (chaos, demo, TCP fuzz, power-cut sweep: tens
#               of seconds each) start first, one per worker
#               (tests/conftest.py); the slowest tests are listed
#   firmware    one after the other: the fixed mutant set
#               (tools/mutants/fixed.py), the firmware/protocol suites under
#               the real `micropython`, the same from mpy-cross bytecode under
#               a heap cap, then inside qemu on an emulated Cortex-M3 from
#               frozen bytecode (tools/board_test.py, docs/board.md)
# The tests share nothing between processes: unique temp folders, loopback
# port 0 (or a checked free port for Mosquitto), no fixed paths. Any lane
# failing fails the command; its output is printed either way, and the
# closing lines say which lane failed and how long each took.
#
#   bash tools/test.sh                  everything (what CI runs)
#   bash tools/test.sh tests/test_x.py  the pytest lane on these arguments
#   PC_TEST_JOBS=N                      pytest-xdist workers (default 2: with
#                                       the firmware lane that is 3 busy
#                                       processes on 2 cores; timing-bound
#                                       tests failed at 3 under heavy outside
#                                       load, docs/testing.md)
#   python -m pytest -m "not slow"      a quick local run without the slow tests
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || exit 1
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"

jobs=${PC_TEST_JOBS:-2}
logs=$(mktemp -d "${TMPDIR:-/tmp}/pc-test-XXXXXX")
pids=()
names=()
cleanup() {
  # End only the lanes this script started (each is its own process group).
  for p in "${pids[@]}"; do kill -- -"$p" 2>/dev/null; done
  rm -rf "$logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

lane() {  # lane NAME COMMAND...: run in the background, output to a log
  local name=$1; shift
  local i=${#names[@]}
  names+=("$name")
  set -m
  ( start=$SECONDS
    "$@" >"$logs/$i.log" 2>&1
    rc=$?
    echo "$rc $((SECONDS - start))" >"$logs/$i.rc" ) &
  pids+=($!)
  set +m
}

py=(python -m pytest -q -p no:cacheprovider -n "$jobs" --dist load --maxschedchunk 1 --durations=20)
lane "pytest (CPython, $jobs workers)" "${py[@]}" "$@"
firmware() {  # every step runs; the lane fails if any did
  local rc=0
  echo "-- fixed mutants (tools/mutants/fixed.py: each planted bug must fail its tests; docs/testing.md)"
  python -m tools.mutants --jobs 1 || rc=1
  echo "-- MicroPython: every dual-interpreter suite"
  micropython tests/mp/run.py || rc=1
  echo "-- MicroPython under a heap cap (see docs/benchmarks.md for the figures)"
  bash tools/mp_heapcap.sh || rc=1
  # --- board lane (issue 14): the suites inside qemu, from frozen bytecode ---
  echo "-- Board: every dual-interpreter suite on an emulated Cortex-M3 (tools/board_test.py; docs/board.md)"
  python tools/board_test.py || rc=1
  echo "-- Board heap: one session and boot with 0 and 10,000 pending bills, each in a 64 KB heap (docs/benchmarks.md)"
  python tools/board_heap.py --pending 0 10000 --cases session boot0 boot10000 --at 64 || rc=1
  # --- end board lane ---
  return $rc
}
lane "firmware: fixed mutants, MicroPython suites, heap cap, emulated board" firmware

failed=0
summary=()
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  read -r rc secs <"$logs/$i.rc" 2>/dev/null || { rc=1; secs=?; }
  echo "== ${names[$i]}"
  cat "$logs/$i.log"
  if [ "$rc" = 0 ]; then
    summary+=("ok      ${secs} s  ${names[$i]}")
  else
    summary+=("FAILED  ${secs} s  ${names[$i]} (exit $rc)")
    failed=$((failed + 1))
  fi
done
pids=()
echo "== lanes (run side by side; total ${SECONDS} s with setup)"
printf '%s\n' "${summary[@]}"
echo "lanes: $(( ${#names[@]} - failed )) passed, $failed failed"
[ "$failed" = 0 ]
