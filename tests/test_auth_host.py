# protocol/sign.py MACs cross-checked against
# CPython's own hmac module, and the replay rule as a property.
import hashlib
import hmac
import struct
import tempfile

from hypothesis import given, settings, strategies as st

from firmware import auth
from protocol import sign

keys = st.binary(min_size=0, max_size=200)      # shorter, equal to and longer than the block
piles = st.text(alphabet="0123456789", min_size=14, max_size=14)
counters = st.integers(min_value=0, max_value=0xFFFFFFFF)
codes = st.integers(min_value=0, max_value=255)


def ref(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


@given(keys, st.binary(max_size=2000))
def test_hmac_sha256_equals_stdlib_hmac(key, msg):
    assert sign.hmac_sha256(key, msg) == ref(key, msg)


@given(keys, piles, counters, codes, st.binary(max_size=214))
def test_command_mac_is_the_documented_construction(key, pile, counter, code, body):
    k_cmd = ref(key, b"pc/cmd")
    msg = bytes.fromhex(pile) + struct.pack("<I", counter) + bytes([code]) + body
    assert sign.command_mac(key, pile, counter, code, body) == ref(k_cmd, msg)
    env = sign.seal(key, pile, counter, code, body)
    assert env == struct.pack("<I", counter) + ref(k_cmd, msg) + bytes([code]) + body
    assert sign.unpack_envelope(env) == (counter, ref(k_cmd, msg), code, body)


@given(keys, st.binary(min_size=158, max_size=174))
def test_bill_mac_is_the_documented_construction(key, body):
    assert sign.bill_mac(key, body) == ref(ref(key, b"pc/bill"), body)
    assert sign.verify_bill_mac(key, body, sign.bill_mac(key, body).hex().upper())


@given(keys, st.text(alphabet="0123456789.", min_size=1, max_size=8),
       st.integers(min_value=1, max_value=1 << 20), st.binary(min_size=32, max_size=32))
def test_upgrade_mac_is_the_documented_construction(key, version, size, sha):
    msg = bytes([len(version)]) + version.encode() + struct.pack("<I", size) + sha
    assert sign.upgrade_mac(key, version, size, sha) == ref(ref(key, b"pc/upgrade"), msg)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), max_size=12))
def test_a_counter_is_accepted_only_above_every_earlier_one_even_across_reboots(seq):
    key = b"k" * 32
    pile = "55031412782305"
    with tempfile.TemporaryDirectory(prefix="pc-auth-") as d:
        path = d + "/cmd.ctr"
        high = 0
        for i, c in enumerate(seq):
            a = auth.CommandAuth(key, path) if i % 3 == 0 else a    # reboot now and then
            ok, reason = a.verify(pile, c, 0x36, b"", a.sign(pile, c, 0x36, b""))
            assert ok == (c > high)
            assert reason == (None if ok else "replay")
            high = max(high, c)


def test_largest_signed_inner_frames_fit_one_ykc_frame():
    from protocol import codec
    for name in ("tariff_set", "tariff_model", "ext_start", "fw_control", "reboot", "remote_start"):
        assert sign.HEADER_LEN + codec.BY_NAME[name].size <= codec.MAX_BODY, name


def test_protected_codes_name_the_frames_that_move_money_or_power():
    from protocol import codec
    names = {0x0A: "tariff_model", 0x32: "start_auth", 0x34: "remote_start", 0x36: "remote_stop",
             0x42: "balance_update", 0x58: "tariff_set", 0x92: "reboot", 0xD4: "tariff5_set",
             0xE2: "ext_start", 0xE8: "fw_control", 0xEE: "vin_list", 0x56: "time_sync",
             0xDE: "site_cap", 0xDC: "gun_cap"}
    assert sorted(names) == sorted(sign.PROTECTED)
    for code, name in names.items():
        assert codec.BY_NAME[name].code == code, name
