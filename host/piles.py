# The bridge plays the YKC platform towards each pile. A `PileConn` is one
# link session (a TCP connection, or a serial port while it is open): it
# reads frames, answers login / heartbeat / tariff / time, and matches
# replies to the requests the bridge sent. A `Pile` is the pile itself, kept
# across links (status, versions, the conn it is logged in on).
#
# Each conn is its own task with its own FrameReader: a pile that sends
# garbage, stalls or drops its link touches nobody else.
import asyncio
import os
import logging
import time

from protocol import codec
from protocol import extras
from protocol import frames
from protocol import sign
from protocol.errors import FrameError
from protocol.frames import BILL_CODES
from protocol.router import on, reply

from host import config as configmod
from host import parallel
from host import schema
from host import tariff as T
from host.fastcodec import FrameReader
from host.links import LinkClosed

log = logging.getLogger("host.piles")

NAMES = {}     # code -> frame name (a code's first layout: status_reply, not its older form)
for _code, _name, _spec in frames.lines():
    NAMES.setdefault(_code, _name)
# Which reply answers which request the bridge sends, and the field that
# tells concurrent requests apart (YKC replies echo the sequence bytes, but
# third-party piles do not all do so: the key is the fallback): the frame
# table's reply column (protocol/frames.py), by frame name.
REPLIES = dict((name, (NAMES[reply], key)) for code, name, reply, key, _signed in extras.columns()
               if reply is not None and code % 2 == 0)
# What the bridge does with each frame a pile sends: PileConn methods
# registered with @on(HANDLERS, code); protocol/router.py's reply() gives the
# frame the table names to answer with, and the request's sequence.
HANDLERS = {}
# Replies that only ever come as answers: one nobody waits for is late or a
# duplicate, and is logged and dropped.
_PURE_REPLIES = {"remote_start_reply", "remote_stop_reply", "reboot_reply", "tariff_set_reply",
                 "time_sync_reply", "status_reply", "status_reply55", "fw_reply", "vin_list_reply"}
# A reply's older form (protocol/frames.py) answers what the current form answers.
_REPLY_FORMS = {"status_reply55": "status_reply"}
_BAD_EVENT_S = 60.0       # one bad_frames event per link at most this often
_CLOCK_SLACK_S = 120      # a pile's answer to 0x56 this far from the time sent: not taken


# Frames a pile holding a command key acts on only inside a 0xD2 envelope
# (protocol/sign.py PROTECTED: the pile's own list, so the bridge signs
# exactly what the pile demands).
PROTECTED = frozenset(sign.PROTECTED)
SIGNED_CODE = sign.CODE_SIGNED
MAX_SIGNED_BODY = 214            # signed.body = v214 (251 - 37 envelope bytes)

# 0xD1 signed_reject.reason -> (name, what it means for the operator)
REJECT_REASONS = {
    1: ("bad mac", "the bridge's command key for this pile is not the pile's key "
                   "(or the command was altered on the way)"),
    2: ("replay", "the counter is not above the highest the pile accepted: another sender "
                  "with this pile's key used higher counters"),
    3: ("malformed", "the pile could not read the envelope or its inner frame"),
    4: ("store", "the pile cannot read or write its counter record (a technician must "
                 "repair it); it refuses every signed command"),
    5: ("unsigned", "the pile holds a command key and the bridge sent the command bare: "
                    "configure this pile's key on the bridge (docs/security.md)"),
    6: ("no key", "the bridge signed the command but the pile holds no command key: "
                  "provision the pile or remove its key from the bridge"),
}


class CommandTimeout(Exception):
    pass


class SignedReject(Exception):
    """The pile answered 0xD1 signed_reject instead of executing."""

    def __init__(self, frame, counter, reason):
        self.frame = frame
        self.counter = counter
        self.reason = reason
        self.name, self.meaning = REJECT_REASONS.get(reason, ("reason %d" % reason, "unknown reason"))
        Exception.__init__(self, "pile refused %s (signed counter %d): %s: %s"
                           % (frame, counter, self.name, self.meaning))

    def reply(self):
        return {"counter": self.counter, "reason": self.name, "reason_code": self.reason,
                "frame": self.frame}


class SignError(ValueError):
    pass


class Pile:
    """A pile known to the bridge (logged in now or earlier)."""

    def __init__(self, code, ext):
        self.code = code
        self.ext = ext
        self.conn = None
        self.login = None
        self.guns = {}            # gun -> {"status": name, "plugged": bool, "serial": ...}
        self.live = {}            # gun -> {"power_w", "energy_kwh", "amount_yuan"}: the last 0x13
        self.faults = {}          # gun -> fault bits last seen
        self.status_reply = None  # last 0xE5 fields (ext piles)
        self.status_at = 0.0      # when it came (state and boot_reason are this boot's only after login)
        self.online_since = None
        self.last_seen = None
        self.offline_reason = None
        self.crc_swapped = 0
        self.frame_errors = 0
        self.logins = 0
        self.start_requests = {}  # gun -> seq of the last 0x31, for the 0x32 answer
        self.parallel_requests = {}   # gun -> seq of the last 0xA1, for the 0xA2 answer
        self.sessions = {}        # gun -> [serial, monotonic end seen or None, overdue reported]
        self.sign_lock = asyncio.Lock()   # one signed command in flight (docs/security.md)
        self.login_event = asyncio.Event()   # set (and replaced) at every login
        self.required = {"board": None, "hmi": None}   # minimum versions (config)
        self.flagged = set()      # outdated versions already reported since the login
        self.upgrade = None       # the firmware push in progress or last done (host/push.py)
        self.upgrade_task = None

    def board_version(self):
        sr = self.status_reply or {}
        return sr.get("fw_version") or (self.login or {}).get("sw_version")

    def outdated(self):
        """Which versions are below the configured minimum: "board", "hmi"."""
        out = []
        sr = self.status_reply or {}
        if self.login is not None and configmod.below(self.board_version(), self.required["board"]):
            out.append("board")
        # The screen version comes with our firmware's 0xE5 only.
        if self.required["hmi"] and self.status_reply is not None \
                and configmod.below(sr.get("hmi_version"), self.required["hmi"]):
            out.append("hmi")
        return out

    @property
    def online(self):
        return self.conn is not None

    def status_json(self, site):
        sr = self.status_reply or {}
        fresh = self.status_reply is not None and self.status_at >= (self.online_since or 0)
        doc = {
            "schema": schema.SCHEMA_STATUS, "site": site, "pile": self.code,
            "online": self.online,
            "link": self.conn.link.name if self.conn else None,
            # True: the pile proved its key at this login; False: an unkeyed pile
            "authenticated": self.conn.authenticated if self.conn else None,
            # How the bridge knows this link is the pile: "key" (it proved its
            # key), "bound" (a link its config binds it to), "none" (its code)
            "trust": (None if not self.conn else "key" if self.conn.authenticated
                      else "bound" if self.conn.bound else "none"),
            "ext": self.ext,
            "since": schema.utc_iso(self.online_since) if self.online_since else None,
            "last_seen": schema.utc_iso(self.last_seen) if self.last_seen else None,
            "offline_reason": None if self.online else self.offline_reason,
            "login": dict(self.login) if self.login else None,
            "versions": {
                "sw": self.login.get("sw_version") if self.login else None,
                "fw": sr.get("fw_version"), "hmi": sr.get("hmi_version"),
                "min_board": self.required["board"], "min_hmi": self.required["hmi"],
                "outdated": self.outdated(),
            },
            "upgrade_required": bool(self.outdated()),
            "upgrade": dict(self.upgrade) if self.upgrade else None,
            "journal": {k: sr[k] for k in ("pending", "unsettled", "illegal", "journal_used",
                                           "journal_limit", "oldest_pending") if k in sr} or None,
            # The last boot's state and boot reason are stale once the pile
            # logs in again: null until this login's 0xE5 answers.
            "state": sr.get("state") if fresh else None,
            "boot_reason": sr.get("boot_reason") if fresh else None,
            "guns": self.guns,
            "crc_swapped": self.crc_swapped,
            "frame_errors": self.frame_errors,
        }
        return doc


class _Waiter:
    __slots__ = ("reply", "key", "seq", "fut", "name")

    def __init__(self, reply, key, seq, fut, name=None):
        self.reply = reply
        self.key = key
        self.seq = seq
        self.fut = fut
        self.name = name


class PileConn:
    """One link session with one pile."""

    def __init__(self, bridge, link, link_ext=None, close_on_silence=True):
        self.bridge = bridge
        self.cfg = bridge.cfg
        self.link = link
        self.link_ext = link_ext
        self.close_on_silence = close_on_silence   # TCP: yes; a serial port stays open
        self.reader = FrameReader(tolerant=True, lenient=True)   # host/fastcodec.py; piles not ours: protocol/lenient.py
        self.pile = None
        self._seq = 0
        self._waiters = []
        self._wlock = asyncio.Lock()
        self._tasks = set()
        self.last_rx = time.monotonic()
        self.closed = False
        self.bad_crc = 0                  # bad-CRC frames since the last bad_frames event
        self.unauth_addr = None           # TCP: its remote address until it logs in (bridge limits)
        self.authenticated = False        # the pile proved its key at login (keyed piles)
        self._proving = False             # a login challenge is out
        self.held = {}                    # serial -> 0x3B frame waiting for its MAC (keyed piles)
        self.bound = False                # the pile's config binds it to links and this is one
        self._bad_event_at = -_BAD_EVENT_S

    # --- plumbing -----------------------------------------------------------------

    def next_seq(self):
        self._seq = self._seq + 1 if self._seq < 0xFFFF else 1
        return self._seq

    def spawn(self, coro):
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t):
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            e = t.exception()
            if not isinstance(e, (LinkClosed, CommandTimeout)):
                log.error("%s: background task failed: %r", self.link.name, e)

    def _name(self):
        return self.pile.code if self.pile else self.link.name

    def signs(self, name):
        """True when `name` goes to this pile inside a 0xD2 envelope: a
        protected frame, and the bridge holds the pile's command key."""
        pile = self.pile
        if pile is None or schema.CODES.get(name) not in PROTECTED:
            return False
        return self.bridge.keys.cmd_key(pile.code) is not None

    async def send(self, name, values, seq=None):
        """Send one frame (signed when signs(name)); returns its bytes."""
        if self.signs(name):
            async with self.pile.sign_lock:
                return await self._send(name, values, seq, True)
        return await self._send(name, values, seq, False)

    async def send_raw(self, code, body, seq):
        """Send a frame from its body bytes, as they are (a 0x40 for a bill
        whose serial is not BCD). Never signed."""
        frame = codec.wrap(code, body, seq)
        async with self._wlock:
            await self.link.write(frame)
        log.debug("%s <- 0x%02X %s", self._name(), code, schema.hexs(frame))
        return frame

    async def _send(self, name, values, seq, signed):
        seq = self.next_seq() if seq is None else seq
        if signed:
            frame = await self._sealed(name, values, seq)
        else:
            frame = schema.encode(name, values, seq)
        async with self._wlock:
            await self.link.write(frame)
        log.debug("%s <- %s%s %s", self._name(), name, " (signed)" if signed else "",
                  schema.hexs(frame))
        return frame

    async def _sealed(self, name, values, seq):
        # The counter is committed to SQLite before the envelope exists, so
        # it never repeats, even after a crash right after sending.
        code = self.pile.code
        layout = codec.layout_named(name)
        body = bytes(codec.encode_body(layout, values))
        if len(body) > MAX_SIGNED_BODY:
            raise SignError("%s body of %d bytes does not fit a signed envelope (at most %d)"
                            % (name, len(body), MAX_SIGNED_BODY))
        key = self.bridge.keys.cmd_key(code)
        counter = await self.bridge.store.next_counter(code, configmod.counter_floor())
        env = sign.seal(key, code, counter, layout.code, body)
        return codec.wrap(SIGNED_CODE, env, seq)

    async def request(self, name, values, timeout=None):
        """Send `name` and wait for its reply frame (REPLIES). Raises
        CommandTimeout, SignedReject when the pile answers 0xD1, or LinkClosed
        when the link drops meanwhile. Signed requests to one pile go one at
        a time (a second would overtake the first's counter)."""
        if self.signs(name):
            async with self.pile.sign_lock:
                return await self._request(name, values, timeout, True)
        return await self._request(name, values, timeout, False)

    async def _request(self, name, values, timeout, signed):
        reply, keyfield = REPLIES[name]
        seq = self.next_seq()
        fut = asyncio.get_running_loop().create_future()
        w = _Waiter(reply, values.get(keyfield) if keyfield else None, seq, fut, name)
        self._waiters.append(w)
        try:
            await self._send(name, values, seq, signed)
            t = self.cfg["piles"]["command_timeout_s"] if timeout is None else timeout
            try:
                return await asyncio.wait_for(asyncio.shield(fut), t)
            except asyncio.TimeoutError:
                raise CommandTimeout("no %s (0x%02X) from pile %s within %g s"
                                     % (reply, schema.CODES[reply], self._name(), t))
        finally:
            if w in self._waiters:
                self._waiters.remove(w)
            if fut.done() and not fut.cancelled():
                # shutdown() may have failed it while we were still in send():
                # read it, or asyncio logs "Future exception was never retrieved".
                fut.exception()

    def _deliver(self, frame):
        """Hand a reply to the request waiting for it. True when one waited."""
        name = _REPLY_FORMS.get(frame.name, frame.name)
        cands = [w for w in self._waiters if w.reply == name and not w.fut.done()]
        if not cands:
            return False
        keyfield = None
        for req, (rep, kf) in REPLIES.items():
            if rep == name:
                keyfield = kf
                break
        if keyfield and frame.fields is not None:
            k = frame.fields.get(keyfield)
            cands = [w for w in cands if w.key is None or w.key == k]
            if not cands:
                return False
        chosen = next((w for w in cands if w.seq == frame.seq), cands[0])
        self._waiters.remove(chosen)
        chosen.fut.set_result(frame)
        return True

    # --- the read loop -------------------------------------------------------------

    async def run(self):
        watchdog = asyncio.ensure_future(self._watchdog())
        try:
            while True:
                data = await self.link.read()
                if not data:
                    break
                self.last_rx = time.monotonic()
                for item in self.reader.push(data):
                    if isinstance(item, FrameError):
                        raw = getattr(item, "frame", None)
                        if raw is not None and raw.code in BILL_CODES:
                            # A bill with a good CRC that we cannot read:
                            # kept raw all the same (bridge.on_raw_bill).
                            await self.bridge.on_raw_bill(self, raw, item)
                        else:
                            self._bad_frame(item)
                        continue
                    try:
                        await self._handle(item)
                    except LinkClosed:
                        raise
                    except Exception:
                        log.exception("%s: handling %r", self._name(), item)
        except LinkClosed as e:
            log.info("%s: link closed: %s", self._name(), e)
        finally:
            watchdog.cancel()
            await self.shutdown("link closed")

    async def shutdown(self, reason):
        if self.closed:
            return
        self.closed = True
        for w in self._waiters:
            if not w.fut.done():
                w.fut.set_exception(LinkClosed("link to pile %s dropped (%s)" % (self._name(), reason)))
        self._waiters.clear()
        for t in list(self._tasks):
            t.cancel()
        if self.pile is not None:
            self.bridge.detach(self, reason)
        await self.link.close()

    async def _watchdog(self):
        pc = self.cfg["piles"]
        limit = pc["heartbeat_s"] * pc["missed_heartbeats"]
        while True:
            await asyncio.sleep(min(pc["heartbeat_s"] / 2, limit / 4))
            silent = time.monotonic() - self.last_rx
            if silent <= limit:
                continue
            if self.pile is not None:
                log.warning("pile %s: silent for %.1f s (%d heartbeats missed): offline",
                            self.pile.code, silent, pc["missed_heartbeats"])
                self.bridge.detach(self, "%d heartbeats missed" % pc["missed_heartbeats"])
                self.pile = None
            if self.close_on_silence:
                # A TCP pile dials in again; close so its socket does not linger.
                await self.link.close()
                return

    def _bad_frame(self, err):
        if self.pile is not None:
            self.pile.frame_errors += 1
        log.warning("%s: bad frame: %s", self._name(), err)
        raw = getattr(err, "raw", None)
        if raw is None:
            return
        # A frame that failed its CRC: kept for diagnosis within the store's
        # caps; one bad_frames event per link and minute at most, with the
        # count since the last one (a noisy line yields many false starts).
        code = self.pile.code if self.pile is not None else None
        self.bad_crc += 1
        self.spawn(self.bridge.store.add_bad_frame(self.link.name, code, raw, str(err)))
        now = time.monotonic()
        if now - self._bad_event_at >= _BAD_EVENT_S:
            self._bad_event_at = now
            n, self.bad_crc = self.bad_crc, 0
            self.bridge.event(code or "unknown", "bad_frames",
                              "%d frame(s) with a bad CRC on %s; the latest kept for diagnosis"
                              % (n, self.link.name), link=self.link.name, count=n, reason=str(err),
                              frame=schema.hexs(raw))

    # --- frames from the pile --------------------------------------------------------

    async def _handle(self, f):
        log.debug("%s -> %s %r", self._name(), f.name, f.fields)
        if f.crc_swapped and self.pile is not None:
            self.pile.crc_swapped += 1
        if f.fields is None:
            log.warning("%s: encrypted frame 0x%02X ignored (3DES is not supported)",
                        self._name(), f.code)
            return
        if not f.code & 1:      # even codes travel platform -> pile (protocol/frames.py)
            # A platform-to-pile frame coming back (loop://, a misconfigured
            # link or our own echo): never act on it.
            log.info("%s: ignoring %s (0x%02X): a platform-to-pile frame", self._name(), f.name, f.code)
            return
        if f.name == "login":
            await self._login(f)
            return
        if self.pile is None:
            if f.name == "login_proof" and self._deliver(f):
                return
            if f.code in BILL_CODES:
                # Never dropped: kept in quarantine, no 0x40 (the pile sends
                # it again after its login, and that copy takes the normal path).
                await self.bridge.on_raw_bill(self, f, None)
                return
            log.info("%s: %s before login ignored", self.link.name, f.name)
            return
        pile = self.pile
        pile.last_seen = time.time()
        code = f.fields.get("pile")
        if code is not None and code != pile.code:
            if f.code in BILL_CODES:
                await self.bridge.on_bill(self, f)   # quarantined there
                return
            log.warning("pile %s: %s names pile %s; ignored", pile.code, f.name, code)
            return
        h = HANDLERS.get(f.code)
        delivered = self._deliver(f)
        if h is not None:
            # Not route(): the handlers are coroutines; a pile sends no
            # signed frames, so there is nothing to screen.
            await self.answer(reply(f, await h(self, f)))
        elif not delivered:
            if f.name in _PURE_REPLIES:
                log.info("pile %s: %s (seq %04X) nobody waits for (late or duplicate): ignored",
                         pile.code, f.name, f.seq)
            else:
                log.info("pile %s: %s not handled by the bridge", pile.code, f.name)

    async def answer(self, reply):
        """Send a handler's reply (protocol/router.py: (code, values, seq)):
        values a dict, encoded (and signed when the frame is protected and
        the bridge holds the pile's key), or the body's bytes, sent as they
        are (a field the pile sent that is not BCD, echoed)."""
        if reply is None:
            return
        code, v, seq = reply
        if isinstance(v, (bytes, bytearray)):
            await self.send_raw(code, v, seq)
        else:
            await self.send(NAMES[code], v, seq)

    async def _login(self, f):
        code = f.fields["pile"]
        if not code.isdigit():
            # Read leniently (protocol/lenient.py: not BCD): no reply or command
            # of ours could name this pile, so the login is refused, echoing
            # its 7 bytes as sent. Its bills are still kept (quarantined).
            await self.send_raw(0x02, bytes(f.body[:7]) + b"\x01", codec.reply_seq(f))
            self.bridge.event("unknown", "login_refused", "a login names pile %s, which is not a "
                              "BCD pile code" % code, link=self.link.name, pile_code=code)
            log.warning("login on %s refused: pile code %s is not BCD", self.link.name, code)
            if self.close_on_silence:
                await self.link.close()
            return
        if not self.cfg.allowed(code):
            await self.send("login_reply", {"pile": code, "result": 1}, codec.reply_seq(f))
            self.bridge.event(code, "login_refused", "pile %s is not on the allow-list" % code,
                              link=self.link.name)
            log.warning("pile %s on %s refused: not on the allow-list", code, self.link.name)
            if self.close_on_silence:
                await self.link.close()
            return
        bind = self.cfg["pile"].get(code, {}).get("bind")
        if bind and not configmod.bind_allows(bind, self.link):
            # Bound by configuration (a pile without a key has nothing else to
            # prove itself with): a login on another link is not this pile.
            await self.send("login_reply", {"pile": code, "result": 1}, codec.reply_seq(f))
            why = "pile %s is bound to %s; this login came on %s" % (
                code, ", ".join(map(str, bind)), self.link.name)
            self.bridge.event(code, "login_refused", why, link=self.link.name)
            log.warning("pile %s on %s refused: %s", code, self.link.name, why)
            if self.close_on_silence:
                await self.link.close()
            return
        self.bound = bool(bind)
        key = self.bridge.keys.cmd_key(code)
        if key is not None and not (self.pile is not None and self.pile.code == code
                                    and self.authenticated):
            # A keyed pile proves who it is before anything is attached to
            # it: a client with another pile's code can neither take that
            # pile's link nor receive its commands (docs/security.md). In a
            # task: the proof arrives through this same read loop.
            if not self._proving:
                self._proving = True
                self.spawn(self._prove_login(f, code, key))
            return
        await self._accept_login(f, code, False)

    async def _accept_login(self, f, code, authenticated):
        await self.send("login_reply", {"pile": code, "result": 0}, codec.reply_seq(f))
        counted = self.pile is not None and self.pile.code == code   # counted in _handle
        self.authenticated = authenticated
        pile = self.bridge.attach(self, code, f.fields)
        if f.crc_swapped and not counted:
            pile.crc_swapped += 1
        self.spawn(self._after_login(pile))

    async def _prove_login(self, f, code, key):
        nonce = os.urandom(16)
        why = None
        try:
            r = await self.request("login_challenge", {"pile": code, "nonce": nonce.hex().upper()})
            v = r.fields
            if v["pile"] != code or v["nonce"] != nonce.hex().upper():
                why = "its proof answers another challenge"
            elif not sign.equal(sign.login_mac(key, code, nonce), bytes.fromhex(v["mac"])):
                why = "its proof does not verify with the pile's key"
        except CommandTimeout:
            why = "no proof within %g s" % self.cfg["piles"]["command_timeout_s"]
        except LinkClosed:
            return
        finally:
            self._proving = False
        if why is None:
            await self._accept_login(f, code, True)
            return
        self.bridge.stats["logins_unproven"] = self.bridge.stats.get("logins_unproven", 0) + 1
        log.warning("pile %s on %s refused: %s", code, self.link.name, why)
        self.bridge.event(code, "login_refused", "a login as pile %s on %s was refused: %s"
                          % (code, self.link.name, why), link=self.link.name)
        try:
            await self.send("login_reply", {"pile": code, "result": 1}, codec.reply_seq(f))
        except LinkClosed:
            return
        if self.close_on_silence:
            await self.link.close()

    async def _after_login(self, pile):
        # Clock first (bills are stamped with it), then journal/versions, then
        # settle what the platform confirmed while the pile was away; then the
        # daily time sync and, for our firmware, a periodic status query (it
        # is how "journal full" and version changes become visible).
        pc = self.cfg["piles"]
        sync = pc["time_sync_s"] > 0        # 0: the piles keep their own clock
        if sync:
            await self.sync_time()
        if pile.ext:
            await self.poll_status()
            await self.push_site_cap()
        self.bridge.settle_backlog(pile)
        now = time.monotonic()
        next_sync = now + pc["time_sync_s"] if sync else float("inf")
        next_status = now + pc["status_poll_s"] if pile.ext else float("inf")
        while True:
            await asyncio.sleep(max(0.0, min(next_sync, next_status) - time.monotonic()))
            now = time.monotonic()
            if now >= next_sync:
                next_sync = now + pc["time_sync_s"]
                await self.sync_time()
            if now >= next_status:
                next_status = now + pc["status_poll_s"]
                await self.poll_status()

    async def push_site_cap(self):
        """pile.<code>.power_cap_kw, if configured, to an ext pile (0xDE):
        its power sharing keeps all its guns under it. A pile that does not
        share power answers result 0: an event says the cap is not held."""
        if self.pile is None:
            return
        await self._push_gun_caps()
        w = self.bridge.power_cap_w(self.pile.code)    # config and OCPP charging profiles
        if w is None:
            return
        try:
            r = await self.request("site_cap", {"pile": self.pile.code, "cap": w})
        except (CommandTimeout, LinkClosed, SignedReject) as e:
            log.info("pile %s: site cap: %s", self._name(), e)
            return
        if self.pile is None:
            return
        ok = bool(r.fields) and r.fields.get("result") == 1
        self.pile.site_cap_w = w if ok else None
        if not ok:
            self.bridge.event(self.pile.code, "site_cap_refused",
                              "the pile does not hold the site's power cap of %d W (it does not "
                              "share power)" % w, cap=w)

    async def _push_gun_caps(self):
        # Per-gun caps (OCPP profiles on one EVSE, 0xDC): the pile keeps them
        # in RAM only, so they go again at every login.
        code = self.pile.code
        n = int((self.pile.login or {}).get("guns") or 1)
        for g in range(1, n + 1) if n > 1 else ():
            w = self.bridge.gun_cap_w(code, g)
            if w is None:
                continue
            try:
                await self.request("gun_cap", {"pile": code, "gun": "%02d" % g, "cap": w})
            except (CommandTimeout, LinkClosed, SignedReject) as e:
                log.info("pile %s: gun %02d cap: %s", self._name(), g, e)
            if self.pile is None:
                return

    async def poll_status(self):
        if self.pile is None:     # replaced by a newer login, or gone silent
            return
        try:
            await self.query_status()
        except (CommandTimeout, LinkClosed) as e:
            log.info("pile %s: status query: %s", self._name(), e)

    async def sync_time(self):
        if self.pile is None:     # replaced by a newer login, or gone silent
            return None
        sent = schema.local_secs()
        try:
            r = await self.request("time_sync", {"pile": self.pile.code, "time": sent})
        except CommandTimeout as e:
            log.info("time sync: %s", e)   # third-party piles may not answer 0x56
            return None
        except SignedReject as e:          # reported by _on_signed_reject (an event)
            log.info("time sync: %s", e)
            return None
        got = r.fields.get("time") if r.fields else None
        if isinstance(got, int) and abs(got - sent) > _CLOCK_SLACK_S and self.pile is not None:
            # Our firmware refuses a step past its bound (a day) and answers
            # with the time it kept: a technician must look (console 'clock').
            self.bridge.event(self.pile.code, "clock_sync_refused",
                              "the pile kept its clock %+d s away from the bridge's after a time sync"
                              % (got - sent), pile_time=got, bridge_time=sent)
        return r

    async def query_status(self):
        r = await self.request("status_query", {"pile": self.pile.code})
        return r

    # --- frames from a logged-in pile (HANDLERS; each returns its reply) ----------

    @on(HANDLERS, 0x03)
    async def _on_heartbeat(self, f):
        v = f.fields
        g = self.pile.guns.setdefault(v["gun"], {})
        fault = v["gun_status"] == 1
        if g.get("fault") != fault:
            g["fault"] = fault
            self.bridge.publish_status(self.pile)
        if not v["gun"].isdigit():   # a gun read as hex (not BCD): echoed as sent
            return bytes(f.body[:8]) + b"\x00"
        return {"pile": v["pile"], "gun": v["gun"], "reply": 0}

    @on(HANDLERS, 0x05)
    async def _on_tariff_check(self, f):
        t = self.bridge.tariff_for(self.pile.code)
        model = f.fields["model"]
        # 0 = the pile's model is current; 1 = it differs (the pile then asks 0x09).
        result = 0 if t is None or t["model"] == model else 1
        if not model.isdigit():    # read as hex (not BCD): echoed as sent, "differs"
            return bytes(f.body[:9]) + b"\x01"
        return {"pile": self.pile.code, "model": model, "result": result}

    @on(HANDLERS, 0x09)
    async def _on_tariff_request(self, f):
        t = self.bridge.tariff_for(self.pile.code)
        if t is None:
            log.warning("pile %s asks for its tariff model, none is configured", self.pile.code)
            self.bridge.event(self.pile.code, "no_tariff",
                              "pile asked for its tariff model (0x09) but none is configured")
            return None
        return T.frame_values(t, self.pile.code)     # 0x0A, signed for a keyed pile

    @on(HANDLERS, 0x13)
    async def _on_realtime(self, f):
        self.bridge.on_realtime(self.pile, f)

    @on(HANDLERS, *BILL_CODES)      # every bill layout (protocol/frames.py)
    async def _on_bill(self, f):
        # The 0x40 is the bridge's to send, once the bill is in its store.
        await self.bridge.on_bill(self, f)

    @on(HANDLERS, 0xEB)
    async def _on_bill_extra(self, f):
        await self.bridge.on_bill_extra(self, f)

    @on(HANDLERS, 0xD9)
    async def _on_pile_key(self, f):
        self.bridge.on_pile_key(self.pile, f)

    @on(HANDLERS, 0xDB)
    async def _on_bill_sig(self, f):
        await self.bridge.on_bill_sig(self, f)

    @on(HANDLERS, 0xE3)
    async def _on_settled_reply(self, f):
        await self.bridge.on_settled_reply(self.pile, f)

    @on(HANDLERS, 0xE5)             # both layouts (status_reply, status_reply55)
    async def _on_status_reply(self, f):
        old = (self.pile.status_reply or {}).get("boot_reason")
        self.bridge.on_status_reply(self.pile, f)
        self.bridge.check_versions(self.pile)
        if f.fields["boot_reason"] == 3 and old != 3:     # pile.BOOT_ROLLBACK
            self.bridge.event(self.pile.code, "firmware", "the pile rolled back to %s: the new "
                              "firmware never became healthy" % f.fields["fw_version"],
                              stage="rolled_back", version=f.fields["fw_version"])

    @on(HANDLERS, 0xD1)
    async def _on_signed_reject(self, f):
        # The reply echoes the refused frame's sequence bytes: fail the
        # request waiting for it now, rather than let it time out.
        v = f.fields
        w = next((w for w in self._waiters if w.seq == f.seq and not w.fut.done()), None)
        name = w.name if w is not None else "a command (seq %04X)" % f.seq
        err = SignedReject(name, v["counter"], v["reason"])
        if w is not None:
            self._waiters.remove(w)
            w.fut.set_exception(err)
        log.warning("pile %s: %s", self.pile.code, err)
        self.bridge.event(self.pile.code, "signed_reject", str(err), **err.reply())

    @on(HANDLERS, 0x35)
    async def _on_remote_stop_reply(self, f):
        v = f.fields
        if v["result"] == 1:
            self.bridge.session_stopped(self.pile, v["gun"])

    @on(HANDLERS, 0x33, 0xA3)       # a start's answer, alone or in a parallel group
    async def _on_remote_start_reply(self, f):
        v = f.fields
        if v["result"] == 1:
            self.bridge.session_started(self.pile, v["gun"], v["serial"])
        if v["result"] != 1:
            if self.pile.ext:
                self.spawn(self.poll_status())   # a full journal refuses starts: look
            self.bridge.event(self.pile.code, "start_refused",
                              "pile refused the start of %s on gun %s: %s (reason %d)"
                              % (v["serial"], v["gun"], schema.start_refusal(v["reason"]),
                                 v["reason"]),
                              gun=v["gun"], serial=v["serial"], reason=v["reason"])

    @on(HANDLERS, 0xA1)
    async def _on_parallel_request(self, f):
        parallel.request_event(self.bridge, self.pile, f)

    @on(HANDLERS, 0x31)
    async def _on_start_request(self, f):
        v = f.fields
        self.pile.start_requests[v["gun"]] = f.seq   # 0x32 echoes it
        self.bridge.event(self.pile.code, "start_request",
                          "pile asks to start gun %s (card or VIN); answer with the "
                          "'authorize' command" % v["gun"], request=dict(v), seq=f.seq)
