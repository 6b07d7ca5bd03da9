# The technician's path against a simulated pile (pile-sim run --pty opens
# each pile's console on a pty of its own), and the failures a technician
# meets on site: a pulled cable during spy or shell, a busy port. Each gives
# one line on stderr and exit 3 ("cannot reach"), never a traceback.
import io
import json
import os
import pty
import subprocess
import sys
import time
import tty

import pytest
import serial

from host.schema import stop_reason
from protocol import codec
from protocol.units import stop_text
from tests.mp.pilekit import PILE
from host import cli
from tools import console as tool
from sim.fleet import SimFleet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(argv):
    out = io.StringIO()
    rc = tool.main(argv, out=out)
    return rc, out.getvalue()


@pytest.fixture
def fleet(tmp_path):
    f = SimFleet(None, piles=1, speed=600, link="pty", seed=3, root=str(tmp_path / "fleet"),
                 pin="2468")
    f.start()
    try:
        yield f
    finally:
        f.stop()


def test_technician_path_on_a_simulated_pile_in_under_a_minute(fleet):
    t0 = time.monotonic()
    code = fleet.units[0].code
    path = fleet.consoles()[code]
    assert path != fleet.ptys()[code]          # the console is not the YKC link
    # no bridge on the link: the pile's bills stay unconfirmed
    assert fleet.wait(lambda f: f.stats()["bills"] >= 1, timeout=45)

    rc, text = _main([path])
    assert rc == cli.OK, text
    assert code in text and "OFFLINE" in text and "YKC V1.6" in text
    assert "unconfirmed bills:" in text

    rc, text = _main([path, "status", "--json"])
    st = json.loads(text)
    assert rc == 0 and st["pile"] == code and st["pending"] >= 1

    rc, text = _main([path, "bills", "--json"])
    bills = json.loads(text)["bills"]
    assert rc == 0 and bills and bills[0]["state"] == "unconfirmed"
    b0 = bills[0]
    rc, text = _main([path, "bills"])
    assert rc == 0 and b0["serial"] in text
    # units and the stop reason by name, as the pile wrote them
    assert stop_reason(b0["stop_reason"])["name"] in text
    assert "energy kWh" in text and "amount yuan" in text

    rc, text = _main([path, "bill", b0["serial"]])
    assert rc == 0 and " kWh" in text and " yuan" in text
    assert "0x%02X %s" % (b0["stop_reason"], stop_reason(b0["stop_reason"])["name"]) in text

    rc, text = _main([path, "versions"])
    assert rc == 0 and "pc0.1.0" in text and "YKC V1.6" in text

    # write commands: refused without the PIN (1), done with it (0)
    rc, _ = _main([path, "config", "set", "period_ms", "500"])
    assert rc == cli.NO
    rc, text = _main([path, "config", "set", "period_ms", "500", "--pin", "2468"])
    assert rc == cli.OK and "500" in text
    rc, text = _main([path, "config", "get", "period_ms", "--json"])
    assert json.loads(text)["period_ms"] == 500
    rc, _ = _main([path, "unlock", "--pin", "9999"])
    assert rc == cli.NO
    assert time.monotonic() - t0 < 60


def test_fleet_reboot_from_the_console_keeps_the_console_pty(fleet):
    code = fleet.units[0].code
    path = fleet.consoles()[code]
    before = fleet.units[0].reboots
    rc, text = _main([path, "reboot", "now", "--pin", "2468"])
    assert rc == 0, text
    assert fleet.wait(lambda f: f.units[0].reboots > before, timeout=30)
    assert fleet.consoles()[code] == path
    rc, text = _main([path, "status", "--json"])
    assert rc == 0 and json.loads(text)["boot_reason"] != "power-on"


class _Cable:
    """A raw pty: the tool opens `path`, the test is the pile on `master`;
    pull() closes the pile's end (the cable is pulled). Both ends are
    closed after the block."""

    def __enter__(self):
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        return self

    def pull(self):
        os.close(self.master)
        self.master = None

    def __exit__(self, *exc):
        if self.master is not None:
            os.close(self.master)
        os.close(self.slave)


def _lost_link_line(p, err):
    """The tool ended with exit 3 and one line on stderr, no traceback: that line."""
    lines = err.decode().splitlines()
    assert p.returncode == cli.UNREACHABLE, err
    assert len(lines) == 1 and "Traceback" not in err.decode(), err
    return lines[0]


def _tool(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "tools.console"] + args, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_pulled_cable_mid_spy_is_one_line_and_exit_3():
    with _Cable() as c:
        # flags after the URL (README's order) work
        p = _tool([c.path, "spy", "--idle", "60"])
        assert p.stderr.readline().decode().startswith("pile-console: spying on " + c.path)
        hb = codec.encode("heartbeat", {"pile": PILE, "gun": "01", "gun_status": 0}, 7)
        os.write(c.master, hb)
        first = p.stdout.readline().decode()        # spy is reading: the frame shows
        assert "0x03 heartbeat seq=7" in first
        c.pull()
        out, err = p.communicate(timeout=30)
    # one line after "spying on"
    assert _lost_link_line(p, err).startswith("pile-console: lost the link to " + c.path)


def test_pulled_cable_mid_shell_is_one_line_and_exit_3():
    with _Cable() as c:
        p = _tool([c.path, "shell"], stdin=subprocess.PIPE)
        # the fake console answers the first CR with a prompt, then the
        # technician has not typed yet: the stdin pipe stays open
        got = b""
        while b"\r" not in got:
            got += os.read(c.master, 64)
        os.write(c.master, b"pile> ")
        assert p.stdout.read(6) == b"pile> "
        c.pull()
        # The technician still has the shell open (stdin not closed): an
        # end of input at the same moment would be a normal end (exit 0).
        p.wait(timeout=30)
        err = p.stderr.read()
        p.stdin.close()
    assert "lost the link" in _lost_link_line(p, err)


def test_busy_port_is_one_line_and_exit_3(capsys):
    with _Cable() as c:
        held = serial.Serial(c.path, exclusive=True)       # a terminal already on the cable
        try:
            rc = tool.main([c.path, "status", "--timeout", "0.3"], out=io.StringIO())
        finally:
            held.close()
    err = capsys.readouterr().err
    assert rc == cli.UNREACHABLE
    assert err.count("\n") == 1 and "busy" in err and c.path in err


def test_the_old_spy_order_and_usage_errors(capsys):
    a = tool._parse(["spy", "/dev/ttyX", "--count", "2"])
    assert (a.url, a.command, a.count) == ("/dev/ttyX", "spy", 2)
    a = tool._parse(["/dev/ttyX", "spy", "--count", "2"])
    assert (a.url, a.command, a.count) == ("/dev/ttyX", "spy", 2)
    for bad in (["/dev/ttyX", "bill"], ["/dev/ttyX", "reboot", "later"], ["/dev/ttyX", "frob"],
                ["/dev/ttyX", "status", "--no-such-flag"], ["/dev/ttyX", "export"]):
        with pytest.raises(SystemExit) as e:
            tool._parse(bad)
        assert e.value.code == cli.USAGE, bad


def test_stop_reason_names_are_the_same_on_the_pile_and_the_laptop():
    for code in range(256):
        assert stop_text(code) == "0x%02X %s" % (code, stop_reason(code)["name"]), code
