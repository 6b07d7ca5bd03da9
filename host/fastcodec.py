"""The host's fast path of the YKC codec (CPython only).

The firmware has one codec, protocol/codec.py, and so has everyone else: this
module is not a second one. It compiles each layout of the one frame table
(protocol/frames.py, through protocol.layout) into a precompiled
`struct.Struct` over the whole frame and a generated function per layout
and direction, so that decoding or encoding a frame is one `unpack_from` /
`pack`, one hex conversion, a C CRC and straight-line code: no Python call
per field (a few C string methods for the BCD and ASCII fields remain;
CP56Time2a by table lookups).

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

CRC: fastcrc's CRC-16/MODBUS, else crcmod's C extension, whichever is here
and agrees with the table CRC of protocol.crc on the check vectors (from
several start registers); else protocol.crc. It runs over the whole frame
from a start register that absorbs the 68 LEN prefix (see _INIT): no slice.
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

_CHECKS = (b"", b"123456789", bytes(range(256)), b"\x68" * 7, b"\x00\xff" * 33)


def _agrees(fn, extra):
    # fn(data, register, *extra) is CRC-16/MODBUS from any starting register:
    # the table CRC of protocol.crc on the check vectors, from 0xFFFF and others.
    from protocol.crc import _crc16_bytewise as table
    try:
        for v in _CHECKS:
            for init in (0xFFFF, 0, 0x1234, 0xA001):
                if fn(v, init, *extra) != table(v, init):
                    return False
    except Exception:
        return False
    return True


def _native_crc():
    """(name, fn, extra args) of the fastest native CRC-16/MODBUS here that
    agrees with the table CRC, called as fn(data, register, *extra); None
    when there is none. fastcrc (Rust) first: about half the cost of
    crcmod's C extension on a frame (its call takes no table and its loop is
    faster); crcmod's C function is called without its Python wrapper."""
    try:
        from fastcrc import crc16 as fc
        if _agrees(fc.modbus, ()):
            return "fastcrc", fc.modbus, ()
    except ImportError:
        pass
    try:
        import crcmod
        from crcmod import _crcfunext  # noqa: F401  (the C extension, not the pure-Python one)
        f = crcmod.mkCrcFun(0x18005, initCrc=0xFFFF, rev=True, xorOut=0)
        init, tab, fn = f.__defaults__      # crcfun(data, crc=init, table=..., fun=...)
    except (ImportError, TypeError, ValueError):
        return None
    if init == 0xFFFF and getattr(fn, "__module__", None) == "crcmod._crcfunext" \
            and _agrees(fn, (tab,)):
        return "crcmod", fn, (tab,)
    return None


_native = _native_crc()
C_CRC = _native is not None       # a native CRC is in use (else protocol.crc's table)
if C_CRC:
    CRC_NAME, _CFN, _CEXTRA = _native
else:
    CRC_NAME, _CFN, _CEXTRA = "table", table_crc16, ()
# the extra arguments as generated code passes them (crcmod's table)
_CARGS = "".join(", _C%d" % k for k in range(len(_CEXTRA)))
_CENV = dict(("_C%d" % k, _CEXTRA[k]) for k in range(len(_CEXTRA)))


def crc16(data, crc=0xFFFF):
    """CRC-16/MODBUS of data from register `crc` (CRC_NAME says whose)."""
    return _CFN(data, crc, *_CEXTRA)


# --- tables for CP56Time2a --------------------------------------------------------

# CP56Time2a: ms (2 bytes), minute, hour, day, month, year - 2000; the shared
# codec masks minute & 0x3F, hour & 0x1F, day & 0x1F, month & 0x0F and year &
# 0x7F and refuses a time that is not one. Here a time is a few table
# lookups each way (built on first use, about 3.5 MB; checked against
# protocol.fields by tests/test_fastcodec.py). Reading:
#   DAY[(year & 0x7F) << 9 | (month & 0x0F) << 5 | day & 0x1F]  seconds from
#       2000-01-01 to that day, BAD for no such day
#   HM[(hour & 0x1F) << 8 | minute & 0x3F]  seconds from midnight, or BAD
#   SEC[ms]                                 ms // 1000, or BAD from 60000
# so a time read is their sum, negative when any part is not a time. Writing:
#   DMY[day number since 2000-01-01]  its day, month, year - 2000 (3 bytes)
#   HMB[minute of the day]            its minute, hour (2 bytes)
_END = F._END
BAD = -(1 << 40)    # any sum holding one is negative


class _TimeTables:
    __slots__ = ("DAY", "HM", "SEC", "DMY", "HMB")


_TT = None


def time_tables():
    """The CP56Time2a tables above (built on the first call)."""
    global _TT
    if _TT is None:
        t = _TimeTables()
        day = [BAD] * 65536
        dmy = []
        for y in range(100):
            for m in range(1, 13):
                for d in range(1, F._MDAYS[m - 1] + (1 if m == 2 and y % 4 == 0 else 0) + 1):
                    day[y << 9 | m << 5 | d] = len(dmy) * 86400
                    dmy.append(bytes((d, m, y)))
        t.DAY = tuple(day)
        t.DMY = tuple(dmy)
        t.HM = tuple([h * 3600 + m * 60 if h < 24 and m < 60 else BAD
                      for h in range(32) for m in range(256)][:0x1F40])
        t.SEC = tuple([ms // 1000 for ms in range(60000)] + [BAD] * (65536 - 60000))
        t.HMB = tuple([bytes((m, h)) for h in range(24) for m in range(60)])
        _TT = t
    return _TT


# CRC over the whole frame. CRC-16/MODBUS is a byte-at-a-time register
# update that can be run backwards: _INIT[n] is the register that becomes
# 0xFFFF after the two bytes 68 n, so the CRC of 68 n seq..body from _INIT[n]
# is the frame's CRC (seq..body from 0xFFFF), with no slice of the frame.
# And a frame whose two last bytes are that CRC, low byte first, leaves the
# register at 0 (the CRC's residue): a good frame is `crc(frame, _INIT[n])
# == 0`. Both checked at import against the table CRC (below) and by
# tests/test_fastcodec.py on any bytes.
def _inits():
    from protocol.crc import _TABLE as t
    top = {}
    for i in range(256):
        top[t[i] >> 8] = i      # the table's high bytes are all different

    def back(c, b):             # the register before byte b, given the one after
        i = top[c >> 8]
        return ((c ^ t[i]) & 0xFF) << 8 | (i ^ b)
    return tuple([back(back(0xFFFF, n), 0x68) for n in range(256)])


_INIT = _inits()
for _n in (4, 13, 17, 162, 255):
    _v = b"\x68" + bytes((_n,)) + bytes(range(_n))
    _c = table_crc16(_v[2:])
    if (crc16(_v, _INIT[_n]) != _c or table_crc16(_v, _INIT[_n]) != _c
            or crc16(_v + _c.to_bytes(2, "little"), _INIT[_n])):
        raise ImportError("host.fastcodec: the whole-frame CRC does not agree with protocol.crc")
del _n, _v, _c

# Any slot of protocol.codec.Frame besides the seven set by the decoders
# below gets the value Frame.__init__ gives it by default (a slot added to
# the shared Frame later is filled the same way here).
_SET = ("code", "name", "seq", "enc", "body", "fields", "crc_swapped", "problems")
_PROBLEMS = "problems" in Frame.__slots__
_TEMPLATE = Frame(0, "", 0, 0, b"", None)
_MORE_SLOTS = tuple(k for k in Frame.__slots__ if k not in _SET and hasattr(_TEMPLATE, k))
_MORE_VALUES = tuple(getattr(_TEMPLATE, k) for k in _MORE_SLOTS)

_LITERAL_MAX = 12   # fields dicts up to this size as a display, longer ones by copy
_CRC2 = struct.Struct("<H")
_UPARTS = {1: ("B",), 2: ("H",), 4: ("I",), 8: ("Q",), 3: ("H", "B"), 5: ("I", "B"),
           6: ("I", "H"), 7: ("I", "H", "B")}
_USHIFT = {"B": 8, "H": 16, "I": 32, "Q": 64}

stats = {"fallback": 0}  # calls passed on to the shared codec (benchmark, tests)


# --- code generation ----------------------------------------------------------------

def _compile_decoder(layout):
    """def dec(buf, lenient): the Frame of the plain frame `buf` (bytes, one
    whole frame of this layout's code and length), or None. A plain frame
    reads the same strictly and leniently (but for Frame.problems: None, or
    [] when lenient)."""
    names, kinds, sizes = layout.names, layout.kinds, layout.sizes
    variable = layout.variable
    fmt = "<BBHBx"  # start, length, seq, enc (the caller found the code)
    src = []
    vals = []       # (name, expression)
    ascii_parts = []
    edge_checks = []
    times = []
    j = 4           # index in the unpacked tuple
    off = 6         # offset in the frame
    need_hex = False
    bcd_locals = []  # (local, expression) of the "b" fields
    for idx in range(len(names)):
        name, k, n = names[idx], chr(kinds[idx]), sizes[idx]
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
            bcd_locals.append(("b%d" % idx, "hx[%d:%d]" % (2 * off, 2 * (off + n))))
            vals.append((name, "b%d" % idx))
        elif k == "h":
            fmt += "%dx" % n
            need_hex = True
            vals.append((name, "hx[%d:%d].upper()" % (2 * off, 2 * (off + n))))
        elif k == "a" or k == "r":
            fmt += "%ds" % n
            p = "p%d" % idx
            # Strictly, the text runs to the first NUL (a reversed field may
            # carry its padding first): the same as the text with the NULs
            # stripped from its padding end when no NUL is left inside it,
            # which the printable check below makes sure of.
            if k == "a":
                src.append("%s = v[%d].rstrip(b'\\0'); s%d = %s.decode()" % (p, j, idx, p))
            else:
                src.append("%s = v[%d][::-1].strip(b'\\0'); s%d = %s.decode()" % (p, j, idx, p))
            # printable ASCII (no NUL left inside)
            ascii_parts.append("s%d.isascii() and s%d.isprintable()" % (idx, idx))
            # A lenient reading (protocol/lenient.py) also takes spaces at
            # either end for padding: the same text when it has no edge space.
            edge_checks.append("%s[:1] != b' ' and %s[-1:] != b' '" % (p, p))
            vals.append((name, "s%d" % idx))
            j += 1
        elif k == "t":
            # ms | minute << 16 | hour << 24, day | month << 8, year
            fmt += "IHB"
            t = "t%d" % idx
            src.append("%s = _DAY[(v[%d] & 127) << 9 | v[%d] >> 3 & 480 | v[%d] & 31] "
                       "+ _HM[v[%d] >> 16 & 7999] + _SEC[v[%d] & 65535]"
                       % (t, j + 2, j + 1, j + 1, j, j))
            times.append(t)
            vals.append((name, t))
            j += 3
        elif k == "v":
            vals.append((name, "buf[%d:-2]" % off))
            break
        else:
            raise ValueError("%s: unknown kind %r" % (layout.name, k))
        off += n
    S = struct.Struct(fmt)
    body = []
    body.append("v = _S.unpack_from(buf)")
    if variable:
        body.append("if v[0] != 104 or v[1] + 4 != len(buf) or v[3] or _crc(buf, _I[v[1]]%s): "
                    "return None" % _CARGS)
    else:
        body.append("if v[0] != 104 or v[1] != %d or v[3] or _crc(buf, %d%s): return None"
                    % (layout.size + 4, _INIT[layout.size + 4], _CARGS))
    if need_hex:
        body.append("hx = buf.hex()")
        if bcd_locals:
            body.extend("%s = %s" % bl for bl in bcd_locals)
            # BCD: its hex digits are all digits
            # (bytes.isdigit: str.isdigit looks each character up)
            body.append("if not (%s).encode().isdigit(): return None"
                        % " + ".join(bl[0] for bl in bcd_locals))
    body.extend(src)
    if ascii_parts:
        body.append("if not (%s): return None" % " and ".join(ascii_parts))
        body.append("if lenient and not (%s): return None" % " and ".join(edge_checks))
    if times:
        body.append("if %s: return None" % " or ".join("%s < 0" % t for t in times))
    # The Frame without a call to its __init__: its slots set here, as
    # protocol.codec.Frame.__init__ sets them.
    body.append("f = _new(_Frame)")
    body.append("f.code = %d; f.name = %r; f.seq = v[2]; f.enc = 0; f.crc_swapped = False"
                % (layout.code, layout.name))
    body.append("f.body = buf[6:-2]")
    fields = None
    if len(vals) <= _LITERAL_MAX:
        body.append("f.fields = {%s}" % ", ".join("%r: %s" % nv for nv in vals))
    else:
        # A dict display this long is built item by item, growing as it
        # goes; a copy of a dict of the same keys, then the values, is faster.
        fields = dict.fromkeys([nv[0] for nv in vals])
        body.append("f.fields = d = _F.copy()")
        body.extend("d[%r] = %s" % nv for nv in vals)
    for k in range(len(_MORE_SLOTS)):
        body.append("f.%s = _more[%d]" % (_MORE_SLOTS[k], k))
    if _PROBLEMS:
        # what a lenient reading gave way on: nothing, for a plain frame
        body.append("f.problems = [] if lenient else None")
    body.append("return f")
    code = "def dec(buf, lenient):\n" + "".join("    %s\n" % line for line in body)
    env = {"_S": S, "_crc": _CFN, "_I": _INIT, "_new": Frame.__new__,
           "_Frame": Frame, "_more": _MORE_VALUES, "_F": fields}
    if times:
        tt = time_tables()
        env.update(_DAY=tt.DAY, _HM=tt.HM, _SEC=tt.SEC)
    env.update(_CENV)
    exec(compile(code, "<fastcodec %s decode>" % layout.name, "exec"), env)
    return env["dec"]


def _compile_encoder(layout):
    """def enc(values, seq, enc): the frame's bytes, or None (not plain)."""
    names, kinds, sizes = layout.names, layout.kinds, layout.sizes
    fmt = "<BBHBB"
    get = []
    checks = []
    bcd = []        # locals of the "b" fields, then of the "h" ones: the
    hexs = []       # order of their bytes in B (one unhexlify for them all)
    where = {}      # field index -> offset of its bytes in B
    pre = []
    items = []      # struct items in frame order: (fmt, arg, index or None)
    vfield = None
    hoff = 0
    for idx in range(len(names)):
        if chr(kinds[idx]) == "b":
            where[idx] = hoff
            hoff += sizes[idx]
    for idx in range(len(names)):
        if chr(kinds[idx]) == "h":
            where[idx] = hoff
            hoff += sizes[idx]
    for idx in range(len(names)):
        name, k, n = names[idx], chr(kinds[idx]), sizes[idx]
        x = "x%d" % idx
        if k == "v":
            vfield = (name, n)
            break
        get.append("%s = values[%r]" % (x, name))
        if k == "u":
            parts = _UPARTS[n]
            # The last part takes the high bits unmasked: a value too large
            # (or negative) makes struct refuse it, and the shared codec answers.
            shift = 0
            for q in range(len(parts)):
                bits = _USHIFT[parts[q]]
                if q == len(parts) - 1:
                    arg = "%s >> %d" % (x, shift) if shift else x
                else:
                    arg = ("%s >> %d & %d" % (x, shift, (1 << bits) - 1)
                           if shift else "%s & %d" % (x, (1 << bits) - 1))
                items.append([parts[q], arg, None])
                shift += bits
        elif k == "b" or k == "h":
            checks.append("len(%s) == %d" % (x, 2 * n))
            (bcd if k == "b" else hexs).append(x)
            # fields whose bytes follow each other in the frame and in B
            # are packed as one item
            if items and items[-1][2] is not None and items[-1][2][1] == where[idx]:
                items[-1][2][1] = where[idx] + n
            else:
                items.append(["s", None, [where[idx], where[idx] + n]])
        elif k == "a" or k == "r":
            # printable ASCII (a bytes value has no isprintable: the shared
            # codec then answers)
            checks.append("%s.isascii() and %s.isprintable() and len(%s) <= %d" % (x, x, x, n))
            items.append(["%ds" % n, "%s.encode()" % x if k == "a"
                          else "%s.encode()[::-1].rjust(%d, b'\\0')" % (x, n), None])
        elif k == "t":
            checks.append("0 <= %s < %d" % (x, _END))
            items.append(["H", "%s %% 60 * 1000" % x, None])
            items.append(["2s", "_HMB[%s // 60 %% 1440]" % x, None])
            items.append(["3s", "_DMY[%s // 86400]" % x, None])
        else:
            raise ValueError("%s: unknown kind %r" % (layout.name, k))
    args = []
    for f_, a_, span in items:
        if span is None:
            fmt += f_
            args.append(a_)
        else:
            fmt += "%ds" % (span[1] - span[0])
            args.append("B" if span == [0, hoff] else "B[%d:%d]" % tuple(span))
    S = struct.Struct(fmt)
    body = list(get)
    body.extend(pre)
    if checks:
        body.append("if not (%s): return None" % " and ".join(checks))
    # '' + ...: a bytes value is not a digit string (nor hex) for the shared
    # codec. BCD: ASCII digits (bytes.isdigit: str.isdigit looks each
    # character up, and takes digits that are not ASCII).
    if bcd:
        body.append("D = '' + %s" % " + ".join(bcd))
        body.append("if not D.encode().isdigit(): return None")
        body.append("B = _unhex(%s)" % " + ".join(["D"] + hexs))
    elif hexs:
        body.append("B = _unhex('' + %s)" % " + ".join(hexs))
    n0 = layout.size + 4
    if vfield:
        body.insert(0, "vv = values[%r]" % vfield[0])
        body.insert(1, "if type(vv) is not bytes or len(vv) > %d: return None" % vfield[1])
        body.insert(2, "L = %d + len(vv)" % n0)
        head = "0x68, L, seq & 0xFFFF, enc, %d" % layout.code
        body.append("p = _S.pack(%s) + vv" % ", ".join([head] + args))
        body.append("return p + _C2(_crc(p, _I[L]%s))" % _CARGS)
    else:
        body.append("p = _S.pack(%s)" % ", ".join(["0x68, %d, seq & 0xFFFF, enc, %d"
                                                  % (n0, layout.code)] + args))
        body.append("return p + _C2(_crc(p, %d%s))" % (_INIT[n0], _CARGS))
    code = "def enc(values, seq, enc):\n" + "".join("    %s\n" % line for line in body)
    env = {"_S": S, "_crc": _CFN, "_I": _INIT, "_unhex": unhexlify,
           "_C2": _CRC2.pack}
    if "t" in kinds.decode():
        tt = time_tables()
        env.update(_DMY=tt.DMY, _HMB=tt.HMB)
    env.update(_CENV)
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
    if c not in _done:
        _compile_code(c)
    return _ENC.get(code)


def compile_all():
    """Compile every frame type now (else each is compiled on first use)."""
    for c in set(L._CODE):
        if c not in _done:
            _compile_code(c)


# --- the API -------------------------------------------------------------------------

def decode_at(buf, i, n, tolerant=False, lenient=False):
    """As protocol.codec._decode: the frame buf[i:i+n] (its start and length
    bytes checked by the caller), through the fast path when it is plain."""
    key = buf[i + 5] << 9 | n
    d = _DEC.get(key) or _decoder(key)
    if d is not None:
        try:
            f = d(bytes(buf[i:i + n]), lenient)
        except Exception:
            f = None
        if f is not None:
            return f
    stats["fallback"] += 1
    return codec._decode(memoryview(buf), i, n, tolerant, lenient)


def decode(frame, tolerant=False, lenient=False):
    """As protocol.codec.decode (same Frame, same errors)."""
    if type(frame) is bytes:
        try:
            f = _DEC[frame[5] << 9 | len(frame)](frame, lenient)
        except Exception:       # no decoder (yet) for that code and length, or not plain
            f = _first(frame, lenient)
        if f is not None:
            return f
    elif type(frame) is bytearray:
        return decode(bytes(frame), tolerant, lenient)
    stats["fallback"] += 1
    return codec.decode(frame, tolerant, lenient)


def _first(frame, lenient):
    # decode() when the table had no decoder: the code compiled on first
    # use, and the frame decoded if it then has one
    if len(frame) < 8:
        return None
    d = _decoder(frame[5] << 9 | len(frame))
    if d is None:
        return None
    try:
        return d(frame, lenient)
    except Exception:
        return None


def encode(code, values, seq=0, enc=0):
    """As protocol.codec.encode (same bytes, same errors)."""
    t = type(code)
    # Only an int or a str is looked up (1.0 would find 1): anything else
    # goes to the shared codec, which says what is wrong with it.
    if t is int or t is str:
        try:
            out = _ENC[code](values, seq, enc)
        except Exception:       # not compiled yet, no such frame, or not plain
            e = _encoder(code)
            try:
                out = None if e is None else e(values, seq, enc)
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
