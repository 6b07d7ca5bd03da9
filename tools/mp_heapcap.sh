#!/usr/bin/env bash
# Runs dual-interpreter suites under `micropython -X heapsize=N`, the way a
# pile controller board runs them: from bytecode precompiled by mpy-cross
# (a board carries .mpy or frozen modules; compiling .py source on the device
# costs several times the file size in heap). One line per suite: SUITE HEAP.
# The figures are the caps each suite is known to pass under, with margin;
# docs/benchmarks.md has the measured minimums.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d "${TMPDIR:-/tmp}/pc-mpy-XXXXXX")
trap 'rm -rf "$out"' EXIT
# Native (@micropython.viper) code needs the target architecture.
case "$(uname -m)" in x86_64) march=-march=x64;; aarch64) march=-march=aarch64;; *) march=;; esac
for f in $(find protocol firmware sim tests/mp -name '*.py'); do
  mkdir -p "$out/$(dirname "$f")"
  if [ "$(basename "$f")" = run.py ]; then cp "$f" "$out/$f"; continue; fi
  # sim/ holds CPython-only drivers beside the MicroPython doubles the suites
  # import: one mpy-cross refuses is not one of those (a suite importing it
  # would fail on the missing module).
  case "$f" in sim/*) mpy-cross $march -o "$out/${f%.py}.mpy" "$f" 2>/dev/null || true;;
    *) mpy-cross $march -o "$out/${f%.py}.mpy" "$f";; esac
done
touch "$out/tests/__init__.py"
fail=0
while read -r suite heap; do
  case "$suite" in ""|\#*) continue;; esac
  echo "-- $suite under -X heapsize=$heap (mpy)"
  (cd "$out" && micropython -X heapsize="$heap" tests/mp/run.py "$suite") || fail=1
done <<'LIST'
test_codec 104K
test_lenient 96K
test_gbt27930 64K
test_bms 432K
test_link 96K
test_pile 368K
test_pile_faults 336K
test_guns 400K
test_sharing 400K
test_parallel 384K
test_journal 160K
test_session 168K
test_tariff 96K
test_dlt645 96K
test_auth 96K
test_upgrade 128K
test_ocmf 64K
test_ocmf_pile 368K
LIST
exit $fail
