# pile-console against the real firmware console served on a pty (the
# laptop's USB-serial device as far as pyserial can tell), and its spy mode
# reading frames written to a pty.
import csv
import io
import json
import os
import pty
import re
import select
import threading
import tty

import pytest

from firmware.console import Console
from protocol import codec
from tests.mp.pilekit import PILE, Rig, serial
from sim.links import FdUart
from tests.mp.util import rmtree, tmpdir
from tools import console as tool


def _pty():
    master, slave = pty.openpty()
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def _serve(charging):
    """A pile with its console on a pty; the pile's loop runs in a thread for
    the test's duration. charging=False: one unconfirmed bill; True: a
    session with targets still running."""
    r = Rig(tmpdir("contool"), confirm=False, cfg={"pin": "4711"})
    master, slave, path = _pty()
    stop = threading.Event()
    try:
        r.online()
        if charging:
            r.start(serial(2), amount=500000, energy=800000, minutes=240)
            r.run(120000)
        else:
            r.start(serial(1))
            r.run(120000)
            r.stop()
            r.run(5000)
        r.pile.console = Console(r.pile, FdUart(master))

        def loop():
            while not stop.is_set():
                select.select([master], [], [], 0.05)   # wake on a keystroke
                r.pile.poll()
                r.platform.pump()
                r.world.clock.sleep_ms(50)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        yield r, path
        stop.set()
        t.join()
    finally:
        stop.set()
        os.close(slave)
        os.close(master)
        rmtree(r.root)


@pytest.fixture
def served():
    yield from _serve(charging=False)


@pytest.fixture
def charging():
    yield from _serve(charging=True)


def _main(argv):
    out = io.StringIO()
    rc = tool.main(argv, out=out)
    return rc, out.getvalue()


def test_summary_shows_state_versions_and_unconfirmed_bills(served):
    r, path = served
    rc, text = _main([path])
    assert rc == 0, text
    assert PILE in text and "online" in text and "power-on" in text
    assert "pc0.1.0" in text and "YKC V1.6" in text
    assert serial(1) in text and "unconfirmed" in text and "1 bill(s)" in text


def test_status_bills_versions_bill_tables(served):
    r, path = served
    rc, text = _main([path, "status"])
    assert rc == 0 and "unconfirmed bills   1" in text
    rc, text = _main([path, "bills"])
    assert rc == 0 and serial(1) in text and "0x40" in text
    rc, text = _main([path, "versions"])
    assert rc == 0 and "pc0.1.0" in text and "103" in text
    rc, text = _main([path, "bill", serial(1)])
    assert rc == 0 and "meter_stop" in text and "peak_energy_fee" in text
    for cmd in ("log", "tariff", "meter", "session"):
        rc, text = _main([path, cmd])
        assert rc == 0 and text, cmd


def test_unknown_bill_is_the_piles_error_with_status_1(served, capsys):
    r, path = served
    rc, _ = _main([path, "bill", serial(7)])
    assert rc == 1
    assert "no bill" in capsys.readouterr().err


def test_export_unconfirmed_bills_to_csv_and_json(served):
    r, path = served
    d = tmpdir("export")
    try:
        rc, text = _main([path, "export", "--csv", d + "/b.csv", "--json-file", d + "/b.json"])
        assert rc == 0 and "1 bill(s) exported" in text
        sealed = r.platform.bills()[0].fields
        with open(d + "/b.json") as f:
            bills = json.load(f)["bills"]
        assert len(bills) == 1 and bills[0]["serial"] == serial(1)
        assert bills[0]["state"] == "unconfirmed"
        for k in sealed:
            assert bills[0]["bill"][k] == sealed[k], k
        with open(d + "/b.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1 and rows[0]["serial"] == serial(1)
        assert int(rows[0]["total_energy"]) == sealed["total_energy"]
        assert int(rows[0]["total_amount"]) == sealed["total_amount"]
        assert rows[0]["end_time"].startswith("2026-11-24T")
    finally:
        rmtree(d)


def test_no_console_on_the_port_is_a_clear_error(capsys):
    master, slave, path = _pty()
    try:
        rc = tool.main([path, "status", "--timeout", "0.3"], out=io.StringIO())
        assert rc == 3
        assert "no answer from a pile console" in capsys.readouterr().err
    finally:
        os.close(slave)
        os.close(master)


def test_spy_prints_each_frame_in_hex_and_decoded_and_errors_one_line(monkeypatch):
    master, slave, path = _pty()
    opened = threading.Event()
    real_open = tool.open_port

    def open_and_tell(*a, **kw):
        p = real_open(*a, **kw)
        opened.set()
        return p

    monkeypatch.setattr(tool, "open_port", open_and_tell)
    out = io.StringIO()
    rc = []
    t = threading.Thread(target=lambda: rc.append(
        tool.main(["spy", path, "--count", "3", "--idle", "10"], out=out)))
    t.start()
    try:
        assert opened.wait(10)
        hb = codec.encode("heartbeat", {"pile": PILE, "gun": "01", "gun_status": 0}, 7)
        bad = bytearray(hb)
        bad[-1] ^= 0xFF
        login = codec.encode("login", {"pile": PILE, "pile_type": 0, "guns": 1,
                                       "proto_version": 16, "sw_version": "pc0.1.0",
                                       "net_type": 3, "sim": "", "carrier": 4}, 1)
        os.write(master, b"\x00junk" + hb + bytes(bad) + login)
        t.join(20)
        assert not t.is_alive() and rc == [0]
    finally:
        t.join(20)
        os.close(slave)
        os.close(master)
    text = out.getvalue()
    lines = text.splitlines()
    assert "0x03 heartbeat seq=7" in lines[0]
    assert lines[1].strip() == hb.hex(" ").upper()
    assert "pile=" + PILE in lines[2]
    assert "! bad frame: BadCRC" in lines[3]
    assert "0x01 login seq=1" in lines[4] and "sw_version=pc0.1.0" in lines[6]


def test_shell_passes_typed_lines_through(served, monkeypatch):
    r, path = served
    monkeypatch.setattr("sys.stdin", io.StringIO("versions\nunlock 4711\n"))
    rc, text = _main([path, "shell"])
    assert rc == 0
    assert "YKC V1.6" in text and "unlocked" in text and text.endswith("pile> ")


def test_session_table_shows_scaled_values_with_units(charging):
    r, path = charging
    rc, text = _main([path, "session"])
    assert rc == 0, text
    rows = dict(re.match(r"(.*?)\s{2,}(.*)$", line).groups() for line in text.splitlines())
    assert rows["serial"] == serial(2)
    assert rows["balance"] == "1000.0000 yuan"      # 0x34 balance 100000 x100 yuan
    assert rows["target amount"] == "50.0000 yuan"
    assert rows["target energy"] == "80.0000 kWh"
    assert rows["target minutes"] == "240 min"
    assert rows["target soc"] == "-"
    assert rows["meter start"] == "0.0000 kWh"
    assert re.fullmatch(r"\d+\.\d{4} kWh", rows["energy"]), rows["energy"]
    assert re.fullmatch(r"\d+\.\d{4} yuan", rows["amount"]), rows["amount"]
    assert re.fullmatch(r"\d+ W", rows["power"]) and re.fullmatch(r"\d+ %", rows["soc"])
    assert rows["start time"].startswith("2026-11-24T")


def test_key_prints_the_piles_ocmf_public_key_on_one_line(served):
    # docs/ocmf.md: what the site config registers as pile.<code>.ocmf_key.
    r, path = served
    rc, text = _main([path, "key"])
    assert rc == 0 and r.pile.ocmf.spki_hex() and text == r.pile.ocmf.spki_hex() + "\n"
    rc, text = _main([path, "key", "--json"])
    assert rc == 0 and '"ocmf_key": "%s"' % r.pile.ocmf.spki_hex() in text
