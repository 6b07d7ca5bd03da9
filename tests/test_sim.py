# pile-sim (tools/sim.py): every shipped scenario runs on the real firmware
# and its bills reconcile; exact decimal parsing; clear errors for bad
# scenario files; the TCP attach mode against a minimal YKC peer.
import contextlib
import glob
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading

import pytest

from sim.brokers import RefusedPort
from protocol import codec
from sim import fleet as sim_fleet
from sim import scenario as sim
from sim import scenario_file as scen_file
from sim import stack
from sim.links import SocketUart
from sim.platform import ScriptedPlatform
from tools import sim as sim_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = os.path.join(ROOT, "tools", "scenarios")

# What each shipped scenario must produce, stated here independently of the
# file's own "expect" block: (bill count, stop reasons in seal order, refusals).
EXPECTED = {
    "triple_stop": (1, ["remote"], 1),
    "one_yuan_60kw": (1, ["amount_target"], 0),
    "five_period_tariff": (1, ["remote"], 0),
    "power_cut": (1, ["power_loss"], 0),
    "midnight_three_classes": (1, ["energy_target"], 0),
    "platform_outage": (2, ["energy_target", "time_target"], 0),
    "vin_refusal": (2, ["vin_denied", "remote"], 1),
}


def _run_json(capsys, path):
    rc = sim_cli.main(["scenario", path, "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def _reconciles(b):
    # Checked here on the raw integers, not trusting the tool's verdict.
    p = b["periods"]
    assert sum(x["energy"] for x in p) == b["total_energy"]
    assert b["total_energy"] == b["meter_stop"] - b["meter_start"]
    assert sum(x["amount"] for x in p) == b["total_amount"]
    assert b["energy_fee"] + b["service_fee"] == b["total_amount"]
    for x in p:
        assert x["amount"] == x["energy_fee"] + x["service_fee"]
    assert b["reconcile"]["ok"]


def test_field_case_scenarios_are_shipped_and_every_scenario_file_parses():
    files = glob.glob(os.path.join(SCENARIOS, "*.json"))
    names = set(os.path.splitext(os.path.basename(f))[0] for f in files)
    assert set(EXPECTED) <= names
    for f in files:  # others' scenarios (the demo's) must at least be valid
        sc = scen_file.load_scenario(f)
        assert sc["piles"] and sc["tariff"] is not None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_scenario_gives_expected_bills_that_reconcile(capsys, name):
    rc, res = _run_json(capsys, os.path.join(SCENARIOS, name + ".json"))
    count, reasons, refusals = EXPECTED[name]
    assert rc == 0, res["problems"]
    assert res["ok"] and res["problems"] == []
    assert len(res["bills"]) == count
    assert [b["stop_reason_name"] for b in res["bills"]] == reasons
    assert len(res["refusals"]) == refusals
    for b in res["bills"]:
        _reconciles(b)
        assert b["copies_received"] >= 1 and b["journal_status"] == "settled"
        assert len(b["serial"]) == 32


def test_one_yuan_at_60kw_never_bills_more_than_one_yuan(capsys):
    _, res = _run_json(capsys, os.path.join(SCENARIOS, "one_yuan_60kw.json"))
    b = res["bills"][0]
    assert 0 < b["total_amount"] <= 10000
    stops = [e for e in res["events"] if e["event"] == "stop_reply"]
    assert [(e["result"], e["reason"]) for e in stops] == [(0, 2)]  # after the auto stop


def test_triple_stop_replies_once_stopped_then_not_charging(capsys):
    _, res = _run_json(capsys, os.path.join(SCENARIOS, "triple_stop.json"))
    stops = [(e["result"], e["reason"]) for e in res["events"] if e["event"] == "stop_reply"]
    assert stops == [(1, 0), (0, 2), (0, 2), (0, 2)]


def test_five_period_tariff_bill_uses_all_five_classes(capsys):
    _, res = _run_json(capsys, os.path.join(SCENARIOS, "five_period_tariff.json"))
    p = res["bills"][0]["periods"]
    assert [x["class"] for x in p] == ["sharp", "peak", "flat", "valley", "deep"]
    assert all(x["energy"] > 0 for x in p)


def test_power_cut_bill_is_rebuilt_from_the_journal(capsys):
    _, res = _run_json(capsys, os.path.join(SCENARIOS, "power_cut.json"))
    b = res["bills"][0]
    assert b["sealed"] == "power_cut_rebuild" and b["stop_reason"] == 0x83
    assert b["meter_start"] == 12345600 and b["total_energy"] > 0


def test_platform_outage_bills_wait_and_are_delivered_once_each(capsys):
    _, res = _run_json(capsys, os.path.join(SCENARIOS, "platform_outage.json"))
    assert [b["copies_received"] for b in res["bills"]] == [1, 1]
    assert res["bills"][1]["trade_flag"] == 4  # offline card: pile-issued serial
    assert res["piles"][0]["logins"] >= 2


def test_vin_refusal_stops_the_unknown_bus_and_flags_the_nameplate_mismatch(capsys):
    _, res = _run_json(capsys, os.path.join(SCENARIOS, "vin_refusal.json"))
    denied, ok = res["bills"]
    assert denied["stop_reason"] == 0x8A and denied["vin"] == "LGHXCAE28M1009999"
    assert ok["vin"] == "LZYTBGBW1K1000007" and ok["nameplate_vin"] == "LZYTBGBW1K1000008"
    assert ok["vin_mismatch"] is True
    assert res["refusals"][0]["reason_name"] == "not_plugged"


def test_table_output_lists_bills_and_verdict(capsys):
    rc = sim_cli.main(["scenario", os.path.join(SCENARIOS, "triple_stop.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "55031412782305012611241000000001" in out and "OK: 1 bills" in out


# --- exact decimals -----------------------------------------------------------------

def test_decimal_strings_parse_exactly_to_protocol_integers():
    assert scen_file.yuan_e4("1.00") == 10000
    assert scen_file.kwh_e4("0.1") == 1000
    assert scen_file.yuan_e4("0.0001") == 1
    assert scen_file.yuan_e4("1") == 10000 and scen_file.yuan_e4(1) == 10000
    assert scen_file.yuan_e4("12.345") == 123450
    assert scen_file.yuan_e4("2.50000") == 25000          # trailing zeros beyond resolution
    assert scen_file.balance_e2("100.00") == 10000
    assert scen_file.kwh_e4("0.3") * 3 == scen_file.kwh_e4("0.9")  # no binary fraction anywhere
    assert scen_file.parse_decimal("1234567890.12345", 5, "x") == 123456789012345


@pytest.mark.parametrize("bad", ["0.00001", "1e3", "-1", "1.2.3", "", "abc", " 1,00", 1.0,
                                 True, None, -5])
def test_bad_decimal_is_a_clear_error(bad):
    with pytest.raises(scen_file.ScenarioError) as e:
        scen_file.yuan_e4(bad, "start.amount")
    assert "start.amount" in str(e.value)


def test_json_numbers_with_fractions_stay_exact():
    d = json.loads('{"a": 1.10, "b": 0.1}', parse_float=scen_file._JsonNumber)
    assert scen_file.yuan_e4(d["a"]) == 11000 and scen_file.kwh_e4(d["b"]) == 1000


def test_durations():
    assert scen_file.parse_duration_ms("1h30m") == 5400000
    assert scen_file.parse_duration_ms("10m") == 600000
    assert scen_file.parse_duration_ms("90s") == 90000
    assert scen_file.parse_duration_ms("1.5s") == 1500
    assert scen_file.parse_duration_ms("500ms") == 500
    assert scen_file.parse_duration_ms(45) == 45000
    assert scen_file.parse_duration_ms("2.25") == 2250
    with pytest.raises(scen_file.ScenarioError):
        scen_file.parse_duration_ms("10 minutes")


# --- bad scenario files ---------------------------------------------------------------

def _scenario_file(tmp_path, text):
    p = tmp_path / "s.json"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    ('{"tariff": {"prices": [[1,1],[1,1],[1,1]], "slots": []}}', "4 or 5"),
    ('{"tariff": {"prices": [[1,1],[1,1],[1,1],[1,1]], "slots": [0]}}', "48"),
    ('{"tariff": {"prices": [[1,1],[1,1],[1,1],[1,1]], "slots": ' + json.dumps([0] * 48) + '},'
     ' "timeline": [{"at": "1m", "do": "fly"}]}', "timeline[0].do"),
    ('{"tariff": {"prices": [[1,1],[1,1],[1,1],[1,1]], "slots": ' + json.dumps([0] * 48) + '},'
     ' "timeline": [{"at": "1m", "do": "start", "amount": "1.00001"}]}', "timeline[0].amount"),
    ('{"tariff": {"prices": [[1,1],[1,1],[1,1],[1,1]], "slots": ' + json.dumps([0] * 48) + '},'
     ' "piles": [{"code": "123"}]}', "piles[0].code"),
    ('{"tariff": {"prices": [[0,1],[1,1],[1,1],[1,1]], "slots": ' + json.dumps([0] * 48) + '}}',
     "energy price 0"),
])
def test_bad_scenario_file_gives_one_line_error_and_nonzero_exit(tmp_path, capsys, text, words):
    rc = sim_cli.main(["scenario", _scenario_file(tmp_path, text), "--json"])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    lines = cap.err.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("pile-sim: ") and words in lines[0]


def test_missing_scenario_file_is_an_error(capsys):
    assert sim_cli.main(["scenario", "/nonexistent/pile-sim.json"]) == 2
    assert "No such file" in capsys.readouterr().err


def test_unmet_expectation_gives_nonzero_exit(tmp_path, capsys):
    with open(os.path.join(SCENARIOS, "triple_stop.json")) as f:
        d = json.load(f)
    d["expect"]["bills"] = 2
    rc = sim_cli.main(["scenario", _scenario_file(tmp_path, json.dumps(d)), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 1 and not res["ok"] and "expected 2 bills, got 1" in res["problems"]


def test_unconfirmed_bill_is_reported_pending_not_lost(tmp_path, capsys):
    with open(os.path.join(SCENARIOS, "triple_stop.json")) as f:
        d = json.load(f)
    d["platform"] = {"confirm": False}
    d["expect"] = {"bills": 1}
    rc = sim_cli.main(["scenario", _scenario_file(tmp_path, json.dumps(d)), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0
    b = res["bills"][0]
    assert b["journal_status"] == "pending" and b["copies_received"] >= 2


# --- TCP attach mode against a minimal YKC peer ---------------------------------------------

class YkcPeer:
    """The scripted platform (sim/platform.py) on a free loopback port, one
    thread per pile connection: answers login, heartbeat and tariff check;
    confirms (0x40) and settles (0xE4) every bill."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.cond = threading.Condition()
        self.logins = []
        self.bills = []
        self.conns = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        uart = SocketUart(c)
        plat = ScriptedPlatform(uart)
        while not uart.closed:
            for f in plat.pump():
                with self.cond:
                    if f.name == "login":
                        self.logins.append(f.fields["pile"])
                    elif f.name in ("bill", "bill5"):
                        self.bills.append(f.fields)
                    self.cond.notify_all()

    def wait(self, pred, timeout=30):
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def close(self):
        self.srv.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def peer():
    p = YkcPeer()
    yield p
    p.close()


# The scenario tariff's four (energy, service) prices, x10^5 yuan per kWh.
_PRICES = [[120000, 40000], [100000, 40000], [70000, 40000], [30000, 40000]]


def test_fleet_attaches_over_tcp_and_its_bills_are_confirmed(peer):
    sc = scen_file.parse_scenario({
        "tariff": {"prices": _PRICES, "slots": [2] * 48},
        "piles": [{"code": "55031412780101"}, {"code": "55031412780102", "power_w": 7000}],
        "timeline": [{"at": "0s", "pile": 0, "do": "plug"}, {"at": "0s", "pile": 1, "do": "plug"},
                     {"at": "20s", "pile": 0, "do": "card", "minutes": 2},
                     {"at": "30s", "pile": 1, "do": "card", "energy": "0.5"},
                     {"at": "1m", "pile": 1, "do": "stop", "note": "platform action: skipped"}]})
    fleet = sim_fleet.SimFleet(("127.0.0.1", peer.port), speed=600, scenario=sc)
    try:
        fleet.start()
        assert fleet.wait(lambda f: f.stats()["settled"] == 2, timeout=30), fleet.stats()
        st = fleet.stats()
        assert st["online"] == 2 and st["bills"] == 2 and st["pending"] == 0
        bills = fleet.bills()
        assert sorted(b["stop_reason_name"] for b in bills) == ["energy_target", "time_target"]
        for b in bills:
            _reconciles(b)
        with peer.cond:
            got = sorted(set(v["serial"] for v in peer.bills))
        assert got == sorted(b["serial"] for b in bills)
        assert sorted(set(peer.logins)) == ["55031412780101", "55031412780102"]
        assert any(e["event"] == "skipped" and e["action"] == "stop" for e in fleet.events)
    finally:
        fleet.stop()


def test_fleet_builtin_mix_runs_sessions_over_tcp(peer):
    fleet = sim_fleet.SimFleet(("127.0.0.1", peer.port), piles=3, speed=2000, mix="cards", seed=3)
    try:
        fleet.start()
        assert fleet.wait(lambda f: f.stats()["settled"] >= 3, timeout=40), fleet.stats()
        for b in fleet.bills():
            _reconciles(b)
            assert b["trade_flag"] == 4
    finally:
        fleet.stop()


def test_fleet_reconnects_after_the_bridge_drops_the_connection(peer):
    fleet = sim_fleet.SimFleet(("127.0.0.1", peer.port), piles=1, speed=600, mix="idle")
    try:
        fleet.start()
        assert peer.wait(lambda: len(peer.logins) >= 1, timeout=20)
        for c in list(peer.conns):
            c.shutdown(socket.SHUT_RDWR)
        assert peer.wait(lambda: len(peer.logins) >= 2, timeout=20)
        assert fleet.wait(lambda f: f.stats()["online"] == 1, timeout=20)
    finally:
        fleet.stop()


def _ready_line(p, what, timeout=30):
    """The JSON ready line child p prints first. A child that exits, hangs
    or prints something else fails the test, named, with its stderr."""
    line = ""
    if select.select([p.stdout], [], [], timeout)[0]:
        line = p.stdout.readline()
    try:
        return json.loads(line)
    except ValueError:
        pass
    if p.poll() is None:
        p.kill()
    _, err = p.communicate(timeout=10)
    raise AssertionError("%s did not start: exit status %s, ready line %r\n--- its stderr ---\n%s"
                         % (what, p.returncode, line, (err or "")[-3000:]))


def test_run_command_shuts_down_cleanly_on_sigterm(peer):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-m", "tools.sim", "run", "--bridge",
                          "127.0.0.1:%d" % peer.port, "--piles", "2", "--speed", "300", "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env=env)
    try:
        ready = _ready_line(p, "pile-sim run --bridge")
        assert ready["ready"] and len(ready["piles"]) == 2
        assert peer.wait(lambda: len(set(peer.logins)) == 2, timeout=20)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
        last = json.loads(out.strip().split("\n")[-1])
        assert last["stopped"] and last["stats"]["piles"] == 2
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_bad_bridge_address_is_a_one_line_error(capsys):
    assert sim_cli.main(["run", "--bridge", "nowhere", "--piles", "1"]) == 2
    err = capsys.readouterr().err.strip().split("\n")
    assert len(err) == 1 and "HOST:PORT" in err[0]


@contextlib.contextmanager
def _bridge_child(tmp_path, extra=""):
    """host.bridge as a child process (sim/stack.py), its MQTT side pointed
    at a port held refused (it retries in the background): pile links and
    bill custody (0x40 once the bill is stored) work without a broker.
    Yields the started BridgeProcess; one that does not start fails the test
    with its exit status and log (BridgeDidNotStart), never skips it."""
    with RefusedPort() as mqtt_port:
        br = stack.BridgeProcess(str(tmp_path), "simtest", mqtt_port, extra=extra)
        try:
            br.start()
            yield br
        finally:
            br.stop()


def _two_piles(code, slot, *events):
    """A parsed scenario: piles code+"01" and code+"02" plugged in, the
    four-price tariff at price `slot` all day, the timeline `events`."""
    return scen_file.parse_scenario({
        "tariff": {"prices": _PRICES, "slots": [slot] * 48},
        "piles": [{"code": code + "01", "plugged": True}, {"code": code + "02", "plugged": True}],
        "timeline": list(events)})


# Two card sessions on _two_piles: one to an amount (2 yuan), one to a time (3 minutes).
_CARD_TARGETS = ({"at": "1m", "pile": 0, "do": "card", "amount": "2.00"},
                 {"at": "1m", "pile": 1, "do": "card", "minutes": 3})


def test_fleet_against_the_real_bridge_gets_its_bills_confirmed(tmp_path):
    fleet = None
    with _bridge_child(tmp_path) as br:
        try:
            sc = _two_piles("550314127802", 1, *_CARD_TARGETS)
            fleet = sim_fleet.SimFleet(("127.0.0.1", br.tcp_port), speed=600, scenario=sc)
            fleet.start()
            assert fleet.wait(lambda f: f.stats()["confirmed"] == 2, timeout=30), fleet.stats()
            reasons = sorted(b["stop_reason_name"] for b in fleet.bills())
            assert reasons == ["amount_target", "time_target"]
        finally:
            if fleet is not None:
                fleet.stop()


def test_a_bridge_that_crashes_at_start_up_fails_the_test_naming_it(tmp_path):
    # What the end-to-end tests around this one meet when the bridge cannot
    # start (here its database path is a folder: the store raises as it
    # opens): an error naming the bridge, its exit status and the end of its
    # log, so the test fails. They once skipped instead ("48 passed,
    # 2 skipped", exit status 0).
    (tmp_path / "bridge.db").mkdir()
    with pytest.raises(stack.BridgeDidNotStart) as e:
        with _bridge_child(tmp_path):
            pass
    msg = str(e.value)
    assert "the bridge (python -m host.bridge" in msg
    assert "exited with code 2 before its ready line" in msg
    assert "pile-bridge: cannot open %s" % (tmp_path / "bridge.db") in msg


def test_fleet_on_ptys_gets_its_bills_confirmed_by_the_real_bridge_on_serial_links(tmp_path):
    # Each simulated pile's UART is a pty; the bridge opens the other ends as
    # [[serial]] links, as it would /dev/ttyUSB0 on a site gateway.
    sc = _two_piles("550314127803", 1, *_CARD_TARGETS + (
        {"at": "2m", "pile": 1, "do": "power_cut", "off": "30s"},))
    fleet = sim_fleet.SimFleet(None, speed=600, scenario=sc, link="pty",
                         root=str(tmp_path / "piles"))
    try:
        ptys = fleet.ptys()
        assert sorted(ptys) == ["55031412780301", "55031412780302"]
        links = "".join('[[serial]]\nurl = "%s"\nbaudrate = 115200\next = true\n' % p
                        for p in ptys.values())
        with _bridge_child(tmp_path, links):
            fleet.start()
            assert fleet.wait(lambda f: f.stats()["confirmed"] == 2 and f.stats()["online"] == 2,
                              timeout=60), fleet.stats()
            reasons = sorted(b["stop_reason_name"] for b in fleet.bills())
            assert reasons == ["amount_target", "power_loss"]
            st = fleet.stats()
            assert st["power_cuts"] == 1
            assert [p["pty"] for p in st["per_pile"]] == list(ptys.values())
            # the power cut kept the line: same pty, the pile logged in on it again
            assert fleet.units[1].uart.path == ptys["55031412780302"]
    finally:
        fleet.stop()


def test_run_pty_prints_one_pty_per_pile_and_the_pile_logs_in_on_it():
    import serial
    p = subprocess.Popen([sys.executable, "-m", "tools.sim", "run", "--pty", "--piles", "2",
                          "--mix", "idle", "--speed", "60", "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    port = None
    try:
        ready = _ready_line(p, "pile-sim run --pty")
        assert ready["ready"] and len(ready["piles"]) == 2
        assert sorted(ready["ptys"]) == sorted(ready["piles"])
        hint = p.stderr.readline()
        assert hint.startswith("pile-bridge serial links: --serial ")
        code, path = sorted(ready["ptys"].items())[0]
        assert os.path.realpath(path).startswith("/dev/pts/")
        # Play the bridge: open the pty as a serial port and read the pile's 0x01.
        port = serial.serial_for_url(path, baudrate=115200, timeout=0.5)
        reader = codec.FrameReader()
        login = None
        for _ in range(60):
            for item in reader.push(port.read(4096) or b""):
                if isinstance(item, codec.Frame) and item.name == "login":
                    login = item
            if login:
                break
        assert login is not None, "no login frame on %s" % path
        assert login.fields["pile"] == code
    finally:
        if port is not None:
            port.close()
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=20)
    assert p.returncode == 0
    assert json.loads(out.splitlines()[-1])["stopped"]


def test_run_needs_a_bridge_or_ptys_and_not_both(capsys):
    with pytest.raises(SystemExit) as e:
        sim_cli.main(["run", "--piles", "1"])
    assert e.value.code == 2
    assert "--bridge" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sim_cli.main(["run", "--pty", "--bridge", "127.0.0.1:1"])
    assert "not allowed with" in capsys.readouterr().err


def _two_piles_charging(code, *events):
    """The scenario run: both piles of _two_piles(code) started at 10 s on a
    flat tariff, then the timeline `events`."""
    return sim.run_scenario(_two_piles(code, 2, {"at": "10s", "pile": 0, "do": "start"},
                                       {"at": "10s", "pile": 1, "do": "start"}, *events))


def test_silent_meter_stops_the_session_and_a_backwards_meter_is_not_billed():
    res = _two_piles_charging("550314127803",
                              {"at": "3m", "pile": 0, "do": "meter_fault", "silent_reads": 10},
                              {"at": "3m", "pile": 1, "do": "meter_fault", "backwards": "0.5"},
                              {"at": "6m", "pile": 1, "do": "stop"})
    assert res["ok"], res["problems"]
    assert [b["stop_reason_name"] for b in res["bills"]] == ["meter_lost", "remote"]
    for b in res["bills"]:
        _reconciles(b)


def test_reboot_now_and_when_idle_each_leave_exactly_one_bill():
    res = _two_piles_charging("550314127804",
                              {"at": "2m", "pile": 0, "do": "reboot", "when": "now"},
                              {"at": "2m", "pile": 1, "do": "reboot", "when": "idle"},
                              {"at": "5m", "pile": 1, "do": "stop"})
    assert res["ok"], res["problems"]
    assert [b["stop_reason_name"] for b in res["bills"]] == ["remote", "remote"]
    assert [p["reboots"] for p in res["piles"]] == [1, 1]


def test_every_start_refusal_reason_the_firmware_gives_has_a_name():
    # journal_full showed as code_10 (issue 12 item 7).
    from firmware import session as S
    from sim import scenario as sim
    codes = [getattr(S, n) for n in dir(S) if n.startswith("START_") and isinstance(getattr(S, n), int)]
    assert codes and all(not sim._start_reason(c).startswith("code_") for c in codes)
    assert sim._start_reason(S.START_JOURNAL_FULL) == "journal_full"
    assert sim._start_reason(S.START_SERIAL_USED) == "serial_used"
    assert sim._start_reason(0x77) == "code_119"
