# pile-chaos's harness (docs/chaos.md): N simulated piles x M sessions
# through the real bridge, broker and platform with seeded random faults;
# then it counts lost, duplicated, unreconciled, phantom, mismatched and
# unconfirmed bills. Its parts are sim/chaos_fleet.py; the command line is
# tools/chaos.py.
import asyncio
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time

from firmware import journal as J
from firmware import session as S
from sim.brokers import mosquitto_available
from sim.nats import NatsCluster
from host.mqtt import stop_tasks
from sim.testkit import make_bill, make_extra
from protocol import codec
from protocol import sign
from protocol.bill import split as split_payload
from sim.scenario_file import STOP_NAMES
from sim import stack
from sim.chaos_fleet import (ChaosFleet, INTRUDER, KINDS, SITE, THIRD_PARTY_FIRST, ThirdPartyFleet,
                             _CMD_TIMEOUT_S, _ClusterBroker, _PER_1000, _P_BMS_FAULT, _P_CORRUPT,
                             _P_DUPLICATE, _P_FLASH_CUT, _P_POWER_CUT, _P_REBOOT, _STALL_S,
                             parse_records)


class Chaos:
    def __init__(self, piles=20, sessions=50, seed=1, speed=600.0, minutes=6, faults=KINDS,
                 intensity=1.0, workdir=None, recovery_s=180.0, quiet=True, keyed=True,
                 third_party=0, cluster=False, events=None, bms=False):
        self.third_party = third_party
        self.bms = bms            # each gun charges a simulated car over GB/T 27930

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
        if not bms:
            self.kinds.discard("bms_fault")
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
        base = {"power_cut": _P_POWER_CUT, "flash_cut": _P_FLASH_CUT, "reboot": _P_REBOOT,
                "bms_fault": _P_BMS_FAULT}[kind]
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

    async def reached(self, frac, poll_s):
        """Wait until `frac` of the planned sessions have executed, looking
        every `poll_s` seconds: True then, False once the run is recovering
        (the fault plan ends there). The in-process harness uses it too."""
        goal = self.piles * self.sessions
        while self.executed() < frac * goal:
            if self.recovering:
                return False
            await asyncio.sleep(poll_s)
        return not self.recovering

    async def process_faults(self, plan):
        for frac, kind, x in plan:
            if not await self.reached(frac, 0.05):
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
                                os.path.join(self.dir, "piles"), self.seed, bms=self.bms)
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
            name = STOP_NAMES.get(b["stop_reason"], "0x%02X" % b["stop_reason"])
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
            "bms": self.bms,
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
    out = ["", "pile-chaos: %d piles x %d sessions%s, seed %d, %.1f s (%.1f simulated hours)"
           % (s["piles"], s["sessions_per_pile"], ", a BMS per gun" if s.get("bms") else "",
              s["seed"], s["seconds"], s["sim_hours"]),
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
