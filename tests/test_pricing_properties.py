# Property tests (CPython, hypothesis): for random tariffs (4 or 5 classes,
# random slots and prices) and random sessions, every bill reconciles exactly,
# live or rebuilt after a power cut, and a pile-side target is never exceeded.
from hypothesis import given, settings, strategies as st, HealthCheck

from firmware import session as S
from firmware import tariff as T
from firmware.session import Gun
from sim.hardware import SimWorld
from firmware.tariff import Accumulator, Tariff, fee
from protocol import fields as F
from tests.mp.test_tariff import check_adds_up

PILE = "55031412782305"
T2024 = F.to_secs(2024, 1, 1)


@st.composite
def tariffs(draw):
    n = draw(st.sampled_from((4, 5)))
    slots = draw(st.lists(st.integers(0, n - 1), min_size=48, max_size=48))
    free = draw(st.booleans())
    low = 0 if free else 1
    prices = [(draw(st.integers(low, 500000)), draw(st.integers(0, 300000))) for _ in range(n)]
    loss = draw(st.sampled_from((0, 0, 0, 1, 5, 100)))
    return Tariff("%04d" % draw(st.integers(0, 9999)), prices, slots, loss, free)


# (seconds since the previous reading, register increase): increases are
# whole register steps most of the time, any size sometimes.
readings = st.lists(st.tuples(st.integers(0, 4000),
                              st.one_of(st.integers(0, 50).map(lambda k: 100 * k),
                                        st.integers(0, 10 ** 6))),
                    max_size=300)


def reconciles(b, n):
    # the periods add up to the totals, and the energy to the meter's advance
    check_adds_up(b, n, b["meter_stop"] - b["meter_start"])
    assert ("deep_energy" in b) == (n == 5)


@settings(max_examples=300, deadline=None)
@given(tariffs(), readings, st.integers(0, 2 ** 34), st.integers(0, 20 * 365 * 86400))
def test_every_bill_reconciles_live_and_rebuilt(t, reads, meter_start, start):
    h = {"serial": PILE + "01" + "240101000000" + "0001", "pile": PILE, "gun": "01",
         "start_time": start, "trade_time": start, "trade_flag": 1, "card": "0" * 16,
         "meter_start": meter_start, "nameplate_vin": "", "tariff": t}
    acc = Accumulator(t)
    now = start
    meter = meter_start
    for dt, d in reads:
        now += dt
        acc.add(d, now)
        meter += d
        # the class of each reading is the slot of its wall time
    b = S._bill(h, acc.energy, meter, now, "", S.STOP_REMOTE)
    reconciles(b, t.n)
    for c in range(t.n):
        k = T.CLASSES[c]
        assert b[k + "_price"] == t.energy[c] + t.service[c]
        l = T.loss_energy(b[k + "_energy"], t.loss_ratio)
        assert b[k + "_energy_fee"] == fee(l, t.energy[c])
    # The journal's payloads rebuild the same bill (stop 0x83).
    r = S.rebuild_bill(S.encode_header(h),
                       S.encode_checkpoint(h["serial"], now, meter, acc.energy, ""))
    reconciles(r, t.n)
    for k in b:
        if k != "stop_reason":
            assert r[k] == b[k], k
    assert r["stop_reason"] == S.ABORT_POWER_LOSS


@settings(max_examples=200, deadline=None)
@given(tariffs(), readings, st.integers(0, 10 ** 6))
def test_cost_of_predicts_the_bill_exactly(t, reads, probe):
    # The prediction is checked against the bill's own figures
    # (bill_fields), not against amount(), which shares its per-class sum.
    acc = Accumulator(t)
    now = T2024
    for dt, d in reads + [(0, probe)]:
        now += dt
        before = acc.bill_fields({})
        c = acc.cost_of(d, now)
        acc.add(d, now)
        after = acc.bill_fields({})
        cls = t.class_at(now)
        k = T.CLASSES[cls]
        assert after["total_amount"] - before["total_amount"] == c
        assert after[k + "_amount"] - before[k + "_amount"] == c

        def class_fees(e):   # the pricing rule: both fees on the class energy after loss
            lossy = T.loss_energy(e, t.loss_ratio)
            return fee(lossy, t.energy[cls]) + fee(lossy, t.service[cls])
        assert c == class_fees(acc.energy[cls]) - class_fees(acc.energy[cls] - d)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tariffs(),
       st.sampled_from((7000, 22000, 60000, 120000, 250000)),
       st.integers(1, 50000),                      # amount target, x10^4 yuan (<= 5 yuan)
       st.integers(0, 99),                         # position inside the first register step
       st.integers(0, 86400 - 1),                  # time of day of the start
       st.sampled_from((1000, 500)))
def test_pile_side_amount_target_is_never_exceeded(t, kw, target, offset, tod, period):
    w = SimWorld(now=T2024 + tod, pile_max_w=kw, capacity_wh=500000, soc=5,
                 meter_start=100000 + offset)
    bills = []
    g = Gun(PILE, "01", w.clock, w.meter, w.contactor, w.vehicle, t,
            on_seal=lambda s, b: bills.append(b), period_ms=period, max_power_w=kw)
    assert g.remote_start(PILE + "01240101000000" + "0002", balance=10 ** 7, amount=target,
                          minutes=120) == (1, 0)
    w.run(g, 3 * 3600000, until=lambda: g.state == S.FINISHED)
    assert len(bills) == 1
    b = bills[0]
    reconciles(b, t.n)
    assert b["total_amount"] <= target
    if b["stop_reason"] == S.STOP_AMOUNT:
        # short by at most one period at the predicted power plus two register steps,
        # priced at the dearest class (the next slot may be dearer)
        e = (kw + kw // 16) * (period + 100) // 360000 + 200
        dear = max(t.energy[c] + t.service[c] for c in range(t.n))
        assert target - b["total_amount"] <= fee(T.loss_energy(e, t.loss_ratio), dear) + t.n
    else:
        assert b["stop_reason"] == S.STOP_TIME


@settings(max_examples=40, deadline=None)
@given(st.sampled_from((7000, 60000, 250000)), st.integers(100, 30000), st.integers(0, 99))
def test_pile_side_energy_target_is_never_exceeded(kw, target, offset):
    w = SimWorld(now=T2024, pile_max_w=kw, capacity_wh=500000, soc=5, meter_start=100000 + offset)
    bills = []
    g = Gun(PILE, "01", w.clock, w.meter, w.contactor, w.vehicle, Tariff.flat("0001", 80000, 40000),
            on_seal=lambda s, b: bills.append(b), max_power_w=kw)
    g.remote_start(PILE + "01240101000000" + "0003", balance=10 ** 7, energy=target)
    w.run(g, 6 * 3600000, until=lambda: g.state == S.FINISHED)
    b = bills[0]
    reconciles(b, 4)
    assert b["stop_reason"] == S.STOP_ENERGY and b["total_energy"] <= target
    assert target - b["total_energy"] <= (kw + kw // 16) * 1100 // 360000 + 200
