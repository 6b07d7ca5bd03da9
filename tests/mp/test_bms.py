# The charger side of GB/T 27930-2015 (firmware/bms.py) against the one
# simulated BMS (sim/bms.py) on the in-process queue bus, inside a pile
# running the real firmware (both interpreters, and on the board). Each
# scenario takes the bus as a parameter: tests/test_bms_can.py runs the same
# ones over python-can's virtual bus.
from firmware import bms as C
from firmware import session as S
from firmware.vinauth import CARD_FLEET, STOP_VIN_DENIED, VinPolicy, norm_card
from protocol import gbt27930 as G
from protocol import gbt27930_msgs as M
from protocol.reconcile import reconcile
from sim.bms import QueueBus, SimBms
from tests.mp.bmskit import BmsRig
from tests.mp.pilekit import serial
from tests.mp.util import rmtree, tmpdir

BUS_VIN = "LGBUS000000000001"
TAXI_VIN = "LTAXI000000000001"


def _rig(bus=None, **kw):
    return BmsRig(tmpdir("bms"), bus=bus, **kw)


def _one_bill(r, serial_):
    bills = r.platform.bills()
    assert len(bills) == 1, [b.fields["serial"] for b in bills]
    v = bills[0].fields
    assert v["serial"] == serial_
    extra = [f.fields for f in r.platform.named("bill_extra") if f.fields["serial"] == serial_]
    assert reconcile(v, extra[0] if extra else None) == []
    return v


def _charging(r, i=0):
    ch = r.charger(i)
    assert r.run(30000, lambda: ch.stage == C.CHARGING and r.bms(i).power > 0)
    return ch


def _ids(port):
    return [cid for cid, _ in port.sent]


# --- scenarios (also run over python-can by tests/test_bms_can.py) -------------------

def scenario_full_dialogue_to_charging_to_a_full_battery(bus=None):
    """The whole dialogue: CHM/BHM, CRM/BRM (the VIN through J1939 TP),
    BCP/CML, BRO/CRO, charging (BCL demand, BCS SOC, CCS), the BMS full (BST
    soc) -> CST, BSD, CSD; the bill sealed with stop reason 0x41 (SOC),
    its energy the battery's, reconciled."""
    with _rig(bus, profile={"capacity_wh": 2000, "soc": 50, "vin": BUS_VIN}) as r:
        r.online()
        r.start(serial(1))
        ch = _charging(r)
        assert ch.vin == BUS_VIN and ch.soc == 50
        assert ch.bcp["max_dv"] == 7500 and ch.max_power > 0
        assert ch.demand == G.bcl_watts(ch.bcl) > 0
        b = r.bms()
        assert [e for _, e in b.log[:5]] == ["handshake", "recognition", "parameters", "ready",
                                             "charging"]
        assert r.run(600000, lambda: r.platform.bills())
        v = _one_bill(r, serial(1))
        assert v["stop_reason"] == S.STOP_SOC and v["vin"] == BUS_VIN
        assert b.soc == 100 and v["total_energy"] >= 9800   # 1 kWh (50 % of 2 kWh), to 0.02 kWh
        assert r.run(15000, lambda: ch.stage == C.DONE and b.stage == 8)   # CSD answered BSD
        assert ch.bst == ["soc"] and b.cst == ["bms"]
        # the BMS data went up in YKC's BMS frames, under the trade serial
        up = [f for f in r.platform.frames if 0x15 <= f.code <= 0x25]
        names = [f.name for f in up]
        for n in ("bms_handshake", "bms_params", "bms_demand", "bms_info", "bms_abort",
                  "charger_abort", "bms_end"):
            assert n in names, (n, names)
        assert names.index("bms_handshake") < names.index("bms_params") < names.index("bms_demand")
        assert names.index("bms_abort") < names.index("charger_abort") < names.index("bms_end")
        assert all(f.fields["serial"] == serial(1) for f in up)
        hs = r.platform.named("bms_handshake")[0].fields
        assert hs["vin"] == BUS_VIN and hs["rated_voltage"] == 4000
        assert r.platform.named("bms_abort")[0].fields["abort_reason"] == 0x01     # BST: SOC
        assert r.platform.named("bms_end")[0].fields["soc"] == 100
        return r, ch, b


def scenario_a_silent_bms_ends_the_session_with_the_cem_and_a_bill(bus=None):
    """Charging, then the BMS stops answering: BCL lost for 1 s -> CEM
    (BCL timeout) on the bus, the session ended with YKC 0x85 within one
    BCL timeout (+ one CCS period), the energy delivered billed, reconciled."""
    with _rig(bus, profile={"capacity_wh": 20000, "soc": 20}) as r:
        r.online()
        r.start(serial(2))
        ch = _charging(r)
        r.run(5000)
        b = r.bms()
        b.silent = True
        t0 = r.clock.ticks_ms()
        assert r.run(10000, lambda: r.pile.gun.state == S.FINISHED)
        took = r.clock.ticks_ms() - t0
        assert 1000 < took <= 1100, took         # the standard: BCL lost for 1 s
        assert ch.cem == ("BCL",) and ch.stop_reason == C.YKC_BCL
        assert r.run(5000, lambda: r.platform.bills())
        v = _one_bill(r, serial(2))
        assert v["stop_reason"] == C.YKC_BCL and v["total_energy"] > 0
        r.run(2000)
        cem = M.encode_flags("CEM", ("BCL",))
        err = r.platform.named("bms_error")[0].fields                  # YKC 0x1B
        assert err["cem_bcs_bcl_bst"] == cem[2] == 0xC4    # BCL (bits 3-4) 01 and err["cem_brm"] == cem[0]
        return r, cem


def scenario_the_soc_target_stops_on_the_bms_soc(bus=None):
    """A start with an SOC target of 60 %: the session stops on the SOC the
    BMS reports in BCS (not on a fake), the charger sends CST."""
    with _rig(bus, profile={"capacity_wh": 20000, "soc": 50}) as r:
        r.online()
        r.start(serial(3), soc=60)
        ch = _charging(r)
        assert r.run(600000, lambda: r.platform.bills())
        v = _one_bill(r, serial(3))
        assert v["stop_reason"] == S.STOP_SOC
        assert ch.bcs["soc"] == 60 and r.bms().soc == 60
        assert r.run(15000, lambda: ch.stage == C.DONE)
        assert ch.cst == ("condition",) and ch.stop_reason == 0   # the pile stopped, not the BMS
        return r


def scenario_a_vin_rule_refuses_on_the_vin_from_brm(bus=None):
    """A fleet card bound to BUS_VIN, the vehicle's BRM says TAXI_VIN: the
    VIN rule of firmware/vinauth.py refuses (0x8A) on the VIN from BRM."""
    p = VinPolicy()
    p.set_vins([(BUS_VIN, "bus"), (TAXI_VIN, "taxi")])
    p.set_card(norm_card("D14B0A54"), CARD_FLEET, "bus", nameplate=BUS_VIN)
    with _rig(bus, profile={"vin": TAXI_VIN}, cfg={"vin_policy": p}) as r:
        r.online()
        r.start(serial(4))
        assert r.run(30000, lambda: r.platform.bills())
        v = _one_bill(r, serial(4))
        assert v["stop_reason"] == STOP_VIN_DENIED and v["vin"] == TAXI_VIN
        assert r.charger().brm["vin"] == TAXI_VIN
        return r


# --- the queue bus -----------------------------------------------------------------

def test_full_dialogue_to_charging_to_a_full_battery():
    r, ch, b = scenario_full_dialogue_to_charging_to_a_full_battery()
    ids = _ids(r.world.bus.charger)
    for name in ("CSD",):
        assert G.id_of(name) in ids
    assert G.make_id(7, G.TP_CM, G.BMS, G.CHARGER) in ids        # our CTS for BRM / BCS


def test_a_silent_bms_ends_the_session_with_the_cem_and_a_bill():
    r, cem = scenario_a_silent_bms_ends_the_session_with_the_cem_and_a_bill()
    assert (G.id_of("CEM"), cem) in r.world.bus.charger.sent


def test_the_soc_target_stops_on_the_bms_soc():
    scenario_the_soc_target_stops_on_the_bms_soc()


def test_a_vin_rule_refuses_on_the_vin_from_brm():
    scenario_a_vin_rule_refuses_on_the_vin_from_brm()


def _ends_with(profile, fault, reason, stage=None):
    with _rig(profile=profile) as r:
        r.online()
        r.start(serial(5))
        if stage is None:
            _charging(r)
            fault(r.bms())
        else:
            fault(r.bms())
        assert r.run(60000, lambda: r.pile.gun.state == S.FINISHED)
        r.stopped_at = r.clock.ticks_ms()
        assert r.run(5000, lambda: r.platform.bills())
        v = _one_bill(r, serial(5))
        assert v["stop_reason"] == reason, hex(v["stop_reason"])
        return r, v


def test_every_bms_stop_and_timeout_maps_to_its_ykc_stop_reason():
    # BST faults while charging
    _ends_with({}, lambda b: b.stop(("insulation",)), C.YKC_BATTERY)
    _ends_with({}, lambda b: b.stop(("battery_temp",)), C.YKC_PACK_TEMP)
    _ends_with({}, lambda b: b.stop(("connector_temp",)), C.YKC_TEMP)
    _ends_with({}, lambda b: b.stop(("overcurrent",)), C.YKC_CURRENT)
    _ends_with({}, lambda b: b.stop(("voltage",)), S.STOP_SOC)
    # BSM alarms
    _ends_with({}, lambda b: b.alarm("overtemp"), C.YKC_PACK_TEMP)
    _ends_with({}, lambda b: b.alarm("cell_high"), C.YKC_CELL)
    # a BST in each stage before charging: a start failure, nothing billed
    # (at "BCL": on CRO 0xAA, before its first BCL: still the start)
    for at in ("BHM", "BRM", "BCP", "BRO", "BCL"):
        r, v = _ends_with({}, lambda b: b.stop(("insulation",), at=at), C.YKC_FAIL_INSULATION,
                          stage=at)
        assert v["total_energy"] == 0
    _ends_with({}, lambda b: b.stop(("battery_temp",), at="BRO"), C.YKC_FAIL_TEMP, stage="BRO")
    _ends_with({}, lambda b: b.stop(("relay",), at="BCP"), C.YKC_FAIL_BMS, stage="BCP")
    # BRO 0xAA taken back (0x00) while we precharge: 0x62
    _ends_with({}, lambda b: setattr(b, "bro_back", True), C.YKC_FAIL_BRO_BACK, stage="BRO")
    # the BMS reports a timeout on us (BEM), while charging and before
    _ends_with({}, lambda b: b.bem(("CCS",)), C.YKC_CCS)
    _ends_with({}, lambda b: b.bem(("CRMAA",)), C.YKC_FAIL_CONTROL, stage="BEM")
    # silent from a stage on: the timeout of what it no longer sends
    # (the standard's timeout from the stage the BMS fell silent in, acted on
    # within one period of the message waited for: 250 ms, BCL 50 ms)
    for at, reason, stage, limit, period in (
            ("BRM", C.YKC_FAIL_BRM, "recognition", 5000, 250),
            ("BCP", C.YKC_FAIL_BCP, "parameters", 5000, 250),
            ("BRO", C.YKC_FAIL_BRO, "ready", 5000, 250),
            ("BCL", C.YKC_FAIL_BCL, "charging", 1000, 50)):
        r, v = _ends_with({}, lambda b: setattr(b, "silent_at", at), reason, stage=at)
        assert v["total_energy"] == 0      # nothing flowed before charging
        since = [ms for ms, e in r.bms().log if e == stage][0]
        took = r.stopped_at - since
        assert limit < took <= limit + period + 50, (at, took)


def test_an_insulation_fault_fails_the_start_before_recognition():
    with _rig() as r:
        r.world.imd.fault = True
        r.online()
        r.start(serial(15))
        assert r.run(10000, lambda: r.platform.bills())
        v = _one_bill(r, serial(15))
        assert v["stop_reason"] == C.YKC_FAIL_INSULATION and v["total_energy"] == 0
        ch = r.charger()
        assert ch.brm is None and r.world.imd.checks == 1     # no CRM was sent
        assert "recognition" not in [e for _, e in r.bms().log]


def test_a_bms_stop_is_acted_on_within_one_poll():
    with _rig() as r:
        r.online()
        r.start(serial(6))
        ch = _charging(r)
        r.bms().stop(("insulation",))
        t0 = r.clock.ticks_ms()
        assert r.run(2000, lambda: r.pile.gun.state == S.FINISHED)
        assert r.clock.ticks_ms() - t0 <= 150    # the BST's period (10 ms) + one CCS poll
        assert not r.world.contactor.closed and ch.stop_reason == C.YKC_BATTERY


def test_a_remote_stop_sends_cst_and_the_dialogue_ends_with_the_statistics():
    with _rig() as r:
        r.online()
        r.start(serial(7))
        ch = _charging(r)
        r.stop()
        assert r.run(15000, lambda: ch.stage == C.DONE)
        assert ch.cst == ("condition",) and ch.bst == ["charger"] and ch.stop_reason == 0
        assert r.bms().stage == 8                 # BSD sent, CSD received
        v = _one_bill(r, serial(7))
        assert v["stop_reason"] == S.STOP_REMOTE
        # a second session on the same plug-in starts a new dialogue
        r.start(serial(8))
        _charging(r)
        assert ch.stages == 2


def test_the_bcl_is_the_demand_power_sharing_divides():
    # two guns, 60 kW: a BMS asking for 20 kW gets it, the other the rest
    r = _rig(guns=2, sharing=True, power_w=60000,
             profile=[{"max_power": 20000}, {"max_power": 100000}])
    try:
        r.online()
        r.start(serial(9, "01"), gun="01")
        r.start(serial(10, "02"), gun="02")
        _charging(r, 0)
        _charging(r, 1)
        r.run(3000)
        sh = r.pile.sharing
        # each gun's demand is its BMS's BCL (W), within the gun's rating
        assert sh.demand == [r.charger(0).demand, min(r.charger(1).demand, 60000)]
        assert 19000 <= sh.demand[0] <= 20000 and r.charger(1).demand > 60000
        assert sh.share[0] == sh.demand[0] and sh.share[0] + sh.share[1] == 60000
        assert r.bms(1).power <= sh.share[1]
    finally:
        rmtree(r.root)


def test_the_bms_side_answers_a_scripted_charger():
    # the model alone, driven frame by frame over the queue bus
    bus = QueueBus()

    class K:
        closed = False

    b = SimBms(bus.bms, K(), vin=BUS_VIN)
    ch = bus.charger
    ch.send(M.encode("CHM", ver0=1, ver1=1, ver2=0), G.id_of("CHM"))
    b.advance(10)
    assert ch.recv(0)[0] == G.id_of("BHM")
    ch.send(M.encode("CRM", result=0), G.id_of("CRM"))
    b.advance(10)
    m = ch.recv(0)
    assert m[0] == 0x1CEC56F4 and m[3][:4] == bytes((0x10, 49, 0, 7))   # BRM's RTS
    ch.send(G.tp_cts(0x0200, 7, 1), G.make_id(7, G.TP_CM, G.BMS, G.CHARGER))
    b.advance(10)
    data = b""
    while ch.any(0):
        data += ch.recv(0)[3][1:]
    assert G.decode_brm(data[:49])["vin"] == BUS_VIN


def test_a_power_cut_while_charging_bills_0x83_and_the_next_start_has_a_new_dialogue():
    with _rig(profile={"capacity_wh": 20000}) as r:
        r.online()
        r.start(serial(11))
        ch = _charging(r)
        r.run(70000)                       # past a checkpoint
        r.power_cut()
        r.online()
        assert r.run(30000, lambda: r.platform.bills())
        v = _one_bill(r, serial(11))
        assert v["stop_reason"] == S.ABORT_POWER_LOSS and v["total_energy"] > 0
        # the charger saw its contactor drop: CST, then the dialogue ends
        assert r.run(15000, lambda: ch.stage == C.DONE) and ch.cst == ("condition",)
        r.start(serial(12))
        _charging(r)
        assert ch.stages == 2 and ch.stop_reason == 0


def test_unplugging_ends_the_dialogue_and_the_session():
    with _rig() as r:
        r.online()
        r.start(serial(13))
        ch = _charging(r)
        r.bms().plugged = False
        assert r.run(5000, lambda: r.platform.bills())
        assert _one_bill(r, serial(13))["stop_reason"] == S.ABORT_PILOT
        assert ch.stage == C.IDLE and r.bms().power == 0


def test_a_bms_pause_holds_the_power_at_zero_and_ten_minutes_of_it_end_the_charge():
    with _rig(profile={"capacity_wh": 200000}) as r:
        r.online()
        r.start(serial(14))
        ch = _charging(r)
        b = r.bms()
        b.forbid = True                       # BSM: charging not permitted
        r.run(2000)
        assert ch.paused and ch.demand == 0 and b.power == 0
        r.run(120000)                         # 2 min at 0 W: not "no current" (0x76)
        assert r.pile.gun.state == S.CHARGING
        b.forbid = False
        r.run(3000)
        assert not ch.paused and b.power > 0 and ch.demand > 0
        b.forbid = True
        for _ in range(12):                   # a minute at a time, the platform's
            if r.run(60000, lambda: r.platform.bills()):    # frames trimmed (heap)
                break
            r.platform.frames = [f for f in r.platform.frames if f.code < 0x12]
        v = _one_bill(r, serial(14))
        assert v["stop_reason"] == C.YKC_FORBIDDEN
        assert r.clock.ticks_ms() - ch._pause_t >= 600000


def test_garbage_on_the_bus_never_faults_the_pile():
    # random frames from the BMS's address (every PGN of the table, TP, short
    # and empty payloads) and a meter reading out of CCS's range: the pile's
    # main loop never faults (a fault would seal the session with 0x90)
    with _rig(profile={"capacity_wh": 200000}) as r:
        r.online()
        r.start(serial(16))
        ch = _charging(r)
        ch.measure = lambda: (70000, 9000)        # 7000 V, 900 A: past CCS's fields
        r.run(1000)
        assert r.pile.loop_faults == 0 and ch.stage == C.CHARGING
        port = r.world.bus.charger
        pgns = [m.pgn for m in G.BY_NAME.values()] + [G.TP_CM, G.TP_DT]
        x = 12345
        for i in range(400):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            pgn = pgns[x % len(pgns)]
            n = (x >> 8) % 10
            data = bytes(((x >> (3 * k)) & 0xFF for k in range(n)))
            port.inbox.append((G.make_id(6, pgn, G.CHARGER, G.BMS), False, 0, data))
            r.run(20)
        assert r.pile.loop_faults == 0
        assert r.run(60000, lambda: r.platform.bills())    # whatever it ended with
        v = _one_bill(r, serial(16))
        assert v["stop_reason"] != 0x90


def test_one_bem_before_charging_restarts_recognition_and_the_charge_goes_on():
    with _rig(profile={"bro_wait_ms": 3000}) as r:
        r.online()
        r.start(serial(17))
        ch = r.charger()
        b = r.bms()
        assert r.run(10000, lambda: b.stage == 4)          # the BMS in BRO (ready)
        b.bem(("CRO",), once=True)                          # it timed out on our CRO
        _charging(r)
        assert ch._restarts == 1 and ch.bem == ["CRO"] and ch.stop_reason == 0
        stages = [e for _, e in b.log]
        assert stages.count("recognition") == 2             # CRM 0x00 again, BRM again
        r.stop()
        assert r.run(10000, lambda: r.platform.bills())
        assert _one_bill(r, serial(17))["stop_reason"] == S.STOP_REMOTE
        # the BMS data of the restart went up too (0x1B)
        assert r.platform.named("bms_error")


def test_a_bem_that_keeps_coming_ends_the_start_after_three_recognitions():
    with _rig(profile={"bro_wait_ms": 3000}) as r:
        r.online()
        r.start(serial(18))
        b = r.bms()
        assert r.run(10000, lambda: b.stage == 4)
        b.bem(("CRO",))                                     # for good
        assert r.run(30000, lambda: r.platform.bills())
        v = _one_bill(r, serial(18))
        assert v["stop_reason"] == C.YKC_FAIL_CONTROL and v["total_energy"] == 0
        assert r.charger()._restarts == 3
