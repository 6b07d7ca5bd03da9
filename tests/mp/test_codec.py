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


def test_fast_crc_paths_agree_with_the_plain_byte_loop():
    # crc16 is a viper function (MicroPython) or a two-bytes-a-step table
    # (CPython); the byte loop is the reference.
    from protocol.crc import _crc16_bytewise
    data = bytearray(300)
    for i in range(300):
        data[i] = (i * 151 + 7) & 0xFF
    mv = memoryview(data)
    for n in (0, 1, 2, 3, 8, 9, 165, 166, 259):
        assert crc16(data[:n]) == _crc16_bytewise(data[:n]), n
        assert crc16(bytes(data[:n])) == _crc16_bytewise(data[:n]), n
        assert crc16(mv[1:n + 1]) == _crc16_bytewise(data[1:n + 1]), n
        assert crc16(data[:n], 0x1234) == _crc16_bytewise(data[:n], 0x1234), n


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


def sample_status(refusing=None):
    # A 0xE5 as our firmware sends it; refusing=None: the form of firmware from
    # before refusing_starts.
    v = {"pile": "55031412782305", "pending": 3, "unsettled": 1, "illegal": 0,
         "journal_used": 40960, "journal_limit": 65536,
         "oldest_pending": "55031412782305012405010800000042", "state": 3, "boot_reason": 2,
         "fw_version": "209.04.0", "hmi_version": "103"}
    if refusing is not None:
        v["refusing_starts"] = refusing
    return v


def test_status_reply_of_current_firmware_is_56_bytes_and_round_trips():
    v = sample_status(refusing=1)
    out = codec.encode(0xE5, v, seq=0x0203)
    assert out[1] == 56 + 4 and len(out) == 56 + 8
    f = codec.decode(out)
    assert f.name == "status_reply" and f.fields == v and f.seq == 0x0203
    assert codec.encode("status_reply", f.fields, seq=0x0203) == out


def test_status_reply_of_firmware_before_refusing_starts_decodes_by_its_55_byte_length():
    v = sample_status()
    out = codec.encode(0xE5, v, seq=0x0203)          # no refusing_starts: the old form
    assert out[1] == 55 + 4 and len(out) == 55 + 8
    f = codec.decode(out)
    assert f.name == "status_reply55" and f.fields == v and "refusing_starts" not in f.fields
    assert codec.encode("status_reply55", f.fields, seq=0x0203) == out
    # the same 55 bytes are the new form's first 55: only the flag is missing
    new = codec.encode(0xE5, sample_status(refusing=0))
    assert new[6:6 + 55] == out[6:6 + 55]
    # by the stream reader too, old and new forms back to back
    r = FrameReader()
    got = r.push(out + new)
    assert [x.name for x in got] == ["status_reply55", "status_reply"]
    raises(BadLength, codec.layout_for, 0xE5, 54)


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
    from protocol.frames import lines
    zero = {"u": 0, "b": "", "a": "", "r": "", "h": "", "t": 0, "v": b""}
    for code, name, _ in lines():
        l = codec.layout_named(name)
        v = {}
        for i in range(len(l.names)):
            v[l.names[i]] = zero[chr(l.kinds[i])]
        f = codec.decode(codec.encode(name, v, seq=0x1234))
        assert f.code == code and f.name == name and f.seq == 0x1234
        assert l.direction == ("P" if code & 1 else "S"), name


# --- the whole V1.6 table, checked against the document ----------------------

# Body bytes of every standard frame, from the document's field tables (the
# length byte is this + 4). Frames whose length varies give their fixed part.
V16_BODY = {
    0x01: 30, 0x02: 8, 0x03: 9, 0x04: 9, 0x05: 9, 0x06: 10, 0x09: 7, 0x0A: 90,
    0x12: 8, 0x13: 60, 0x15: 73, 0x17: 45, 0x19: 39, 0x1B: 32, 0x1D: 28, 0x21: 28,
    0x23: 44, 0x25: 31, 0x31: 51, 0x32: 38, 0x33: 26, 0x34: 44, 0x35: 10, 0x36: 8,
    0x3B: 158, 0x40: 17, 0x41: 16, 0x42: 20, 0x43: 9, 0x44: 8, 0x45: 7, 0x46: 8,
    0x47: 7, 0x48: 8, 0x51: 8, 0x52: 9, 0x55: 14, 0x56: 14, 0x57: 8, 0x58: 90,
    0x61: 16, 0x62: 13, 0x63: 13, 0x91: 8, 0x92: 8, 0x93: 8, 0x94: 94,
    0xA1: 58, 0xA2: 44, 0xA3: 33, 0xA4: 50,
}

# V1.7's own bill (the 0x3D field table, cited in docs/protocol.md): the 0x3B
# body with the meter's number (6), ciphertext (34), protocol version (2) and
# encryption (1) after the times. Its sample's length byte is 0xCD (205).
V17_BODY = {0x3D: 201}


def test_every_standard_v16_frame_is_declared_with_the_documented_size():
    for code, size in V16_BODY.items():
        l = codec.layouts(code)[0]
        assert l.size == size, (hex(code), l.name, l.size, size)
        assert l.direction == ("P" if code & 1 else "S")


def test_the_v17_bill_is_declared_with_the_documented_size():
    for code, size in V17_BODY.items():
        l = codec.layouts(code)[0]
        assert l.size == size and l.size + 4 == 0xCD, (hex(code), l.name, l.size)
        assert l.names[:5] == ("serial", "pile", "gun", "start_time", "end_time")
        assert l.names[5:9] == ("meter_no", "meter_cipher", "meter_proto", "meter_enc")
        assert l.names[9] == "sharp_price" and l.names[-1] == "card"


def test_extension_frames_keep_to_their_range_and_direction_parity():
    from protocol.frames import EXT_FIRST, EXT_LAST, direction, lines
    ext = []
    for code, name, _ in lines():
        assert (code & 1) == (1 if direction(code) == "P" else 0), name
        if EXT_FIRST <= code <= EXT_LAST:
            ext.append(code)
        else:
            assert code in V16_BODY or code in V17_BODY or code in (0xF0, 0xF1), hex(code)
    assert EXT_FIRST == 0xD0 and EXT_LAST == 0xEF
    for code in (0xD1, 0xD2, 0xD4, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xEA, 0xEB, 0xEC,
                 0xED, 0xEE):
        assert code in ext, hex(code)
    # 0xF0 / 0xF1 are the field's QR-prefix frames, never ours
    assert 0xF0 not in ext and 0xF1 not in ext


def test_vin_in_a_start_request_is_sent_back_to_front():
    vin = "LSVAU2180N2183294"
    v = {"pile": "32010200000001", "gun": "01", "start_type": 3, "need_password": 0,
         "card": "", "password": "", "vin": vin}
    out = codec.encode("start_request", v)
    got = out[6 + 34:6 + 51]
    for i in range(17):
        assert got[i] == ord(vin[16 - i])
    assert codec.decode(out).fields["vin"] == vin
    # The bill carries the VIN in natural order.
    b = sample_bill()
    assert vin.encode() in codec.encode(0x3B, b)


def test_parking_lock_gun_number_is_binary_not_bcd():
    out = codec.encode("lock_command", {"pile": "32010200000001", "gun": 10, "action": 0x55,
                                        "reserved": ""})
    assert out[13] == 0x0A and out[14] == 0x55
    assert codec.decode(out).fields["gun"] == 10


def test_remote_start_sample_body_decodes_to_the_documented_values():
    # The document's sample CRC (4622) does not verify: re-wrap its body.
    body = h("55031412782305012018061914444680" "55031412782305" "01" "0000001000000573"
             "00000000D14B0A54" "A0860100")
    f = codec.decode(codec.wrap(0x34, body, seq=0x7C00))
    assert f.fields == {"serial": "55031412782305012018061914444680", "pile": "55031412782305",
                        "gun": "01", "logical_card": "0000001000000573",
                        "card": "00000000D14B0A54", "balance": 100000}


def test_qr_prefix_sample_from_the_field_decodes():
    raw = h("685E000600F03610009512403201516874747073" "3a2f2f6368617267696e672e667a63736e792e"
            "636f6d2f636f64652f67756e44657461696c3f6f72674e6f3d4d4133383631375938266964"
            "3d313836302663617253636f70653d31266e6f3dd8c9")
    f = codec.decode(raw)
    assert f.name == "qr_prefix" and f.fields["pile"] == "36100095124032"
    assert f.fields["prefix_len"] == len(f.fields["prefix"]) == 0x51
    assert f.fields["prefix"].startswith(b"https://")


def test_offline_card_list_round_trips_as_records():
    cards = [{"logical_card": "1000000573", "card": "D14B0A54"},
             {"logical_card": "1000000574", "card": "E14C0A54"}]
    blob = codec.pack_records("card_sync", "cards", cards)
    assert len(blob) == 32
    out = codec.encode("card_sync", {"pile": "32010200000001", "count": 2, "cards": blob})
    assert out[1] == 4 + 8 + 32
    f = codec.decode(out)
    got = codec.unpack_records("card_sync", "cards", f.fields["cards"])
    assert got == [{"logical_card": "0000001000000573", "card": "00000000D14B0A54"},
                   {"logical_card": "0000001000000574", "card": "00000000E14C0A54"}]
    raises(FieldError, codec.unpack_records, "card_sync", "cards", blob[:15])
    raises(FieldError, codec.pack_records, "card_sync", "count", cards)


def test_clear_reply_carries_one_result_per_card_without_a_count():
    res = [{"card": "D14B0A54", "result": 1, "reason": 0}, {"card": "E14C0A54", "result": 0,
                                                           "reason": 1}]
    out = codec.encode("card_clear_reply", {"pile": "1", "results": codec.pack_records(
        "card_clear_reply", "results", res)})
    f = codec.decode(out)
    assert [r["result"] for r in codec.unpack_records("card_clear_reply", "results",
                                                      f.fields["results"])] == [1, 0]


def test_vin_list_push_holds_at_most_twelve_records():
    recs = [{"vin": "LSVAU2180N21832%02d" % i, "department": i} for i in range(12)]
    blob = codec.pack_records("vin_list", "records", recs)
    f = codec.decode(codec.encode("vin_list", {"version": 7, "count": 12, "records": blob}))
    assert codec.unpack_records("vin_list", "records", f.fields["records"])[11] == recs[11]
    recs.append({"vin": "X", "department": 1})
    blob = codec.pack_records("vin_list", "records", recs)
    e = raises(FieldError, codec.encode, "vin_list", {"version": 7, "count": 13, "records": blob})
    assert "records" in str(e)


def test_classic_layout_views_still_work():
    assert len(codec.LAYOUTS[0x3B]) == 3 and 0x3B in codec.LAYOUTS
    bill = codec.BY_NAME["bill"]
    assert bill.fields[0] == ("serial", "b", 16, 0) and bill.fields[-1][0] == "card"
    assert codec.BY_NAME.get("nope") is None and "bill5" in codec.BY_NAME
    assert codec.layout_for(0x3B, 174).name == "bill5"
    raises(BadLength, codec.layout_for, 0x3B, 170)


def test_layout_cache_stays_within_its_size():
    from protocol import layout
    saved = layout.CACHE_SIZE
    layout.CACHE_SIZE = 3
    try:
        layout._cache.clear()
        for name in ("login", "bill", "bill5", "realtime", "heartbeat", "remote_stop"):
            codec.layout_named(name)
            assert len(layout._cache) <= 3
        f = codec.decode(codec.encode(0x3B, sample_bill()))
        assert f.name == "bill"
    finally:
        layout.CACHE_SIZE = saved


def test_reader_finds_frames_fed_one_byte_at_a_time():
    r = FrameReader()
    got = []
    for b in b"\x00" + h(LOGIN_REPLY) + b"\x68" + h(TARIFF_CHECK_REPLY):
        got.extend(r.push(bytes([b])))
        assert r.pending() <= codec.MAX_FRAME
    # The stray 0x68 reads as a frame of length 0x68 + 4: the reply behind it
    # shows once that many bytes have come and the false start failed its CRC.
    assert [x.name for x in got if isinstance(x, codec.Frame)] == ["login_reply"]
    for _ in range(100):
        got.extend(r.push(b"\x00"))
    names = [x.name for x in got if isinstance(x, codec.Frame)]
    assert names == ["login_reply", "tariff_check_reply"]
    assert isinstance(got[1], BadCRC)


def test_reader_takes_many_frames_in_one_large_chunk():
    bill = codec.encode(0x3B, sample_bill(deep=True))
    chunk = (b"\xff" * 100 + bill) * 3 + bill[:40]  # > 3 x MAX_FRAME in one push
    r = FrameReader()
    got = r.push(chunk)
    assert len(got) == 3 and got[2].name == "bill5" and r.pending() == 40
    assert r.skipped == 300
    got = r.push(bill[40:])
    assert len(got) == 1 and got[0].fields["deep_energy"] == 20000


def test_bcd_and_ascii_fields_reject_what_they_cannot_carry():
    raises(FieldError, codec.encode, "login_reply", {"pile": "1234567890123456", "result": 0})
    raises(FieldError, codec.encode, "login", {"pile": "1", "pile_type": 0, "guns": 1,
                                               "proto_version": 16, "sw_version": "v\x01",
                                               "net_type": 0, "sim": "", "carrier": 0})
    bad = bytearray(h(LOGIN_REPLY)[6:-2])
    bad[0] = 0x5A  # a nibble above 9 in the pile number
    e = raises(FieldError, codec.decode, codec.wrap(0x02, bytes(bad)))
    assert "pile" in str(e) and "5A" in str(e)


def _ident(f):
    return (f.code, f.seq, f.body)


def test_reader_survives_mutated_frames_and_finds_the_intact_frame_behind_each():
    # A small deterministic fuzz (the hypothesis one runs on CPython only), on
    # whichever interpreter runs this: a frame with one byte changed, its
    # length byte changed or cut short is refused by decode() with a
    # FrameError (CRC-16 catches every error burst of 16 bits or less), an
    # intact one is decoded; the reader yields only frames and FrameErrors
    # and still finds the intact frame sent behind each mutated one.
    seed = [12345]

    def rnd(n):
        seed[0] = (seed[0] * 1103515245 + 12345) & 0x7FFFFFFF
        return seed[0] % n

    goods = [h(LOGIN_REPLY), h(TARIFF_CHECK_REPLY), codec.encode(0x3B, sample_bill(True)),
             codec.encode("card_sync", {"pile": "1", "count": 1, "cards": b"\x00" * 16})]
    marker_raw = h(TARIFF_CHECK_REPLY)
    marker = codec.decode(marker_raw)
    fill = b"\x00" * codec.MAX_FRAME       # idle line: no 0x68 in it
    r = FrameReader(tolerant=True)
    refused = intact = 0
    for i in range(150):
        good = goods[rnd(len(goods))]
        g = bytearray(good)
        op = rnd(5)
        if op == 0:
            g[rnd(len(g))] ^= 1 << rnd(8)
        elif op == 1:
            g = g[:rnd(len(g)) + 1]
        elif op == 2:
            g[1] = rnd(256)
        elif op == 3:
            g[rnd(len(g))] = 0x68
        # op 4: left intact, among the mutated ones
        g = bytes(g)
        try:
            f = codec.decode(g)
        except FrameError:
            f = None
        assert (f is not None) == (g == good), (i, op, hx(g))
        if f is None:
            refused += 1
        else:
            intact += 1
            assert _ident(f) == _ident(codec.decode(good))
        got = r.push(g) + r.push(marker_raw)
        # A false start in g may claim up to 255 bytes and hide the marker
        # until they have come: idle fill until the reader holds nothing.
        for _ in range(4):
            if not r.pending():
                break
            got += r.push(fill)
        assert r.pending() == 0, (i, op, hx(g))
        for x in got:
            assert isinstance(x, (codec.Frame, FrameError)), x
        frames = [_ident(x) for x in got if isinstance(x, codec.Frame)]
        want = ([_ident(f)] if f is not None else []) + [_ident(marker)]
        assert frames == want, (i, op, hx(g), frames)
    assert refused > 100 and intact > 20, (refused, intact)


def test_fit_clamps_only_report_fields_out_of_range_and_names_them():
    v = {"serial": "0" * 32, "pile": "55031412782305", "gun": "01", "status": 3, "homed": 0,
         "plugged": 1, "voltage": 2200, "current": 300, "gun_temp": 0, "cable_code": "0" * 16,
         "soc": 0, "battery_temp": 0, "minutes": 12, "minutes_left": 107000, "energy": 5,
         "loss_energy": 0, "amount": 7, "faults": 0}
    raises(FieldError, codec.encode, "realtime", v)
    assert codec.fit("realtime", v) == ["minutes_left"]
    assert v["minutes_left"] == 0xFFFF and v["minutes"] == 12 and v["voltage"] == 2200
    v["voltage"] = -3
    assert codec.fit("realtime", v) == ["voltage"] and v["voltage"] == 0
    assert codec.fit("realtime", v) == []
    f = codec.decode(codec.encode("realtime", v))
    assert f.fields["minutes_left"] == 0xFFFF


def test_an_error_after_a_good_crc_carries_the_frame_as_received():
    # A bill with a good CRC that we cannot read (a field out of its
    # encoding, an unexpected length) must still be kept raw by the bridge:
    # the error carries code, seq and body exactly as received.
    good = codec.encode("bill_confirm", {"serial": "1" * 32, "result": 0}, 0x1234)
    body = bytearray(good[6:-2])
    body[0] = 0xAB                                   # not BCD
    raw = codec.wrap(0x40, body, 0x1234)
    e = raises(FieldError, codec.decode, raw)
    assert e.frame.code == 0x40 and e.frame.seq == 0x1234 and e.frame.body == bytes(body)
    assert e.frame.fields is None
    longer = codec.wrap(0x40, bytes(good[6:-2]) + b"\x00\x00", 7)   # two bytes more than the table
    e = raises(BadLength, codec.decode, longer)
    assert e.frame.code == 0x40 and len(e.frame.body) == 19
    r = FrameReader()
    got = r.push(b"\x00" + raw + longer)
    assert [type(x).__name__ for x in got] == ["FieldError", "BadLength"]
    assert got[0].frame.body == bytes(body)
    bad_crc = bytearray(raw)
    bad_crc[-1] ^= 1
    e = raises(BadCRC, codec.decode, bytes(bad_crc))
    assert getattr(e, "frame", None) is None         # bytes in doubt: nothing to keep as a frame
