# pile-chaos's parts (docs/chaos.md): the watched flash, the noisy pile
# link, a chaos pile, the session driver and the fleets (ours and vendor
# piles). The harness that runs them and counts is sim/chaos.py; the command
# line is tools/chaos.py.
import asyncio
import binascii
import os
import random
import struct

from firmware import journal as J
from firmware import session as S
from sim.bms import random_profile
from sim.flash import FlashSim, PowerCut, SimFile
from sim.testkit import ThirdPartyPile, third_party_corpus
from sim.links import TcpTransport
from protocol import fields as F
from sim import fleet as FLEET
from sim import scenario as SIM
from sim.links import TcpUart

SITE = "chaos"

KINDS = ("power_cut", "flash_cut", "reboot", "bridge_kill", "broker_restart",
         "platform_outage", "corrupt", "duplicate", "forge_bill", "fake_login", "forged_confirm",
         "node_kill", "bms_fault")
INTRUDER = "55031499999999"     # the code a forge_bill intruder logs in with

# Pile faults: chance per session (times --intensity, at most 1).
_P_POWER_CUT = 0.03
_P_FLASH_CUT = 0.03
_P_REBOOT = 0.03
_P_BMS_FAULT = 0.15        # --bms: the car's BMS stops, alarms, aborts or falls silent
# --bms: what the car's BMS does wrong (sim/bms.py SimBms; docs/bms.md maps each
# to its YKC stop reason): (kind, flags, stage); no stage: at a random moment
# of the session, mostly while it charges; a stage: on reaching it (an abort
# or silence before charging, a start failure with a zero-energy bill).
_BMS_FAULTS = (("silent", (), None), ("silent", (), "BRM"), ("silent", (), "BCL"),
               ("stop", ("insulation",), None), ("stop", ("battery_temp",), None),
               ("stop", ("connector_temp",), None), ("stop", ("overcurrent",), None),
               ("stop", ("voltage_error",), None), ("stop", ("insulation",), "BCP"),
               ("stop", ("battery_temp",), "BRO"), ("alarm", ("overtemp",), None),
               ("alarm", ("cell_high",), None), ("bem", ("CCS",), None))
_P_FLICKER = 0.25          # a flash cut hits again during the next boot's recovery
# Frame faults: chance per frame, each direction of each pile link.
_P_CORRUPT = 0.01
_P_DUPLICATE = 0.01
# Process faults: how many per 1,000 sessions (times --intensity, at least 1).
_PER_1000 = {"bridge_kill": 3, "broker_restart": 2, "platform_outage": 3, "node_kill": 4,
             "forge_bill": 3, "fake_login": 3, "forged_confirm": 2}
_P_CARD = 0.5              # a session started by a card at the pile (else by the platform)
_FLASH_SPAN = 6000         # a flash cut lands within this many bytes of journal writes
_CMD_TIMEOUT_S = 8.0       # the platform waits this long for a command's result
_POWER_OFF_S = (5, 120)    # simulated seconds a pile stays off
_STALL_S = 120.0           # no new session for this long (real seconds): the run failed
_REC_HEAD = 20             # journal record: magic, kind, length, serial (docs/journal.md)


# --- the flash, watched ----------------------------------------------------------

def parse_records(data, resync=False):
    """(kind, serial, payload) of each complete, CRC-valid journal record in
    data, read with the documented format (docs/journal.md), independently
    of firmware/journal.py. resync: skip damaged bytes instead of stopping."""
    out = []
    off = 0
    n = len(data)
    while off + J.OVERHEAD <= n:
        magic, kind, ln = struct.unpack_from("<BBH", data, off)
        ok = magic == 0xA5 and ln <= J.MAX_PAYLOAD and off + J.OVERHEAD + ln <= n
        if ok:
            crc = struct.unpack_from("<I", data, off + _REC_HEAD + ln)[0]
            ok = binascii.crc32(bytes(data[off:off + _REC_HEAD + ln])) & 0xFFFFFFFF == crc
        if not ok:
            if not resync:
                break
            off += 1
            continue
        serial = binascii.hexlify(bytes(data[off + 4:off + _REC_HEAD])).decode()
        out.append((kind, serial, bytes(data[off + _REC_HEAD:off + _REC_HEAD + ln])))
        off += J.OVERHEAD + ln
    return out


class TapFlash(FlashSim):
    """A FlashSim that reports each journal record appended complete: what
    the pile has durably written, seen at the flash, not told by firmware.
    (Compaction copies records into a temp file; copies are not new facts.)"""

    def __init__(self, journal_path):
        FlashSim.__init__(self)
        self.journal_path = journal_path
        self.opened = {}       # serial -> session header (SESSION_OPEN landed)
        self.sealed = {}       # serial -> [distinct bill payloads] (BILL_SEALED landed)
        self.confirmed = set()
        self.settled = set()
        self.trace = None      # trace(kind, serial) per record landed (--events)

    def open(self, path, mode):
        f = FlashSim.open(self, path, mode)
        if path == self.journal_path and "a" in mode:
            return _TapFile(self, path, mode)
        return f

    def landed(self, data):
        for kind, serial, payload in parse_records(data):
            if self.trace is not None:
                self.trace(kind, serial)
            if kind == J.SESSION_OPEN:
                self.opened.setdefault(serial, payload)
            elif kind == J.BILL_SEALED:
                got = self.sealed.setdefault(serial, [])
                if payload not in got:
                    got.append(payload)
            elif kind == J.CONFIRMED:
                self.confirmed.add(serial)
            elif kind == J.SETTLED:
                self.settled.add(serial)


class _TapFile(SimFile):
    def write(self, data):
        n = SimFile.write(self, data)   # a cut mid-way raises: the record is torn
        self.sim.landed(bytes(data))
        return n


# --- the pile link, with noise ---------------------------------------------------

class ChaosUart(TcpUart):
    """The pile's TCP link with frame faults in both directions: a frame is
    corrupted (one byte XORed: CRC-16 always catches it) or delivered twice.
    Nothing leaves a pile whose power is cut."""

    def __init__(self, unit, host, port, on_change):
        TcpUart.__init__(self, host, port, on_change=on_change, retry_s=0.25)
        self.unit = unit
        self._in = bytearray()
        self._out = bytearray()

    def _fault(self, frame, way):
        h = self.unit.h
        r = self.unit.rnd.random()
        if r < h.p_corrupt:
            b = bytearray(frame)
            i = self.unit.rnd.randrange(1, len(b))
            b[i] ^= self.unit.rnd.randrange(1, 256)
            h.count("corrupted_frames")
            h.count("corrupted_" + way)
            return bytes(b)
        if r < h.p_corrupt + h.p_duplicate:
            h.count("duplicated_frames")
            h.count("duplicated_" + way)
            return frame + frame
        return frame

    def write(self, b):
        if self.unit.flash.cut:
            return len(b)              # the power is off: nothing is sent
        # The firmware writes one frame per call (firmware/link.py).
        TcpUart.write(self, self._fault(bytes(b), "to_bridge"))
        return len(b)

    def read(self, n=256):
        if not self._out:
            data = TcpUart.read(self, 4096)
            if data:
                self._in.extend(data)
                self._split()
        if not self._out:
            return None
        out = bytes(self._out[:n])
        del self._out[:n]
        return out

    def _split(self):
        buf = self._in
        while buf:
            if buf[0] != 0x68:
                i = buf.find(b"\x68")
                i = len(buf) if i < 0 else i
                self._out.extend(buf[:i])
                del buf[:i]
                continue
            if len(buf) < 2 or len(buf) < buf[1] + 4:
                return
            n = buf[1] + 4
            frame = bytes(buf[:n])
            del buf[:n]
            self._out.extend(self._fault(frame, "to_pile"))

    def _down(self):
        self._in = bytearray()
        self._out = bytearray()
        TcpUart._down(self)

    def cut(self):
        """Power cut: the bytes not yet on the wire are gone."""
        self._tx = bytearray()
        self.close()


# --- one pile ---------------------------------------------------------------------------

class ChaosUnit(SIM.SimUnit):
    """A simulated pile whose journal lives on a TapFlash and whose link is a
    ChaosUart; a PowerCut from the flash powers the whole pile down."""

    def __init__(self, h, code, root, start, tariff, vehicle, meter_start, rnd, bms=False):
        self.h = h
        self.rnd = rnd
        self.flash = TapFlash(root + "/journal")
        if h.events is not None:
            self.flash.trace = lambda kind, serial: h.trace("pile", kind, serial)
        self.flash_cuts = 0
        SIM.SimUnit.__init__(self, code, root, start, tariff, 60000, vehicle, meter_start,
                             True, None, "tcp", tcp=h.bridge_addr, fs=self.flash, bms=bms)

    @property
    def car(self):
        """What is plugged into the gun: the plain simulated vehicle, or
        with --bms the car's simulated BMS (GB/T 27930 over python-can)."""
        return self.worlds[0].bms if self.bms else self.world.vehicle

    def new_uart(self):
        return ChaosUart(self, self.tcp[0], self.tcp[1], self._link_changed)

    def boot(self):
        key = self.h.pile_key(self.code)
        if key is not None:
            self.cfg["cmd_key"] = key     # keyed: login proof, signed commands, bill MAC
        was_cut = self.flash.cut
        self.flash.reboot()
        if was_cut and self.h.on("flash_cut") and self.rnd.random() < _P_FLICKER:
            # The power flickers: cut again while the boot recovers the journal.
            self.arm_flash_cut(self.rnd.randrange(1, 400))
        try:
            SIM.SimUnit.boot(self)
        except PowerCut:
            self.h.count("flash_cuts_in_recovery")
        self._check_power()

    def _reboot_hook(self):
        # 0x92 accepted: the board resets (the session was billed first).
        self.reboots += 1
        self.h.count("reboots")
        for w in self.worlds:
            w.contactor.open()
        self.boot()

    def arm_flash_cut(self, k):
        self.flash.cut_after = self.flash.units + k
        self.h.count("flash_cuts_armed")

    def power_down(self, off_ms, why="power_cut"):
        if why == "power_cut":
            self.h.count("power_cuts")
            if self.pile is not None and self.pile.gun.state == S.CHARGING:
                self.h.count("power_cuts_mid_session")
        self.power_cuts += 1
        for w in self.worlds:
            w.contactor.open()           # the relay drops with the power
        if isinstance(self.uart, ChaosUart):
            self.uart.cut()
        self.pile = None
        self.down_until = self.clock.ticks_ms() + off_ms

    def _check_power(self):
        fl = self.flash
        if not fl.cut or (self.pile is None and self.down_until is not None):
            return
        self.flash_cuts += 1
        h = self.h
        h.count("flash_cuts")
        if fl.partial is not None:
            path = fl.partial[0]
            h.count("flash_cuts_torn_record" if path == fl.journal_path
                    else "flash_cuts_torn_compaction" if path.endswith(".tmp")
                    else "flash_cuts_torn_other")
        else:
            h.count("flash_cuts_metadata")
        self.power_down(self.rnd.randrange(*_POWER_OFF_S) * 1000, "flash_cut")

    def poll(self):
        if self.pile is None:
            now = self.clock.ticks_ms()
            if now < self.down_until:
                return self.down_until - now
            self.down_until = None
            self.boot()
            if self.pile is None:
                return 0
        try:
            d = self.pile.poll()
        except PowerCut:
            d = 0
        self._check_power()
        return d

    def act(self, a):
        try:
            SIM.SimUnit.act(self, a)
        except PowerCut:
            pass
        self._check_power()


# --- sessions ------------------------------------------------------------------------

class Driver:
    """One pile's sessions, stepped in the fleet's thread in simulated time:
    plug, start (card at the pile, or the platform's start command), stop it
    with 2-3 stop commands at a planned time or soon after it stopped by
    itself, sometimes unplug; with the pile faults of the session drawn at
    its start. Runs until the pile's flash holds `goal` executed starts."""

    def __init__(self, h, unit, rnd, goal):
        self.h = h
        self.u = unit
        self.rnd = rnd
        self.goal = goal
        self.phase = "gap"
        self.at = rnd.randrange(2000, 20000)
        self.fut = None
        self.kind = None
        self.stop_at = 0
        self.cut_at = None
        self.reboot_at = None
        self.stop_rounds = 0
        self.counter = 0
        self.done = False
        self.bms_at = None       # --bms: when this session's BMS fault comes, and what
        self.bms_do = None
        self.bms_next = False    # a fault to time when the session runs

    def step(self):
        u = self.u
        t = u.clock.ticks_ms()
        p = u.pile
        if self.cut_at is not None and t >= self.cut_at:
            self.cut_at = None
            if p is not None and not self.h.recovering:
                u.power_down(self.rnd.randrange(*_POWER_OFF_S) * 1000)
                return
        if self.bms_at is not None and t >= self.bms_at:
            self.bms_at = None
            if not self.h.recovering:
                if p is not None and p.gun.state == S.CHARGING:
                    self.h.count("bms_faults_mid_charge")
                u.act(self.bms_do)
        charging = p is not None and p.gun.state == S.CHARGING
        ph = self.phase
        if ph == "gap" or ph == "done":
            if p is None or t < self.at:
                return
            if charging:                 # a start we did not see the end of
                self._running(t, "late")
            elif len(u.flash.opened) >= self.goal or self.h.recovering:
                self.phase = "done"
                self.done = True
            else:
                self._begin(t, p)
        elif ph == "starting":
            if not self.fut.done():
                return
            res = self.fut.result()
            self.fut = None
            if res.get("ok") or charging:
                self._running(t, "platform")
            else:
                self._gap(t, 5000, 30000)
        elif ph == "running":
            if self.reboot_at is not None and t >= self.reboot_at:
                self.reboot_at = None
                if charging:
                    when = "now" if self.rnd.random() < 0.7 else "idle"
                    self.h.submit(self.h.reboot(u.code, when))
            if charging and t < self.stop_at:
                return
            # The planned stop, or the session already ended by itself
            # (target, full, power cut, reboot): stops all the same.
            if charging and self.kind == "card" and self.rnd.random() < 0.3:
                u.act({"do": "stop_button"})
            self.fut = self.h.submit(self.h.stops(u.code, self.rnd.choice((2, 3)), charging))
            self.phase = "stopping"
        elif ph == "stopping":
            if not self.fut.done():
                return
            self.fut = None
            if charging:
                # Every stop failed (bridge or broker down, pile offline).
                self.stop_rounds += 1
                if self.stop_rounds >= 3:
                    u.act({"do": "stop_button"})
                self.stop_at = t + 20000
                self.phase = "running"
                return
            self.stop_rounds = 0
            # With --bms every session has a car of its own (a DC pile's
            # customers drive off): a BMS fault does not outlast it.
            if p is not None and (u.bms or self.rnd.random() < 0.3):
                u.act({"do": "unplug"})
            self._gap(t, 10000, 90000)

    def _gap(self, t, lo, hi):
        self.phase = "gap"
        self.at = t + self.rnd.randrange(lo, hi)

    def _running(self, t, kind):
        self.kind = kind
        self.phase = "running"
        self.done = False
        self.stop_at = t + self.rnd.randrange(20000, self.h.max_ms)
        if self.bms_next:
            self.bms_next = False
            # before the planned stop: mostly mid-charge (the dialogue
            # reaches charging ~3 s after the start), sometimes before
            self.bms_at = t + self.rnd.randrange(1000, self.stop_at - t)

    def _targets(self):
        r = self.rnd
        m = self.h.minutes
        kind = r.choice(("none", "amount", "energy", "minutes", "soc"))
        if kind == "amount":         # about 1.4 yuan per kWh, 1 kWh per minute at 60 kW
            return {"amount": r.randrange(2000, max(3000, 14000 * m)) // 100 * 100}
        if kind == "energy":
            return {"energy": r.randrange(1000, max(2000, 10000 * m)) // 100 * 100}
        if kind == "minutes":
            return {"minutes": r.randrange(1, m + 1)}
        if kind == "soc":
            return {"soc": r.randrange(30, 101)}
        return {}

    def _plan_bms_fault(self, t):
        r = self.rnd
        kind, flags, stage = r.choice(_BMS_FAULTS)
        self.bms_do = {"do": "bms", "gun": "01", "fault": kind, "flags": list(flags),
                       "stage": stage}
        name = "bms_%s_%s" % (kind, "_".join(flags) or "now") if stage is None else \
            "bms_%s_at_%s" % (kind, stage)
        self.h.count(name)
        if stage is not None:
            self.u.act(self.bms_do)      # armed now: it acts on reaching the stage
        else:
            self.bms_next = True         # timed once the session runs (_running)

    def _begin(self, t, p):
        u = self.u
        r = self.rnd
        h = self.h
        if p.gun.state in (S.AUTHORISING, S.STOPPING):
            self._gap(t, 1000, 3000)
            return
        if not u.car.plugged:
            if u.bms:
                u.car.arrive(**random_profile(r))       # a car of its own
                u.act({"do": "plug"})
                h.count("bms_cars")
            else:
                u.act({"do": "plug", "vehicle": {"soc": r.randrange(10, 90)}})
            self._gap(t, 1000, 5000)
            return
        # This session's pile faults.
        self.cut_at = None
        self.reboot_at = None
        if h.on("power_cut") and r.random() < h.p("power_cut"):
            self.cut_at = t + r.randrange(1000, h.max_ms)
        if h.on("flash_cut") and r.random() < h.p("flash_cut"):
            u.arm_flash_cut(r.randrange(1, _FLASH_SPAN))
        if h.on("reboot") and r.random() < h.p("reboot"):
            self.reboot_at = t + r.randrange(5000, h.max_ms)
        self.bms_at = None
        self.bms_next = False
        if u.bms and h.on("bms_fault") and r.random() < h.p("bms_fault"):
            self._plan_bms_fault(t)
        targets = self._targets()
        if r.random() < _P_CARD:
            u.act({"do": "card", "card": "%08X" % r.randrange(1 << 32), "targets": targets})
            p = u.pile
            if p is not None and p.gun.state == S.CHARGING:
                h.count_start("card")
                self._running(t, "card")
            else:
                self._gap(t, 5000, 30000)
            return
        self.counter += 1
        y, mo, d, hh, mi, s, _ = F.to_civil(u.clock.now())
        # Platform serials end in 9xxx: pile-issued ones count up from 0001.
        serial = "%s01%02d%02d%02d%02d%02d%02d9%03d" % (u.code, y % 100, mo, d, hh, mi, s,
                                                        self.counter % 1000)
        h.count_start("platform")
        self.fut = h.submit(h.start(u.code, serial, targets))
        self.phase = "starting"


class ChaosFleet(FLEET.SimFleet):
    """SimFleet's loop (simulated time, one thread) over ChaosUnits, with a
    Driver per pile in place of the built-in session mix. bms: each pile's
    gun talks GB/T 27930 to a simulated car's BMS (python-can's virtual bus)."""
    unit_class = None          # ChaosUnit (sim/chaos_inproc.py: its in-process pile)

    def __init__(self, h, piles, sessions, speed, root, seed, bms=False):
        FLEET.SimFleet.__init__(self, h.bridge_addr, piles=0, speed=speed, mix="idle", root=root,
                              seed=seed)
        start = FLEET._local_now()
        tariff = FLEET.default_tariff()
        rnd = random.Random(seed)
        self.drivers = []
        for i in range(piles):
            code = "%014d" % (55031400000001 + i)
            veh = {"capacity_wh": rnd.choice((40000, 60000, 80000)), "soc": rnd.randrange(10, 60),
                   "vin": None, "max_power_w": 250000}
            prnd = random.Random("%d/%d" % (seed, i))
            if bms:
                veh["bms"] = random_profile(random.Random("%d/%d/car" % (seed, i)))
            u = (self.unit_class or ChaosUnit)(h, code, os.path.join(self.root, code), start,
                                               tariff, veh, rnd.randrange(0, 5000000, 100), prnd,
                                               bms=bms)
            self.units.append(u)
            self.drivers.append(Driver(h, u, random.Random("%d/%d/d" % (seed, i)), sessions))
        self._plans = self.drivers


# --- the harness --------------------------------------------------------------------------

class _ClusterBroker:
    """A NatsCluster seen as the one broker the harness restarts: restart()
    is a rolling restart of every node in turn (each back before the next
    goes), port is the first node's (the intruders' way in)."""

    def __init__(self, cluster):
        self.c = cluster

    @property
    def port(self):
        return self.c.nodes[0].port

    @property
    def running(self):
        return all(n.running for n in self.c.nodes)

    def restart(self, kill=False):
        for i, n in enumerate(self.c.nodes):
            n.stop(kill=kill)
            self.c.start_node(i)

    def start(self):
        for i, n in enumerate(self.c.nodes):
            if not n.running:
                self.c.start_node(i)

    def close(self):
        self.c.close()


THIRD_PARTY_FIRST = 55990000000001      # pile codes of the vendor piles


class ThirdPartyFleet:
    """Vendor piles (sim.testkit.ThirdPartyPile) beside our firmware piles,
    each sending the third-party bill corpus over TCP to the bridge; after a
    dropped link (a killed bridge) a pile dials in again, logs in and goes
    on. A bill without a 0x40 after 3 resends is given up, as YKC says."""

    def __init__(self, h, n, resend_s=2.0):
        self.h = h
        self.codes = ["%014d" % (THIRD_PARTY_FIRST + i) for i in range(n)]
        self.resend_s = resend_s
        self.bills = {}            # serial -> corpus entry, every bill sent
        self.acked = set()         # serials the pile got a 0x40 for
        self.given_up = set()      # serials given up without one
        self.reconnects = 0
        self.tasks = []

    def start(self):
        self.tasks = [asyncio.create_task(self._one(c)) for c in self.codes]

    @property
    def done(self):
        return all(t.done() for t in self.tasks)

    async def _paced(self, k, n):
        # Bill k of n goes out once that share of the run's sessions started,
        # so the vendor piles meet the same faults as ours.
        goal = self.h.piles * self.h.sessions
        while not self.h.recovering and self.h.executed() < goal * k // (n + 1):
            await asyncio.sleep(0.2)

    async def _one(self, code):
        pending = list(third_party_corpus(code))
        n = len(pending)
        pile = None
        while pending:
            await self._paced(n - len(pending), n)
            try:
                if pile is None or not pile.connected:
                    if pile is not None:
                        await pile.close()
                        self.reconnects += 1
                    pile = None
                    t = await TcpTransport.connect(*self.h.bridge_addr)
                    pile = ThirdPartyPile(code, t, resend_s=self.resend_s, heartbeat_s=2.0)
                    if await pile.login(timeout=5.0) != 0:
                        raise ConnectionError("login refused")
                b = pending[0]
                self.bills[b["serial"]] = b
                if await pile.send_raw_bill(b):
                    self.acked.add(b["serial"])
                else:
                    self.given_up.add(b["serial"])
                pending.pop(0)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.3)       # the bridge is down: dial again
        if pile is not None:
            await pile.close()

    async def stop(self):
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def report(self, rows):
        """The third-party part of the summary, from the platform's rows
        (serial -> (reconciled, copies, doc))."""
        good = [s for s, b in self.bills.items() if not b["bad_crc"]]
        by_class = {}
        for s in good:
            r = rows.get(s)
            if r is None:
                continue
            for p in r[2].get("checks", {}).get("problems", []):
                c = p.split(":", 1)[0]
                by_class[c] = by_class.get(c, 0) + 1
        return {
            "piles": len(self.codes),
            "bills_sent": len(good),
            "bad_crc_bills_sent": len(self.bills) - len(good),
            "bills": len([s for s in good if s in rows]),
            "lost": sorted(s for s in self.acked if s not in rows),
            "given_up_by_piles": len([s for s in good if s in self.given_up]),
            "given_up_never_received": len([s for s in good if s in self.given_up
                                            and s not in rows]),
            "unreconciled": len([s for s in good if s in rows and not rows[s][0]]),
            "by_class": dict(sorted(by_class.items())),
            "reconnects": self.reconnects,
        }
