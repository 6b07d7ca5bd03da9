"""pile-chaos --inproc (sim/chaos_inproc.py, docs/chaos.md "In one process"): the
real firmware, bridge and platform in one process in simulated time, under
the in-process fault plan, lose, duplicate and misreconcile nothing; and its
verdict fails when the bridge settles a bill the platform never got (the
socket harness's tests/test_chaos.py plants a forgetful journal)."""
import json

import pytest

from host import store as store_mod
from tools import chaos

VERDICT = ("lost", "duplicated", "unreconciled", "phantom", "mismatched", "unconfirmed")


def _run(capsys, *args):
    rc = chaos.main(["--inproc"] + list(args) + ["--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_a_thousand_sessions_in_one_process_under_every_fault_lose_nothing(capsys):
    rc, s = _run(capsys, "--piles", "40", "--sessions", "25", "--seed", "5", "--minutes", "2",
                 "--intensity", "2")
    assert {k: s[k] for k in VERDICT} == dict.fromkeys(VERDICT, 0), s.get("examples")
    assert rc == 0 and s["recovered"] and s["tap_missed"] == 0 and s["mode"] == "inproc"
    assert s["sessions"] >= 1000 and s["bills"] == s["sessions"]
    # Every kind of fault really happened in this run, or it proved nothing.
    f = s["faults"]
    for k in ("bridge_kills", "broker_restarts", "platform_outages", "power_cuts_mid_session",
              "flash_cuts_torn_record", "corrupted_to_bridge", "corrupted_to_pile",
              "duplicated_to_bridge", "duplicated_to_pile", "reboots",
              "stops_after_session_ended", "platform_duplicate_deliveries"):
        assert f.get(k, 0) > 0, "no %s in this run: %s" % (k, f)
    assert f["bridge_starts"] == f["bridge_kills"] + 1
    assert s["executed_starts_by"].get("card", 0) > 0
    assert s["executed_starts_by"].get("platform", 0) > 0
    assert s["stop_reasons"].get("power_loss", 0) > 0
    assert s["sessions_per_s"] > 0


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
