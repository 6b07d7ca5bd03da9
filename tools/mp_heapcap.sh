#!/usr/bin/env bash
# Runs chosen dual-interpreter suites under `micropython -X heapsize=N`: the
# heap a pile controller board gives us. One line per suite: SUITE HEAP.
set -euo pipefail
cd "$(dirname "$0")/.."
while read -r suite heap; do
  [ -z "$suite" ] || [ "${suite#\#}" != "$suite" ] && continue
  echo "-- $suite under -X heapsize=$heap"
  micropython -X heapsize="$heap" tests/mp/run.py "$suite"
done <<'LIST'
test_codec 128K
LIST
