# The firmware's DL/T 645 meter driver on a host (CPython only): the
# injected uart and clock it needs, over a pyserial URL (/dev/ttyUSB0,
# socket://host:port, loop://) or a raw file descriptor (a pty master), so a
# tool or a test can point the very driver the pile runs at a real meter on
# a USB-RS485 cable or at the dlt645 emulator.
#
#   meter, uart = open_meter("/dev/ttyUSB0", "000000000001")
#   meter.read_energy()        # x10^4 kWh
#   uart.close()
import time

import serial

from firmware.dlt645 import Dlt645Meter
from firmware.errors import MeterError
from sim import links

# DL/T 645-2007's usual line: 2400 baud, 8 data bits, even parity, 1 stop.
DEFAULT_BAUD = 2400
DEFAULT_PARITY = serial.PARITY_EVEN


class HostClock:
    """The clock interface's monotonic half: ticks_ms() and sleep_ms()."""

    def ticks_ms(self):
        return time.monotonic_ns() // 1000000

    def sleep_ms(self, ms):
        time.sleep(ms / 1000)


class SerialUart(links.SerialUart):
    """A pyserial port (sim/links.py) on the meter's line: 2400 baud, even
    parity by default; a broken port raises MeterError (the meter is then
    unreachable)."""

    @classmethod
    def open(cls, url, baudrate=DEFAULT_BAUD, parity=DEFAULT_PARITY):
        return super().open(url, baudrate, parity, error=MeterError)


class FdUart(links.FdUart):
    """A file descriptor (the master side of a pty) as the meter's uart
    (sim/links.py); a broken descriptor raises MeterError."""

    def __init__(self, fd):
        links.FdUart.__init__(self, fd, error=MeterError)


def open_meter(url, address=None, baudrate=DEFAULT_BAUD, parity=DEFAULT_PARITY,
               timeout_ms=500, clock=None):
    """(Dlt645Meter, SerialUart) on a pyserial URL; close the uart when done.
    With no address, the one meter on the bus is asked for it (wildcard
    AAAAAAAAAAAA)."""
    uart = SerialUart.open(url, baudrate, parity)
    clock = clock or HostClock()
    try:
        if address is None:
            address = Dlt645Meter.discover(uart, clock, timeout_ms)
        return Dlt645Meter(uart, address, clock, timeout_ms), uart
    except BaseException:
        uart.close()
        raise
