# The firmware's DL/T 645 meter driver on a host (CPython only): the
# injected uart and clock it needs, over a pyserial URL (/dev/ttyUSB0,
# socket://host:port, loop://) or a raw file descriptor (a pty master), so a
# tool or a test can point the very driver the pile runs at a real meter on
# a USB-RS485 cable or at the dlt645 emulator.
#
#   meter, uart = open_meter("/dev/ttyUSB0", "000000000001")
#   meter.read_energy()        # x10^4 kWh
#   uart.close()
import errno
import os
import time

import serial

from firmware.dlt645 import Dlt645Meter
from firmware.errors import MeterError

# DL/T 645-2007's usual line: 2400 baud, 8 data bits, even parity, 1 stop.
DEFAULT_BAUD = 2400
DEFAULT_PARITY = serial.PARITY_EVEN


class HostClock:
    """The clock interface's monotonic half: ticks_ms() and sleep_ms()."""

    def ticks_ms(self):
        return time.monotonic_ns() // 1000000

    def sleep_ms(self, ms):
        time.sleep(ms / 1000)


class SerialUart:
    """A pyserial port as the firmware's uart: read(n) never blocks.
    A broken port raises MeterError (the meter is then unreachable)."""

    def __init__(self, port):
        self.port = port
        port.timeout = 0

    @classmethod
    def open(cls, url, baudrate=DEFAULT_BAUD, parity=DEFAULT_PARITY):
        # Ptys and sockets ignore the line settings; pass parity "N" on a
        # pty (the tooling notes: even parity breaks pty clients).
        try:
            port = serial.serial_for_url(url, baudrate=baudrate, bytesize=8, parity=parity,
                                         stopbits=1, timeout=0)
        except (OSError, serial.SerialException) as e:
            raise MeterError("cannot open %s: %s" % (url, e))
        return cls(port)

    def write(self, data):
        try:
            return self.port.write(bytes(data))
        except (OSError, serial.SerialException) as e:
            raise MeterError("%s: write failed: %s" % (self.port.name, e))

    def read(self, n):
        try:
            return self.port.read(n) or None
        except (OSError, serial.SerialException) as e:
            raise MeterError("%s: read failed: %s" % (self.port.name, e))

    def close(self):
        self.port.close()


class FdUart:
    """A file descriptor (e.g. the master side of pty.openpty()) as the
    firmware's uart. The descriptor is made non-blocking; the caller owns it."""

    def __init__(self, fd):
        self.fd = fd
        os.set_blocking(fd, False)

    def write(self, data):
        view = memoryview(bytes(data))
        done = 0
        while done < len(view):
            try:
                done += os.write(self.fd, view[done:])
            except BlockingIOError:
                time.sleep(0.001)  # the pty's buffer is full: it drains at once
            except OSError as e:
                raise MeterError("fd %d: write failed: %s" % (self.fd, e))
        return done

    def read(self, n):
        try:
            return os.read(self.fd, n) or None
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno == errno.EIO:  # pty master with no slave open: no data
                return None
            raise MeterError("fd %d: read failed: %s" % (self.fd, e))


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
