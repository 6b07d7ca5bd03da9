# Errors shared by firmware modules (MicroPython and CPython).


class MeterError(Exception):
    """The meter did not give a usable reading (timeout, bad frame, error reply)."""


class MeterTimeout(MeterError):
    """The meter did not answer in time."""
