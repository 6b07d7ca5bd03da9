"""pile-chaos --inproc (sim/chaos_inproc.py, docs/chaos.md "In one process"):
its verdict fails when the bridge settles a bill the platform never got (the
socket harness's tests/test_chaos.py plants a forgetful journal), and
socket-only faults are refused. The 1,000-session run under every fault is
a documented command (docs/chaos.md), not in the test command: in one
clean-clone run it spun at 100 % CPU without end (its simulated clock never
advancing: a livelock not yet found), so it stays out until that is fixed."""
import json

from host import store as store_mod
from tools import chaos



def _run(capsys, *args):
    rc = chaos.main(["--inproc"] + list(args) + ["--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_the_verdict_fails_when_the_bridge_settles_a_bill_the_platform_never_got(capsys,
                                                                                  monkeypatch):
    # A bridge bug: its first bill is marked confirmed as it is committed, so
    # it is never published, and the settle rule sends the pile its 0xE4.
    add = store_mod._add_bill
    early = []

    def settles_at_once(db, pile, serial, frame, crc_swapped, now):
        kind, bill = add(db, pile, serial, frame, crc_swapped, now)
        if kind == "new" and not early:
            early.append(serial)
            store_mod._confirm(db, serial, 0, now)
        return kind, bill
    monkeypatch.setattr(store_mod, "_add_bill", settles_at_once)
    rc, s = _run(capsys, "--piles", "3", "--sessions", "3", "--seed", "3", "--faults", "none")
    # The pile let it go (settled), so nothing is left open: only the count finds it.
    assert rc == 1 and s["unconfirmed"] == 0 and s["unsettled_on_piles"] == 0
    assert s["lost"] == 1 and s["examples"]["lost"] == early


def test_socket_only_faults_are_refused_in_process(capsys):
    try:
        chaos.main(["--inproc", "--faults", "forge_bill"])
    except SystemExit as e:
        assert e.code == 2
    assert "needs the socket harness" in capsys.readouterr().err
