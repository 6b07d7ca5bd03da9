"""The host's fast path of the YKC codec (CPython only).

The firmware has one codec, protocol/codec.py, and so has everyone else: this
module is not a second one. It compiles each layout of the one frame table
(protocol/frames.py, through protocol.layout) into a precompiled
`struct.Struct` over the whole frame and a generated function per layout
and direction, so that decoding or encoding a frame is one `unpack_from` /
`pack`, one hex conversion, a C CRC and straight-line code: no Python call
per field (a few C string methods for the ASCII fields remain).

It handles only the plain, strict case: a frame with a good CRC, no
encryption, a body one layout fits, BCD digits, printable ASCII then NULs,
valid CP56Time2a; values of the types and full lengths the bridge uses.
Such a frame reads the same strictly and leniently (protocol/lenient.py),
but for Frame.problems ([] when lenient). Anything else -- any frame or
value the fast path is not sure of -- goes to protocol.codec, which then
decides (reads it leniently, or raises its own error with its own message).
So the result is always the shared codec's, byte for byte; tests/test_fastcodec.py
checks that with hypothesis over every frame type, and that the fast path
really handled the plain cases (no silent fallback).

    decode(frame, tolerant=False, lenient=False)  as protocol.codec.decode
    encode(code, values, seq=0, enc=0)            as protocol.codec.encode
    FrameReader(tolerant=False, lenient=False)    protocol.codec.FrameReader
                                                  on this decoder

CRC: crcmod's C extension (a dependency already) when it is there and agrees
with the table CRC of protocol.crc on the check vectors; else protocol.crc.
"""
import struct
from binascii import unhexlify

from protocol import codec
from protocol import fields as F
from protocol import layout as L
from protocol.codec import Frame
from protocol.crc import crc16 as table_crc16
from protocol.reader import FrameReader as _SharedReader

__all__ = ["decode", "encode", "FrameReader", "crc16", "C_CRC", "stats"]


# --- CRC ------------------------------------------------------------------------

def _c_crc():
    # (C function, table) of crcmod's CRC-16/MODBUS, called as fn(data,
    # 0xFFFF, table) without crcmod's Python wrapper; None when crcmod has no
    # C extension here or its result differs from the table CRC of
    # protocol.crc on any check vector.
    from protocol.crc import _crc16_bytewise as table
    try:
        import crcmod
        from crcmod import _crcfunext  # noqa: F401  (the C extension, not the pure-Python one)
    except ImportError:
        return None
    f = crcmod.mkCrcFun(0x18005, initCrc=0xFFFF, rev=True, xorOut=0)
    try:
        init, tab, fn = f.__defaults__      # crcfun(data, crc=init, table=..., fun=...)
    except (TypeError, ValueError):
        return None
    if init != 0xFFFF or getattr(fn, "__module__", None) != "crcmod._crcfunext":
        return None
    for v in (b"", b"123456789", bytes(range(256)), b"\x68" * 7, b"\x00\xff" * 33):
        if fn(v, 0xFFFF, tab) != table(v) or f(v) != table(v):
            return None
    return fn, tab


_cfun = _c_crc()
C_CRC = _cfun is not None
if C_CRC:
    _CFN, _CTAB = _cfun

    def crc16(data, crc=0xFFFF):
        """CRC-16/MODBUS (crcmod's C extension)."""
        return _CFN(data, crc, _CTAB)
else:
    crc16 = table_crc16
    _CFN, _CTAB = (lambda data, crc, tab: table_crc16(data, crc)), None


# --- tables for CP56Time2a --------------------------------------------------------

# Indexed by (year byte & 0x7F) << 4 | (month byte & 0x0F), as the shared
# codec masks them: the days in that month (0: no such month / year past 99),
# and the days from 2000-01-01 to the day before its first.
_ML = [0] * 2048
_D0 = [0] * 2048
for _y in range(100):
    for _m in range(1, 13):
        _ML[_y << 4 | _m] = F._MDAYS[_m - 1] + (1 if _m == 2 and _y % 4 == 0 else 0)
        _D0[_y << 4 | _m] = F.to_secs(2000 + _y, _m, 1) // 86400 - 1
_ML = tuple(_ML)
_D0 = tuple(_D0)
_END = F._END
# Day number since 2000-01-01 -> its day, month and year - 2000 as 3 bytes
# (110 KB), in calendar order; checked against protocol.fields.to_civil by
# tests/test_fastcodec.py.
_CIV = b"".join([bytes((_d, _m, _y)) for _y in range(100) for _m in range(1, 13)
                 for _d in range(1, _ML[_y << 4 | _m] + 1)])
del _y, _m

# Any slot of protocol.codec.Frame besides the seven set by the decoders
# below gets the value Frame.__init__ gives it by default (a slot added to
# the shared Frame later is filled the same way here).
_SET = ("code", "name", "seq", "enc", "body", "fields", "crc_swapped", "problems")
_PROBLEMS = "problems" in Frame.__slots__
_TEMPLATE = Frame(0, "", 0, 0, b"", None)
_MORE_SLOTS = tuple(k for k in Frame.__slots__ if k not in _SET and hasattr(_TEMPLATE, k))
_MORE_VALUES = tuple(getattr(_TEMPLATE, k) for k in _MORE_SLOTS)

_PRINTABLE = bytes(range(32, 127))
_CRC2 = struct.Struct("<H")
_UPARTS = {1: ("B",), 2: ("H",), 4: ("I",), 8: ("Q",), 3: ("H", "B"), 5: ("I", "B"),
           6: ("I", "H"), 7: ("I", "H", "B")}
_USHIFT = {"B": 8, "H": 16, "I": 32, "Q": 64}

stats = {"fallback": 0}  # calls passed on to the shared codec (benchmark, tests)


# --- code generation ----------------------------------------------------------------

def _runs(layout, kinds):
    # Contiguous runs (start offset, end offset) of fields of the given kinds.
    out = []
    off = 0
    for i in range(len(layout.names)):
        k = chr(layout.kinds[i])
        n = layout.sizes[i]
        if k == "v":
            break
        if k in kinds:
            if out and out[-1][1] == off:
                out[-1][1] = off + n
            else:
                out.append([off, off + n])
        off += n
    return out


def _compile_decoder(layout):
    """def dec(buf, i, lenient): the Frame of the plain frame at buf[i:], or
    None. A plain frame reads the same strictly and leniently (but for
    Frame.problems: None, or [] when lenient)."""
    names, kinds, sizes = layout.names, layout.kinds, layout.sizes
    variable = layout.variable
    fmt = "<BBHBB"
    src = []
    vals = []       # (name, expression)
    ascii_parts = []
    lenient_checks = []
    times = []
    j = 5           # index in the unpacked tuple
    off = 0         # offset in the body
    need_hex = need_upper = False
    for idx in range(len(names)):
        name, k, n = names[idx], chr(kinds[idx]), sizes[idx]
        a = 2 * (6 + off)
        if k == "u":
            parts = _UPARTS[n]
            fmt += "".join(parts)
            expr = "v[%d]" % j
            shift = _USHIFT[parts[0]]
            for p in parts[1:]:
                expr += " | v[%d] << %d" % (j + 1, shift)
                shift += _USHIFT[p]
                j += 1
            vals.append((name, expr))
            j += 1
        elif k == "b":
            fmt += "%dx" % n
            need_hex = True
            vals.append((name, "hx[%d:%d]" % (a, a + 2 * n)))
        elif k == "h":
            fmt += "%dx" % n
            need_hex = need_upper = True
            vals.append((name, "HX[%d:%d]" % (a, a + 2 * n)))
        elif k == "a" or k == "r":
            fmt += "%ds" % n
            p = "p%d" % idx
            w = "w%d" % idx
            if k == "a":
                src.append("%s = v[%d]; %s = %s.split(b'\\0', 1)[0]" % (w, j, p, w))
            else:
                src.append("%s = v[%d][::-1]; %s = %s.lstrip(b'\\0').split(b'\\0', 1)[0]"
                           % (w, j, p, w))
            ascii_parts.append(p)
            # A lenient reading (protocol/lenient.py) also skips padding at
            # the front and spaces at either end: the same text only when the
            # field is the text, then NULs, and the text has no edge space.
            lenient_checks.append("%s.strip(b'\\0') == %s and %s[:1] != b' ' and %s[-1:] != b' '"
                                  % (w, p, p, p))
            vals.append((name, "%s.decode()" % p))
            j += 1
        elif k == "t":
            fmt += "HBBBBB"
            t = "t%d" % idx
            src.append("%sm = v[%d]; %si = v[%d] & 63; %sh = v[%d] & 31; %sd = v[%d] & 31; "
                       "%sk = (v[%d] & 127) << 4 | v[%d] & 15"
                       % (t, j, t, j + 1, t, j + 2, t, j + 3, t, j + 5, j + 4))
            times.append(t)
            vals.append((name, "(((_D0[%sk] + %sd) * 24 + %sh) * 60 + %si) * 60 + %sm // 1000"
                         % (t, t, t, t, t)))
            j += 6
        elif k == "v":
            vals.append((name, "bytes(buf[i + %d:i + N - 2])" % (6 + off)))
            break
        else:
            raise ValueError("%s: unknown kind %r" % (layout.name, k))
        off += n
    if not variable:
        fmt += "H"
    S = struct.Struct(fmt)
    body = []
    if variable:
        body.append("N = buf[i + 1] + 4")
        body.append("v = _S.unpack_from(buf, i)")
        body.append("if v[3] or buf[i + N - 2] | buf[i + N - 1] << 8 != _crc(buf[i + 2:i + N - 2], 65535, _T): return None")
    else:
        body.append("N = %d" % (layout.size + 8))
        body.append("v = _S.unpack_from(buf, i)")
        body.append("if v[3] or v[-1] != _crc(buf[i + 2:i + %d], 65535, _T): return None" % (layout.size + 6))
    if need_hex:
        body.append("hx = buf[i:i + N].hex()")
        if need_upper:
            body.append("HX = hx.upper()")
        digits = " and ".join("hx[%d:%d].isdigit()" % (2 * (6 + s), 2 * (6 + e))
                              for s, e in _runs(layout, "b"))
        if digits:
            body.append("if not (%s): return None" % digits)
    body.extend(src)
    if ascii_parts:
        body.append("if (%s).translate(None, _PR): return None" % " + ".join(ascii_parts))
    if lenient_checks:
        body.append("if lenient and not (%s): return None" % " and ".join(lenient_checks))
    for t in times:
        body.append("if not (%sm < 60000 and %si < 60 and %sh < 24 and 0 < %sd <= _ML[%sk]): return None"
                    % (t, t, t, t, t))
    # The Frame without a call to its __init__: its slots set here, as
    # protocol.codec.Frame.__init__ sets them.
    body.append("f = _new(_Frame)")
    body.append("f.code = %d; f.name = %r; f.seq = v[2]; f.enc = 0; f.crc_swapped = False"
                % (layout.code, layout.name))
    body.append("f.body = bytes(buf[i + 6:i + N - 2])")
    body.append("f.fields = {%s}" % ", ".join("%r: %s" % nv for nv in vals))
    for k in range(len(_MORE_SLOTS)):
        body.append("f.%s = _more[%d]" % (_MORE_SLOTS[k], k))
    if _PROBLEMS:
        # what a lenient reading gave way on: nothing, for a plain frame
        body.append("f.problems = [] if lenient else None")
    body.append("return f")
    code = "def dec(buf, i, lenient):\n" + "".join("    %s\n" % line for line in body)
    env = {"_S": S, "_crc": _CFN, "_T": _CTAB, "_PR": _PRINTABLE, "_ML": _ML, "_D0": _D0,
           "_new": Frame.__new__, "_Frame": Frame, "_more": _MORE_VALUES}
    exec(compile(code, "<fastcodec %s decode>" % layout.name, "exec"), env)
    return env["dec"]


def _compile_encoder(layout):
    """def enc(values, seq, enc): the frame's bytes, or None (not plain)."""
    names, kinds, sizes = layout.names, layout.kinds, layout.sizes
    fmt = "<BBHBB"
    get = []
    checks = []
    hexparts = []   # (local, size) of "b" and "h" fields, in order
    bcd = []
    ascii_parts = []
    args = []
    pre = []
    vfield = None
    hoff = 0
    for idx in range(len(names)):
        name, k, n = names[idx], chr(kinds[idx]), sizes[idx]
        x = "x%d" % idx
        if k == "v":
            vfield = (name, n)
            break
        get.append("%s = values[%r]" % (x, name))
        if k == "u":
            parts = _UPARTS[n]
            fmt += "".join(parts)
            # The last part takes the high bits unmasked: a value too large
            # (or negative) makes struct refuse it, and the shared codec answers.
            shift = 0
            for q in range(len(parts)):
                bits = _USHIFT[parts[q]]
                if q == len(parts) - 1:
                    args.append("%s >> %d" % (x, shift) if shift else x)
                else:
                    args.append("%s >> %d & %d" % (x, shift, (1 << bits) - 1)
                                if shift else "%s & %d" % (x, (1 << bits) - 1))
                shift += bits
        elif k == "b" or k == "h":
            fmt += "%ds" % n
            checks.append("len(%s) == %d" % (x, 2 * n))
            hexparts.append(x)
            if k == "b":
                bcd.append(x)
            args.append("B[%d:%d]" % (hoff, hoff + n))
            hoff += n
        elif k == "a" or k == "r":
            fmt += "%ds" % n
            r = "r%d" % idx
            pre.append("%s = %s.encode()" % (r, x))
            checks.append("len(%s) <= %d" % (r, n))
            ascii_parts.append(r)
            args.append(r if k == "a" else "%s[::-1].rjust(%d, b'\\0')" % (r, n))
        elif k == "t":
            fmt += "HBB3s"
            checks.append("0 <= %s < %d" % (x, _END))
            args.append("%s %% 60 * 1000" % x)
            args.append("%s // 60 %% 60" % x)
            args.append("%s // 3600 %% 24" % x)
            args.append("_CIV[%s // 86400 * 3:%s // 86400 * 3 + 3]" % (x, x))
        else:
            raise ValueError("%s: unknown kind %r" % (layout.name, k))
    S = struct.Struct(fmt)
    body = list(get)
    body.extend(pre)
    if checks:
        body.append("if not (%s): return None" % " and ".join(checks))
    # '' + ...: a bytes value is not a digit string (nor hex) for the shared codec
    if bcd:
        body.append("D = '' + %s" % " + ".join(bcd))
        body.append("if not D.isdigit(): return None")
    if hexparts:
        body.append("B = _unhex(%s)" % ("D" if bcd == hexparts else "'' + " + " + ".join(hexparts)))
    if ascii_parts:
        body.append("if (%s).translate(None, _PR): return None" % " + ".join(ascii_parts))
    head = "0x68, %s, seq & 0xFFFF, enc, %d" % ("%d + w" % (layout.size + 4) if vfield
                                                else "%d" % (layout.size + 4), layout.code)
    if vfield:
        body.insert(0, "vv = values[%r]" % vfield[0])
        body.insert(1, "if type(vv) is not bytes or len(vv) > %d: return None" % vfield[1])
        body.insert(2, "w = len(vv)")
        body.append("p = _S.pack(%s) + vv" % ", ".join([head] + args))
    else:
        body.append("p = _S.pack(%s)" % ", ".join([head] + args))
    body.append("return p + _C2(_crc(p[2:], 65535, _T))")
    code = "def enc(values, seq, enc):\n" + "".join("    %s\n" % line for line in body)
    env = {"_S": S, "_crc": _CFN, "_T": _CTAB, "_PR": _PRINTABLE, "_CIV": _CIV, "_unhex": unhexlify,
           "_C2": _CRC2.pack}
    exec(compile(code, "<fastcodec %s encode>" % layout.name, "exec"), env)
    return env["enc"]


# --- the tables: (code << 9 | frame length) -> decoder; code or name -> encoder --------

_DEC = {}
_ENC = {}


def _pick(ls, encs):
    # Several layouts under one code (the bill): as protocol.layout.pick, the
    # longest whose every field is given. Checked by the fields a layout has
    # beyond the next shorter one (the bill5's deep_* five): its encoder then
    # needs all the others too, and a missing one (KeyError) sends the call to
    # the shared codec, which picks or names the missing field itself.
    order = sorted(range(len(ls)), key=lambda k: -ls[k].size)
    steps = []
    for j, k in enumerate(order):
        shorter = set().union(*[ls[o].names for o in order[j + 1:]]) if j + 1 < len(order) else set()
        steps.append((frozenset(n for n in ls[k].names if n not in shorter), encs[k]))

    def enc(values, seq, e):
        have = values.keys()
        for extra, fn in steps:
            if have >= extra:
                return fn(values, seq, e)
        return None
    return enc


_done = set()   # codes compiled: a frame type is compiled on its first use


def _compile_code(c):
    _done.add(c)
    try:
        ls = L.layouts(c)
    except Exception:
        return      # not a frame type: the shared codec says so
    encs = []
    for l in ls:
        dec = _compile_decoder(l)
        lo = l.size
        hi = l.size + (l.sizes[-1] if l.variable else 0)
        for n in range(lo, min(hi, codec.MAX_BODY) + 1):
            _DEC.setdefault(c << 9 | (n + 8), dec)
        e = _compile_encoder(l)
        encs.append(e)
        _ENC[l.name] = e
    _ENC[c] = encs[0] if len(ls) == 1 else _pick(ls, encs)


def _decoder(key):
    c = key >> 9
    if c not in _done:
        _compile_code(c)
    return _DEC.get(key)


def _encoder(code):
    if isinstance(code, str):
        try:
            c = L.layout_named(code).code
        except Exception:
            return None
    else:
        c = code
    if c in _done:
        return None
    _compile_code(c)
    return _ENC.get(code)


def compile_all():
    """Compile every frame type now (else each is compiled on first use)."""
    for c in set(L._CODE):
        if c not in _done:
            _compile_code(c)


# --- the API -------------------------------------------------------------------------

def decode_at(buf, i, n, tolerant=False, lenient=False):
    """As protocol.codec._decode: the frame buf[i:i+n] (envelope length
    checked by the caller), through the fast path when it is plain."""
    key = buf[i + 5] << 9 | n
    d = _DEC.get(key) or _decoder(key)
    if d is not None:
        try:
            f = d(buf, i, lenient)
        except Exception:
            f = None
        if f is not None:
            return f
    stats["fallback"] += 1
    return codec._decode(memoryview(buf), i, n, tolerant, lenient)


def decode(frame, tolerant=False, lenient=False):
    """As protocol.codec.decode (same Frame, same errors)."""
    n = len(frame)
    if n >= 8 and frame[0] == 0x68 and frame[1] + 4 == n:
        key = frame[5] << 9 | n
        d = _DEC.get(key) or _decoder(key)
        if d is not None:
            try:
                f = d(frame, 0, lenient)
            except Exception:
                f = None
            if f is not None:
                return f
    stats["fallback"] += 1
    return codec.decode(frame, tolerant, lenient)


def encode(code, values, seq=0, enc=0):
    """As protocol.codec.encode (same bytes, same errors)."""
    t = type(code)
    # Only an int or a str is looked up (True or 1.0 would find 1): anything
    # else goes to the shared codec, which says what is wrong with it.
    e = (_ENC.get(code) or _encoder(code)) if t is int or t is str else None
    if e is not None:
        try:
            out = e(values, seq, enc)
        except Exception:
            out = None
        if out is not None:
            return out
    stats["fallback"] += 1
    return codec.encode(code, values, seq, enc)


class FrameReader(_SharedReader):
    """protocol.codec.FrameReader whose frames are decoded by this module
    (the same stream handling: resync, errors, swapped CRCs)."""

    def __init__(self, tolerant=False, lenient=False):
        super().__init__(tolerant, lenient, decode=decode_at)
