# The pile's side of the YKC link: framing over the UART (or socket), login,
# heartbeats, sequence numbers. Everything that is not link housekeeping is
# handed to `handler(frame)`; `on_online()` runs after each successful login
# (the pile then uploads stored bills first, then checks its tariff model).
#
# YKC rules kept here: heartbeat every 10 s; 3 heartbeats without a reply =
# link down, log in again; replies echo the request's sequence bytes.
from firmware.ticks import diff_of
from protocol import codec
from protocol.errors import FrameError

from protocol import const

_HEARTBEAT_MS = const(10000)
_LOGIN_RETRY_MS = const(10000)
_MISSED_MAX = const(3)
_READ_CHUNK = const(256)


class Link:
    def __init__(self, uart, clock, login, handler, on_online=None, on_offline=None,
                 heartbeat_ms=_HEARTBEAT_MS, login_retry_ms=_LOGIN_RETRY_MS, log=None,
                 beats=None):
        self.uart = uart
        self.clock = clock
        self.login = login          # 0x01 field values (pile, versions, ...)
        self.pile = login["pile"]
        self.handler = handler
        self.on_online = on_online
        self.on_offline = on_offline
        self.heartbeat_ms = heartbeat_ms
        self.login_retry_ms = login_retry_ms
        self.log = log or (lambda *a: None)
        self.reader = codec.FrameReader()
        self.online = False
        self.gun_status = 0
        # beats() -> [(gun, gun_status)]: one heartbeat per gun each period
        # (a multi-gun pile); None: one heartbeat for gun "01" as always.
        self.beats = beats
        self._seq = 0
        # timers: (tick started, ms): kept as a start and a wait, compared by
        # a wrap-safe difference (firmware/ticks.py), never as a sum
        self._diff = diff_of(clock)
        self._login_at = clock.ticks_ms()
        self._login_wait = 0
        self._beat_at = 0
        self._missed = 0
        self.sent = 0
        self.bad_frames = 0
        self.logins = 0

    def next_seq(self):
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    def send(self, name, values, seq=None):
        """Encode and write one frame; returns the sequence used."""
        return self._write(codec.encode, name, values, seq)

    def send_raw(self, code, body, seq=None):
        """Send an already encoded body (a bill read back from the journal)."""
        return self._write(codec.wrap, code, body, seq)

    def _write(self, frame, what, data, seq):
        # frame(what, data, seq): codec.encode by name, or codec.wrap of a body
        if seq is None:
            seq = self.next_seq()
        self.uart.write(frame(what, data, seq))
        self.sent += 1
        return seq

    def reply(self, request, name, values):
        return self.send(name, values, codec.reply_seq(request))

    def go_offline(self, why):
        if self.online:
            self.log("link", "offline: " + why)
            self.online = False
            if self.on_offline:
                self.on_offline()
        self._login_at = self.clock.ticks_ms()
        self._login_wait = 0

    def poll(self):
        """Read what arrived, handle it, and run the link timers. Call often."""
        while True:
            data = self.uart.read(_READ_CHUNK)
            if not data:
                break
            for item in self.reader.push(data):
                if isinstance(item, FrameError):
                    self.bad_frames += 1
                    self.log("link", "bad frame: %s" % item)
                else:
                    self._dispatch(item)
        now = self.clock.ticks_ms()
        if not self.online:
            if self._diff(now, self._login_at) >= self._login_wait:
                self.send("login", self.login)
                self._login_at = now
                self._login_wait = self.login_retry_ms
        elif self._diff(now, self._beat_at) >= self.heartbeat_ms:
            if self._missed >= _MISSED_MAX:
                self.go_offline("%d heartbeats unanswered" % self._missed)
                return
            if self.beats is None:
                self.send("heartbeat", {"pile": self.pile, "gun": "01",
                                        "gun_status": self.gun_status})
            else:
                # one round of heartbeats counts once: any reply clears it
                for gun, st in self.beats():
                    self.send("heartbeat", {"pile": self.pile, "gun": gun, "gun_status": st})
            self._missed += 1
            self._beat_at = now

    def _dispatch(self, f):
        if f.fields is None:
            self.log("link", "encrypted frame 0x%02X ignored" % f.code)
            return
        if f.code == 0x02:
            if f.fields["result"] == 0:
                self.online = True
                self.logins += 1
                self._missed = 0
                self._beat_at = self.clock.ticks_ms()
                self.log("link", "logged in")
                if self.on_online:
                    self.on_online()
            else:
                self.log("link", "login refused")
            return
        if f.code == 0x04:
            self._missed = 0
            return
        if not self.online:
            # A platform may talk before our login reply arrives (reordering);
            # commands still reach the handler: a stop must never be dropped.
            pass
        self.handler(f)
