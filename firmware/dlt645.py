# DL/T 645-2007 energy meter: frame codec, streaming frame reader and the
# driver the pile uses (master). The simulated meter (slave) that the
# simulator and tests run this driver against is sim/meter.py.
# MicroPython + CPython.
#
# Frame: [0..4 x FE] 68 A0..A5 68 C L D0..D(L-1) CS 16
#   A0..A5  address, 6 bytes BCD, lowest byte first
#   D       each byte +0x33 on the wire; a read carries DI0..DI3 (lowest first)
#   CS      sum mod 256 from the first 68 to the last data byte, as sent
# Control: 0x11 read, 0x12 read follow-up, 0x13 read address. A reply sets
# bit 7 (0x91), an error reply bit 6 too (0xD1 + one error byte), bit 5 says
# follow-up frames remain.
from firmware.errors import MeterError, MeterTimeout

from protocol import const

_START = const(0x68)
_END = const(0x16)
_WAKE = const(0xFE)
_OFFSET = const(0x33)
_HEAD = const(10)  # 68 A0..A5 68 C L
_MAX_DATA = const(200)  # DL/T 645-2007: L <= 200 on a read reply
_MAX_FRAME = const(212)  # _HEAD + _MAX_DATA + CS + 16
_MAX_PREAMBLE = const(4)
_MAX_VALUE = const(64)  # bytes of one data item once follow-ups are joined
_MAX_FOLLOWUPS = const(8)  # follow-up frames accepted for one data item
_FLUSH_READS = const(16)  # bounded drain of stale bytes before a request
_TICKS_HALF = const(0x20000000)  # tick differences are taken mod 2**30,
_TICKS_MASK = const(0x3FFFFFFF)  # MicroPython's ticks_ms period

CTRL_READ = const(0x11)
CTRL_READ_MORE = const(0x12)
CTRL_READ_ADDRESS = const(0x13)
CTRL_REPLY = const(0x80)
CTRL_ERROR = const(0x40)
CTRL_MORE = const(0x20)
_FUNCTION = const(0x1F)

DI_ENERGY_COMBINED = const(0x00000000)  # XXXXXX.XX kWh, sign in the top bit
DI_ENERGY_FORWARD = const(0x00010000)  # forward active total, XXXXXX.XX kWh
DI_VOLTAGE_A = const(0x02010100)  # XXX.X V
DI_CURRENT_A = const(0x02020100)  # XXX.XXX A, sign in the top bit
DI_POWER_TOTAL = const(0x02030000)  # XX.XXXX kW, sign in the top bit
DI_METER_NUMBER = const(0x04000402)  # NNNNNNNNNNNN

ERR_OTHER = const(0x01)
ERR_NO_DATA = const(0x02)
ERR_AUTH = const(0x04)

WILDCARD = "AAAAAAAAAAAA"  # reads the address of the one meter on the bus
BROADCAST = "999999999999"  # meters act on it and never answer

_ERROR_NAMES = ("other error", "no requested data", "password error / unauthorised",
                "baud rate cannot change", "too many year zones", "too many day periods",
                "too many tariffs", "reserved bit 7")


def describe_error(code):
    """The error byte of a 0xD1/0xD3 reply, in words (bits may combine)."""
    names = [_ERROR_NAMES[i] for i in range(8) if code & (1 << i)]
    return ", ".join(names) if names else "no error bit set"


# ---------------------------------------------------------------- addresses

def address_bytes(address):
    """'000000000001' (as on the nameplate, highest digit first) or 6 wire
    bytes -> the 6 wire bytes (lowest byte first). 'A' digits are wildcards."""
    if isinstance(address, (bytes, bytearray, memoryview)):
        if len(address) != 6:
            raise ValueError("a meter address is 6 bytes")
        return bytes(address)
    if len(address) != 12:
        raise ValueError("a meter address is 12 digits: %r" % (address,))
    out = bytearray(6)
    for i in range(6):
        hi = _digit(address[10 - 2 * i])
        lo = _digit(address[11 - 2 * i])
        if hi < 0 or lo < 0:
            raise ValueError("a meter address is digits 0-9 or A: %r" % (address,))
        out[i] = (hi << 4) | lo
    return bytes(out)


def _digit(ch):
    if "0" <= ch <= "9":
        return ord(ch) - 48
    if ch == "A" or ch == "a":
        return 10
    return -1


def address_str(wire):
    """6 wire bytes (lowest first) -> '000000000001'."""
    return _hex_reversed(wire, 0, 6)


def _hex_reversed(b, start, n):
    s = ""
    for i in range(start + n - 1, start - 1, -1):
        s += "0123456789ABCDEF"[b[i] >> 4] + "0123456789ABCDEF"[b[i] & 15]
    return s


def _address_matches(asked, got):
    # An 0xAA byte in the request matches any byte (wildcard addressing).
    for i in range(6):
        if asked[i] != 0xAA and asked[i] != got[i]:
            return False
    return True


# ---------------------------------------------------------------------- BCD

def bcd_decode(data, signed=False):
    """Little-endian BCD -> int; with signed, the top bit of the last byte is
    the sign (DL/T 645 power and current). ValueError on a non-BCD nibble."""
    v = 0
    neg = False
    for i in range(len(data) - 1, -1, -1):
        x = data[i]
        if signed and i == len(data) - 1 and x & 0x80:
            neg = True
            x &= 0x7F
        if x >> 4 > 9 or x & 15 > 9:
            raise ValueError("not BCD: %02X" % data[i])
        v = v * 100 + (x >> 4) * 10 + (x & 15)
    return -v if neg else v


def bcd_encode(value, n, signed=False):
    """int -> n bytes of little-endian BCD (ValueError if it does not fit)."""
    out = bytearray(n)
    _bcd_into(out, 0, n, value, signed)
    return bytes(out)


def _bcd_into(buf, start, n, value, signed):
    neg = value < 0
    if neg and not signed:
        raise ValueError("negative value for an unsigned register")
    v = -value if neg else value
    for i in range(n):
        buf[start + i] = ((v // 10 % 10) << 4) | (v % 10)
        v //= 100
    if v or (signed and buf[start + n - 1] & 0x80):
        raise ValueError("%d does not fit %d BCD bytes" % (value, n))
    if neg:
        buf[start + n - 1] |= 0x80


# ------------------------------------------------------------------- frames

def encode_frame(buf, address, control, data=b"", preamble=0):
    """Write one frame into buf (a bytearray) and return its length.
    address: 6 wire bytes; data: plain bytes (the +0x33 is added here)."""
    n = len(data)
    if n > _MAX_DATA:
        raise ValueError("data longer than %d bytes" % _MAX_DATA)
    if not 0 <= preamble <= _MAX_PREAMBLE:
        raise ValueError("preamble is 0..4 x FE")
    p = 0
    for _ in range(preamble):
        buf[p] = _WAKE
        p += 1
    s = p
    buf[p] = _START
    for i in range(6):
        buf[p + 1 + i] = address[i]
    buf[p + 7] = _START
    buf[p + 8] = control
    buf[p + 9] = n
    p += _HEAD
    for i in range(n):
        buf[p] = (data[i] + _OFFSET) & 0xFF
        p += 1
    cs = 0
    for i in range(s, p):
        cs += buf[i]
    buf[p] = cs & 0xFF
    buf[p + 1] = _END
    return p + 2


def build_frame(address, control, data=b"", preamble=0):
    """A frame as bytes; address as for address_bytes()."""
    buf = bytearray(preamble + 12 + len(data))
    encode_frame(buf, address_bytes(address), control, data, preamble)
    return bytes(buf)


def read_request(address, di, preamble=0):
    """The 0x11 frame reading data identifier di (an int, e.g. 0x00010000)."""
    return build_frame(address, CTRL_READ, di.to_bytes(4, "little"), preamble)


def decode_frame(raw):
    """One complete frame -> (address str, control, plain data bytes).
    Raises MeterError when raw holds no valid frame."""
    r = FrameReader()
    r.feed(raw)
    if not r.ready:
        if r.rejected:
            raise MeterError("DL/T 645 frame with a bad checksum or end byte")
        raise MeterError("no complete DL/T 645 frame in %d bytes" % len(raw))
    return address_str(r.address()), r.control, bytes(r.data())


class FrameReader:
    """Streaming frame reader. Feed it bytes as they arrive: it skips FE
    preambles and line noise, drops frames with a bad checksum, end byte or
    impossible length and resynchronises on the next 0x68 after the bad
    frame's start. It holds one frame at a time (`ready`); call next() to
    go on. Fixed memory: one _MAX_FRAME buffer, no allocation per byte."""

    def __init__(self):
        self._buf = bytearray(_MAX_FRAME)
        self._mv = memoryview(self._buf)
        self._n = 0
        self._size = 0  # length of the ready frame; 0 while none
        self.rejected = 0  # candidate frames dropped (checksum / end byte / length)
        self.skipped = 0  # bytes skipped while hunting for 0x68 (FE included)

    @property
    def ready(self):
        return self._size > 0

    @property
    def pending(self):
        """Bytes held that may begin a frame (a reply cut off mid-way)."""
        return 0 if self._size else self._n

    def reset(self):
        self._n = 0
        self._size = 0

    def want(self):
        """How many bytes to read next without reading past this frame."""
        if self._size:
            return 0
        n = self._n
        if n < _HEAD:
            return _HEAD - n
        return self._buf[9] + 12 - n

    def feed(self, data, start=0):
        """Take bytes from data[start:] until a frame is ready or data runs
        out; return how many were taken (the rest belongs after the frame)."""
        i = start
        end = len(data)
        buf = self._buf
        while i < end and not self._size:
            buf[self._n] = data[i]
            self._n += 1
            i += 1
            self._scan()
        return i - start

    def _scan(self):
        b = self._buf
        while self._n:
            if b[0] != _START:
                k = 1
                while k < self._n and b[k] != _START:
                    k += 1
                self.skipped += k
                self._shift(k)
                continue
            n = self._n
            if n < 8:
                return
            if b[7] != _START:  # that 0x68 was noise or address data
                self.skipped += 1
                self._shift(1)
                continue
            if n < _HEAD:
                return
            length = b[9]
            if length > _MAX_DATA:
                self.rejected += 1
                self._shift(1)
                continue
            size = length + 12
            if n < size:
                return
            cs = 0
            for j in range(length + _HEAD):
                cs += b[j]
            if b[length + _HEAD] != cs & 0xFF or b[length + 11] != _END:
                self.rejected += 1
                self._shift(1)
                continue
            for j in range(_HEAD, _HEAD + length):
                b[j] = (b[j] - _OFFSET) & 0xFF
            self._size = size
            return

    def _shift(self, k):
        b = self._buf
        n = self._n - k
        for j in range(n):
            b[j] = b[j + k]
        self._n = n

    def next(self):
        """Drop the ready frame and look for another in what is held."""
        if self._size:
            self._shift(self._size)
            self._size = 0
            self._scan()

    # The ready frame (views into the reader's buffer: valid until next()).
    @property
    def control(self):
        return self._buf[8]

    def address(self):
        return self._mv[1:7]

    def data(self):
        return self._mv[_HEAD:_HEAD + self._buf[9]]


def _elapsed(now, then):
    return ((now - then + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF


def _trunc_div(v, d):
    # Toward zero, so a reverse flow reads like the forward one.
    return -(-v // d) if v < 0 else v // d


# ------------------------------------------------------------------- master

class Dlt645Meter:
    """The pile's meter over RS485 (the meter interface of CONVENTIONS.md).

    uart: write(b) / read(n) -> bytes | None; clock: ticks_ms(), sleep_ms().
    A reply must start within timeout_ms of the request, bytes may not pause
    longer than timeout_ms, and the whole reply must arrive within
    3 x timeout_ms (bounds a line that never stops babbling). Every failure
    raises MeterError; a meter that says nothing raises MeterTimeout."""

    def __init__(self, uart, address, clock, timeout_ms=500, preamble=_MAX_PREAMBLE):
        if not 0 <= preamble <= _MAX_PREAMBLE:
            raise ValueError("preamble is 0..4 x FE")
        self._uart = uart
        self._clock = clock
        self._addr = address_bytes(address)
        self.address = address_str(self._addr)
        self.timeout_ms = timeout_ms
        self._preamble = preamble
        self._tx = bytearray(_MAX_PREAMBLE + 12 + 5)  # longest request: DI + SEQ
        self._txv = memoryview(self._tx)
        self._req = bytearray(5)
        self._reqv = memoryview(self._req)
        self._rx = FrameReader()
        self._val = bytearray(_MAX_VALUE)
        self._valv = memoryview(self._val)
        self._more = False
        self._problem = None

    # The meter interface: integers in project units.
    def read_energy(self):
        """Forward active total (DI 00010000) in x10^4 kWh; 10 Wh steps."""
        return self._number(DI_ENERGY_FORWARD, 4, False) * 100

    def read_power(self):
        """Total active power (DI 02030000) in W, truncated toward zero."""
        return _trunc_div(self._number(DI_POWER_TOTAL, 3, True), 10)

    def read_voltage(self):
        """Phase A voltage (DI 02010100) in x10 V."""
        return self._number(DI_VOLTAGE_A, 2, False)

    def read_current(self):
        """Phase A current (DI 02020100) in x10 A, truncated toward zero."""
        return _trunc_div(self._number(DI_CURRENT_A, 3, True), 100)

    def read_meter_number(self):
        """Meter number (DI 04000402), 12 digits as printed."""
        v = self._sized(DI_METER_NUMBER, 6)
        return _hex_reversed(v, 0, 6)

    def read_address(self):
        """The address the meter answers 0x13 with, as '000000000001'."""
        n = self._exchange(CTRL_READ_ADDRESS, 0, -1, 0)
        if n != 6:
            raise MeterError("meter %s: address reply with %d data bytes, expected 6"
                             % (self.address, n))
        return address_str(self._val)

    @classmethod
    def discover(cls, uart, clock, timeout_ms=500, preamble=_MAX_PREAMBLE):
        """Address of the one meter on the bus (0x13 to AAAAAAAAAAAA). With
        two meters their replies collide: expect MeterError or MeterTimeout."""
        return cls(uart, WILDCARD, clock, timeout_ms, preamble).read_address()

    def read(self, di):
        """Raw value bytes of data identifier di (DI stripped, -0x33 undone,
        follow-up frames joined): a view valid until the next read."""
        req = self._req
        for i in range(4):
            req[i] = (di >> (8 * i)) & 0xFF
        n = self._exchange(CTRL_READ, 4, di, 0)
        seq = 0
        while self._more:
            seq += 1
            if seq > _MAX_FOLLOWUPS:
                raise MeterError("meter %s: DI %08X still has follow-ups after %d frames"
                                 % (self.address, di, _MAX_FOLLOWUPS))
            req[4] = seq
            n = self._exchange(CTRL_READ_MORE, 5, di, n)
        return self._valv[:n]

    def _sized(self, di, size):
        v = self.read(di)
        if len(v) != size:
            raise MeterError("meter %s: DI %08X gave %d data bytes, expected %d"
                             % (self.address, di, len(v), size))
        return v

    def _number(self, di, size, signed):
        v = self._sized(di, size)
        try:
            return bcd_decode(v, signed)
        except ValueError:
            raise MeterError("meter %s: DI %08X value %s is not BCD"
                             % (self.address, di, _hex_reversed(v, 0, size)))

    def _exchange(self, control, req_len, di, offset):
        # Send one request; put the reply's value at self._val[offset:] and
        # return the new value length.
        uart = self._uart
        for _ in range(_FLUSH_READS):  # a late reply to an earlier request
            if not uart.read(_MAX_FRAME):
                break
        size = encode_frame(self._tx, self._addr, control, self._reqv[:req_len], self._preamble)
        uart.write(self._txv[:size])
        return self._await(control, di, offset)

    def _await(self, control, di, offset):
        uart = self._uart
        clock = self._clock
        rx = self._rx
        rx.reset()
        timeout = self.timeout_ms
        t0 = last = clock.ticks_ms()
        problem = None
        while True:
            chunk = uart.read(rx.want())
            now = clock.ticks_ms()
            if chunk:
                last = now
                pos = 0
                while pos < len(chunk):
                    pos += rx.feed(chunk, pos)
                    if rx.ready:
                        n = self._accept(control, di, offset)
                        if n >= 0:
                            return n
                        if n == -2:
                            problem = self._problem
                        rx.next()
            elif _elapsed(now, last) >= timeout:
                break
            if _elapsed(now, t0) >= 3 * timeout:
                break
            if not chunk:
                clock.sleep_ms(1)
        what = _what(control, di)
        if problem:
            raise MeterError("meter %s: %s: %s" % (self.address, what, problem))
        if rx.rejected:
            raise MeterError("meter %s: %s: reply with a bad checksum (%d dropped)"
                             % (self.address, what, rx.rejected))
        if rx.pending:
            raise MeterTimeout("meter %s: %s: reply cut off after %d bytes"
                               % (self.address, what, rx.pending))
        raise MeterTimeout("meter %s: no reply to %s within %d ms"
                           % (self.address, what, timeout))

    def _accept(self, control, di, offset):
        # -> value length, -1 to ignore the frame, -2 wrong frame (see _problem)
        rx = self._rx
        c = rx.control
        if not c & CTRL_REPLY:
            return -1  # our own request echoed by a half-duplex transceiver
        got = rx.address()
        if not _address_matches(self._addr, got):
            self._problem = "reply from meter %s" % address_str(got)
            return -2
        if c & _FUNCTION != control:
            self._problem = "reply with control %02X" % c
            return -2
        data = rx.data()
        if c & CTRL_ERROR:
            code = data[0] if len(data) else 0
            e = MeterError("meter %s: %s: error reply %02X (%s)"
                           % (self.address, _what(control, di), code, describe_error(code)))
            e.code = code
            raise e
        start = 0
        end = len(data)
        if control != CTRL_READ_ADDRESS:
            if end < 4 or _di_of(data) != di:
                self._problem = "reply for DI %08X" % _di_of(data) if end >= 4 else "reply without DI"
                return -2
            start = 4
            if control == CTRL_READ_MORE:
                end -= 1  # trailing SEQ
                if end < start or data[end] != self._req[4]:
                    self._problem = "follow-up with the wrong sequence number"
                    return -2
        n = end - start
        if offset + n > _MAX_VALUE:
            raise MeterError("meter %s: %s: value longer than %d bytes"
                             % (self.address, _what(control, di), _MAX_VALUE))
        val = self._val
        for i in range(n):
            val[offset + i] = data[start + i]
        self._more = bool(c & CTRL_MORE)
        return offset + n


def _di_of(data):
    return data[0] | (data[1] << 8) | (data[2] << 16) | (data[3] << 24)


def _what(control, di):
    if control == CTRL_READ_ADDRESS:
        return "read address"
    if control == CTRL_READ_MORE:
        return "read follow-up of DI %08X" % di
    return "read DI %08X" % di
