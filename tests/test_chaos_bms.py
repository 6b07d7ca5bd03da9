"""pile-chaos --bms (tools/chaos.py, sim/chaos_fleet.py, docs/chaos.md): each
pile's gun talks GB/T 27930 to a simulated car's BMS over python-can's
virtual bus (sim/bms.py; a new car with a random battery every session),
with the BMS's faults (a BST, a BSM alarm, a BEM, silence, an abort before
charging) among the others; the same custody verdict as tests/test_chaos.py,
and proof that it still counts a lost bill."""
import pytest

from firmware import bms as B
from sim.scenario_file import STOP_NAMES
from tests.test_chaos import VERDICT, _run, needs_mosquitto, plant_forgotten_bill

# the YKC stop reasons only the BMS dialogue gives (firmware/bms.py, docs/bms.md)
BMS_STOPS = set(STOP_NAMES.get(c, "0x%02X" % c) for c in (
    B.YKC_FAIL_BMS, B.YKC_FAIL_TEMP, B.YKC_FAIL_INSULATION, B.YKC_FAIL_BRM, B.YKC_FAIL_BCP,
    B.YKC_FAIL_BRO, B.YKC_FAIL_BCS, B.YKC_FAIL_BCL, B.YKC_FAIL_BRO_BACK, B.YKC_FAIL_CONTROL,
    B.YKC_TEMP, B.YKC_VOLTAGE, B.YKC_CURRENT, B.YKC_CELL, B.YKC_PACK_TEMP, B.YKC_BATTERY,
    B.YKC_FORBIDDEN, B.YKC_BCS, B.YKC_BCL, B.YKC_BSM, B.YKC_CCS))


@pytest.mark.slow
@needs_mosquitto
def test_piles_charging_cars_over_their_bms_lose_duplicate_and_misreconcile_nothing(capsys):
    rc, s = _run(capsys, "--piles", "3", "--sessions", "6", "--seed", "5", "--bms",
                 "--minutes", "3", "--intensity", "4",
                 "--faults", "bms_fault,power_cut,flash_cut,corrupt,duplicate,bridge_kill")
    assert {k: s[k] for k in VERDICT} == dict.fromkeys(VERDICT, 0), s.get("examples")
    assert rc == 0 and s["recovered"] and not s["stalled"] and s["tap_missed"] == 0
    assert s["bms"] is True and s["bills"] == s["sessions"] >= 18
    f = s["faults"]
    # new cars came (each pile's first car is there from the start), and
    # BMS faults hit sessions while they charged
    assert f.get("bms_cars", 0) >= s["sessions"] // 2, f
    assert f.get("bms_faults_mid_charge", 0) > 0, f
    assert sum(n for k, n in f.items() if k.startswith(("bms_stop", "bms_alarm", "bms_silent",
                                                         "bms_bem"))) >= 3, f
    # the bills say so: stop reasons only the GB/T 27930 dialogue gives
    from_bms = dict((k, n) for k, n in s["stop_reasons"].items() if k in BMS_STOPS)
    assert sum(from_bms.values()) >= 2, s["stop_reasons"]


@pytest.mark.slow
@needs_mosquitto
def test_the_bms_run_counts_a_bill_a_pile_forgets(capsys, monkeypatch):
    dropped = plant_forgotten_bill(monkeypatch)   # sealed, never written
    rc, s = _run(capsys, "--piles", "2", "--sessions", "2", "--seed", "3", "--bms",
                 "--faults", "none", "--recovery", "8")
    assert s["bms"] is True and s["faults"].get("bms_cars", 0) > 0
    assert rc == 1 and not s["recovered"]
    assert s["lost"] == 1 and s["examples"]["lost"] == dropped
