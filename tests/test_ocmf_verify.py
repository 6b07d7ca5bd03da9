# Bills anyone can verify (issue 19 item 6): the records our signer and our
# canonical payload make are accepted by PyPI's pyocmf verifier (strict
# parsing) with the pile's public key, and any flipped byte of the record is
# rejected. The signer is also checked against the `cryptography` library on
# random keys and messages. The pile's half (RFC 6979 vector, steps,
# payload text) is tests/mp/test_ocmf.py, on both interpreters.
import json
import random

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from hypothesis import given, settings, strategies as st
from pyocmf import OCMF
import pytest

from sim.testkit import make_bill
from protocol import ocmf, p256


def _signed(bill, d, fw="PC-0.1"):
    text = ocmf.payload(bill, fw=fw)
    r, s = p256.sign(d, text.encode())
    return ocmf.record(text, p256.der_signature(r, s))


def _accepts(rec, pub_der_hex):
    try:
        return OCMF.from_string(rec, strict=True).verify_signature(pub_der_hex) is True
    except Exception:            # a record that no longer parses is rejected too
        return False


def test_pyocmf_accepts_every_bill_and_rejects_every_flipped_byte():
    rnd = random.Random(20261207)
    d = p256.keygen(bytes(rnd.randrange(256) for _ in range(32)))
    pub = p256.spki_der(p256.public_key(d)).hex()
    other = p256.spki_der(p256.public_key(p256.keygen(bytes(range(1, 33))))).hex()
    bills = []
    for n in range(1, 41):
        b = make_bill("55031412782305", n, energy=rnd.randrange(1, 2000000))
        bills.append(b)
        rec = _signed(b, d)
        assert _accepts(rec, pub), rec
        assert not _accepts(rec, other)
    # Every byte of the signed payload and of the signature flipped in turn:
    # each copy is refused. (The signature block's key names are not data:
    # pyocmf reads a record whose "SA" key is garbled with its default
    # algorithm, the same one, and the record means the same.)
    rec = _signed(bills[0], d)
    head, text, sig = rec.split("|")
    sd = sig.index('"SD":"') + 6
    positions = list(range(len(head) + 1, len(head) + 1 + len(text))) + \
        list(range(len(head) + len(text) + 2 + sd, len(rec) - 2))
    assert len(positions) == len(text) + 2 * len(p256.der_signature(*p256.sign(d, text.encode())))
    flipped_ok = []
    for i in positions:
        c = chr(ord(rec[i]) ^ 0x01)
        if _accepts(rec[:i] + c + rec[i + 1:], pub):
            flipped_ok.append((i, rec[i], c))
    assert flipped_ok == [], flipped_ok[:5]


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=300))
def test_the_signer_agrees_with_the_cryptography_library(entropy, msg):
    d = p256.keygen(entropy)
    key = load_der_public_key(p256.spki_der(p256.public_key(d)))
    r, s = p256.sign(d, msg)
    key.verify(p256.der_signature(r, s), msg, ec.ECDSA(hashes.SHA256()))     # raises if wrong
    priv = ec.derive_private_key(d, ec.SECP256R1())
    assert priv.public_key().public_numbers().x == int.from_bytes(p256.public_key(d)[1:33], "big")
    try:
        key.verify(p256.der_signature(r, s), msg + b"x", ec.ECDSA(hashes.SHA256()))
        raise AssertionError("a changed message verified")
    except InvalidSignature:
        pass


@pytest.mark.slow
def test_the_demos_bills_verify_with_pyocmf_end_to_end_and_a_tampered_one_does_not(capsys):
    # The README's demo: the real firmware (simulated piles) signs each bill
    # after sealing it, the bridge (a child process) keeps the signature and
    # publishes the record in the bill document over MQTT, the reference
    # platform stores the document. Each record, as the platform received
    # it, verifies with pyocmf against the key the site registered for its
    # pile; with any meter reading changed it does not.
    from sim.brokers import mosquitto_available
    from tools import demo
    from sim.scenario import sim_ocmf_key
    rc = demo.main(["--json", "--speed", "240", "--broker",
                    "mosquitto" if mosquitto_available() else "amqtt"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 0 and s["bills"] == 8          # pile 7's two DC guns too (docs/bms.md)
    assert s["ocmf_verified"] == 8
    for b in s["bills_detail"]:
        o = b["ocmf"]
        assert o["verdict"] == "verified" and o["public_key"] == sim_ocmf_key(b["pile"])
        rec = o["record"]
        assert b["serial"] in rec
        assert _accepts(rec, o["public_key"]), rec
        i = rec.index('"TX":"E","RV":') + len('"TX":"E","RV":')
        tampered = rec[:i] + str((int(rec[i]) + 1) % 10) + rec[i + 1:]
        assert not _accepts(tampered, o["public_key"])
        other = sim_ocmf_key("55031412780001" if b["pile"] != "55031412780001" else "55031412780002")
        assert not _accepts(rec, other)
