# The host's fast codec (host/fastcodec.py) against the shared codec
# (protocol/codec.py), byte for byte, over every frame type of the table:
# the same bytes from the same values, the same Frame from the same bytes,
# the same error (type and message) from the same bad input, and the fast
# path really taking the plain cases (not passing them all on).
import random
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host import fastcodec as X
from protocol import codec
from protocol import fields as F
from protocol import layout as L

_NAMES = []
for _k in range(len(L._POS)):
    _NAMES.append(L._line(_k)[1])
_CODES = sorted(set(L._CODE))

_SETTINGS = settings(max_examples=25, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _field(kind, size, full=True):
    if kind == "u":
        return st.integers(0, (1 << (8 * size)) - 1)
    if kind == "b":
        return st.text("0123456789", min_size=2 * size if full else 0, max_size=2 * size)
    if kind == "h":
        return st.text("0123456789ABCDEFabcdef", min_size=2 * size if full else 0,
                       max_size=2 * size)
    if kind in "ar":
        return st.text(string.printable[:95], max_size=size)
    if kind == "t":
        return st.integers(0, F._END - 1)
    if kind == "v":
        return st.binary(max_size=size)
    raise AssertionError(kind)


def values_of(layout, full=True):
    """Values every field of `layout` can hold (full-length BCD / hex when
    `full`, as the bridge gives them), the body within MAX_BODY."""
    fields = {}
    for i, name in enumerate(layout.names):
        size = layout.sizes[i]
        if chr(layout.kinds[i]) == "v":
            size = min(size, codec.MAX_BODY - layout.size)
        fields[name] = _field(chr(layout.kinds[i]), size, full)
    return st.fixed_dictionaries(fields)


def same_frame(a, b):
    assert type(a) is type(b)
    for attr in codec.Frame.__slots__:
        assert getattr(a, attr) == getattr(b, attr), attr
        assert type(getattr(a, attr)) is type(getattr(b, attr)), attr


def outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except Exception as e:  # the error itself is compared
        return "err", e


def same_outcome(got, want):
    assert got[0] == want[0], (got, want)
    if got[0] == "err":
        assert type(got[1]) is type(want[1]) and str(got[1]) == str(want[1])
        fa, fb = getattr(got[1], "frame", None), getattr(want[1], "frame", None)
        assert (fa is None) == (fb is None)
        if fa is not None:
            same_frame(fa, fb)
        assert getattr(got[1], "raw", None) == getattr(want[1], "raw", None)
    elif isinstance(want[1], codec.Frame):
        same_frame(got[1], want[1])
    else:
        assert got[1] == want[1] and type(got[1]) is type(want[1])


@pytest.mark.parametrize("name", _NAMES)
@_SETTINGS
@given(data=st.data(), seq=st.integers(0, 0xFFFF))
def test_every_frame_type_encodes_and_decodes_byte_for_byte_as_the_shared_codec(name, data, seq):
    layout = L.layout_named(name)
    values = data.draw(values_of(layout))
    want = codec.encode(name, values, seq)
    before = dict(X.stats)
    got = X.encode(name, values, seq)
    assert got == want and type(got) is bytes
    # and by code (the bill: the layout picked from the fields given)
    assert X.encode(layout.code, values, seq) == codec.encode(layout.code, values, seq)
    same_frame(X.decode(want), codec.decode(want))
    # the plain case went through the fast path, not to the shared codec
    assert X.stats["fallback"] == before["fallback"]
    # read leniently: the same (a text with an edge space goes to the shared codec)
    same_frame(X.decode(want, lenient=True), codec.decode(want, lenient=True))


@pytest.mark.parametrize("name", _NAMES)
@_SETTINGS
@given(data=st.data())
def test_short_bcd_and_hex_values_encode_as_the_shared_codec(name, data):
    # Values shorter than the field (left-padded by the codec) go to the
    # shared codec; the bytes are the same.
    layout = L.layout_named(name)
    values = data.draw(values_of(layout, full=False))
    same_outcome(outcome(X.encode, name, values), outcome(codec.encode, name, values))


def _reframe(frame, body):
    return codec.wrap(frame[5], body, frame[2] | frame[3] << 8, frame[4])


@pytest.mark.parametrize("name", _NAMES)
@_SETTINGS
@given(data=st.data(), flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)),
                                      min_size=1, max_size=4))
def test_altered_bodies_with_a_good_crc_decode_or_fail_as_the_shared_codec(name, data, flips):
    # Any byte of the body changed to any value, the CRC made good again: bad
    # BCD, unprintable ASCII, impossible CP56 times, odd weekday bits.
    layout = L.layout_named(name)
    frame = codec.encode(name, data.draw(values_of(layout)))
    body = bytearray(frame[6:-2])
    if not body:
        return
    for pos, val in flips:
        body[pos % len(body)] = val
    bad = _reframe(frame, bytes(body))
    for lenient in (False, True):
        same_outcome(outcome(X.decode, bad, False, lenient), outcome(codec.decode, bad, False, lenient))
    # the same bytes inside a stream
    for tolerant, lenient in ((False, False), (True, True)):
        a = X.FrameReader(tolerant, lenient).push(b"\x00" + bad + bad[:3])
        b = codec.FrameReader(tolerant, lenient).push(b"\x00" + bad + bad[:3])
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same_outcome(("err", x) if isinstance(x, Exception) else ("ok", x),
                         ("err", y) if isinstance(y, Exception) else ("ok", y))


@pytest.mark.parametrize("code", _CODES)
@_SETTINGS
@given(data=st.data(), cut=st.integers(-3, 3), enc=st.integers(0, 3), swap=st.booleans(),
       tolerant=st.booleans(), lenient=st.booleans())
def test_odd_envelopes_decode_or_fail_as_the_shared_codec(code, data, cut, enc, swap, tolerant,
                                                          lenient):
    # Wrong lengths, encrypted bodies, byte-swapped and bad CRCs.
    layout = L.layouts(code)[0]
    frame = bytearray(codec.encode(layout.name, data.draw(values_of(layout))))
    body = bytes(frame[6:-2])
    if cut > 0:
        body += bytes(cut)
    elif cut < 0:
        body = body[:cut]
    frame = bytearray(codec.wrap(code, body, 7, enc))
    if swap:
        frame[-2], frame[-1] = frame[-1], frame[-2]
    frame = bytes(frame)
    same_outcome(outcome(X.decode, frame, tolerant, lenient),
                 outcome(codec.decode, frame, tolerant, lenient))
    a = X.FrameReader(tolerant, lenient)
    b = codec.FrameReader(tolerant, lenient)
    ra, rb = a.push(frame), b.push(frame)
    assert len(ra) == len(rb) and a.swapped_crc == b.swapped_crc and a.errors == b.errors


_ODD = [None, True, False, -1, 1.5, 2 ** 70, "", "1", "12345678901234567890123456789012345",
        "0x12", "ab", "١٢", "é", "a\x00b", "\t", b"12", b"", bytearray(b"1"), [1], 0, 255, 65536]


@pytest.mark.parametrize("name", _NAMES)
def test_odd_values_encode_or_fail_exactly_as_the_shared_codec(name):
    # Wrong types, lengths and ranges in any one field, and a missing field:
    # the same bytes or the same error as the shared codec.
    layout = L.layout_named(name)
    rnd = random.Random(name)
    base = _plain(layout, rnd)
    for field in layout.names:
        for odd in _ODD:
            v = dict(base)
            v[field] = odd
            same_outcome(outcome(X.encode, name, v, 3), outcome(codec.encode, name, v, 3))
        v = dict(base)
        del v[field]
        same_outcome(outcome(X.encode, name, v), outcome(codec.encode, name, v))
        same_outcome(outcome(X.encode, layout.code, v), outcome(codec.encode, layout.code, v))
    for seq, enc in ((-1, 0), (0x12345, 0), (0, 256), (0, -1), ("1", 0)):
        same_outcome(outcome(X.encode, name, base, seq, enc),
                     outcome(codec.encode, name, base, seq, enc))


def _plain(layout, rnd):
    out = {}
    for i, name in enumerate(layout.names):
        k, n = chr(layout.kinds[i]), layout.sizes[i]
        if k == "u":
            out[name] = rnd.randrange(1 << (8 * n))
        elif k == "b":
            out[name] = "".join(rnd.choice("0123456789") for _ in range(2 * n))
        elif k == "h":
            out[name] = "".join(rnd.choice("0123456789ABCDEF") for _ in range(2 * n))
        elif k in "ar":
            out[name] = "".join(rnd.choice(string.ascii_letters) for _ in range(rnd.randrange(n + 1)))
        elif k == "t":
            out[name] = rnd.randrange(F._END)
        else:
            out[name] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(8)))
    return out


@pytest.mark.parametrize("vin", ["  LSVAU2180N21832", "LSVAU2180N21832  ", "\x00LSVAU2180N2183",
                                 "LSVAU\x00180N2183294", "LSVAU2180N2183\xff\xff", " ", ""])
def test_ascii_padding_a_lenient_reading_gives_way_on_reads_as_the_shared_codec(vin):
    # Spaces at either end, padding in front, bytes after the first NUL, FF
    # padding: read the same as protocol/lenient.py reads them (or fail the
    # same when strict), in the bill's VIN and in the start request's
    # reversed one.
    from tests.mp.bench_codec_mp import sample_values
    for name, field in (("bill", "vin"), ("start_request", "vin")):
        layout = L.layout_named(name)
        frame = codec.encode(name, sample_values(layout))
        off = dict((f[0], f[3]) for f in layout.fields)[field]
        raw = vin.encode("latin-1").ljust(17, b"\x00")
        if chr(layout.kinds[layout.names.index(field)]) == "r":
            raw = raw[::-1]
        body = bytearray(frame[6:-2])
        body[off:off + 17] = raw
        bad = _reframe(frame, bytes(body))
        for tolerant, lenient in ((False, False), (True, True), (False, True)):
            same_outcome(outcome(X.decode, bad, tolerant, lenient),
                         outcome(codec.decode, bad, tolerant, lenient))
            a = X.FrameReader(tolerant, lenient).push(bad)
            b = codec.FrameReader(tolerant, lenient).push(bad)
            same_outcome(("err", a[0]) if isinstance(a[0], Exception) else ("ok", a[0]),
                         ("err", b[0]) if isinstance(b[0], Exception) else ("ok", b[0]))


def test_unknown_codes_and_names_fail_as_the_shared_codec():
    for code in (0x00, 0x02 + 0x100, "no_such_frame", 0xFF, -1, 1.0, True, None, b"login", [1]):
        same_outcome(outcome(X.encode, code, {}), outcome(codec.encode, code, {}))
    for raw in (b"", b"\x68", b"\x69\x04\x00\x00\x00\x02\x00\x00",
                codec.wrap(0xFF, b"\x01\x02"), codec.wrap(0x00, b"")):
        same_outcome(outcome(X.decode, raw), outcome(codec.decode, raw))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), crc=st.integers(0, 0xFFFF))
def test_the_c_crc_agrees_with_the_table_crc_for_any_bytes(data, crc):
    from protocol.crc import _crc16_bytewise
    assert X.crc16(data) == _crc16_bytewise(data)
    assert X.crc16(data, crc) == _crc16_bytewise(data, crc)


def test_the_c_crc_is_the_one_in_use():
    # crcmod-plus (setup.cfg) ships its C extension: the fast path must not
    # quietly run on a Python CRC.
    assert X.C_CRC and X.crc16(b"123456789") == 0x4B37


def test_the_time_tables_are_the_calendar():
    t = X.time_tables()
    assert len(t.DMY) == F._END // 86400 and len(t.HMB) == 1440
    for day in range(len(t.DMY)):
        d, mo, y = t.DMY[day]
        assert (y + 2000, mo, d) == F.to_civil(day * 86400)[:3]
        assert t.DAY[y << 9 | mo << 5 | d] == day * 86400
    for m in range(1440):
        assert t.HMB[m] == _cp56(m * 60)[2:4]
    # every masked day / hour-minute / ms the shared codec reads, the same
    # seconds or (BAD: negative) the same refusal
    for key in range(65536):
        y, mo, d = key >> 9, key >> 5 & 15, key & 31
        hi = (key * 40503) >> 3 & 7     # and the bits the codec masks, set now and then
        raw = bytes((0, 0, 0, 0, d | (0xE0 if hi & 1 else 0), mo | (0x30 if hi & 2 else 0),
                     y | (0x80 if hi & 4 else 0)))
        same = outcome(F.cp56_decode, raw, 0)
        assert (t.DAY[key] >= 0) == (same[0] == "ok")
        if same[0] == "ok":
            assert t.DAY[key] == same[1]
    for mi in range(256):
        for h in range(256):
            key = (h << 8 | mi) & 0x1F3F      # as host/fastcodec.py indexes HM
            same = outcome(F.cp56_decode, bytes((0, 0, mi, h, 1, 1, 0)), 0)
            assert (t.HM[key] >= 0) == (same[0] == "ok")
            assert same[0] != "ok" or t.HM[key] == same[1]
    for ms in range(0, 65536, 13):
        same = outcome(F.cp56_decode, bytes((ms & 0xFF, ms >> 8, 0, 0, 1, 1, 0)), 0)
        assert (t.SEC[ms] >= 0) == (same[0] == "ok") and (same[0] != "ok" or t.SEC[ms] == same[1])
    assert 3 * X.BAD + F._END < 0


def _cp56(secs):
    buf = bytearray(7)
    F.cp56_encode(buf, 0, secs)
    return buf


def test_the_bridges_reader_and_encoder_are_the_fast_ones():
    from host import piles, schema
    assert schema.encode.__module__ == "host.schema"
    assert piles.FrameReader is X.FrameReader
    before = X.stats["fallback"]
    raw = schema.encode("heartbeat_reply", {"pile": "55031412782305", "gun": "01", "reply": 0}, 9)
    frames = piles.FrameReader(tolerant=True, lenient=True).push(raw)
    assert frames[0].fields["pile"] == "55031412782305" and X.stats["fallback"] == before
    assert frames[0].problems == []
    # and what the fast path cannot take still arrives, through the shared codec
    frames = piles.FrameReader(tolerant=True, lenient=True).push(raw[:-2] + raw[-1:] + raw[-2:-1])
    assert frames[0].crc_swapped and X.stats["fallback"] == before + 1


def test_a_fast_frame_has_every_slot_of_the_shared_frame():
    raw = codec.encode("heartbeat", {"pile": "55031412782305", "gun": "01", "gun_status": 2})
    for lenient in (False, True):
        f, g = X.decode(raw, lenient=lenient), codec.decode(raw, lenient=lenient)
        for slot in codec.Frame.__slots__:
            assert getattr(f, slot) == getattr(g, slot), slot
