# A fleet of simulated piles (docs/scenarios.md "run mode"): each a real
# firmware Pile on simulated hardware whose UART is a TCP connection to a
# bridge's pile port or a pty the bridge opens as a serial link, in
# simulated time running `speed` times faster than real time. The front end
# is `pile-sim run` (tools/sim.py); the demo and the chaos harness drive it
# too.
import os
import random
import re
import select
import shutil
import tempfile
import threading
import time

from firmware import session as S
from firmware.tariff import Tariff
from protocol import fields as F
from sim.links import PtyUart, TcpUart
from sim.scenario import SimUnit, _advance, bill_json
from sim.scenario_file import ScenarioError, parse_vin_policy


class SimFleet:
    """Many simulated piles, each a real firmware Pile whose UART is a TCP
    connection to the bridge's pile port (link="tcp", bridge=(host, port)) or
    a pty the bridge opens as a serial link (link="pty", bridge=None; the
    paths are `fleet.ptys()`), in simulated time running `speed` times faster
    than real time.

      fleet = SimFleet(("127.0.0.1", 8767), piles=4, speed=60, mix="cards")
      fleet.start()                 # a background thread runs the piles
      fleet.wait(lambda f: f.stats()["bills"] >= 3, timeout=30)
      fleet.call(lambda: fleet.units[0].act({"do": "unplug"}))
      fleet.stop()                  # closes every connection; returns stats()
      fleet.run_for(10)             # or: run in this thread for 10 real seconds

    mix: "cards" (each pile runs offline-card sessions with random targets,
    unplugs and replugs), "idle" (vehicles plugged, sessions are the
    platform's business). scenario: a parsed scenario whose pile-side actions
    (plug, unplug, card, stop_button, power_cut, meter_fault) are played on
    its piles; platform actions are the bridge's, and are skipped."""

    def __init__(self, bridge, piles=1, speed=60.0, mix="cards", scenario=None, root=None,
                 seed=1, start_secs=None, tariff=None, power_w=60000, first_code=55031412780001,
                 log=None, link="tcp", console=None, pin="0000"):
        if link not in ("tcp", "pty"):
            raise ValueError('link: "tcp" or "pty"')
        if (link == "tcp") != (bridge is not None):
            raise ValueError("bridge: (host, port) for a TCP link, None for ptys")
        self.bridge = bridge
        self.link = link
        self.speed = float(speed)
        if self.speed <= 0:
            raise ValueError("speed must be > 0")
        self.mix = mix if scenario is None else "scenario"
        if self.mix not in ("cards", "idle", "scenario"):
            raise ValueError("mix: \"cards\", \"idle\" (or a scenario)")
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="pile-sim-fleet-")
        self.events = []
        self._log = log
        self._lock = threading.Condition()
        self._calls = []
        self._stop = threading.Event()
        self._thread = None
        self.sim_ms = 0
        self.iterations = 0
        self.timeline = []
        if scenario is not None:
            start = scenario["start"]
            specs = scenario["piles"]
            tariff = scenario["tariff"]
            pol = scenario.get("vin_policy")
            self.timeline = list(scenario["timeline"])
        else:
            start = start_secs if start_secs is not None else _local_now()
            tariff = tariff or default_tariff()
            specs = []
            rnd = random.Random(seed)
            for i in range(piles):
                specs.append({"code": "%014d" % (first_code + i), "power_w": power_w,
                              "meter_start": rnd.randrange(0, 5000000, 100), "plugged": True,
                              "vehicle": {"capacity_wh": rnd.choice((40000, 60000, 80000)),
                                          "soc": rnd.randrange(10, 60), "vin": None,
                                          "max_power_w": 250000}})
            pol = None
        self.units = []
        for i, p in enumerate(specs):
            self.units.append(SimUnit(p["code"], os.path.join(self.root, p["code"]), start,
                                      tariff, p["power_w"], p["vehicle"], p["meter_start"],
                                      p["plugged"], parse_vin_policy(pol), link,
                                      tcp=self.bridge, record=self._rec,
                                      console=(link == "pty") if console is None else console,
                                      pin=pin, guns=p.get("guns", 1), bms=p.get("bms", False)))
        self._plans = [_CardMix(u, random.Random(seed * 7919 + i))
                       for i, u in enumerate(self.units)] if self.mix == "cards" else []

    def ptys(self):
        """{pile code: pty path} of a pty fleet (the bridge's serial URLs)."""
        return dict((u.code, u.uart.path) for u in self.units if isinstance(u.uart, PtyUart))

    def consoles(self):
        """{pile code: pty path} of each pile's technician console (pile-console URL)."""
        return dict((u.code, u.console_uart.path) for u in self.units
                    if u.console_uart is not None)

    def _rec(self, unit, kind, kw):
        e = {"t": F.iso(unit.clock.now()), "pile": unit.code, "event": kind}
        e.update(kw)
        self.events.append(e)
        if len(self.events) > 10000:
            del self.events[:1000]
        if self._log:
            self._log(e)

    # --- control -----------------------------------------------------------------

    def start(self):
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pile-sim fleet", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop the piles, close their connections; returns stats()."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        self._thread = None
        st = self.stats()
        for u in self.units:
            if u.uart is not None:
                u.uart.close()
            if u.console_uart is not None:
                u.console_uart.close()
            u.close()                  # a simulated BMS's CAN bus
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        return st

    def run_for(self, seconds):
        """Run in the calling thread for `seconds` of real time (or until
        stop() / a signal). Returns stats()."""
        self._stop.clear()
        self._run(time.monotonic() + seconds)
        return self.stats()

    def call(self, fn):
        """Run fn() in the fleet's thread between two polls (thread-safe)."""
        with self._lock:
            self._calls.append(fn)

    def wait(self, predicate, timeout=30.0):
        """Block until predicate(fleet) is true (checked in the fleet's thread
        after each round); returns its last value."""
        end = time.monotonic() + timeout
        with self._lock:
            while True:
                v = predicate(self)
                if v or self._stop.is_set():
                    return v
                left = end - time.monotonic()
                if left <= 0:
                    return v
                self._lock.wait(left)

    def stats(self):
        with self._lock:
            return self._stats()

    def _stats(self):
        piles = []
        tot = {"piles": len(self.units), "online": 0, "bills": 0, "pending": 0,
               "confirmed": 0, "settled": 0, "executed_starts": 0, "power_cuts": 0,
               "sim_seconds": self.sim_ms // 1000}
        for u in self.units:
            p = u.pile
            st = {"pile": u.code, "online": bool(p and p.link.online),
                  "state": S.STATE_NAMES[p.gun.state] if p else "off",
                  "guns": [S.STATE_NAMES[g.state] for g in p.guns] if p else ["off"],
                  "bills": len(u.bills),
                  "executed_starts": len(u.executed), "power_cuts": u.power_cuts,
                  "reboots": u.reboots,
                  "connects": u.uart.connects if isinstance(u.uart, TcpUart) else 0}
            if isinstance(u.uart, PtyUart):
                st["pty"] = u.uart.path
                st["dropped_bytes"] = u.uart.dropped
            if p:
                j = p.journal
                st["pending"] = len(j.pending())
                st["unsettled"] = len(j.confirmed())
                stat = [j.status(s) for s in u.bills]
                st["confirmed"] = len([s for s in stat if s in ("confirmed", "settled")])
                st["settled"] = len([s for s in stat if s == "settled"])
                for k in ("pending", "confirmed", "settled"):
                    tot[k] += st[k]
            tot["online"] += 1 if st["online"] else 0
            tot["bills"] += st["bills"]
            tot["executed_starts"] += st["executed_starts"]
            tot["power_cuts"] += u.power_cuts
            piles.append(st)
        tot["per_pile"] = piles
        return tot

    def bills(self):
        """Every bill the fleet's piles sealed, as in the scenario result."""
        with self._lock:
            return self._bills()

    def _bills(self):
        out = []
        for u in self.units:
            for serial in u.bills:
                b, how = u.bills[serial]
                out.append(bill_json(b, how, u))
        return out

    # --- the loop ----------------------------------------------------------------------

    def _run(self, deadline=None):
        t0 = time.monotonic()
        base = self.sim_ms
        ti = 0
        tl = self.timeline
        by_code = dict((u.code, u) for u in self.units)
        while not self._stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            # A round runs under the lock: wait() predicates, stats() and
            # call() see the piles between two rounds, never in the middle.
            with self._lock:
                calls, self._calls = self._calls, []
                for fn in calls:
                    fn()
                target = base + int((now - t0) * self.speed * 1000)
                if target > self.sim_ms + 5000:
                    # A slow host: at most 5 simulated s per round, and the lag
                    # is dropped (a slower clock, not a burst that starves sockets).
                    target = self.sim_ms + 5000
                    base, t0 = target, now
                while ti < len(tl) and tl[ti]["at"] <= target:
                    a = tl[ti]
                    if a["at"] > self.sim_ms:
                        self.sim_ms = _advance(self.units, a["at"], self.sim_ms, lazy=True)
                    by_code[a["pile"]].act(a)
                    ti += 1
                if target > self.sim_ms:
                    self.sim_ms = _advance(self.units, target, self.sim_ms, lazy=True)
                else:
                    for u in self.units:
                        u.poll()
                for m in self._plans:
                    m.step()
                self.iterations += 1
                self._lock.notify_all()
                socks = [u.uart.sock for u in self.units
                         if isinstance(u.uart, TcpUart) and u.uart.connected and u.uart.sock]
                socks += [u.uart.fd for u in self.units
                          if isinstance(u.uart, PtyUart) and not u.uart.closed and u.pile]
                socks += [u.console_uart.fd for u in self.units   # a keystroke wakes us
                          if u.console_uart is not None and not u.console_uart.closed
                          and u.pile]
            # Wait for bytes from the bridge or the next round, whichever is first.
            pause = min(0.02, max(0.001, 1.0 / self.speed))
            if socks:
                try:
                    select.select(socks, [], [], pause)
                except (OSError, ValueError):
                    time.sleep(pause)
            else:
                time.sleep(pause)
        with self._lock:
            self._lock.notify_all()


class _CardMix:
    """The built-in session mix for one pile: a vehicle arrives, a card is
    swiped (offline start: the pile issues the serial), the session ends by a
    target, the stop button or a full battery; the vehicle leaves; repeat."""

    def __init__(self, unit, rnd):
        self.u = unit
        self.rnd = rnd
        self.next_at = unit.clock.ticks_ms() + rnd.randrange(5000, 60000)
        self.phase = "plugged" if unit.world.vehicle.plugged else "away"
        self.stop_at = None

    def step(self):
        u = self.u
        p = u.pile
        if p is None:
            return
        t = u.clock.ticks_ms()
        gun = p.gun
        r = self.rnd
        if self.phase == "charging":
            if self.stop_at is not None and t >= self.stop_at and gun.state == S.CHARGING:
                u.act({"do": "stop_button"})
            if gun.state != S.CHARGING:
                self.phase = "done"
                self.next_at = t + r.randrange(30000, 180000)
            return
        if t < self.next_at:
            return
        if self.phase == "away":
            u.act({"do": "plug", "vehicle": {"soc": r.randrange(10, 70)}})
            self.phase = "plugged"
            self.next_at = t + r.randrange(10000, 60000)
        elif self.phase == "plugged":
            kind = r.choice(("amount", "energy", "minutes", "button", "full"))
            targets = {}
            self.stop_at = None
            if kind == "amount":
                targets["amount"] = r.randrange(5, 40) * 10000
            elif kind == "energy":
                targets["energy"] = r.randrange(3, 30) * 10000
            elif kind == "minutes":
                targets["minutes"] = r.randrange(5, 45)
            elif kind == "button":
                self.stop_at = t + r.randrange(3, 40) * 60000
            u.act({"do": "card", "card": "%08X" % r.randrange(1 << 32), "targets": targets})
            self.phase = "charging" if gun.state == S.CHARGING else "done"
            self.next_at = t + r.randrange(30000, 120000)
        elif self.phase == "done":
            u.act({"do": "unplug"})
            self.phase = "away"
            self.next_at = t + r.randrange(60000, 600000)


def default_tariff():
    """The fleet's tariff when no scenario gives one: sharp 10-12, peak 8-10
    and 12-18, flat 18-22, valley otherwise (x10^5 yuan/kWh)."""
    slots = []
    for i in range(48):
        h = i // 2
        slots.append(0 if 10 <= h < 12 else 1 if 8 <= h < 18 else 2 if 18 <= h < 22 else 3)
    return Tariff("0100", [(120000, 40000), (100000, 40000), (70000, 40000), (30000, 40000)],
                  slots)


def _local_now():
    lt = time.localtime()
    return F.to_secs(lt.tm_year, lt.tm_mon, lt.tm_mday, lt.tm_hour, lt.tm_min, lt.tm_sec)


def parse_hostport(s):
    m = re.match(r"^\[?([^\]]*?)\]?:(\d+)$", s or "")
    if not m or not (0 < int(m.group(2)) < 65536):
        raise ScenarioError("--bridge: %r is not HOST:PORT" % s)
    return (m.group(1) or "127.0.0.1", int(m.group(2)))
