"""pytest plugin: under CI=true a skip fails the run unless
tests/allowed_skips.py lists it with its reason.

tests/conftest.py takes it in (its pytest_configure); another run loads it
with `-p tests.skipgate` (as tests/test_skipgate.py does). Outside CI skips
stay skips (a laptop without Mosquitto still runs the rest) and `-ra` lists
them as usual.
"""
import os

import pytest

from tests import allowed_skips

_NAME = "pc-skipgate"


def ci():
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def allowed(nodeid, reason, table=None):
    """True when `table` (default: ALLOWED_SKIPS) lists this skip: the node
    id with or without its parameters, and the same reason."""
    table = allowed_skips.ALLOWED_SKIPS if table is None else table
    for key in (nodeid, nodeid.split("[", 1)[0]):
        if key in table:
            return table[key] == reason
    return False


def _reason(report):
    lr = report.longrepr
    text = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return text[len("Skipped: "):] if text.startswith("Skipped: ") else text


class SkipGate:
    def __init__(self):
        self.skips = []          # (node id, reason) of every skip this run

    def unallowed(self):
        return [(n, r) for n, r in self.skips if not allowed(n, r)]

    def pytest_runtest_logreport(self, report):
        # An xfail is reported as skipped too (with wasxfail): not a skip.
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.append((report.nodeid, _reason(report)))

    def pytest_collectreport(self, report):
        # A whole module skipped at import (importorskip, allow_module_level).
        if report.skipped:
            self.skips.append((report.nodeid, _reason(report)))

    def pytest_sessionfinish(self, session):
        if ci() and self.unallowed() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        bad = self.unallowed()
        if not ci() or not bad:
            return
        tr = terminalreporter
        tr.section("skips not allowed under CI=true", red=True, bold=True)
        tr.line("%d skip(s) not listed in tests/allowed_skips.py with their reason; "
                "the run fails:" % len(bad), red=True)
        for nodeid, reason in bad:
            tr.line("  %s: %s" % (nodeid, reason), red=True)


def pytest_configure(config):
    if not config.pluginmanager.has_plugin(_NAME):
        config.pluginmanager.register(SkipGate(), _NAME)
