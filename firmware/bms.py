# The charger side of GB/T 27930-2015 for one gun: the dialogue with the
# vehicle's BMS over CAN (docs/bms.md), non-blocking: poll() is called from
# the pile's control loop and returns the ms until it wants to run again.
#
#   handshake    CHM (250 ms)            <- BHM
#   recognition  CRM 0x00 (250 ms)       <- BRM (49 bytes, J1939 TP: the VIN)
#                CRM 0xAA (250 ms)       <- BCP (13 bytes, TP)
#   parameters   CTS (500) + CML (250)   <- BRO 0x00 ... 0xAA
#                CRO 0xAA (250 ms)       <- BCL (50) + BCS (250, TP)
#   charging     CCS (50 ms)             <- BCL, BCS, BSM
#   ending       CST (10 ms)             <- BST, then BSD;  CSD (250 ms)
#   errors       CEM (250 ms) when a BMS message is late; BEM from the BMS
#
# The session (firmware/session.py) sees this object as its vehicle: plugged,
# vin (BRM), soc (BCS, else BCP), max_power (BCP), demand (BCL, W: what power
# sharing divides) and stop_reason (the YKC stop reason of a BMS stop or a
# timeout; the pile ends the gun's session with it). The dialogue starts
# when the gun's contactor closes (a start executed) and ends with a CST
# when it opens (the session stopped, whatever the cause).
#
# CAN port: shaped like MicroPython's pyb.CAN / machine.CAN in extended-id
# mode: send(data, id), any(0), recv(0) -> a tuple whose first item is the
# 29-bit id and last the data (pyb.CAN: (id, rtr, fmi, data); newer ports
# add the extended flag). The simulated BMS and its two adapters are in
# sim/bms.py.
from firmware.ticks import diff_of
from protocol import fields as F
from protocol import gbt27930 as G
from protocol import gbt27930_msgs as M

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

# stages
IDLE = const(0)
HANDSHAKE = const(1)     # CHM, waiting for BHM
RECOGNITION = const(2)   # CRM 0x00, waiting for BRM
RECOGNISED = const(3)    # CRM 0xAA, waiting for BCP
PARAMETERS = const(4)    # CTS + CML, waiting for BRO 0xAA
READY = const(5)         # CRO 0xAA, waiting for the first BCL and BCS
CHARGING = const(6)      # CCS; BCL, BCS, BSM watched
ENDING = const(7)        # CST, waiting for BST and then BSD
STATISTICS = const(8)    # CSD
ERROR = const(9)         # CEM: a BMS message did not come in time
DONE = const(10)
STAGE_NAMES = ("idle", "handshake", "recognition", "recognised", "parameters", "ready",
               "charging", "ending", "statistics", "error", "done")

# The standard's timeouts (clause 8 and its tables), ms
T_DEFAULT = const(5000)  # BHM*, BRM, BCP, first BRO, BST, BSM
T_BRO_READY = const(60000)  # BRO 0x00 ... 0xAA
T_BCL = const(1000)
T_BCS = const(5000)
T_BSD = const(10000)     # after CST
T_IMD = const(10000)     # the insulation check's result (ours: a board's IMD answers in seconds)
_CEM_MS = const(1000)    # CEM sent this long before the dialogue is over
_CSD_MS = const(1000)    # CSD sent this long
_PAUSE_MS = const(600000)  # BSM "not permitted" for 10 minutes: the vehicle stops the charge
_REPORTS = const(8)      # YKC BMS frames waiting for the pile to send (oldest dropped)
_BEM_RESTARTS = const(3)  # a BEM before charging restarts recognition this often

# YKC V1.6 stop reasons (0x3B) for what ends a charge on the BMS side
# (docs/bms.md has the table and where the codes come from).
YKC_SOC = const(0x41)            # BST: SOC target / total or cell voltage set point reached
YKC_FAIL_BHM = const(0x59)       # start failures: BHM, BRM, BCP, BRO, BCS, BCL timeouts
YKC_FAIL_BRM = const(0x5A)
YKC_FAIL_BCP = const(0x5B)
YKC_FAIL_BRO = const(0x5C)
YKC_FAIL_BCS = const(0x5D)
YKC_FAIL_BCL = const(0x5E)
YKC_FAIL_CONTROL = const(0x4A)   # BEM before charging, or the BMS refused our CML
YKC_FAIL_INSULATION = const(0x57)  # the insulation check failed (or gave no result)
YKC_FAIL_BMS = const(0x52)       # a BST before charging: "BMS not ready"
YKC_FAIL_TEMP = const(0x53)      # a BST before charging for a temperature
YKC_FAIL_BRO_BACK = const(0x62)  # BRO fell back from 0xAA to 0x00 before charging
YKC_TEMP = const(0x74)           # BST connector over-temperature
YKC_VOLTAGE = const(0x79)        # BST voltage error
YKC_CURRENT = const(0x7A)        # BST / BSM over-current
YKC_CELL = const(0x7B)           # BSM cell voltage high
YKC_PACK_TEMP = const(0x7C)      # BST / BSM battery over-temperature
YKC_BATTERY = const(0x81)        # BST insulation, connector, relay, CC2, other fault
YKC_FORBIDDEN = const(0x82)      # BSM "not permitted" for 10 minutes
YKC_BCS = const(0x84)            # timeouts while charging
YKC_BCL = const(0x85)
YKC_BSM = const(0x86)
YKC_CCS = const(0x89)            # BEM: the BMS lost our CCS (or another of ours)

# BST flag -> YKC stop reason, first match wins (faults before the normal ends)
_BST_MAP = (("insulation", YKC_BATTERY), ("battery_temp", YKC_PACK_TEMP),
            ("bms_temp", YKC_PACK_TEMP), ("connector_temp", YKC_TEMP),
            ("connector", YKC_BATTERY), ("relay", YKC_BATTERY), ("cc2", YKC_BATTERY),
            ("other", YKC_BATTERY), ("overcurrent", YKC_CURRENT),
            ("voltage_error", YKC_VOLTAGE), ("soc", YKC_SOC), ("voltage", YKC_SOC),
            ("cell_voltage", YKC_SOC))
_BSM_MAP = (("insulation", YKC_BATTERY), ("overtemp", YKC_PACK_TEMP),
            ("cell_high", YKC_CELL), ("overcurrent", YKC_CURRENT),
            ("connector", YKC_BATTERY))


def bst_reason(flags, charging=True):
    """The YKC stop reason of a BST's flags (0x90 unknown when none is set).
    Before charging, a BST is a start failure: insulation 0x57, a
    temperature 0x53, the battery full 0x41, anything else "BMS not ready"
    0x52."""
    if not charging:
        for f in flags:
            if f == "insulation":
                return YKC_FAIL_INSULATION
            if f.endswith("temp"):
                return YKC_FAIL_TEMP
        for f in flags:
            if f in ("soc", "voltage", "cell_voltage"):
                return YKC_SOC
        return YKC_FAIL_BMS
    for f, r in _BST_MAP:
        if f in flags:
            return r
    return 0x90


class Charger:
    """One gun's charger side. can: the CAN port; clock: ticks_ms() (and
    now() for CTS); contactor: the gun's (closed = a session runs); plug: an
    object with .plugged (CC1 sense), None: always plugged; measure():
    (output voltage 0.1 V, current 0.1 A) for CCS; energy(): 0.1 kWh of
    the session for CSD. max_dv / min_dv / max_da / min_da: what CML
    offers; charger_no: CRM's charger number. insulation: the gun's
    insulation monitor (IMD), start() then result() -> None (measuring),
    True (good), False (fault), checked after BHM and before CRM; None: no
    check here (done elsewhere)."""

    def __init__(self, can, clock, contactor, plug=None, measure=None, energy=None,
                 max_dv=7500, min_dv=2000, max_da=2500, min_da=0, charger_no=1, log=None,
                 report_ms=15000, insulation=None):
        self.can = can
        self.clock = clock
        self.contactor = contactor
        self.plug = plug
        self.measure = measure
        self.energy = energy
        self.cml = M.encode("CML", max_dv=max_dv, min_dv=min_dv, max_da=max_da, min_da=min_da)
        self.max_da = max_da
        self.charger_no = charger_no
        self._log = log
        self.report_ms = report_ms
        self.insulation = insulation
        # YKC BMS frames (0x15..0x25) for the pile to send: (frame name,
        # field values without serial/pile/gun), taken by the pile each poll
        self.reports = []
        self._diff = diff_of(clock)
        self._tp = G.TpReceiver()
        self.stage = IDLE
        self.stages = 0           # dialogues begun since boot
        self._reset()

    def _reset(self):
        self.brm = None           # decoded BRM
        self.bcp = None
        self.bcl = None
        self.bcs = None
        self.bsm = None
        self.bst = None           # BST flags once received
        self.bem = None           # BEM flags once received
        self.cem = None           # CEM flags we sent
        self.cst = None           # CST flags we sent
        self.stop_reason = 0      # YKC: why the BMS side ended the charge
        self.paused = False
        self._t0 = 0              # ticks the stage began
        self._seen = {}           # message name -> ticks last received
        self._sent = {}           # message name -> ticks last sent
        self._start_t = 0
        self._pause_t = 0
        self._bro = False         # any BRO seen
        self._raw = {}            # message name -> last payload (for the YKC reports)
        self._report_t = None
        self._imd_t = None        # ticks the insulation check began
        self._restarts = 0        # recognitions restarted after a BEM

    def log(self, msg):
        if self._log:
            self._log("bms: " + msg)

    # --- what the session reads -------------------------------------------------

    @property
    def plugged(self):
        return True if self.plug is None else self.plug.plugged

    @property
    def vin(self):
        return self.brm["vin"] if self.brm and self.brm["vin"] else None

    @property
    def soc(self):
        if self.bcs is not None:
            return self.bcs["soc"]
        if self.bcp is not None and self.bcp["soc_dpct"] <= 1000:
            return self.bcp["soc_dpct"] // 10
        return 0

    @property
    def max_power(self):
        """W the battery takes at most (BCP), 0 unknown."""
        p = self.bcp
        if p is None:
            return 0
        da = p["max_da"] if p["max_da"] < self.max_da else self.max_da
        return p["max_dv"] * da // 100

    @property
    def demand(self):
        """W the BMS asks for now (BCL voltage x current, within our CML
        maximum), 0 outside charging or while the BMS pauses."""
        d = self.bcl
        if self.stage != CHARGING or d is None or self.paused:
            return 0
        da = d["current_da"]
        if da > self.max_da:
            da = self.max_da
        if da <= 0:
            return 0
        return d["voltage_dv"] * da // 100

    def stage_name(self):
        return STAGE_NAMES[self.stage]

    # --- the loop ------------------------------------------------------------------

    def poll(self):
        """Read what came in, act on timeouts, send what is due. Returns ms
        until the next call is wanted."""
        t = self.clock.ticks_ms()
        if not self.plugged:
            if self.stage != IDLE:
                self.log("unplugged in %s" % self.stage_name())
            self.stage = IDLE
            self._drain(t)
            return 100
        st = self.stage
        closed = self.contactor.closed
        if st == IDLE or st == DONE:
            if not closed:
                self._drain(t)
                return 100
            self._reset()
            self.stages += 1
            self._enter(HANDSHAKE, t)
            self._start_t = t
        elif not closed and HANDSHAKE <= st <= CHARGING:
            # the session ended on the pile (target, stop, fault, VIN refused)
            self._stop(t, ("condition",), 0)
        self._drain(t)
        self._timeouts(t)
        return self._send_due(t)

    def _enter(self, stage, t):
        self.stage = stage
        self._t0 = t
        self._sent = {}

    def _since(self, t, name):
        s = self._seen.get(name)
        return self._diff(t, s if s is not None else self._t0)

    def _drain(self, t):
        can = self.can
        n = 0
        while can.any(0) and n < 32:   # a bounded batch per poll
            m = can.recv(0)
            n += 1
            try:
                self._frame(m[0], m[-1], t)
            except (ValueError, IndexError) as e:
                self.log("bad frame %08X: %s" % (m[0], e))
        for what, v in self._tp.poll(t, self._diff):
            self._tp_out(what, v, t)

    def _frame(self, cid, data, t):
        _, pgn, da, sa = G.split_id(cid)
        if da != G.CHARGER or sa != G.BMS:
            return
        if pgn == G.TP_CM or pgn == G.TP_DT:
            for what, v in self._tp.feed("cm" if pgn == G.TP_CM else "dt", data, t):
                self._tp_out(what, v, t)
            return
        m = G.BY_PGN.get(pgn)
        if m is not None and m.sender == "B" and self.stage != IDLE:
            self._message(m.name, data, t)

    def _tp_out(self, what, v, t):
        if what == "send":
            self.can.send(v, G.make_id(7, G.TP_CM, G.BMS, G.CHARGER))
        elif what == "done":
            m = G.BY_PGN.get(v[0])
            if m is not None and m.sender == "B" and self.stage != IDLE:
                self._message(m.name, v[1], t)

    def _message(self, name, data, t):
        self._seen[name] = t
        self._raw[name] = data
        st = self.stage
        if name == "BEM":
            self.bem = M.decode_flags("BEM", data)
            self._report_errors()
            if st < ENDING:
                self.log("BEM %s in %s" % (",".join(self.bem), self.stage_name()))
                if RECOGNITION <= st <= READY and self._restarts < _BEM_RESTARTS:
                    # before charging: recognition again (CRM 0x00), up to 3 times
                    self._restarts += 1
                    self.brm = self.bcp = self.bcl = self.bcs = None
                    self._bro = False
                    self._enter(RECOGNITION, t)
                    return
                self._stop(t, ("fault",), YKC_CCS if st == CHARGING else YKC_FAIL_CONTROL)
            return
        if name == "BST":
            if self.bst is None:
                self.bst = M.decode_flags("BST", data)
                self._report("bms_abort", _abort_fields(data))
            if HANDSHAKE <= st <= CHARGING:
                self._stop(t, ("bms",), bst_reason(self.bst, st == CHARGING))
            elif st == ENDING:
                self._seen["BST"] = t
            return
        if name == "BSD":
            if st == ENDING or st == ERROR:
                self._enter(STATISTICS, t)
                self._report_end(t)
            return
        if st == HANDSHAKE and name == "BHM":
            self._handshake_done(t)
        elif st == HANDSHAKE and name == "BRM" and self.insulation is None:
            # a GB/T 27930-2011 vehicle skips BHM
            self._enter(RECOGNITION, t)
            self._message(name, data, t)
        elif st == RECOGNITION and name == "BRM":
            self.brm = G.decode_brm(data)
            self._report("bms_handshake", _handshake_fields(data))
            self.log("BRM: VIN %s" % (self.brm["vin"] or "none"))
            self._enter(RECOGNISED, t)
        elif st == RECOGNISED and name == "BCP":
            self.bcp = M.decode("BCP", data)
            self._enter(PARAMETERS, t)
        elif st == READY and name == "BRO" and data and data[0] == M.NOT_READY:
            # the BMS took its "ready" back during our precharge (GB/T 2015)
            self._stop(t, ("fault",), YKC_FAIL_BRO_BACK)
        elif st == PARAMETERS and name == "BRO":
            self._bro = True
            if data[0] == M.READY:
                self._enter(READY, t)
                v = M.raw("BCP", self._raw.get("BCP", b""))
                c = M.raw("CML", self.cml)
                self._report("bms_params", {
                    "cell_max_voltage": v[0], "max_current": v[1], "nominal_energy": v[2],
                    "max_voltage": v[3], "max_temp": v[4], "soc": v[5], "battery_voltage": v[6],
                    "pile_max_voltage": c[0], "pile_min_voltage": c[1], "pile_max_current": c[2],
                    "pile_min_current": c[3]})
        elif name == "BCL" and (st == READY or st == CHARGING):
            self.bcl = G.decode_bcl(data)
            self._ready_to_charge(t)
        elif name == "BCS" and (st == READY or st == CHARGING):
            self.bcs = M.decode("BCS", data)
            self._ready_to_charge(t)
        elif name == "BSM" and st == CHARGING:
            d = M.decode("BSM", data)
            self.bsm = d
            for f, r in _BSM_MAP:
                if f in M.bsm_alarms(d):
                    self.log("BSM alarm %s" % f)
                    self._stop(t, ("fault",), r)
                    return
            permit = M.bsm_permit(d)
            if not permit and not self.paused:
                self._pause_t = t
            self.paused = not permit

    def _handshake_done(self, t):
        # BHM (or none in 5 s): the insulation check, then recognition
        if self.insulation is None:
            self._enter(RECOGNITION, t)
        elif self._imd_t is None:
            self._imd_t = t
            self.insulation.start()

    def _ready_to_charge(self, t):
        if self.stage == READY and self.bcl is not None and self.bcs is not None:
            self._enter(CHARGING, t)
            self._seen["BSM"] = t

    def _stop(self, t, cst, reason):
        """End the dialogue from our side: CST with `cst` flags; `reason`
        (0: the pile's own stop) is what the session is ended with."""
        if reason and not self.stop_reason:
            self.stop_reason = reason
            self.log("stop 0x%02X in %s" % (reason, self.stage_name()))
        self.cst = cst
        self._report("charger_abort", _abort_fields(M.encode_flags("CST", cst)))
        bst_in = self.bst is not None
        self._enter(ENDING, t)
        if bst_in:
            self._seen["BST"] = t

    def _timeout(self, t, flag, reason):
        self.cem = (flag,)
        self._report_errors()
        if not self.stop_reason:
            self.stop_reason = reason
        self.log("CEM: %s timeout, stop 0x%02X" % (flag, reason))
        self._enter(ERROR, t)

    def _timeouts(self, t):
        st = self.stage
        d = self._diff(t, self._t0)
        if st == HANDSHAKE:
            if self._imd_t is not None:
                ok = self.insulation.result()
                if ok:
                    self._enter(RECOGNITION, t)
                elif ok is not None or self._diff(t, self._imd_t) > T_IMD:
                    self.log("insulation check failed")
                    self._stop(t, ("fault",), YKC_FAIL_INSULATION)
            elif d > T_DEFAULT:     # no BHM: go on (2011 vehicles send none)
                self._handshake_done(t)
        elif st == RECOGNITION:
            if d > T_DEFAULT:
                self._timeout(t, "BRM", YKC_FAIL_BRM)
        elif st == RECOGNISED:
            if d > T_DEFAULT:
                self._timeout(t, "BCP", YKC_FAIL_BCP)
        elif st == PARAMETERS:
            if d > (T_BRO_READY if self._bro else T_DEFAULT):
                self._timeout(t, "BRO", YKC_FAIL_BRO)
        elif st == READY:
            if self.bcl is None and d > T_BCL:
                self._timeout(t, "BCL", YKC_FAIL_BCL)
            elif self.bcs is None and d > T_BCS:
                self._timeout(t, "BCS", YKC_FAIL_BCS)
        elif st == CHARGING:
            if self._since(t, "BCL") > T_BCL:
                self._timeout(t, "BCL", YKC_BCL)
            elif self._since(t, "BCS") > T_BCS:
                self._timeout(t, "BCS", YKC_BCS)
            elif self._since(t, "BSM") > T_DEFAULT:
                self._timeout(t, "BSM", YKC_BSM)
            elif self.paused and self._diff(t, self._pause_t) > _PAUSE_MS:
                self._stop(t, ("fault",), YKC_FORBIDDEN)
        elif st == ENDING:
            if self.bst is None and d > T_DEFAULT:
                self._timeout(t, "BST", 0)
            elif d > T_BSD:
                self._timeout(t, "BSD", 0)
        elif st == ERROR:
            if d >= _CEM_MS:
                self.stage = DONE
        elif st == STATISTICS:
            if d >= _CSD_MS:
                self.stage = DONE

    # --- YKC BMS frames (0x15..0x25) ----------------------------------------------

    def _report(self, name, values):
        r = self.reports
        r.append((name, values))
        if len(r) > _REPORTS:
            r.pop(0)

    def _report_errors(self):
        bem = M.encode_flags("BEM", self.bem or ())
        cem = M.encode_flags("CEM", self.cem or ())
        self._report("bms_error", {"bem_crm": bem[0], "bem_cml_cro": bem[1], "bem_ccs_cst": bem[2],
                                   "bem_csd": bem[3], "cem_brm": cem[0], "cem_bcp_bro": cem[1],
                                   "cem_bcs_bcl_bst": cem[2], "cem_bsd": cem[3]})

    def _report_end(self, t):
        v = M.raw("BSD", self._raw.get("BSD", b""))
        self._report("bms_end", {"soc": v[0], "cell_min_voltage": v[1], "cell_max_voltage": v[2],
                                 "min_temp": v[3], "max_temp": v[4],
                                 "minutes": self._diff(t, self._start_t) // 60000,
                                 "energy": self.energy() if self.energy else 0,
                                 "charger_no": self.charger_no})

    def _report_charging(self, t, dv, da, mins):
        # while charging, every report_ms: demand and output (0x23), BSM (0x25)
        if self._report_t is not None and self._diff(t, self._report_t) < self.report_ms:
            return
        self._report_t = t
        raw = self._raw
        bcl = raw.get("BCL", b"\xff" * 5)
        s = M.raw("BCS", raw.get("BCS", b""))
        self._report("bms_demand", {
            "demand_voltage": bcl[0] | bcl[1] << 8, "demand_current": bcl[2] | bcl[3] << 8,
            "charge_mode": bcl[4], "measured_voltage": s[0], "measured_current": s[1],
            "max_cell": s[2], "soc": s[3], "minutes_left": s[4], "output_voltage": dv,
            "output_current": G.current_raw(da), "minutes": mins})
        m = M.raw("BSM", raw.get("BSM", b""))
        self._report("bms_info", {"max_cell_no": m[0], "max_temp": m[1], "max_temp_point": m[2],
                                  "min_temp": m[3], "min_temp_point": m[4], "bsm_status1": m[5],
                                  "bsm_status2": m[6]})

    # --- sending -------------------------------------------------------------------

    def _due(self, t, name, period=None):
        s = self._sent.get(name)
        if period is None:
            period = G.BY_NAME[name].period_ms
        if s is not None and self._diff(t, s) < period:
            return period - self._diff(t, s)
        self._sent[name] = t
        return 0

    def _send(self, name, data):
        self.can.send(data, G.id_of(name))

    def _send_due(self, t):
        st = self.stage
        if st == HANDSHAKE:
            w = self._due(t, "CHM")
            if not w:
                self._send("CHM", M.encode("CHM", ver0=1, ver1=1, ver2=0))
                w = 250
        elif st == RECOGNITION or st == RECOGNISED:
            w = self._due(t, "CRM")
            if not w:
                self._send("CRM", M.encode("CRM", result=M.READY if st == RECOGNISED
                                           else M.NOT_READY, charger_no=self.charger_no))
                w = 250
        elif st == PARAMETERS:
            w = self._due(t, "CTS")
            if not w:
                y, mo, d, h, mi, s, _ = F.to_civil(self.clock.now())
                self._send("CTS", M.encode_cts(y, mo, d, h, mi, s))
                w = 500
            w2 = self._due(t, "CML")
            if not w2:
                self._send("CML", self.cml)
                w2 = 250
            w = w if w < w2 else w2
        elif st == READY:
            w = self._due(t, "CRO")
            if not w:
                self._send("CRO", bytes((M.READY,)))
                w = 250
        elif st == CHARGING:
            w = self._due(t, "CCS")
            if not w:
                dv, da = self.measure() if self.measure else (0, 0)
                # what the hardware reports, within what CCS can carry
                dv = 0 if dv < 0 else 0xFFFF if dv > 0xFFFF else dv
                da = 0 if da < 0 else 4000 if da > 4000 else da
                mins = self._diff(t, self._start_t) // 60000
                self._send("CCS", M.encode("CCS", voltage_dv=dv, current_da=da, minutes=mins,
                                           permit=0xFC if self.paused else 0xFD, fill=0xFF))
                self._report_charging(t, dv, da, mins)
                w = 50
        elif st == ENDING:
            w = self._due(t, "CST")
            if not w:
                self._send("CST", M.encode_flags("CST", self.cst or ()))
                w = 10
        elif st == STATISTICS:
            w = self._due(t, "CSD")
            if not w:
                mins = self._diff(t, self._start_t) // 60000
                e = self.energy() if self.energy else 0
                self._send("CSD", M.encode("CSD", minutes=mins, energy_dkwh=e,
                                           charger_no=self.charger_no))
                w = 250
        elif st == ERROR:
            w = self._due(t, "CEM")
            if not w:
                self._send("CEM", M.encode_flags("CEM", self.cem or ()))
                w = 250
        else:
            w = 100
        # J1939 TP: a transfer in progress is watched at T1 granularity at least
        if self._tp.busy() and w > 50:
            w = 50
        return w


def _abort_fields(b):
    # BST / CST as YKC 0x1D / 0x21 carry them: reason byte, fault word, error byte
    return {"abort_reason": b[0], "abort_fault": b[1] | b[2] << 8, "abort_error": b[3]}


def _ascii(b):
    for ch in b:
        if ch < 0x20 or ch > 0x7E:
            return ""
    return bytes(b).decode()


def _hex(b):
    return "".join("%02X" % x for x in b)


def _handshake_fields(b):
    # BRM's 49 bytes as YKC 0x15 names them
    b = bytes(b) + b"\xff" * (49 - len(b)) if len(b) < 49 else b
    return {"bms_version": b[0] | b[1] << 8 | b[2] << 16, "battery_type": b[3],
            "rated_capacity": b[4] | b[5] << 8, "rated_voltage": b[6] | b[7] << 8,
            "battery_maker": _ascii(b[8:12]), "pack_serial": _hex(b[12:16]),
            "made_year": b[16], "made_month": b[17], "made_day": b[18],
            "charge_count": b[19] | b[20] << 8 | b[21] << 16, "ownership": b[22],
            "reserved": b[23], "vin": _ascii(b[24:41]), "bms_sw": _hex(b[41:49])}
