#!/usr/bin/env bash
# The one test command: sets up (tools/setup.sh), then runs every pytest
# suite on CPython, the fixed mutant set (about half a minute), and the
# firmware/protocol suites under the real `micropython` binary, once more
# under a heap cap.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"

echo "== pytest (CPython)"
python -m pytest -q -p no:cacheprovider "$@"

echo "== fixed mutants (tools/mutants/fixed.py: each planted bug must fail its tests; docs/testing.md)"
python -m tools.mutants --jobs 2

echo "== MicroPython: every dual-interpreter suite"
micropython tests/mp/run.py

echo "== MicroPython under a heap cap (see docs/benchmarks.md for the figures)"
bash tools/mp_heapcap.sh

# --- board lane (issue 14): the suites inside qemu, from frozen bytecode ---
echo "== Board: every dual-interpreter suite on an emulated Cortex-M3 (tools/board_test.py; docs/board.md)"
python tools/board_test.py
# --- end board lane ---
