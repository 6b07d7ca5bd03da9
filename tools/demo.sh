#!/usr/bin/env bash
# The one demo command: sets up (tools/setup.sh), then runs pile-demo:
# broker, bridge, reference platform and seven simulated piles running the
# real firmware, replaying the field cases. Extra arguments go to pile-demo
# (--json, --speed N, --keep DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
exec pile-demo "$@"
