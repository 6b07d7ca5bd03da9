# Lenient reading of frames from piles that are not ours (protocol/lenient.py),
# under CPython and MicroPython: every field that does not identify money is
# read with a named problem instead of refused; the encoder stays strict.
import binascii

from protocol import codec
from protocol import fields as F
from protocol.errors import BadLength, FieldError
from tests.mp.util import raises

PILE = "55031412782305"


def sample_bill():
    # tests/mp/test_codec.py's, kept here so this module loads on its own heap.
    v = {"serial": "55031412782305012018061910262392", "pile": PILE, "gun": "01",
         "start_time": F.to_secs(2020, 3, 16, 17, 14, 47), "end_time": F.to_secs(2020, 3, 16, 18, 0, 0),
         "meter_start": 1234567, "meter_stop": 1334567, "total_energy": 100000, "total_loss": 100000,
         "total_amount": 0, "vin": "LSVAU2180N2183294", "trade_flag": 1,
         "trade_time": F.to_secs(2020, 3, 16, 18, 0, 5), "stop_reason": 0x40, "card": "D14B0A54"}
    for p in ("sharp", "peak", "flat", "valley"):
        v[p + "_price"] = 130000
        v[p + "_energy"] = v[p + "_loss"] = 25000
        v[p + "_amount"] = 32500
        v["total_amount"] += 32500
    return v


def hx(b):
    return binascii.hexlify(b).decode().upper()


def bill_frame(body, code=0x3B):
    return codec.wrap(code, body)


def body_of(v, name="bill"):
    return bytearray(codec.encode(name, v)[6:-2])


def read(frame):
    return codec.decode(frame, tolerant=True, lenient=True)


def test_our_own_bill_reads_the_same_leniently_with_no_problem():
    v = sample_bill()
    frame = codec.encode(0x3B, v)
    f = read(frame)
    assert f.fields == codec.decode(frame).fields and f.problems == []
    assert codec.decode(frame).problems is None      # a strict reading names none


def test_ascii_padded_with_ff_or_spaces_reads_without_a_problem():
    for pad in (b"\xff", b" "):
        b = body_of(sample_bill())
        vin_at = codec.layout_named("bill").fields[-5][3]
        b[vin_at:vin_at + 17] = b"LSVAU2180N" + pad * 7
        f = read(bill_frame(b))
        assert f.fields["vin"] == "LSVAU2180N" and f.problems == [], (pad, f.problems)
        if pad == b"\xff":
            raises(FieldError, codec.decode, bill_frame(b))


def test_non_ascii_bytes_are_kept_escaped_and_named():
    b = body_of(sample_bill())
    vin_at = codec.layout_named("bill").fields[-5][3]
    b[vin_at:vin_at + 17] = b"LSV\xc4\x80U2180N218329"
    f = read(bill_frame(b))
    assert f.fields["vin"] == "LSV\\xC4\\x80U2180N218329"
    assert f.problems == ["ascii_escaped: vin"]
    raises(FieldError, codec.decode, bill_frame(b))


def test_blank_cp56_times_read_as_none_with_a_named_problem():
    b = body_of(sample_bill())
    lay = codec.layout_named("bill")
    at = dict([(x[0], x[3]) for x in lay.fields])
    b[at["start_time"]:at["start_time"] + 7] = b"\x00" * 7
    b[at["trade_time"]:at["trade_time"] + 7] = b"\xff" * 7
    f = read(bill_frame(b))
    assert f.fields["start_time"] is None and f.fields["trade_time"] is None
    assert f.problems == ["time_blank: start_time all 00", "time_blank: trade_time all FF"]
    raises(FieldError, codec.decode, bill_frame(b))
    # any other invalid time is still an error (month 13)
    b[at["trade_time"] + 5] = 13
    b[at["trade_time"]:at["trade_time"] + 5] = b"\x00\x00\x00\x00\x01"
    raises(FieldError, read, bill_frame(b))


def test_pile_serial_and_gun_that_are_not_bcd_read_as_hex_with_a_flag():
    b = body_of(sample_bill())
    b[0] = 0xAB          # serial
    b[16 + 6] = 0x0F     # pile code's last byte
    b[23] = 0xFF         # gun
    f = read(bill_frame(b))
    assert f.fields["serial"] == "AB031412782305012018061910262392"
    assert f.fields["pile"] == "550314127823" + "0F" and f.fields["gun"] == "FF"
    assert f.problems == ["not_bcd: serial AB031412782305012018061910262392",
                          "not_bcd: pile 5503141278230F", "not_bcd: gun FF"]
    raises(FieldError, codec.decode, bill_frame(b))


def test_a_longer_body_keeps_its_extra_bytes():
    b = body_of(sample_bill()) + b"\x01\x02\x03"
    f = read(bill_frame(b))
    assert f.name == "bill" and f.fields["tail"] == "010203"
    assert f.fields["total_amount"] == sample_bill()["total_amount"]
    assert f.problems == ["extra_bytes: 3 byte(s) past the 158-byte bill layout, kept in tail"]
    raises(BadLength, codec.decode, bill_frame(b))
    # 160 bytes: the 158-byte layout plus two, not the 156-byte one plus four
    assert read(bill_frame(body_of(sample_bill()) + b"\x00\x00")).fields["tail"] == "0000"
    # shorter than every layout: still an error
    raises(BadLength, read, bill_frame(bytes(150)))


def test_the_pre_v15_bill_has_4_byte_meter_readings():
    v = sample_bill()
    body = codec.encode_body(codec.layout_named("bill156"), v)
    assert len(body) == 156
    for f in (codec.decode(bill_frame(body)), read(bill_frame(body))):
        assert f.name == "bill156" and f.fields == dict(v, card="00000000D14B0A54")
    # the encoder still sends the 158-byte bill for the same figures
    assert len(codec.encode(0x3B, v)) == 158 + 8


def test_the_v17_bill_0x3d_reads_with_its_meter_fields():
    v = sample_bill()
    v.update({"meter_no": "010000000000", "meter_cipher": "8B" * 34, "meter_proto": 0x0102,
              "meter_enc": 1})
    frame = codec.encode(0x3D, v)
    assert frame[1] == 0xCD and len(frame) == 201 + 8
    f = read(frame)
    assert f.name == "bill17" and f.problems == []
    assert f.fields == dict(v, card="00000000D14B0A54")
    # the money sits after the 43 meter bytes: the 0x3B body shifted by 43
    plain = codec.encode(0x3B, sample_bill())[6:-2]
    assert frame[6 + 38 + 43:-2] == plain[38:] and frame[6:6 + 38] == plain[:38]


def test_the_11_byte_reboot_reads():
    body = binascii.unhexlify(PILE) + b"\x02" + b"\x00\x00\x01"
    f = codec.decode(codec.wrap(0x92, body))
    assert f.name == "reboot11" and f.fields["when"] == 2 and f.fields["reserved"] == "000001"
    # the encoder sends the documented 8 bytes for {pile, when}
    assert len(codec.encode(0x92, {"pile": PILE, "when": 1})) == 8 + 8


def test_a_lenient_reader_reads_a_stream_with_problems_per_frame():
    b = body_of(sample_bill())
    b[23] = 0xFF
    r = codec.FrameReader(tolerant=True, lenient=True)
    out = r.push(bill_frame(b) + codec.encode(0x3B, sample_bill()))
    assert [x.problems for x in out] == [["not_bcd: gun FF"], []]
    strict = codec.FrameReader(tolerant=True).push(bill_frame(b))
    assert isinstance(strict[0], FieldError)


def test_the_encoder_stays_strict():
    v = sample_bill()
    v["gun"] = "0F"
    raises(FieldError, codec.encode, 0x3B, v)
    v = sample_bill()
    v["start_time"] = None
    raises(FieldError, codec.encode, 0x3B, v)
    v = sample_bill()
    v["vin"] = "LSV\xc4"
    raises(FieldError, codec.encode, 0x3B, v)
