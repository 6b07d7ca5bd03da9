# Lenient reading of frames from piles that are not ours (issue 12 item 2).
#
# The encoder stays strict: it never sends a value the document does not
# allow. The reading side (the bridge, the dissector) gives way where a
# field does not identify money, and names what it gave way on, so that a
# bill is read, stored and published with its problems rather than refused:
#
#   not_bcd        a BCD field (pile code, serial, gun, ...) with a nibble
#                  above 9: read as upper-case hex digits
#   time_blank     a CP56Time2a that is all 00 or all FF: read as None
#   ascii_escaped  an ASCII field with bytes outside printable ASCII: kept,
#                  each such byte written "\xNN"
#   extra_bytes    a body longer than the longest layout that fits under it:
#                  read with that layout, the rest kept (hex) in "tail"
#
# ASCII padded with 00, FF or spaces (either end) reads without a problem:
# it is padding. Each problem is "class: detail", as protocol/reconcile.py's.
# Runs on MicroPython too; the firmware never imports it (it reads only what
# the platform sends, strictly).
import binascii

from protocol import fields as F
from protocol.errors import BadLength
from protocol.layout import layouts

NOT_BCD = "not_bcd"
TIME_BLANK = "time_blank"
ASCII_ESCAPED = "ascii_escaped"
EXTRA_BYTES = "extra_bytes"
CLASSES = (NOT_BCD, TIME_BLANK, ASCII_ESCAPED, EXTRA_BYTES)

TAIL = "tail"          # the field holding a longer body's extra bytes (hex)

_U = 0x75
_B = 0x62
_A = 0x61
_R = 0x72
_H = 0x68
_T = 0x74
_V = 0x76


def layout_for(code, n):
    """The layout for a body of n bytes: the one that fits, else the longest
    fixed layout shorter than n (the bytes past it are kept). BadLength when
    the body is shorter than every layout."""
    ls = layouts(code)
    best = None
    for l in ls:
        if l.fits(n):
            return l
        if not l.variable and l.size < n and (best is None or l.size > best.size):
            best = l
    if best is None:
        raise BadLength("%s (0x%02X): body of %d bytes, expected %s"
                        % (ls[0].name, code, n, "/".join([str(l.size) for l in ls])))
    return best


def bcd(raw, name, problems):
    s = binascii.hexlify(raw).decode()
    if s.isdigit():
        return s
    s = s.upper()
    problems.append("%s: %s %s" % (NOT_BCD, name, s))
    return s


def time(raw, name, problems):
    if raw == b"\x00\x00\x00\x00\x00\x00\x00" or raw == b"\xff\xff\xff\xff\xff\xff\xff":
        problems.append("%s: %s all %02X" % (TIME_BLANK, name, raw[0]))
        return None
    return F.cp56_decode(raw, 0, name)   # any other invalid time stays an error


def text(raw, name, reverse, problems):
    n = len(raw)
    if reverse:
        r = bytearray(n)
        for i in range(n):
            r[i] = raw[n - 1 - i]
        raw = bytes(r)
    i = 0
    while i < n and (raw[i] == 0 or raw[i] == 0xFF or raw[i] == 32):
        i += 1
    j = i
    while j < n and raw[j] != 0 and raw[j] != 0xFF:
        j += 1
    while j > i and raw[j - 1] == 32:
        j -= 1
    out = []
    bad = False
    for k in range(i, j):
        b = raw[k]
        if 32 <= b <= 126:
            out.append(chr(b))
        else:
            out.append("\\x%02X" % b)
            bad = True
    if bad:
        problems.append("%s: %s" % (ASCII_ESCAPED, name))
    return "".join(out)


def decode_body(layout, body, problems):
    """The fields of `body` read with `layout`, leniently; what was given way
    on is appended to `problems`. A body longer than the layout keeps its
    extra bytes under TAIL."""
    names = layout.names
    kinds = layout.kinds
    sizes = layout.sizes
    body = bytes(body)
    out = {}
    off = 0
    for i in range(len(names)):
        k = kinds[i]
        n = sizes[i]
        name = names[i]
        if k == _V:
            out[name] = body[off:off + n]
            off = min(len(body), off + n)
            continue
        raw = body[off:off + n]
        if k == _U:
            v = int.from_bytes(raw, "little")
        elif k == _B:
            v = bcd(raw, name, problems)
        elif k == _H:
            v = F.hex_decode(raw, 0, n, name)
        elif k == _T:
            v = time(raw, name, problems)
        else:
            v = text(raw, name, k == _R, problems)
        out[name] = v
        off += n
    if off < len(body):
        out[TAIL] = F.hex_decode(body, off, len(body) - off)
        problems.append("%s: %d byte(s) past the %d-byte %s layout, kept in %s"
                        % (EXTRA_BYTES, len(body) - off, off, layout.name, TAIL))
    return out


def read(code, body):
    """(layout, fields, problems) of a frame body of type `code`."""
    problems = []
    layout = layout_for(code, len(body))
    return layout, decode_body(layout, body, problems), problems
