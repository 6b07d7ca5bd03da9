# HMAC-SHA256 on hashlib, signed commands with a persisted replay counter,
# and bill MACs; under CPython and MicroPython alike.
import binascii
import os
import struct

from firmware import auth
from firmware.auth import CommandAuth, CounterStore
from sim.flash import FlashSim, PowerCut
from protocol import sign
from tests.mp.util import TempDir

PILE = "55031412782305"
KEY = b"\x11" * 32
OTHER_KEY = b"\x22" * 32

# RFC 4231 test cases 1-7 (case 5 compares the 128-bit truncation).
RFC4231 = (
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\x0c" * 20, b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131, b"This is a test using a larger than block-size key and a larger than "
     b"block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
)

STOP = 0x36
STOP_BODY = b"\x55\x03\x14\x12\x78\x23\x05\x01"   # pile 55031412782305, gun 01


def hx(b):
    return binascii.hexlify(b).decode()


def fresh(tag="auth"):
    """`with fresh() as (d, path):` a temp dir and the counter file in it."""
    return TempDir(tag, lambda d: d + "/cmd.ctr")


def test_hmac_sha256_matches_rfc4231_vectors():
    for key, msg, want in RFC4231:
        got = hx(sign.hmac_sha256(key, msg))
        assert got[:len(want)] == want, (key[:4], got)


def test_hmac_sha256_accepts_bytearray_and_empty_inputs():
    assert sign.hmac_sha256(bytearray(b"Jefe"), bytearray(b"what do ya want for nothing?")) == \
        binascii.unhexlify(RFC4231[1][2])
    assert len(sign.hmac_sha256(b"", b"")) == 32


def test_signed_stop_accepted_once_then_replay_rejected():
    with fresh() as (d, path):
        a = CommandAuth(KEY, path)
        mac = a.sign(PILE, 1, STOP, STOP_BODY)
        assert a.verify(PILE, 1, STOP, STOP_BODY, mac) == (True, None)
        assert a.verify(PILE, 1, STOP, STOP_BODY, mac) == (False, "replay")
        assert a.rejected == 1


def test_older_counter_rejected_as_replay_even_if_never_seen():
    with fresh() as (d, path):
        a = CommandAuth(KEY, path)
        assert a.verify(PILE, 10, STOP, STOP_BODY, a.sign(PILE, 10, STOP, STOP_BODY))[0]
        assert a.verify(PILE, 7, STOP, STOP_BODY, a.sign(PILE, 7, STOP, STOP_BODY)) == (False, "replay")
        assert a.verify(PILE, 11, STOP, STOP_BODY, a.sign(PILE, 11, STOP, STOP_BODY)) == (True, None)
        assert a.last == 11


def test_counter_zero_is_never_accepted():
    with fresh() as (d, path):
        a = CommandAuth(KEY, path)
        assert a.verify(PILE, 0, STOP, STOP_BODY, a.sign(PILE, 0, STOP, STOP_BODY)) == (False, "replay")


def test_forged_commands_rejected_bad_mac():
    with fresh() as (d, path):
        a = CommandAuth(KEY, path)
        good = a.sign(PILE, 5, STOP, STOP_BODY)
        forged = CommandAuth(OTHER_KEY).sign(PILE, 5, STOP, STOP_BODY)
        assert a.verify(PILE, 5, STOP, STOP_BODY, forged) == (False, "bad mac")
        # the same MAC moved onto other content: counter, code, body, pile
        assert a.verify(PILE, 6, STOP, STOP_BODY, good) == (False, "bad mac")
        assert a.verify(PILE, 5, 0x92, STOP_BODY, good) == (False, "bad mac")
        assert a.verify(PILE, 5, STOP, STOP_BODY[:-1] + b"\x02", good) == (False, "bad mac")
        assert a.verify("55031412782306", 5, STOP, STOP_BODY, good) == (False, "bad mac")
        flipped = bytearray(good)
        flipped[31] ^= 1
        assert a.verify(PILE, 5, STOP, STOP_BODY, bytes(flipped)) == (False, "bad mac")
        assert a.verify(PILE, 5, STOP, STOP_BODY, good[:16]) == (False, "malformed")
        # none of the forgeries moved the counter: the genuine command still runs
        assert a.last == 0
        assert a.verify(PILE, 5, STOP, STOP_BODY, good) == (True, None)


def test_counter_survives_reboot_so_replay_stays_closed():
    with fresh() as (d, path):
        a = CommandAuth(KEY, path)
        mac = a.sign(PILE, 42, STOP, STOP_BODY)
        assert a.verify(PILE, 42, STOP, STOP_BODY, mac)[0]
        rebooted = CommandAuth(KEY, CounterStore(path))
        assert rebooted.last == 42
        assert rebooted.verify(PILE, 42, STOP, STOP_BODY, mac) == (False, "replay")
        assert rebooted.verify(PILE, 43, STOP, STOP_BODY, rebooted.sign(PILE, 43, STOP, STOP_BODY))[0]


def test_counter_is_on_flash_before_the_command_is_accepted():
    with fresh() as (d, path):
        a = CommandAuth(KEY, path)
        assert a.verify(PILE, 9, STOP, STOP_BODY, a.sign(PILE, 9, STOP, STOP_BODY))[0]
        with open(path, "rb") as f:
            rec = f.read()
        assert struct.unpack("<I", rec[:4])[0] == 9
        assert CounterStore(path).load() == 9


class _NoRename:
    """The real filesystem, except that every rename fails (flash full)."""

    def __getattr__(self, name):
        return getattr(auth.OS, name)

    def rename(self, a, b):
        raise OSError(28)


def test_counter_that_cannot_be_written_rejects_the_command():
    with fresh() as (d, path):
        a = CommandAuth(KEY, CounterStore(path, _NoRename()))
        assert a.verify(PILE, 3, STOP, STOP_BODY, a.sign(PILE, 3, STOP, STOP_BODY)) == (False, "store")
        assert a.last == 0


def test_unreadable_counter_record_fails_closed():
    with fresh() as (d, path):
        with open(path, "wb") as f:
            f.write(b"\x05\x00\x00\x00garb")   # CRC does not match
        a = CommandAuth(KEY, path)
        assert a.last is None
        assert a.verify(PILE, 99, STOP, STOP_BODY, a.sign(PILE, 99, STOP, STOP_BODY)) == (False, "store")


def test_torn_first_counter_write_reads_as_fresh_pile():
    with fresh() as (d, path):
        with open(path + ".tmp", "wb") as f:
            f.write(b"\x07\x00")          # power cut while writing the first record
        assert CounterStore(path).load() == 0
        assert path.rsplit("/", 1)[1] + ".tmp" not in os.listdir(d)


def test_counter_rename_cut_short_is_completed_at_load():
    with fresh() as (d, path):
        CounterStore(path).save(17)
        os.rename(path, path + ".tmp")    # FAT renames by delete + rename
        assert CounterStore(path).load() == 17
        assert CounterStore(path).load() == 17
        a = CommandAuth(KEY, path)
        assert a.verify(PILE, 17, STOP, STOP_BODY, a.sign(PILE, 17, STOP, STOP_BODY)) == (False, "replay")


def test_stale_tmp_beside_a_good_record_is_dropped():
    with fresh() as (d, path):
        CounterStore(path).save(4)
        with open(path + ".tmp", "wb") as f:
            f.write(b"\x09\x00\x00")
        assert CounterStore(path).load() == 4


def test_envelope_bytes_follow_the_documented_layout():
    mac = sign.command_mac(KEY, PILE, 0x01020304, STOP, STOP_BODY)
    env = sign.seal(KEY, PILE, 0x01020304, STOP, STOP_BODY)
    assert env[:4] == b"\x04\x03\x02\x01"
    assert env[4:36] == mac
    assert env[36] == STOP
    assert env[37:] == STOP_BODY
    assert len(env) == sign.HEADER_LEN + len(STOP_BODY)
    assert sign.unpack_envelope(env) == (0x01020304, mac, STOP, STOP_BODY)


def test_mac_input_is_pile_counter_code_body_under_the_command_subkey():
    k = sign.derive(KEY, b"pc/cmd")
    msg = binascii.unhexlify("55031412782305") + b"\x07\x00\x00\x00" + bytes((STOP,)) + STOP_BODY
    assert sign.command_mac(KEY, PILE, 7, STOP, STOP_BODY) == sign.hmac_sha256(k, msg)
    assert CommandAuth(KEY).sign(binascii.unhexlify(PILE), 7, STOP, STOP_BODY) == sign.hmac_sha256(k, msg)


def test_open_checks_a_whole_envelope():
    with fresh() as (d, path):
        a = CommandAuth(KEY, path)
        env = sign.seal(KEY, PILE, 3, STOP, STOP_BODY)
        assert a.open(PILE, env) == (True, None, 3, STOP, STOP_BODY)
        assert a.open(PILE, env)[:3] == (False, "replay", 3)
        assert a.open(PILE, env[:20])[:3] == (False, "malformed", 0)
        tampered = bytearray(sign.seal(KEY, PILE, 4, STOP, STOP_BODY))
        tampered[-1] ^= 0x03
        assert a.open(PILE, bytes(tampered))[:3] == (False, "bad mac", 4)


def test_reason_codes_are_stable():
    assert [sign.reason_code(r) for r in ("bad mac", "replay", "malformed", "store", "unsigned")] == \
        [1, 2, 3, 4, 5]
    assert sign.reason_code(None) == 0
    for code in (0x34, 0x36, 0x58, 0x92, 0xE8):
        assert sign.needs_auth(code)
    assert not sign.needs_auth(0x03)       # heartbeat
    assert not sign.needs_auth(0xEA)       # fw_chunk: the image carries its own MAC


def _bill_body():
    """A 0x3B body (4 periods, 158 bytes) laid out by hand: trade serial,
    pile, gun, times, period prices / energies / amounts, meter, totals, VIN,
    flag, trade time, stop reason, card."""
    u = binascii.unhexlify
    b = bytearray(u(PILE + "01" + "1911181620000001") + u(PILE + "01"))
    b.extend(u("0000103A0B0B13") + u("00001E3B0B0B13"))   # CP56 start / end
    for i in range(4):
        b.extend(struct.pack("<IIII", 130000, 25000 + i, 25000 + i, 32500 + i))
    b.extend(struct.pack("<IBIB", 1234567, 0, 1334567, 0))   # 5-byte meter readings
    b.extend(struct.pack("<III", 100006, 100006, 130006))
    b.extend(b"LSVAU2180N2183294" + b"\x01" + u("05001E3B0B0B13") + b"\x40" + u("D14B0A5400000000"))
    assert len(b) == 158
    return bytes(b)


def test_bill_mac_detects_any_changed_byte():
    body = _bill_body()
    mac = sign.bill_mac(KEY, body)
    assert sign.verify_bill_mac(KEY, body, mac)
    assert sign.verify_bill_mac(KEY, body, hx(mac).upper())   # as 0xEB's "h" field
    for i in (0, 30, 60, len(body) - 30, len(body) - 1):    # serial, prices, total, vin, card
        t = bytearray(body)
        t[i] ^= 0x01
        assert not sign.verify_bill_mac(KEY, bytes(t), mac), i
    assert not sign.verify_bill_mac(OTHER_KEY, body, mac)
    assert not sign.verify_bill_mac(KEY, body, mac[:31])


def test_bill_mac_cannot_pass_as_a_command_mac():
    # A bill body starts with the trade serial, which starts with the pile
    # code: without a subkey per purpose, a bill's MAC read off the wire would
    # sign "pile | counter | code | body" cut from the same bytes.
    body = _bill_body()
    mac = sign.bill_mac(KEY, body)
    counter = struct.unpack("<I", body[7:11])[0]
    with fresh() as (d, path):
        a = CommandAuth(KEY, path)
        assert a.verify(body[:7], counter, body[11], body[12:], mac) == (False, "bad mac")


def test_pile_keys_derived_from_a_site_key_differ_per_pile():
    site = b"\x33" * 32
    k1 = sign.pile_key(site, PILE)
    k2 = sign.pile_key(site, "55031412782306")
    assert len(k1) == 32 and k1 != k2 and k1 != site
    assert sign.pile_key(site, PILE) == k1


def test_key_file_in_hex_or_raw():
    with TempDir("key") as d:
        with open(d + "/hex.key", "w") as f:
            f.write(hx(KEY) + "\n")
        with open(d + "/raw.key", "wb") as f:
            f.write(KEY)
        with open(d + "/bad.key", "wb") as f:
            f.write(b"short")
        assert sign.load_key(d + "/hex.key") == KEY
        assert sign.load_key(d + "/raw.key") == KEY
        try:
            sign.load_key(d + "/bad.key")
            assert False, "short key accepted"
        except ValueError:
            pass


def test_power_cut_after_every_byte_of_a_counter_write_never_reopens_a_replay():
    base = FlashSim()
    CounterStore("/c", base).save(5)
    k = 0
    while True:
        sim = FlashSim(k)
        sim.files = {"/c": bytearray(base.files["/c"])}
        a = CommandAuth(KEY, CounterStore("/c", sim))
        mac = a.sign(PILE, 6, STOP, STOP_BODY)
        try:
            ok = a.verify(PILE, 6, STOP, STOP_BODY, mac)
        except PowerCut:
            ok = None                 # the command never ran
        sim.reboot()
        b = CommandAuth(KEY, CounterStore("/c", sim))
        assert b.last in (5, 6), (k, b.last)
        if ok == (True, None):
            assert b.last == 6        # accepted means on flash
            break
        k += 1
        assert k < 1000, "the counter write never completed"
    assert k > 8
