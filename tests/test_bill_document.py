# The MQTT bill document (host/schema.py bill_json, undecodable_bill_json,
# dec, bill_hash; docs/mqtt.md), every key exactly: what the platform stores,
# reconciles and confirms by its content hash. The figures below are the
# bill's protocol integers written out at their scales by hand (energy
# x10^4 kWh, amounts x10^4 yuan, prices x10^5 yuan/kWh).
import binascii
import hashlib
import types

from host import schema
from protocol import codec
from protocol.reconcile import reconcile
from tests.test_custody_rules import five_period_bill


def _row(frame, extra=None, crc_swapped=False):
    return types.SimpleNamespace(frame=frame, extra=extra, pile_seq=3, received_at=1700000000.25,
                                 crc_swapped=crc_swapped)


def _hex(b):
    return binascii.hexlify(b).decode().upper()


_PERIODS = [
    # period, price, energy, amount, energy fee, service fee
    ("sharp", "1.23456", "1.2345", "1.5241", "1.1431", "0.3810"),
    ("peak", "1.10000", "1.3456", "1.4802", "1.1102", "0.3700"),
    ("flat", "0.90000", "1.4567", "1.3110", "0.9833", "0.3277"),
    ("valley", "0.60000", "1.5678", "0.9407", "0.7056", "0.2351"),
    ("deep", "0.30000", "1.6789", "0.5037", "0.3778", "0.1259"),
]


def _expected(v, x, frame, extra, complete=True, crc_swapped=False, ext=True):
    periods = [{"period": p, "price": price, "energy": e, "loss": "0.0000", "amount": a,
                "energy_fee": ef if x else None, "service_fee": sf if x else None}
               for p, price, e, a, ef, sf in _PERIODS]
    raw = dict(v)
    if x:
        raw["extra"] = dict(x)
    return {
        "schema": "pc.bill/1", "site": "t1", "pile": "55031412782305", "gun": "01",
        "serial": "55031412782305012405010800000007", "pile_seq": 3,
        "received_at": "2023-11-14T22:13:20.250Z",
        "start_time": "2024-05-01T08:00:00", "end_time": "2024-05-01T09:00:00",
        "trade_time": "2024-05-01T09:00:05",
        "periods": periods,
        "meter": {"start": "123.4567", "stop": "130.7402"},
        "total_energy": "7.2835", "total_loss": "0.0000", "total_amount": "5.7597",
        # 1.1431 + 1.1102 + 0.9833 + 0.7056 + 0.3778; 0.3810 + ... + 0.1259
        "energy_fee": "4.3200" if x else None, "service_fee": "1.4397" if x else None,
        "tariff_model": "0001" if x else None,
        "vin": "LSVAU2180N2183294",
        "nameplate_vin": (x["nameplate_vin"] or None) if x else None,
        "vin_mismatch": bool(x["vin_mismatch"]) if x else None,
        "trade_flag": {"code": 1, "name": "app"},
        "stop_reason": {"code": 0x40, "name": "remote_stop"},
        "card": "00000000D14B0A54",
        "mac": x["mac"] if x else None,
        "complete": complete, "decoded": True,
        "pile_kind": "ours" if ext else "third_party", "frame_type": "0x3B", "layout": "bill5",
        "decode_problems": [],
        "checks": {"ok": True, "problems": []},
        "crc_swapped": crc_swapped,
        "frame": _hex(frame), "content_hash": hashlib.sha256(frame).hexdigest(),
        "extra_frame": _hex(extra) if extra is not None else None,
        "ocmf": None,
        "raw": raw,
    }


def test_a_complete_five_period_bill_document_holds_every_figure_at_its_scale():
    v, x = five_period_bill()
    frame, extra = codec.encode(0x3B, v, 7), schema.encode("bill_extra", x, 8)
    doc = schema.bill_json("t1", _row(frame, extra))
    assert doc == _expected(v, x, frame, extra)
    # the same document from a frame the caller has decoded already
    assert schema.bill_json("t1", _row(frame, extra), frame=codec.decode(frame)) == doc


def test_a_bill_waiting_for_its_fee_split_is_published_incomplete_with_no_fee_figures():
    v, _x = five_period_bill()
    frame = codec.encode(0x3B, v, 7)
    doc = schema.bill_json("t1", _row(frame))
    assert doc == _expected(v, None, frame, None, complete=False)
    # a pile that never sends a 0xEB (not our firmware): complete as it is
    doc = schema.bill_json("t1", _row(frame), ext=False)
    assert doc == _expected(v, None, frame, None, complete=True, ext=False)


def test_vin_mismatch_an_empty_nameplate_a_swapped_crc_and_an_unknown_trade_flag():
    v, x = five_period_bill()
    v["trade_flag"] = 9
    x.update(vin_mismatch=1, nameplate_vin="")
    frame, extra = codec.encode(0x3B, v, 7), schema.encode("bill_extra", x, 8)
    doc = schema.bill_json("t1", _row(frame, extra, crc_swapped=1))
    want = _expected(v, x, frame, extra, crc_swapped=True)
    want["trade_flag"] = {"code": 9, "name": "other"}
    assert (doc["nameplate_vin"], doc["vin_mismatch"]) == (None, True)
    assert doc == want


def test_a_bill_that_does_not_add_up_says_so_in_its_checks():
    v, x = five_period_bill()
    v["deep_amount"] += 1
    frame, extra = codec.encode(0x3B, v, 7), schema.encode("bill_extra", x, 8)
    doc = schema.bill_json("t1", _row(frame, extra))
    problems = reconcile(codec.decode(frame).fields, x)
    assert problems and doc["checks"] == {"ok": False, "problems": problems}


def test_a_four_period_bill_has_four_periods():
    v, x = five_period_bill()
    for p in ("deep_price", "deep_energy", "deep_loss", "deep_amount"):
        del v[p]
    v["total_energy"] -= 16789
    v["total_amount"] -= 5037
    v["meter_stop"] -= 16789
    frame = codec.encode(0x3B, v, 7)
    assert len(frame) == 158 + 8
    doc = schema.bill_json("t1", _row(frame), ext=False)
    assert [p["period"] for p in doc["periods"]] == ["sharp", "peak", "flat", "valley"]
    assert (doc["total_energy"], doc["total_amount"]) == ("5.6046", "5.2560")


def _undecodable(body):
    frame = codec.wrap(0x3B, body, 5)
    err = None
    try:
        codec.decode(frame, tolerant=True)
    except codec.FrameError as e:
        err = e
    assert err is not None
    bill = types.SimpleNamespace(frame=frame, extra=None, pile_seq=4, received_at=1700000000.0,
                                 crc_swapped=True, pile="55031412782305",
                                 serial="55031412782305012405010800000007")
    return frame, err, schema.bill_json("t1", bill)


def test_a_bill_that_does_not_decode_is_published_raw_with_every_figure_null():
    v, _x = five_period_bill()
    body = codec.encode(0x3B, v, 7)[6:-2][:30]       # cut short: no layout has 30 bytes
    frame, err, doc = _undecodable(body)
    assert doc == {
        "schema": "pc.bill/1", "site": "t1", "pile": "55031412782305", "gun": "01",
        "serial": "55031412782305012405010800000007", "pile_seq": 4,
        "received_at": "2023-11-14T22:13:20.000Z", "decoded": False, "error": str(err),
        "pile_kind": "ours", "frame_type": "0x3B", "layout": None, "decode_problems": [],
        "start_time": None, "end_time": None, "trade_time": None, "periods": [],
        "meter": None, "total_energy": None, "total_loss": None, "total_amount": None,
        "energy_fee": None, "service_fee": None, "tariff_model": None, "vin": None,
        "nameplate_vin": None, "vin_mismatch": None, "trade_flag": None, "stop_reason": None,
        "card": None, "mac": None, "complete": True,
        "checks": {"ok": False, "problems": ["undecodable: %s" % err]},
        "crc_swapped": True, "frame": _hex(frame),
        "content_hash": hashlib.sha256(frame).hexdigest(), "extra_frame": None, "ocmf": None, "raw": None,
    }


def test_an_undecodable_bill_names_its_gun_only_when_the_body_reaches_it():
    v, _x = five_period_bill()
    body = codec.encode(0x3B, v, 7)[6:-2]
    assert _undecodable(body[:24])[2]["gun"] == "01"       # serial 16 + pile 7 + gun 1
    assert _undecodable(body[:23])[2]["gun"] is None
    assert _undecodable(body[:10])[2]["gun"] is None


def test_decimal_strings_are_exact_at_every_scale_and_sign():
    d = schema.dec
    assert [d(0, 4), d(5, 4), d(10000, 4), d(123456, 5), d(-12345, 4), d(-5, 2), d(7, 0),
            d(-7, 0), d(99, 1), d(1000, 3), d(-1, 4)] == \
        ["0.0000", "0.0005", "1.0000", "1.23456", "-1.2345", "-0.05", "7",
         "-7", "9.9", "1.000", "-0.0001"]


def test_the_content_hash_is_the_sha256_of_the_frame_as_held():
    frame = bytes(range(40))
    assert schema.bill_hash(frame) == hashlib.sha256(frame).hexdigest()
    assert schema.bill_hash(bytearray(frame)) == schema.bill_hash(frame)
    assert schema.bill_hash(memoryview(frame)) == schema.bill_hash(frame)


def test_a_fee_split_kept_with_its_crc_bytes_swapped_still_completes_the_document():
    # Piles that send the CRC high byte first are accepted (tolerant) and
    # their frames kept as sent (bridge._raw): the document reads them so.
    v, x = five_period_bill()
    frame, extra = codec.encode(0x3B, v, 7), schema.encode("bill_extra", x, 8)
    swapped = extra[:-2] + bytes((extra[-1], extra[-2]))
    assert swapped != extra
    doc = schema.bill_json("t1", _row(frame, swapped))
    assert doc == _expected(v, x, frame, swapped)
    # and a bill frame kept so (crc_swapped): decoded, not published raw
    bswapped = frame[:-2] + bytes((frame[-1], frame[-2]))
    doc = schema.bill_json("t1", _row(bswapped, swapped, crc_swapped=1))
    assert doc == _expected(v, x, bswapped, swapped, crc_swapped=True)


def test_a_signed_bill_carries_its_ocmf_record_and_verdict():
    # The record the bridge rebuilt and checked (host/ocmf_check.py), as the
    # store joins it to the bill; null before the signature came.
    v, x = five_period_bill()
    frame, extra = codec.encode(0x3B, v, 7), schema.encode("bill_extra", x, 8)
    row = _row(frame, extra)
    row.ocmf_record, row.ocmf_verdict, row.ocmf_key = "OCMF|{}|{}", "verified", "3059AB"
    doc = schema.bill_json("t1", row)
    assert doc["ocmf"] == {"record": "OCMF|{}|{}", "verdict": "verified", "verified": True,
                           "public_key": "3059AB"}
    row.ocmf_verdict = "bad_signature"
    assert schema.bill_json("t1", row)["ocmf"]["verified"] is False
    expect = _expected(v, x, frame, extra)
    del expect["ocmf"], doc["ocmf"]
    assert doc == expect
