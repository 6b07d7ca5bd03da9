# Wrap-safe tick differences for the firmware (MicroPython + CPython).
#
# A board's ticks_ms() wraps (MicroPython: every 2**30 ms, ~12.4 days), so a
# plain `t < due` or `t - t0` breaks for anything that spans the wrap: a
# session started 20 s before it stopped being sampled and ran on past its
# target. Rules for every interval in firmware/:
#   - keep the tick an interval started at, never a computed deadline
#     (a sum past the period is not a small int on a 32-bit board, and
#     time.ticks_diff assumes small ints);
#   - compare diff(now, start) against the interval.
#
#   diff = diff_of(clock)
#   if diff(clock.ticks_ms(), started) >= wait_ms: ...
#
# diff_of(clock) is the clock's own ticks_diff(a, b) when it has one (a
# simulated clock that wraps, sim/hardware.py), else MicroPython's
# time.ticks_diff (the board's period), else a - b (CPython: ticks from a
# simulated clock that does not wrap).
try:
    from time import ticks_diff as _time_diff
except ImportError:  # CPython
    _time_diff = None


def _sub(a, b):
    return a - b


def diff_of(clock=None):
    """ticks_diff(a, b) -> signed ms from b to a, for ticks from `clock`."""
    d = getattr(clock, "ticks_diff", None) if clock is not None else None
    if d is not None:
        return d
    return _time_diff if _time_diff is not None else _sub
