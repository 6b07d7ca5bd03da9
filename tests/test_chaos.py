"""pile-chaos (tools/chaos.py, sim/chaos.py, docs/chaos.md): the bounded CI run (1,000
sessions under every fault kind through the real bridge, Mosquitto and the
reference platform), and proof that its verdict fails when a bill is lost,
sealed twice, garbled on the way or left unconfirmed."""
import json

import pytest

from firmware import journal as J
from sim.brokers import mosquitto_available
from host.platform import Platform
from sim.chaos import failed, tally
from tools import chaos

needs_mosquitto = pytest.mark.skipif(not mosquitto_available(),
                                     reason="mosquitto not installed (tools/setup.sh installs it)")

VERDICT = ("lost", "duplicated", "unreconciled", "phantom", "mismatched", "unconfirmed")


def _run(capsys, *args):
    rc = chaos.main(list(args) + ["--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.slow
@needs_mosquitto
def test_a_thousand_sessions_under_every_fault_lose_duplicate_and_misreconcile_nothing(capsys):
    rc, s = _run(capsys, "--piles", "20", "--sessions", "50", "--seed", "7", "--third-party", "2")
    assert {k: s[k] for k in VERDICT} == dict.fromkeys(VERDICT, 0), s.get("examples")
    # Vendor piles ran beside ours through the same faults: their bills are
    # reported apart (none counted phantom or unreconciled above), none they
    # got a 0x40 for is missing, and their problems are counted by class.
    tp = s["third_party"]
    assert tp["piles"] == 2 and tp["bills_sent"] == 22 and tp["lost"] == []
    assert tp["bills"] == tp["bills_sent"] - tp["given_up_never_received"]
    assert tp["bills"] >= 11
    for c in ("meter_absent", "segments_missing", "not_bcd", "time_blank", "extra_bytes",
              "undecodable"):
        assert tp["by_class"].get(c, 0) >= 1, (c, tp["by_class"])
    assert rc == 0 and s["recovered"] and not s["stalled"] and s["tap_missed"] == 0, \
        {k: s.get(k) for k in ("recovered", "stalled", "tap_missed", "seconds", "executed",
                               "unsettled_on_piles", "examples")}
    assert s["sessions"] >= 1000 and s["bills"] == s["sessions"]
    # Every kind of fault really happened in this run, or it proved nothing.
    f = s["faults"]
    for k in ("bridge_kills", "broker_restarts", "platform_outages", "power_cuts_mid_session",
              "flash_cuts_torn_record", "corrupted_to_bridge", "corrupted_to_pile",
              "duplicated_to_bridge", "duplicated_to_pile", "reboots",
              "stops_after_session_ended"):
        assert f.get(k, 0) > 0, "no %s in this run: %s" % (k, f)
    assert f["stop_commands"] >= 2 * s["sessions"]
    # The intruders came (a rogue pile forging bills, fake logins, forged
    # confirmations on the broker), got nothing, and the bridge kept their
    # frames in quarantine and refused their logins and confirmations.
    for k in ("forge_bill", "fake_login", "forged_confirms"):
        assert f.get(k, 0) > 0, "no %s in this run: %s" % (k, f)
    assert s["intruder_wins"] == []
    assert s["quarantined"]["bills"] >= f["forge_bill"] and s["quarantined"]["fee_splits"] > 0
    assert s["logins_refused"] >= f["fake_login"]
    assert s["confirms_refused_unauthenticated"] > 0
    assert s["executed_starts_by"].get("card", 0) > 0
    assert s["executed_starts_by"].get("platform", 0) > 0
    assert s["stop_reasons"].get("power_loss", 0) > 0


def plant_forgotten_bill(monkeypatch):
    """A firmware bug: the first bill is reported sealed but never written.
    Returns the list that gets its serial."""
    seal = J.Journal.seal
    dropped = []

    def forgetful(self, serial, body):
        if not dropped:
            dropped.append(serial)
            return "sealed"
        return seal(self, serial, body)
    monkeypatch.setattr(J.Journal, "seal", forgetful)
    return dropped


@pytest.mark.slow
@needs_mosquitto
def test_the_verdict_fails_when_a_pile_forgets_a_bill(capsys, monkeypatch):
    dropped = plant_forgotten_bill(monkeypatch)
    rc, s = _run(capsys, "--piles", "2", "--sessions", "2", "--seed", "3", "--faults", "none",
                 "--recovery", "8")
    assert rc == 1 and not s["recovered"]
    assert s["lost"] == 1 and s["examples"]["lost"] == dropped


@needs_mosquitto
def test_the_verdict_fails_when_a_bill_is_changed_on_its_way(capsys, monkeypatch):
    # Between the pile and the platform's database a field of the bill changes.
    take = Platform.take_bill
    changed = []

    def tamper(self, doc):
        if not changed:
            changed.append(doc["serial"])
            doc["raw"]["stop_reason"] ^= 1
        return take(self, doc)
    monkeypatch.setattr(Platform, "take_bill", tamper)
    rc, s = _run(capsys, "--piles", "2", "--sessions", "2", "--seed", "4", "--faults", "none")
    assert rc == 1 and s["recovered"] and s["lost"] == 0
    assert s["mismatched"] == 1 and s["examples"]["mismatched"] == changed


@needs_mosquitto
def test_the_verdict_fails_when_an_intruder_gets_in(capsys):
    # Piles without keys: nothing tells the fake login from the pile, and
    # the bill it sends under the victim's code is acknowledged.
    rc, s = _run(capsys, "--piles", "2", "--sessions", "4", "--seed", "5", "--faults", "fake_login",
                 "--unkeyed", "--recovery", "30")
    assert rc == 1 and s["faults"]["fake_login"] == 1
    assert any(w.startswith("fake login as") for w in s["intruder_wins"]), s["intruder_wins"]
    assert any(w.startswith("forged bill") for w in s["intruder_wins"]), s["intruder_wins"]


def test_a_nats_cluster_loses_nothing_while_its_nodes_are_killed_and_restarted(capsys):
    # Issue 22: the same verdict through a 3-node NATS cluster (the bridge
    # and the platform fail over between nodes), with node kills during the
    # run. (Process faults run one after another at planned points of the
    # run; a short run may end before a later one: the rolling restart is
    # in the documented 1,000-session run, docs/chaos.md.)
    rc, s = _run(capsys, "--piles", "4", "--sessions", "15", "--seed", "9", "--cluster",
                 "--faults", "node_kill,power_cut", "--intensity", "12")
    assert {k: s[k] for k in VERDICT} == dict.fromkeys(VERDICT, 0), s.get("examples")
    assert rc == 0 and s["recovered"] and s["broker"] == "nats cluster, 3 nodes"
    assert s["faults"].get("node_kills", 0) > 0
    assert s["bills"] == s["sessions"] >= 60


def test_tally_names_lost_duplicated_phantom_and_unreconciled_bills():
    executed = {"A": b"h", "B": b"h", "C": b"h", "D": b"h"}
    sealed = {"C": [b"one", b"two"]}                          # C: two different bills
    rows = {"B": (1, 1, {}), "C": (1, 1, {}), "D": (0, 2, {}), "X": (1, 1, {})}
    t = tally(executed, {}, rows, conflicts={"D"})
    assert t["lost"] == ["A"] and t["phantom"] == ["X"] and t["unreconciled"] == ["D"]
    assert t["duplicated"] == ["D"]                          # the bridge saw two bills for D
    t = tally(executed, {"C": sealed["C"]}, {})       # sealed twice on the flash
    assert t["duplicated"] == ["C"] and t["lost"] == ["A", "B", "C", "D"]


def test_failed_on_anything_left_undone():
    ok = dict.fromkeys(VERDICT, 0)
    ok.update(recovered=True, tap_missed=0)
    assert not failed(ok)
    for k in VERDICT + ("tap_missed",):
        assert failed(dict(ok, **{k: 1})), k
    assert failed(dict(ok, recovered=False))


def test_bad_arguments_get_a_clear_error(capsys):
    for args in (["--faults", "meteor"], ["--piles", "0"]):
        with pytest.raises(SystemExit) as e:
            chaos.main(args)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown fault kind 'meteor'" in err and "--piles and --sessions" in err
