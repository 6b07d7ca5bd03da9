# pile-chaos --inproc (docs/chaos.md "In one process"): the chaos harness of
# sim/chaos.py with every part in this process and simulated time, no
# sockets: the real firmware piles (sim/chaos_fleet.py's ChaosUnit on its
# watched flash), the real bridge (host.bridge.Bridge: its TCP handler,
# PileConn, outbox and Store on a SQLite file) and the real reference
# platform (host.platform.Platform), on one asyncio loop whose clock jumps to
# the next timer. What is simulated instead of real:
#   - the loop's clock (SimLoop) and the host modules' `time` (SimTime);
#   - TCP: each pile link is an asyncio.StreamReader fed by the pile's UART
#     and a writer that hands the bridge's bytes back (with the same frame
#     faults as ChaosUart);
#   - the broker: FakeBroker, QoS 1 persistent sessions, behind an
#     aiomqtt-shaped module given to host.mqtt and host.platform;
#   - the store's writer thread: InlineStore runs the same transactions
#     (Store._run_batch) on the loop, one batch per loop turn;
#   - a bridge SIGKILL: its store connection closed with what was not
#     committed, its links and MQTT session dropped, its tasks cancelled
#     (SimBridge.kill); a new Bridge then starts on the same database.
import asyncio
import contextvars
import faulthandler
import io
import json
import logging
import os
import random
import sys
import threading
import time as _time

from host import config as configmod
from sim.chaos import Chaos
from sim.chaos_fleet import ChaosFleet, ChaosUart, ChaosUnit, SITE
from sim.inproc import (OWNER, FakeBroker, InlineStore, SimLoop, SimStall, SimTime, _Owner,
                        fake_aiomqtt)

# The fault kinds this mode plays (the intruders and the NATS cluster stay
# with the socket harness: they attack sockets and processes).
KINDS = ("power_cut", "flash_cut", "reboot", "bridge_kill", "broker_restart",
         "platform_outage", "corrupt", "duplicate", "platform_duplicate")
_P_PLATFORM_DUP = 0.01      # a bill or confirmation delivered twice by the broker
_REAL_TO_SIM = 600.0        # the socket harness's default speed: its fault durations, in sim s
_TICK_CAP_MS = 1000         # a pile's loop runs at least this often (its driver's steps)
_RECOVERY_SIM_S = 6 * 3600  # recovery bound, simulated seconds
_STALL_SIM_S = 2 * 3600     # no session executed for this long (simulated): the run stalled
_LAST_RESORT_S = 120        # real seconds past the wall-clock bound: stacks dumped, process ended
_HOST_MODULES = ("host.bridge", "host.piles", "host.outbox", "host.store", "host.platform",
                 "host.leases", "host.schema", "host.commands", "sim.chaos")


# --- the pile link -----------------------------------------------------------------------

class _Writer:
    """The bridge's side of a pile's link: what asyncio's StreamWriter
    does that StreamLink and Bridge._on_tcp use."""

    def __init__(self, uart, reader, n):
        self.uart = uart
        self.reader = reader
        self.peer = ("10.%d.%d.%d" % (n >> 16 & 255, n >> 8 & 255, n & 255), 40000 + n % 20000)
        self.closing = False

    def get_extra_info(self, name, default=None):
        return self.peer if name == "peername" else default

    @property
    def transport(self):
        return self

    def write(self, data):
        if not self.closing:
            self.uart.from_bridge(self, data)

    async def drain(self):
        if self.closing:
            raise ConnectionResetError("connection closed")

    def is_closing(self):
        return self.closing

    def close(self):
        if not self.closing:
            self.closing = True
            self.reader.feed_eof()
            self.uart.bridge_closed(self)

    abort = close

    async def wait_closed(self):
        pass


class InprocUart(ChaosUart):
    """ChaosUart's frame faults on an in-memory link to the bridge: the
    pile's writes are fed to the bridge's StreamReader, the bridge's writes
    split into frames (and faulted) for the pile to read. Dials again
    0.25 s (simulated) after the link drops, while the bridge is up."""

    def __init__(self, unit):
        self.unit = unit
        self.h = unit.h
        self.on_change = unit._link_changed
        self._in = bytearray()
        self._out = bytearray()
        self.reader = self.writer = None
        self.connected = False
        self.closed = False
        self.connects = self.drops = 0
        self._retry_at = 0

    def service(self):
        if self.closed or self.connected or self.unit.pile is None:
            return
        if self.unit.clock.ticks_ms() < self._retry_at:
            return
        link = self.h.bridge.dial(self)
        if link is None:
            self._retry_at = self.unit.clock.ticks_ms() + 250
            return
        self.reader, self.writer = link
        self.connected = True
        self.connects += 1
        self.on_change(True)

    def write(self, b):
        if self.unit.flash.cut or not self.connected:
            return len(b)      # no power, or no line: the bytes are gone
        self.reader.feed_data(self._fault(bytes(b), "to_bridge"))
        return len(b)

    def read(self, n=256):
        if not self._out:
            return None
        out = bytes(self._out[:n])
        del self._out[:n]
        return out

    def from_bridge(self, w, data):
        if w is self.writer:
            self._in.extend(data)
            self._split()
            self.unit.wake()

    def bridge_closed(self, w):
        if w is self.writer:
            self._down()

    def _down(self):
        was = self.connected
        self.connected = False
        self._in = bytearray()
        self._out = bytearray()
        w, self.writer = self.writer, None
        self.reader = None
        if w is not None:
            w.close()
        self._retry_at = self.unit.clock.ticks_ms() + 250
        if was:
            self.drops += 1
            self.on_change(False)

    def cut(self):
        self._down()

    def close(self):
        self.closed = True
        self._down()


class InprocUnit(ChaosUnit):
    """A ChaosUnit run by loop timers: its clock follows the loop's, its
    loop (firmware poll, then its session driver) runs when the firmware
    asks or bytes arrive, at least every _TICK_CAP_MS."""

    def new_uart(self):
        return InprocUart(self)

    def boot(self):
        self.cfg["ocmf"] = self.h.ocmf      # OCMF signing after each session, or not
        ChaosUnit.boot(self)

    def schedule(self, loop, driver):
        self.loop = loop
        self.driver = driver
        # The pile's own context, no bridge's: a callback runs in the context
        # it was scheduled from, and wake() is called from the bridge's
        # tasks. Without it the pile's timers ran on in the bridge's context
        # and the driver's commands became that bridge's tasks, cancelled by
        # its next kill (docs/chaos.md "In one process").
        self.ctx = contextvars.copy_context()
        self.ctx.run(OWNER.set, None)
        self.at_ms = int(round(loop.vt * 1000))
        self.handle = loop.call_soon(self.tick, context=self.ctx)
        self.due = loop.vt
        self.polls = 0

    def wake(self):
        h = self.handle
        if h is not None and self.due > self.loop.vt + 0.0005:
            h.cancel()
            self.due = self.loop.vt
            self.handle = self.loop.call_soon(self.tick, context=self.ctx)

    stopped = False

    def tick(self):
        self.handle = None
        if self.stopped:
            return
        now = int(round(self.loop.vt * 1000))
        try:
            if now > self.at_ms:
                self.clock.sleep_ms(now - self.at_ms)
                self.at_ms = now
            self.uart.service()
            d = self.poll()
            self.polls += 1
            self.driver.step()
            self.uart.service()
        except (Exception, asyncio.CancelledError) as e:
            # A pile whose loop fails is never run again: fail the run with
            # it (InprocChaos.run), not wait for its sessions forever.
            self.stopped = True
            self.h.pile_failed(self, e)
            return
        if d < 1:
            d = 1
        elif d > _TICK_CAP_MS:
            d = _TICK_CAP_MS
        if self.handle is None:
            self.due = (now + d) / 1000.0
            self.handle = self.loop.call_at(self.due, self.tick, context=self.ctx)


class InprocFleet(ChaosFleet):
    unit_class = InprocUnit

    def __init__(self, h, piles, sessions, root, seed):
        ChaosFleet.__init__(self, h, piles, sessions, 600.0, root, seed)
        self._lock = threading.Lock()

    def start_on(self, loop):
        for u, d in zip(self.units, self.drivers):
            u.schedule(loop, d)

    @property
    def polls(self):
        return sum(u.polls for u in self.units)

    def call(self, fn):
        return fn(self)


# --- the bridge as a process ------------------------------------------------------------

class SimBridge:
    """The real host.bridge.Bridge as the harness's bridge process: start()
    on the config file, kill() as a SIGKILL (the store keeps what it
    committed, RAM and connections are gone), dial() as a pile's connect."""

    def __init__(self, h, workdir, extra):
        self.h = h
        self.database = os.path.join(workdir, "bridge.db")
        self.config_path = os.path.join(workdir, "bridge.toml")
        with open(self.config_path, "w") as f:
            f.write('site = "%s"\ndatabase = "%s"\nlog_level = "warning"\n'
                    '[mqtt]\nurl = "mqtt://inproc:1883"\nclient_id = "pc-bridge-inproc"\n'
                    '[tcp]\next = true\nmax_per_address = 1024\nmax_unauthenticated = 1000000\n'
                    % (SITE, self.database))
            f.write(extra)
        self.bridge = None
        self.owner = None
        self.ctx = None
        self.running = False
        self.starts = 0
        self._n = 0

    @property
    def pid(self):
        return self.starts

    async def start(self):
        from host.bridge import Bridge
        cfg = configmod.load(self.config_path)
        self.owner = _Owner()
        self.ctx = contextvars.copy_context()
        self.ctx.run(OWNER.set, self.owner)
        self.bridge = Bridge(cfg)
        await asyncio.get_running_loop().create_task(self.bridge.start(), context=self.ctx)
        self.running = True
        self.starts += 1

    def dial(self, uart):
        if not self.running:
            return None
        self._n += 1
        reader = asyncio.StreamReader()
        writer = _Writer(uart, reader, self._n)
        asyncio.get_running_loop().create_task(self.bridge._on_tcp(reader, writer),
                                               context=self.ctx)
        return reader, writer

    def kill(self):
        """SIGKILL: uncommitted store calls lost, every link and the MQTT
        session dropped, every task of this bridge cancelled."""
        if not self.running:
            return
        self.running = False
        b = self.bridge
        b.store.crash()
        self.h.broker.kill_client(getattr(b.mqtt, "client", None))
        for conn in list(b.conns):
            w = getattr(conn.link, "_w", None)
            if w is not None:
                w.close()
        for t in list(self.owner.tasks):
            t.cancel()

    async def stop(self):
        if self.running:
            self.running = False
            await self.bridge.stop()


# --- the harness ---------------------------------------------------------------------------

class InprocChaos(Chaos):
    """sim/chaos.py's harness and verdict (Chaos.summary, tally) over the
    in-process parts above, in simulated time."""

    def __init__(self, piles=20, sessions=50, seed=1, minutes=6, faults=KINDS, intensity=1.0,
                 workdir=None, quiet=True, keyed=True, recovery_s=_RECOVERY_SIM_S, ocmf=False,
                 wall_limit_s=None):
        faults = tuple(faults)
        bad = set(faults) - set(KINDS)
        if bad:
            raise ValueError("unknown or socket-only fault kind %s (in-process: %s)"
                             % (sorted(bad)[0], ", ".join(KINDS)))
        self.platform_dup = "platform_duplicate" in faults
        self.ocmf = ocmf
        own = workdir is None
        if own:
            # The stores' fsyncs on tmpfs cost nothing: the loop measures code, not the disk.
            import tempfile
            workdir = tempfile.mkdtemp(prefix="pc-chaos-inproc-",
                                       dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        Chaos.__init__(self, piles, sessions, seed, _REAL_TO_SIM, minutes,
                       [k for k in faults if k != "platform_duplicate"], intensity, workdir,
                       recovery_s, quiet, keyed)
        self.own = own
        self.broker = None          # FakeBroker, set by run()
        self.simtime = None
        self.bridge_addr = ("inproc", 0)
        self.perf = {}
        self.stuck = []              # the unfinished drivers of a stalled run
        self.failure = None          # the first pile loop that raised, as an exception
        self.unrecovered = None      # what a run that did not recover left open
        # The run's wall-clock bound (SimLoop's guard): generous, 1 s a session
        # and 10 minutes more (a 1,000-session run takes 1 to 3 minutes).
        self.wall_limit_s = wall_limit_s if wall_limit_s is not None else \
            600 + piles * sessions

    def submit(self, coro):
        return asyncio.ensure_future(coro)

    def _bridge_extra_inproc(self):
        # The bridge's own defaults (retries, settle, timeouts): the socket
        # harness shortens them for its 600x clock, simulated time needs not.
        # time_sync_s = 0 as there: the piles keep their simulated clocks.
        return ("[piles]\ntime_sync_s = 0\n[keys]\n"
                + ("site_key_file = \"%s\"\n" % self._key_files["site"] if self.keyed else "")
                + "platform_key_file = \"%s\"\n" % self._key_files["platform"])

    def _bridge_db(self):
        import sqlite3
        return sqlite3.connect(self.bridge.database, timeout=10)

    async def process_faults(self, plan):
        # Each kind's faults one after the other, the kinds side by side:
        # in simulated time an outage lasts minutes, and in series they
        # would outlast a short run.
        kinds = {}
        for item in plan:
            kinds.setdefault(item[1], []).append(item)
        await asyncio.gather(*[self._faults_of(items) for items in kinds.values()])

    async def _faults_of(self, plan):
        for frac, kind, x in plan:
            if not await self.reached(frac, 10):
                return
            if kind == "bridge_kill":
                self.say("bridge killed at %d sessions" % self.executed())
                self.bridge.kill()
                self.count("bridge_kills")
                await asyncio.sleep(x * _REAL_TO_SIM)
                await self.bridge.start()
            elif kind == "broker_restart":
                self.say("broker restart at %d sessions" % self.executed())
                self.broker.restart()
                self.count("broker_restarts")
                await asyncio.sleep(1 + 2 * x * _REAL_TO_SIM / 10)
                self.broker.start()
            elif kind == "platform_outage":
                self.say("platform silent at %d sessions" % self.executed())
                self.platform.silent = True
                self.count("platform_outages")
                try:
                    await asyncio.sleep((0.5 + 2.5 * x) * _REAL_TO_SIM)
                finally:
                    self.platform.silent = False

    async def run(self):
        from host.platform import Platform
        t0 = _time.perf_counter()
        cpu0 = _time.process_time()
        loop = self.loop = asyncio.get_running_loop()
        self.bridge = SimBridge(self, self.dir, self._bridge_extra_inproc())
        await self.bridge.start()
        self.platform = Platform("mqtt://inproc:1883", os.path.join(self.dir, "platform.db"),
                                 cmd_key=self.platform_key, client_id="pc-platform-inproc",
                                 clock=self.simtime.time)
        ready = asyncio.Event()
        ptask = asyncio.ensure_future(self.platform.run(ready))
        await ready.wait()
        self.fleet = InprocFleet(self, self.piles, self.sessions, os.path.join(self.dir, "piles"),
                                 self.seed)
        self.fleet.start_on(loop)
        ftask = asyncio.ensure_future(self.process_faults(self._plan_process_faults()))
        last, moved = -1, loop.vt
        stalled = False
        while not all(d.done for d in self.fleet.drivers):
            if ftask.done() and ftask.exception():
                raise ftask.exception()
            if self.failure is not None:
                raise self.failure
            n = self.executed()
            if n != last:
                if self.progress is not None:
                    self.progress(n - max(last, 0), "sim %.1f h" % (loop.vt / 3600))
                last, moved = n, loop.vt
            elif loop.vt - moved > _STALL_SIM_S:
                stalled = True       # no session started for this long: give up
                self.stuck = [self._driver_state(d) for d in self.fleet.drivers if not d.done]
                # Said even when quiet: the verdict's table shows only "not recovered".
                print("pile-chaos --inproc: no session for %d simulated hours; unfinished: %s"
                      % (_STALL_SIM_S // 3600, json.dumps(self.stuck)), file=sys.stderr, flush=True)
                break
            await asyncio.sleep(10)
        run_s = _time.perf_counter() - t0
        run_cpu = _time.process_time() - cpu0
        ok = await self.recover(ftask)
        self.fleet.sim_ms = int(loop.vt * 1000)
        s = self.summary(ok and not stalled)
        s["stalled"] = stalled
        if stalled:
            s["stuck_piles"] = self.stuck
        if not ok:
            s["left_open"] = self.unrecovered
        s["broker"] = "in-process (FakeBroker)"
        s["faults"]["platform_duplicate_deliveries"] = self.broker.duplicated
        s["faults"]["bridge_starts"] = self.bridge.starts
        ptask.cancel()
        await self.bridge.stop()
        s["seconds"] = round(_time.perf_counter() - t0, 1)
        s["mode"] = "inproc"
        s["sessions_per_s"] = round(s["sessions"] / run_s, 1) if run_s else None
        s["sessions_per_cpu_s"] = round(s["sessions"] / run_cpu, 1) if run_cpu else None
        s["firmware_polls"] = self.fleet.polls
        return s

    def pile_failed(self, unit, e):
        """A pile's loop (its firmware poll or its session driver) raised:
        the run fails with it."""
        if self.failure is None:
            self.failure = RuntimeError("chaos-inproc: pile %s: its loop raised %s: %s"
                                        % (unit.code, type(e).__name__, e))
            self.failure.__cause__ = e

    def _driver_state(self, d):
        u = d.u
        p = u.pile
        t = u.clock.ticks_ms()
        return {"pile": u.code, "phase": d.phase, "executed": len(u.flash.opened), "goal": d.goal,
                "in_ms": d.at - t if d.phase in ("gap", "done") else d.stop_at - t,
                "fut": None if d.fut is None else ("done" if d.fut.done() else "pending"),
                "stop_rounds": d.stop_rounds, "powered": p is not None,
                "gun": None if p is None else p.gun.state, "plugged": bool(u.car.plugged),
                "linked": u.uart.connected, "connects": u.uart.connects, "drops": u.uart.drops,
                "pending_bills": None if p is None else len(p.journal.pending())}

    async def recover(self, ftask):
        self.recovering = True
        await ftask
        self.p_corrupt = self.p_duplicate = 0.0
        self.broker.p_dup = 0.0
        self.platform.silent = False
        for u in self.fleet.units:
            u.flash.cut_after = None
        for d in self.fleet.drivers:
            d.cut_at = None
        if not self.bridge.running:
            await self.bridge.start()
        self.broker.start()
        end = self.loop.vt + self.recovery_s
        while self.loop.vt < end:
            await asyncio.sleep(5)
            if self.failure is not None:
                raise self.failure
            if self._piles_quiet(self.fleet) and self._platform_has_all() and \
                    self._bridge_open() == (0, 0):
                return True
        self.unrecovered = self._left_open()
        print("pile-chaos --inproc: not recovered in %d simulated hours; left open: %s"
              % (self.recovery_s // 3600, json.dumps(self.unrecovered)), file=sys.stderr, flush=True)
        return False

    def _left_open(self):
        """What a run that did not recover left open: the bridge's open
        bills, and each pile with bills it still holds or that the platform
        lacks."""
        have = self.platform.serials()
        piles = []
        for d in self.fleet.drivers:
            u = d.u
            p = u.pile
            missing = [sr for sr in u.flash.opened if sr not in have]
            held = None if p is None else len(p.journal.pending()) + len(p.journal.confirmed())
            if missing or held or p is None or not p.link.online:
                st = self._driver_state(d)
                st.update(missing_at_platform=len(missing), held_on_pile=held,
                          online=p is not None and p.link.online)
                piles.append(st)
        unconfirmed, unsettled = self._bridge_open()
        return {"bridge_unconfirmed": unconfirmed, "bridge_unsettled": unsettled,
                "bridge_running": self.bridge.running, "broker_up": self.broker.up,
                "piles": piles}

    def close(self):
        if self.bridge is not None and self.bridge.bridge is not None:
            st = self.bridge.bridge.store
            if st is not None and not st.dead:
                st.close()
        self.bridge = None
        Chaos.close(self)


def _last_resort(after_s):
    # What SimLoop's guard cannot see, as no loop turn ends (a callback that
    # never returns): after `after_s` real seconds every thread's stack goes
    # to stderr and the process ends, exit status 1.
    try:
        faulthandler.dump_traceback_later(after_s, exit=True, file=sys.__stderr__)
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass        # no stderr with a file descriptor


def run(h):
    """Run the InprocChaos `h` on a SimLoop, with the host modules on its
    clock, its broker and the inline store; returns its summary."""
    import importlib
    import host.bridge
    import host.mqtt
    import host.platform
    # A whole run stands still at most ~2,000 turns (its start: 1,664 with
    # 40 piles, 2,336 with 100); the guard allows 20 times that and more.
    loop = SimLoop(stall_turns=max(50_000, 500 * h.piles), wall_limit_s=h.wall_limit_s)
    h.simtime = SimTime(loop, _time.time())
    h.broker = FakeBroker(random.Random("%d/broker" % h.seed),
                          _P_PLATFORM_DUP if h.platform_dup else 0.0)
    fake = fake_aiomqtt(h.broker)
    patches = [(importlib.import_module(m), "time", h.simtime) for m in _HOST_MODULES]
    patches += [(host.bridge, "Store", InlineStore), (host.mqtt, "aiomqtt", fake),
                (host.platform, "aiomqtt", fake)]
    saved = [(m, name, getattr(m, name)) for m, name, _ in patches]
    quiet = [logging.getLogger(n) for n in ("host", "mqtt")] if h.quiet else []
    levels = [lg.level for lg in quiet]
    try:
        for m, name, v in patches:
            setattr(m, name, v)
        for lg in quiet:
            lg.setLevel(logging.CRITICAL)
        asyncio.set_event_loop(loop)
        _last_resort(h.wall_limit_s + _LAST_RESORT_S)
        try:
            return loop.run_until_complete(h.run())
        finally:
            # What is left (a killed bridge's tasks, the platform's) ends here.
            for u in (h.fleet.units if h.fleet is not None else ()):
                u.stopped = True
                if getattr(u, "handle", None) is not None:
                    u.handle.cancel()
            left = asyncio.all_tasks(loop)
            for t in left:
                t.cancel()
            # Bounded too: after a stall the cleanup may stall the same way;
            # the first verdict is the one that counts.
            first = loop.stalled
            loop.arm(60)
            try:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            except SimStall:
                if first is None:
                    raise
    finally:
        faulthandler.cancel_dump_traceback_later()
        for m, name, v in reversed(saved):
            setattr(m, name, v)
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
        asyncio.set_event_loop(None)
        loop.close()


def rate_line(s):
    """The throughput line printed under the verdict."""
    return ("in-process: %s sessions/s (%s per CPU second), %d firmware polls, %.1f simulated "
            "hours, platform got %d duplicate deliveries"
            % (s["sessions_per_s"], s["sessions_per_cpu_s"], s["firmware_polls"], s["sim_hours"],
               s["faults"].get("platform_duplicate_deliveries", 0)))
