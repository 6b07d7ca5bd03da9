"""Fuzzing the stream reader (protocol.codec.FrameReader) and decode():
whatever bytes arrive, only Frame or FrameError come out, the buffer stays
within one frame, and a good frame behind garbage is still found."""
from hypothesis import HealthCheck, given, settings, strategies as st

from protocol import codec
from protocol import fields as F
from protocol.errors import BadCRC, FrameError
from protocol.frames import each

FRAMES = list(each())
LAST_SECOND = F.to_secs(2099, 12, 31, 23, 59, 59)
PRINTABLE = "".join(chr(c) for c in range(32, 127))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Where a false start in the garbage could, once in 65536, carry a valid CRC
# and so legitimately swallow the frame behind it, the examples are fixed
# (derandomized) so that the run is the same every time.
FIXED = settings(FUZZ, derandomize=True)


def _value(f):
    kind, size = f[1], f[2]
    if kind == "u":
        return st.integers(0, (1 << (8 * size)) - 1)
    if kind == "b":
        return st.text("0123456789", max_size=2 * size)
    if kind in "ar":
        return st.text(PRINTABLE, max_size=size)
    if kind == "h":
        return st.text("0123456789ABCDEF", max_size=2 * size)
    if kind == "t":
        return st.integers(0, LAST_SECOND)
    rec = sum(r[2] for r in f[5]) if len(f) > 5 else 1
    return st.integers(0, size // rec).flatmap(lambda n: st.binary(min_size=n * rec,
                                                                   max_size=n * rec))


@st.composite
def good_frames(draw):
    code, name, direction, fields = draw(st.sampled_from(FRAMES))
    values = draw(st.fixed_dictionaries(dict((f[0], _value(f)) for f in fields)))
    return codec.encode(name, values, seq=draw(st.integers(0, 0xFFFF)))


@st.composite
def mutated(draw):
    frame = bytearray(draw(good_frames()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate", "length",
                                   "swap_crc"]))
        if op == "flip" and frame:
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate" and frame:
            frame = frame[:draw(st.integers(0, len(frame) - 1))]
        elif op == "insert":
            i = draw(st.integers(0, len(frame)))
            frame[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "duplicate":
            frame = frame + frame
        elif op == "length" and len(frame) > 1:
            frame[1] = draw(st.sampled_from([0, 1, 3, 4, 0xFE, 0xFF, frame[1] + 1 & 0xFF]))
        elif op == "swap_crc" and len(frame) > 2:
            frame[-1], frame[-2] = frame[-2], frame[-1]
    return bytes(frame)


def _chunks(data, cuts):
    out = []
    last = 0
    for c in sorted(set(c % (len(data) + 1) for c in cuts)):
        out.append(data[last:c])
        last = c
    out.append(data[last:])
    return out


def _feed(reader, data, cuts):
    got = []
    for chunk in _chunks(data, cuts):
        got.extend(reader.push(chunk))
        assert reader.pending() <= codec.MAX_FRAME
    for x in got:
        assert isinstance(x, (codec.Frame, FrameError)), repr(x)
    return got


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(0, 4000), max_size=20), st.booleans())
def test_random_bytes_yield_only_frames_and_frame_errors(data, cuts, tolerant):
    _feed(codec.FrameReader(tolerant=tolerant), data, cuts)


@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=6), st.lists(st.integers(0, 4000), max_size=10),
       st.booleans())
def test_mutated_frames_yield_only_frames_and_frame_errors(frames, cuts, tolerant):
    _feed(codec.FrameReader(tolerant=tolerant), b"".join(frames), cuts)


@FUZZ
@given(mutated())
def test_decode_of_one_mutated_frame_raises_only_frame_errors(raw):
    try:
        f = codec.decode(raw)
    except FrameError:
        return
    # Accepted: then exactly these bytes are one frame (envelope, length and
    # CRC), not a frame with something around it or a CRC that was not right.
    assert codec.wrap(f.code, f.body, f.seq, f.enc) == raw


def _ident(f):
    return (f.code, f.seq, f.body)


@FIXED
@given(st.lists(st.tuples(st.binary(max_size=300), good_frames()), min_size=1, max_size=6),
       st.lists(st.integers(0, 4000), max_size=10), st.booleans())
def test_every_intact_frame_placed_in_noise_is_recovered_in_order(pieces, cuts, tolerant):
    # Noise before each frame may hold false starts (0x68 and a length) that
    # swallow frames behind them; each is found once its claimed bytes have
    # come and failed their CRC (idle fill without 0x68 here).
    r = codec.FrameReader(tolerant=tolerant)
    got = _feed(r, b"".join(noise + good for noise, good in pieces), cuts)
    for _ in range(len(pieces) * 2 + 2):         # each false start needs at most one frame
        if not r.pending():
            break
        got += _feed(r, b"\x00" * codec.MAX_FRAME, [])
    assert r.pending() == 0
    found = iter([_ident(x) for x in got if isinstance(x, codec.Frame)])
    want = [_ident(codec.decode(good)) for _, good in pieces]
    # In order; a false start in the noise may (once in 65536) pass its CRC
    # and show as a frame too: FIXED keeps the examples the same every run.
    missing = [w for w in want if w not in found]
    assert not missing, "intact frames lost in the noise (or out of order): %d of %d" % (
        len(missing), len(want))


@FIXED
@given(st.binary(max_size=600), good_frames(), st.lists(st.integers(0, 2000), max_size=10))
def test_a_good_frame_after_garbage_is_still_found(garbage, good, cuts):
    # Garbage may hold a false start whose length swallows the good frame; it is
    # found once that many bytes have come (here: idle line fill without 0x68).
    r = codec.FrameReader()
    got = _feed(r, garbage + good + b"\x00" * codec.MAX_FRAME, cuts)
    want = codec.decode(good)
    found = [x for x in got if isinstance(x, codec.Frame)
             and (x.code, x.seq, x.body) == (want.code, want.seq, want.body)]
    assert found, "good frame lost after %d bytes of garbage" % len(garbage)
    assert r.pending() <= codec.MAX_FRAME


@FUZZ
@given(good_frames(), st.integers(2, 5), st.lists(st.integers(0, 2000), max_size=10))
def test_duplicated_frames_are_each_reported(good, times, cuts):
    got = _feed(codec.FrameReader(), good * times, cuts)
    assert len([x for x in got if isinstance(x, codec.Frame)]) == times


@FIXED
@given(good_frames(), st.binary(max_size=40).filter(lambda b: b"\x68" not in b))
def test_oversized_length_byte_costs_at_most_one_frame_of_delay(good, filler):
    # A false start claiming 255 bytes: reported as a bad CRC once 259 bytes are
    # in, then the reader rescans and finds the frame it had swallowed.
    r = codec.FrameReader()
    got = _feed(r, b"\x68\xff" + filler + good + b"\x00" * codec.MAX_FRAME, [])
    assert any(isinstance(x, BadCRC) for x in got)
    assert any(isinstance(x, codec.Frame) and x.body == codec.decode(good).body for x in got)


@FUZZ
@given(good_frames())
def test_tolerant_reader_counts_swapped_crcs(good):
    b = bytearray(good)
    b[-1], b[-2] = b[-2], b[-1]
    r = codec.FrameReader(tolerant=True)
    got = r.push(bytes(b))
    if b[-1] == b[-2]:  # a palindromic CRC is its own swap
        assert got[0].crc_swapped is False
    else:
        assert got[0].crc_swapped and r.swapped_crc == 1
