# Frames as text for people (pile-frames, docs/protocol.md): hex input read
# leniently, every decoded field with its unit through the construct
# dissector (host/dissect.py), a DL/T 645 meter frame recognised, and field
# values with units ("12.5kWh", "25C") parsed for encoding. The command line
# is tools/frames.py.
import json
from decimal import Decimal, InvalidOperation

from protocol import codec
from protocol.crc import crc16
from protocol import fields as F
from protocol.errors import FrameError
from host import dissect as D


class UsageError(ValueError):
    pass


# --- decode -----------------------------------------------------------------------

def _hex_bytes(text):
    t = text.strip()
    for ch in " \t:-":
        t = t.replace(ch, "")
    if t[:2].lower() == "0x":
        t = t[2:]
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise FrameError("not hex: %r" % (text.strip()[:40],))


def _explain(data, e):
    """A FrameError for one frame given whole, said as precisely as the
    bytes allow: a byte-swapped CRC, a length byte that disagrees."""
    if isinstance(e, codec.BadCRC) and len(data) >= 8:
        got = data[-2] | (data[-1] << 8)
        want = crc16(data[2:-2])
        if got == ((want >> 8) | ((want & 0xFF) << 8)):
            return FrameError("%s: the CRC's two bytes are swapped (some piles send it high byte "
                              "first); decode with --tolerant" % e)
    return e


def _length_disagrees(data):
    """A FrameError when data looks like one frame whose length byte says
    another size (the CRC then fails only because the span is wrong)."""
    if len(data) < 8 or data[0] != codec.START or data[1] + 4 == len(data):
        return None
    said = data[1] + 4
    if crc16(data[2:-2]) == (data[-2] | (data[-1] << 8)) or \
            crc16(data[2:-2]) == ((data[-2] << 8) | data[-1]):
        return FrameError("the length byte 0x%02X says a %d-byte frame, but %d bytes were given "
                          "and their CRC is right: the length byte is wrong" % (data[1], said, len(data)))
    if said > len(data):
        return FrameError("the length byte 0x%02X says a %d-byte frame, only %d bytes were given"
                          % (data[1], said, len(data)))
    return None


def _frames_in(data, tolerant):
    """(raw frame bytes, crc_swapped) or a FrameError, for each frame in data."""
    if len(data) >= 2 and data[0] == codec.START and data[1] + 4 == len(data):
        # Exactly one frame: decode it as such, for the most precise reason.
        try:
            f = codec.decode(data, tolerant=tolerant)
        except FrameError as e:
            lf = _lenient(data, e, tolerant)
            yield lf if lf is not None else _explain(data, e)
            return
        yield bytes(data), f.crc_swapped
        return
    wrong = _length_disagrees(data)
    if wrong is not None:
        yield wrong
        return
    r = codec.FrameReader(tolerant=tolerant)
    for i in range(0, len(data), 4096):
        for x in r.push(data[i:i + 4096]):
            if isinstance(x, FrameError):
                g = getattr(x, "frame", None)
                lf = None if g is None else _lenient(codec.wrap(g.code, g.body, g.seq, g.enc), x,
                                                      True)
                yield lf if lf is not None else x
            else:
                yield codec.wrap(x.code, x.body, x.seq, x.enc), x.crc_swapped
    if r.skipped and not r.frames and not r.errors:
        yield FrameError("no frame found (%d bytes skipped)" % r.skipped)
    if r.pending():
        yield FrameError("incomplete frame at the end: %d bytes" % r.pending())


def _lenient(data, err, tolerant):
    """The frame read leniently (a pile not ours), when its CRC is good and
    only the strict reading failed; else None."""
    if getattr(err, "frame", None) is None:
        return None
    try:
        return codec.decode(data, tolerant=tolerant, lenient=True)
    except FrameError:
        return None


def _lenient_fields(f, for_json):
    out = []
    for fd in D.FIELDS[f.name]:
        v = f.fields.get(fd[0])
        if v is None:
            out.append((fd[0], None, ""))
            continue
        try:
            value, unit = D.display(fd, v, for_json)
        except (TypeError, ValueError):
            value, unit = v, ""
        if isinstance(value, bytes):
            value = value.hex().upper()
        out.append((fd[0], value, unit))
    if "tail" in f.fields:
        out.append(("tail", f.fields["tail"], ""))
    return out


def _lenient_json(f):
    return json.dumps({"type": f.code, "name": f.name, "seq": f.seq, "lenient": True,
                       "problems": f.problems, "crc_swapped": f.crc_swapped or None,
                       "fields": dict((k, v) for k, v, _ in _lenient_fields(f, True))},
                      ensure_ascii=False, default=str)


def _lenient_text(f):
    d = "P->S" if f.code & 1 else "S->P"
    lines = ["0x%02X %s (%s) seq=0x%04X%s, read leniently (a pile not ours)"
             % (f.code, f.name, d, f.seq, ", CRC byte-swapped" if f.crc_swapped else "")]
    for p in f.problems:
        lines.append("  problem: %s" % p)
    for name, value, unit in _lenient_fields(f, False):
        lines.append(("  %-22s %s %s" % (name, "null" if value is None else value, unit)).rstrip())
    return "\n".join(lines)


def _fields_of(name, body, for_json):
    out = []
    for f in D.FIELDS[name]:
        value, unit = D.display(f, body[f[0]], for_json)
        out.append((f[0], value, unit))
    return out


def _as_json(c, swapped):
    obj = {"type": c.type, "name": c.name, "seq": c.seq, "fields": None}
    if c.enc == 0:
        obj["fields"] = dict((k, v) for k, v, _ in _fields_of(c.name, c.body, True))
    else:
        obj["encrypted"] = True
        obj["body"] = bytes(c.body).hex().upper()
    if swapped:
        obj["crc_swapped"] = True
    return json.dumps(obj, ensure_ascii=False)


def _as_text(c, swapped):
    d = "P->S" if c.type & 1 else "S->P"
    lines = ["0x%02X %s (%s) seq=0x%04X%s" % (c.type, c.name, d, c.seq,
                                             ", CRC byte-swapped" if swapped else "")]
    if c.enc:
        lines.append("  encrypted body (flag %d): %s" % (c.enc, bytes(c.body).hex().upper()))
        return "\n".join(lines)
    for name, value, unit in _fields_of(c.name, c.body, False):
        if isinstance(value, list):
            lines.append("  %-22s %d record(s)" % (name, len(value)))
            for i, rec in enumerate(value):
                lines.append("    [%d] %s" % (i, "  ".join("%s=%s" % kv for kv in rec.items())))
            continue
        text = str(value)
        if name == "stop_reason" and c.type == 0x3B:
            text = "0x%02X (%s)" % (value, D.stop_reason(value))
        lines.append(("  %-22s %s %s" % (name, text, unit)).rstrip())
    return "\n".join(lines)


# --- encode -----------------------------------------------------------------------

def _parse_value(f, text):
    kind = f[1]
    if kind == "u":
        scale, unit, offset = D._unit(f)
        t = text.strip()
        physical = False
        if unit and t.endswith(unit):
            t = t[:-len(unit)].strip()
            physical = True
        if "." in t:
            physical = True
        if not physical:
            return int(t, 0)
        try:
            raw = (Decimal(t) - offset).scaleb(scale)
        except InvalidOperation:
            raise UsageError("%s: %r is not a number" % (f[0], text))
        if raw != raw.to_integral_value():
            raise UsageError("%s: %s has more than %d decimals" % (f[0], text, scale))
        return int(raw)
    if kind == "t":
        t = text.strip()
        if t.isdigit():
            return int(t)
        try:
            return _iso_secs(t)
        except ValueError:
            raise UsageError("%s: %r is not ISO 8601 time (2020-03-16T17:14:47)" % (f[0], text))
    if kind == "v":
        if len(f) > 5:
            items = json.loads(text)
            recs = [dict((r[0], _parse_value(r, str(item.get(r[0], _zero_text(r)))))
                         for r in f[5]) for item in items]
            return recs
        return _hex_bytes(text) if text else b""
    return text


def _iso_secs(t):
    import datetime
    d = datetime.datetime.fromisoformat(t)
    return F.to_secs(d.year, d.month, d.day, d.hour, d.minute, d.second)


def _zero_text(f):
    return "0" if f[1] in "ut" else ""


def _zero(f):
    return {"u": 0, "t": 0, "v": b""}.get(f[1], "")
