# Encode and decode YKC frames from the table in protocol/frames.py, and read
# them out of a byte stream (serial or TCP).
#
#   68 | len | seq(2) | enc | type | body | crc16 (low byte first)
#
# `len` counts seq + enc + type + body; the CRC covers seq..body.
#
# Layouts are compiled on demand (protocol/layout.py) and the stream reader
# lives in protocol/reader.py; both are re-exported here, so callers need only
# this module. (They are separate modules to keep the compile-time heap peak
# of each small on a board that imports .py files.)
import struct

import protocol.frames  # noqa: F401  (first, on a clean heap: its table is the largest block)
from protocol.crc import crc16
from protocol.errors import BadCRC, BadLength, FieldError, FrameError, UnknownType  # noqa: F401
from protocol import fields as F
from protocol import layout as L
from protocol.layout import Layout, layout_for, layout_named, layouts  # noqa: F401

from protocol import const

START = const(0x68)
MAX_BODY = const(251)          # length byte 255 - seq(2) - enc - type
MAX_FRAME = const(MAX_BODY + 8)
_HEADER = const(6)             # 68 len seq seq enc type

# Field kinds as byte values (as in protocol/layout.py).
_U = const(0x75)  # u
_B = const(0x62)  # b
_A = const(0x61)  # a
_R = const(0x72)  # r
_H = const(0x68)  # h
_T = const(0x74)  # t


class Frame:
    """A decoded frame. `fields` is None for an encrypted (3DES) body.
    `problems`: what a lenient reading gave way on (protocol/lenient.py,
    "class: detail" strings), None for a strict reading."""
    __slots__ = ("code", "name", "seq", "enc", "body", "fields", "crc_swapped", "problems")

    def __init__(self, code, name, seq, enc, body, fields, crc_swapped=False, problems=None):
        self.code = code
        self.name = name
        self.seq = seq
        self.enc = enc
        self.body = body
        self.fields = fields
        self.crc_swapped = crc_swapped
        self.problems = problems

    def __repr__(self):
        return "Frame(0x%02X %s seq=%04X %r)" % (self.code, self.name, self.seq, self.fields)


def _body_size(layout, values):
    n = layout.size
    if layout.variable:
        v = values.get(layout.names[-1], b"")
        if len(v) > layout.sizes[-1]:
            raise FieldError("%s.%s: %d bytes, at most %d"
                             % (layout.name, layout.names[-1], len(v), layout.sizes[-1]))
        n += len(v)
    return n


def _fill(layout, values, buf, off):
    # Writes the body for `values` into buf[off:]; names the field at fault.
    names = layout.names
    kinds = layout.kinds
    sizes = layout.sizes
    for i in range(len(names)):
        name = names[i]
        k = kinds[i]
        size = sizes[i]
        try:
            v = values[name]
        except KeyError:
            raise FieldError("%s: field %s is missing" % (layout.name, name))
        if k == _U:
            if not isinstance(v, int) or v < 0 or v >> (8 * size):
                raise FieldError("%s.%s: %r does not fit an unsigned %d-byte int"
                                 % (layout.name, name, v, size))
            if size == 1:
                buf[off] = v
            else:
                buf[off:off + size] = v.to_bytes(size, "little")
        elif k == _B:
            F.bcd_encode(buf, off, size, v, name)
        elif k == _H:
            F.hex_encode(buf, off, size, v, name)
        elif k == _T:
            if not isinstance(v, int):
                raise FieldError("%s.%s: time must be int seconds, got %r" % (layout.name, name, v))
            F.cp56_encode(buf, off, v, name)
        elif k == _A or k == _R:
            F.ascii_encode(buf, off, size, v, name, k == _R)
        else:  # "v", last; its length was checked by _body_size
            size = len(v)
            buf[off:off + size] = v
        off += size


def fit(name, values):
    """Clamp, in place, the unsigned int fields of frame `name` whose value
    is out of the field's range (below 0: 0; past its bytes: the largest
    value). Returns the names clamped, [] if none. For reports whose fields
    are measurements or estimates (0x13), so that a value no field can hold
    never stops the loop that drives the contactor; never for money fields
    of a bill, which the encoder refuses instead."""
    layout = layout_named(name)
    names = layout.names
    kinds = layout.kinds
    sizes = layout.sizes
    out = []
    for i in range(len(names)):
        if kinds[i] != _U:
            continue
        v = values.get(names[i])
        if not isinstance(v, int):
            continue
        top = (1 << (8 * sizes[i])) - 1
        if v < 0 or v > top:
            values[names[i]] = 0 if v < 0 else top
            out.append(names[i])
    return out


def encode_body(layout, values):
    buf = bytearray(_body_size(layout, values))
    _fill(layout, values, buf, 0)
    return buf


def decode_body(layout, body):
    vals = struct.unpack_from(layout._fmt, body, 0)
    names = layout.names
    out = dict(zip(names, vals))
    kinds = layout.kinds
    for i in layout._conv:
        raw = vals[i]
        k = kinds[i]
        name = names[i]
        if k == _B:
            out[name] = F.bcd_decode(raw, 0, len(raw), name)
        elif k == _H:
            out[name] = F.hex_decode(raw, 0, len(raw), name)
        elif k == _T:
            out[name] = F.cp56_decode(raw, 0, name)
        elif k == _A or k == _R:
            out[name] = F.ascii_decode(raw, 0, len(raw), name, k == _R)
        else:  # an unsigned int of 3, 5, 6 or 7 bytes
            out[name] = int.from_bytes(raw, "little")
    if layout.variable:
        out[names[-1]] = bytes(body[layout.size:])
    return out


def encode(code, values, seq=0, enc=0):
    """The whole frame (bytes) for frame type `code` (int) or name (str)."""
    if isinstance(code, str):
        layout = layout_named(code)
    else:
        layout = L.pick(code, values)
    n = _body_size(layout, values)
    buf = bytearray(n + 8)
    _fill(layout, values, buf, _HEADER)
    return _envelope(buf, layout.code, n, seq, enc)


def wrap(code, body, seq=0, enc=0):
    """Frame an already encoded body: start, length, seq, flag, type, CRC."""
    n = len(body)
    if n > MAX_BODY:
        raise BadLength("body of %d bytes, at most %d" % (n, MAX_BODY))
    buf = bytearray(n + 8)
    buf[_HEADER:_HEADER + n] = body
    return _envelope(buf, code, n, seq, enc)


def _envelope(buf, code, n, seq, enc):
    if n > MAX_BODY:
        raise BadLength("body of %d bytes, at most %d" % (n, MAX_BODY))
    buf[0] = START
    buf[1] = n + 4
    buf[2] = seq & 0xFF
    buf[3] = (seq >> 8) & 0xFF
    buf[4] = enc
    buf[5] = code
    c = crc16(memoryview(buf)[2:6 + n])
    buf[6 + n] = c & 0xFF
    buf[7 + n] = c >> 8
    return bytes(buf)


def decode(frame, tolerant=False, lenient=False):
    """Decode one complete frame (bytes). Raises a FrameError subclass.
    tolerant: a byte-swapped CRC is accepted (Frame.crc_swapped).
    lenient: fields that do not identify money are read as protocol/lenient.py
    says, with Frame.problems naming what was given way on."""
    n = len(frame)
    if n < 8 or frame[0] != START:
        raise FrameError("not a frame: %d bytes, first byte %s"
                         % (n, "%02X" % frame[0] if n else "none"))
    if frame[1] + 4 != n or frame[1] < 4:
        raise BadLength("length byte %d does not match a %d-byte frame" % (frame[1], n))
    return _decode(memoryview(frame), 0, n, tolerant, lenient)


def _decode(mv, i, n, tolerant, lenient=False):
    # mv[i:i+n] is one frame whose envelope length is already checked.
    got = mv[i + n - 2] | (mv[i + n - 1] << 8)
    want = crc16(mv[i + 2:i + n - 2])
    swapped = False
    if got != want:
        if tolerant and got == ((want >> 8) | ((want & 0xFF) << 8)):
            swapped = True
        else:
            e = BadCRC("CRC %04X, computed %04X (type 0x%02X)" % (got, want, mv[i + 5]))
            e.raw = bytes(mv[i:i + n])      # the bytes as received, for diagnosis
            raise e
    code = mv[i + 5]
    body = bytes(mv[i + _HEADER:i + n - 2])
    seq = mv[i + 2] | (mv[i + 3] << 8)
    enc = mv[i + 4]
    problems = None
    try:
        if lenient:
            from protocol.lenient import decode_body as lenient_body, layout_for as lenient_layout
            problems = []
            layout = lenient_layout(code, len(body))
            values = None if enc else lenient_body(layout, body, problems)
        else:
            layout = layout_for(code, len(body))
            values = None if enc else decode_body(layout, body)
    except FrameError as e:
        # The CRC is good: the bytes are what the pile sent, only our reading
        # of them failed (a length or a field we do not expect). The error
        # carries the frame (fields None) so that a bill is still kept raw.
        e.frame = Frame(code, "0x%02X" % code, seq, enc, body, None, swapped)
        raise
    return Frame(code, layout.name, seq, enc, body, values, swapped, problems)


def reply_seq(request):
    """The sequence to put in a reply: the request's two bytes, unchanged."""
    return request.seq


# --- repeated records inside a "v" field (offline card lists, VIN list) ------

def record_layout(frame, field):
    """The Layout of one record of field `field` of frame `frame` (by name)."""
    from protocol.extras import record_layout
    return record_layout(frame, field)


def pack_records(frame, field, items):
    """The bytes of field `field` of `frame` holding the record dicts `items`."""
    from protocol.extras import pack_records
    return pack_records(frame, field, items)


def unpack_records(frame, field, blob):
    """The list of record dicts held in field `field` of `frame`."""
    from protocol.extras import unpack_records
    return unpack_records(frame, field, blob)


def __getattr__(name):
    # LAYOUTS (code -> tuple of Layout) and BY_NAME (name -> Layout): mappings
    # over the whole table, for tools; loaded on first use.
    if name == "LAYOUTS" or name == "BY_NAME":
        from protocol import extras
        return getattr(extras, name)
    raise AttributeError(name)


from protocol.reader import FrameReader  # noqa: E402,F401  (it uses _decode above)
