# Under CI=true a skip fails the run unless tests/allowed_skips.py lists it
# with its reason (tests/skipgate.py). Proven on a throw-away suite run by a
# child pytest with the gate loaded as a plugin.
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests import skipgate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SUITE = '''
import pytest

def test_runs():
    assert 1 + 1 == 2

def test_listed():
    pytest.skip("the listed reason")

def test_listed_but_another_reason():
    pytest.skip("a reason nobody listed")

@pytest.mark.skipif(True, reason="marked off")
def test_unlisted_mark():
    pass
'''

# The throw-away suite's conftest lists two of its skips, as
# tests/allowed_skips.py would, reason and all.
CONFTEST = '''
from tests import allowed_skips
allowed_skips.ALLOWED_SKIPS["test_gate.py::test_listed"] = "the listed reason"
allowed_skips.ALLOWED_SKIPS["test_gate.py::test_listed_but_another_reason"] = "the listed reason"
'''


@pytest.fixture
def suite():
    d = tempfile.mkdtemp(prefix="pc-skipgate-")
    try:
        with open(os.path.join(d, "test_gate.py"), "w") as f:
            f.write(SUITE)
        with open(os.path.join(d, "conftest.py"), "w") as f:
            f.write(CONFTEST)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _pytest(d, ci, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.skipgate",
                           "-p", "no:cacheprovider", "-q", *args], cwd=d, env=env,
                          capture_output=True, text=True, timeout=120)


def test_under_ci_an_unlisted_skip_fails_the_run_and_is_named(suite):
    r = _pytest(suite, "true")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "2 skip(s) not listed in tests/allowed_skips.py" in out
    assert "test_gate.py::test_listed_but_another_reason: a reason nobody listed" in out
    assert "test_gate.py::test_unlisted_mark: marked off" in out
    assert "test_gate.py::test_listed:" not in out      # listed with its reason: allowed
    assert "1 passed, 3 skipped" in out


def test_under_ci_an_unlisted_skip_fails_a_run_on_xdist_workers_too(suite):
    # tools/test.sh runs pytest on pytest-xdist workers: the skips reach the
    # gate from the workers' reports.
    r = _pytest(suite, "true", "-n", "2")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "2 skip(s) not listed in tests/allowed_skips.py" in out
    assert "test_gate.py::test_unlisted_mark: marked off" in out


def test_under_ci_listed_skips_alone_pass(suite):
    r = _pytest(suite, "true", "test_gate.py::test_runs", "test_gate.py::test_listed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout


def test_outside_ci_a_skip_is_only_reported(suite):
    r = _pytest(suite, None)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not listed" not in r.stdout


def test_a_failure_keeps_its_own_exit_status_under_ci(suite):
    with open(os.path.join(suite, "test_gate.py"), "a") as f:
        f.write("\ndef test_fails():\n    assert False\n")
    r = _pytest(suite, "true")
    assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout


def test_a_skip_matches_by_node_id_and_reason():
    table = {"tests/test_x.py::test_a": "why", "tests/test_x.py::test_b[p1]": "why"}
    assert skipgate.allowed("tests/test_x.py::test_a", "why", table)
    assert skipgate.allowed("tests/test_x.py::test_a[any]", "why", table)
    assert not skipgate.allowed("tests/test_x.py::test_a", "why not", table)
    assert skipgate.allowed("tests/test_x.py::test_b[p1]", "why", table)
    assert not skipgate.allowed("tests/test_x.py::test_b[p2]", "why", table)
    assert not skipgate.allowed("tests/test_x.py::test_c", "why", table)
