# The stream reader at its edges (protocol/reader.py): length bytes below the
# minimum, a start byte that is the last byte of a push (the byte after it is
# not there yet: stale buffer contents must not be read as its length).
# Killers of cosmic-ray survivors (docs/testing.md).
import binascii

from protocol.codec import FrameReader
from protocol.errors import BadLength, FrameError

LOGIN_REPLY = binascii.unhexlify("680C000000025503141278230500DA4C")


def test_length_bytes_below_four_are_bad_lengths_and_the_next_frame_is_found():
    for ln in (0, 1, 2, 3):
        r = FrameReader()
        out = r.push(bytes((0x68, ln)) + LOGIN_REPLY)
        assert isinstance(out[0], BadLength) and "below the minimum 4" in str(out[0]), ln
        frames = [x for x in out if not isinstance(x, FrameError)]
        assert len(frames) == 1 and frames[0].name == "login_reply", (ln, out)


def test_length_byte_four_is_not_below_the_minimum():
    r = FrameReader()
    out = r.push(bytes((0x68, 4, 0, 0, 0, 0x02, 0, 0)) + LOGIN_REPLY)
    assert not any("below the minimum" in str(x) for x in out if isinstance(x, FrameError))
    assert any(getattr(x, "name", None) == "login_reply" for x in out)


def test_a_start_byte_at_the_end_of_a_push_waits_for_its_length_byte():
    r = FrameReader()
    assert r.push(b"\x00\x00\x02") == []          # garbage; leaves 0x02 in the buffer
    assert r.push(b"\x00\x68") == []              # 0x68 last: its length is not here yet
    out = r.push(LOGIN_REPLY[1:])
    assert len(out) == 1 and out[0].name == "login_reply"
    assert r.errors == 0


def test_counters_count_frames_errors_and_skipped_bytes_exactly():
    r = FrameReader()
    assert (r.frames, r.errors, r.skipped) == (0, 0, 0)
    bad = bytearray(LOGIN_REPLY)
    bad[-1] ^= 0xFF                                 # a bad CRC
    out = r.push(b"\x01\x02\x03" + LOGIN_REPLY + bytes((0x68, 2)) + LOGIN_REPLY)
    assert [type(x).__name__ for x in out] == ["Frame", "BadLength", "Frame"]
    assert (r.frames, r.errors, r.skipped) == (2, 1, 4)   # 3 garbage bytes + the bad length byte
    r.push(bytes(bad))
    assert r.errors == 2 and r.frames == 2


def test_a_start_and_a_bad_length_byte_alone_are_reported_at_once():
    r = FrameReader()
    out = r.push(b"\x68\x02")
    assert len(out) == 1 and isinstance(out[0], BadLength)
