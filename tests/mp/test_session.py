# Charge sessions (firmware/session.py) on simulated hardware (sim/hardware.py),
# under CPython and MicroPython. Named after shared/context/field-cases.md.
from firmware import session as S
from firmware import tariff as T
from firmware.realtime import Cadence
from firmware.session import Gun, rebuild_bill
from sim.hardware import SimWorld
from firmware.tariff import Tariff, fee
from protocol import fields as F
from tests.mp.util import raises

PILE = "55031412782305"
T0 = F.to_secs(2024, 3, 5, 10, 0, 0)
FLAT = Tariff.flat("0001", 80000, 40000)  # 1.20 yuan/kWh


def serial(n):
    return PILE + "01" + "240305100000" + "%04d" % n


class Journal:
    """Records the callbacks as the bill journal would: headers, the last
    checkpoint of each session (and the largest gaps between two), bills."""

    def __init__(self):
        self.headers = {}
        self.ckpt = {}     # serial -> last checkpoint payload
        self.count = {}    # serial -> number of checkpoints
        self.gap = {}      # serial -> (largest energy step, largest time step)
        self.bills = []
        self.late = []

    def open(self, s, h):
        assert s not in self.headers, "second on_open for " + s
        self.headers[s] = h
        self.count[s] = 0
        self.gap[s] = (0, 0)

    def checkpoint(self, s, p):
        c = S.decode_checkpoint(p)
        if s in self.ckpt:
            prev = S.decode_checkpoint(self.ckpt[s])
            ge, gt = self.gap[s]
            self.gap[s] = (max(ge, c["meter"] - prev["meter"]), max(gt, c["time"] - prev["time"]))
        self.ckpt[s] = p
        self.count[s] += 1

    def seal(self, s, b):
        self.bills.append(b)

    def start_reply(self, s, result, reason):
        self.late.append((s, result, reason))

    def bills_for(self, s):
        return [b for b in self.bills if b["serial"] == s]


def make(kw=60000, tariff=FLAT, now=T0, capacity_wh=300000, soc=10, ticks=0, wrap=0,
         meter=None, **gun_kw):
    w = SimWorld(now=now, pile_max_w=kw, capacity_wh=capacity_wh, soc=soc,
                 vin="LSVAU2180N2183294", meter_start=12345600, ticks=ticks, wrap=wrap)
    j = Journal()
    counter = [0]

    def next_serial():
        counter[0] += 1
        return counter[0]

    if meter is not None:
        meter = meter(w)
    g = Gun(PILE, "01", w.clock, meter or w.meter, w.contactor, w.vehicle, tariff,
            next_serial=next_serial, on_open=j.open, on_checkpoint=j.checkpoint, on_seal=j.seal,
            on_start_reply=j.start_reply, max_power_w=kw, **gun_kw)
    return w, g, j


def finished(g):
    return lambda: g.state == S.FINISHED


def adds_up(b):
    n = 5 if "deep_energy" in b else 4
    te = ta = tef = tsf = tl = 0
    for c in range(n):
        k = T.CLASSES[c]
        assert b[k + "_amount"] == b[k + "_energy_fee"] + b[k + "_service_fee"], k
        te += b[k + "_energy"]
        tl += b[k + "_loss"]
        ta += b[k + "_amount"]
        tef += b[k + "_energy_fee"]
        tsf += b[k + "_service_fee"]
    assert b["total_energy"] == te == b["meter_stop"] - b["meter_start"]
    assert b["total_loss"] == tl
    assert b["total_amount"] == ta == tef + tsf == b["energy_fee"] + b["service_fee"]
    return True


BILL_KEYS = ("serial", "pile", "gun", "start_time", "end_time", "meter_start", "meter_stop",
             "total_energy", "total_loss", "total_amount", "vin", "trade_flag", "trade_time",
             "stop_reason", "card", "energy_fee", "service_fee", "vin_mismatch", "nameplate_vin")


# --- field case §1: stops sent 2 or 3 times lost bills -------------------------

def test_triple_stop_yields_one_bill():
    w, g, j = make()
    assert g.remote_start(serial(1), card="D14B0A54", balance=100000) == (1, 0)
    w.run(g, 120000)
    assert g.remote_stop(PILE) == (1, S.STOPR_NONE)
    bill = g.bill
    assert g.remote_stop(PILE) == (0, S.STOPR_NOT_CHARGING)
    w.run(g, 2000)
    assert g.remote_stop(PILE) == (0, S.STOPR_NOT_CHARGING)
    assert len(j.bills) == 1 and g.bills == 1 and g.bill is bill
    b = j.bills[0]
    assert b["stop_reason"] == S.STOP_REMOTE and b["total_energy"] > 0 and adds_up(b)
    for k in BILL_KEYS:
        assert k in b, k
    assert b["card"] == "00000000D14B0A54" and b["gun"] == "01" and b["trade_flag"] == 1


def test_stop_after_auto_stop_yields_one_bill():
    # The field's root cause: the pile auto-stopped at full, then got a manual stop.
    w, g, j = make(kw=60000, capacity_wh=20000, soc=95)
    g.remote_start(serial(2), balance=100000)
    w.run(g, 3600000, until=finished(g))
    assert j.bills[0]["stop_reason"] == S.STOP_SOC
    assert g.remote_stop(PILE) == (0, S.STOPR_NOT_CHARGING)
    assert g.remote_stop(PILE, serial(2)) == (0, S.STOPR_NOT_CHARGING)
    assert not g.manual_stop()
    assert g.remote_stop("99999999999999") == (0, S.STOPR_UNKNOWN_PILE)
    assert len(j.bills) == 1 and adds_up(j.bills[0])


def test_stop_for_unknown_session_changes_nothing():
    w, g, j = make()
    assert g.remote_stop(PILE) == (0, S.STOPR_NOT_CHARGING)
    g.remote_start(serial(3), balance=100000)
    w.run(g, 5000)
    assert g.remote_stop(PILE, serial(99)) == (0, S.STOPR_NOT_CHARGING)
    assert g.state == S.CHARGING and j.bills == []
    g.remote_stop(PILE, serial(3))
    assert len(j.bills) == 1


def test_repeated_start_same_serial_is_idempotent():
    w, g, j = make()
    assert g.remote_start(serial(4), balance=100000) == (1, 0)
    w.run(g, 10000)
    before = g.trade.acc.total()
    assert g.remote_start(serial(4), balance=100000) == (1, 0)     # our 0x33 was lost
    assert g.remote_start(serial(5), balance=100000) == (0, S.START_BUSY)
    assert g.trade.h["serial"] == serial(4) and g.trade.acc.total() == before
    g.remote_stop()
    assert g.remote_start(serial(4), balance=100000) == (1, 0)     # after the end: same answer
    assert g.state == S.FINISHED and len(j.bills) == 1 and len(j.headers) == 1
    # A new serial on the still-plugged vehicle is a new session with its own bill.
    assert g.remote_start(serial(6), balance=100000) == (1, 0)
    g.remote_stop()
    assert [b["serial"] for b in j.bills] == [serial(4), serial(6)]


def test_failed_start_yields_bill():
    # YKC: an executed start that fails still sends a bill (0x4A..0x69, zero energy).
    w, g, j = make()
    w.contactor.fail_close = True
    assert g.remote_start(serial(10), balance=100000) == (0, S.START_FAULT)
    w.contactor.fail_close = False
    w.meter.silent = True
    assert g.remote_start(serial(11), balance=100000) == (0, S.START_FAULT)
    w.meter.silent = False
    assert g.remote_start(serial(12), balance=0) == (0, S.START_NONE)
    reasons = [b["stop_reason"] for b in j.bills]
    assert reasons == [S.FAIL_CLOSE, S.FAIL_METER, S.FAIL_BALANCE]
    for b in j.bills:
        assert S.is_start_failure(b["stop_reason"])
        assert b["total_energy"] == 0 and b["total_amount"] == 0 and adds_up(b)
    # Asked again, each failed serial gets its first answer and no second bill.
    assert g.remote_start(serial(10), balance=100000) == (0, S.START_FAULT)
    assert g.remote_start(serial(12), balance=0) == (0, S.START_NONE)
    assert len(j.bills) == 3 == len(j.headers)
    assert not w.contactor.closed


def test_refused_start_is_not_executed_and_has_no_bill():
    w, g, j = make(tariff=None)
    assert g.remote_start(serial(13)) == (0, S.START_FAULT)
    assert g.remote_start(serial(13), pile="11111111111111") == (0, S.START_WRONG_PILE)
    assert j.bills == [] and j.headers == {}


def test_remote_start_before_plug_starts_when_plugged_within_60s():
    w, g, j = make()
    w.vehicle.plugged = False
    g.tick()
    assert g.remote_start(serial(14), balance=100000) == (0, S.START_NOT_PLUGGED)
    assert g.remote_start(serial(14), balance=100000) == (0, S.START_NOT_PLUGGED)
    w.run(g, 20000)
    w.vehicle.plugged = True
    w.run(g, 3000)
    assert g.state == S.CHARGING and j.late == [(serial(14), 1, 0)]
    g.remote_stop()
    # Not plugged in time: nothing starts, nothing is billed.
    w.vehicle.plugged = False
    w.run(g, 2000)
    assert g.remote_start(serial(15), balance=100000) == (0, S.START_NOT_PLUGGED)
    w.run(g, 61000)
    w.vehicle.plugged = True
    w.run(g, 3000)
    assert g.state == S.PLUGGED and len(j.bills) == 1 and len(j.late) == 1


# --- field case §2: limits enforced on the pile at meter speed ---------------------

def amount_session(kw, target=10000, balance=1000000, **kw2):
    w, g, j = make(kw=kw, **kw2)
    assert g.remote_start(serial(20), balance=balance, amount=target) == (1, 0)
    w.run(g, 4 * 3600000, until=finished(g))
    assert len(j.bills) == 1
    return j.bills[0]


def one_period_money(kw, ms=1000, price=120000):
    # The energy of one sample at the predicted power (+1/16) plus the stop lag,
    # plus two register steps (the start and stop readings' resolution).
    e = (kw + kw // 16) * (ms + 100) // 360000 + 200
    return fee(e, price)


def test_one_yuan_at_60kw_is_never_exceeded():
    b = amount_session(60000)
    assert b["stop_reason"] == S.STOP_AMOUNT and adds_up(b)
    assert b["total_amount"] <= 10000
    assert 10000 - b["total_amount"] <= one_period_money(60000)


def test_one_yuan_is_never_exceeded_at_7_120_and_250_kw():
    for kw in (7000, 120000, 250000):
        b = amount_session(kw)
        assert b["stop_reason"] == S.STOP_AMOUNT and adds_up(b), kw
        assert b["total_amount"] <= 10000, kw
        assert 10000 - b["total_amount"] <= one_period_money(kw), (kw, b["total_amount"])


def test_one_yuan_is_never_exceeded_whatever_the_meter_start():
    # The register's position inside its 0.01 kWh step is unknown at the start.
    for start in (12345600, 12345650, 12345699):
        w, g, j = make(kw=250000)
        w.meter._base = start
        g.remote_start(serial(21), balance=1000000, amount=10000)
        w.run(g, 600000, until=finished(g))
        b = j.bills[0]
        assert b["total_amount"] <= 10000 and adds_up(b), start


def test_faster_sampling_near_the_limit_cuts_the_shortfall():
    slow = amount_session(250000)
    fast = amount_session(250000, min_period_ms=200)
    assert fast["total_amount"] <= 10000
    assert 10000 - fast["total_amount"] <= one_period_money(250000, 200)
    assert fast["total_amount"] >= slow["total_amount"]


def test_one_kwh_energy_target_is_never_exceeded():
    for kw in (7000, 60000, 120000, 250000):
        w, g, j = make(kw=kw)
        g.remote_start(serial(22), balance=1000000, energy=10000)
        w.run(g, 4 * 3600000, until=finished(g))
        b = j.bills[0]
        assert b["stop_reason"] == S.STOP_ENERGY and adds_up(b), kw
        assert b["total_energy"] <= 10000, kw
        assert 10000 - b["total_energy"] <= (kw + kw // 16) * 1100 // 360000 + 200, kw


def test_ten_minute_time_target_stops_at_ten_minutes():
    for kw in (7000, 60000, 120000, 250000):
        w, g, j = make(kw=kw)
        g.remote_start(serial(23), balance=1000000, minutes=10)
        t0 = w.clock.ticks_ms()
        w.run(g, 3600000, until=finished(g))
        b = j.bills[0]
        assert b["stop_reason"] == S.STOP_TIME and adds_up(b)
        assert w.clock.ticks_ms() - t0 == 600000, kw  # the contactor opened on time
        assert b["end_time"] - b["start_time"] == 600


def test_time_target_counts_ticks_not_the_wall_clock():
    w, g, j = make()
    g.remote_start(serial(24), balance=1000000, minutes=10)
    w.run(g, 60000)
    w.clock.set_now(T0 - 3600)  # a time sync sets the clock back an hour
    w.run(g, 3600000, until=finished(g))
    b = j.bills[0]
    assert b["stop_reason"] == S.STOP_TIME and adds_up(b)
    assert g.trade is None and b["end_time"] < b["start_time"]  # the wall clock says so


# --- a board's 30-bit tick wraps every ~12.4 days, mid-session too ------------------

WRAP = 2 ** 30


def test_one_yuan_session_across_the_tick_wrap_stops_at_the_target():
    # Started 20 s before the wrap: before the fix the pile stopped sampling
    # at the wrap and charged on (~6 yuan delivered, 0.35 yuan accounted).
    w, g, j = make(kw=60000, ticks=WRAP - 20000, wrap=WRAP)
    t0 = w.clock.ticks_ms()
    assert g.remote_start(serial(25), balance=1000000, amount=10000) == (1, 0)
    took = w.run(g, 3600000, until=finished(g))
    assert w.clock.ticks_ms() < t0  # the clock did wrap during the session
    assert took > 20000
    b = j.bills[0]
    assert b["stop_reason"] == S.STOP_AMOUNT and adds_up(b)
    assert b["total_amount"] <= 10000
    assert 10000 - b["total_amount"] <= one_period_money(60000)
    # what flowed is what was billed (the register floors at most one step)
    delivered = w.meter.true_e4kwh() - b["meter_start"]
    assert 0 <= delivered - b["total_energy"] < 100, (delivered, b["total_energy"])
    # and the same session with no wrap gives the same bill after the same time
    w2, g2, j2 = make(kw=60000)
    g2.remote_start(serial(25), balance=1000000, amount=10000)
    assert w2.run(g2, 3600000, until=finished(g2)) == took
    assert j2.bills[0] == b


def test_time_target_and_checkpoints_across_the_tick_wrap():
    w, g, j = make(kw=60000, ticks=WRAP - 60000, wrap=WRAP)
    g.remote_start(serial(26), balance=1000000, minutes=10)
    w.run(g, 300000)
    rt = g.realtime()
    assert rt["minutes"] == 5 and rt["minutes_left"] == 5
    took = w.run(g, 3600000, until=finished(g))
    b = j.bills[0]
    assert b["stop_reason"] == S.STOP_TIME and adds_up(b)
    assert 300000 + took == 600000 and b["end_time"] - b["start_time"] == 600
    assert j.count[serial(26)] >= 9 and j.gap[serial(26)][1] <= 60


def test_plug_wait_and_card_answer_timeouts_run_across_the_tick_wrap():
    w, g, j = make(ticks=WRAP - 10000, wrap=WRAP)
    w.vehicle.plugged = False
    w.run(g, 1000)
    assert g.remote_start(serial(27), balance=100000) == (0, S.START_NOT_PLUGGED)
    w.run(g, 61000)          # the 60 s plug wait ends after the wrap
    w.vehicle.plugged = True
    w.run(g, 3000)
    assert g.state == S.PLUGGED and j.bills == [] and j.late == []
    w, g, j = make(ticks=WRAP - 25000, wrap=WRAP)
    w.run(g, 1000)
    assert g.request_start("D14B0A54") is not None
    w.run(g, 29000)
    assert g.state == S.AUTHORISING  # not timed out before its 30 s
    w.run(g, 2000)
    assert g.state == S.PLUGGED and j.bills == []


def test_balance_exhausted_stops_0x6e_before_the_balance_is_crossed():
    b = amount_session(120000, target=50000, balance=150)  # 1.50 yuan balance, 5 yuan target
    assert b["stop_reason"] == S.ABORT_BALANCE and b["total_amount"] <= 15000 and adds_up(b)
    w, g, j = make()
    g.remote_start(serial(25), balance=100000)
    w.run(g, 30000)
    g.balance_update(1)  # 0x42: the account now has 0.01 yuan
    w.run(g, 5000, until=finished(g))
    assert j.bills[0]["stop_reason"] == S.ABORT_BALANCE


def test_roaming_start_with_targets_gets_the_same_enforcement():
    # Field case: through interconnection the chosen mode was ignored.
    w, g, j = make(kw=120000)
    g.remote_start(serial(26), balance=None, amount=10000, energy=20000, trade_flag=1)
    w.run(g, 3600000, until=finished(g))
    b = j.bills[0]
    assert b["stop_reason"] == S.STOP_AMOUNT and b["total_amount"] <= 10000 and adds_up(b)
    w, g, j = make(kw=120000)
    g.remote_start(serial(26), balance=None, amount=20000, energy=10000, trade_flag=1)
    w.run(g, 3600000, until=finished(g))
    b = j.bills[0]
    assert b["stop_reason"] == S.STOP_ENERGY and b["total_energy"] <= 10000 and adds_up(b)


def test_soc_target_and_full_battery_stop_with_0x41():
    w, g, j = make(kw=60000, capacity_wh=50000, soc=50)
    g.remote_start(serial(27), balance=1000000, soc=60)
    w.run(g, 3600000, until=finished(g))
    assert j.bills[0]["stop_reason"] == S.STOP_SOC and w.vehicle.soc == 60


def test_four_hour_session_to_full_runs_in_simulated_time():
    # Ramp, constant power, taper above 80 %, stop when full: 4 h of 1 s samples.
    w, g, j = make(kw=22000, capacity_wh=60000, soc=10)
    g.remote_start(serial(28), balance=10000000)
    t = w.run(g, 5 * 3600000, until=finished(g))
    b = j.bills[0]
    assert b["stop_reason"] == S.STOP_SOC and adds_up(b)
    assert 3 * 3600000 < t < 5 * 3600000
    assert abs(b["total_energy"] - 540000) < 2000  # 90 % of 60 kWh, register resolution


def test_unplug_while_charging_stops_with_0x6b():
    w, g, j = make()
    g.remote_start(serial(29), balance=100000)
    w.run(g, 10000)
    w.vehicle.plugged = False
    w.run(g, 2000)
    assert j.bills[0]["stop_reason"] == S.ABORT_PILOT and adds_up(j.bills[0])
    assert g.state == S.IDLE


def test_no_current_stops_with_0x76():
    w, g, j = make()
    w.vehicle.max_power = 0  # the vehicle draws nothing
    g.remote_start(serial(30), balance=100000)
    w.run(g, 600000, until=finished(g))
    b = j.bills[0]
    assert b["stop_reason"] == S.ABORT_NO_CURRENT and b["total_energy"] == 0


def test_manual_stop_at_the_pile_0x45():
    w, g, j = make()
    g.remote_start(serial(31), balance=100000)
    w.run(g, 10000)
    assert g.manual_stop()
    assert j.bills[0]["stop_reason"] == S.STOP_MANUAL


# --- field case §4: bills that add up -----------------------------------------------

def test_session_across_midnight_and_three_classes_adds_up():
    # peak until 22:00, valley 22:00-24:00, flat from 00:00; 21:40 -> 00:40.
    slots = [T.FLAT] * 44 + [T.VALLEY] * 4
    slots[43] = T.PEAK
    slots[42] = T.PEAK
    t = Tariff("0002", [(123457, 80003), (101111, 60007), (70001, 40009), (33333, 20001)], slots)
    w, g, j = make(kw=60000, tariff=t, now=F.to_secs(2024, 3, 5, 21, 40, 0), capacity_wh=400000)
    g.remote_start(serial(40), balance=10000000, minutes=180)
    w.run(g, 4 * 3600000, until=finished(g))
    b = j.bills[0]
    assert b["stop_reason"] == S.STOP_TIME and adds_up(b)
    assert b["peak_energy"] > 0 and b["valley_energy"] > 0 and b["flat_energy"] > 0
    assert b["sharp_energy"] == 0 and "deep_energy" not in b
    # 20 min peak, 2 h valley, 40 min flat at 60 kW (less the ramp), within a step or two.
    assert abs(b["valley_energy"] - 1200000) <= 300
    assert abs(b["flat_energy"] - 400000) <= 300


def test_five_period_tariff_session_bill_adds_up():
    # deep 00-06, valley 06-08, peak 08-10, sharp 10-12: a 05:30 -> 10:30 session.
    slots = [T.DEEP] * 12 + [T.VALLEY] * 4 + [T.PEAK] * 4 + [T.SHARP] * 4 + [T.FLAT] * 24
    t = Tariff("0003", [(123457, 80003), (101111, 60007), (70001, 40009), (33333, 20001),
                        (21111, 10003)], slots)
    w, g, j = make(kw=7000, tariff=t, now=F.to_secs(2024, 3, 5, 5, 30, 0), capacity_wh=100000)
    g.remote_start(serial(41), balance=10000000, minutes=300)
    w.run(g, 6 * 3600000, until=finished(g))
    b = j.bills[0]
    assert adds_up(b)
    for k in ("deep", "valley", "peak", "sharp"):
        assert b[k + "_energy"] > 0, k
    assert b["deep_price"] == 31114 and b["sharp_price"] == 203460


def test_new_tariff_mid_session_applies_to_the_next_session():
    w, g, j = make()
    g.remote_start(serial(42), balance=1000000)
    w.run(g, 60000)
    g.set_tariff(Tariff.flat("0004", 200000, 100000))
    w.run(g, 60000)
    g.remote_stop()
    b = j.bills[0]
    assert b["model"] == "0001" and b["flat_price"] == 120000 and adds_up(b)
    g.remote_start(serial(43), balance=1000000)
    w.run(g, 60000)
    g.remote_stop()
    assert j.bills[1]["model"] == "0004" and j.bills[1]["flat_price"] == 300000
    raises(TypeError, g.set_tariff, {"model": "0005"})


# --- meter faults (shared/context/dlt645.md "Consequences for the firmware") ------

def test_meter_goes_silent_mid_session_stops_with_0x6d():
    w, g, j = make(meter_fails=3)
    g.remote_start(serial(50), balance=1000000)
    w.run(g, 60000)
    billed = g.trade.last
    w.meter.silent = True
    w.run(g, 10000, until=finished(g))
    b = j.bills[0]
    assert b["stop_reason"] == S.ABORT_METER and adds_up(b)
    assert b["meter_stop"] == billed and b["total_energy"] > 0  # never a silent zero
    assert not w.contactor.closed and g.faults & S.FAULT_METER
    assert g.realtime()["status"] == S.RT_FAULT
    w.run(g, 5000)
    assert g.status() == S.RT_FAULT      # still silent: still a fault
    w.meter.silent = False
    w.run(g, 2000)
    assert g.status() == S.RT_IDLE and len(j.bills) == 1


def test_meter_missing_a_read_or_two_does_not_stop_and_bills_the_register():
    w, g, j = make(meter_fails=3)
    g.remote_start(serial(51), balance=1000000)
    w.run(g, 30000)
    w.meter.fail_next(2)
    w.run(g, 30000)
    assert g.state == S.CHARGING
    g.remote_stop()
    b = j.bills[0]
    assert b["stop_reason"] == S.STOP_REMOTE and b["meter_stop"] == w.meter.read_energy()


def test_meter_backwards_never_billed():
    logs = []
    w, g, j = make(log=logs.append)
    g.remote_start(serial(52), balance=1000000)
    w.run(g, 60000)
    high = g.trade.last
    w.meter.go_backwards(5000)  # the register drops by 0.5 kWh
    w.run(g, 10000)
    assert g.trade.last == high and g.meter_backwards > 0
    assert [m for m in logs if "went back" in m]
    w.run(g, 120000)  # counts on from the lower value, past the old high
    g.remote_stop()
    b = j.bills[0]
    assert adds_up(b) and b["meter_stop"] == w.meter.read_energy()
    # The 0.5 kWh the register "lost" was never billed, and nothing twice.
    delivered = w.meter._wms // 360000
    assert delivered - 5000 - 200 <= b["total_energy"] <= delivered - 5000 + 100


# --- the same on the real DL/T 645 driver (firmware/dlt645.py) over a LoopUart -------

METER = "000000000001"


class Dlt645Responder:
    """A DL/T 645-2007 meter in a few lines, on the driver module's own frame
    functions (FrameReader, build_frame, bcd_encode), not its Dlt645Slave (sim/meter.py):
    answers 0x11 reads of forward active energy, power, voltage and current
    from the world's SimMeter (the 0.01 kWh register), until `silent`.
    `energy_sent`: every energy register value it put on the wire (e4kwh)."""

    def __init__(self, sim):
        from firmware import dlt645 as D
        self.D = D
        self.sim = sim
        self.silent = False
        self.energy_sent = []
        self.unanswered = 0
        self._rx = D.FrameReader()

    def on_receive(self, uart):
        data = uart.read()
        pos = 0
        while data and pos < len(data):
            pos += self._rx.feed(data, pos)
            if self._rx.ready:
                reply = self._answer(self._rx.control, bytes(self._rx.data()))
                self._rx.next()
                if reply is not None:
                    uart.write(reply)

    def _answer(self, control, data):
        D = self.D
        if control != D.CTRL_READ or len(data) != 4:
            return None
        if self.silent:
            self.unanswered += 1
            return None
        di = int.from_bytes(data, "little")
        m = self.sim
        if di == D.DI_ENERGY_FORWARD:
            reg = m.read_energy() // 100                 # XXXXXX.XX kWh
            self.energy_sent.append(reg * 100)
            value = D.bcd_encode(reg, 4)
        elif di == D.DI_POWER_TOTAL:
            value = D.bcd_encode(m.read_power() * 10, 3, True)      # XX.XXXX kW
        elif di == D.DI_VOLTAGE_A:
            value = D.bcd_encode(m.read_voltage(), 2)                # XXX.X V
        elif di == D.DI_CURRENT_A:
            value = D.bcd_encode(m.read_current() * 100, 3, True)   # XXX.XXX A
        else:
            return D.build_frame(METER, control | D.CTRL_REPLY | D.CTRL_ERROR, b"\x02")
        return D.build_frame(METER, control | D.CTRL_REPLY, data + value, 4)


def make_on_dlt645(**kw):
    """make() with the gun reading its meter through Dlt645Meter over a
    LoopUart pair, the responder on the far end; the driver waits in the
    world's clock, so a silent meter costs simulated time, not real time."""
    from firmware.dlt645 import Dlt645Meter
    from sim.loopuart import LoopUart
    rig = []

    def meter(w):
        a, b = LoopUart.pair()
        m = Dlt645Responder(w.meter)
        b.on_receive = m.on_receive
        rig.append(m)
        return Dlt645Meter(a, METER, w.clock, timeout_ms=500)

    w, g, j = make(meter=meter, **kw)
    return w, g, j, rig[0]


def test_dlt645_meter_going_silent_mid_session_stops_0x6d_billed_from_its_last_register():
    w, g, j, m = make_on_dlt645(meter_fails=3)
    g.remote_start(serial(56), balance=1000000)
    w.run(g, 60000)
    assert g.state == S.CHARGING and g.realtime()["voltage"] == 4000
    assert m.energy_sent[-1] > m.energy_sent[0]     # it charged, read over the bus
    last = m.energy_sent[-1]
    m.silent = True
    took = w.run(g, 20000, until=finished(g))
    b = j.bills[0]
    assert b["stop_reason"] == S.ABORT_METER == 0x6D and adds_up(b)
    # billed from the register: the start and the last reading that came back
    assert b["meter_start"] == m.energy_sent[0] == 12345600
    assert b["meter_stop"] == last and b["total_energy"] == last - m.energy_sent[0] > 0
    # three unanswered samples (meter_fails), each a 500 ms timeout: not sooner
    assert m.unanswered == 3 and 3 * 500 <= took <= 3 * (1000 + 500)
    assert not w.contactor.closed and g.faults & S.FAULT_METER
    assert g.realtime()["status"] == S.RT_FAULT
    w.run(g, 5000)
    assert g.status() == S.RT_FAULT and len(j.bills) == 1     # still silent: still a fault
    m.silent = False
    w.run(g, 2000)
    assert g.status() == S.RT_IDLE and len(j.bills) == 1


def test_dlt645_register_going_backwards_is_never_billed():
    logs = []
    w, g, j, m = make_on_dlt645(log=logs.append)
    g.remote_start(serial(57), balance=1000000)
    w.run(g, 60000)
    high = g.trade.last
    assert high == m.energy_sent[-1]
    w.meter.go_backwards(5000)  # the register drops by 0.5 kWh
    n = len(m.energy_sent)
    w.run(g, 10000)
    assert max(m.energy_sent[n:]) < high         # the wire carried the lower readings
    assert g.trade.last == high and g.meter_backwards > 0
    assert [x for x in logs if "went back" in x]
    w.run(g, 120000)  # counts on from the lower value, past the old high
    g.remote_stop()
    b = j.bills[0]
    assert b["stop_reason"] == S.STOP_REMOTE and adds_up(b)
    assert b["meter_stop"] == m.energy_sent[-1] == max(m.energy_sent)
    # Only the rises above the highest reading so far are billed: the 0.5 kWh
    # the register "lost" is never billed, and nothing is billed twice.
    rises = 0
    top = m.energy_sent[0]
    for r in m.energy_sent:
        if r > top:
            rises += r - top
            top = r
    assert b["total_energy"] == rises == b["meter_stop"] - b["meter_start"]
    delivered = w.meter._wms // 360000
    assert delivered - 5000 - 200 <= b["total_energy"] <= delivered - 5000 + 100


# --- power cut: the journal's header + last checkpoint become the bill -------------------

def test_power_cut_rebuilds_bill_at_last_checkpoint():
    slots = [T.PEAK] * 24 + [T.VALLEY] * 24  # 12:00 turns valley
    t = Tariff("0006", [(1, 1), (101111, 60007), (1, 1), (33333, 20001), (21111, 10003)], slots)
    w, g, j = make(kw=120000, tariff=t, now=F.to_secs(2024, 3, 5, 11, 55, 0))
    w.vehicle.vin_delay_ms = 1500
    s = serial(60)
    g.remote_start(s, card="D14B0A54", balance=10000000)
    w.run(g, 600000)
    assert j.count[s], "no checkpoint in 10 minutes"
    live = g.trade
    # the power goes: only the journal's records survive
    b = rebuild_bill(j.headers[s], j.ckpt[s])
    c = S.decode_checkpoint(j.ckpt[s])
    assert b["stop_reason"] == S.ABORT_POWER_LOSS and adds_up(b)
    assert b["meter_stop"] == c["meter"] and b["end_time"] == c["time"]
    assert b["peak_energy"] > 0 and b["valley_energy"] > 0
    assert b["vin"] == "LSVAU2180N2183294" and b["card"] == "00000000D14B0A54"
    assert b["model"] == "0006" and "deep_amount" in b
    # At most one checkpoint interval of energy is left unbilled.
    assert 0 <= live.last - b["meter_stop"] <= 1000 + 120000 * 1000 // 360000 + 100
    # With only a header (cut before the first checkpoint): a zero bill.
    z = rebuild_bill(j.headers[s])
    assert z["total_energy"] == 0 and z["stop_reason"] == S.ABORT_POWER_LOSS and adds_up(z)
    raises(ValueError, rebuild_bill, j.headers[s], S.encode_checkpoint(serial(61), 0, 0, [0] * 5, ""))


def test_checkpoints_are_bounded_by_energy_and_time():
    w, g, j = make(kw=250000, ckpt_energy=1000, ckpt_ms=60000)
    s = serial(62)
    g.remote_start(s, balance=10000000)
    w.run(g, 120000)
    assert j.count[s] >= 50  # 8.3 kWh in 2 min: one every 0.1 kWh or so
    assert j.gap[s][0] <= 1000 + 250000 * 1000 // 360000 + 100
    g.remote_stop()
    w2, g2, j2 = make(kw=7000, ckpt_energy=100000, ckpt_ms=60000)
    g2.remote_start(s, balance=10000000)
    w2.run(g2, 600000)
    assert j2.count[s] >= 9 and j2.gap[s][1] <= 61


def test_header_and_checkpoint_payloads_round_trip():
    h = {"serial": serial(63), "pile": PILE, "gun": "01", "start_time": T0, "trade_time": T0 + 1,
         "trade_flag": 2, "card": "00000000D14B0A54", "meter_start": 9999999900,
         "nameplate_vin": "LSVAU2180N2183294", "tariff": FLAT}
    raw = S.encode_header(h)
    assert S.decode_header(raw) == h
    c = S.encode_checkpoint(serial(63), T0 + 60, 9999999900 + 300, [0, 0, 300, 0], "")
    d = S.decode_checkpoint(c)
    assert d["meter"] == 9999999900 + 300 and d["energies"] == [0, 0, 300, 0] and d["vin"] == ""
    assert len(raw) == 67 + FLAT.packed_size() and len(c) == 47 + 16


# --- card starts (0x31 / 0x32) ---------------------------------------------------

def test_card_start_refused_by_platform_has_no_bill():
    w, g, j = make()
    req = g.request_start(card="D14B0A54")
    assert req["start_type"] == 1 and req["card"] == "00000000D14B0A54"
    assert g.state == S.AUTHORISING
    assert g.remote_start(serial(70)) == (0, S.START_BUSY)
    assert g.authorised(serial(71), False, reason=2) == (0, 2)  # account frozen
    assert g.state == S.PLUGGED and g.refusal == 2 and j.bills == []


def test_card_start_authorised_bills_with_card_flag_and_pile_serial_when_none_given():
    w, g, j = make()
    g.request_start(card="D14B0A54")
    assert g.authorised(serial(72), True, balance=5000) == (1, 0)
    w.run(g, 10000)
    g.manual_stop()
    assert j.bills[0]["trade_flag"] == S.TRADE_CARD and j.bills[0]["serial"] == serial(72)
    g.request_start(card="D14B0A54")
    assert g.authorised("0" * 32, True, balance=5000) == (1, 0)
    g.manual_stop()
    s = j.bills[1]["serial"]
    assert s.startswith(PILE + "01" + "240305100") and s.endswith("0001")


def test_card_start_without_answer_times_out():
    w, g, j = make(auth_timeout_ms=30000)
    g.request_start(card="D14B0A54")
    w.run(g, 31000)
    assert g.state == S.PLUGGED
    assert g.authorised(serial(73), True) == (0, S.START_NONE) and j.bills == []


def test_offline_card_start_issues_a_pile_serial():
    w, g, j = make()
    assert g.offline_start("D14B0A54", balance=2000) == (1, 0)
    w.run(g, 5000)
    g.manual_stop()
    b = j.bills[0]
    assert b["trade_flag"] == S.TRADE_OFFLINE_CARD and b["serial"].endswith("0001") and adds_up(b)


def test_journal_refusing_the_open_refuses_the_start():
    w, g, j = make()

    def full(s, h):
        raise OSError(28, "journal full")

    g.on_open = full
    assert g.remote_start(serial(74), balance=100000) == (0, S.START_FAULT)
    assert g.state == S.PLUGGED and not w.contactor.closed and j.bills == []


def test_journal_refusing_a_seal_keeps_the_bill_and_retries():
    w, g, j = make()
    fails = [2]

    def flaky(s, b):
        if fails[0]:
            fails[0] -= 1
            raise OSError(5, "flash busy")
        j.seal(s, b)

    g.on_seal = flaky
    g.remote_start(serial(75), balance=100000)
    w.run(g, 5000)
    g.remote_stop()
    assert j.bills == []
    w.run(g, 3000)
    assert len(j.bills) == 1 and j.bills[0]["serial"] == serial(75)


# --- realtime (0x13) ----------------------------------------------------------------

def test_realtime_cadence_15s_charging_5min_idle_and_at_once_on_change():
    c = Cadence()
    assert c.poll(0, S.RT_IDLE, 0)                 # first report
    assert not c.poll(299999, S.RT_IDLE, 0)
    assert c.poll(300000, S.RT_IDLE, 0)            # every 5 min idle
    assert c.poll(300500, S.RT_IDLE, 1)            # plug: at once
    assert c.poll(301000, S.RT_CHARGING, 1)        # status: at once
    assert not c.poll(315999, S.RT_CHARGING, 1)
    assert c.poll(316000, S.RT_CHARGING, 1)        # every 15 s charging
    assert c.poll(317000, S.RT_IDLE, 1)            # stopped: at once
    assert not c.poll(318000, S.RT_IDLE, 1)
    c.force()                                      # 0x12 read realtime
    assert c.poll(318001, S.RT_IDLE, 1)


def test_realtime_cadence_across_the_tick_wrap():
    from sim.hardware import SimClock
    clock = SimClock(0, WRAP - 1000, 100, WRAP)
    c = Cadence(diff=clock.ticks_diff)
    t0 = clock.ticks_ms()
    assert c.poll(t0, S.RT_CHARGING, 1)
    clock.sleep_ms(14999)                          # past the wrap
    t = clock.ticks_ms()
    assert t < t0 and c.next_due(t) == 1
    assert not c.poll(t, S.RT_CHARGING, 1)
    clock.sleep_ms(1)
    assert c.next_due(clock.ticks_ms()) == 0
    assert c.poll(clock.ticks_ms(), S.RT_CHARGING, 1)  # every 15 s, wrap or not
    clock.sleep_ms(15000)
    assert c.poll(clock.ticks_ms(), S.RT_CHARGING, 1)
    clock = SimClock(0, WRAP - 20000, 100, WRAP)   # 20 s before the wrap, idle
    c2 = Cadence(diff=clock.ticks_diff)
    assert c2.poll(clock.ticks_ms(), S.RT_IDLE, 0)
    clock.sleep_ms(299999)
    assert not c2.poll(clock.ticks_ms(), S.RT_IDLE, 0)
    clock.sleep_ms(1)
    assert c2.poll(clock.ticks_ms(), S.RT_IDLE, 0)     # every 5 min idle


def test_realtime_values_follow_the_session():
    w, g, j = make()
    cad = Cadence()
    sent = []

    def loop(ms):
        end = w.clock.ticks_ms() + ms
        while w.clock.ticks_ms() < end:
            d = g.tick()
            if cad.poll(w.clock.ticks_ms(), g.status(), 1 if w.vehicle.plugged else 0):
                sent.append(g.realtime())
            w.clock.sleep_ms(min(d, end - w.clock.ticks_ms()) or 1)

    loop(1000)
    g.remote_start(serial(80), balance=1000000, minutes=30)
    loop(120000)
    g.remote_stop()
    loop(1000)
    assert sent[0]["status"] == S.RT_IDLE and sent[0]["energy"] == 0
    charging = [d for d in sent if d["status"] == S.RT_CHARGING]
    assert 8 <= len(charging) <= 10  # at start, then every 15 s for 2 min
    last = charging[-1]
    assert last["serial"] == serial(80) and last["voltage"] == 4000 and last["current"] > 0
    assert last["minutes"] == 1 and 28 <= last["minutes_left"] <= 29
    assert last["energy"] > 0 and last["amount"] == fee(last["energy"], 120000)
    assert sent[-1]["status"] == S.RT_IDLE and sent[-1]["serial"] == "0" * 32
    assert sent[-1]["amount"] == 0
