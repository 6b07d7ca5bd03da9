# The YKC codec, byte-exact, under CPython and MicroPython.
import binascii

from protocol import codec
from protocol.codec import FrameReader
from protocol.crc import crc16
from protocol.errors import BadCRC, BadLength, FieldError, FrameError, UnknownType
from protocol import fields as F
from tests.mp.util import raises

LOGIN_REPLY = "680C000000025503141278230500DA4C"
TARIFF_CHECK_REPLY = "680ECE040006550314127823050000008E2F"


def h(s):
    return binascii.unhexlify(s)


def hx(b):
    return binascii.hexlify(b).decode().upper()


def sample_bill(deep=False):
    v = {"serial": "55031412782305012018061910262392", "pile": "55031412782305", "gun": "01",
         "start_time": F.to_secs(2020, 3, 16, 17, 14, 47), "end_time": F.to_secs(2020, 3, 16, 18, 0, 0),
         "meter_start": 1234567, "meter_stop": 1334567, "total_energy": 100000, "total_loss": 100000,
         "total_amount": 0, "vin": "LSVAU2180N2183294", "trade_flag": 1,
         "trade_time": F.to_secs(2020, 3, 16, 18, 0, 5), "stop_reason": 0x40, "card": "D14B0A54"}
    periods = ("sharp", "peak", "flat", "valley", "deep") if deep else ("sharp", "peak", "flat", "valley")
    per = 100000 // len(periods)
    for i, p in enumerate(periods):
        e = per if i else 100000 - per * (len(periods) - 1)
        v[p + "_price"] = 130000
        v[p + "_energy"] = e
        v[p + "_loss"] = e
        v[p + "_amount"] = e * 13 // 10
        v["total_amount"] += v[p + "_amount"]
    return v


def test_crc_check_value_is_0x4b37():
    assert crc16(b"123456789") == 0x4B37


def test_official_login_reply_sample_decodes_and_reencodes():
    f = codec.decode(h(LOGIN_REPLY))
    assert f.code == 0x02 and f.name == "login_reply"
    assert f.fields == {"pile": "55031412782305", "result": 0}
    assert hx(codec.encode(f.code, f.fields, f.seq)) == LOGIN_REPLY


def test_official_tariff_check_reply_sample_decodes_and_reencodes():
    f = codec.decode(h(TARIFF_CHECK_REPLY))
    assert f.name == "tariff_check_reply"
    assert f.fields == {"pile": "55031412782305", "model": "0000", "result": 0}
    assert hx(codec.encode(f.code, f.fields, f.seq)) == TARIFF_CHECK_REPLY


def test_reply_echoes_request_sequence_bytes_unchanged():
    req = codec.decode(h(TARIFF_CHECK_REPLY))  # seq bytes CE 04 on the wire
    out = codec.encode("login_reply", {"pile": "1", "result": 0}, seq=codec.reply_seq(req))
    assert out[2:4] == b"\xce\x04"


def test_cp56_sample_time_from_the_document():
    # 98B70E11100314 = 2020-03-16 17:14:47 in the bill sample.
    assert F.cp56_decode(h("98B70E11100314"), 0) == F.to_secs(2020, 3, 16, 17, 14, 47)
    buf = bytearray(7)
    F.cp56_encode(buf, 0, F.to_secs(2020, 3, 16, 17, 14, 47))
    assert hx(buf) == "98B70E11100314"


def test_calendar_round_trips_across_leap_years_and_midnight():
    for y, mo, d in ((2000, 1, 1), (2000, 2, 29), (2024, 2, 29), (2024, 12, 31), (2099, 12, 31)):
        s = F.to_secs(y, mo, d, 23, 59, 59)
        assert F.to_civil(s)[:6] == (y, mo, d, 23, 59, 59)
        assert F.to_civil(s + 1)[3:6] == (0, 0, 0)
    assert F.to_civil(0)[6] == 6  # 2000-01-01 was a Saturday


def test_bill_four_periods_is_0xa2_and_round_trips():
    v = sample_bill()
    out = codec.encode(0x3B, v, seq=0x0180)
    assert out[1] == 0xA2 and len(out) == 158 + 8
    f = codec.decode(out)
    assert f.name == "bill" and f.fields["card"] == "00000000D14B0A54"
    for k in v:
        if k != "card":
            assert f.fields[k] == v[k], k


def test_bill_with_deep_valley_is_0xb2_and_round_trips():
    v = sample_bill(deep=True)
    out = codec.encode(0x3B, v)
    assert out[1] == 0xB2 and len(out) == 174 + 8
    f = codec.decode(out)
    assert f.name == "bill5" and f.fields["deep_energy"] == v["deep_energy"]


def test_meter_reading_uses_five_bytes():
    v = sample_bill()
    v["meter_stop"] = (1 << 40) - 1
    assert codec.decode(codec.encode(0x3B, v)).fields["meter_stop"] == (1 << 40) - 1
    v["meter_stop"] = 1 << 40
    raises(FieldError, codec.encode, 0x3B, v)


def test_encode_names_the_missing_or_bad_field():
    e = raises(FieldError, codec.encode, "heartbeat", {"pile": "1", "gun": "01"})
    assert "gun_status" in str(e)
    e = raises(FieldError, codec.encode, "heartbeat", {"pile": "12a", "gun": "01", "gun_status": 0})
    assert "pile" in str(e)
    e = raises(FieldError, codec.encode, "heartbeat", {"pile": "1", "gun": "01", "gun_status": 256})
    assert "gun_status" in str(e)
    raises(UnknownType, codec.encode, 0x77, {})


def test_decode_rejects_bad_crc_length_and_type():
    good = h(LOGIN_REPLY)
    bad = bytearray(good)
    bad[-1] ^= 1
    raises(BadCRC, codec.decode, bytes(bad))
    raises(BadLength, codec.decode, good[:-1])
    raises(UnknownType, codec.decode, codec.wrap(0x77, b"\x00"))
    raises(BadLength, codec.decode, codec.wrap(0x02, b"\x00" * 9))  # login_reply body is 8


def test_reader_resyncs_after_garbage_and_keeps_going():
    r = FrameReader()
    good = h(LOGIN_REPLY)
    out = r.push(b"\x00\xff\x68\x01noise" + good[:5])
    assert [x for x in out if isinstance(x, codec.Frame)] == []
    out = r.push(good[5:] + good)
    frames = [x for x in out if isinstance(x, codec.Frame)]
    assert len(frames) == 2 and frames[0].fields["pile"] == "55031412782305"
    assert r.pending() == 0


def test_reader_reports_bad_crc_and_finds_the_next_good_frame():
    r = FrameReader()
    bad = bytearray(h(LOGIN_REPLY))
    bad[7] ^= 0x10
    out = r.push(bytes(bad) + h(TARIFF_CHECK_REPLY))
    assert isinstance(out[0], BadCRC)
    assert out[-1].name == "tariff_check_reply"


def test_reader_tolerant_mode_accepts_and_counts_swapped_crc():
    good = bytearray(h(LOGIN_REPLY))
    good[-2], good[-1] = good[-1], good[-2]
    strict = FrameReader()
    assert isinstance(strict.push(bytes(good))[0], BadCRC)
    loose = FrameReader(tolerant=True)
    f = loose.push(bytes(good))[0]
    assert f.name == "login_reply" and f.crc_swapped and loose.swapped_crc == 1


def test_reader_holds_at_most_one_frame_between_pushes():
    r = FrameReader()
    for _ in range(50):
        r.push(b"\x68\xff" + b"\x00" * 100)
        assert r.pending() <= codec.MAX_FRAME


def test_encrypted_frame_is_delivered_with_raw_body():
    out = codec.wrap(0x02, b"\x55\x03\x14\x12\x78\x23\x05\x00", enc=1)
    f = codec.decode(out)
    assert f.enc == 1 and f.fields is None and len(f.body) == 8


def test_every_frame_in_the_table_round_trips_with_zero_values():
    from protocol.frames import FRAMES
    for code, name, direction, flds in FRAMES:
        v = {}
        for fl in flds:
            kind = fl[1]
            v[fl[0]] = {"u": 0, "b": "", "a": "", "h": "", "t": 0, "v": b""}[kind]
        f = codec.decode(codec.encode(name, v, seq=0x1234))
        assert f.code == code and f.name == name and f.seq == 0x1234
        assert (code & 1) == (1 if direction == "P" else 0), name
