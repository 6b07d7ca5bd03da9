# pile-bridge: the site gateway. Piles on serial ports and TCP on one side,
# the platform over MQTT on the other, custody of bills in between.
#
# A bill's life (docs/bridge.md): 0x3B received -> committed to SQLite
# (synchronous=FULL) -> 0x40 to the pile -> published QoS 1 on
# pc/<site>/bills/<pile> until the platform confirms on pc/<site>/confirm/<pile>
# -> 0xE4 "settled" to our firmware -> 0xE3 from the pile.
import asyncio
import collections
import json
import logging
import random
import signal
import sys
import time

from protocol import codec
from protocol import fields as F
from protocol import sign
from protocol.reconcile import bill_problems

from host import cli
from host import commands as C
from host import config as configmod
from host import ocmf_check
from host import parallel
from host import push as pushmod
from host import schema
from host import tariff as T
from host.leases import fence_check
from host.links import LinkClosed, SerialLink, StreamLink
from host.mqtt import MqttLink, NotConnected, stop_tasks
from host.outbox import Outbox
from host.piles import CommandTimeout, Pile, PileConn, SignedReject, SignError
from host.store import Store, StoreError
from host.topics import SITE_TARGET, Topics

log = logging.getLogger("host.bridge")

VERSION = "0.1.0"
_RECENT_COMMANDS = 1024      # request ids remembered for duplicate detection
_PENDING_RESULTS = 1000      # results kept while the broker is away


class NoMqtt:
    """mqtt.enabled = false (an OCPP-only site): never connected."""

    def __init__(self):
        self.connected = asyncio.Event()
        self.gen = 0
        self.connects = 0
        self.failures = 0

    async def run(self):
        await asyncio.Event().wait()

    async def publish(self, *a, **kw):
        raise NotConnected("MQTT is disabled (mqtt.enabled = false)")

    async def stop(self, last=None):
        pass


class Bridge:
    def __init__(self, cfg):
        self.cfg = cfg
        self.site = cfg.site
        # Command and upgrade keys (docs/security.md): read now, so a bad key
        # file stops the bridge at start with a clear error.
        self.keys = configmod.KeyRing(cfg)
        self.topics = Topics(self.site)
        self.store = None
        self.piles = {}
        self.tariffs = {}            # scope -> tariff; "site" or a pile code
        self.outbox = None
        self.mqtt = None
        self.ocpp = None             # host/ocpp_uplink.OcppUplink when ocpp.csms_url is set
        self.conns = set()
        self._unauth = {}             # remote address -> TCP connections without a login
        self._servers = []
        self._tasks = []
        self._bg = set()
        self._recent = {}            # (pile, id) -> future of the result doc
        self._results = []           # results waiting for the broker
        self._results_wake = asyncio.Event()
        self._serial_counter = random.randrange(10000)
        self.started_at = time.time()
        self.tcp_port = None
        self.status_port = None
        self.status_server = None
        self.recent_events = collections.deque(maxlen=50)   # the status page's "last errors"
        self.ocmf_announced = {}     # pile code -> the OCMF key (point) its last 0xD9 announced
        self.stats = {"bills_new": 0, "bills_resent": 0, "bills_conflict": 0, "bills_illegal": 0,
                      "bills_unreconciled": 0,
                      "bills_quarantined": 0, "bills_undecodable": 0, "bills_bad_mac": 0,
                      "confirms": 0, "confirms_duplicate": 0, "confirms_unknown": 0,
                      "confirms_refused": 0, "confirms_malformed": 0, "tcp_refused": 0,
                      "tcp_no_login": 0,
                      "commands": 0, "commands_refused": 0, "settled": 0}

    # --- life cycle -----------------------------------------------------------------

    async def start(self):
        self.store = Store(self.cfg["database"])
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.bind_site, self.site)
        except StoreError:
            self.store.close()
            raise
        # Tariffs: the config is the base, what the platform pushed since wins.
        if self.cfg["tariff"]:
            self.tariffs[SITE_TARGET] = self.cfg["tariff"]
        for code, p in self.cfg["pile"].items():
            if p.get("tariff"):
                self.tariffs[code] = p["tariff"]
        for scope, text in (await self.store.tariffs()).items():
            self.tariffs[scope] = json.loads(text)
        # A bill is settled on its pile once every configured uplink has
        # acknowledged it (decisions.md "Uplinks").
        use_mqtt = bool(self.cfg["mqtt"]["enabled"])
        use_ocpp = self.cfg["ocpp"]["csms_url"] is not None
        self.store.need = tuple(n for n, on in (("mqtt", use_mqtt), ("ocpp", use_ocpp)) if on)
        self.outbox = Outbox(self)
        will = (self.topics.bridge, json.dumps(self._bridge_status(False, "connection lost")))
        if use_mqtt:
            self.mqtt = MqttLink(self.cfg, will, [self.topics.commands, self.topics.confirms],
                                 self.on_mqtt_message, self._on_mqtt_connected)
        else:
            self.mqtt = NoMqtt()
        self._tasks.append(asyncio.ensure_future(self.mqtt.run()))
        self._tasks.append(asyncio.ensure_future(self._flush_results()))
        self._tasks.append(asyncio.ensure_future(self._settle_sweeper()))
        self._tasks.append(asyncio.ensure_future(self._overdue_sweeper()))
        self.outbox.start()
        # Bills left unconfirmed by an earlier run go out again.
        for code in await self.store.piles_with_open_bills():
            self.outbox.kick(code)
        if use_ocpp:
            from host.ocpp_uplink import OcppUplink
            self.ocpp = OcppUplink(self)
            await self.ocpp.start()
        listen = self.cfg["tcp"]["listen"]
        if listen:
            host, port = configmod.parse_hostport(listen)
            srv = await asyncio.start_server(self._on_tcp, host, port)
            self.tcp_port = srv.sockets[0].getsockname()[1]
            self._servers.append(srv)
            log.info("listening for YKC piles on %s:%d", host, self.tcp_port)
        for s in self.cfg["serial"]:
            self._tasks.append(asyncio.ensure_future(self._serial_port(s)))
        if self.cfg["status"]["listen"]:
            from host.status import StatusServer
            self.status_server = StatusServer(self)
            self.status_port = await self.status_server.start()
        log.info("bridge for site %s started (db %s)", self.site, self.cfg["database"])

    async def stop(self):
        if self.status_server is not None:
            await self.status_server.stop()
        for srv in self._servers:
            srv.close()
        for c in list(self.conns):
            await c.shutdown("bridge stopping")
        last = [(self.topics.status(p.code), json.dumps(p.status_json(self.site)), True)
                for p in self.piles.values()]
        last.append((self.topics.bridge, json.dumps(self._bridge_status(False, "shutdown")), True))
        if self.mqtt:
            await self.mqtt.stop(last)
        if self._bg:
            await asyncio.wait(list(self._bg), timeout=5)
        if self.ocpp:
            await self.ocpp.stop()
        if self.outbox:
            await self.outbox.stop()
        await stop_tasks(self._tasks)    # never hangs on a broker that does not close
        if self.store:
            self.store.close()
        log.info("bridge stopped")

    def _bridge_status(self, online, reason=None):
        return {"schema": "pc.bridge/1", "site": self.site, "online": online, "reason": reason,
                "version": VERSION, "started_at": schema.utc_iso(self.started_at),
                "ts": schema.utc_iso()}

    async def _on_mqtt_connected(self):
        await self.mqtt.publish(self.topics.bridge, json.dumps(self._bridge_status(True)),
                                qos=1, retain=True)
        for p in list(self.piles.values()):
            await self.mqtt.publish(self.topics.status(p.code), json.dumps(p.status_json(self.site)),
                                    qos=1, retain=True)
        self.outbox.kick_all()
        self._results_wake.set()

    # --- links ----------------------------------------------------------------------

    async def _on_tcp(self, reader, writer):
        tc = self.cfg["tcp"]
        peer = writer.get_extra_info("peername")
        addr = peer[0] if peer else "?"
        total = sum(self._unauth.values())
        if total >= tc["max_unauthenticated"] or self._unauth.get(addr, 0) >= tc["max_per_address"]:
            # One line, no traceback, and the socket closed at once: a flood
            # of connections that never log in cannot exhaust the bridge's
            # file descriptors and lock real piles out.
            self.stats["tcp_refused"] += 1
            log.warning("tcp %s refused: %s connections without a login (cap %d)", addr,
                        "%d from it" % self._unauth.get(addr, 0)
                        if self._unauth.get(addr, 0) >= tc["max_per_address"] else "%d in all" % total,
                        tc["max_per_address"] if self._unauth.get(addr, 0) >= tc["max_per_address"]
                        else tc["max_unauthenticated"])
            writer.transport.abort()
            return
        link = StreamLink(reader, writer)
        log.info("%s: connected", link.name)
        conn = PileConn(self, link, link_ext=tc["ext"], close_on_silence=True)
        conn.unauth_addr = addr
        self._unauth[addr] = self._unauth.get(addr, 0) + 1
        self.conns.add(conn)
        conn.spawn(self._login_deadline(conn, tc["login_s"]))
        try:
            await conn.run()
        except asyncio.CancelledError:
            # Shutdown: end quietly (asyncio's stream server would otherwise
            # log the cancelled handler as an error on Python 3.11).
            await conn.shutdown("bridge stopping")
        finally:
            self._authenticated(conn)
            self.conns.discard(conn)

    def _authenticated(self, conn):
        # The connection logged in (or ended): it no longer counts against
        # the limits on connections without a login.
        addr = conn.unauth_addr
        if addr is not None:
            conn.unauth_addr = None
            n = self._unauth.get(addr, 0) - 1
            if n > 0:
                self._unauth[addr] = n
            else:
                self._unauth.pop(addr, None)

    async def _login_deadline(self, conn, limit):
        # Any byte keeps a link's watchdog happy; only a login keeps it open.
        await asyncio.sleep(limit)
        if conn.pile is None and not conn.closed and conn.unauth_addr is not None:
            self.stats["tcp_no_login"] += 1
            log.warning("%s: no login within %g s: closed", conn.link.name, limit)
            await conn.link.close()

    async def _serial_port(self, s):
        delay = 0.5
        while True:
            try:
                link = await SerialLink.open(s["url"], s["baudrate"])
            except Exception as e:
                log.warning("serial %s: cannot open: %s; retry in %.1f s", s["url"], e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            delay = 0.5
            log.info("%s: open", link.name)
            conn = PileConn(self, link, link_ext=s["ext"], close_on_silence=False)
            self.conns.add(conn)
            try:
                await conn.run()
            finally:
                self.conns.discard(conn)
            log.info("%s: closed; reopening", link.name)
            await asyncio.sleep(delay)

    # --- piles ----------------------------------------------------------------------

    def pile_ext(self, code, link_ext=None):
        p = self.piles.get(code)
        if p is not None and link_ext is None:
            return p.ext
        return self.cfg.pile_ext(code, link_ext)

    def pile(self, code):
        p = self.piles.get(code)
        if p is None:
            p = self.piles[code] = Pile(code, self.cfg.pile_ext(code))
        return p

    def attach(self, conn, code, login_fields):
        p = self.pile(code)
        p.ext = self.cfg.pile_ext(code, conn.link_ext)
        old = p.conn
        if old is not None and old is not conn:
            log.warning("pile %s logged in on %s while still on %s: dropping the old link",
                        code, conn.link.name, old.link.name)
            old.pile = None
            asyncio.ensure_future(old.shutdown("replaced by a new login"))
        conn.pile = p
        self._authenticated(conn)
        p.conn = conn
        p.login = dict(login_fields)
        p.online_since = time.time()
        p.last_seen = time.time()
        p.logins += 1
        log.info("pile %s logged in on %s (ext %s, sw %s)", code, conn.link.name, p.ext,
                 login_fields.get("sw_version"))
        p.flagged = set()
        self.check_versions(p)
        self.publish_status(p)
        if self.ocpp is not None:
            self.ocpp.on_pile_seen(p)
        # Wake whoever waits for this pile to log in (a firmware push).
        ev, p.login_event = p.login_event, asyncio.Event()
        ev.set()
        self.outbox.kick(code)
        return p

    def detach(self, conn, reason):
        p = conn.pile
        if p is None or p.conn is not conn:
            return
        p.conn = None
        p.offline_reason = reason
        log.info("pile %s offline: %s", p.code, reason)
        self.publish_status(p)
        if self.ocpp is not None:
            self.ocpp.on_pile_seen(p)

    def check_versions(self, pile):
        """Minimum versions (config `versions`): flag the pile in its status
        and raise one `version_below_minimum` event per outdated part and login."""
        pile.required = self.cfg.min_versions(pile.code, pile.login)
        for part in pile.outdated():
            if part in pile.flagged:
                continue
            pile.flagged.add(part)
            have = pile.board_version() if part == "board" \
                else (pile.status_reply or {}).get("hmi_version")
            model = self.cfg.model(pile.code, pile.login)
            self.event(pile.code, "version_below_minimum",
                       "pile %s runs %s firmware %r, below the minimum %s for model %s: it must "
                       "be upgraded" % (pile.code, part, have, pile.required[part], model or "*"),
                       part=part, version=have, minimum=pile.required[part], model=model)

    def publish_status(self, pile):
        self._publish_soon(self.topics.status(pile.code), pile.status_json(self.site), retain=True)

    def _publish_soon(self, topic, doc, qos=1, retain=False):
        # Status and realtime are not durable: sent when connected, else
        # dropped (status is re-sent on every reconnect).
        if not self.mqtt.connected.is_set():
            return
        payload = json.dumps(doc, separators=(",", ":"))

        async def go():
            try:
                await self.mqtt.publish(topic, payload, qos=qos, retain=retain)
            except NotConnected:
                pass
        asyncio.ensure_future(go())

    def event(self, pile, kind, message, **details):
        """A durable event: stored, then published on pc/<site>/events/<pile>."""
        doc = schema.event_json(self.site, pile, kind, message, **details)
        doc["event_id"] = "%s-%d-%06d" % (self.site, int(time.time() * 1000), random.randrange(10**6))
        log.info("event %s pile %s: %s", kind, pile, message)
        if kind == "start_request" and self.ocpp is not None:
            self.ocpp.on_start_request(pile, details["request"])   # the CSMS authorises (0x32)
        self.recent_events.appendleft({"ts": doc.get("ts"), "pile": pile, "type": kind,
                                       "message": message})

        async def go():
            try:
                await self.store.add_event(pile, json.dumps(doc, separators=(",", ":")))
            except Exception:
                log.exception("storing event %s", kind)
                return
            self.outbox.kick_events()
        asyncio.ensure_future(go())

    def tariff_for(self, code):
        return self.tariffs.get(code) or self.tariffs.get(SITE_TARGET)

    # --- sessions and overdue bills (issue 12 item 4) -------------------------------

    def session_started(self, pile, gun, serial):
        s = pile.sessions.get(gun)
        if s is None or s[0] != serial:
            pile.sessions[gun] = [serial, None, False]

    def session_ended(self, pile, gun):
        s = pile.sessions.get(gun)
        if s is not None and s[1] is None:
            s[1] = time.monotonic()

    def session_stopped(self, pile, gun):
        """0x35 result 1: the pile stopped the gun's session. Its status stops
        saying charging now (the next 0x13 confirms), and its bill is due."""
        self.session_ended(pile, gun)
        g = pile.guns.get(gun)
        if g is not None and g.get("status") == "charging":
            g.update(status="idle", serial=None)
            self.publish_status(pile)

    def bill_seen(self, pile, serial):
        for gun, s in list(pile.sessions.items()):
            if s[0] == serial:
                del pile.sessions[gun]

    async def _overdue_sweeper(self):
        # YKC: a pile sends its bill within 30 s of a session's end. A session
        # the bridge saw end (0x35 result 1, or its gun leaving "charging")
        # with no bill after bills.overdue_s is reported once, by serial.
        limit = self.cfg["bills"]["overdue_s"]
        while True:
            await asyncio.sleep(max(0.05, min(5.0, limit / 4)))
            now = time.monotonic()
            for p in list(self.piles.values()):
                for gun, s in list(p.sessions.items()):
                    if s[1] is not None and not s[2] and now - s[1] >= limit:
                        s[2] = True
                        self.event(p.code, "bill_overdue", "no bill for %s (gun %s) %d s after the "
                                   "session ended" % (s[0], gun, now - s[1]), serial=s[0], gun=gun,
                                   overdue_s=limit)

    def on_realtime(self, pile, f):
        v = f.fields
        gun = v["gun"]
        if v["status"] == 3:
            self.session_started(pile, gun, v["serial"])
        else:
            self.session_ended(pile, gun)
        g = pile.guns.setdefault(gun, {})
        new = {"status": schema.GUN_STATUS.get(v["status"], "unknown"), "plugged": bool(v["plugged"]),
               "serial": v["serial"] if v["status"] == 3 else None}
        changed = any(g.get(k) != new[k] for k in new)
        g.update(new)
        # Live figures for the status page (pile.live, not in the retained
        # status: they change every report): power from 0.1 V x 0.1 A, the session's
        # energy and amount at the protocol's scales as decimal strings.
        charging = v["status"] == 3
        pile.live[gun] = {"power_w": v["voltage"] * v["current"] // 100 if charging else 0,
                          "energy_kwh": schema.dec(v["energy"], 4) if charging else None,
                          "amount_yuan": schema.dec(v["amount"], 4) if charging else None}
        old_faults = pile.faults.get(gun, 0)
        if v["faults"] != old_faults:
            pile.faults[gun] = v["faults"]
            if v["faults"]:
                self.event(pile.code, "fault", "gun %s reports fault bits 0x%04X" % (gun, v["faults"]),
                           gun=gun, faults=v["faults"])
            else:
                self.event(pile.code, "fault_cleared", "gun %s faults cleared" % gun, gun=gun)
        self._publish_soon(self.topics.realtime(pile.code), schema.realtime_json(self.site, f), qos=0)
        if self.ocpp is not None:
            self.ocpp.on_realtime(pile, v)
        if changed:
            self.publish_status(pile)

    def on_status_reply(self, pile, f):
        def _journal_full(s):
            # No refusing_starts (status_reply55, firmware from before it):
            # unknown, so only a journal at its limit counts as full.
            return bool(s.get("refusing_starts")) or bool(
                s.get("journal_limit") and s.get("journal_used", 0) >= s["journal_limit"])

        v = f.fields
        old = pile.status_reply or {}
        pile.status_reply = dict(v)
        pile.status_at = time.time()
        # The pile refuses starts well below journal_limit (it keeps room for
        # open sessions' bills): its refusing_starts flag says when. A journal
        # at its limit refuses too. Raised when it becomes full, once.
        if _journal_full(v) and not (old and _journal_full(old)):
            self.event(pile.code, "journal_full",
                       "journal full of unconfirmed bills (%d pending, %d illegal, %d of %d "
                       "bytes): the pile refuses new starts until bills are confirmed"
                       % (v["pending"], v["illegal"], v["journal_used"], v["journal_limit"]),
                       journal_used=v["journal_used"], journal_limit=v["journal_limit"],
                       pending=v["pending"], illegal=v["illegal"])
        if v["illegal"] > old.get("illegal", 0) and old:
            self.event(pile.code, "illegal_bill", "pile holds %d bill(s) refused as illegal"
                       % v["illegal"], source="pile", illegal=v["illegal"])
        self.publish_status(pile)

    # --- bills ----------------------------------------------------------------------

    async def on_bill(self, conn, f):
        pile = conn.pile
        v = f.fields
        if v["pile"] != pile.code:
            # Not this link's pile: kept in quarantine, no 0x40 (on_raw_bill).
            await self.on_raw_bill(conn, f, None)
            return
        serial = v["serial"]
        frame = self._raw(f)
        if conn.authenticated:
            # A keyed pile: its bill is committed raw at once, but the 0x40
            # waits for the fee split (0xEB, sent right after it) whose MAC
            # must check (docs/security.md "Bill MAC at the bridge").
            await self._hold(conn, pile, f, serial, frame, None)
            return
        # Submitted now, awaited in a task: the store keeps the link's order,
        # and a pile that sends several bills back to back gets them committed
        # together (one fsync) instead of one after another.
        fut = self.store.add_bill(pile.code, serial, frame, f.crc_swapped)
        self._spawn(self._bill_stored(conn, pile, f, serial, frame, fut))

    async def on_raw_bill(self, conn, f, err):
        """A bill frame with a good CRC that the decoded path cannot take:
        one we cannot read (err: the decoder's error, f.fields None), or one
        from a link with no login or naming another pile. Raw bytes first,
        whatever happens next: a bill of the link's own pile is taken into
        custody like any other (stored, 0x40, published with decoded false);
        any other copy is kept in quarantine with its reason, an event, and
        no 0x40 (the true pile resends it after its login)."""
        raw = self._raw(f)
        body = f.body
        serial = F.hex_decode(body, 0, 16, "serial") if len(body) >= 16 else None
        code = F.hex_decode(body, 16, 7, "pile") if len(body) >= 23 else None
        pile = conn.pile
        error = str(err) if err is not None else None
        if pile is None or code != pile.code or serial is None:
            if pile is None:
                reason = "bill on a link with no login (%s)" % conn.link.name
            elif serial is None:
                reason = "a %d-byte bill body names no trade serial" % len(body)
            else:
                reason = "bill names pile %s but came from pile %s" % (code, pile.code)
            self.stats["bills_quarantined"] += 1
            await self.store.add_rejected(code or (pile.code if pile else None), serial, "quarantine",
                                          raw, reason)
            log.warning("%s: bill %s quarantined: %s", conn.link.name, serial, reason)
            self.event(code or (pile.code if pile else "unknown"), "bill_quarantined", reason,
                       serial=serial, link=conn.link.name, decoded=f.fields is not None,
                       error=error, frame=schema.hexs(raw))
            return
        self.stats["bills_undecodable"] += 1
        log.warning("pile %s: bill %s does not decode (%s): kept raw", pile.code, serial, error)
        if conn.authenticated:
            await self._hold(conn, pile, f, serial, raw, error)   # its MAC first, as on_bill
            return
        fut = self.store.add_bill(pile.code, serial, raw, f.crc_swapped)
        self._spawn(self._bill_stored(conn, pile, f, serial, raw, fut, error))

    async def _bill_stored(self, conn, pile, f, serial, frame, fut, error=None):
        v = f.fields
        try:
            kind, bill = await fut
        except Exception as e:
            # Not committed: no 0x40, the pile keeps the bill and sends it again.
            log.error("pile %s: bill %s NOT stored (%s); no 0x40 sent", pile.code, serial, e)
            return
        # Custody has passed: committed before the 0x40 goes out.
        try:
            if v is not None and serial.isdigit():
                await conn.send("bill_confirm", {"serial": serial, "result": 0}, codec.reply_seq(f))
            else:
                # The serial's 16 bytes as the pile sent them (they may not be BCD).
                await conn.send_raw(0x40, f.body[:16] + b"\x00", codec.reply_seq(f))
        except LinkClosed as e:
            log.info("pile %s: 0x40 for %s not sent (%s); the pile will resend", pile.code, serial, e)
        self.bill_seen(pile, serial)
        if kind == "new":
            self.stats["bills_new"] += 1
            log.info("pile %s: bill %s stored (#%d) and confirmed", pile.code, serial, bill.pile_seq)
            if v is None:
                self.event(pile.code, "undecodable_bill", "bill %s kept raw: it does not decode (%s)"
                           % (serial, error), serial=serial, error=error, frame=schema.hexs(frame))
            else:
                problems = bill_problems(f.problems, v)
                if problems:
                    # Not "illegal_bill": YKC keeps that word for a bill refused
                    # with 0x40 result 1; this one is taken and delivered.
                    self.stats["bills_unreconciled"] += 1
                    self.event(pile.code, "unreconciled_bill", "bill %s does not reconcile: %s"
                               % (serial, "; ".join(problems)), serial=serial, refused=False,
                               problems=problems, pile_kind=schema.pile_kind(pile.ext))
            self.outbox.kick(pile.code)
            if self.ocpp is not None:
                try:
                    await self.ocpp.on_bill(pile.code, bill)
                except Exception:
                    # Queued at the next start (OcppUplink.start's sweep).
                    log.exception("pile %s: bill %s not queued for the CSMS yet", pile.code, serial)
        elif kind == "same":
            self.stats["bills_resent"] += 1
            log.info("pile %s: bill %s already held (resend %d): 0x40 again", pile.code, serial,
                     bill.resends)
            # Already settled by the platform: tell the pile again (it resends
            # a bill it has no settlement for, e.g. after losing its record).
            if self.store.acked_all(bill) and pile.ext and pile.conn is conn:
                conn.spawn(self._settle(pile, bill.serial, bill.confirm_result or 0))
        else:
            self.stats["bills_conflict"] += 1
            log.warning("pile %s: bill %s sent again with different bytes: first copy kept",
                        pile.code, serial)
            self.event(pile.code, "serial_conflict",
                       "bill %s received again with different content; the first copy is kept "
                       "and the new one stored for audit" % serial, serial=serial,
                       kept_frame=schema.hexs(bill.frame), new_frame=schema.hexs(frame))

    def _spawn(self, coro):
        # Bridge-level tasks: they outlive a link (a bill committed just as
        # its link drops must still reach the outbox).
        t = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)
        return t

    def _raw(self, f):
        # The frame exactly as the pile would have framed it (seq and CRC
        # included): rebuilt from its parts, byte-identical for a good CRC.
        raw = codec.wrap(f.code, f.body, f.seq, f.enc)
        if f.crc_swapped:
            raw = raw[:-2] + bytes((raw[-1], raw[-2]))
        return raw

    async def _hold(self, conn, pile, f, serial, frame, error):
        held = conn.held[serial] = (f, error)
        await self.store.hold_bill(pile.code, serial, frame)
        self._spawn(self._mac_deadline(conn, pile, serial, held))

    async def _mac_deadline(self, conn, pile, serial, held):
        await asyncio.sleep(self.cfg["bills"]["mac_wait_s"])
        if conn.held.get(serial) is held:
            del conn.held[serial]
            await self._bad_mac(conn, pile, serial, None, "no fee split (0xEB) with the bill's MAC "
                                "within %g s" % self.cfg["bills"]["mac_wait_s"])

    async def _bad_mac(self, conn, pile, serial, extra_raw, reason):
        # Not the pile's bill as it left the pile (or no proof that it is):
        # quarantined with its fee split, no 0x40, no 0xEC; the pile keeps
        # its bill and sends it again.
        self.stats["bills_bad_mac"] += 1
        self.stats["bills_quarantined"] += 1
        await self.store.quarantine_held(pile.code, serial, reason, extra_raw)
        log.warning("pile %s: bill %s quarantined: %s", pile.code, serial, reason)
        self.event(pile.code, "bill_quarantined", "bill %s: %s" % (serial, reason), serial=serial,
                   link=conn.link.name, reason="bad_mac", decoded=True, error=None)

    async def _check_mac(self, conn, pile, f, raw):
        """A keyed pile's fee split: the MAC it carries against the bill held
        for it (or, for a lone 0xEB, the bill already in custody). True: go
        on as for any fee split (a held bill is released into custody first,
        then its 0x40 goes out)."""
        serial = f.fields["serial"]
        key = self.keys.cmd_key(pile.code)
        held, error = conn.held.pop(serial, (None, None))
        if held is not None:
            if key is None or not sign.verify_bill_mac(key, held.body, f.fields["mac"]):
                await self._bad_mac(conn, pile, serial, raw, "the bill's MAC does not match: it "
                                    "changed on the way or is not this pile's")
                return False
            frame = self._raw(held)
            fut = self.store.release_held(pile.code, serial, frame, held.crc_swapped)
            self._spawn(self._bill_stored(conn, pile, held, serial, frame, fut, error))
            return True
        bill = await self.store.bill(serial)
        if bill is not None and key is not None and \
                sign.verify_bill_mac(key, bill.frame[6:-2], f.fields["mac"]):
            return True
        reason = ("a fee split whose MAC does not match bill %s" % serial) if bill is not None \
            else "a fee split with no bill to check its MAC against"
        self.stats["bills_quarantined"] += 1
        await self.store.add_rejected(pile.code, serial, "extra_quarantine", raw, reason)
        log.warning("pile %s: fee split %s quarantined: %s", pile.code, serial, reason)
        self.event(pile.code, "bill_quarantined", reason, serial=serial, link=conn.link.name,
                   reason="bad_mac", frame_type="bill_extra", decoded=True, error=None,
                   frame=schema.hexs(raw))
        return False

    async def on_bill_extra(self, conn, f):
        pile = conn.pile
        raw = self._raw(f)
        if conn.authenticated and not await self._check_mac(conn, pile, f, raw):
            return
        fut = self.store.add_extra(f.fields["serial"], raw, pile=pile.code)
        self._spawn(self._extra_stored(conn, pile, f, raw, fut))

    async def _completion(self, conn, pile, serial, fut, what, frame_type, raw):
        # A bill's 0xEB / 0xDB as stored: (kind, bill), kind None if not stored (resent) or foreign.
        try:
            kind, bill = await fut
        except Exception as e:
            log.error("pile %s: %s of %s NOT stored (%s)", pile.code, what, serial, e)
            return None, None
        if kind == "foreign":   # kept by the store in quarantine, never joined to the bill
            self.stats["bills_quarantined"] += 1
            self.event(pile.code, "bill_quarantined", "%s for bill %s, which is not pile %s's: "
                       "quarantined" % (what, serial, pile.code), serial=serial, link=conn.link.name,
                       frame_type=frame_type, decoded=True, error=None, frame=schema.hexs(raw))
            return None, None
        if kind == "conflict":
            self.event(pile.code, "serial_conflict", "%s of %s received again with different content; "
                       "the first copy is kept" % (what, serial), serial=serial, frame_type=frame_type)
        return kind, bill

    async def _extra_stored(self, conn, pile, f, raw, fut):
        serial = f.fields["serial"]
        kind, bill = await self._completion(conn, pile, serial, fut, "fee split (0xEB)", "bill_extra", raw)
        if kind is not None and C.has_frame("bill_extra_ack"):   # None: no answer, nothing joined
            try:
                await conn.send("bill_extra_ack", {"serial": serial, "result": 0}, codec.reply_seq(f))
            except LinkClosed:
                pass
        if kind == "new" and bill is not None:
            if bill.confirmed_at is not None:
                # The platform already took the bill without it: say so.
                self.event(pile.code, "bill_extra_late",
                           "fee split for bill %s arrived after the platform confirmed the bill"
                           % serial, serial=serial,
                           extra=schema.scaled_fields("bill_extra", f.fields),
                           raw=dict(f.fields), frame=schema.hexs(raw))
            elif bill.published_at is not None:
                # Out without it (it came after extra_wait_s): publish the
                # completed bill again now; same serial, "complete": true.
                self.outbox.kick(pile.code, republish=bill.id)
            else:
                self.outbox.kick(pile.code)

    # --- OCMF signatures (docs/ocmf.md; host/ocmf_check.py) ----------------------------

    def ocmf_key(self, code):
        """The pile's registered OCMF key (pile.<code>.ocmf_key), a 65-byte point, or None."""
        return self.cfg["pile"].get(code, {}).get("ocmf_key")

    on_pile_key = ocmf_check.on_pile_key
    on_bill_sig = ocmf_check.on_bill_sig

    def on_confirm(self, pile_code, payload):
        try:
            doc = json.loads(payload)
            if isinstance(doc, dict) and "bills" in doc:
                items = [(b["serial"], b.get("result", doc.get("result", 0)), b.get("hash"))
                         for b in doc["bills"]]
            elif isinstance(doc, dict):
                items = [(doc["serial"], doc.get("result", 0), doc.get("hash"))]
            else:
                raise ValueError("not an object")
            pkey = self.keys.platform_key()
            if pkey is not None and not C.auth_ok(pkey, self.site, pile_code, doc):
                # Only the platform holds the key: anyone else who can publish
                # here (and read the bill's content hash) confirms nothing.
                self.stats["confirms_refused"] += 1
                why = "no `auth`" if "auth" not in doc else "an `auth` that does not match"
                log.warning("confirmation for pile %s ignored: %s", pile_code, why)
                self.event(pile_code, "confirm_refused", "a confirmation for pile %s was ignored: "
                           "it carries %s (the bills stay unconfirmed and are published again)"
                           % (pile_code, why), reason="unauthenticated",
                           serials=[i[0] for i in items if isinstance(i[0], str)][:64])
                return
            for s, r, h in items:
                if not isinstance(s, str) or not isinstance(r, int) or isinstance(r, bool):
                    raise ValueError("serial must be a string, result an int")
            fence = doc.get("fence")
            if fence is not None and (type(fence) is not int or fence < 1):
                raise ValueError("fence must be a positive integer")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("confirmation for pile %s ignored: %s (%r)", pile_code, e, payload[:200])
            self.stats["confirms_malformed"] += 1
            return
        asyncio.ensure_future(self._confirm_fenced(pile_code, fence, items))

    async def _confirm_fenced(self, pile_code, fence, items):
        # A fencing token below the highest seen: a platform worker that lost the site.
        ok, highest = await fence_check(self.store, fence)
        if not ok:
            if highest is not None:
                self.stats["confirms_refused"] += 1
                self.event(pile_code, "confirm_refused", "a confirmation for pile %s was ignored: "
                           "fencing token %s, %d seen before (a platform worker without the "
                           "site's lease)" % (pile_code, fence, highest), reason="stale_fence",
                           fence=fence, highest=highest, serials=[i[0] for i in items][:64])
            return
        for serial, result, h in items:
            asyncio.ensure_future(self._confirm(pile_code, serial, result, h))

    async def _confirm(self, pile_code, serial, result, content_hash=None):
        # Honoured only if it names the exact bill held (its content hash):
        # a confirmation by serial alone could come from anyone who can
        # publish on the topic, for a bill the platform never received.
        held = await self.store.bill(serial)
        if held is not None and content_hash != schema.bill_hash(held.frame):
            self.stats["confirms_refused"] += 1
            why = "names no content hash" if content_hash is None else "names another content hash"
            log.warning("confirmation of bill %s (pile %s) ignored: it %s", serial, held.pile, why)
            self.event(held.pile, "confirm_refused", "a confirmation of bill %s was ignored: it %s "
                       "(the bill stays unconfirmed and is published again)" % (serial, why),
                       serial=serial, hash=content_hash if isinstance(content_hash, str) else None)
            return
        bill, new = await self.store.confirm(serial, result)
        if bill is None:
            self.stats["confirms_unknown"] += 1
            log.warning("confirmation of unknown bill %s (pile %s): ignored", serial, pile_code)
            return
        if not new:
            self.stats["confirms_duplicate"] += 1
            log.info("bill %s confirmed again (duplicate confirmation): ignored", serial)
            return
        self.stats["confirms"] += 1
        log.info("pile %s: bill %s confirmed by the platform (result %d)", bill.pile, serial, result)
        self.outbox.kick(bill.pile)
        await self._settle_when_acked(bill)

    async def uplink_acked(self, serial):
        """The CSMS answered a bill's Ended event (recorded in the store)."""
        bill = await self.store.bill(serial)
        if bill is not None:
            await self._settle_when_acked(bill)

    async def _settle_when_acked(self, bill):
        # Settled (0xE4) only once every configured uplink has acknowledged
        # the bill: the MQTT platform and the CSMS, each recorded in the store.
        if not self.store.acked_all(bill) or bill.settled_at is not None:
            return
        pile = self.piles.get(bill.pile)
        ext = pile.ext if pile is not None else self.cfg.pile_ext(bill.pile)
        if not ext:
            await self.store.mark_settled(bill.serial)   # third-party pile: no 0xE4
            return
        if pile is not None and pile.conn is not None:
            pile.conn.spawn(self._settle(pile, bill.serial, bill.confirm_result or 0))

    # --- the CSMS's commands (host/ocpp_uplink.py) -------------------------------------

    def power_cap_w(self, code):
        """The cap pushed to pile `code` (0xDE, after each login and on every
        charging profile change), W: the lower of pile.<code>.power_cap_kw and
        the CSMS's charging profiles; None: neither sets one."""
        kw = self.cfg["pile"].get(code, {}).get("power_cap_kw")
        caps = [int(round(kw * 1000))] if kw is not None else []
        w = self.ocpp.cap_w(code) if self.ocpp is not None else None
        if w is not None:
            caps.append(w)
        return min(caps) if caps else None

    def gun_cap_w(self, code, gun):
        """The cap on gun `gun` (int) of pile `code` (0xDC), W: the CSMS's
        charging profiles on that EVSE of a pile with several guns; None: none."""
        return self.ocpp.gun_cap_w(code, gun) if self.ocpp is not None else None

    async def ocpp_start(self, code, evse, id_token):
        """RequestStartTransaction / RemoteStartTransaction: 0x34 (or 0xE2)
        on gun `evse`. Returns (accepted, trade serial)."""
        pile = self.piles.get(code)
        if pile is None or pile.conn is None:
            return False, None
        gun = "%02d" % int(evse)
        card = "".join(c for c in (id_token or "") if c in "0123456789abcdefABCDEF")[-16:].upper()
        # OCPP has no balance (the CSMS bills): no balance limit at the pile.
        from host.ocpp_control import START_BALANCE
        a = {"gun": gun, "serial": None, "logical_card": "0", "card": card.rjust(16, "0"),
             "balance": START_BALANCE, "targets": None}
        try:
            doc = await self._execute_on(pile, pile.conn, "ocpp-%d" % time.time_ns(), "start", a)
        except Exception as e:
            log.info("pile %s: CSMS start on gun %s failed: %s", code, gun, e)
            return False, None
        return bool(doc.get("ok")), doc.get("serial")

    async def ocpp_stop(self, code, serial):
        """RequestStopTransaction: 0x36 on the gun charging `serial`; an
        unknown or finished transaction is refused."""
        pile = self.piles.get(code)
        if pile is None or pile.conn is None:
            return False
        gun = None
        for g, s in pile.sessions.items():
            if s[0] == serial and s[1] is None:
                gun = g
        for g, info in pile.guns.items():
            if info.get("serial") == serial and info.get("status") == "charging":
                gun = g
        if gun is None:
            return False
        await self.store.ocpp_mark_remote_stop(serial)
        try:
            doc = await self._execute_on(pile, pile.conn, "ocpp-%d" % time.time_ns(), "stop",
                                         {"gun": gun})
        except Exception as e:
            log.info("pile %s: CSMS stop of %s failed: %s", code, serial, e)
            return False
        return bool(doc.get("ok"))

    async def ocpp_reset(self, code, now):
        pile = self.piles.get(code)
        if pile is None or pile.conn is None:
            return False
        try:
            doc = await self._execute_on(pile, pile.conn, "ocpp-%d" % time.time_ns(), "reboot",
                                         {"when": "now" if now else "idle"})
        except Exception:
            return False
        return bool(doc.get("ok"))

    async def _settle(self, pile, serial, result):
        conn = pile.conn
        if conn is None:
            return
        try:
            await conn.request("settled", {"serial": serial, "result": result})
        except (CommandTimeout, LinkClosed) as e:
            log.info("pile %s: settled %s not acknowledged yet: %s", pile.code, serial, e)

    async def on_settled_reply(self, pile, f):
        serial = f.fields["serial"]
        if await self.store.mark_settled(serial):
            self.stats["settled"] += 1
            log.info("pile %s: bill %s settled", pile.code, serial)

    def settle_backlog(self, pile):
        if pile.conn is None or not pile.ext:
            return

        async def go():
            for bill in await self.store.unsettled(pile.code):
                if pile.conn is None:
                    return
                await self._settle(pile, bill.serial, bill.confirm_result or 0)
        pile.conn.spawn(go())

    async def _settle_sweeper(self):
        # 0xE4 that the pile did not acknowledge is sent again now and then;
        # once an hour, settled bills past bills.keep_days are forgotten.
        next_prune = time.monotonic()
        while True:
            await asyncio.sleep(self.cfg["bills"]["settle_retry_s"])
            for p in list(self.piles.values()):
                self.settle_backlog(p)
            keep = self.cfg["bills"]["keep_days"]
            if keep and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + 3600
                try:
                    n = await self.store.prune(keep * 86400)
                except Exception:
                    log.exception("pruning old bills")
                else:
                    if n:
                        log.info("forgot %d bill(s) settled more than %g days ago", n, keep)

    # --- MQTT in ----------------------------------------------------------------------

    def on_mqtt_message(self, topic, payload):
        kind, target = self.topics.parse(topic)
        if kind == "confirm":
            self.on_confirm(target, payload)
        elif kind == "cmd":
            asyncio.ensure_future(self.on_command(target, payload))
        else:
            log.debug("message on %s ignored", topic)

    async def on_command(self, target, payload):
        self.stats["commands"] += 1
        req_id = cmd = None
        try:
            pkey = self.keys.platform_key()
            auth = None if pkey is None else (pkey, self.site, target,
                                              self.cfg["mqtt"]["command_max_life_s"])
            req_id, cmd, args = C.parse(payload, self.cfg["mqtt"]["max_command_bytes"], auth)
            key = (target, req_id)
            prev = self._recent.get(key)
            if prev is not None:
                doc = dict(await prev)
                doc["duplicate"] = True
                doc["message"] = "duplicate request id: not executed again. " + doc["message"]
                self._result(target, doc)
                return
            fut = asyncio.get_running_loop().create_future()
            self._recent[key] = fut
            if len(self._recent) > _RECENT_COMMANDS:
                self._recent.pop(next(iter(self._recent)))
            try:
                # Durable too: recorded before it runs, so a restart (or a
                # second bridge run) never executes the same id again.
                seen = await self.store.command_seen(target, req_id)
                if seen is not None:
                    if seen[0]:
                        doc = dict(json.loads(seen[0]))
                        doc["message"] = "duplicate request id: not executed again. " + doc["message"]
                    else:
                        doc = schema.result_json(self.site, target, req_id, cmd, False, "duplicate",
                                                 "duplicate request id: it was taken before the bridge "
                                                 "restarted and its result was lost; not executed again")
                    doc["duplicate"] = True
                else:
                    doc = await self._execute(target, req_id, cmd, args)
            except C.CommandError as e:
                doc = schema.result_json(self.site, target, req_id, cmd, False, e.code, e.message)
            except StoreError as e:
                doc = schema.result_json(self.site, target, req_id, cmd, False, "error",
                                         "not executed: the bridge cannot record the command (%s)" % e)
            except Exception as e:
                log.exception("command %s %s for %s", cmd, req_id, target)
                doc = schema.result_json(self.site, target, req_id, cmd, False, "error",
                                         "bridge error: %s" % e)
            fut.set_result(doc)
            if not doc.get("duplicate"):
                try:
                    await self.store.command_result(target, req_id, json.dumps(doc, separators=(",", ":")))
                except StoreError:
                    pass
        except C.CommandError as e:
            doc = schema.result_json(self.site, target, e.req_id, e.cmd, False, e.code, e.message)
            if e.code == "unauthenticated":
                self.stats["commands_refused"] += 1
                log.warning("command %s for %s refused: %s", e.req_id, target, e.message)
                self.event(target, "command_refused", "command %s (%s) refused: %s"
                           % (e.req_id, e.cmd, e.message), id=e.req_id, cmd=e.cmd, code=e.code)
        self._result(target, doc)

    def _result(self, target, doc):
        log.info("result %s %s for %s: %s %s", doc.get("cmd"), doc.get("id"), target, doc["code"],
                 doc["message"])
        self._results.append((target, json.dumps(doc, separators=(",", ":"))))
        if len(self._results) > _PENDING_RESULTS:
            self._results.pop(0)
        self._results_wake.set()

    async def _flush_results(self):
        while True:
            await self._results_wake.wait()
            self._results_wake.clear()
            while self._results:
                target, payload = self._results[0]
                try:
                    await self.mqtt.publish(self.topics.result(target), payload, qos=1)
                except NotConnected:
                    break
                self._results.pop(0)

    def _ok(self, target, req_id, cmd, message, reply=None, **extra):
        return schema.result_json(self.site, target, req_id, cmd, True, "ok", message, reply, **extra)

    def _fail(self, target, req_id, cmd, code, message, reply=None, **extra):
        return schema.result_json(self.site, target, req_id, cmd, False, code, message, reply, **extra)

    async def _execute(self, target, req_id, cmd, a):
        if target == SITE_TARGET:
            return await self._execute_site(req_id, cmd, a)
        if not (len(target) == 14 and target.isdigit()):
            raise C.CommandError("unknown_pile", "%r is not a pile code (14 digits) or \"site\"" % target)
        pile = self.piles.get(target)
        if pile is None and target not in self.cfg["pile"]:
            raise C.CommandError("unknown_pile", "pile %s has never logged in to this bridge and is "
                                 "not configured" % target)
        if pile is None:
            pile = self.pile(target)
        needs_online = C.SPEC[cmd][1]
        if "gun" in C.SPEC[cmd][0] and a.get("gun") is None:
            # No silent default: "01" only where it is the only gun.
            guns = (pile.login or {}).get("guns") or 1
            if guns > 1:
                raise C.CommandError("bad_request", "gun is required: pile %s has %d guns"
                                     % (target, guns))
            a = dict(a, gun="01")
        if cmd == "status":
            return self._ok(target, req_id, cmd, "pile status", pile.status_json(self.site))
        if cmd == "tariff_set":
            return await self._tariff_set(pile, req_id, a["tariff"])
        conn = pile.conn
        if needs_online and conn is None:
            raise C.CommandError("offline", "pile %s is offline (%s); command not sent"
                                 % (target, pile.offline_reason or "never logged in"))
        try:
            return await self._execute_on(pile, conn, req_id, cmd, a)
        except CommandTimeout as e:
            raise C.CommandError("timeout", str(e))
        except LinkClosed as e:
            raise C.CommandError("link_lost", str(e))
        except SignedReject as e:
            # The pile's 0xD1: a clear failure now, not a timeout later.
            return self._fail(target, req_id, cmd, "signed_reject", str(e), e.reply())
        except SignError as e:
            raise C.CommandError("bad_request", str(e))

    async def _execute_on(self, pile, conn, req_id, cmd, a):
        code = pile.code
        if cmd == "start":
            serial = a["serial"] or self._new_serial(code, a["gun"])
            name, values = C.start_frame(code, pile.ext, a, serial)
            r = (await conn.request(name, values)).fields
            reply = {"serial": r["serial"], "result": r["result"], "reason": r["reason"]}
            if r["result"] == 1:
                return self._ok(code, req_id, cmd, "started gun %s, trade serial %s (%s)"
                                % (a["gun"], serial, name), reply, serial=serial)
            why = schema.start_refusal(r["reason"])
            return self._fail(code, req_id, cmd, "refused", "pile refused the start: %s (reason %d)"
                              % (why, r["reason"]), reply, serial=serial)
        if cmd == "stop":
            r = (await conn.request("remote_stop", {"pile": code, "gun": a["gun"]})).fields
            reply = {"result": r["result"], "reason": r["reason"]}
            if r["result"] == 1:
                return self._ok(code, req_id, cmd, "gun %s stopping; its bill follows" % a["gun"], reply)
            why = {1: "unknown pile", 2: "gun not charging", 3: "other"}.get(r["reason"], "reason %d"
                                                                            % r["reason"])
            return self._fail(code, req_id, cmd, "refused", "pile did not stop gun %s: %s"
                              % (a["gun"], why), reply)
        if cmd == "reboot":
            r = (await conn.request("reboot", {"pile": code,
                                               "when": 1 if a["when"] == "now" else 2})).fields
            if r["result"] == 1:
                return self._ok(code, req_id, cmd, "reboot %s accepted" % a["when"], dict(r))
            return self._fail(code, req_id, cmd, "refused", "pile refused the reboot", dict(r))
        if cmd == "time_sync":
            now = schema.local_secs()
            r = (await conn.request("time_sync", {"pile": code, "time": now})).fields
            return self._ok(code, req_id, cmd, "pile clock set",
                            {"sent": F.iso(now), "pile_time": F.iso(r["time"])})
        if cmd in ("versions", "journal_status"):
            if not pile.ext:
                if cmd == "versions":
                    return self._ok(code, req_id, cmd, "from the login (third-party pile)",
                                    {"sw": (pile.login or {}).get("sw_version")})
                raise C.CommandError("unsupported", "journal status needs our firmware (ext: false)")
            await conn.request("status_query", {"pile": code})
            st = pile.status_json(self.site)
            if cmd == "versions":
                return self._ok(code, req_id, cmd, "versions", st["versions"])
            return self._ok(code, req_id, cmd, "journal status", dict(st["journal"] or {},
                            state=st["state"], boot_reason=st["boot_reason"]))
        if cmd == "read_realtime":
            r = await conn.request("read_realtime", {"pile": code, "gun": a["gun"]})
            return self._ok(code, req_id, cmd, "realtime data", schema.realtime_json(self.site, r))
        if cmd == "authorize":
            name, values, seq = C.auth_frame(pile, a)
            await conn.send(name, values, seq)   # 0x32 for a 0x31, 0xA2 for an 0xA1
            return self._ok(code, req_id, cmd, "authorization sent (%s)" % name)
        if cmd == "parallel_start":
            return await parallel.start(self, pile, conn, req_id, a)
        if cmd == "vin_list":
            if not pile.ext:
                raise C.CommandError("unsupported", "VIN lists need our firmware (ext: false)")
            replies = []
            for values in C.vin_list_frames(a["vins"], a["version"], conn.signs("vin_list")):
                r = (await conn.request("vin_list", values)).fields
                replies.append(dict(r))
                if r["result"] != 0:
                    return self._fail(code, req_id, cmd, "refused", "pile refused VIN list version "
                                      "%d (result %d)" % (a["version"], r["result"]),
                                      {"frames": replies})
            return self._ok(code, req_id, cmd, "VIN list version %d (%d VINs) sent in %d frame(s)"
                            % (a["version"], len(a["vins"]), len(replies)), {"frames": replies})
        if cmd == "upgrade":
            return await pushmod.run_command(self, pile, req_id, a)
        raise C.CommandError("unknown_command", "no handler for %s" % cmd)

    async def _tariff_set(self, pile, req_id, t):
        # Stored first, so 0x05/0x09 from the pile get it even if it is offline now.
        await self.store.set_tariff(pile.code, json.dumps(t))
        self.tariffs[pile.code] = t
        if pile.conn is None:
            return self._ok(pile.code, req_id, "tariff_set", "stored; the pile is offline and gets "
                            "model %s when it checks its tariff after login" % t["model"],
                            delivered=False)
        try:
            r = (await pile.conn.request("tariff_set", T.frame_values(t, pile.code))).fields
        except CommandTimeout as e:
            raise C.CommandError("timeout", "stored, but %s" % e)
        except LinkClosed as e:
            raise C.CommandError("link_lost", "stored, but %s" % e)
        except SignedReject as e:
            return self._fail(pile.code, req_id, "tariff_set", "signed_reject", "stored, but %s" % e,
                              e.reply(), delivered=False)
        if r["result"] == 1:
            return self._ok(pile.code, req_id, "tariff_set", "model %s set" % t["model"], dict(r),
                            delivered=True)
        return self._fail(pile.code, req_id, "tariff_set", "refused", "pile refused model %s"
                          % t["model"], dict(r), delivered=True)

    async def _execute_site(self, req_id, cmd, a):
        if cmd == "tariff_set":
            t = a["tariff"]
            await self.store.set_tariff(SITE_TARGET, json.dumps(t))
            self.tariffs[SITE_TARGET] = t
            sent = {}
            for p in list(self.piles.values()):
                if p.conn is None or p.code in self.tariffs:
                    continue
                try:
                    r = (await p.conn.request("tariff_set", T.frame_values(t, p.code))).fields
                    sent[p.code] = "ok" if r["result"] == 1 else "refused"
                except (CommandTimeout, LinkClosed, SignedReject) as e:
                    sent[p.code] = "failed: %s" % e
            return self._ok(SITE_TARGET, req_id, cmd, "site tariff model %s stored; pushed to %d "
                            "online pile(s)" % (t["model"], len(sent)), sent)
        if cmd == "status":
            counts = await self.store.counts()
            return self._ok(SITE_TARGET, req_id, cmd, "bridge status", {
                "piles": {c: p.online for c, p in self.piles.items()}, "store": counts,
                "stats": dict(self.stats), "mqtt": {"connects": self.mqtt.connects}})
        raise C.CommandError("bad_request", "%s needs a pile: publish on %s" % (cmd, self.topics.command("<pile>")))

    def _new_serial(self, code, gun):
        self._serial_counter = (self._serial_counter + 1) % 10000
        return C.new_serial(code, gun, self._serial_counter)


# --- entry point ------------------------------------------------------------------------

async def serve(cfg, ready=None):
    configmod.check_files(cfg)
    bridge = Bridge(cfg)
    await bridge.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if ready is not None:
        ready(bridge)
    try:
        await stop.wait()
    finally:
        await bridge.stop()


def migrate_site_main(argv):
    """pile-bridge migrate-site -c CONFIG --from OLD: the store now belongs to
    the config's site; its unconfirmed bills are published under it at the
    next start. Run with the bridge stopped (the store's lock says if not)."""
    import argparse
    p = argparse.ArgumentParser(prog="pile-bridge migrate-site",
                                description="Move a bridge's store to the site id in its config "
                                            "(after renaming a site).")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--from", dest="old", required=True, help="the site id the store belongs to now")
    cli.common(p, log_level=None)
    a = p.parse_args(argv)
    try:
        cfg = configmod.load(a.config)
        st = Store(cfg["database"])
    except (configmod.ConfigError, StoreError) as e:
        print("pile-bridge migrate-site: %s" % e, file=sys.stderr)
        return 2
    try:
        n = st.migrate_site(a.old, cfg["site"])
    except StoreError as e:
        print("pile-bridge migrate-site: %s" % e, file=sys.stderr)
        return 1
    finally:
        st.close()
    print("store %s: site %s -> %s; %d unconfirmed bill(s) will be published under %s"
          % (cfg["database"], a.old, cfg["site"], n, cfg["site"]))
    return 0


def _raise_nofile():
    # One descriptor per pile link, up to tcp.max_unauthenticated more for
    # connections that have not logged in yet, and a handful for the store,
    # the broker and serial ports (docs/bridge.md "Connection limits"): take
    # the hard limit, the soft default (often 1,024) is too low for a site.
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                        else max(soft, 65536), hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "push":
        # pile-bridge push -c site.toml --pile CODE --version V IMAGE (host/push.py)
        return pushmod.main(argv[1:])
    if argv and argv[0] == "migrate-site":
        return migrate_site_main(argv[1:])
    try:
        cfg, args = configmod.from_args(argv)
    except configmod.ConfigError as e:
        print("pile-bridge: %s" % e, file=sys.stderr)
        return 2
    if args.print_config:
        print(configmod.dump(cfg))
        return 0
    _raise_nofile()
    cli.setup_logging(level=cfg["log_level"], fmt=args.log_format)
    logging.getLogger("aiomqtt").setLevel(logging.WARNING)

    def ready(bridge):
        # One machine-readable line, so a supervisor (or a test) learns the port.
        # started_at names this run: its retained pc.bridge/1 status carries
        # the same value once it is connected and subscribed to commands.
        print(json.dumps({"ready": True, "site": bridge.site, "tcp_port": bridge.tcp_port,
                          "status_port": bridge.status_port,
                          "started_at": schema.utc_iso(bridge.started_at)}), flush=True)
    try:
        asyncio.run(serve(cfg, ready))
    except KeyboardInterrupt:
        pass
    except (configmod.ConfigError, StoreError) as e:   # a key file or the store unusable at start
        print("pile-bridge: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
