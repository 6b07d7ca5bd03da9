# A simulated DL/T 645-2007 meter (the meter peer): answers the pile's real
# driver (firmware/dlt645.py) over an in-memory UART (sim/loopuart.py) in the
# simulator and the tests. MicroPython + CPython.
from firmware.dlt645 import (CTRL_ERROR, CTRL_MORE, CTRL_READ, CTRL_READ_ADDRESS, CTRL_READ_MORE,
                             CTRL_REPLY, DI_CURRENT_A, DI_ENERGY_COMBINED, DI_ENERGY_FORWARD,
                             DI_METER_NUMBER, DI_POWER_TOTAL, DI_VOLTAGE_A, ERR_NO_DATA, ERR_OTHER,
                             FrameReader, _address_matches, _di_of, address_bytes,
                             bcd_encode, encode_frame)
from firmware.errors import MeterError

from protocol import const

# firmware/dlt645.py's limits (its const names are private to it on MicroPython).
_MAX_DATA = const(200)  # DL/T 645-2007: L <= 200 on a read reply
_MAX_FRAME = const(212)  # 68 A0..A5 68 C L + _MAX_DATA + CS + 16
_MAX_PREAMBLE = const(4)


def _all_aa(a):
    for i in range(6):
        if a[i] != 0xAA:
            return False
    return True


class Dlt645Slave:
    """A simulated meter answering 0x11 / 0x12 / 0x13 from `source`
    (energy_e4kwh floored to the 0.01 kWh register, power_w, voltage_x10,
    current_x10, meter_number as 12 digits; or, for the four readings, an
    object with the meter interface: read_energy() ..., whose MeterError
    makes this meter say nothing). Pure Python, no OS resources.

    Faults: `silent` (swallow requests), `error` (answer every request with
    this error byte), `noise` (bytes sent before each reply), `corrupt`
    (wrong checksum). `max_data` below 200 forces follow-up frames.
    Registers saturate like the wire format does: power at +-79.9999 kW,
    current at +-799.999 A; energy rolls over after 999999.99 kWh."""

    def __init__(self, address, source, preamble=_MAX_PREAMBLE):
        self.address = address_bytes(address)
        self.source = source
        self.preamble = preamble
        self.silent = False
        self.error = None
        self.noise = b""
        self.corrupt = False
        self.max_data = _MAX_DATA
        self.requests = 0  # frames addressed to this meter
        self._rx = FrameReader()
        self._tx = bytearray(_MAX_PREAMBLE + _MAX_FRAME)
        self._txv = memoryview(self._tx)
        self._more_di = -1
        self._more_val = b""
        self._more_pos = 0

    def attach(self, uart):
        """Answer whatever arrives on uart (a sim.loopuart.LoopUart end)
        as soon as it arrives."""
        uart.on_receive = self.poll
        return self

    def poll(self, uart):
        """Read what is waiting on uart and write the replies."""
        rx = self._rx
        while True:
            chunk = uart.read(_MAX_FRAME)
            if not chunk:
                return
            pos = 0
            while pos < len(chunk):
                pos += rx.feed(chunk, pos)
                if rx.ready:
                    size = self._answer(rx.address(), rx.control, rx.data())
                    rx.next()
                    if size:
                        if self.noise:
                            uart.write(self.noise)
                        uart.write(self._txv[:size])

    def handle(self, frame):
        """One request frame (bytes) -> the reply frame, or None."""
        rx = self._rx
        rx.reset()
        rx.feed(frame)
        if not rx.ready:
            return None
        size = self._answer(rx.address(), rx.control, rx.data())
        rx.next()
        return bytes(self._tx[:size]) if size else None

    def _answer(self, addr, control, data):
        if control & CTRL_REPLY:
            return 0  # another meter's reply on a shared bus
        for i in range(6):
            if addr[i] != 0x99:
                break
        else:
            return 0  # broadcast: act, never answer
        if not _address_matches(addr, self.address):
            return 0
        self.requests += 1
        if self.silent:
            return 0
        if control == CTRL_READ_ADDRESS:
            if not _all_aa(addr):
                return 0
            if self.error is not None:
                return self._reply(control | CTRL_REPLY | CTRL_ERROR, (self.error,))
            return self._reply(control | CTRL_REPLY, self.address)
        if control not in (CTRL_READ, CTRL_READ_MORE):
            return self._reply(control | CTRL_REPLY | CTRL_ERROR, (ERR_OTHER,))
        if self.error is not None:
            return self._reply(control | CTRL_REPLY | CTRL_ERROR, (self.error,))
        if len(data) < 4:
            return self._reply(control | CTRL_REPLY | CTRL_ERROR, (ERR_OTHER,))
        di = _di_of(data)
        if control == CTRL_READ:
            try:
                value = self.value(di)
            except MeterError:
                return 0  # the source has no reading: a dead meter is silent
            if value is None:
                return self._reply(control | CTRL_REPLY | CTRL_ERROR, (ERR_NO_DATA,))
            self._more_di = di
            self._more_val = value
            self._more_pos = 0
            return self._chunk(control, data, -1)
        if len(data) < 5 or di != self._more_di or self._more_pos >= len(self._more_val):
            return self._reply(control | CTRL_REPLY | CTRL_ERROR, (ERR_NO_DATA,))
        return self._chunk(control, data, data[4])

    def _chunk(self, control, data, seq):
        # DI + next slice of the value (+ SEQ on a follow-up), bit 5 if more.
        room = self.max_data - 4 - (0 if seq < 0 else 1)
        part = self._more_val[self._more_pos:self._more_pos + room]
        self._more_pos += len(part)
        more = self._more_pos < len(self._more_val)
        out = bytearray(4 + len(part) + (0 if seq < 0 else 1))
        for i in range(4):
            out[i] = data[i]
        for i in range(len(part)):
            out[4 + i] = part[i]
        if seq >= 0:
            out[-1] = seq
        return self._reply(control | CTRL_REPLY | (CTRL_MORE if more else 0), out)

    def _reply(self, control, data):
        size = encode_frame(self._tx, self.address, control, data, self.preamble)
        if self.corrupt:
            self._tx[size - 2] ^= 0xFF
        return size

    def value(self, di):
        """Register bytes (wire order, before +0x33) for di, None if unknown."""
        if di == DI_ENERGY_FORWARD or di == DI_ENERGY_COMBINED:
            return bcd_encode(self._get("energy_e4kwh", "read_energy") // 100 % 100000000, 4)
        if di == DI_POWER_TOTAL:
            return bcd_encode(_clamp(self._get("power_w", "read_power") * 10, 799999), 3, True)
        if di == DI_VOLTAGE_A:
            return bcd_encode(_clamp(self._get("voltage_x10", "read_voltage"), 9999), 2)
        if di == DI_CURRENT_A:
            return bcd_encode(_clamp(self._get("current_x10", "read_current") * 100, 799999), 3, True)
        if di == DI_METER_NUMBER:
            return address_bytes(getattr(self.source, "meter_number", None) or self.address)
        return None

    def _get(self, attr, method):
        # A plain record (energy_e4kwh, ...) or anything with the meter
        # interface (read_energy(), ...), e.g. the simulator's SimMeter.
        s = self.source
        v = getattr(s, attr, None)
        if v is None:
            v = getattr(s, method)()
        return v


def _clamp(v, limit):
    return limit if v > limit else -limit if v < -limit else v
