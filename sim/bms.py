# The one simulated vehicle BMS (decisions.md: "One BMS model in the
# simulation package, with two small adapters"): a battery (capacity, SOC
# rising with the energy delivered, voltage limits, taper) behind the BMS
# side of GB/T 27930-2015, talking to the charger over a CAN port:
#
#   QueueBus()          in-process, MicroPython and CPython (the mp suites)
#   VirtualBus(channel) python-can's virtual bus (CPython tests and tools)
#
# Both hand out ports shaped like MicroPython's pyb.CAN (send(data, id),
# any(0), recv(0) -> (id, rtr, fmi, data)), the shape firmware/bms.py takes.
#
# The model is also the "vehicle" the simulated meter measures
# (sim/hardware.py SimMeter: .power, .voltage_x10) and the one a shared
# output commands (SimOutput: .pile_max_w, .shared): attach it to the
# SimClock and it advances with simulated time.
#
# Faults on demand: silent (stops answering, from now or when it reaches a
# stage: silent_at="BRM" / "BCP" / "BRO" / "charging"), stop(flags) (a BST
# with those flags: "soc", "insulation", "battery_temp", ...), alarm(flag)
# (a BSM alarm), bem(flags) (it reports a timeout on us), forbid (BSM "not permitted": a pause), stop_soc (the BMS
# ends the charge there with BST "soc"), no VIN (vin=""). Unplugging clears
# every fault: the next car plugged in is a new one.
from protocol import gbt27930 as G
from protocol import gbt27930_msgs as M

# stages of the BMS side
WAIT = 0        # plugged, waiting for CHM
HANDSHAKE = 1   # BHM
RECOGNITION = 2  # BRM until CRM 0xAA
PARAMETERS = 3  # BCP until CML
READY = 4       # BRO until CRO 0xAA
CHARGING = 5    # BCL, BCS, BSM
STOPPING = 6    # BST until CST
STATS = 7       # BSD until CSD
ENDED = 8
STAGES = ("wait", "handshake", "recognition", "parameters", "ready", "charging", "stopping",
          "stats", "ended")
_WMS_PER_WH = 3600000
# silent_at: the BMS falls silent when it would start sending this
_SILENT_AT = {"BHM": HANDSHAKE, "BRM": RECOGNITION, "BCP": PARAMETERS, "BRO": READY,
              "BCL": CHARGING, "charging": CHARGING, "BSD": STATS}


# what a battery profile may set besides capacity, SOC, VIN and power (SimBms.arrive)
_PROFILE = ("voltage_dv", "max_dv", "max_da", "taper_soc", "stop_soc")


def random_profile(rnd, cml_dv=7500):
    """A car drawn with rnd (random.Random): capacity 30..100 kWh, start
    SOC 5..89 %, a 350..650 V pack with its BCP limits (the highest
    voltage at most the charger's CML, cml_dv), 125..400 A, 30..250 kW,
    the taper from 60..94 % SOC; one in five ends the charge itself
    (BST "soc") at 80..99 %. SimBms.arrive's arguments (pile-chaos --bms)."""
    v = rnd.choice((3500, 4000, 4500, 5500, 6500))
    return {"capacity_wh": rnd.choice((30000, 45000, 60000, 75000, 100000)),
            "soc": rnd.randrange(5, 90), "vin": "LSIM%013d" % rnd.randrange(10 ** 13),
            "max_power": rnd.choice((30000, 60000, 120000, 250000)),
            "voltage_dv": v, "max_dv": min(cml_dv, v * 115 // 100),
            "max_da": rnd.choice((1250, 2000, 2500, 4000)),
            "taper_soc": rnd.randrange(60, 95),
            "stop_soc": rnd.randrange(80, 100) if rnd.random() < 0.2 else 100}


class _Port:
    """One end of a QueueBus: pyb.CAN-shaped."""

    def __init__(self, bus, side):
        self._bus = bus
        self._side = side
        self.inbox = []
        self.sent = []          # (id, data) this end sent last, for tests (16 kept)

    def send(self, data, can_id, timeout=0):
        data = bytes(data)
        if len(data) > 8:
            raise ValueError("CAN: %d data bytes, 8 at most" % len(data))
        self.sent.append((can_id, data))
        if len(self.sent) > 16:
            self.sent.pop(0)
        if not self._bus.cut:
            self._bus.ports[1 - self._side].inbox.append((can_id, False, 0, data))

    def any(self, fifo=0):
        return len(self.inbox) > 0

    def recv(self, fifo=0, timeout=0):
        if not self.inbox:
            raise OSError("CAN: nothing received")
        return self.inbox.pop(0)


class QueueBus:
    """Two pyb.CAN-shaped ports joined in memory: .charger and .bms.
    cut=True drops every frame (the cable pulled)."""

    def __init__(self):
        self.cut = False
        self.ports = (_Port(self, 0), _Port(self, 1))
        self.charger, self.bms = self.ports


class _CanPort:
    """python-can Bus -> pyb.CAN shape."""

    def __init__(self, bus):
        self.bus = bus
        self._peek = None

    def send(self, data, can_id, timeout=0):
        import can
        self.bus.send(can.Message(arbitration_id=can_id, data=bytes(data), is_extended_id=True))

    def any(self, fifo=0):
        if self._peek is None:
            # The virtual bus's inbox (a queue.Queue): an empty one needs no
            # recv(), whose locks and filter pass cost most of an idle poll.
            q = getattr(self.bus, "queue", None)
            if q is not None and q.empty():
                return False
            self._peek = self.bus.recv(timeout=0)
        return self._peek is not None

    def recv(self, fifo=0, timeout=0):
        if not self.any():
            raise OSError("CAN: nothing received")
        m = self._peek
        self._peek = None
        return (m.arbitration_id, False, 0, bytes(m.data))

    def close(self):
        self.bus.shutdown()


class VirtualBus:
    """Two ports on python-can's virtual bus `channel` (every Bus opened on
    the same channel in this process sees the frames: a dissector or a
    logger can listen too). A frame sent is queued at the other end at
    once, so a single-threaded simulation needs no waits."""

    def __init__(self, channel="pile-bms"):
        import can
        self.channel = channel
        self.charger = _CanPort(can.Bus(interface="virtual", channel=channel))
        self.bms = _CanPort(can.Bus(interface="virtual", channel=channel))

    def close(self):
        self.charger.close()
        self.bms.close()


def open_bus(url):
    """A bus by URL, as pyserial opens ports: "queue://" or "virtual://NAME"."""
    if url.startswith("queue://"):
        return QueueBus()
    if url.startswith("virtual://"):
        return VirtualBus(url[10:] or "pile-bms")
    raise ValueError("CAN bus URL: %r (queue:// or virtual://NAME)" % url)


class SimBms:
    """A vehicle: battery + BMS on `port` (the BMS end of a bus), charged
    through `contactor`. capacity_wh, soc (start %), vin (17 chars, "" none),
    max_dv / max_da (BCP: the highest total voltage and current it takes),
    voltage_dv (the pack's voltage), max_power (W it asks for at most),
    taper_soc (above it the demand falls, linearly in the energy missing, to
    10 % at full), stop_soc (the BMS sends BST "soc" there)."""

    def __init__(self, port, contactor, capacity_wh=60000, soc=20, vin="LSVAU2180N2183294",
                 max_dv=7500, max_da=2500, voltage_dv=4000, max_power=250000, taper_soc=80,
                 stop_soc=100, ramp_ms=1000, bro_wait_ms=500, plugged=True):
        self.port = port
        self.contactor = contactor
        self._cap = capacity_wh * _WMS_PER_WH
        self._e = self._cap * soc // 100
        self.vin = vin
        self.max_dv = max_dv
        self.max_da = max_da
        self.voltage_x10 = voltage_dv     # the meter's name for it (0.1 V)
        self.max_power = max_power
        self.taper_soc = taper_soc
        self.stop_soc = stop_soc
        self.ramp_ms = ramp_ms
        self.bro_wait_ms = bro_wait_ms
        self.plugged = plugged
        self.pile_max_w = 10 ** 9        # a shared output's limit (SimOutput)
        self.shared = False
        self.power = 0
        self.delivered_wms = 0
        # faults on demand
        self.silent = False
        self.silent_at = None
        self.forbid = False
        self.bro_back = False    # BRO 0xAA, then 0x00 (a BMS taking back "ready")
        self._bro_sent = False
        self._alarms = ()
        self._stop_flags = None
        self._stop_at = None
        self._bem = None
        self._bem_once = False
        # dialogue
        self.stage = WAIT
        self.log = []            # (ms, event) for tests
        self._t = 0
        self._t0 = 0
        self._sent = {}
        self._cml = None
        self._on_ms = 0
        self._tx = None          # (pgn, payload) waiting for the charger's CTS
        self.cst = None          # the charger's CST flags
        self.cem = None          # the charger's CEM flags
        self.ccs = None
        self._ccs_t = None

    # --- the battery -------------------------------------------------------------

    def arrive(self, capacity_wh=None, soc=None, vin=None, max_power=None, **limits):
        """Another car takes the gun's place: its battery (capacity, start
        SOC), VIN ("" none; given a SOC without one: none) and profile
        (voltage_dv, max_dv, max_da, taper_soc, stop_soc: SimBms's
        arguments). What is not given stays as it was."""
        if capacity_wh is not None:
            self._cap = capacity_wh * _WMS_PER_WH
        if soc is not None:
            self._e = self._cap * soc // 100
        if vin is not None or soc is not None:
            self.vin = vin or ""
        if max_power is not None:
            self.max_power = max_power
        for k, v in limits.items():
            if k not in _PROFILE:
                raise ValueError("battery profile: unknown %r (%s)" % (k, ", ".join(_PROFILE)))
            setattr(self, "voltage_x10" if k == "voltage_dv" else k, v)

    @property
    def soc(self):
        return self._e * 100 // self._cap

    def _target_w(self):
        """W the BMS asks for (its BCL): its own limit and taper."""
        left = self._cap - self._e
        if left <= 0:
            return 0
        pmax = self.max_power
        lim = self.voltage_x10 * self.max_da // 100   # its current limit at its voltage
        if lim < pmax:
            pmax = lim
        band = self._cap * (100 - self.taper_soc) // 100
        if left < band:
            floor = pmax // 10
            return floor + (pmax - floor) * left // band
        return pmax

    def stop(self, flags=("soc",), at=None):
        """Make the BMS end the charge with a BST of these flags: now, or
        when it reaches stage `at` (as silent_at: "BHM", "BRM", "BCP",
        "BRO", "BCL"): an abort in any stage of the dialogue (once)."""
        if at is None:
            self._stop_flags = tuple(flags)
            self._stop_at = None
        else:
            self._stop_at = (at, tuple(flags))

    def bem(self, flags=("CCS",), once=False):
        """The BMS reports it timed out waiting for the charger (BEM), from
        now until bem(()) (like silent, it outlasts a new dialogue); once:
        one BEM, then it answers a new recognition (CRM 0x00) as usual."""
        self._bem = tuple(flags) if flags else None
        self._bem_once = once

    def alarm(self, flag):
        """A BSM alarm (FLAGS["BSM"]: cell_high, overtemp, insulation, ...)."""
        self._alarms = (flag,)

    def advance(self, dt):
        self._t += dt
        if not self.plugged:
            if self.stage != WAIT or self.silent:
                # unplugged: the next car plugged in has none of this one's faults
                self.silent = self.forbid = self.bro_back = False
                self.silent_at = self._stop_flags = self._bem = self._stop_at = None
                self._alarms = ()
            self.power = 0
            self.stage = WAIT
            while self.port.any(0):
                self.port.recv(0)
            return
        self._dialogue()
        p = 0
        # power flows while the charger outputs (its CCS, at most 200 ms old)
        ccs = self._ccs_t is not None and self._t - self._ccs_t <= 200
        if self.stage == CHARGING and self.contactor.closed and ccs and not self.forbid:
            p = self._target_w()
            if self._cml is not None:
                lim = self.voltage_x10 * self._cml["max_da"] // 100
                if lim < p:
                    p = lim
            if p > self.pile_max_w:
                p = self.pile_max_w
            if self._on_ms < self.ramp_ms:
                p = p * self._on_ms // self.ramp_ms
            self._on_ms += dt
        else:
            self._on_ms = 0
        if not self.contactor.closed:
            p = 0
        self.power = p
        e = p * dt
        self._e += e
        if self._e > self._cap:
            self._e = self._cap
        self.delivered_wms += e

    # --- the dialogue --------------------------------------------------------------

    def _enter(self, stage):
        if self.silent_at is not None and _SILENT_AT.get(self.silent_at) == stage:
            self.silent = True
        if stage == HANDSHAKE:          # a new charge: the last one's stop is over
            self._stop_flags = None
            self._tx = None
            self._bro_sent = False
            self.cst = self.cem = None
        sa = self._stop_at
        if sa is not None and _SILENT_AT.get(sa[0]) == stage:
            self._stop_flags = sa[1]
            self._stop_at = None        # once: the next dialogue goes through
        self.stage = stage
        self._t0 = self._t
        self._sent = {}
        self.log.append((self._t, STAGES[stage]))

    def _due(self, name, period=None):
        s = self._sent.get(name)
        if period is None:
            period = G.BY_NAME[name].period_ms
        if s is not None and self._t - s < period:
            return False
        self._sent[name] = self._t
        return True

    def _send(self, name, data):
        m = G.BY_NAME[name]
        if len(data) <= 8:
            self.port.send(data, G.id_of(name))
            return
        # J1939 TP: RTS now, the packets when the charger's CTS comes
        self._tx = (m.pgn, data)
        self.port.send(G.tp_rts(m.pgn, len(data)), G.make_id(7, G.TP_CM, G.CHARGER, G.BMS))

    def _dialogue(self):
        port = self.port
        while port.any(0):
            m = port.recv(0)
            if (m[0] >> 16) & 0xFF == 0x12:
                self._ccs_t = self._t    # the charger's output is on (CCS)
            if not self.silent:
                self._frame(m[0], m[-1])
        if self.silent:
            return
        st = self.stage
        if self._stop_flags is not None and HANDSHAKE <= st < CHARGING:
            self._enter(STOPPING)           # an abort before charging
            st = STOPPING
        if self._bem is not None and st != ENDED:
            if self._due("BEM"):
                self._send("BEM", M.encode_flags("BEM", self._bem))
                if self._bem_once:
                    self._bem = None
            return
        if st == HANDSHAKE:
            if self._due("BHM"):
                self._send("BHM", M.encode("BHM", max_dv=self.max_dv))
        elif st == RECOGNITION:
            if self._due("BRM"):
                wh = self._cap // _WMS_PER_WH
                dah = wh * 100 // self.voltage_x10 if self.voltage_x10 else 0
                self._send("BRM", G.encode_brm(capacity_dah=dah, voltage_dv=self.voltage_x10,
                                               vin=self.vin or ""))
        elif st == PARAMETERS:
            if self._due("BCP"):
                self._send("BCP", M.encode("BCP", cell_max_cv=425, max_da=self.max_da,
                                           energy_dkwh=self._cap // (_WMS_PER_WH * 100),
                                           max_dv=self.max_dv, max_temp_c=60,
                                           soc_dpct=self._e * 1000 // self._cap,
                                           voltage_dv=self.voltage_x10))
        elif st == READY:
            if self._due("BRO"):
                ok = self._t - self._t0 >= self.bro_wait_ms
                if ok and self.bro_back:      # fault: "ready" taken back once sent
                    self._send("BRO", bytes((M.READY if not self._bro_sent else M.NOT_READY,)))
                    self._bro_sent = True
                else:
                    self._send("BRO", bytes((M.READY if ok else M.NOT_READY,)))
        elif st == CHARGING:
            if self._stop_flags is None and self.soc >= self.stop_soc:
                self._stop_flags = ("soc",)
            if self._stop_flags is not None:
                self._enter(STOPPING)
                return self._dialogue_stopping()
            if self._due("BCL"):
                w = self._target_w()
                da = w * 100 // self.voltage_x10 if self.voltage_x10 else 0
                if da > self.max_da:
                    da = self.max_da
                self._send("BCL", G.encode_bcl(self.voltage_x10, da, 2))
            if self._due("BCS"):
                cur = self.power * 100 // self.voltage_x10 if self.voltage_x10 else 0
                left = self._cap - self._e
                mins = left // (self.power * 60000) if self.power else 0
                self._send("BCS", M.encode("BCS", voltage_dv=self.voltage_x10, current_da=cur,
                                           cell=0x1000 | 380, soc=self.soc,
                                           minutes_left=mins if mins < 600 else 600))
            if self._due("BSM"):
                self._send("BSM", M.encode_bsm(self._alarms, not self.forbid, cell_no=1,
                                               max_temp_c=30, max_probe=1, min_temp_c=25,
                                               min_probe=2))
        elif st == STOPPING:
            self._dialogue_stopping()
        elif st == STATS:
            if self._due("BSD"):
                self._send("BSD", M.encode("BSD", soc=self.soc, cell_min_cv=370, cell_max_cv=390,
                                           min_temp_c=25, max_temp_c=30))

    def _dialogue_stopping(self):
        if self._due("BST"):
            self._send("BST", M.encode_flags("BST", self._stop_flags or ("charger",)))

    def _frame(self, cid, data):
        _, pgn, da, sa = G.split_id(cid)
        if da != G.BMS or sa != G.CHARGER:
            return
        if pgn == G.TP_CM:
            if data[0] == G.CTS and self._tx is not None and G.tp_pgn(data) == self._tx[0]:
                for pk in G.tp_packets(self._tx[1]):
                    self.port.send(pk, G.make_id(7, G.TP_DT, G.CHARGER, G.BMS))
            elif data[0] in (G.EOM_ACK, G.ABORT):
                self._tx = None
            return
        m = G.BY_PGN.get(pgn)
        if m is None:
            return
        n = m.name
        st = self.stage
        if n == "CHM" and (st == WAIT or st == ENDED):
            self._enter(HANDSHAKE)
        elif n == "CRM":
            if data[0] == M.NOT_READY and st in (WAIT, HANDSHAKE, PARAMETERS, READY):
                self._enter(RECOGNITION)    # (after a BEM: recognition again)
            elif data[0] == M.READY and st in (WAIT, HANDSHAKE, RECOGNITION):
                self._enter(PARAMETERS)
        elif n == "CML" and st == PARAMETERS:
            self._cml = M.decode("CML", data)
            self._enter(READY)
        elif n == "CRO" and st == READY and data[0] == M.READY and not self.bro_back:
            self._enter(CHARGING)
        elif n == "CCS":
            self.ccs = M.decode("CCS", data)
        elif n == "CST":
            self.cst = M.decode_flags("CST", data)
            if st in (HANDSHAKE, RECOGNITION, PARAMETERS, READY, CHARGING):
                self._stop_flags = ("charger",)
                self._enter(STOPPING)
            elif st == STOPPING:
                self._enter(STATS)
        elif n == "CSD" and st == STATS:
            self._enter(ENDED)
        elif n == "CEM":
            self.cem = M.decode_flags("CEM", data)
            if st != ENDED:
                self._enter(ENDED)   # after a CEM the BMS stops and waits


class SimImd:
    """A gun's insulation monitor: start() begins a check that gives its
    result() after ms (None until then): True, or False with fault=True.
    Attach to the SimClock."""

    def __init__(self, ms=500, fault=False):
        self.ms = ms
        self.fault = fault
        self.checks = 0
        self._left = None

    def start(self):
        self.checks += 1
        self._left = self.ms

    def advance(self, dt):
        if self._left is not None and self._left > 0:
            self._left -= dt

    def result(self):
        if self._left is None or self._left > 0:
            return None
        return not self.fault


class BmsGun:
    """One gun's simulated hardware with a BMS vehicle, on `clock`: the
    contactor, the vehicle (SimBms on the bus's BMS end), the meter that
    measures it and the firmware's charger side (firmware/bms.py Charger)
    on the charger end as `.vehicle`, the part the pile's Gun reads, with
    its insulation monitor (`.imd`, SimImd: imd_ms to a result). Same
    attribute names as sim/hardware.py SimWorld (.contactor, .meter,
    .vehicle), so a rig built for SimWorlds takes it. bus: a QueueBus or
    VirtualBus (default: a new QueueBus); profile: SimBms's arguments;
    charger: the Charger's (max_da, ...)."""

    def __init__(self, clock, bus=None, charger=None, meter_start=0, imd_ms=500, **profile):
        from firmware.bms import Charger
        from sim.hardware import SimContactor, SimMeter
        self.clock = clock
        self.bus = bus if bus is not None else QueueBus()
        self.contactor = SimContactor()
        self.bms = SimBms(self.bus.bms, self.contactor, **profile)
        self.meter = SimMeter(self.bms, self.contactor, meter_start)
        b = self.bms
        self.imd = SimImd(imd_ms)
        self.vehicle = Charger(self.bus.charger, clock, self.contactor, plug=b,
                               measure=self._measure, insulation=self.imd, **(charger or {}))
        clock.attach(self.imd)
        clock.attach(b)            # power for the sub-step first,
        clock.attach(self.meter)   # then the meter integrates it

    def _measure(self):
        b = self.bms
        if not b.power or not b.voltage_x10:
            return (b.voltage_x10 if self.contactor.closed else 0, 0)
        return (b.voltage_x10, b.power * 100 // b.voltage_x10)
