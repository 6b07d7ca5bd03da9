# Less-used helpers, loaded on first use so that a pile that never needs them
# never compiles them: repeated records inside a "v" field (offline card
# lists, the VIN list) and the classic whole-table mappings LAYOUTS and
# BY_NAME. Use them through protocol.codec. And the frame table's reply and
# signed columns for tools and the bridge (columns()).
from protocol.codec import _fill, decode_body
from protocol.errors import FieldError, UnknownType
from protocol import frames
from protocol.frames import direction, tokens
from protocol.layout import Layout, _POS, _line, _number_of, layout_named, layouts


def record_layout(frame, field):
    """The Layout of one record of field `field` of frame `frame` (by name)."""
    k = _number_of(frame)
    if k < 0:
        raise UnknownType("unknown frame name %r" % (frame,))
    c, _, spec = _line(k)
    key = field + "="
    for tok in tokens(spec):
        if tok.startswith(key):
            j = tok.find("[")
            if j < 0:
                break
            return Layout(c, frame + "." + field, direction(c), tok[j + 1:-1].replace(",", " "))
    raise FieldError("%s.%s is not a field of records" % (frame, field))


def pack_records(frame, field, items):
    """The bytes of field `field` of `frame` holding the record dicts `items`."""
    l = record_layout(frame, field)
    buf = bytearray(l.size * len(items))
    off = 0
    for v in items:
        _fill(l, v, buf, off)
        off += l.size
    return bytes(buf)


def unpack_records(frame, field, blob):
    """The list of record dicts held in field `field` of `frame`."""
    l = record_layout(frame, field)
    if len(blob) % l.size:
        raise FieldError("%s: %d bytes is not a whole number of %d-byte records"
                         % (l.name, len(blob), l.size))
    mv = memoryview(blob)
    return [decode_body(l, mv[o:o + l.size]) for o in range(0, len(blob), l.size)]


class _Map:
    # Read-only mapping over the table, compiling on access: LAYOUTS (code ->
    # tuple of Layout) and BY_NAME (name -> Layout) without holding every
    # layout in memory.
    def __init__(self, by_name):
        self._by_name = by_name

    def keys(self):
        out = []
        for k in range(len(_POS)):
            c, name, _ = _line(k)
            key = name if self._by_name else c
            if key not in out:
                out.append(key)
        return out

    def __getitem__(self, k):
        try:
            return layout_named(k) if self._by_name else layouts(k)
        except (UnknownType, TypeError):
            raise KeyError(k)

    def get(self, k, default=None):
        try:
            return self[k]
        except KeyError:
            return default

    def __contains__(self, k):
        return self.get(k) is not None

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def values(self):
        return [self[k] for k in self.keys()]

    def items(self):
        return [(k, self[k]) for k in self.keys()]


LAYOUTS = _Map(False)  # code -> tuple of Layout (most have one)
BY_NAME = _Map(True)   # name -> Layout


def columns():
    """Yield (code, name, reply, key, signed) for every frame: the code of the
    frame that answers it (None when none does) and the reply's key field
    (None), and whether it is a signed command."""
    for t in frames.TABLE:
        i = 0
        while i < len(t):
            j = t.find("\n", i)
            k = t.find(" ", i + 3)
            reply = key = None
            signed = False
            for tok in t[k + 1:frames.skip_columns(t, k)].split():
                if tok == "!":
                    signed = True
                else:
                    reply = int(tok[1:3], 16)
                    if len(tok) > 4:
                        key = tok[4:]
            yield int(t[i:i + 2], 16), t[i + 3:k], reply, key, signed
            i = j + 1
