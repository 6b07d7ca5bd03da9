"""Bill retry schedule: a view over the journal (MicroPython + CPython).

The journal is the retry queue; this module only decides *when* a stored
bill goes out. It keeps no copy of a bill and writes nothing to flash: its
timers live in RAM and start over at every login, which is exactly the rule
"after login, stored bills are sent first".

    ob = Outbox(journal, clock, first_ms=30000, cap_ms=600000,
                resettle_ms=3600000, window=1, answer_ms=10000)
    ob.on_login()              # logged in: every pending bill is due now
    ob.on_logout()             # link down: nothing is due
    ob.due() -> (serial, body) | None
    ob.sent(serial)            # the bill frame went out
    ob.confirmed(serial, result) -> journal status   # 0x40: 0 ok, 1 illegal
    ob.settled(serial)     -> journal status         # extension frame
    ob.illegal() -> [serial]   # for the console and the platform
    ob.next_in(serial) -> ms until that bill is due (0: due now, None: never)
    ob.extra_acked(serial)     # 0xEC: the host has the bill's fee split
    ob.extra_due() -> (serial, body) | None   # resend that bill's 0xEB alone
    ob.extra_sent(serial)

Rules:
- Pending (sealed, unconfirmed) bills are offered in journal order; a bill
  sealed while logged in is due at once. Of several bills due at once, the
  one sent longest ago goes first (round-robin), so a host that answers
  nothing still gets every bill in turn.
- After each send an unconfirmed bill waits first_ms, then twice that, ...
  up to cap_ms, and is resent forever: same serial, same bytes (read back
  from the journal each time).
- window bills at most are "in flight" (sent, no answer yet, less than
  answer_ms ago), so a login does not flood the link, while a bill the host
  never answers cannot hold back the others for longer than answer_ms.
- A bill the host confirmed but the platform has not settled is offered
  again every resettle_ms (the bridge deduplicates by trade serial).
- Illegal bills are never resent; illegal() lists them.
- The fee split (0xEB) goes out right after each 0x3B; a bill whose 0x3B
  the host confirmed (0x40) but whose 0xEB it has not acknowledged (0xEC:
  corrupted or lost on the way) gets its 0xEB again, alone, after
  answer_ms, then twice that, EXTRA_TRIES times at most (a host that never
  sends 0xEC, one without our extension frames, is not flooded). RAM only:
  a reboot forgets it, and a pending bill's resends carry both frames.

clock: ticks_ms() -> int; intervals are tick differences, computed with
clock.ticks_diff(a, b) if the clock has one, else time.ticks_diff on
MicroPython, else a - b.
"""
try:
    import time
    _tdiff = getattr(time, "ticks_diff", None)
except ImportError:  # pragma: no cover
    _tdiff = None


EXTRA_TRIES = 6
_NEVER = 0x3FFFFFFF        # "age" of a bill not sent since login: before any sent one


class Outbox:
    def __init__(self, journal, clock, first_ms=30000, cap_ms=600000,
                 resettle_ms=3600000, window=1, answer_ms=10000):
        self.j = journal
        self.clock = clock
        self.first_ms = first_ms
        self.cap_ms = cap_ms
        self.resettle_ms = resettle_ms
        self.window = window
        self.answer_ms = answer_ms
        d = getattr(clock, "ticks_diff", None)
        self._diff = d if d is not None else (_tdiff if _tdiff is not None else _sub)
        self.online = False
        self._sched = {}     # serial -> [tick of last send (or base), wait ms]
        self._flight = {}    # serial -> tick sent, until answered / answer_ms
        self._extra = {}     # serial -> [tick sent, wait ms, resends]: no 0xEC yet
        self._login = 0
        self._damaged = {}   # serials whose stored bill does not read back (until login)
        self._quiet = None   # [journal counts, tick, ms]: nothing due for ms after tick

    def _now(self):
        return self.clock.ticks_ms()

    def _counts(self):
        j = self.j
        return (j.count("pending"), j.count("confirmed"))

    def on_login(self):
        self._quiet = None
        self.online = True
        self._login = self._now()
        self._sched = {}
        self._flight = {}
        self._damaged = {}

    def on_logout(self):
        self._quiet = None
        self.online = False
        self._flight = {}

    def _in_flight(self, now):
        n = 0
        for s in list(self._flight):
            if self._diff(now, self._flight[s]) >= self.answer_ms:
                del self._flight[s]
            else:
                n += 1
        return n

    def _wait_left(self, serial, now, confirmed):
        e = self._sched.get(serial)
        if e is None:
            if not confirmed:
                return 0
            e = [self._login, self.resettle_ms]
        left = e[1] - self._diff(now, e[0])
        return left if left > 0 else 0

    def due(self):
        """The next bill to send now, or None."""
        if not self.online:
            return None
        now = self._now()
        if self._in_flight(now) >= self.window:
            return None
        # A walk that found nothing due says how long nothing can be: until
        # the soonest wait or answer ends, or the journal's counts change
        # (a bill sealed), or this outbox is told anything (each method that
        # changes a bill's schedule or state forgets it). The walk reads the
        # index on flash, so a pile polling every few ms skips it.
        q = self._quiet
        if q is not None and q[0] == self._counts() and self._diff(now, q[1]) < q[2]:
            return None
        soonest = self.resettle_ms
        for confirmed in (False, True):
            # Of the bills due now, the one sent longest ago (never sent
            # since login first, then journal order): a host that answers
            # nothing holds the window answer_ms per send, and oldest-first
            # let the oldest bills, due again every cap_ms, take every turn.
            best = None
            best_age = -1
            for s in self.j.each("confirmed" if confirmed else "pending"):
                if s in self._damaged:
                    continue
                f = self._flight.get(s)
                if f is not None:
                    left = self.answer_ms - self._diff(now, f)
                    if left < soonest:
                        soonest = left
                    continue
                left = self._wait_left(s, now, confirmed)
                if left:
                    if left < soonest:
                        soonest = left
                    continue
                e = self._sched.get(s)
                age = _NEVER if e is None else self._diff(now, e[0])
                if age > best_age:
                    best, best_age = s, age
                    if e is None:
                        break            # journal order among the never sent
            if best is not None:
                body = self.j.bill(best)
                if body is None:  # damaged on flash: reported by the journal
                    self._damaged[best] = 1
                    return self.due()
                return (best, body)
        self._quiet = [self._counts(), now, soonest]
        return None

    def next_in(self, serial):
        st = self.j.status(serial)
        if st == "pending":
            return self._wait_left(serial, self._now(), False)
        if st == "confirmed":
            return self._wait_left(serial, self._now(), True)
        return None

    def sent(self, serial):
        self._quiet = None
        now = self._now()
        st = self.j.status(serial)
        if st == "pending":
            e = self._sched.get(serial)
            if e is None:
                wait = self.first_ms
            else:
                wait = e[1] * 2
                if wait > self.cap_ms:
                    wait = self.cap_ms
            self._sched[serial] = [now, wait]
        elif st == "confirmed":
            self._sched[serial] = [now, self.resettle_ms]
        else:
            return
        self._flight[serial] = now
        if serial not in self._extra:
            self._extra[serial] = [now, self.answer_ms, 0]

    def confirmed(self, serial, result):
        """0x40 from the host: result 0 = received, 1 = illegal bill.
        Other results leave the bill pending (it is resent)."""
        self._quiet = None
        self._flight.pop(serial, None)
        if result == 0:
            r = self.j.confirm(serial)
            if r == "ok" or r == "duplicate":
                self._sched[serial] = [self._now(), self.resettle_ms]
            return r
        if result == 1:
            r = self.j.illegal(serial)
            self._sched.pop(serial, None)
            return r
        return "ignored"

    def settled(self, serial):
        self._quiet = None
        self._flight.pop(serial, None)
        self._sched.pop(serial, None)
        return self.j.settle(serial)

    def refused(self, serial, result):
        """0xE4 with a non-zero result: the platform refused the bill. Kept
        on flash as refused (never resent, never reclaimed), no answer due."""
        self._quiet = None
        self._flight.pop(serial, None)
        return self.j.refuse(serial, result)

    def idle(self):
        """Nothing due now and no bill waiting for its answer (expired
        answers count as none)."""
        return self.due() is None and not self._in_flight(self._now())

    def illegal(self):
        return self.j.illegal_bills()

    def extra_acked(self, serial):
        self._extra.pop(serial, None)

    def extra_due(self):
        """A bill whose 0x3B the host confirmed but whose 0xEB it has not
        acknowledged, due for its 0xEB again: (serial, body) or None."""
        if not self.online:
            return None
        now = self._now()
        for s in list(self._extra):
            e = self._extra[s]
            st = self.j.status(s)
            if st is None or e[2] >= EXTRA_TRIES:
                del self._extra[s]   # compacted away, or a host without 0xEC
                continue
            if st == "pending" or self._diff(now, e[0]) < e[1]:
                continue             # a pending bill goes again whole
            body = self.j.bill(s)
            if body is None:
                del self._extra[s]
                continue
            return (s, body)
        return None

    def extra_sent(self, serial):
        e = self._extra.get(serial)
        if e is not None:
            e[0] = self._now()
            e[1] *= 2
            e[2] += 1


def _sub(a, b):
    return a - b
