# Field encodings used by YKC frames: packed BCD, CP56Time2a, zero-padded
# ASCII and hex blobs, and the calendar arithmetic behind CP56 (wall time is
# an int of local seconds since 2000-01-01 00:00, see docs/CONVENTIONS.md).
import binascii

from protocol.errors import FieldError

# A bill's periods, the tariff classes 0..4: the prefixes of the fields of
# each period block (0x3B "sharp_energy", 0x58 "sharp_energy_price", 0xEB
# "sharp_energy_fee"), in block order. Deep valley only in the five-period
# layouts. Here because every firmware module loads this one.
PERIODS5 = ("sharp", "peak", "flat", "valley", "deep")
PERIODS = PERIODS5[:4]


# --- BCD: most significant digit first, value a str of 2*size digits -------

def bcd_encode(buf, off, size, value, name="bcd"):
    if not isinstance(value, str):
        value = str(value)
    n = len(value)
    if n > 2 * size:
        raise FieldError("%s: %d digits do not fit %d BCD bytes" % (name, n, size))
    if n and not value.isdigit():
        raise FieldError("%s: %r is not a digit string" % (name, value))
    try:
        # "不足补0": left-padded with zeros; digits pack as their own hex nibbles.
        buf[off:off + size] = binascii.unhexlify("0" * (2 * size - n) + value)
    except (ValueError, TypeError):  # non-ASCII digits (CPython's isdigit accepts them)
        raise FieldError("%s: %r is not a digit string" % (name, value))


def bcd_decode(buf, off, size, name="bcd"):
    s = binascii.hexlify(bytes(buf[off:off + size])).decode()
    if size and not s.isdigit():  # a nibble above 9 shows as a-f
        for i in range(size):
            b = buf[off + i]
            if b >> 4 > 9 or b & 15 > 9:
                raise FieldError("%s: byte %02X is not BCD" % (name, b))
    return s


# --- ASCII, zero padded ------------------------------------------------------

def ascii_encode(buf, off, size, value, name="ascii", reverse=False):
    raw = value.encode() if isinstance(value, str) else bytes(value)
    n = len(raw)
    if n > size:
        raise FieldError("%s: %d bytes do not fit %d" % (name, n, size))
    for b in raw:
        if b < 32 or b > 126:
            raise FieldError("%s: %r is not printable ASCII" % (name, value))
    if reverse:
        # Sent back to front ("需反序上送"): the zero padding comes first.
        for i in range(n):
            buf[off + size - 1 - i] = raw[i]
        for i in range(size - n):
            buf[off + i] = 0
    else:
        buf[off:off + n] = raw
        for i in range(n, size):
            buf[off + i] = 0


def ascii_decode(buf, off, size, name="ascii", reverse=False):
    if reverse:
        r = bytearray(size)
        for i in range(size):
            r[i] = buf[off + size - 1 - i]
        raw = bytes(r)
    else:
        raw = bytes(buf[off:off + size])
    # Up to the first NUL; a reversed field may also carry its padding last.
    i = raw.find(b"\x00")
    if i == 0 and reverse:
        raw = raw.lstrip(b"\x00")
        i = raw.find(b"\x00")
    if i >= 0:
        raw = raw[:i]
    for b in raw:
        if b < 32 or b > 126:
            raise FieldError("%s: not printable ASCII" % name)
    return raw.decode()


# --- hex blobs (physical card numbers, digests): value a str of hex digits ----

# login.sw_version, status_reply.fw_version / hmi_version: 8 ASCII bytes
_VERSION_BYTES = 8


def wire_version(v):
    """A version for an 8-byte ASCII field. The rule: as is when it fits;
    else leading zeros of each dot-separated number dropped ("209.04.00" ->
    "209.4.0"); else the dots dropped too ("2090400"); else the first 8
    characters. Characters outside printable ASCII become "?"."""
    if not v:
        return ""
    out = []
    for ch in str(v):
        out.append(ch if " " <= ch <= "~" else "?")
    v = "".join(out)
    if len(v) <= _VERSION_BYTES:
        return v
    parts = []
    for p in v.split("."):
        q = p
        while len(q) > 1 and q[0] == "0" and "0" <= q[1] <= "9":
            q = q[1:]
        parts.append(q)
    v = ".".join(parts)
    if len(v) <= _VERSION_BYTES:
        return v
    v = "".join(parts)
    return v[:_VERSION_BYTES]


def hex_encode(buf, off, size, value, name="hex"):
    if len(value) > 2 * size:
        raise FieldError("%s: %d hex digits do not fit %d bytes" % (name, len(value), size))
    value = "0" * (2 * size - len(value)) + value
    try:
        raw = binascii.unhexlify(value)
    except ValueError:
        raise FieldError("%s: %r is not hex" % (name, value))
    buf[off:off + size] = raw


def hex_decode(buf, off, size, name="hex"):
    return binascii.hexlify(bytes(buf[off:off + size])).decode().upper()


# --- calendar: local seconds since 2000-01-01 <-> civil date -----------------

def _days_from_civil(y, m, d):
    # Days since 2000-01-01 (proleptic Gregorian), valid for 2000..2099+.
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 730425


def to_secs(y, mo, d, h=0, mi=0, s=0):
    return ((_days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 + s


def to_civil(secs):
    """(year, month, day, hour, minute, second, weekday 1=Mon..7=Sun)."""
    days, rem = divmod(secs, 86400)
    wd = (days + 5) % 7 + 1  # 2000-01-01 was a Saturday
    z = days + 730425
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return (y, m, d, rem // 3600, rem // 60 % 60, rem % 60, wd)


def iso(secs):
    y, mo, d, h, mi, s, _ = to_civil(secs)
    return "%04d-%02d-%02dT%02d:%02d:%02d" % (y, mo, d, h, mi, s)


# --- CP56Time2a (7 bytes) ----------------------------------------------------

_END = 3155760000  # 2100-01-01 00:00: the year byte carries 0..99
_MDAYS = b"\x1f\x1c\x1f\x1e\x1f\x1e\x1f\x1f\x1e\x1f\x1e\x1f"


def cp56_encode(buf, off, secs, name="time"):
    if secs < 0 or secs >= _END:
        raise FieldError("%s: %r is outside 2000..2099" % (name, secs))
    y, mo, d, h, mi, s, _ = to_civil(secs)
    ms = s * 1000
    buf[off] = ms & 0xFF
    buf[off + 1] = ms >> 8
    buf[off + 2] = mi
    buf[off + 3] = h
    buf[off + 4] = d  # day of week left 0, as the document's samples do
    buf[off + 5] = mo
    buf[off + 6] = y - 2000


def cp56_decode(buf, off, name="time"):
    ms = buf[off] | (buf[off + 1] << 8)
    mi = buf[off + 2] & 0x3F
    h = buf[off + 3] & 0x1F
    d = buf[off + 4] & 0x1F
    mo = buf[off + 5] & 0x0F
    y = buf[off + 6] & 0x7F
    if (ms >= 60000 or mi > 59 or h > 23 or y > 99 or not 1 <= mo <= 12 or d < 1
            or d > _MDAYS[mo - 1] + (1 if mo == 2 and y % 4 == 0 else 0)):
        raise FieldError("%s: %s is not a valid CP56Time2a"
                         % (name, binascii.hexlify(bytes(buf[off:off + 7])).decode()))
    return to_secs(y + 2000, mo, d, h, mi, ms // 1000)
