# The GB/T 27930 charger side (firmware/bms.py) and the simulated BMS
# (sim/bms.py) on python-can's virtual bus: the scenarios of
# tests/mp/test_bms.py over a real python-can bus, with a third python-can
# listener on the same channel checking the ids, bytes and periods that
# went over it (what a CAN logger on the gun's cable would see).
import itertools

import can

from protocol import gbt27930 as G
from protocol import gbt27930_msgs as M
from sim.bms import VirtualBus, open_bus
from sim.scenario import run_scenario
from sim.scenario_file import ScenarioError, load_scenario, parse_scenario
from tests.mp import test_bms as T

_n = itertools.count()


class _Listener:
    """Every frame on `channel`, in the order sent."""

    def __init__(self, channel):
        self.bus = can.Bus(interface="virtual", channel=channel)
        self.frames = []

    def drain(self):
        while True:
            m = self.bus.recv(timeout=0)
            if m is None:
                return self.frames
            self.frames.append((m.arbitration_id, bytes(m.data)))


def _over_virtual_bus(scenario, tag):
    """Run a tests/mp/test_bms.py scenario with every gun on a python-can
    virtual bus; returns (its result, every frame a listener saw)."""
    channel = "pile-bms-%s-%d" % (tag, next(_n))
    made = []

    def bus():
        b = VirtualBus(channel)
        made.append(b)
        return b
    spy = _Listener(channel)
    try:
        out = scenario(bus)
        return out, spy.drain()
    finally:
        for b in made:
            b.close()
        spy.bus.shutdown()


def _ids(frames):
    return set(cid for cid, _ in frames)


def test_full_dialogue_to_charging_to_a_full_battery_over_the_virtual_bus():
    _, frames = _over_virtual_bus(T.scenario_full_dialogue_to_charging_to_a_full_battery, "full")
    ids = _ids(frames)
    for name in ("CHM", "BHM", "CRM", "CTS", "CML", "BRO", "CRO", "BCL", "CCS", "BSM",
                 "BST", "CST", "BSD", "CSD"):
        assert G.id_of(name) in ids, name
    # BRM and BCS went through J1939 TP: the captured ids
    assert {0x1CEC56F4, 0x1CECF456, 0x1CEB56F4} <= ids
    # recognition: CRM 0x00 before CRM 0xAA, and the BRM's RTS is 49 bytes in 7 packets
    crm = [d[0] for cid, d in frames if cid == G.id_of("CRM")]
    assert crm[0] == 0x00 and crm[-1] == 0xAA
    assert any(cid == 0x1CEC56F4 and d[:4] == bytes((0x10, 49, 0, 7)) for cid, d in frames)
    # the BMS's stop was "SOC reached"; the charger answered "BMS stopped"
    bst = [d for cid, d in frames if cid == G.id_of("BST")]
    cst = [d for cid, d in frames if cid == G.id_of("CST")]
    assert M.decode_flags("BST", bst[0]) == ["soc"] and M.decode_flags("CST", cst[0]) == ["bms"]


def test_a_bms_that_stops_answering_gets_a_cem_and_the_session_ends_with_a_bill():
    (r, cem), frames = _over_virtual_bus(
        T.scenario_a_silent_bms_ends_the_session_with_the_cem_and_a_bill, "silent")
    assert G.id_of("CEM") == 0x081FF456                     # charger to BMS
    assert (G.id_of("CEM"), cem) in frames                  # BCL timeout
    # after the first CEM no more CCS: the output is off
    first_cem = min(i for i, f in enumerate(frames) if f[0] == G.id_of("CEM"))
    assert not [f for f in frames[first_cem:] if f[0] == G.id_of("CCS")]


def test_the_soc_target_stops_on_the_bms_soc_over_the_virtual_bus():
    _, frames = _over_virtual_bus(T.scenario_the_soc_target_stops_on_the_bms_soc, "soc")
    assert [d for cid, d in frames if cid == 0x1CEB56F4]     # BCS rides TP (9 bytes)
    cst = [d for cid, d in frames if cid == G.id_of("CST")]
    assert M.decode_flags("CST", cst[0]) == ["condition"]


def test_a_vin_rule_refuses_on_the_vin_from_brm_over_the_virtual_bus():
    _, frames = _over_virtual_bus(T.scenario_a_vin_rule_refuses_on_the_vin_from_brm, "vin")
    # the VIN travelled in BRM's TP.DT packets 4..6 (bytes 25..41)
    dt = b"".join(d[1:] for cid, d in frames if cid == 0x1CEB56F4 and 1 <= d[0] <= 7)
    assert T.TAXI_VIN.encode() in dt


def test_buses_open_by_url():
    b = open_bus("virtual://pile-bms-url")
    try:
        b.charger.send(M.encode("CHM", ver0=1, ver1=1, ver2=0), G.id_of("CHM"))
        assert b.bms.any(0) and b.bms.recv(0)[0] == 0x1826F456
        assert not b.bms.any(0)
    finally:
        b.close()
    assert open_bus("queue://").bms.any(0) is False


def test_pile_sim_runs_two_guns_each_with_its_bms_on_the_virtual_bus():
    # tools/scenarios/two_guns_bms.json: an SOC target on BCS, a silent BMS
    # (CEM, 0x85), a BST insulation fault (0x81), a BMS abort in the
    # parameter stage (0x57) and a power cut (0x83), one
    # reconciling bill per executed start, on the gun that started it
    res = run_scenario(load_scenario("tools/scenarios/two_guns_bms.json"))
    assert res["ok"], res["problems"]
    got = [(b["gun"], b["stop_reason_hex"]) for b in res["bills"]]
    assert got == [("01", "0x41"), ("02", "0x85"), ("02", "0x81"), ("01", "0x57"), ("01", "0x83")]
    assert all(b["reconcile"]["ok"] for b in res["bills"])
    assert [b["vin"] for b in res["bills"][1:3]] == ["LSVAU2180N2183294", "LGBUS000000000001"]
    faults = [e for e in res["events"] if e["event"] == "bms_fault"]
    assert [(e["gun"], e["fault"]) for e in faults] == [("02", "silent"), ("02", "stop"),
                                                        ("01", "stop")]
    assert res["bills"][3]["total_energy"] == 0      # the abort before charging


def test_a_bms_action_needs_a_bms_pile_and_a_known_fault():
    base = {"piles": [{"guns": 2}], "tariff": {"model": "0001", "prices": {"flat": [70000, 40000]},
                                              "slots": [{"from": "00:00", "to": "24:00",
                                                         "class": "flat"}]}}
    for tl, msg in (([{"do": "bms", "fault": "silent"}], "needs a pile with"),
                    ([{"do": "start", "gun": 3}], "timeline[0].gun")):
        d = dict(base, timeline=tl)
        try:
            parse_scenario(d)
        except ScenarioError as e:
            assert msg in str(e), e
        else:
            raise AssertionError("accepted %r" % tl)
    d = dict(base, timeline=[{"do": "bms", "fault": "melt"}])
    d["piles"] = [{"bms": True}]
    try:
        parse_scenario(d)
        raise AssertionError("accepted fault melt")
    except ScenarioError as e:
        assert "fault" in str(e)


_FLAT = {"model": "0001", "prices": {"flat": [70000, 40000]},
         "slots": [{"from": "00:00", "to": "24:00", "class": "flat"}]}


def test_a_scenario_car_brings_its_battery_profile_and_a_bms_silent_in_a_stage():
    # gun 1: a 20 kWh car at 60 % whose BMS ends the charge itself at 70 %
    # (BST "soc", 0x41 with no target); gun 2's car falls silent on reaching
    # recognition (no BRM: CEM, start failure 0x5A, nothing flowed); its next
    # car (the battery profile of a plug action) charges
    car = {"capacity": "20", "soc": 60, "vin": "LSVAU2180N2183294",
           "bms": {"voltage_dv": 6500, "max_dv": 7500, "max_da": 2000, "taper_soc": 65,
                   "stop_soc": 70}}
    sc = parse_scenario({"tariff": _FLAT, "piles": [{"guns": 2, "bms": True, "vehicle": car}],
                         "timeline": [
                             {"at": "0s", "do": "plug", "gun": 1},
                             {"at": "0s", "do": "plug", "gun": 2},
                             {"at": "1s", "do": "bms", "gun": 2, "fault": "silent",
                              "stage": "BRM"},
                             {"at": "5s", "do": "start", "gun": 1},
                             {"at": "5s", "do": "start", "gun": 2},
                             {"at": "1m", "do": "unplug", "gun": 2},
                             {"at": "70s", "do": "plug", "gun": 2,
                              "vehicle": {"soc": 50, "bms": {"stop_soc": 52}}},
                             {"at": "80s", "do": "start", "gun": 2}]})
    res = run_scenario(sc)
    assert res["ok"], res["problems"]
    got = [(b["gun"], b["stop_reason_hex"]) for b in res["bills"]]
    assert sorted(got) == [("01", "0x41"), ("02", "0x41"), ("02", "0x5A")], got
    one = [b for b in res["bills"] if b["gun"] == "01"][0]
    # 60 % -> 70 % of 20 kWh through the meter (its 0.01 kWh steps)
    assert 19500 <= one["total_energy"] <= 20500, one["total_energy"]
    silent = [b for b in res["bills"] if b["stop_reason_hex"] == "0x5A"][0]
    assert silent["total_energy"] == 0
    assert all(b["reconcile"]["ok"] for b in res["bills"])


def test_a_battery_profile_is_checked():
    for veh, pile, msg in (({"bms": {"volts": 1}}, {"bms": True}, "unknown key 'volts'"),
                           ({"bms": {"max_da": 0}}, {"bms": True}, "max_da"),
                           ({"bms": {"stop_soc": 80}}, {}, 'needs "bms": true')):
        try:
            parse_scenario({"tariff": _FLAT, "piles": [dict(pile, vehicle=veh)]})
        except ScenarioError as e:
            assert msg in str(e) and "piles[0].vehicle.bms" in str(e), e
        else:
            raise AssertionError("accepted %r" % veh)
    tl = [{"do": "plug", "vehicle": {"bms": {"taper_soc": 70}}}]
    try:
        parse_scenario({"tariff": _FLAT, "piles": [{}], "timeline": tl})
        raise AssertionError("accepted a battery profile on a pile without a BMS")
    except ScenarioError as e:
        assert "timeline[0].vehicle.bms" in str(e), e
