# Encode and decode YKC frames from the table in protocol/frames.py, and read
# them out of a byte stream (serial or TCP).
#
#   68 | len | seq(2) | enc | type | body | crc16 (low byte first)
#
# `len` counts seq + enc + type + body; the CRC covers seq..body.
import struct

from protocol.crc import crc16
from protocol.errors import BadCRC, BadLength, FieldError, FrameError, UnknownType
from protocol import fields as F
from protocol.frames import FRAMES

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

START = const(0x68)
MAX_BODY = const(251)          # length byte 255 - seq(2) - enc - type
MAX_FRAME = const(MAX_BODY + 8)
_HEADER = const(6)             # 68 len seq seq enc type


class Layout:
    """One frame layout, compiled from the table: fields with their offsets."""
    __slots__ = ("code", "name", "direction", "fields", "size", "variable")

    def __init__(self, code, name, direction, fields):
        self.code = code
        self.name = name
        self.direction = direction
        out = []
        off = 0
        variable = False
        for f in fields:
            out.append((f[0], f[1], f[2], off))
            if f[1] == "v":
                variable = True
            else:
                off += f[2]
        self.fields = tuple(out)
        self.size = off  # fixed part; a "v" field adds 0..its size
        self.variable = variable

    def fits(self, n):
        if self.variable:
            return self.size <= n <= self.size + self.fields[-1][2]
        return n == self.size


LAYOUTS = {}   # code -> tuple of Layout (most have one)
BY_NAME = {}   # name -> Layout
for _c, _n, _d, _f in FRAMES:
    _l = Layout(_c, _n, _d, _f)
    LAYOUTS[_c] = LAYOUTS.get(_c, ()) + (_l,)
    BY_NAME[_n] = _l
del _c, _n, _d, _f, _l


class Frame:
    """A decoded frame. `fields` is None for an encrypted (3DES) body."""
    __slots__ = ("code", "name", "seq", "enc", "body", "fields", "crc_swapped")

    def __init__(self, code, name, seq, enc, body, fields, crc_swapped=False):
        self.code = code
        self.name = name
        self.seq = seq
        self.enc = enc
        self.body = body
        self.fields = fields
        self.crc_swapped = crc_swapped

    def __repr__(self):
        return "Frame(0x%02X %s seq=%04X %r)" % (self.code, self.name, self.seq, self.fields)


def layout_for(code, n):
    """The layout of frame `code` whose body is `n` bytes long."""
    layouts = LAYOUTS.get(code)
    if layouts is None:
        raise UnknownType("unknown frame type 0x%02X" % code)
    for l in layouts:
        if l.fits(n):
            return l
    raise BadLength("%s (0x%02X): body of %d bytes, expected %s"
                    % (layouts[0].name, code, n, "/".join([str(l.size) for l in layouts])))


def _pick(code, values):
    layouts = LAYOUTS.get(code)
    if layouts is None:
        raise UnknownType("unknown frame type 0x%02X" % code)
    if len(layouts) == 1:
        return layouts[0]
    # Several layouts (the bill): the one whose every field is given, the
    # longest first, so a bill with deep-valley figures takes the 5-period form.
    best = None
    for l in layouts:
        ok = True
        for f in l.fields:
            if f[0] not in values:
                ok = False
                break
        if ok and (best is None or l.size > best.size):
            best = l
    if best is None:
        return layouts[0]  # let encode_body name the missing field
    return best


def encode_body(layout, values):
    n = layout.size
    if layout.variable:
        n += len(values.get(layout.fields[-1][0], b""))
    buf = bytearray(n)
    for name, kind, size, off in layout.fields:
        try:
            v = values[name]
        except KeyError:
            raise FieldError("%s: field %s is missing" % (layout.name, name))
        if kind == "u":
            if not isinstance(v, int) or v < 0 or v >> (8 * size):
                raise FieldError("%s.%s: %r does not fit an unsigned %d-byte int"
                                 % (layout.name, name, v, size))
            for i in range(size):
                buf[off + i] = (v >> (8 * i)) & 0xFF
        elif kind == "b":
            F.bcd_encode(buf, off, size, v, name)
        elif kind == "a":
            F.ascii_encode(buf, off, size, v, name)
        elif kind == "h":
            F.hex_encode(buf, off, size, v, name)
        elif kind == "t":
            if not isinstance(v, int):
                raise FieldError("%s.%s: time must be int seconds, got %r" % (layout.name, name, v))
            F.cp56_encode(buf, off, v, name)
        else:  # "v"
            if len(v) > size:
                raise FieldError("%s.%s: %d bytes, at most %d" % (layout.name, name, len(v), size))
            buf[off:off + len(v)] = v
    return buf


def decode_body(layout, body):
    out = {}
    for name, kind, size, off in layout.fields:
        if kind == "u":
            if size == 1:
                v = body[off]
            else:
                v = int.from_bytes(bytes(body[off:off + size]), "little")
        elif kind == "b":
            v = F.bcd_decode(body, off, size, name)
        elif kind == "a":
            v = F.ascii_decode(body, off, size, name)
        elif kind == "h":
            v = F.hex_decode(body, off, size, name)
        elif kind == "t":
            v = F.cp56_decode(body, off, name)
        else:
            v = bytes(body[off:])
        out[name] = v
    return out


def encode(code, values, seq=0, enc=0):
    """The whole frame (bytes) for frame type `code` (int) or name (str)."""
    if isinstance(code, str):
        layout = BY_NAME.get(code)
        if layout is None:
            raise UnknownType("unknown frame name %r" % code)
    else:
        layout = _pick(code, values)
    body = encode_body(layout, values)
    return wrap(layout.code, body, seq, enc)


def wrap(code, body, seq=0, enc=0):
    """Frame an already encoded body: start, length, seq, flag, type, CRC."""
    n = len(body)
    if n > MAX_BODY:
        raise BadLength("body of %d bytes, at most %d" % (n, MAX_BODY))
    buf = bytearray(n + 8)
    buf[0] = START
    buf[1] = n + 4
    buf[2] = seq & 0xFF
    buf[3] = (seq >> 8) & 0xFF
    buf[4] = enc
    buf[5] = code
    buf[6:6 + n] = body
    c = crc16(memoryview(buf)[2:6 + n])
    buf[6 + n] = c & 0xFF
    buf[7 + n] = c >> 8
    return bytes(buf)


def decode(frame, tolerant=False):
    """Decode one complete frame (bytes). Raises a FrameError subclass."""
    n = len(frame)
    if n < 8 or frame[0] != START:
        raise FrameError("not a frame: %d bytes, first byte %s"
                         % (n, "%02X" % frame[0] if n else "none"))
    if frame[1] + 4 != n or frame[1] < 4:
        raise BadLength("length byte %d does not match a %d-byte frame" % (frame[1], n))
    return _decode(frame, 0, n, tolerant)


def _decode(buf, i, n, tolerant):
    # buf[i:i+n] is one frame whose envelope length is already checked.
    mv = memoryview(buf)
    got = buf[i + n - 2] | (buf[i + n - 1] << 8)
    want = crc16(mv[i + 2:i + n - 2])
    swapped = False
    if got != want:
        if tolerant and got == ((want >> 8) | ((want & 0xFF) << 8)):
            swapped = True
        else:
            raise BadCRC("CRC %04X, computed %04X (type 0x%02X)" % (got, want, buf[i + 5]))
    code = buf[i + 5]
    seq = buf[i + 2] | (buf[i + 3] << 8)
    enc = buf[i + 4]
    body = bytes(mv[i + _HEADER:i + n - 2])
    layout = layout_for(code, len(body))
    values = None if enc else decode_body(layout, body)
    return Frame(code, layout.name, seq, enc, body, values, swapped)


class FrameReader:
    """Finds frames in a byte stream (serial or TCP).

    `push(data)` returns, in stream order, a Frame for each good frame and a
    FrameError instance for each bad one; the reader resynchronises on the
    next 0x68 and keeps going. It never holds more than one frame's worth of
    bytes between calls. `tolerant=True` accepts byte-swapped CRCs (some real
    piles send them) and counts them in `swapped_crc`.
    """

    def __init__(self, tolerant=False):
        self.tolerant = tolerant
        self._buf = bytearray()
        self.frames = 0
        self.errors = 0
        self.skipped = 0       # garbage bytes dropped while hunting for 0x68
        self.swapped_crc = 0

    def push(self, data):
        buf = self._buf
        buf.extend(data)
        out = []
        i = 0
        end = len(buf)
        while i < end:
            if buf[i] != START:
                i += 1
                self.skipped += 1
                continue
            if end - i < 2:
                break
            ln = buf[i + 1]
            if ln < 4:
                out.append(BadLength("length byte %d is below the minimum 4" % ln))
                self.errors += 1
                i += 1
                continue
            n = ln + 4
            if end - i < n:
                break
            try:
                f = _decode(buf, i, n, self.tolerant)
            except FrameError as e:
                self.errors += 1
                out.append(e)
                # A bad CRC means the boundary is in doubt: rescan from the
                # next byte so a good frame hidden behind a false start is found.
                i += 1 if isinstance(e, BadCRC) else n
                continue
            if f.crc_swapped:
                self.swapped_crc += 1
            self.frames += 1
            out.append(f)
            i += n
        # Keep only the unfinished tail (at most one frame).
        self._buf = buf[i:] if i else buf
        return out

    def pending(self):
        return len(self._buf)


def reply_seq(request):
    """The sequence to put in a reply: the request's two bytes, unchanged."""
    return request.seq
