# When a 0x13 realtime frame is due (YKC V1.6): every 15 s while charging,
# every 5 min otherwise, at once on any change of status or plug, and when
# the platform asks (0x12). The field values come from Gun.realtime()
# (firmware/session.py).
#
#   cad = Cadence(diff=firmware.ticks.diff_of(clock))
#   if cad.poll(clock.ticks_ms(), gun.status(), plugged):
#       link.send(0x13, gun.realtime())
#
# Intervals are measured in ticks, never wall time (a time sync must not
# delay or burst reports), as wrap-safe differences from the last report's
# tick (diff: the clock's ticks_diff, firmware/ticks.py), so the cadence
# keeps going across a board's tick wrap.
from firmware.ticks import diff_of

from protocol import const

CHARGING_MS = const(15000)
IDLE_MS = const(300000)
_CHARGING = const(3)


class Cadence:
    __slots__ = ("charging_ms", "idle_ms", "_diff", "_last", "_status", "_plugged", "_forced")

    def __init__(self, charging_ms=CHARGING_MS, idle_ms=IDLE_MS, diff=None):
        self.charging_ms = charging_ms
        self.idle_ms = idle_ms
        self._diff = diff if diff is not None else diff_of()
        self._last = None
        self._status = None
        self._plugged = None
        self._forced = False

    def force(self):
        """The next poll() is due (a 0x12 read request, a reconnect)."""
        self._forced = True

    def next_due(self, now_ms):
        """ms until the periodic report is due (for the caller's sleep)."""
        if self._last is None or self._forced:
            return 0
        every = self.charging_ms if self._status == _CHARGING else self.idle_ms
        left = every - self._diff(now_ms, self._last)
        return left if left > 0 else 0

    def poll(self, now_ms, status, plugged):
        """True when a 0x13 should be sent now; the report counts as sent."""
        due = (self._forced or self._last is None or status != self._status
               or plugged != self._plugged)
        if not due:
            every = self.charging_ms if status == _CHARGING else self.idle_ms
            due = self._diff(now_ms, self._last) >= every
        if due:
            self._last = now_ms
            self._status = status
            self._plugged = plugged
            self._forced = False
        return due
