# Frame layouts compiled from the table in protocol/frames.py, on demand.
#
# A frame's layout is compiled from its spec the first time the frame is used
# and kept in a small cache (CACHE_SIZE layouts under MicroPython, all of them
# on CPython). A compiled layout is a tuple of field names, two byte strings
# (kinds, sizes) and a struct format: no per-field objects. protocol.codec
# re-exports what callers need (Layout, layout_for, layout_named, layouts);
# this module is split from it only to keep each module's compile-time peak
# small on a board that imports .py files (see docs/benchmarks.md).
from array import array

from protocol.errors import BadLength, UnknownType
from protocol.frames import TABLE, direction, skip_columns, tokens

try:
    from micropython import const
    CACHE_SIZE = 8      # compiled layouts kept; 0 = keep all
except ImportError:
    def const(x):
        return x
    CACHE_SIZE = 0

_U = const(0x75)  # kind "u", see protocol/frames.py
_V = const(0x76)  # kind "v"
_UFMT = {1: "B", 2: "H", 4: "I", 8: "Q"}


class Layout:
    """One frame layout, compiled from the table.

    `names` (tuple of str), `kinds` and `sizes` (bytes, one entry per field),
    `size` (the fixed part of the body), `variable` (the last field is "v":
    the body may be 0..its size bytes longer). `fields` gives the classic
    tuple form ((name, kind, size, offset), ...) on demand.
    """
    __slots__ = ("code", "name", "direction", "names", "kinds", "sizes", "size", "variable",
                 "_fmt", "_conv")

    def __init__(self, code, name, direction, fields):
        # `fields`: a spec string (see protocol/frames.py) or a sequence of
        # (name, kind, size, ...) tuples.
        self.code = code
        self.name = name
        self.direction = direction
        names = []
        kinds = bytearray()
        sizes = bytearray()
        if isinstance(fields, str):
            for tok in tokens(fields):
                eq = tok.find("=")
                names.append(tok[:eq])
                kinds.append(ord(tok[eq + 1]))
                j = eq + 2
                n = 0
                while j < len(tok) and 48 <= ord(tok[j]) <= 57:
                    n = n * 10 + ord(tok[j]) - 48
                    j += 1
                sizes.append(n)
        else:
            for f in fields:
                names.append(f[0])
                kinds.append(ord(f[1]))
                sizes.append(f[2])
        self.names = tuple(names)
        self.kinds = bytes(kinds)
        self.sizes = bytes(sizes)
        fmt = "<"
        conv = bytearray()
        off = 0
        variable = False
        for i in range(len(names)):
            k = kinds[i]
            n = sizes[i]
            if k == _V:
                if i != len(names) - 1:
                    raise ValueError("%s: a variable field must come last" % name)
                variable = True
                continue
            if k == _U and n in _UFMT:
                fmt += _UFMT[n]
            else:
                fmt += "%ds" % n
                conv.append(i)
            off += n
        self.size = off  # fixed part; a "v" field adds 0..its size
        self.variable = variable
        self._fmt = fmt
        self._conv = bytes(conv)

    @property
    def fields(self):
        out = []
        off = 0
        for i in range(len(self.names)):
            out.append((self.names[i], chr(self.kinds[i]), self.sizes[i], off))
            if self.kinds[i] != _V:
                off += self.sizes[i]
        return tuple(out)

    def fits(self, n):
        if self.variable:
            return self.size <= n <= self.size + self.sizes[-1]
        return n == self.size

    def __repr__(self):
        return "Layout(0x%02X %s)" % (self.code, self.name)


# --- the table, indexed -------------------------------------------------------

# Frame number k (table order) -> section << 12 | offset of its line, and code.
_POS = array("H")
_CODE = bytearray()
_FIRST = bytearray(256)  # code -> 1 + number of its first frame (0: no such code)


def _index():
    for s in range(len(TABLE)):
        t = TABLE[s]
        i = 0
        while i < len(t):
            c = int(t[i:i + 2], 16)
            if not _FIRST[c]:
                _FIRST[c] = len(_POS) + 1  # frames sharing a code (the bill) are adjacent
            _POS.append(s << 12 | i)
            _CODE.append(c)
            i = t.find("\n", i) + 1


_index()
_cache = {}  # frame number -> Layout
_order = []  # the cached frame numbers, oldest first: MicroPython's dict has no order


def _line(k):
    # (code, name, spec) of frame number k
    t = TABLE[_POS[k] >> 12]
    p = _POS[k] & 0xFFF
    e = t.find(" ", p + 3)
    return _CODE[k], t[p + 3:e], t[skip_columns(t, e):t.find("\n", e)]


def clear_cache():
    _cache.clear()
    del _order[:]


def _compiled(k):
    l = _cache.get(k)
    if l is None:
        if CACHE_SIZE and len(_cache) >= CACHE_SIZE:
            # The oldest goes: evicting whatever the dict yields first threw
            # out layouts still in use on MicroPython (a bill's layouts were
            # compiled again on every call once 8 were cached).
            _cache.pop(_order.pop(0), None)
        c, name, spec = _line(k)
        l = Layout(c, name, direction(c), spec)
        _cache[k] = l
        if CACHE_SIZE:
            _order.append(k)
    return l


def _number_of(name):
    n = len(name)
    for k in range(len(_POS)):
        t = TABLE[_POS[k] >> 12]
        p = (_POS[k] & 0xFFF) + 3
        if t.startswith(name, p) and t[p + n] == " ":
            return k
    return -1


def layouts(code):
    """The layouts of frame type `code` (a tuple; most codes have one)."""
    if not 0 <= code <= 255 or not _FIRST[code]:
        raise UnknownType("unknown frame type 0x%02X" % code)
    k = _FIRST[code] - 1
    out = [_compiled(k)]
    k += 1
    while k < len(_CODE) and _CODE[k] == code:
        out.append(_compiled(k))
        k += 1
    return tuple(out)


def layout_named(name):
    """The layout of the frame called `name` (UnknownType if there is none)."""
    k = _number_of(name)
    if k < 0:
        raise UnknownType("unknown frame name %r" % (name,))
    return _compiled(k)


def layout_for(code, n):
    """The layout of frame `code` whose body is `n` bytes long."""
    ls = layouts(code)
    for l in ls:
        if l.fits(n):
            return l
    raise BadLength("%s (0x%02X): body of %d bytes, expected %s"
                    % (ls[0].name, code, n, "/".join([str(l.size) for l in ls])))


def pick(code, values):
    ls = layouts(code)
    if len(ls) == 1:
        return ls[0]
    # Several layouts (the bill): the one whose every field is given, the
    # longest first, so a bill with deep-valley figures takes the 5-period form.
    best = None
    for l in ls:
        ok = True
        for n in l.names:
            if n not in values:
                ok = False
                break
        if ok and (best is None or l.size > best.size):
            best = l
    if best is None:
        return ls[0]  # let encode_body name the missing field
    return best
