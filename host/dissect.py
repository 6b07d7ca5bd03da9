"""A construct-based dissector for YKC frames, built from protocol/frames.py.

The frame declarations here are not a second table: every Struct is generated
from the one table (protocol.frames.each()) by mapping each field kind to a
construct type. What is written here independently of protocol/ is the field
encodings (BCD, CP56Time2a with datetime, zero-padded and reversed ASCII, the
5-byte meter readings) and the CRC (crcmod's CRC-16/MODBUS), so that the test
cross-checking this dissector against protocol.codec checks two
implementations of the wire format against each other.

    FRAME.parse(raw) / FRAME.build(...)    the whole frame, CRC checked
    parse(raw) -> Container                 (type, seq, enc, body, crc, ...)
    build(name, values, seq=0, enc=0)       the frame called `name`
    display(name, field, raw_value)         scaled value for people (and JSON)

Values are the same raw protocol integers and strings protocol.codec uses,
except that a "v" field declared with records holds a list of record dicts.
"""
import datetime
from decimal import Decimal

import construct as C
import crcmod.predefined

from protocol import frames as T
from protocol import units

__all__ = ["FRAME", "FRAME_UNCHECKED", "STRUCTS", "FIELDS", "CODES", "DissectError",
           "parse", "build", "display", "iso"]

_crc16 = crcmod.predefined.mkCrcFun("modbus")
EPOCH = datetime.datetime(2000, 1, 1)


class DissectError(ValueError):
    """The bytes are not a frame this dissector can read (one-line reason)."""


# --- field encodings ------------------------------------------------------------

class _Bcd(C.Adapter):
    """Packed BCD, most significant digit first <-> a str of 2*size digits."""

    def __init__(self, size):
        super().__init__(C.Bytes(size))
        self.size = size

    def _decode(self, obj, context, path):
        s = obj.hex()
        if not s.isdigit() and s:
            raise C.ValidationError("%s is not BCD" % obj.hex().upper(), path=path)
        return s

    def _encode(self, obj, context, path):
        s = str(obj)
        if (s and not (s.isascii() and s.isdigit())) or len(s) > 2 * self.size:
            raise C.ValidationError("%r does not fit %d BCD bytes" % (obj, self.size), path=path)
        return bytes.fromhex(s.rjust(2 * self.size, "0"))


class _Ascii(C.Adapter):
    """Zero-padded printable ASCII <-> str; `reverse`: sent back to front."""

    def __init__(self, size, reverse=False):
        super().__init__(C.Bytes(size))
        self.size = size
        self.reverse = reverse

    def _decode(self, obj, context, path):
        raw = obj[::-1] if self.reverse else obj
        if self.reverse and raw[:1] == b"\0":
            raw = raw.lstrip(b"\0")
        raw = raw.split(b"\0", 1)[0]
        if any(b < 32 or b > 126 for b in raw):
            raise C.ValidationError("%r is not printable ASCII" % raw, path=path)
        return raw.decode("ascii")

    def _encode(self, obj, context, path):
        raw = obj.encode("ascii") if isinstance(obj, str) else bytes(obj)
        if len(raw) > self.size or any(b < 32 or b > 126 for b in raw):
            raise C.ValidationError("%r: not %d printable ASCII bytes" % (obj, self.size),
                                    path=path)
        raw = raw.ljust(self.size, b"\0")
        return raw[::-1] if self.reverse else raw


class _Hex(C.Adapter):
    """Binary blob <-> upper-case hex str (left-padded with zeros when short)."""

    def __init__(self, size):
        super().__init__(C.Bytes(size))
        self.size = size

    def _decode(self, obj, context, path):
        return obj.hex().upper()

    def _encode(self, obj, context, path):
        if len(obj) > 2 * self.size:
            raise C.ValidationError("%r does not fit %d bytes" % (obj, self.size), path=path)
        return bytes.fromhex(obj.rjust(2 * self.size, "0"))


class _Cp56(C.Adapter):
    """CP56Time2a (IEC 60870-5) <-> int seconds since 2000-01-01 (local).

    Milliseconds within the minute (u16), minute (bits 0-5), hour (0-4), day
    of month (0-4; weekday bits 5-7 written 0), month (0-3), year-2000 (0-6).
    """

    def __init__(self):
        super().__init__(C.Bytes(7))

    def _decode(self, obj, context, path):
        ms = obj[0] | obj[1] << 8
        if ms >= 60000 or obj[6] & 0x7F > 99:
            raise C.ValidationError("%s is not a valid CP56Time2a" % obj.hex(), path=path)
        try:
            t = datetime.datetime(2000 + (obj[6] & 0x7F), obj[5] & 0x0F, obj[4] & 0x1F,
                                  obj[3] & 0x1F, obj[2] & 0x3F, ms // 1000)
        except ValueError:
            raise C.ValidationError("%s is not a valid CP56Time2a" % obj.hex(), path=path)
        return int((t - EPOCH).total_seconds())

    def _encode(self, obj, context, path):
        t = EPOCH + datetime.timedelta(seconds=obj)
        if not 2000 <= t.year <= 2099:
            raise C.ValidationError("%r is outside 2000..2099" % obj, path=path)
        ms = t.second * 1000
        return bytes((ms & 0xFF, ms >> 8, t.minute, t.hour, t.day, t.month, t.year - 2000))


def _uint(size):
    if size == 1:
        return C.Int8ul
    if size == 2:
        return C.Int16ul
    if size == 4:
        return C.Int32ul
    if size == 8:
        return C.Int64ul
    return C.BytesInteger(size, swapped=True)  # the 5-byte meter readings, 3-byte BMS counts


def _subcon(f):
    name, kind, size = f[0], f[1], f[2]
    if kind == "u":
        return _uint(size)
    if kind == "b":
        return _Bcd(size)
    if kind == "a":
        return _Ascii(size)
    if kind == "r":
        return _Ascii(size, reverse=True)
    if kind == "h":
        return _Hex(size)
    if kind == "t":
        return _Cp56()
    if kind == "v":
        if len(f) > 5:  # declared records
            rec = C.Struct(*[r[0] / _subcon(r) for r in f[5]])
            rsize = sum(r[2] for r in f[5])
            return C.ExprValidator(C.GreedyRange(rec), lambda obj, ctx, n=size // rsize: len(obj) <= n)
        return C.ExprValidator(C.GreedyBytes, lambda obj, ctx, n=size: len(obj) <= n)
    raise ValueError("%s: unknown field kind %r" % (name, kind))


# --- the frames, generated from the table ------------------------------------------

STRUCTS = {}   # frame name -> Struct of its body
FIELDS = {}    # frame name -> its fields, as protocol.frames.parse gives them
CODES = {}     # frame name -> code
_BY_CODE = {}  # code -> [names]
for _code, _name, _dir, _fields in T.each():
    STRUCTS[_name] = C.Struct(*[f[0] / _subcon(f) for f in _fields], C.Terminated)
    FIELDS[_name] = _fields
    CODES[_name] = _code
    _BY_CODE.setdefault(_code, []).append(_name)


def _body_of(names):
    if len(names) == 1:
        return STRUCTS[names[0]]
    # Several layouts for one code (the bill): parse takes the one that uses the
    # whole body; build the longest whose fields are all given.
    longest = sorted(names, key=lambda n: -sum(f[2] for f in FIELDS[n] if f[1] != "v"))
    return C.Select(*[STRUCTS[n] for n in longest])


BODY = C.Switch(C.this.type, {code: _body_of(names) for code, names in _BY_CODE.items()},
                default=C.Error)


def _frame(crc, body=BODY):
    return C.Struct(
        "start" / C.Const(b"\x68"),
        # The length byte counts sequence + encryption flag + type + body.
        "frame" / C.RawCopy(C.Prefixed(C.Int8ul, C.Struct(
            "seq" / C.Int16ul,
            "enc" / C.Int8ul,
            "type" / C.Int8ul,
            "body" / C.IfThenElse(C.this.enc == 0, body, C.GreedyBytes),  # 3DES: raw
        ))),
        "crc" / crc,
    )


# CRC-16/MODBUS over sequence..body (the raw copy minus its length byte), low
# byte first.
FRAME = _frame(C.Checksum(C.Int16ul, _crc16, lambda ctx: ctx.frame.data[1:]))
# The same without the CRC check (for frames accepted in tolerant mode).
FRAME_UNCHECKED = _frame(C.Int16ul)


def _size(name):
    return sum(f[2] for f in FIELDS[name] if f[1] != "v")


def name_of(code, body, n=None):
    """The frame name a parsed body belongs to (the bill has several): the
    one with its fields and, when `n` (the body's length) is given, its size
    (bill and bill156 share their field names)."""
    names = _BY_CODE[code]
    if len(names) > 1:
        keys = set(k for k in body if not k.startswith("_"))
        same = [m for m in names if keys == set(f[0] for f in FIELDS[m])]
        for m in same:
            if n is None or _size(m) == n:
                return m
        if same:
            return same[0]
    return names[0]


_BY_NAME_FRAME = {}  # frame name -> a FRAME whose body is that layout only (build)


def _frame_named(name):
    f = _BY_NAME_FRAME.get(name)
    if f is None:
        f = _BY_NAME_FRAME[name] = _frame(C.Checksum(
            C.Int16ul, _crc16, lambda ctx: ctx.frame.data[1:]), STRUCTS[name])
    return f


def parse(raw, check_crc=True):
    """A Container: type, name, seq, enc, body (a Container, or bytes if
    encrypted), crc. Raises DissectError with a one-line reason."""
    try:
        c = (FRAME if check_crc else FRAME_UNCHECKED).parse(raw)
    except C.ConstructError as e:
        raise DissectError(_reason(e))
    f = c.frame.value
    name = name_of(f.type, f.body, len(c.frame.data) - 5) if f.enc == 0 else _BY_CODE[f.type][0]
    body = f.body
    if f.enc == 0:
        body = C.Container((k, v) for k, v in f.body.items() if not k.startswith("_"))
    return C.Container(type=f.type, name=name, seq=f.seq, enc=f.enc, body=body, crc=c.crc)


def build(name, values, seq=0, enc=0):
    """The frame called `name` with field `values` (bytes)."""
    try:
        # A code with several layouts (the bill, 0x92) builds the one named.
        frame = _frame_named(name) if len(_BY_CODE[CODES[name]]) > 1 else FRAME
        return frame.build(dict(frame=dict(value=dict(seq=seq, enc=enc, type=CODES[name],
                                                      body=values))))
    except KeyError:
        raise DissectError("unknown frame name %r" % (name,))
    except C.ConstructError as e:
        raise DissectError(_reason(e))


def _reason(e):
    return " ".join(str(e).split())


# --- presentation ---------------------------------------------------------------------

# Stop reasons of the bill (0x3B 'stop_reason'), V1.6 appendix 13.1.
STOP_REASONS = {
    0x40: "finished: remote stop (app)",
    0x41: "finished: SOC reached 100%",
    0x42: "finished: energy target reached",
    0x43: "finished: amount target reached",
    0x44: "finished: time target reached",
    0x45: "finished: stopped by hand at the pile",
    0x4A: "start failed: pile control system fault (restart or self-recovery needed)",
    0x4B: "start failed: control pilot disconnected",
    0x4C: "start failed: circuit breaker tripped",
    0x4D: "start failed: meter communication lost",
    0x4E: "start failed: balance too low",
    0x4F: "start failed: charging module fault",
    0x50: "start failed: emergency stop",
    0x51: "start failed: surge protector fault",
    0x52: "start failed: BMS not ready",
    0x53: "start failed: temperature fault",
    0x54: "start failed: battery reverse connection",
    0x55: "start failed: electronic lock fault",
    0x56: "start failed: contactor did not close",
    0x57: "start failed: insulation fault",
    0x59: "start failed: BMS handshake BHM timeout",
    0x5A: "start failed: BMS/vehicle identification BRM timeout",
    0x5B: "start failed: battery parameters BCP timeout",
    0x5C: "start failed: BMS ready BRO AA timeout",
    0x5D: "start failed: battery status BCS timeout",
    0x5E: "start failed: battery requirement BCL timeout",
    0x5F: "start failed: battery state BSM timeout",
    0x60: "start failed: GB2015 battery voltage present at BHM",
    0x61: "start failed: GB2015 battery voltage differs from BCP by more than 5% at BRO AA",
    0x62: "start failed: GB2015 BRO AA fell back to BRO 00 during precharge",
    0x63: "start failed: host configuration timeout",
    0x64: "start failed: charger not ready (no CRO AA, old GB/T)",
    0x6A: "abnormal stop: system locked",
    0x6B: "abnormal stop: control pilot disconnected",
    0x6C: "abnormal stop: circuit breaker tripped",
    0x6D: "abnormal stop: meter communication lost",
    0x6E: "abnormal stop: balance exhausted",
    0x6F: "abnormal stop: AC protection",
    0x70: "abnormal stop: DC protection",
    0x71: "abnormal stop: charging module fault",
    0x72: "abnormal stop: emergency stop",
    0x73: "abnormal stop: surge protector fault",
    0x74: "abnormal stop: temperature fault",
    0x75: "abnormal stop: output fault",
    0x76: "abnormal stop: no current",
    0x77: "abnormal stop: electronic lock fault",
    0x79: "abnormal stop: total charging voltage fault",
    0x7A: "abnormal stop: total charging current fault",
    0x7B: "abnormal stop: cell charging voltage fault",
    0x7C: "abnormal stop: battery pack over temperature",
    0x7D: "abnormal stop: highest cell voltage fault",
    0x7E: "abnormal stop: highest pack over temperature",
    0x7F: "abnormal stop: BMV cell voltage fault",
    0x80: "abnormal stop: BMT pack over temperature",
    0x81: "abnormal stop: battery state fault",
    0x82: "abnormal stop: vehicle forbids charging",
    0x83: "abnormal stop: pile lost power",
    0x84: "abnormal stop: battery status BCS timeout",
    0x85: "abnormal stop: battery requirement BCL timeout",
    0x86: "abnormal stop: battery state BSM timeout",
    0x87: "abnormal stop: BMS stop BST timeout",
    0x88: "abnormal stop: BMS statistics BSD timeout",
    0x89: "abnormal stop: peer CCS timeout",
    0x90: "unknown reason",
}


_RESERVED = {"finished": "finished: other (reserved)",
             "start_failed": "start failed: other (reserved)",
             "abnormal_stop": "abnormal stop: other (reserved)"}


def stop_reason(code):
    """The meaning of a bill stop reason (reserved ranges named as such)."""
    if code in STOP_REASONS:
        return STOP_REASONS[code]
    return _RESERVED.get(units.stop_class(code), "not a V1.6 stop reason")


def iso(secs):
    return (EPOCH + datetime.timedelta(seconds=secs)).isoformat()


def _unit(f):
    """(scale, unit, offset) of a field: 'C-50' -> unit 'C', offset -50."""
    scale = f[3] if len(f) > 3 else 0
    unit = f[4] if len(f) > 4 else ""
    offset = 0
    for sign in ("-", "+"):
        i = unit.rfind(sign)
        if i > 0 and unit[i + 1:].isdigit():
            offset = int(unit[i + 1:]) * (-1 if sign == "-" else 1)
            unit = unit[:i]
            break
    return scale, unit, offset


def scaled(f, raw):
    """A scaled "u" value as an exact Decimal (int when there is no scale)."""
    scale, unit, offset = _unit(f)
    if not scale:
        return raw + offset
    return Decimal(raw).scaleb(-scale) + offset


def display(f, raw, for_json=False):
    """Field value for people: (value, unit text). Scaled numbers, BCD as digit
    strings, times as ISO 8601, blobs as hex, records as lists of dicts."""
    kind = f[1]
    if kind == "u":
        scale, unit, _ = _unit(f)
        v = scaled(f, raw)
        if for_json and isinstance(v, Decimal):
            v = float(v)
        return v, unit
    if kind == "t":
        return iso(raw), ""
    if kind == "v":
        if len(f) > 5:
            return [{r[0]: display(r, rec[r[0]], for_json)[0] for r in f[5]} for rec in raw], ""
        return bytes(raw).hex().upper(), ""
    return raw, ""
