# The amount stop's prediction covers the contactor's release: the energy
# that still flows between the decision to stop and the register the bill is
# read from (Gun(stop_lag_ms=100), firmware/session.py "Predictive stop").
# The simulator's contactor opens in no time, so without this test a
# prediction that forgot the lag passed every suite (tools/mutants/fixed.py:
# amount-stop-ignores-the-stop-lag).
from firmware import session as S
from firmware.session import Gun
from sim.hardware import SimContactor, SimWorld
from firmware.tariff import Tariff

PILE = "55031412782305"
FLAT = Tariff.flat("0001", 80000, 40000)  # 1.20 yuan/kWh
T0 = 0


class LaggingContactor(SimContactor):
    """A relay that takes lag_ms to break the current: open() returns once it
    has, with the world (clock, vehicle, meter) advanced by lag_ms meanwhile."""

    def __init__(self, lag_ms):
        super().__init__()
        self.lag_ms = lag_ms
        self.world = None

    def open(self):
        if self.closed and self.world is not None:
            self.world.step(self.lag_ms)
        super().open()


def lagging_world(kw, meter_start, lag_ms):
    w = SimWorld(now=T0, pile_max_w=kw, capacity_wh=300000, soc=10,
                 vin="LSVAU2180N2183294", meter_start=meter_start)
    c = LaggingContactor(lag_ms)
    c.world = w
    # Rewire the world's parts to the lagging relay.
    w.contactor = w.vehicle._contactor = w.meter._contactor = c
    return w


def amount_bill(kw, meter_start, target=10000, lag_ms=100):
    w = lagging_world(kw, meter_start, lag_ms)
    bills = []
    n = [0]

    def next_serial():
        n[0] += 1
        return n[0]
    g = Gun(PILE, "01", w.clock, w.meter, w.contactor, w.vehicle, FLAT,
            next_serial=next_serial, on_seal=lambda s, b: bills.append(b),
            max_power_w=kw, stop_lag_ms=lag_ms)
    serial = PILE + "01" + "240101120000" + "%04d" % (meter_start % 10000)
    assert g.remote_start(serial, balance=10 ** 7, amount=target) == (1, 0)
    w.run(g, 4 * 3600000, until=lambda: g.state == S.FINISHED)
    assert len(bills) == 1
    return bills[0]


def test_the_relay_release_is_in_the_sim_lagging_contactor_bills_energy_after_open():
    # The test's own premise: energy flows while the relay releases.
    w = lagging_world(60000, 12345600, 1000)
    w.contactor.close()
    w.step(10000)
    before = w.meter.true_e4kwh()
    w.contactor.open()
    assert w.meter.true_e4kwh() > before
    assert not w.contactor.closed


def test_one_yuan_is_never_exceeded_when_the_contactor_takes_100_or_400_ms_to_open():
    # stop_lag_ms is the pile's setting for its relay (and meter read) time.
    worst = 0
    for lag in (100, 400):
        for kw in (60000, 120000, 250000):
            for off in range(0, 100, 3):     # where the register sits inside its 0.01 kWh step
                b = amount_bill(kw, 12345600 + off, lag_ms=lag)
                assert b["stop_reason"] == S.STOP_AMOUNT, (lag, kw, off)
                assert b["total_amount"] <= 10000, (lag, kw, off, b["total_amount"])
                worst = max(worst, b["total_amount"])
    assert worst > 9000    # and the sessions did get close to the target
