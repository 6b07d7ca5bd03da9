"""The construct dissector (host/dissect.py) against protocol.codec, for every
frame type in both directions, and the pile-frames command line."""
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from protocol import codec
from protocol import fields as F
from protocol.frames import each
from host import dissect as D
from tools import frames as cli
from sim.programs import find_program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGIN_REPLY = "680C000000025503141278230500DA4C"
TARIFF_CHECK_REPLY = "680ECE040006550314127823050000008E2F"
LAST_SECOND = F.to_secs(2099, 12, 31, 23, 59, 59)
FRAMES = list(each())
NAMES = [f[1] for f in FRAMES]
PRINTABLE = "".join(chr(c) for c in range(32, 127))


def _value(f):
    kind, size = f[1], f[2]
    if kind == "u":
        return st.integers(0, (1 << (8 * size)) - 1)
    if kind == "b":
        return st.text("0123456789", min_size=2 * size, max_size=2 * size)
    if kind in "ar":
        return st.text(PRINTABLE, max_size=size)
    if kind == "h":
        return st.text("0123456789ABCDEF", min_size=2 * size, max_size=2 * size)
    if kind == "t":
        return st.integers(0, LAST_SECOND)
    if kind == "v":
        if len(f) > 5:
            rec = st.fixed_dictionaries(dict((r[0], _value(r)) for r in f[5]))
            return st.lists(rec, max_size=size // sum(r[2] for r in f[5]))
        return st.binary(max_size=size)
    raise AssertionError(kind)


def _frame_values(fields):
    return st.fixed_dictionaries(dict((f[0], _value(f)) for f in fields))


def _for_codec(name, fields, values):
    # protocol.codec carries a field of records as bytes
    out = dict(values)
    for f in fields:
        if f[1] == "v" and len(f) > 5:
            out[f[0]] = codec.pack_records(name, f[0], values[f[0]])
    return out


def _plain(c):
    if isinstance(c, list):
        return [_plain(x) for x in c]
    if isinstance(c, dict):
        return dict((k, _plain(v)) for k, v in c.items() if not k.startswith("_"))
    return c


SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("code,name,direction,fields", FRAMES, ids=NAMES)
@SLOW
@given(data=st.data())
def test_codec_bytes_parse_in_construct_to_the_same_values(code, name, direction, fields, data):
    values = data.draw(_frame_values(fields))
    seq = data.draw(st.integers(0, 0xFFFF))
    raw = codec.encode(name, _for_codec(name, fields, values), seq=seq)
    c = D.parse(raw)
    assert (c.type, c.name, c.seq, c.enc) == (code, name, seq, 0)
    assert _plain(c.body) == values
    assert ((code & 1) == 1) == (direction == "P")


@pytest.mark.parametrize("code,name,direction,fields", FRAMES, ids=NAMES)
@SLOW
@given(data=st.data())
def test_construct_bytes_decode_in_the_codec_to_the_same_values(code, name, direction, fields,
                                                                 data):
    values = data.draw(_frame_values(fields))
    seq = data.draw(st.integers(0, 0xFFFF))
    raw = D.build(name, values, seq=seq)
    f = codec.decode(raw)
    assert (f.code, f.name, f.seq) == (code, name, seq)
    assert f.fields == _for_codec(name, fields, values)
    assert raw == codec.encode(name, f.fields, seq=seq)  # byte-exact both ways


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 3))
def test_crc_agrees_with_crcmod_for_any_bytes(data, skip):
    import crcmod.predefined
    from protocol.crc import crc16
    want = crcmod.predefined.mkCrcFun("modbus")(data[skip:])
    assert crc16(data[skip:]) == want
    assert crc16(memoryview(bytearray(data))[skip:]) == want


def test_both_agree_on_the_official_samples():
    for hx in (LOGIN_REPLY, TARIFF_CHECK_REPLY):
        raw = bytes.fromhex(hx)
        assert _plain(D.parse(raw).body) == codec.decode(raw).fields


def test_both_reject_a_bad_crc_and_an_unknown_type():
    bad = bytearray.fromhex(LOGIN_REPLY)
    bad[-1] ^= 1
    for raw in (bytes(bad), codec.wrap(0x77, b"\x00")):
        with pytest.raises(D.DissectError):
            D.parse(raw)
        with pytest.raises(codec.FrameError):
            codec.decode(raw)


def test_both_0xE5_forms_are_told_apart_by_length_in_construct_as_in_the_codec():
    from tests.mp.test_codec import sample_status
    for refusing, name, size in ((None, "status_reply55", 55), (1, "status_reply", 56)):
        v = sample_status(refusing)
        raw = codec.encode(0xE5, v)
        c = D.parse(raw)
        assert (c.name, len(raw) - 8) == (name, size)
        assert _plain(c.body) == codec.decode(raw).fields == v
        assert D.build(name, v) == raw


def test_scaled_display_of_units_offsets_and_times():
    f = dict((x[0], x) for x in D.FIELDS["bms_params"])
    assert D.display(f["max_current"], 4001, for_json=True) == (0.1, "A")
    assert str(D.scaled(f["max_current"], 4001)) == "0.1"
    assert D.display(f["max_temp"], 75) == (25, "C")
    bill = dict((x[0], x) for x in D.FIELDS["bill"])
    assert str(D.display(bill["sharp_price"], 130000)[0]) == "1.30000"
    assert D.display(bill["sharp_price"], 130000, for_json=True) == (1.3, "yuan/kWh")
    assert D.display(bill["start_time"], F.to_secs(2020, 3, 16, 17, 14, 47))[0] == \
        "2020-03-16T17:14:47"


# --- the command line ------------------------------------------------------------------

def _bill_hex(deep=False):
    from tests.mp.test_codec import sample_bill
    return codec.encode(0x3B, sample_bill(deep), seq=0x0180).hex().upper()


def test_cli_decodes_the_official_login_reply(capsys):
    assert cli.main(["decode", LOGIN_REPLY]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("0x02 login_reply (S->P)")
    assert "55031412782305" in out and "result" in out


def test_cli_json_is_one_object_per_frame_with_scaled_values(capsys):
    assert cli.main(["decode", "--json", LOGIN_REPLY, _bill_hex()]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0]) == {"type": 2, "name": "login_reply", "seq": 0,
                                    "fields": {"pile": "55031412782305", "result": 0}}
    bill = json.loads(lines[1])
    assert bill["type"] == 0x3B and bill["name"] == "bill" and bill["seq"] == 0x0180
    fl = bill["fields"]
    assert fl["total_energy"] == 10.0 and fl["meter_start"] == 123.4567
    assert fl["sharp_price"] == 1.3 and fl["total_amount"] == 13.0
    assert fl["start_time"] == "2020-03-16T17:14:47" and fl["serial"].startswith("5503")


def test_cli_text_shows_units_and_temperatures_without_offset(capsys):
    raw = codec.encode("realtime", {
        "serial": "", "pile": "55031412782305", "gun": "01", "status": 3, "homed": 0,
        "plugged": 1, "voltage": 3801, "current": 1235, "gun_temp": 75, "cable_code": "",
        "soc": 55, "battery_temp": 40, "minutes": 12, "minutes_left": 30, "energy": 123456,
        "loss_energy": 123456, "amount": 160000, "faults": 0}).hex()
    assert cli.main(["decode", raw]) == 0
    out = capsys.readouterr().out
    assert "380.1 V" in out and "123.5 A" in out and "12.3456 kWh" in out
    assert "gun_temp               25 C" in out and "battery_temp           -10 C" in out
    assert "16.0000 yuan" in out and "55 %" in out


def test_cli_bad_frame_exits_non_zero_with_a_one_line_reason(capsys):
    assert cli.main(["decode", LOGIN_REPLY[:-1] + "D"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CRC" in err
    assert cli.main(["decode", "68zz"]) == 1
    assert "not hex" in capsys.readouterr().err
    assert cli.main(["decode", codec.wrap(0x77, b"\x01").hex()]) == 1
    assert "unknown frame type 0x77" in capsys.readouterr().err


def test_cli_reads_stdin_one_frame_per_line(capsys, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO(LOGIN_REPLY + "\n\n" + TARIFF_CHECK_REPLY + "\n"))
    assert cli.main(["decode", "--json", "-"]) == 0
    names = [json.loads(x)["name"] for x in capsys.readouterr().out.splitlines()]
    assert names == ["login_reply", "tariff_check_reply"]


def test_cli_reads_a_capture_file_and_a_raw_stream(capsys, tmp_path):
    cap = tmp_path / "cap.txt"
    cap.write_text("# a capture\n%s\n68 0E CE 04 00 06 55 03 14 12 78 23 05 00 00 00 8E 2F\n"
                   % LOGIN_REPLY)
    assert cli.main(["decode", "--json", "--file", str(cap)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    raw = tmp_path / "dump.bin"
    bad = bytearray.fromhex(LOGIN_REPLY)
    bad[-1] ^= 1
    raw.write_bytes(b"\x00junk" + bytes.fromhex(_bill_hex(True)) + bytes(bad)
                    + bytes.fromhex(TARIFF_CHECK_REPLY))
    assert cli.main(["decode", "--json", "--raw", "--file", str(raw)]) == 1  # one bad frame
    out, err = capsys.readouterr()
    assert [json.loads(x)["name"] for x in out.splitlines()] == ["bill5", "tariff_check_reply"]
    assert "CRC" in err


def test_cli_tolerant_mode_accepts_a_swapped_crc(capsys):
    b = bytearray.fromhex(LOGIN_REPLY)
    b[-2], b[-1] = b[-1], b[-2]
    assert cli.main(["decode", b.hex()]) == 1
    # It says what is wrong and what to do (issue 12 item 7), not just "CRC".
    err = capsys.readouterr().err
    assert "two bytes are swapped" in err and "--tolerant" in err
    assert cli.main(["decode", "--tolerant", "--json", b.hex()]) == 0
    assert json.loads(capsys.readouterr().out)["crc_swapped"] is True


def test_cli_says_when_the_length_byte_disagrees_with_the_frame(capsys):
    # It was reported as a CRC error or an incomplete frame.
    for ln, size in ((0x0D, 17), (0x0B, 15)):
        b = bytearray.fromhex(LOGIN_REPLY)
        b[1] = ln
        assert cli.main(["decode", b.hex()]) == 1
        err = capsys.readouterr().err
        assert "length byte 0x%02X says a %d-byte frame, but 16 bytes were given" % (ln, size) in err
        assert "the length byte is wrong" in err
    b = bytearray.fromhex(LOGIN_REPLY)[:12]
    assert cli.main(["decode", b.hex()]) == 1
    assert "only 12 bytes were given" in capsys.readouterr().err


def test_cli_encode_builds_what_decode_reads(capsys):
    assert cli.main(["encode", "login_reply", "pile=55031412782305", "result=0"]) == 0
    assert capsys.readouterr().out.strip() == LOGIN_REPLY
    assert cli.main(["encode", "tariff_check_reply", "pile=55031412782305", "model=0000",
                     "result=0", "--seq", "0x04CE"]) == 0
    assert capsys.readouterr().out.strip() == TARIFF_CHECK_REPLY


def test_cli_encode_takes_scaled_values_times_records_and_zero_defaults(capsys):
    assert cli.main(["encode", "bill", "serial=55031412782305012018061910262392",
                     "sharp_price=1.3yuan/kWh", "sharp_energy=2.5kWh",
                     "start_time=2020-03-16T17:14:47", "total_energy=25000"]) == 0
    out, err = capsys.readouterr()
    assert "note: zero for" in err and "pile" in err
    f = codec.decode(bytes.fromhex(out.strip())).fields
    assert f["sharp_price"] == 130000 and f["sharp_energy"] == 25000
    assert f["total_energy"] == 25000
    assert f["start_time"] == F.to_secs(2020, 3, 16, 17, 14, 47)
    assert cli.main(["encode", "card_sync", "pile=1", "count=1",
                     'cards=[{"logical_card": "1000000573", "card": "D14B0A54"}]']) == 0
    f = codec.decode(bytes.fromhex(capsys.readouterr().out.strip())).fields
    assert codec.unpack_records("card_sync", "cards", f["cards"])[0]["card"] == \
        "00000000D14B0A54"
    assert cli.main(["encode", "realtime", "gun_temp=25C"]) == 0
    f = codec.decode(bytes.fromhex(capsys.readouterr().out.strip())).fields
    assert f["gun_temp"] == 75


def test_cli_encode_refuses_unknown_frames_fields_and_bad_values(capsys):
    assert cli.main(["encode", "nope"]) == 2
    assert cli.main(["encode", "login_reply", "colour=red"]) == 2
    assert cli.main(["encode", "login_reply", "result=256"]) == 1
    assert "result" in capsys.readouterr().err.splitlines()[-1]


def test_cli_lists_every_frame(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == len(FRAMES) and "0x3B bill5" in out


def test_installed_console_script_decodes_the_login_reply():
    exe = find_program("pile-frames")
    cmd = [exe] if exe else [sys.executable, "-m", "tools.frames"]
    r = subprocess.run(cmd + ["decode", "--json", LOGIN_REPLY], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["fields"]["pile"] == "55031412782305"
    r = subprocess.run(cmd + ["decode", LOGIN_REPLY[:-2] + "00"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: CRC")


def _cli_cmd():
    exe = find_program("pile-frames")
    return [exe] if exe else [sys.executable, "-m", "tools.frames"]


def test_piped_hex_with_no_argument_is_read_from_stdin():
    r = subprocess.run(_cli_cmd() + ["decode", "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, input=LOGIN_REPLY + "\n" + TARIFF_CHECK_REPLY + "\n")
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["name"] for x in r.stdout.splitlines()] == ["login_reply",
                                                                     "tariff_check_reply"]
    raw = bytes.fromhex(LOGIN_REPLY) + b"\x00\xff" + bytes.fromhex(TARIFF_CHECK_REPLY)
    r = subprocess.run(_cli_cmd() + ["decode", "--json", "--raw"], cwd=ROOT, capture_output=True,
                       timeout=60, input=raw)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2


def test_no_hex_and_a_terminal_on_stdin_is_a_usage_error():
    import pty
    master, slave = pty.openpty()
    try:
        r = subprocess.run(_cli_cmd() + ["decode"], cwd=ROOT, stdin=slave, capture_output=True,
                           text=True, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 2
    assert r.stderr.startswith("error: decode: give HEX")


# --- DL/T 645 meter frames, and frames only the lenient reading takes ------------------

def test_cli_decodes_a_dlt645_read_and_its_reply_with_the_firmwares_driver(capsys):
    from firmware import dlt645 as M
    # DL/T 645's worked example: read forward active total from meter 000000000001
    req = "6801000000000068110433333433B316"
    reply = M.build_frame("000000000001", 0x91, (0x00010000).to_bytes(4, "little")
                          + M.bcd_encode(1234567, 4), preamble=4).hex().upper()
    err_reply = M.build_frame("000000000001", 0xD1, b"\x02").hex().upper()
    assert cli.main(["decode", req, reply, err_reply]) == 0
    out = capsys.readouterr().out
    assert "DL/T 645 read data (master -> meter) address 000000000001" in out
    assert "DI           00010000 (forward active energy, total)" in out
    assert "value        12345.67 kWh" in out
    assert "error        0x02: no requested data" in out
    assert cli.main(["decode", "--json", reply]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["protocol"], d["di"], d["value"], d["unit"]) == ("dlt645", "00010000", "12345.67", "kWh")


def test_cli_names_a_dlt645_frame_with_a_bad_checksum(capsys):
    assert cli.main(["decode", "6801000000000068110433333433B416"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: DL/T 645:") and "checksum" in err


def test_cli_shows_a_third_party_bill_read_leniently_with_its_problems(capsys):
    from sim.testkit import third_party_bill
    b = third_party_bill("55031412782399", 9, "not_bcd_gun")
    raw = codec.wrap(b["code"], b["body"]).hex().upper()
    assert cli.main(["decode", raw]) == 0
    out = capsys.readouterr().out
    assert "read leniently" in out and "problem: not_bcd: gun 0A" in out
    assert cli.main(["decode", "--json", raw]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["lenient"] is True and d["problems"] == ["not_bcd: gun 0A"]
    assert d["fields"]["gun"] == "0A" and d["fields"]["total_energy"] == 12.3456
