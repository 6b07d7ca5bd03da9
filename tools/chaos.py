"""pile-chaos: try to lose, duplicate or garble a bill, and count.

N simulated piles (the real firmware, sim/fleet.py) x M sessions each,
through the real bridge (a child process), a real broker (Mosquitto) and the
reference platform (host/platform.py), with seeded random faults:

  power_cut        a pile loses power (mid-session or idle), back after a while
  flash_cut        the power goes while the journal writes: a PowerCut at a
                   random byte of the pile's flash (sim/flash.py),
                   sometimes again during the recovery at the next boot
  reboot           the platform asks for a reboot (now / when idle) mid-session
  bridge_kill      the bridge is SIGKILLed and started again on its database
  broker_restart   Mosquitto is restarted (SIGTERM or SIGKILL) on its port;
                   with --cluster, a rolling restart of every node in turn
  node_kill        (--cluster) one node of the NATS cluster is SIGKILLed and
                   started again a moment later
  platform_outage  the platform takes nothing and confirms nothing for a while
  corrupt          1 % of the frames on each pile link get one byte changed
  duplicate        1 % of the frames on each pile link arrive twice
  forge_bill       a rogue pile of the site (its own code and key) logs in and
                   sends a bill and a fee split under a victim's open serial
  fake_login       an intruder logs in with a victim pile's code (it cannot
                   answer the login challenge) and sends a bill under it
  forged_confirm   an intruder on the broker confirms every bill it sees, with
                   the right content hash but without the platform's `auth`
and in every session 2 or 3 stop commands, often after an automatic stop.
The piles are keyed (one site key: login proof, signed commands, bill MAC)
and the platform signs its commands and confirmations (a platform key).

Sessions are started by the platform (MQTT `start` through the bridge) and
by card swipes at the pile (an offline start, the serial issued by the pile).
When every pile has run its sessions the faults stop, everything reconnects,
and the harness waits (bounded) until nothing is in flight. Then it counts,
from the piles' flash and the platform's database (docs/chaos.md):

  sessions      executed starts: trade serials whose session-open record
                landed complete on a pile's flash journal
  bills         bills in the platform's database
  lost          executed starts with no bill at the platform
  duplicated    executed starts billed twice (two different bills sealed on
                the flash or held by the bridge for one serial)
  unreconciled  platform bills whose parts do not add up to their totals
  phantom       platform bills for no executed start
  mismatched    platform bills whose figures differ from the pile's sealed bill
  unconfirmed   bills still pending on a pile or unconfirmed at the bridge

With --third-party N, N vendor piles (sim.testkit.ThirdPartyPile: hex SIM,
swapped CRCs, V1.5, YKC's give-up-after-3-resends rule) run next to ours
through the same faults, each sending the third-party bill corpus (every
variant: 156-byte, V1.7 0x3D, meter 0 -> 0, non-BCD gun, ...). Their bills
are reported apart ("third_party"): none of them counts as phantom or
unreconciled against ours; "lost" there is a bill the pile got a 0x40 for
that the platform does not hold; bills the pile gave up without a 0x40 are
counted, by YKC's rule not ours.

    pile-chaos --piles 20 --sessions 50 --seed 1 --json
    pile-chaos --piles 4 --sessions 20 --third-party 2

exits 1 when any of lost .. unconfirmed is not 0 (or recovery timed out).
"""
import argparse
import asyncio
import binascii
import json
import logging
import os
import random
import shutil
import sqlite3
import struct
import sys
import tempfile
import time

from firmware import journal as J
from firmware import session as S
from sim.flash import FlashSim, PowerCut, SimFile
from host import cli
from sim.brokers import NatsCluster, mosquitto_available
from host.mqtt import stop_tasks
from host import commands as CMD
from sim.testkit import TcpTransport, ThirdPartyPile, make_bill, make_extra, third_party_corpus
from protocol import codec
from protocol import fields as F
from protocol import sign
from protocol.bill import split as split_payload
from sim import fleet as FLEET
from sim import scenario as SIM
from sim.links import TcpUart
from sim import stack

SITE = "chaos"

KINDS = ("power_cut", "flash_cut", "reboot", "bridge_kill", "broker_restart",
         "platform_outage", "corrupt", "duplicate", "forge_bill", "fake_login", "forged_confirm",
         "node_kill")
INTRUDER = "55031499999999"     # the code a forge_bill intruder logs in with

# Pile faults: chance per session (times --intensity, at most 1).
_P_POWER_CUT = 0.03
_P_FLASH_CUT = 0.03
_P_REBOOT = 0.03
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

    def __init__(self, h, code, root, start, tariff, vehicle, meter_start, rnd):
        self.h = h
        self.rnd = rnd
        self.flash = TapFlash(root + "/journal")
        if h.events is not None:
            self.flash.trace = lambda kind, serial: h.trace("pile", kind, serial)
        self.flash_cuts = 0
        SIM.SimUnit.__init__(self, code, root, start, tariff, 60000, vehicle, meter_start,
                             True, None, "tcp", tcp=h.bridge_addr, fs=self.flash)

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
        self.world.contactor.open()
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
        self.world.contactor.open()      # the relay drops with the power
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

    def step(self):
        u = self.u
        t = u.clock.ticks_ms()
        p = u.pile
        if self.cut_at is not None and t >= self.cut_at:
            self.cut_at = None
            if p is not None and not self.h.recovering:
                u.power_down(self.rnd.randrange(*_POWER_OFF_S) * 1000)
                return
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
            if p is not None and self.rnd.random() < 0.3:
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

    def _begin(self, t, p):
        u = self.u
        r = self.rnd
        h = self.h
        if p.gun.state in (S.AUTHORISING, S.STOPPING):
            self._gap(t, 1000, 3000)
            return
        if not u.world.vehicle.plugged:
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
    Driver per pile in place of the built-in session mix."""

    def __init__(self, h, piles, sessions, speed, root, seed):
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
            u = ChaosUnit(h, code, os.path.join(self.root, code), start, tariff, veh,
                          rnd.randrange(0, 5000000, 100), prnd)
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


class Chaos:
    def __init__(self, piles=20, sessions=50, seed=1, speed=600.0, minutes=6, faults=KINDS,
                 intensity=1.0, workdir=None, recovery_s=180.0, quiet=True, keyed=True,
                 third_party=0, cluster=False, events=None):
        self.third_party = third_party
        self.tp = None
        self.piles = piles
        self.sessions = sessions
        self.seed = seed
        self.speed = speed
        self.minutes = max(1, int(minutes))
        self.max_ms = self.minutes * 60000
        self.kinds = set(faults)
        bad = self.kinds - set(KINDS)
        if bad:
            raise ValueError("unknown fault kind %s (known: %s)" % (sorted(bad)[0], ", ".join(KINDS)))
        self.intensity = intensity
        self.recovery_s = recovery_s
        self.quiet = quiet
        self.progress = None      # advance(n, note): the CLI's progress bar
        self.own = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="pc-chaos-")
        self.p_corrupt = _P_CORRUPT if self.on("corrupt") else 0.0
        self.p_duplicate = _P_DUPLICATE if self.on("duplicate") else 0.0
        self.recovering = False
        self.faults = {}
        self.starts = {"platform": 0, "card": 0}
        self.commands = {}
        self.broker = self.bridge = self.platform = self.fleet = None
        self.cluster = cluster        # a 3-node NATS cluster instead of one Mosquitto
        if not cluster:
            self.kinds.discard("node_kill")
        self.bridge_addr = None
        self.loop = None
        # One site key (every pile's key derived from it) and the platform's
        # command key, in files the bridge reads (0600).
        self.site_key = os.urandom(32)
        self.platform_key = os.urandom(32)
        self._key_files = {}
        for name, key in (("site", self.site_key), ("platform", self.platform_key)):
            path = os.path.join(self.dir, name + ".key")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key.hex() + "\n")
            self._key_files[name] = path
        self.intruder_wins = []      # anything an intruder got that it must not
        self.keyed = keyed           # False (--unkeyed): no site key, to show what intruders get
        # --events FILE: custody events as JSON lines for tools/model_replay.py (the
        # piles' journal records, the platform's takes), the bridge's log beside it
        self.events_path = events
        self.events = [] if events else None     # written out at close()

    def trace(self, actor, kind, serial):
        if actor == "pile":
            kind = {1: "opened", 3: "sealed", 4: "confirmed", 5: "illegal", 6: "settled"}.get(kind)
            if kind is None:
                return
        self.events.append({"t": time.time(), "actor": actor, "kind": kind, "serial": serial})

    # --- bookkeeping --------------------------------------------------------------------

    def on(self, kind):
        return kind in self.kinds

    def pile_key(self, code):
        return sign.pile_key(self.site_key, code) if self.keyed else None

    def p(self, kind):
        base = {"power_cut": _P_POWER_CUT, "flash_cut": _P_FLASH_CUT, "reboot": _P_REBOOT}[kind]
        return min(1.0, base * self.intensity)

    def count(self, key, n=1):
        self.faults[key] = self.faults.get(key, 0) + n

    def count_start(self, kind):
        self.starts[kind] += 1

    def _cmd_count(self, key):
        self.commands[key] = self.commands.get(key, 0) + 1

    def say(self, msg):
        if not self.quiet:
            print("pile-chaos: " + msg, file=sys.stderr, flush=True)

    # --- platform commands (coroutines run on the asyncio loop) --------------------------

    def submit(self, coro):
        """From the fleet's thread: run coro on the loop; a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _command(self, code, cmd, **args):
        try:
            return await self.platform.command(SITE, code, cmd, timeout=_CMD_TIMEOUT_S, **args)
        except asyncio.TimeoutError:
            return {"ok": False, "code": "no_result"}
        except Exception as e:          # not connected, connection lost mid-publish
            return {"ok": False, "code": "not_sent", "message": str(e)}

    async def start(self, code, serial, targets):
        args = {"gun": "01", "serial": serial, "card": "D14B0A54", "logical_card": "1000000573",
                "balance": 100000, "expires": int(time.time() + _CMD_TIMEOUT_S)}
        if targets:
            args["targets"] = targets
        res = await self._command(code, "start", **args)
        self._cmd_count("start_ok" if res.get("ok") else "start_" + str(res.get("code")))
        return res

    async def stops(self, code, n, charging):
        """n stop commands for the gun, one after the other (the field case:
        a stop sent 2 or 3 times, or after the pile stopped by itself)."""
        if not charging:
            self.count("stops_after_session_ended", n)
        last = None
        for _ in range(n):
            res = await self._command(code, "stop", gun="01")
            self.count("stop_commands")
            self._cmd_count("stop_ok" if res.get("ok") else "stop_" + str(res.get("code")))
            last = res
        return last

    async def reboot(self, code, when):
        self.count("reboot_requests")
        res = await self._command(code, "reboot", when=when)
        self._cmd_count("reboot_ok" if res.get("ok") else "reboot_" + str(res.get("code")))
        return res

    # --- process faults --------------------------------------------------------------------

    def executed(self):
        return sum(len(u.flash.opened) for u in self.fleet.units)

    def _plan_process_faults(self):
        rnd = random.Random("%d/process" % self.seed)
        total = self.piles * self.sessions
        plan = []
        for kind, per in sorted(_PER_1000.items()):
            if not self.on(kind):
                continue
            n = max(1, int(round(per * total / 1000.0 * self.intensity)))
            for _ in range(n):
                plan.append((rnd.uniform(0.03, 0.9), kind, rnd.random()))
        plan.sort()
        return plan

    async def process_faults(self, plan):
        goal = self.piles * self.sessions
        for frac, kind, x in plan:
            while self.executed() < frac * goal:
                if self.recovering:
                    return
                await asyncio.sleep(0.05)
            if self.recovering:
                return
            if kind == "bridge_kill":
                self.say("SIGKILL bridge pid %d at %d sessions" % (self.bridge.pid, self.executed()))
                await asyncio.to_thread(self.bridge.kill)
                self.count("bridge_kills")
                await asyncio.sleep(x)             # down for up to a second
                await asyncio.to_thread(self.bridge.start)
            elif kind == "broker_restart":
                kill = x < 0.5
                self.say("broker restart (%s) at %d sessions"
                         % ("SIGKILL" if kill else "SIGTERM", self.executed()))
                await asyncio.to_thread(self.broker.restart, kill)
                self.count("broker_restarts")
            elif kind == "node_kill":
                i = int(x * len(self.broker.c.nodes)) % len(self.broker.c.nodes)
                self.say("SIGKILL broker node %d at %d sessions" % (i + 1, self.executed()))
                await asyncio.to_thread(self.broker.c.kill, i)
                self.count("node_kills")
                await asyncio.sleep(0.5 + 2 * x)     # down for a while
                await asyncio.to_thread(self.broker.c.start_node, i)
            elif kind in ("forge_bill", "fake_login"):
                await self._intrude(kind, x)
            elif kind == "forged_confirm":
                await self._forge_confirms(0.5 + 2.5 * x)
            elif kind == "platform_outage":
                self.say("platform silent at %d sessions" % self.executed())
                self.platform.silent = True
                self.count("platform_outages")
                try:
                    await asyncio.sleep(0.5 + 2.5 * x)
                finally:
                    self.platform.silent = False

    # --- intruders --------------------------------------------------------------------------

    def _victim(self, x):
        """(pile code, a trade serial its flash has opened), or None."""
        with self.fleet._lock:
            units = [u for u in self.fleet.units if u.flash.opened]
            if not units:
                return None
            u = units[int(x * len(units)) % len(units)]
            return u.code, list(u.flash.opened)[-1]

    async def _intrude(self, kind, x):
        """A TCP client on the piles' port: forge_bill is a pile of the site
        gone rogue (INTRUDER, with its own key: it logs in) that sends a bill
        and a fee split under the victim's serial; fake_login logs in with
        the victim's code, answers the login challenge with a made-up proof,
        and sends the bill meanwhile. Every forged frame must be quarantined, the login
        refused; the verdict then shows nothing of the victim's changed."""
        v = self._victim(x)
        if v is None:
            return
        victim, serial = v
        bill = dict(make_bill(victim, 1), serial=serial)   # tiny, and it adds up
        login = {"pile_type": 0, "guns": 1, "proto_version": 0x10, "sw_version": "X1",
                 "net_type": 3, "sim": "0" * 20, "carrier": 4}
        me = INTRUDER if kind == "forge_bill" else victim
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(*self.bridge_addr), 5)
        except (OSError, asyncio.TimeoutError):
            self.count(kind + "_no_bridge")     # the bridge was down: tried nothing
            return
        reader = codec.FrameReader(tolerant=True)
        got = []

        async def read_for(seconds):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    data = await asyncio.wait_for(r.read(4096), max(0.01, end - time.monotonic()))
                except (asyncio.TimeoutError, OSError):
                    continue
                if not data:
                    return False              # closed by the bridge
                for f in reader.push(data):
                    if isinstance(f, codec.Frame):
                        got.append(f)
                        if f.name == "login_challenge":
                            # The intruder's own pile proves its own key; a
                            # fake login as the victim can only make one up.
                            nonce = f.fields["nonce"]
                            mac = sign.login_mac(self.pile_key(me), me, bytes.fromhex(nonce)) \
                                if me == INTRUDER else os.urandom(32)
                            w.write(codec.encode("login_proof", {"pile": me, "nonce": nonce,
                                                                 "mac": mac.hex()}, 3))
            return True
        try:
            w.write(codec.encode("login", dict(login, pile=me), 1))
            if kind == "fake_login":
                # At once, on a link whose login is not (and will not be) given.
                w.write(codec.encode("bill", bill, 2))
            await w.drain()
            await read_for(0.5)
            w.write(codec.encode("bill", bill, 5))
            w.write(codec.encode("bill_extra", make_extra(bill), 6))
            await w.drain()
            await read_for(1.0)
        except OSError:
            pass
        finally:
            w.close()
        self.count(kind)
        for f in got:
            if f.name == "login_reply" and f.fields["result"] == 0 and me == victim:
                self.intruder_wins.append("fake login as %s accepted" % victim)
            if f.name == "bill_confirm" and f.fields["serial"] == serial:
                self.intruder_wins.append("forged bill %s acknowledged (0x40)" % serial)
            if f.name == "bill_extra_ack" and f.fields["serial"] == serial:
                self.intruder_wins.append("forged fee split %s acknowledged (0xEC)" % serial)

    async def _forge_confirms(self, seconds):
        """An MQTT client that reads the bills and confirms each one it sees,
        naming its content hash (no secret) but without the platform's auth,
        half with a made-up auth."""
        import aiomqtt
        end = time.monotonic() + seconds
        n = 0
        try:
            async with aiomqtt.Client("127.0.0.1", self.broker.port,
                                      identifier="pc-intruder-%d" % os.getpid()) as c:
                await c.subscribe("pc/%s/bills/+" % SITE, qos=1)
                while time.monotonic() < end:
                    try:
                        msg = await asyncio.wait_for(c.messages.__anext__(),
                                                     max(0.01, end - time.monotonic()))
                    except asyncio.TimeoutError:
                        break
                    doc = json.loads(msg.payload)
                    conf = {"serial": doc["serial"], "result": 0, "hash": doc.get("content_hash")}
                    if n % 2:
                        conf["auth"] = os.urandom(32).hex()
                    await c.publish("pc/%s/confirm/%s" % (SITE, doc["pile"]), json.dumps(conf),
                                    qos=1)
                    n += 1
        except (aiomqtt.MqttError, OSError):
            pass              # the broker restarted under it: it forged what it could
        self.count("forged_confirms", n)
        self.count("forged_confirm_windows")

    # --- the run ---------------------------------------------------------------------------------

    def _bridge_extra(self):
        # time_sync_s = 0: the piles keep their simulated clocks, the time base
        # of the serials this platform stamps (the bridge's 0x56 would set
        # them back to the real time of day, hours behind simulated time).
        # Vendor piles speak no extension frames: ext false for their codes.
        tp = "".join('[pile."%014d"]\next = false\nsigned = false\n' % (THIRD_PARTY_FIRST + i)
                     for i in range(self.third_party))
        return ("[bills]\nretry_initial_s = 0.5\nretry_max_s = 2.0\nsettle_retry_s = 1.0\n"
                "[piles]\ncommand_timeout_s = 3.0\nstatus_poll_s = 3600.0\ntime_sync_s = 0\n"
                + ("[keys]\nsite_key_file = \"%s\"\n" % self._key_files["site"]
                   if self.keyed else "[keys]\n")
                + "platform_key_file = \"%s\"\n" % self._key_files["platform"] + tp)

    async def run(self):
        t0 = time.monotonic()
        self.loop = asyncio.get_running_loop()
        if self.cluster:
            self.broker = _ClusterBroker(await asyncio.to_thread(NatsCluster().start))
        else:
            if not mosquitto_available():
                raise RuntimeError("pile-chaos needs Mosquitto (apt-get install mosquitto)")
            self.broker = stack.start_broker("mosquitto", persistence=True, verbose=False)
        urls = self.broker.c.urls if self.cluster else None
        self.bridge = stack.BridgeProcess(self.dir, SITE, self.broker.port,
                                          extra=self._bridge_extra(), mqtt_urls=urls,
                                          log_level="info" if self.events is not None else "warning")
        port = self.bridge.start()
        self.bridge_addr = ("127.0.0.1", port)
        self.platform, ptask = await stack.start_platform(
            self.broker.port, os.path.join(self.dir, "platform.db"), cmd_key=self.platform_key,
            url=",".join(reversed(urls)) if urls else None)
        if self.events is not None:
            take = self.platform.take_bill

            def traced(doc):
                new, problems = take(doc)
                self.trace("platform", "stored" if new else "copy", doc.get("serial"))
                return new, problems
            self.platform.take_bill = traced
        self.fleet = ChaosFleet(self, self.piles, self.sessions, self.speed,
                                os.path.join(self.dir, "piles"), self.seed)
        self.say("%d piles x %d sessions, seed %d, bridge pid %d, broker port %d, dir %s"
                 % (self.piles, self.sessions, self.seed, self.bridge.pid, self.broker.port,
                    self.dir))
        self.fleet.start()
        if self.third_party:
            self.tp = ThirdPartyFleet(self, self.third_party)
            self.tp.start()
        ftask = asyncio.create_task(self.process_faults(self._plan_process_faults()))
        try:
            last, moved = -1, time.monotonic()
            stalled = False
            while not all(d.done for d in self.fleet.drivers):
                if ftask.done() and ftask.exception():
                    raise ftask.exception()
                n = self.executed()
                if n != last:
                    if self.progress is not None:
                        self.progress(n - max(last, 0), "sim %.1f h" % (self.fleet.sim_ms / 3.6e6))
                    if n // 500 != last // 500:
                        self.say("%d sessions, sim %.1f h" % (n, self.fleet.sim_ms / 3.6e6))
                    last, moved = n, time.monotonic()
                elif time.monotonic() - moved > _STALL_S:
                    stalled = True       # no session started for this long: give up
                    break
                await asyncio.sleep(0.2)
            ok = await self.recover(ftask)
            s = self.summary(ok and not stalled)
            s["stalled"] = stalled
        finally:
            if self.tp is not None:
                await self.tp.stop()
            await stop_tasks([ptask])
        s["seconds"] = round(time.monotonic() - t0, 1)
        return s

    async def recover(self, ftask):
        """Faults stop; wait (bounded) until every pile is up and online,
        no gun charges, every bill is confirmed and settled on the piles,
        confirmed at the bridge and held by the platform."""
        self.recovering = True
        await ftask
        self.p_corrupt = self.p_duplicate = 0.0
        self.platform.silent = False

        def calm(fleet):
            for u in fleet.units:
                u.flash.cut_after = None         # no cut armed any more
            for d in fleet.drivers:
                d.cut_at = None
        self.fleet.call(lambda: calm(self.fleet))
        if not self.bridge.running:
            await asyncio.to_thread(self.bridge.start)
        if not self.broker.running:
            await asyncio.to_thread(self.broker.start)
        end = time.monotonic() + self.recovery_s
        while time.monotonic() < end:
            if await asyncio.to_thread(self.fleet.wait, self._piles_quiet, 0.5):
                if self._platform_has_all() and self._bridge_open() == (0, 0) and \
                        (self.tp is None or self.tp.done):
                    return True
            await asyncio.sleep(0.2)
        return False

    def _piles_quiet(self, fleet):
        # In the fleet's thread, between two rounds.
        quiet = True
        for u in fleet.units:
            p = u.pile
            if p is None or not p.link.online:
                quiet = False
                continue
            if p.gun.state == S.CHARGING:
                u.act({"do": "stop_button"})    # a late start: end it
                quiet = False
            elif p.gun.state in (S.STOPPING, S.AUTHORISING):
                quiet = False
            elif p.journal.pending() or p.journal.confirmed():
                quiet = False
        return quiet

    def _platform_has_all(self):
        have = self.platform.serials()
        return all(s in have for u in self.fleet.units for s in u.flash.opened)

    def _bridge_db(self):
        db = sqlite3.connect(self.bridge.database, timeout=10)
        return db

    def _bridge_open(self):
        """(unconfirmed, unsettled) bills in the bridge's database."""
        db = self._bridge_db()
        try:
            a = db.execute("SELECT COUNT(*) FROM bills WHERE confirmed_at IS NULL").fetchone()[0]
            b = db.execute("SELECT COUNT(*) FROM bills WHERE settled_at IS NULL").fetchone()[0]
            return a, b
        finally:
            db.close()

    # --- counting ------------------------------------------------------------------------

    def summary(self, recovered):
        units = self.fleet.units
        with self.fleet._lock:
            executed = {}
            sealed = {}
            pending_on_piles = 0
            unsettled_on_piles = 0
            tap_missed = 0
            for u in units:
                fl = u.flash
                for s, hdr in fl.opened.items():
                    executed[s] = (u.code, hdr)
                for s, bodies in fl.sealed.items():
                    sealed.setdefault(s, []).extend(bodies)
                if u.pile is not None:
                    pending_on_piles += len(u.pile.journal.pending())
                    unsettled_on_piles += len(u.pile.journal.confirmed())
                else:
                    pending_on_piles += 1          # a pile still off counts as not done
                # The watch at the flash must have seen every record of the final journal.
                for kind, s, _ in parse_records(fl.files.get(fl.journal_path, b""), True):
                    if kind == J.SESSION_OPEN and s not in fl.opened:
                        tap_missed += 1
                    if kind == J.BILL_SEALED and s not in fl.sealed:
                        tap_missed += 1
            reboots = sum(u.reboots for u in units)
            sim_s = self.fleet.sim_ms // 1000
        rows = {}
        theirs = {}                 # third-party piles' bills: reported apart
        for serial, reconciled, copies, doc in self.platform.db.execute(
                "SELECT serial, reconciled, copies, doc FROM bills"):
            d = json.loads(doc)
            (theirs if d.get("pile_kind") == "third_party" else rows)[serial] = \
                (reconciled, copies, d)
        db = self._bridge_db()
        try:
            conflicts = set(r[0] for r in db.execute(
                "SELECT serial FROM rejected WHERE kind = 'conflict'"))
            unconfirmed_bridge = db.execute(
                "SELECT COUNT(*) FROM bills WHERE confirmed_at IS NULL").fetchone()[0]
            resends = db.execute("SELECT COALESCE(SUM(resends), 0) FROM bills").fetchone()[0]
            quarantined = dict(db.execute("SELECT kind, COUNT(*) FROM rejected WHERE kind IN "
                                          "('quarantine', 'extra_quarantine') GROUP BY kind"))
            refused = db.execute("SELECT COUNT(*) FROM events WHERE payload LIKE "
                                 "'%\"type\":\"confirm_refused\"%' AND payload LIKE "
                                 "'%\"reason\":\"unauthenticated\"%'").fetchone()[0]
            logins_refused = db.execute("SELECT COUNT(*) FROM events WHERE payload LIKE "
                                        "'%\"type\":\"login_refused\"%'").fetchone()[0]
        finally:
            db.close()
        t = tally(executed, sealed, rows, conflicts)
        lost, twice, phantom = t["lost"], t["duplicated"], t["phantom"]
        unreconciled, mismatched = t["unreconciled"], t["mismatched"]
        stops = {}
        flags = {}
        for s, bodies in sealed.items():
            b = _decode_bill(bodies[0])[0]
            name = SIM.STOP_NAMES.get(b["stop_reason"], "0x%02X" % b["stop_reason"])
            stops[name] = stops.get(name, 0) + 1
        for s, (code, hdr) in executed.items():
            try:
                f = S.decode_header(hdr)["trade_flag"]
            except ValueError:
                f = -1
            name = {S.TRADE_APP: "platform", S.TRADE_OFFLINE_CARD: "card"}.get(f, str(f))
            flags[name] = flags.get(name, 0) + 1
        faults = dict(self.faults)
        faults["reboots"] = reboots
        faults.setdefault("power_cuts", 0)
        faults.setdefault("flash_cuts", 0)
        no_split = len([1 for r in rows.values() if "extra" not in r[2].get("raw", {})])
        out = {
            "sessions": len(executed),
            "bills": len(rows),
            "lost": len(lost),
            "duplicated": len(twice),
            "unreconciled": len(unreconciled),
            "phantom": len(phantom),
            "mismatched": len(mismatched),
            "unconfirmed": pending_on_piles + unconfirmed_bridge,
            "recovered": recovered,
            "faults": dict(sorted(faults.items())),
            "seconds": None,
            "piles": self.piles,
            "sessions_per_pile": self.sessions,
            "seed": self.seed,
            "broker": "nats cluster, 3 nodes" if self.cluster else "mosquitto",
            "executed_starts_by": dict(sorted(flags.items())),
            "start_attempts": dict(self.starts),
            "commands": dict(sorted(self.commands.items())),
            "stop_reasons": dict(sorted(stops.items())),
            "unsettled_on_piles": unsettled_on_piles,
            "bridge_resends_absorbed": resends,
            "platform_copies_absorbed": sum(r[1] - 1 for r in rows.values()),
            "bills_without_fee_split": no_split,
            "tap_missed": tap_missed,
            "sim_hours": round(sim_s / 3600.0, 1),
            # Intruders (forge_bill, fake_login, forged_confirm): what the
            # bridge did with them, and anything they got (must be empty).
            "quarantined": {"bills": quarantined.get("quarantine", 0),
                            "fee_splits": quarantined.get("extra_quarantine", 0)},
            "confirms_refused_unauthenticated": refused,
            "logins_refused": logins_refused,
            "intruder_wins": list(self.intruder_wins),
        }
        if self.tp is not None:
            out["third_party"] = self.tp.report(theirs)
        out["examples"] = {k: v[:5] for k, v in (("lost", lost), ("duplicated", twice),
                                                  ("unreconciled", unreconciled),
                                                  ("phantom", phantom),
                                                  ("mismatched", mismatched)) if v}
        return out

    def close(self):
        if self.fleet is not None:
            self.fleet.stop()
        if self.bridge is not None:
            self.bridge.stop()
        if self.broker is not None:
            self.broker.close()
        if self.events is not None:
            # the bridge's commits, confirmations and 0xE3s from its store (a
            # SIGKILL can come between a step's commit and its log line)
            try:
                db = sqlite3.connect(self.bridge.database)
                for row in db.execute("SELECT serial, received_at, confirmed_at, settled_at "
                                      "FROM bills"):
                    for kind, t in zip(("committed", "confirmed", "settled"), row[1:]):
                        if t is not None:
                            self.events.append({"t": t, "actor": "bridge", "kind": kind,
                                                "serial": row[0]})
                db.close()
            except (sqlite3.Error, AttributeError):
                pass
            with open(self.events_path, "w") as f:
                for e in self.events:
                    f.write(json.dumps(e) + "\n")
            if self.bridge is not None and os.path.exists(self.bridge.log_path):
                shutil.copy(self.bridge.log_path, self.events_path + ".bridge.log")
        if self.own:
            shutil.rmtree(self.dir, ignore_errors=True)


def tally(executed, sealed, rows, conflicts=()):
    """The verdict's lists, from what the piles' flash saw and what the
    platform holds. executed: serial -> session header landed on flash;
    sealed: serial -> distinct bill payloads sealed on flash; rows: serial
    -> (reconciled, copies, platform bill doc); conflicts: serials the
    bridge refused as a second, different bill for a serial it held."""
    twice = set(s for s in executed if len(sealed.get(s, ())) > 1)
    twice |= set(s for s in conflicts if s in executed)
    return {
        "lost": sorted(s for s in executed if s not in rows),
        "duplicated": sorted(twice),
        "phantom": sorted(s for s in rows if s not in executed),
        "unreconciled": sorted(s for s, r in rows.items() if not r[0]),
        "mismatched": sorted(s for s, r in rows.items()
                             if s in sealed and not _same_bill(sealed[s][0], r[2])),
    }


def _decode_bill(payload):
    """The journal's bill record -> (0x3B fields, 0xEB fields)."""
    bill, extra = split_payload(payload)
    b = codec.decode_body(codec.layout_for(0x3B, len(bill)), bill)
    x = codec.decode_body(codec.layout_named("bill_extra"), extra)
    return b, x


def _same_bill(payload, doc):
    """Does the platform's bill carry the figures the pile sealed?"""
    b, x = _decode_bill(payload)
    raw = doc.get("raw") or {}
    if any(raw.get(k) != v for k, v in b.items()):
        return False
    got = raw.get("extra")
    if got is not None:
        for k, v in x.items():
            if k != "mac" and got.get(k) != v:
                return False
    return True


def failed(s):
    # Third-party piles: only a bill they got a 0x40 for and the platform
    # lacks is ours to answer for; their arithmetic is counted, not failed.
    tp = s.get("third_party") or {}
    return bool(s["lost"] or s["duplicated"] or s["unreconciled"] or s["phantom"]
                or s["mismatched"] or s["unconfirmed"] or s["tap_missed"] or not s["recovered"]
                or s.get("intruder_wins") or tp.get("lost"))


def table(s):
    out = ["", "pile-chaos: %d piles x %d sessions, seed %d, %.1f s (%.1f simulated hours)"
           % (s["piles"], s["sessions_per_pile"], s["seed"], s["seconds"], s["sim_hours"]),
           "-" * 60]
    for k in ("sessions", "bills", "lost", "duplicated", "unreconciled", "phantom", "mismatched",
              "unconfirmed", "recovered", "intruder_wins"):
        out.append("%-28s %s" % (k, s.get(k)))
    tp = s.get("third_party")
    if tp:
        out.append("third-party piles (reported apart): %d piles, %d bills sent, %d at the "
                   "platform, %d lost, %d given up by the piles (%d never received), by class: %s"
                   % (tp["piles"], tp["bills_sent"], tp["bills"], len(tp["lost"]),
                      tp["given_up_by_piles"], tp["given_up_never_received"],
                      ", ".join("%s %d" % kv for kv in tp["by_class"].items()) or "none"))
    out.append("faults: " + ", ".join("%s %d" % kv for kv in s["faults"].items()))
    out.append("stop reasons: " + ", ".join("%s %d" % kv for kv in s["stop_reasons"].items()))
    out.append("FAILED" if failed(s) else "OK: every executed start billed exactly once, "
               "reconciled and confirmed")
    return "\n".join(out)


def _kinds(text):
    if text in ("all", ""):
        return KINDS
    if text == "none":
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise argparse.ArgumentTypeError("unknown fault kind %r (known: %s)"
                                         % (bad[0], ", ".join(KINDS)))
    return kinds


def main(argv=None):
    ap = argparse.ArgumentParser(prog="pile-chaos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--piles", type=int, default=20, help="simulated piles (default 20)")
    ap.add_argument("--sessions", type=int, default=50,
                    help="executed starts per pile (default 50)")
    ap.add_argument("--seed", type=int, default=1, help="the fault and session plan (default 1)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--speed", type=float, default=600.0,
                    help="simulated seconds per real second, at most (default 600)")
    ap.add_argument("--minutes", type=int, default=6,
                    help="longest planned session, simulated minutes (default 6)")
    ap.add_argument("--faults", type=_kinds, default=KINDS, metavar="KIND,...",
                    help="fault kinds to inject: all (default), none, or a list of "
                    + ", ".join(KINDS))
    ap.add_argument("--intensity", type=float, default=1.0,
                    help="multiply the pile and process fault rates (default 1)")
    ap.add_argument("--recovery", type=float, default=180.0, metavar="S",
                    help="seconds to wait for everything to settle at the end (default 180)")
    ap.add_argument("--keep", metavar="DIR", help="keep logs and databases in DIR")
    ap.add_argument("--unkeyed", action="store_true",
                    help="piles without keys (no login proof, no bill MAC): shows what the "
                    "intruders get then; the run fails")
    ap.add_argument("--verbose", action="store_true", help="progress and faults on stderr")
    ap.add_argument("--cluster", action="store_true",
                    help="a 3-node NATS cluster (MQTT listeners, JetStream replicas 3) instead of "
                    "one Mosquitto; adds the node_kill fault, and broker_restart is a rolling "
                    "restart (docs/scaling.md)")
    ap.add_argument("--third-party", type=int, default=0, metavar="N",
                    help="vendor piles beside ours, their bills reported apart (default 0)")
    ap.add_argument("--events", metavar="FILE", help="write custody events (JSON lines) to FILE "
                    "and the bridge's log to FILE.bridge.log, for tools/model_replay.py")
    cli.common(ap, log_level="warning")
    args = ap.parse_args(argv)
    cli.setup_logging(args)
    if not args.verbose:
        # The broker is killed on purpose: its clients' "failed to receive on
        # socket" is the fault working, not news.
        logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    if args.piles < 1 or args.sessions < 1:
        ap.error("--piles and --sessions must be at least 1")
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    c = Chaos(args.piles, args.sessions, args.seed, args.speed, args.minutes, args.faults,
              args.intensity, args.keep, args.recovery, quiet=not args.verbose,
              keyed=not args.unkeyed, third_party=args.third_party, cluster=args.cluster,
              events=args.events)
    try:
        with cli.progress("pile-chaos sessions", total=args.piles * args.sessions,
                          enabled=cli.progress_enabled(args.json)) as tick:
            if cli.progress_enabled(args.json):
                c.progress = tick
            s = asyncio.run(c.run())
    finally:
        c.close()
    print(json.dumps(s, indent=2) if args.json else table(s))
    return 1 if failed(s) else 0


if __name__ == "__main__":
    sys.exit(main())
