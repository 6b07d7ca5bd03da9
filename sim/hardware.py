# Simulated hardware implementing the interfaces of docs/CONVENTIONS.md:
# clock, contactor, vehicle/BMS and meter, all advanced by the clock, so a
# 4-hour session runs in milliseconds and the same Gun code runs unchanged.
#
#   w = SimWorld(now=secs, pile_max_w=60000, soc=20, vin="LSVAU2180N2183294")
#   gun = Gun(pile, "01", w.clock, w.meter, w.contactor, w.vehicle, tariff)
#   w.run(gun, 60000)          # tick the gun for one simulated minute
#
# Physics, in integers: the vehicle's power is evaluated at the start of each
# sub-step (<= step_ms) and held for it; energy is integrated in W*ms
# (1 e4kwh = 0.1 Wh = 360000 W*ms). The meter shows the integral floored to its
# 0.01 kWh register, as a DL/T 645 meter does.
from firmware.errors import MeterTimeout

from protocol import const

WMS_PER_E4KWH = const(360000)
_REGISTER_STEP = const(100)  # 0.01 kWh in e4kwh


class SimClock:
    """ticks_ms() monotonic; now() wall seconds, settable (may jump back);
    sleep_ms() advances time and every attached part, in sub-steps.

    wrap: 0 (ticks never wrap) or the tick period, as a board's: with
    wrap=2**30 ticks_ms() counts modulo 2**30 like MicroPython's, so a test
    can start `ticks` just before the wrap. ticks_diff(a, b) is the signed
    difference in that period (time.ticks_diff's rule), for
    firmware/ticks.diff_of()."""

    def __init__(self, now=0, ticks=0, step_ms=100, wrap=0):
        if wrap and (wrap & (wrap - 1)):
            raise ValueError("SimClock: wrap must be a power of two")
        self.wrap = wrap
        self._ticks = ticks   # never wrapped here; ticks_ms() does it
        self._wall = now
        self._wall_at = ticks
        self.step_ms = step_ms
        self._parts = []

    def attach(self, part):
        """part.advance(dt_ms) is called for every sub-step, in attach order."""
        self._parts.append(part)

    def ticks_ms(self):
        w = self.wrap
        return self._ticks & (w - 1) if w else self._ticks

    def ticks_diff(self, a, b):
        w = self.wrap
        if not w:
            return a - b
        half = w >> 1
        return ((a - b + half) & (w - 1)) - half

    def now(self):
        return self._wall + (self._ticks - self._wall_at) // 1000

    def set_now(self, secs):
        """Set the wall clock (a time sync); it may go backwards, ticks never do."""
        self._wall = secs
        self._wall_at = self._ticks

    def sleep_ms(self, ms):
        step = self.step_ms
        while ms > 0:
            dt = step if ms > step else ms
            for p in self._parts:
                p.advance(dt)
            self._ticks += dt
            ms -= dt


class SimContactor:
    """close()/open()/closed. fail_close=True: the relay does not pull in
    (its feedback contact stays open), as a welded-open or dead coil would."""

    def __init__(self):
        self.closed = False
        self.fail_close = False
        self.operations = 0

    def close(self):
        self.operations += 1
        if not self.fail_close:
            self.closed = True

    def open(self):
        self.operations += 1
        self.closed = False


class SimVehicle:
    """An EV behind the gun (plug, BMS). Power: ramps linearly from 0 over
    ramp_ms after the contactor closes, holds min(pile, vehicle) max power,
    tapers above taper_soc, linearly in the energy still missing, to 10 % at
    full (a CC-CV-like curve), 0 when full. SOC rises with delivered energy.
    The VIN is known vin_delay_ms after the contactor closes (GB/T DC: the
    BMS identifies itself after the start)."""

    def __init__(self, contactor, capacity_wh=60000, soc=20, vin=None, max_power=250000,
                 pile_max_w=60000, ramp_ms=3000, taper_soc=80, vin_delay_ms=2000,
                 voltage_x10=4000, plugged=True):
        self._contactor = contactor
        self._cap = capacity_wh * 3600000  # W*ms
        self._e = self._cap * soc // 100
        self._vin = vin
        self.max_power = max_power
        self.pile_max_w = pile_max_w
        self.ramp_ms = ramp_ms
        self.taper_soc = taper_soc
        self.vin_delay_ms = vin_delay_ms
        self.voltage_x10 = voltage_x10
        self.plugged = plugged
        self.power = 0
        self._on_ms = 0
        self._vin_seen = False
        self.delivered_wms = 0
        self.shared = False   # behind a SimOutput (power sharing): see advance()

    @property
    def soc(self):
        return self._e * 100 // self._cap

    @property
    def vin(self):
        return self._vin if self._vin_seen else None

    @property
    def demand(self):
        """W the BMS asks for now (its BCL): its own limit and taper, the
        pile's limit left out (what power sharing divides)."""
        return self._target(self.max_power)

    def _target(self, pmax=None):
        if pmax is None:
            pmax = self.max_power if self.max_power < self.pile_max_w else self.pile_max_w
        left = self._cap - self._e
        if left <= 0:
            return 0
        band = self._cap * (100 - self.taper_soc) // 100
        if left < band:
            floor = pmax // 10
            return floor + (pmax - floor) * left // band
        return pmax

    def advance(self, dt):
        if not self.plugged:
            self._vin_seen = False
        if not (self.plugged and self._contactor.closed):
            self.power = 0
            self._on_ms = 0
            return
        if self.shared:
            # behind a shared output the BMS asks for its own demand and the
            # charger gives no more than it is commanded
            p = self._target(self.max_power)
            if p > self.pile_max_w:
                p = self.pile_max_w
        else:
            p = self._target()
        if self._on_ms < self.ramp_ms:
            p = p * self._on_ms // self.ramp_ms
        self.power = p
        self._on_ms += dt
        if self._on_ms >= self.vin_delay_ms:
            self._vin_seen = True
        e = p * dt
        self._e += e
        if self._e > self._cap:
            self._e = self._cap
        self.delivered_wms += e


class SimOutput:
    """A gun's power output (its rectifier modules) as power sharing
    commands it: set_limit(w) caps what the vehicle is given from now on."""

    def __init__(self, vehicle):
        self._vehicle = vehicle
        vehicle.shared = True
        self.limit = vehicle.pile_max_w
        self.commands = 0

    def set_limit(self, w):
        self.commands += 1
        self.limit = w
        self._vehicle.pile_max_w = w


class SimMeter:
    """The pile's energy meter: integrates the power flowing through the
    contactor; read_energy() is the register floored to 0.01 kWh.

    Faults: silent=True (every read raises MeterTimeout), fail_next(n) (the
    next n reads raise), go_backwards(e4kwh) (the register drops and counts
    on from the lower value)."""

    def __init__(self, vehicle, contactor, register=0):
        self._vehicle = vehicle
        self._contactor = contactor
        self._base = register
        self._wms = 0
        self._back = 0
        self._fail = 0
        self.silent = False
        self.reads = 0

    def advance(self, dt):
        if self._contactor.closed:
            self._wms += self._vehicle.power * dt

    def true_e4kwh(self):
        """What the register would show with infinite resolution (tests)."""
        return self._base + self._wms // WMS_PER_E4KWH - self._back

    def fail_next(self, n):
        self._fail = n

    def go_backwards(self, e4kwh):
        self._back += e4kwh

    def _check(self):
        self.reads += 1
        if self.silent:
            raise MeterTimeout("sim meter: no answer")
        if self._fail > 0:
            self._fail -= 1
            raise MeterTimeout("sim meter: no answer (injected)")

    def read_energy(self):
        self._check()
        r = self.true_e4kwh()
        return r - r % _REGISTER_STEP

    def read_power(self):
        self._check()
        return self._vehicle.power if self._contactor.closed else 0

    def read_voltage(self):
        self._check()
        return self._vehicle.voltage_x10 if self._contactor.closed else 0

    def read_current(self):
        self._check()
        if not self._contactor.closed or not self._vehicle.voltage_x10:
            return 0
        return self._vehicle.power * 100 // self._vehicle.voltage_x10


class SimWorld:
    """Clock, contactor, vehicle and meter wired together; step(ms) (or
    clock.sleep_ms) advances all of them. ticks / wrap: the clock's first
    tick and its period (SimClock), e.g. ticks=2**30 - 20000, wrap=2**30 for
    a session across a board's tick wrap. clock: an existing SimClock (now,
    ticks, step_ms and wrap are then the clock's own)."""

    def __init__(self, now=0, pile_max_w=60000, capacity_wh=60000, soc=20, vin=None,
                 vehicle_max_w=250000, meter_start=0, ramp_ms=3000, taper_soc=80,
                 vin_delay_ms=2000, voltage_x10=4000, plugged=True, step_ms=100, ticks=0,
                 wrap=0, clock=None):
        # clock: share another world's SimClock (one pile, several guns:
        # each gun its own contactor, vehicle and meter on the pile's clock)
        self.clock = clock if clock is not None else SimClock(now, ticks, step_ms, wrap)
        self.contactor = SimContactor()
        self.vehicle = SimVehicle(self.contactor, capacity_wh, soc, vin, vehicle_max_w,
                                  pile_max_w, ramp_ms, taper_soc, vin_delay_ms, voltage_x10,
                                  plugged)
        self.meter = SimMeter(self.vehicle, self.contactor, meter_start)
        self.clock.attach(self.vehicle)  # power for the sub-step first,
        self.clock.attach(self.meter)    # then the meter integrates it

    def step(self, ms):
        self.clock.sleep_ms(ms)

    def run(self, gun, ms, until=None):
        """Tick `gun` as its main loop would, for `ms` of simulated time or
        until until() is true (checked after each tick). Returns elapsed ms."""
        clock = self.clock
        diff = clock.ticks_diff
        t0 = clock.ticks_ms()
        while True:
            d = gun.tick()
            if until is not None and until():
                break
            left = ms - diff(clock.ticks_ms(), t0)
            if left <= 0:
                break
            if d < 1:
                d = 1
            if d > left:
                d = left
            clock.sleep_ms(d)
        return diff(clock.ticks_ms(), t0)
